"""Turning a switch's replies into the messages that re-create its state.

Each function here takes one entry of a stats reply, exactly as the switch
sent it, and returns the modification message that installs the same thing,
at the same OpenFlow version. The match, instructions, actions, buckets and
bands are copied byte for byte: only the fixed headers are rearranged.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ovs_service.openflow import ofproto as ofp
from ovs_service.openflow.messages import encode, experimenter, padded
from ovs_service.openflow.ofproto import (
    NX_FLOW_MOD_MATCH_LEN_OFFSET,
    NX_FLOW_MOD_MATCH_OFFSET,
    NX_VENDOR_ID,
    OF10,
    OF12,
    OF13,
    OF14,
    OF15,
    OFP_FLOW_MOD_COMMAND_OFFSET,
    OFP_FLOW_MOD_MATCH_LENGTH_OFFSET,
    OFP_FLOW_MOD_MATCH_OFFSET,
    OFP_FLOW_MOD_PRIORITY_OFFSET,
    OFP_FLOW_MOD_TABLE_ID_OFFSET,
    OFP_HEADER_LENGTH_OFFSET,
    OFP_MATCH_HEADER_SIZE,
    OFP_MATCH_LENGTH_OFFSET,
    OFP_NO_BUFFER,
    OFPFC_ADD,
    OFPG_ANY,
    OFPP10_NONE,
    OFPP_ANY,
    OFPT_EXPERIMENTER,
    OFPT_FLOW_MOD,
    OFPT_GROUP_MOD,
    OFPT_METER_MOD,
    OFPTT_ALL,
)

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U16_SIZE = _U16.size
_MP_TYPE = struct.Struct(ofp.OFP_MULTIPART_TYPE_PACK_STR)
_NX_STATS = struct.Struct(ofp.NX_STATS_BODY_PACK_STR)
_NX_FLOW_STATS_REQUEST = struct.Struct(ofp.NX_FLOW_STATS_REQUEST_PACK_STR)
_FLOW_STATS_REQUEST = struct.Struct(ofp.OFP_FLOW_STATS_REQUEST_PACK_STR)
_NX_FLOW_STATS = struct.Struct(ofp.NX_FLOW_STATS_PACK_STR)
_FLOW_STATS = struct.Struct(ofp.OFP_FLOW_STATS_PACK_STR)
_FLOW15_DESC = struct.Struct(ofp.OFP15_FLOW_DESC_PACK_STR)
_NX_FLOW_MOD = struct.Struct(ofp.NX_FLOW_MOD_BODY_PACK_STR)
_FLOW_MOD = struct.Struct(ofp.OFP_FLOW_MOD_BODY_PACK_STR)
_GROUP_DESC = struct.Struct(ofp.OFP_GROUP_DESC_PACK_STR)
_GROUP15_DESC = struct.Struct(ofp.OFP15_GROUP_DESC_PACK_STR)
_GROUP_MOD = struct.Struct(ofp.OFP_GROUP_MOD_BODY_PACK_STR)
_GROUP15_MOD = struct.Struct(ofp.OFP15_GROUP_MOD_BODY_PACK_STR)
_GROUP15_REQUEST = struct.Struct(ofp.OFP15_GROUP_MULTIPART_REQUEST_PACK_STR)
_METER_MOD = struct.Struct(ofp.OFP_METER_MOD_BODY_PACK_STR)
_METER_COMMAND = struct.Struct(ofp.OFP_METER_MOD_COMMAND_PACK_STR)
_METER_CONFIG = struct.Struct(ofp.OFP_METER_CONFIG_PACK_STR)
_METER_REQUEST = struct.Struct(ofp.OFP_METER_MULTIPART_REQUEST_PACK_STR)
_METER_BAND = struct.Struct(ofp.OFP_METER_BAND_HEADER_PACK_STR)
_METER_FEATURES = struct.Struct(ofp.OFP_METER_FEATURES_PACK_STR)
_TLV_TABLE_MOD = struct.Struct(ofp.NX_TLV_TABLE_MOD_PACK_STR)
_PORT10 = struct.Struct(ofp.OFP10_PHY_PORT_PACK_STR)
_PORT = struct.Struct(ofp.OFP_PORT_PACK_STR)
_PORT14 = struct.Struct(ofp.OFP14_PORT_PACK_STR)
_PORT15_REQUEST = struct.Struct(ofp.OFP15_PORT_MULTIPART_REQUEST_PACK_STR)
_PORT10_MOD = struct.Struct(ofp.OFP10_PORT_MOD_BODY_PACK_STR)
_PORT_MOD = struct.Struct(ofp.OFP_PORT_MOD_BODY_PACK_STR)
_PORT14_MOD = struct.Struct(ofp.OFP14_PORT_MOD_BODY_PACK_STR)
_AGGREGATE_REPLY = struct.Struct(ofp.OFP_AGGREGATE_STATS_REPLY_PACK_STR)
_INSTRUCTION_ACTIONS = struct.Struct(ofp.OFP_INSTRUCTION_ACTIONS_PACK_STR)
_ACTION_OUTPUT = struct.Struct(ofp.OFP_ACTION_OUTPUT_PACK_STR)
_ACTION10_OUTPUT = struct.Struct(ofp.OFP10_ACTION_OUTPUT_PACK_STR)

EMPTY_OXM_MATCH = struct.pack(ofp.OFP_EMPTY_MATCH_PACK_STR, ofp.OFPMT_OXM, OFP_MATCH_HEADER_SIZE)

# Port config bits that mod-port can change, by version.
PORT_CONFIG_MASK_OF10 = (ofp.OFPPC_PORT_DOWN | ofp.OFPPC10_NO_STP | ofp.OFPPC_NO_RECV
                         | ofp.OFPPC10_NO_RECV_STP | ofp.OFPPC10_NO_FLOOD | ofp.OFPPC_NO_FWD
                         | ofp.OFPPC_NO_PACKET_IN)
PORT_CONFIG_MASK_OF11 = (ofp.OFPPC_PORT_DOWN | ofp.OFPPC_NO_RECV | ofp.OFPPC_NO_FWD
                         | ofp.OFPPC_NO_PACKET_IN)


def _nx(version: int, subtype: int, body: bytes = b"") -> bytes:
    return experimenter(version, NX_VENDOR_ID, subtype, body)


def _nx_stats_request(subtype: int, body: bytes) -> bytes:
    """A Nicira stats request (at 1.0), as `Connection.multipart` takes it."""
    return _MP_TYPE.pack(ofp.OFPMP_EXPERIMENTER) + _NX_STATS.pack(NX_VENDOR_ID, subtype) + body


def _u16(data: bytes, offset: int) -> int:
    # Short data reads as what there is (saved messages are only framed, not parsed).
    return int.from_bytes(data[offset:offset + _U16.size], "big")


def _u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset:offset + _U32.size], "big")


def _entries(reply_body: bytes) -> Iterator[bytes]:
    """Split a stats reply body into its length-prefixed entries."""
    offset, end = 0, len(reply_body)
    while offset + _U16.size <= end:
        length = int.from_bytes(reply_body[offset:offset + _U16_SIZE], "big")
        if length == 0 or offset + length > end:
            raise ValueError("malformed stats reply entry")
        yield reply_body[offset:offset + length]
        offset += length


def _match_length(version: int, flow_mod: bytes) -> int:
    """The length of a flow_mod's match (nx_match at 1.0, OXM otherwise), unpadded."""
    if version == OF10:
        return _u16(flow_mod, NX_FLOW_MOD_MATCH_LEN_OFFSET)
    return _u16(flow_mod, OFP_FLOW_MOD_MATCH_LENGTH_OFFSET)


