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

from ovs_service.openflow import (
    EXPERIMENTER,
    FEATURES_REQUEST,
    FLOW_MOD,
    GROUP_MOD,
    METER_MOD,
    NX_VENDOR,
    OF10,
    OF10_PORT_MOD,
    OF12,
    OF13,
    OF14,
    OF15,
    PORT_MOD,
    encode,
)

NO_BUFFER = 0xFFFFFFFF
ANY32 = 0xFFFFFFFF
OFPP10_NONE = 0xFFFF
OFPTT_ALL = 0xFF
OFPG_ALL = 0xFFFFFFFC
OFPG15_BUCKET_ALL = 0xFFFFFFFF
OFPM_ALL = 0xFFFFFFFF
ADD, MODIFY, DELETE = 0, 1, 3
GROUP_DELETE, METER_DELETE = 2, 2
EMPTY_OXM_MATCH = struct.pack("!HH4x", 1, 4)

# Nicira extension subtypes.
NXT_FLOW_MOD, NXT_FLOW_MOD_TABLE_ID = 13, 15
NXT_TLV_TABLE_MOD, NXT_TLV_TABLE_REQUEST, NXT_TLV_TABLE_REPLY = 24, 25, 26
NXT_GROUP_MOD = 31
NXST_FLOW, NXST_GROUP_DESC = 0, 8
NXTTMC_ADD, NXTTMC_DELETE, NXTTMC_CLEAR = 0, 1, 2

# Multipart types.
MP_FLOW, MP_GROUP_DESC, MP_METER_CONFIG, MP_PORT_DESC = 1, 7, 10, 13
MP_VENDOR = 0xFFFF

NX_FLOW_STATS = struct.Struct("!HBxIIHHHHHHQQQ")  # 48 bytes
OF11_FLOW_STATS = struct.Struct("!HBxIIHHHHHxxQQQ")  # 48 bytes
OF15_FLOW_DESC = struct.Struct("!H2xBxHHHHHQ")  # 24 bytes; match, OXS stats, instructions follow
NX_FLOW_MOD = struct.Struct("!IIQHHHHIHHH6x")
OF11_FLOW_MOD = struct.Struct("!QQBBHHHIIIHH")

# Port config bits that mod-port can change, by version.
PORT_CONFIG_MASK_OF10 = 0x7F  # down, no-stp, no-recv, no-recv-stp, no-flood, no-fwd, no-packet-in
PORT_CONFIG_MASK_OF11 = 0x65  # down, no-recv, no-fwd, no-packet-in


def _nx(version: int, subtype: int, body: bytes = b"") -> bytes:
    return encode(version, EXPERIMENTER, struct.pack("!II", NX_VENDOR, subtype) + body)


def _entries(reply_body: bytes) -> Iterator[bytes]:
    """Split a stats reply body into its length-prefixed entries."""
    offset, end = 0, len(reply_body)
    while offset + 2 <= end:
        length = int.from_bytes(reply_body[offset:offset + 2], "big")
        if length == 0 or offset + length > end:
            raise ValueError("malformed stats reply entry")
        yield reply_body[offset:offset + length]
        offset += length


# -- flows ----------------------------------------------------------------------

def flow_stats_request(version: int) -> bytes:
    if version == OF10:
        return (struct.pack("!H", MP_VENDOR) + struct.pack("!II4x", NX_VENDOR, NXST_FLOW)
                + struct.pack("!HHB3x", OFPP10_NONE, 0, OFPTT_ALL))
    return struct.pack("!HB3xII4xQQ", MP_FLOW, OFPTT_ALL, ANY32, ANY32, 0, 0) + EMPTY_OXM_MATCH


def flow_mods(version: int, reply_body: bytes) -> Iterator[bytes]:
    """Flow modifications (add) for every flow in one flow stats reply."""
    if version == OF10:
        # Nicira flow stats: vendor, subtype and padding come first.
        for entry in _entries(reply_body[12:]):
            (length, table, _, _, priority, idle, hard, match_len, _, _, cookie, _, _
             ) = NX_FLOW_STATS.unpack_from(entry)
            body = NX_FLOW_MOD.pack(NX_VENDOR, NXT_FLOW_MOD, cookie, (table << 8) | ADD, idle,
                                    hard, priority, NO_BUFFER, OFPP10_NONE, 0, match_len)
            yield encode(version, EXPERIMENTER, body + entry[NX_FLOW_STATS.size:length])
        return
    if version >= OF15:
        yield from _of15_flow_mods(version, reply_body)
        return
    for entry in _entries(reply_body):
        (length, table, _, _, priority, idle, hard, flags, importance, cookie, _, _
         ) = OF11_FLOW_STATS.unpack_from(entry)
        if version < OF14:
            importance = 0
        if version < OF13:
            flags = 0
        body = OF11_FLOW_MOD.pack(cookie, 0, table, ADD, idle, hard, priority, NO_BUFFER,
                                  ANY32, ANY32, flags, importance)
        yield encode(version, FLOW_MOD, body + entry[OF11_FLOW_STATS.size:length])


