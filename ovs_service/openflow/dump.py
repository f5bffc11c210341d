"""What a bridge holds now, read over an OpenFlow connection.

The save stores it, as the messages that re-create it; the restore compares
it with what was saved. Each reader asks the switch once and turns its
replies into messages or settings with `openflow.state`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from ovs_service.log import timed
from ovs_service.openflow import ofproto as ofp
from ovs_service.openflow import state as st
from ovs_service.openflow.connection import Connection
from ovs_service.openflow.ofproto import OF13


def tlv_mods(conn: Connection) -> Iterator[bytes]:
    maps = current_tlv_maps(conn)
    if maps:
        yield st.tlv_table_mod(conn.version, maps)


def current_tlv_maps(conn: Connection) -> bytes:
    reply = conn.request(st.tlv_table_request(conn.version), ofp.OFPT_EXPERIMENTER)
    return st.tlv_maps(reply.data)


def meter_mods(conn: Connection) -> Iterator[bytes]:
    for meter in current_meters(conn):
        yield meter.mod(conn.version)


def current_meters(conn: Connection) -> list[st.Meter]:
    if conn.version < OF13:
        return []
    return [m for body in conn.multipart(st.meter_config_request()) for m in st.meters(body)]


def meter_features(conn: Connection) -> st.MeterFeatures:
    return st.meter_features(next(iter(conn.multipart(st.meter_features_request()))))


def group_mods(conn: Connection) -> Iterator[bytes]:
    for body in conn.multipart(st.group_desc_request(conn.version)):
        yield from st.group_mods(conn.version, body)


def flow_mods(conn: Connection) -> Iterator[bytes]:
    for body in conn.multipart(st.flow_stats_request(conn.version)):
        yield from st.flow_mods(conn.version, body)


def current_ports(conn: Connection) -> list[st.PortConfig]:
    request, is_multipart = st.port_desc_request(conn.version)
    if is_multipart:
        return [p for body in conn.multipart(request)
                for p in st.ports_from_desc(conn.version, body)]
    reply = conn.request(request, ofp.OFPT_FEATURES_REPLY)
    return list(st.ports_from_features(conn.version, reply.data))


def flow_count(conn: Connection) -> int:
    with timed("flow-count", conn.bridge) as record:
        body = next(iter(conn.multipart(st.aggregate_request(conn.version))))
        record.count = st.aggregate_flow_count(conn.version, body)
    return record.count


def software(conn: Connection) -> str:
    """The switch's software version as it describes itself (Open vSwitch:
    `3.1.0`): the running daemon's, whatever its database says."""
    body = next(iter(conn.multipart(struct.pack(ofp.OFP_MULTIPART_TYPE_PACK_STR,
                                                ofp.OFPMP_DESC))))
    sw_desc = body[ofp.OFP_DESC_SW_DESC_OFFSET:ofp.OFP_DESC_SW_DESC_OFFSET + ofp.DESC_STR_LEN]
    return sw_desc.split(b"\0", 1)[0].decode(errors="replace")