# -- flows ----------------------------------------------------------------------

def flow_stats_request(version: int) -> bytes:
    if version == OF10:
        return _nx_stats_request(ofp.NXST_FLOW,
                                 _NX_FLOW_STATS_REQUEST.pack(OFPP10_NONE, 0, OFPTT_ALL))
    return (_MP_TYPE.pack(ofp.OFPMP_FLOW)
            + _FLOW_STATS_REQUEST.pack(OFPTT_ALL, OFPP_ANY, OFPG_ANY, 0, 0) + EMPTY_OXM_MATCH)


def flow_mods(version: int, reply_body: bytes) -> Iterator[bytes]:
    """Flow modifications (add) for every flow in one flow stats reply."""
    if version == OF10:
        # Nicira flow stats: vendor, subtype and padding come first.
        for entry in _entries(reply_body[ofp.NX_STATS_BODY_SIZE:]):
            (length, table, _, _, priority, idle, hard, match_len, _, _, cookie, _, _
             ) = _NX_FLOW_STATS.unpack_from(entry)
            body = _NX_FLOW_MOD.pack(NX_VENDOR_ID, ofp.NXT_FLOW_MOD, cookie,
                                     (table << ofp.NX_FLOW_MOD_TABLE_ID_SHIFT) | OFPFC_ADD, idle,
                                     hard, priority, OFP_NO_BUFFER, OFPP10_NONE, 0, match_len)
            yield encode(version, OFPT_EXPERIMENTER, body + entry[_NX_FLOW_STATS.size:length])
        return
    if version >= OF15:
        yield from _of15_flow_mods(version, reply_body)
        return
    for entry in _entries(reply_body):
        (length, table, _, _, priority, idle, hard, flags, importance, cookie, _, _
         ) = _FLOW_STATS.unpack_from(entry)
        if version < OF14:
            importance = 0
        if version < OF13:
            flags = 0
        body = _FLOW_MOD.pack(cookie, 0, table, OFPFC_ADD, idle, hard, priority, OFP_NO_BUFFER,
                              OFPP_ANY, OFPG_ANY, flags, importance)
        yield encode(version, OFPT_FLOW_MOD, body + entry[_FLOW_STATS.size:length])