def _padded(length: int) -> int:
    return (length + 7) // 8 * 8


def _of15_flow_mods(version: int, reply_body: bytes) -> Iterator[bytes]:
    """OpenFlow 1.5 flow descriptions carry their counters as OXS stats between
    the match and the instructions; those are left out of the flow_mod."""
    for entry in _entries(reply_body):
        (length, table, priority, idle, hard, flags, importance, cookie
         ) = OF15_FLOW_DESC.unpack_from(entry)
        match_end = OF15_FLOW_DESC.size + _padded(int.from_bytes(entry[26:28], "big"))
        stats_end = match_end + _padded(int.from_bytes(entry[match_end + 2:match_end + 4], "big"))
        body = OF11_FLOW_MOD.pack(cookie, 0, table, ADD, idle, hard, priority, NO_BUFFER,
                                  ANY32, ANY32, flags, importance)
        yield encode(version, FLOW_MOD,
                     body + entry[OF15_FLOW_DESC.size:match_end] + entry[stats_end:length])


def flow_mod_table_id(version: int) -> bytes:
    """Lets OpenFlow 1.0 flow_mods name their table (a Nicira extension)."""
    return _nx(version, NXT_FLOW_MOD_TABLE_ID, struct.pack("!B7x", 1))


def delete_all_flows(version: int) -> bytes:
    if version == OF10:
        body = NX_FLOW_MOD.pack(NX_VENDOR, NXT_FLOW_MOD, 0, (OFPTT_ALL << 8) | DELETE, 0, 0, 0,
                                NO_BUFFER, OFPP10_NONE, 0, 0)
        return encode(version, EXPERIMENTER, body)
    body = OF11_FLOW_MOD.pack(0, 0, OFPTT_ALL, DELETE, 0, 0, 0, NO_BUFFER, ANY32, ANY32, 0, 0)
    return encode(version, FLOW_MOD, body + EMPTY_OXM_MATCH)


# -- groups ---------------------------------------------------------------------

# OpenFlow 1.0 has groups through Nicira extensions, in OpenFlow 1.5's layout.

def group_desc_request(version: int) -> bytes:
    if version == OF10:
        return (struct.pack("!H", MP_VENDOR) + struct.pack("!II4x", NX_VENDOR, NXST_GROUP_DESC)
                + struct.pack("!I4x", OFPG_ALL))
    if version >= OF15:
        return struct.pack("!HI4x", MP_GROUP_DESC, OFPG_ALL)
    return struct.pack("!H", MP_GROUP_DESC)


def _group_mod(version: int, body: bytes) -> bytes:
    if version == OF10:
        return _nx(version, NXT_GROUP_MOD, body)
    return encode(version, GROUP_MOD, body)


def group_mods(version: int, reply_body: bytes) -> Iterator[bytes]:
    if version == OF10:
        reply_body = reply_body[12:]  # vendor, subtype, padding
    for entry in _entries(reply_body):
        length, type_, group_id = struct.unpack_from("!HBxI", entry)
        if version >= OF15 or version == OF10:
            (bucket_len,) = struct.unpack_from("!H", entry, 8)
            body = struct.pack("!HBxIH2xI", ADD, type_, group_id, bucket_len, OFPG15_BUCKET_ALL)
            yield _group_mod(version, body + entry[16:length])
        else:
            body = struct.pack("!HBxI", ADD, type_, group_id)
            yield encode(version, GROUP_MOD, body + entry[8:length])


# -- meters ---------------------------------------------------------------------

def meter_config_request() -> bytes:
    return struct.pack("!HI4x", MP_METER_CONFIG, OFPM_ALL)


@dataclass(frozen=True)
class Meter:
    meter_id: int
    config: bytes  # flags and bands, as the switch reported them

    def mod(self, version: int, command: int = ADD) -> bytes:
        return encode(version, METER_MOD, struct.pack("!H", command) + self.config)