def _of15_flow_mods(version: int, reply_body: bytes) -> Iterator[bytes]:
    """OpenFlow 1.5 flow descriptions carry their counters as OXS stats between
    the match and the instructions; those are left out of the flow_mod."""
    for entry in _entries(reply_body):
        (length, table, priority, idle, hard, flags, importance, cookie
         ) = _FLOW15_DESC.unpack_from(entry)
        match_end = _FLOW15_DESC.size + padded(
            _u16(entry, _FLOW15_DESC.size + OFP_MATCH_LENGTH_OFFSET))
        stats_end = match_end + padded(_u16(entry, match_end + ofp.OFP15_STATS_LENGTH_OFFSET))
        body = _FLOW_MOD.pack(cookie, 0, table, OFPFC_ADD, idle, hard, priority, OFP_NO_BUFFER,
                              OFPP_ANY, OFPG_ANY, flags, importance)
        yield encode(version, OFPT_FLOW_MOD,
                     body + entry[_FLOW15_DESC.size:match_end] + entry[stats_end:length])


def flow_mod_table_id(version: int) -> bytes:
    """Lets OpenFlow 1.0 flow_mods name their table (a Nicira extension)."""
    return _nx(version, ofp.NXT_FLOW_MOD_TABLE_ID,
               struct.pack(ofp.NX_FLOW_MOD_TABLE_ID_PACK_STR, ofp.NX_FLOW_MOD_TABLE_ID_ENABLE))


def delete_all_flows(version: int) -> bytes:
    if version == OF10:
        body = _NX_FLOW_MOD.pack(NX_VENDOR_ID, ofp.NXT_FLOW_MOD, 0,
                                 (OFPTT_ALL << ofp.NX_FLOW_MOD_TABLE_ID_SHIFT) | ofp.OFPFC_DELETE,
                                 0, 0, 0, OFP_NO_BUFFER, OFPP10_NONE, 0, 0)
        return encode(version, OFPT_EXPERIMENTER, body)
    body = _FLOW_MOD.pack(0, 0, OFPTT_ALL, ofp.OFPFC_DELETE, 0, 0, 0, OFP_NO_BUFFER, OFPP_ANY,
                          OFPG_ANY, 0, 0)
    return encode(version, OFPT_FLOW_MOD, body + EMPTY_OXM_MATCH)


# -- groups ---------------------------------------------------------------------

# OpenFlow 1.0 has groups through Nicira extensions, in OpenFlow 1.5's layout.

def group_desc_request(version: int) -> bytes:
    if version == OF10:
        return _nx_stats_request(ofp.NXST_GROUP_DESC, _GROUP15_REQUEST.pack(ofp.OFPG_ALL))
    if version >= OF15:
        return _MP_TYPE.pack(ofp.OFPMP_GROUP_DESC) + _GROUP15_REQUEST.pack(ofp.OFPG_ALL)
    return _MP_TYPE.pack(ofp.OFPMP_GROUP_DESC)


def _group_mod(version: int, body: bytes) -> bytes:
    if version == OF10:
        return _nx(version, ofp.NXT_GROUP_MOD, body)
    return encode(version, OFPT_GROUP_MOD, body)


def group_mods(version: int, reply_body: bytes) -> Iterator[bytes]:
    if version == OF10:
        reply_body = reply_body[ofp.NX_STATS_BODY_SIZE:]  # vendor, subtype, padding
    for entry in _entries(reply_body):
        if version >= OF15 or version == OF10:
            length, type_, group_id, bucket_len = _GROUP15_DESC.unpack_from(entry)
            body = _GROUP15_MOD.pack(ofp.OFPGC_ADD, type_, group_id, bucket_len,
                                     ofp.OFPG15_BUCKET_ALL)
            yield _group_mod(version, body + entry[_GROUP15_DESC.size:length])
        else:
            length, type_, group_id = _GROUP_DESC.unpack_from(entry)
            body = _GROUP_MOD.pack(ofp.OFPGC_ADD, type_, group_id)
            yield encode(version, OFPT_GROUP_MOD, body + entry[_GROUP_DESC.size:length])


# -- meters ---------------------------------------------------------------------

def meter_config_request() -> bytes:
    return _MP_TYPE.pack(ofp.OFPMP_METER_CONFIG) + _METER_REQUEST.pack(ofp.OFPM_ALL)


@dataclass(frozen=True)
class Meter:
    meter_id: int
    config: bytes  # flags and bands, as the switch reported them

    def mod(self, version: int, command: int = ofp.OFPMC_ADD) -> bytes:
        return encode(version, OFPT_METER_MOD, _METER_COMMAND.pack(command) + self.config)


def meters(reply_body: bytes) -> Iterator[Meter]:
    for entry in _entries(reply_body):
        _, _, meter_id = _METER_CONFIG.unpack_from(entry)
        yield Meter(meter_id, entry[ofp.OFP_METER_CONFIG_FLAGS_OFFSET:])


@dataclass(frozen=True)
class MeterFeatures:
    max_meter: int
    band_types: int  # bitmap of 1 << OFPMBT_*
    capabilities: int  # OFPMF_* flags
    max_bands: int


def meter_features_request() -> bytes:
    return _MP_TYPE.pack(ofp.OFPMP_METER_FEATURES)


def meter_features(reply_body: bytes) -> MeterFeatures:
    max_meter, band_types, capabilities, max_bands, _ = _METER_FEATURES.unpack_from(reply_body)
    return MeterFeatures(max_meter, band_types, capabilities, max_bands)


@dataclass(frozen=True)
class MeterMod:
    """What a meter_mod asks of a switch's meter features."""

    meter_id: int
    flags: int
    band_types: tuple[int, ...]