def meters(reply_body: bytes) -> Iterator[Meter]:
    for entry in _entries(reply_body):
        (meter_id,) = struct.unpack_from("!I", entry, 4)
        yield Meter(meter_id, entry[2:])


def meter_id_of_mod(message: bytes) -> int:
    return int.from_bytes(message[12:16], "big")


def delete_meter(version: int, meter_id: int) -> bytes:
    return encode(version, METER_MOD, struct.pack("!HHI", METER_DELETE, 0, meter_id))


# -- TLV map --------------------------------------------------------------------

def tlv_table_request(version: int) -> bytes:
    return _nx(version, NXT_TLV_TABLE_REQUEST)


def tlv_maps(reply: bytes) -> bytes:
    """The mappings (8 bytes each) of an NXT_TLV_TABLE_REPLY message."""
    return reply[8 + 8 + 16:]


def tlv_table_mod(version: int, maps: bytes, command: int = NXTTMC_ADD) -> bytes:
    return _nx(version, NXT_TLV_TABLE_MOD, struct.pack("!H6x", command) + maps)


def tlv_maps_of_mod(message: bytes) -> bytes:
    return message[8 + 8 + 8:]


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
        return encode(version, FEATURES_REQUEST), False
    if version >= OF15:
        return struct.pack("!HI4x", MP_PORT_DESC, ANY32), True
    return struct.pack("!H", MP_PORT_DESC), True


def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="surrogateescape")


def ports_from_features(version: int, reply: bytes) -> Iterator[PortConfig]:
    body = reply[8 + 24:]
    if version == OF10:
        for off in range(0, len(body) - 47, 48):
            port_no, hw, name, config = struct.unpack_from("!H6s16sI", body, off)
            yield PortConfig(port_no, _name(name), hw, config)
    else:
        for off in range(0, len(body) - 63, 64):
            port_no, hw, name, config = struct.unpack_from("!I4x6s2x16sI", body, off)
            yield PortConfig(port_no, _name(name), hw, config)


def ports_from_desc(version: int, reply_body: bytes) -> Iterator[PortConfig]:
    if version == OF13:
        for off in range(0, len(reply_body) - 63, 64):
            port_no, hw, name, config = struct.unpack_from("!I4x6s2x16sI", reply_body, off)
            yield PortConfig(port_no, _name(name), hw, config)
        return
    off = 0
    while off + 40 <= len(reply_body):
        port_no, length, hw, name, config = struct.unpack_from("!IH2x6s2x16sI", reply_body, off)
        yield PortConfig(port_no, _name(name), hw, config)
        off += max(length, 40)


def port_config_mask(version: int) -> int:
    return PORT_CONFIG_MASK_OF10 if version == OF10 else PORT_CONFIG_MASK_OF11


def port_mod(version: int, port: PortConfig, config: int) -> bytes:
    mask = port_config_mask(version)
    if version == OF10:
        return encode(version, OF10_PORT_MOD,
                      struct.pack("!H6sIII4x", port.port_no, port.hw_addr, config, mask, 0))
    if version >= OF14:
        return encode(version, PORT_MOD,
                      struct.pack("!I4x6s2xII", port.port_no, port.hw_addr, config, mask))
    return encode(version, PORT_MOD,
                  struct.pack("!I4x6s2xIII4x", port.port_no, port.hw_addr, config, mask, 0))



# -- what a restore needs to compare tables ---------------------------------------

DELETE_STRICT = 4
GROUP_MODIFY = 1


def aggregate_request(version: int) -> bytes:
    """Flow count of every table (OFPMP_AGGREGATE; NXST_AGGREGATE at 1.0)."""
    if version == OF10:
        return (struct.pack("!H", MP_VENDOR) + struct.pack("!II4x", NX_VENDOR, 1)
                + struct.pack("!HHB3x", OFPP10_NONE, 0, OFPTT_ALL))
    return struct.pack("!HB3xII4xQQ", 2, OFPTT_ALL, ANY32, ANY32, 0, 0) + EMPTY_OXM_MATCH


OXS_FLOW_COUNT = 3


def aggregate_flow_count(version: int, reply_body: bytes) -> int:
    if version >= OF15:
        # OXS stats: reserved(2), length(2), then fields (class, field << 1, length).
        end = int.from_bytes(reply_body[2:4], "big")
        offset = 4
        while offset + 4 <= end:
            field, length = reply_body[offset + 2] >> 1, reply_body[offset + 3]
            if field == OXS_FLOW_COUNT:
                return int.from_bytes(reply_body[offset + 4:offset + 4 + length], "big")
            offset += 4 + length
        raise ValueError("aggregate reply without a flow count")
    offset = 12 if version == OF10 else 0
    return int.from_bytes(reply_body[offset + 16:offset + 20], "big")


def flow_delete_strict(version: int, flow_mod: bytes) -> bytes:
    """The DELETE_STRICT that removes exactly the flow `flow_mod` adds."""
    out = bytearray(flow_mod)
    if version == OF10:
        match_len = int.from_bytes(flow_mod[40:42], "big")
        del out[48 + _padded(match_len):]
        out[25] = DELETE_STRICT  # low byte of (table << 8 | command)
    else:
        match_len = int.from_bytes(flow_mod[50:52], "big")
        del out[48 + _padded(match_len):]
        out[25] = DELETE_STRICT
    out[2:4] = len(out).to_bytes(2, "big")
    return bytes(out)


def flow_key(version: int, flow_mod: bytes) -> bytes:
    """What identifies a flow in its table: table, priority and match. An add
    with the same key replaces the flow (in one step, never absent), and a
    strict delete of that key removes whichever flow has it."""
    if version == OF10:
        match_len = int.from_bytes(flow_mod[40:42], "big")
    else:
        match_len = int.from_bytes(flow_mod[50:52], "big")
    return flow_mod[24:25] + flow_mod[30:32] + flow_mod[48:48 + _padded(match_len)]


def is_catchall(version: int, flow_mod: bytes) -> bool:
    """Whether a flow_mod has the key of a bridge's default flow: table 0,
    priority 0, empty match (whatever its actions)."""
    if flow_mod[24] != 0 or flow_mod[30:32] != b"\0\0":  # table (1.0: in command), priority
        return False
    if version == OF10:
        return flow_mod[40:42] == b"\0\0"
    return flow_mod[50:52] == EMPTY_OXM_MATCH[2:4]


def _group_body_offset(version: int) -> int:
    return 16 if version == OF10 else 8  # Nicira header, or the plain one


def group_id_of_mod(version: int, group_mod: bytes) -> int:
    offset = _group_body_offset(version) + 4
    return int.from_bytes(group_mod[offset:offset + 4], "big")


def group_with_command(version: int, group_mod: bytes, command: int) -> bytes:
    offset = _group_body_offset(version)
    return group_mod[:offset] + command.to_bytes(2, "big") + group_mod[offset + 2:]


def delete_group(version: int, group_id: int) -> bytes:
    if version >= OF15 or version == OF10:
        body = struct.pack("!HBxIH2xI", GROUP_DELETE, 0, group_id, 0, OFPG15_BUCKET_ALL)
    else:
        body = struct.pack("!HBxI", GROUP_DELETE, 0, group_id)
    return _group_mod(version, body)


OFPP10_NORMAL, OFPP_NORMAL = 0xFFFA, 0xFFFFFFFA


def is_default_flow(version: int, flow_mod: bytes) -> bool:
    """Whether a flow_mod (as saved) is a bridge's own `priority=0 actions=NORMAL`
    in table 0: empty match, and its only action output to NORMAL."""
    if version == OF10:
        command, priority, match_len = (int.from_bytes(flow_mod[24:26], "big"),
                                        int.from_bytes(flow_mod[30:32], "big"),
                                        int.from_bytes(flow_mod[40:42], "big"))
        # actions: one OFPAT_OUTPUT (type 0, length 8) to NORMAL
        actions = flow_mod[48:]
        return (command >> 8 == 0 and priority == 0 and match_len == 0
                and actions[:6] == struct.pack("!HHH", 0, 8, OFPP10_NORMAL))
    table, priority = flow_mod[24], int.from_bytes(flow_mod[30:32], "big")
    match_len = int.from_bytes(flow_mod[50:52], "big")
    instructions = flow_mod[48 + _padded(match_len):]
    # one APPLY_ACTIONS (type 4, length 24) holding one OUTPUT (type 0, length 16) to NORMAL
    return (table == 0 and priority == 0 and match_len == 4
            and instructions[:4] == struct.pack("!HH", 4, 24)
            and instructions[8:16] == struct.pack("!HHI", 0, 16, OFPP_NORMAL))