def meter_mod_fields(message: bytes) -> MeterMod:
    _, flags, meter_id = _METER_MOD.unpack_from(message, ofp.OFP_HEADER_SIZE)
    types, offset = [], ofp.OFP_HEADER_SIZE + _METER_MOD.size
    while offset + _METER_BAND.size <= len(message):
        band_type, length, _, _ = _METER_BAND.unpack_from(message, offset)
        types.append(band_type)
        offset += max(length, _METER_BAND.size)
    return MeterMod(meter_id, flags, tuple(types))


def meter_id_of_mod(message: bytes) -> int:
    return _u32(message, ofp.OFP_METER_MOD_METER_ID_OFFSET)


def delete_meter(version: int, meter_id: int) -> bytes:
    return encode(version, OFPT_METER_MOD, _METER_MOD.pack(ofp.OFPMC_DELETE, 0, meter_id))


# -- TLV map --------------------------------------------------------------------

def tlv_table_request(version: int) -> bytes:
    return _nx(version, ofp.NXT_TLV_TABLE_REQUEST)


def tlv_maps(reply: bytes) -> bytes:
    """The mappings (NX_TLV_MAP_SIZE bytes each) of an NXT_TLV_TABLE_REPLY message."""
    return reply[ofp.OFP_EXPERIMENTER_HEADER_SIZE + ofp.NX_TLV_TABLE_REPLY_SIZE:]


def tlv_table_mod(version: int, maps: bytes, command: int = ofp.NXTTMC_ADD) -> bytes:
    return _nx(version, ofp.NXT_TLV_TABLE_MOD, _TLV_TABLE_MOD.pack(command) + maps)


def tlv_maps_of_mod(message: bytes) -> bytes:
    return message[ofp.OFP_EXPERIMENTER_HEADER_SIZE + _TLV_TABLE_MOD.size:]


# -- ports ----------------------------------------------------------------------

@dataclass(frozen=True)
class PortConfig:
    port_no: int
    name: str
    hw_addr: bytes
    config: int


def port_desc_request(version: int) -> tuple[bytes, bool]:
    """The request for port descriptions, and whether it is a multipart one."""
    if version <= OF12:
        return encode(version, ofp.OFPT_FEATURES_REQUEST), False
    if version >= OF15:
        return _MP_TYPE.pack(ofp.OFPMP_PORT_DESC) + _PORT15_REQUEST.pack(OFPP_ANY), True
    return _MP_TYPE.pack(ofp.OFPMP_PORT_DESC), True


def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="surrogateescape")


def _fixed_ports(layout: struct.Struct, body: bytes) -> Iterator[PortConfig]:
    """Ports of a fixed size, each starting with port_no, hw_addr, name, config."""
    for off in range(0, len(body) - layout.size + 1, layout.size):
        port_no, hw, name, config = layout.unpack_from(body, off)[:4]
        yield PortConfig(port_no, _name(name), hw, config)


def ports_from_features(version: int, reply: bytes) -> Iterator[PortConfig]:
    body = reply[ofp.OFP_HEADER_SIZE + ofp.OFP_SWITCH_FEATURES_BODY_SIZE:]
    yield from _fixed_ports(_PORT10 if version == OF10 else _PORT, body)


def ports_from_desc(version: int, reply_body: bytes) -> Iterator[PortConfig]:
    if version == OF13:
        yield from _fixed_ports(_PORT, reply_body)
        return
    off = 0
    while off + _PORT14.size <= len(reply_body):
        port_no, length, hw, name, config, _ = _PORT14.unpack_from(reply_body, off)
        yield PortConfig(port_no, _name(name), hw, config)
        off += max(length, _PORT14.size)


def port_config_mask(version: int) -> int:
    return PORT_CONFIG_MASK_OF10 if version == OF10 else PORT_CONFIG_MASK_OF11


def port_mod(version: int, port: PortConfig, config: int) -> bytes:
    mask = port_config_mask(version)
    if version == OF10:
        return encode(version, ofp.OFPT10_PORT_MOD,
                      _PORT10_MOD.pack(port.port_no, port.hw_addr, config, mask, 0))
    if version >= OF14:
        return encode(version, ofp.OFPT_PORT_MOD,
                      _PORT14_MOD.pack(port.port_no, port.hw_addr, config, mask))
    return encode(version, ofp.OFPT_PORT_MOD,
                  _PORT_MOD.pack(port.port_no, port.hw_addr, config, mask, 0))


# -- what a restore needs to compare tables ---------------------------------------

def aggregate_request(version: int) -> bytes:
    """Flow count of every table (OFPMP_AGGREGATE; NXST_AGGREGATE at 1.0)."""
    if version == OF10:
        return _nx_stats_request(ofp.NXST_AGGREGATE,
                                 _NX_FLOW_STATS_REQUEST.pack(OFPP10_NONE, 0, OFPTT_ALL))
    return (_MP_TYPE.pack(ofp.OFPMP_AGGREGATE)
            + _FLOW_STATS_REQUEST.pack(OFPTT_ALL, OFPP_ANY, OFPG_ANY, 0, 0) + EMPTY_OXM_MATCH)


def aggregate_flow_count(version: int, reply_body: bytes) -> int:
    if version >= OF15:
        # OXS stats: a header, then fields (class, field << 1, length, value).
        end = _u16(reply_body, ofp.OFP15_STATS_LENGTH_OFFSET)
        offset = ofp.OFP15_STATS_HEADER_SIZE
        while offset + ofp.OXS_HEADER_SIZE <= end:
            field = reply_body[offset + ofp.OXS_FIELD_OFFSET] >> ofp.OXS_FIELD_SHIFT
            length = reply_body[offset + ofp.OXS_LENGTH_OFFSET]
            value = offset + ofp.OXS_HEADER_SIZE
            if field == ofp.OXS_OF_FLOW_COUNT:
                return int.from_bytes(reply_body[value:value + length], "big")
            offset = value + length
        raise ValueError("aggregate reply without a flow count")
    offset = ofp.NX_STATS_BODY_SIZE if version == OF10 else 0
    return _u32(reply_body, offset + ofp.OFP_AGGREGATE_STATS_REPLY_FLOW_COUNT_OFFSET)


def flow_delete_strict(version: int, flow_mod: bytes) -> bytes:
    """The DELETE_STRICT that removes exactly the flow `flow_mod` adds."""
    out = bytearray(flow_mod)
    # Both layouts have their match at the same offset and their command's
    # low byte where 1.1+ has the command (at 1.0, the table is the high byte).
    del out[OFP_FLOW_MOD_MATCH_OFFSET + padded(_match_length(version, flow_mod)):]
    out[OFP_FLOW_MOD_COMMAND_OFFSET] = ofp.OFPFC_DELETE_STRICT
    _U16.pack_into(out, OFP_HEADER_LENGTH_OFFSET, len(out))
    return bytes(out)


_TABLE = slice(OFP_FLOW_MOD_TABLE_ID_OFFSET, OFP_FLOW_MOD_TABLE_ID_OFFSET + 1)
_PRIORITY = slice(OFP_FLOW_MOD_PRIORITY_OFFSET, OFP_FLOW_MOD_PRIORITY_OFFSET + _U16.size)


def flow_key(version: int, flow_mod: bytes) -> bytes:
    """What identifies a flow in its table: table, priority and match. An add
    with the same key replaces the flow (in one step, never absent), and a
    strict delete of that key removes whichever flow has it."""
    # Inline, not through _match_length: this runs for every flow of a table.
    at = NX_FLOW_MOD_MATCH_LEN_OFFSET if version == OF10 else OFP_FLOW_MOD_MATCH_LENGTH_OFFSET
    match_len = int.from_bytes(flow_mod[at:at + _U16_SIZE], "big")
    match_end = OFP_FLOW_MOD_MATCH_OFFSET + padded(match_len)
    return flow_mod[_TABLE] + flow_mod[_PRIORITY] + flow_mod[OFP_FLOW_MOD_MATCH_OFFSET:match_end]


def is_catchall(version: int, flow_mod: bytes) -> bool:
    """Whether a flow_mod has the key of a bridge's default flow: table 0,
    priority 0, empty match (whatever its actions)."""
    # The table (at 1.0, the command's high byte) and the priority.
    if flow_mod[OFP_FLOW_MOD_TABLE_ID_OFFSET] != 0 or flow_mod[_PRIORITY] != b"\0\0":
        return False
    if version == OF10:
        return _match_length(version, flow_mod) == 0
    return _match_length(version, flow_mod) == OFP_MATCH_HEADER_SIZE


def _group_body_offset(version: int) -> int:
    """Where a group_mod's body starts: after Nicira's header, or the plain one."""
    return ofp.OFP_EXPERIMENTER_HEADER_SIZE if version == OF10 else ofp.OFP_HEADER_SIZE


def group_id_of_mod(version: int, group_mod: bytes) -> int:
    offset = _group_body_offset(version) + ofp.OFP_GROUP_MOD_GROUP_ID_OFFSET
    return _u32(group_mod, offset)


def group_with_command(version: int, group_mod: bytes, command: int) -> bytes:
    offset = _group_body_offset(version)
    return group_mod[:offset] + _U16.pack(command) + group_mod[offset + _U16.size:]


def delete_group(version: int, group_id: int) -> bytes:
    if version >= OF15 or version == OF10:
        body = _GROUP15_MOD.pack(ofp.OFPGC_DELETE, 0, group_id, 0, ofp.OFPG15_BUCKET_ALL)
    else:
        body = _GROUP_MOD.pack(ofp.OFPGC_DELETE, 0, group_id)
    return _group_mod(version, body)


def is_default_flow(version: int, flow_mod: bytes) -> bool:
    """Whether a flow_mod (as saved) is a bridge's own `priority=0 actions=NORMAL`
    in table 0: empty match, and its only action output to NORMAL."""
    priority = _u16(flow_mod, OFP_FLOW_MOD_PRIORITY_OFFSET)
    match_len = _match_length(version, flow_mod)
    if version == OF10:
        command = _u16(flow_mod, ofp.NX_FLOW_MOD_COMMAND_OFFSET)
        # actions: one OFPAT_OUTPUT to NORMAL
        actions = flow_mod[NX_FLOW_MOD_MATCH_OFFSET:]
        if len(actions) < _ACTION10_OUTPUT.size:
            return False
        action, length, port, _ = _ACTION10_OUTPUT.unpack_from(actions)
        return (command >> ofp.NX_FLOW_MOD_TABLE_ID_SHIFT == 0 and priority == 0
                and match_len == 0 and (action, length, port)
                == (ofp.OFPAT_OUTPUT, _ACTION10_OUTPUT.size, ofp.OFPP10_NORMAL))
    table = flow_mod[OFP_FLOW_MOD_TABLE_ID_OFFSET]
    instructions = flow_mod[OFP_FLOW_MOD_MATCH_OFFSET + padded(match_len):]
    # one APPLY_ACTIONS holding one OUTPUT to NORMAL
    apply_length = _INSTRUCTION_ACTIONS.size + _ACTION_OUTPUT.size
    if len(instructions) < apply_length:
        return False
    kind, length = _INSTRUCTION_ACTIONS.unpack_from(instructions)
    action, action_length, port, _ = _ACTION_OUTPUT.unpack_from(
        instructions, _INSTRUCTION_ACTIONS.size)
    return (table == 0 and priority == 0 and match_len == OFP_MATCH_HEADER_SIZE
            and (kind, length) == (ofp.OFPIT_APPLY_ACTIONS, apply_length)
            and (action, action_length, port)
            == (ofp.OFPAT_OUTPUT, _ACTION_OUTPUT.size, ofp.OFPP_NORMAL))
