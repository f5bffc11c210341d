"""OpenFlow's numbers and struct layouts, named, as far as ovs-service uses them.

In the manner of Ryu's `ofproto_v1_3.py`: every struct has a format string
with its size asserted next to it, and offsets into messages are computed
from named sizes. Messages are built by `messages.encode`, which writes the
`ofp_header`; so the layout of what follows the header is given as
`..._BODY_PACK_STR`, and an offset into a whole message adds
`OFP_HEADER_SIZE`. Names without a version are OpenFlow 1.3's; `OFP10_`,
`OFP14_` and `OFP15_` mark what is different at that version, `NX` Nicira's
extensions and `ONF` the Open Networking Foundation's.
"""

from __future__ import annotations

from struct import calcsize

# -- versions ---------------------------------------------------------------------

OF10, OF11, OF12, OF13, OF14, OF15 = 1, 2, 3, 4, 5, 6
VERSIONS_SPOKEN = frozenset({OF10, OF12, OF13, OF14, OF15})
VERSION_NAME = {OF10: "OpenFlow10", OF11: "OpenFlow11", OF12: "OpenFlow12",
                OF13: "OpenFlow13", OF14: "OpenFlow14", OF15: "OpenFlow15"}

# Structs are padded to a multiple of this (matches, hello elements, stats).
OFP_ALIGN = 8

# -- struct ofp_header --------------------------------------------------------------

_OFP_HEADER_PACK_STR = "BBHI"  # version, type, length, xid
OFP_HEADER_PACK_STR = "!" + _OFP_HEADER_PACK_STR
OFP_HEADER_SIZE = 8
assert calcsize(OFP_HEADER_PACK_STR) == OFP_HEADER_SIZE
OFP_HEADER_LENGTH_OFFSET = calcsize("!BB")
OFP_HEADER_XID_OFFSET = calcsize("!BBH")
OFP_XID_PACK_STR = "!I"
assert OFP_HEADER_XID_OFFSET + calcsize(OFP_XID_PACK_STR) == OFP_HEADER_SIZE

# -- message types (enum ofp_type) ------------------------------------------------------

OFPT_HELLO = 0
OFPT_ERROR = 1
OFPT_ECHO_REQUEST = 2
OFPT_ECHO_REPLY = 3
OFPT_EXPERIMENTER = 4  # OFPT_VENDOR at 1.0
OFPT_FEATURES_REQUEST = 5
OFPT_FEATURES_REPLY = 6
OFPT_FLOW_MOD = 14
OFPT_GROUP_MOD = 15
OFPT_PORT_MOD = 16
OFPT_MULTIPART_REQUEST = 18
OFPT_MULTIPART_REPLY = 19
OFPT_BARRIER_REQUEST = 20
OFPT_BARRIER_REPLY = 21
OFPT_METER_MOD = 29
OFPT_BUNDLE_CONTROL = 33  # 1.4
OFPT_BUNDLE_ADD_MESSAGE = 34  # 1.4
# OpenFlow 1.0 numbers these differently.
OFPT10_PORT_MOD = 15
OFPT10_STATS_REQUEST = 16
OFPT10_STATS_REPLY = 17
OFPT10_BARRIER_REQUEST = 18
OFPT10_BARRIER_REPLY = 19

# -- hello --------------------------------------------------------------------------

OFPHET_VERSIONBITMAP = 1
# struct ofp_hello_elem_versionbitmap with one bitmap word: type, length, bitmap.
OFP_HELLO_ELEM_VERSIONBITMAP_PACK_STR = "!HHI"
OFP_HELLO_ELEM_VERSIONBITMAP_SIZE = 8
assert calcsize(OFP_HELLO_ELEM_VERSIONBITMAP_PACK_STR) == OFP_HELLO_ELEM_VERSIONBITMAP_SIZE

# -- experimenter (vendor) messages ------------------------------------------------------

# struct ofp_experimenter_header's body (nicira_header's alike): experimenter, exp_type.
OFP_EXPERIMENTER_BODY_PACK_STR = "!II"
OFP_EXPERIMENTER_BODY_SIZE = 8
assert calcsize(OFP_EXPERIMENTER_BODY_PACK_STR) == OFP_EXPERIMENTER_BODY_SIZE
OFP_EXPERIMENTER_HEADER_SIZE = OFP_HEADER_SIZE + OFP_EXPERIMENTER_BODY_SIZE

NX_VENDOR_ID = 0x00002320
ONF_EXPERIMENTER_ID = 0x4F4E4600

# -- multipart (stats) requests and replies -----------------------------------------------

# What follows the header: type, flags, pad (1.1+); type, flags (1.0).
OFP_MULTIPART_BODY_PACK_STR = "!HH4x"
OFP_MULTIPART_BODY_SIZE = 8
assert calcsize(OFP_MULTIPART_BODY_PACK_STR) == OFP_MULTIPART_BODY_SIZE
OFP10_STATS_BODY_PACK_STR = "!HH"
OFP10_STATS_BODY_SIZE = 4
assert calcsize(OFP10_STATS_BODY_PACK_STR) == OFP10_STATS_BODY_SIZE
# Requests are written here as their type followed by their body.
OFP_MULTIPART_TYPE_PACK_STR = "!H"
OFP_MULTIPART_TYPE_SIZE = 2
assert calcsize(OFP_MULTIPART_TYPE_PACK_STR) == OFP_MULTIPART_TYPE_SIZE

OFPMPF_REPLY_MORE = 1 << 0  # OFPSF_REPLY_MORE at 1.0

OFPMP_DESC = 0  # OFPST_DESC at 1.0, the same
OFPMP_FLOW = 1  # OFPMP_FLOW_DESC at 1.5
OFPMP_AGGREGATE = 2  # OFPMP_AGGREGATE_STATS at 1.5
OFPMP_GROUP_DESC = 7
OFPMP_METER_CONFIG = 10
OFPMP_METER_FEATURES = 11
OFPMP_PORT_DESC = 13
OFPMP_EXPERIMENTER = 0xFFFF  # OFPST_VENDOR at 1.0

# struct ofp_desc (every version): mfr_desc, hw_desc, sw_desc, serial_num,
# dp_desc; Open vSwitch puts its version in sw_desc.
DESC_STR_LEN = 256
SERIAL_NUM_LEN = 32
OFP_DESC_PACK_STR = "!" + f"{DESC_STR_LEN}s" * 3 + f"{SERIAL_NUM_LEN}s{DESC_STR_LEN}s"
OFP_DESC_SIZE = 1056
assert calcsize(OFP_DESC_PACK_STR) == OFP_DESC_SIZE
OFP_DESC_SW_DESC_OFFSET = 2 * DESC_STR_LEN

# struct nicira10_stats_msg after its 1.0 stats header: vendor, subtype, pad.
NX_STATS_BODY_PACK_STR = "!II4x"
NX_STATS_BODY_SIZE = 12
assert calcsize(NX_STATS_BODY_PACK_STR) == NX_STATS_BODY_SIZE

# Nicira stats subtypes.
NXST_FLOW = 0
NXST_AGGREGATE = 1
NXST_GROUP_DESC = 8

# -- wildcards and reserved numbers ---------------------------------------------------------

OFP_NO_BUFFER = 0xFFFFFFFF
OFPP_ANY = 0xFFFFFFFF
OFPP_NORMAL = 0xFFFFFFFA
OFPP10_NONE = 0xFFFF
OFPP10_NORMAL = 0xFFFA
OFPTT_ALL = 0xFF
OFPG_ANY = 0xFFFFFFFF
OFPG_ALL = 0xFFFFFFFC
OFPG15_BUCKET_ALL = 0xFFFFFFFF
OFPM_ALL = 0xFFFFFFFF

# -- matches, instructions, actions, stats ----------------------------------------------------

OFPMT_OXM = 1
# struct ofp_match: type, length (of these and the OXM fields, not of the padding).
OFP_MATCH_HEADER_PACK_STR = "!HH"
OFP_MATCH_HEADER_SIZE = 4
assert calcsize(OFP_MATCH_HEADER_PACK_STR) == OFP_MATCH_HEADER_SIZE
OFP_MATCH_LENGTH_OFFSET = calcsize("!H")
# The match of everything: no OXM fields, padded.
OFP_EMPTY_MATCH_PACK_STR = OFP_MATCH_HEADER_PACK_STR + "4x"
OFP_EMPTY_MATCH_SIZE = 8
assert calcsize(OFP_EMPTY_MATCH_PACK_STR) == OFP_EMPTY_MATCH_SIZE

OFPIT_APPLY_ACTIONS = 4
# struct ofp_instruction_actions: type, length, pad; actions follow.
OFP_INSTRUCTION_ACTIONS_PACK_STR = "!HH4x"
OFP_INSTRUCTION_ACTIONS_SIZE = 8
assert calcsize(OFP_INSTRUCTION_ACTIONS_PACK_STR) == OFP_INSTRUCTION_ACTIONS_SIZE

OFPAT_OUTPUT = 0
# struct ofp_action_output: type, length, port, max_len, pad.
OFP_ACTION_OUTPUT_PACK_STR = "!HHIH6x"
OFP_ACTION_OUTPUT_SIZE = 16
assert calcsize(OFP_ACTION_OUTPUT_PACK_STR) == OFP_ACTION_OUTPUT_SIZE
OFP10_ACTION_OUTPUT_PACK_STR = "!HHHH"
OFP10_ACTION_OUTPUT_SIZE = 8
assert calcsize(OFP10_ACTION_OUTPUT_PACK_STR) == OFP10_ACTION_OUTPUT_SIZE

# struct ofp_stats (1.5): reserved, length; OXS fields follow.
OFP15_STATS_HEADER_PACK_STR = "!HH"
OFP15_STATS_HEADER_SIZE = 4
assert calcsize(OFP15_STATS_HEADER_PACK_STR) == OFP15_STATS_HEADER_SIZE
OFP15_STATS_LENGTH_OFFSET = calcsize("!H")
# An OXS field's header: class, field (shifted left by one), length; its value follows.
OXS_HEADER_PACK_STR = "!HBB"
OXS_HEADER_SIZE = 4
assert calcsize(OXS_HEADER_PACK_STR) == OXS_HEADER_SIZE
OXS_FIELD_OFFSET = calcsize("!H")
OXS_LENGTH_OFFSET = calcsize("!HB")
OXS_FIELD_SHIFT = 1
OXS_OF_FLOW_COUNT = 3

# -- flows -----------------------------------------------------------------------------------

OFPFC_ADD = 0
OFPFC_MODIFY = 1
OFPFC_DELETE = 3
OFPFC_DELETE_STRICT = 4

# struct ofp_flow_mod's body (1.1 to 1.5), up to its match: cookie, cookie_mask,
# table_id, command, idle_timeout, hard_timeout, priority, buffer_id, out_port,
# out_group, flags, importance (1.4; padding before).
OFP_FLOW_MOD_BODY_PACK_STR = "!QQBBHHHIIIHH"
OFP_FLOW_MOD_BODY_SIZE = 40
assert calcsize(OFP_FLOW_MOD_BODY_PACK_STR) == OFP_FLOW_MOD_BODY_SIZE
OFP_FLOW_MOD_TABLE_ID_OFFSET = OFP_HEADER_SIZE + calcsize("!QQ")
OFP_FLOW_MOD_COMMAND_OFFSET = OFP_HEADER_SIZE + calcsize("!QQB")
OFP_FLOW_MOD_PRIORITY_OFFSET = OFP_HEADER_SIZE + calcsize("!QQBBHH")
OFP_FLOW_MOD_MATCH_OFFSET = OFP_HEADER_SIZE + OFP_FLOW_MOD_BODY_SIZE
OFP_FLOW_MOD_MATCH_LENGTH_OFFSET = OFP_FLOW_MOD_MATCH_OFFSET + OFP_MATCH_LENGTH_OFFSET

# struct ofp_flow_stats (1.1 to 1.4), up to its match: length, table_id, pad,
# duration_sec, duration_nsec, priority, idle_timeout, hard_timeout, flags,
# importance (1.4; padding before), pad, cookie, packet_count, byte_count.
OFP_FLOW_STATS_PACK_STR = "!HBxIIHHHHHxxQQQ"
OFP_FLOW_STATS_SIZE = 48
assert calcsize(OFP_FLOW_STATS_PACK_STR) == OFP_FLOW_STATS_SIZE
# struct ofp_flow_desc (1.5), up to its match: length, pad, table_id, pad,
# priority, idle_timeout, hard_timeout, flags, importance, cookie; the match,
# the OXS stats and the instructions follow.
OFP15_FLOW_DESC_PACK_STR = "!H2xBxHHHHHQ"
OFP15_FLOW_DESC_SIZE = 24
assert calcsize(OFP15_FLOW_DESC_PACK_STR) == OFP15_FLOW_DESC_SIZE
# struct ofp_flow_stats_request and ofp_aggregate_stats_request (1.1+), before
# their match: table_id, pad, out_port, out_group, pad, cookie, cookie_mask.
OFP_FLOW_STATS_REQUEST_PACK_STR = "!B3xII4xQQ"
OFP_FLOW_STATS_REQUEST_SIZE = 32
assert calcsize(OFP_FLOW_STATS_REQUEST_PACK_STR) == OFP_FLOW_STATS_REQUEST_SIZE
# struct ofp_aggregate_stats_reply (1.1 to 1.4; Nicira's at 1.0):
# packet_count, byte_count, flow_count, pad.
OFP_AGGREGATE_STATS_REPLY_PACK_STR = "!QQI4x"
OFP_AGGREGATE_STATS_REPLY_SIZE = 24
assert calcsize(OFP_AGGREGATE_STATS_REPLY_PACK_STR) == OFP_AGGREGATE_STATS_REPLY_SIZE
OFP_AGGREGATE_STATS_REPLY_FLOW_COUNT_OFFSET = calcsize("!QQ")

# Nicira's flows, at 1.0.
NXT_FLOW_MOD = 13
NXT_FLOW_MOD_TABLE_ID = 15
# nicira_header's vendor and subtype, then struct nx_flow_mod: cookie, command
# ((table_id << 8) | command, with NXT_FLOW_MOD_TABLE_ID), idle_timeout,
# hard_timeout, priority, buffer_id, out_port, flags, match_len, pad; the
# nx_match follows.
NX_FLOW_MOD_BODY_PACK_STR = "!IIQHHHHIHHH6x"
NX_FLOW_MOD_BODY_SIZE = 40
assert calcsize(NX_FLOW_MOD_BODY_PACK_STR) == NX_FLOW_MOD_BODY_SIZE
NX_FLOW_MOD_COMMAND_OFFSET = OFP_HEADER_SIZE + calcsize("!IIQ")
NX_FLOW_MOD_TABLE_ID_OFFSET = NX_FLOW_MOD_COMMAND_OFFSET  # the command's high byte
NX_FLOW_MOD_COMMAND_LOW_OFFSET = NX_FLOW_MOD_COMMAND_OFFSET + calcsize("!B")
NX_FLOW_MOD_PRIORITY_OFFSET = OFP_HEADER_SIZE + calcsize("!IIQHHH")
NX_FLOW_MOD_MATCH_LEN_OFFSET = OFP_HEADER_SIZE + calcsize("!IIQHHHHIHH")
NX_FLOW_MOD_MATCH_OFFSET = OFP_HEADER_SIZE + NX_FLOW_MOD_BODY_SIZE
NX_FLOW_MOD_TABLE_ID_SHIFT = 8
# Both layouts keep the table, the command and the priority at the same places.
assert NX_FLOW_MOD_TABLE_ID_OFFSET == OFP_FLOW_MOD_TABLE_ID_OFFSET
assert NX_FLOW_MOD_COMMAND_LOW_OFFSET == OFP_FLOW_MOD_COMMAND_OFFSET
assert NX_FLOW_MOD_PRIORITY_OFFSET == OFP_FLOW_MOD_PRIORITY_OFFSET
assert NX_FLOW_MOD_MATCH_OFFSET == OFP_FLOW_MOD_MATCH_OFFSET
# struct nx_flow_mod_table_id: set (enable), pad.
NX_FLOW_MOD_TABLE_ID_PACK_STR = "!B7x"
NX_FLOW_MOD_TABLE_ID_SIZE = 8
assert calcsize(NX_FLOW_MOD_TABLE_ID_PACK_STR) == NX_FLOW_MOD_TABLE_ID_SIZE
NX_FLOW_MOD_TABLE_ID_ENABLE = 1
# struct nx_flow_stats, up to its nx_match: length, table_id, pad, duration_sec,
# duration_nsec, priority, idle_timeout, hard_timeout, match_len, idle_age,
# hard_age, cookie, packet_count, byte_count.
NX_FLOW_STATS_PACK_STR = "!HBxIIHHHHHHQQQ"
NX_FLOW_STATS_SIZE = 48
assert calcsize(NX_FLOW_STATS_PACK_STR) == NX_FLOW_STATS_SIZE
# struct nx_flow_stats_request and nx_aggregate_stats_request: out_port,
# match_len, table_id, pad.
NX_FLOW_STATS_REQUEST_PACK_STR = "!HHB3x"
NX_FLOW_STATS_REQUEST_SIZE = 8
assert calcsize(NX_FLOW_STATS_REQUEST_PACK_STR) == NX_FLOW_STATS_REQUEST_SIZE

# -- groups ----------------------------------------------------------------------------------

OFPGC_ADD = 0
OFPGC_MODIFY = 1
OFPGC_DELETE = 2

# struct ofp_group_mod's body (1.1 to 1.4): command, type, pad, group_id; buckets follow.
OFP_GROUP_MOD_BODY_PACK_STR = "!HBxI"
OFP_GROUP_MOD_BODY_SIZE = 8
assert calcsize(OFP_GROUP_MOD_BODY_PACK_STR) == OFP_GROUP_MOD_BODY_SIZE
# At 1.5 (and Nicira's at 1.0): command, type, pad, group_id, bucket_array_len,
# pad, command_bucket_id; buckets and properties follow.
OFP15_GROUP_MOD_BODY_PACK_STR = "!HBxIH2xI"
OFP15_GROUP_MOD_BODY_SIZE = 16
assert calcsize(OFP15_GROUP_MOD_BODY_PACK_STR) == OFP15_GROUP_MOD_BODY_SIZE
OFP_GROUP_MOD_GROUP_ID_OFFSET = calcsize("!HBx")  # in the body, in both layouts
# struct ofp_group_desc_stats (1.1 to 1.4): length, type, pad, group_id; buckets follow.
OFP_GROUP_DESC_PACK_STR = "!HBxI"
OFP_GROUP_DESC_SIZE = 8
assert calcsize(OFP_GROUP_DESC_PACK_STR) == OFP_GROUP_DESC_SIZE
# struct ofp_group_desc (1.5, and Nicira's at 1.0): length, type, pad,
# group_id, bucket_array_len, pad; buckets and properties follow.
OFP15_GROUP_DESC_PACK_STR = "!HBxIH6x"
OFP15_GROUP_DESC_SIZE = 16
assert calcsize(OFP15_GROUP_DESC_PACK_STR) == OFP15_GROUP_DESC_SIZE
# The group description request's body at 1.5 and at 1.0: group_id, pad.
OFP15_GROUP_MULTIPART_REQUEST_PACK_STR = "!I4x"
OFP15_GROUP_MULTIPART_REQUEST_SIZE = 8
assert calcsize(OFP15_GROUP_MULTIPART_REQUEST_PACK_STR) == OFP15_GROUP_MULTIPART_REQUEST_SIZE

NXT_GROUP_MOD = 31

# -- meters ----------------------------------------------------------------------------------

OFPMC_ADD = 0
OFPMC_MODIFY = 1
OFPMC_DELETE = 2

# struct ofp_meter_mod's body: command, flags, meter_id; bands follow.
OFP_METER_MOD_BODY_PACK_STR = "!HHI"
OFP_METER_MOD_BODY_SIZE = 8
assert calcsize(OFP_METER_MOD_BODY_PACK_STR) == OFP_METER_MOD_BODY_SIZE
OFP_METER_MOD_COMMAND_PACK_STR = "!H"
OFP_METER_MOD_METER_ID_OFFSET = OFP_HEADER_SIZE + calcsize("!HH")
# struct ofp_meter_config: length, flags, meter_id; bands follow. Without its
# length, it is a meter_mod's body without the command.
OFP_METER_CONFIG_PACK_STR = "!HHI"
OFP_METER_CONFIG_SIZE = 8
assert calcsize(OFP_METER_CONFIG_PACK_STR) == OFP_METER_CONFIG_SIZE
OFP_METER_CONFIG_FLAGS_OFFSET = calcsize("!H")
# struct ofp_meter_multipart_request: meter_id, pad.
OFP_METER_MULTIPART_REQUEST_PACK_STR = "!I4x"
OFP_METER_MULTIPART_REQUEST_SIZE = 8
assert calcsize(OFP_METER_MULTIPART_REQUEST_PACK_STR) == OFP_METER_MULTIPART_REQUEST_SIZE

# struct ofp_meter_band_header: type, len, rate, burst_size; a band's own fields follow.
OFP_METER_BAND_HEADER_PACK_STR = "!HHII"
OFP_METER_BAND_HEADER_SIZE = 12
assert calcsize(OFP_METER_BAND_HEADER_PACK_STR) == OFP_METER_BAND_HEADER_SIZE
OFPM_MAX = 0xFFFF0000  # the last meter number; those above are virtual meters
# struct ofp_meter_features: max_meter, band_types (a bitmap of 1 << OFPMBT_*),
# capabilities (of OFPMF_* flags), max_bands, max_color, pad.
OFP_METER_FEATURES_PACK_STR = "!IIIBB2x"
OFP_METER_FEATURES_SIZE = 16
assert calcsize(OFP_METER_FEATURES_PACK_STR) == OFP_METER_FEATURES_SIZE

# -- TLV map (Nicira) --------------------------------------------------------------------------

NXT_TLV_TABLE_MOD = 24
NXT_TLV_TABLE_REQUEST = 25
NXT_TLV_TABLE_REPLY = 26
NXTTMC_ADD = 0
NXTTMC_DELETE = 1
NXTTMC_CLEAR = 2
# struct nx_tlv_table_mod: command, pad; mappings follow.
NX_TLV_TABLE_MOD_PACK_STR = "!H6x"
NX_TLV_TABLE_MOD_SIZE = 8
assert calcsize(NX_TLV_TABLE_MOD_PACK_STR) == NX_TLV_TABLE_MOD_SIZE
# struct nx_tlv_table_reply: max_option_space, max_fields, reserved; mappings follow.
NX_TLV_TABLE_REPLY_PACK_STR = "!IH10x"
NX_TLV_TABLE_REPLY_SIZE = 16
assert calcsize(NX_TLV_TABLE_REPLY_PACK_STR) == NX_TLV_TABLE_REPLY_SIZE
# struct nx_tlv_map: option_class, option_type, option_len, index, pad.
NX_TLV_MAP_PACK_STR = "!HBBH2x"
NX_TLV_MAP_SIZE = 8
assert calcsize(NX_TLV_MAP_PACK_STR) == NX_TLV_MAP_SIZE

# -- ports -------------------------------------------------------------------------------------

# enum ofp_port_config
OFPPC_PORT_DOWN = 1 << 0
OFPPC10_NO_STP = 1 << 1
OFPPC_NO_RECV = 1 << 2
OFPPC10_NO_RECV_STP = 1 << 3
OFPPC10_NO_FLOOD = 1 << 4
OFPPC_NO_FWD = 1 << 5
OFPPC_NO_PACKET_IN = 1 << 6

# struct ofp_switch_features' body: datapath_id, n_buffers, n_tables,
# auxiliary_id (padding at 1.0), pad, capabilities, reserved (actions at 1.0);
# up to 1.2, the ports follow.
OFP_SWITCH_FEATURES_BODY_PACK_STR = "!QIBB2xII"
OFP_SWITCH_FEATURES_BODY_SIZE = 24
assert calcsize(OFP_SWITCH_FEATURES_BODY_PACK_STR) == OFP_SWITCH_FEATURES_BODY_SIZE
OFP_MAX_PORT_NAME_LEN = 16
OFP_ETH_ALEN = 6
# struct ofp_phy_port (1.0): port_no, hw_addr, name, config, state, curr,
# advertised, supported, peer.
OFP10_PHY_PORT_PACK_STR = "!H6s16sIIIIII"
OFP10_PHY_PORT_SIZE = 48
assert calcsize(OFP10_PHY_PORT_PACK_STR) == OFP10_PHY_PORT_SIZE
# struct ofp_port (1.1 to 1.3): port_no, pad, hw_addr, pad, name, config,
# state, curr, advertised, supported, peer, curr_speed, max_speed.
OFP_PORT_PACK_STR = "!I4x6s2x16sIIIIIIII"
OFP_PORT_SIZE = 64
assert calcsize(OFP_PORT_PACK_STR) == OFP_PORT_SIZE
# struct ofp_port (1.4, 1.5): port_no, length, pad, hw_addr, pad, name,
# config, state; properties follow.
OFP14_PORT_PACK_STR = "!IH2x6s2x16sII"
OFP14_PORT_SIZE = 40
assert calcsize(OFP14_PORT_PACK_STR) == OFP14_PORT_SIZE
# The port description request's body at 1.5: port_no, pad.
OFP15_PORT_MULTIPART_REQUEST_PACK_STR = "!I4x"
OFP15_PORT_MULTIPART_REQUEST_SIZE = 8
assert calcsize(OFP15_PORT_MULTIPART_REQUEST_PACK_STR) == OFP15_PORT_MULTIPART_REQUEST_SIZE
# struct ofp_port_mod's body: port_no, hw_addr, config, mask, advertise, pad (1.0) ...
OFP10_PORT_MOD_BODY_PACK_STR = "!H6sIII4x"
OFP10_PORT_MOD_BODY_SIZE = 24
assert calcsize(OFP10_PORT_MOD_BODY_PACK_STR) == OFP10_PORT_MOD_BODY_SIZE
# ... port_no, pad, hw_addr, pad, config, mask, advertise, pad (1.1 to 1.3) ...
OFP_PORT_MOD_BODY_PACK_STR = "!I4x6s2xIII4x"
OFP_PORT_MOD_BODY_SIZE = 32
assert calcsize(OFP_PORT_MOD_BODY_PACK_STR) == OFP_PORT_MOD_BODY_SIZE
# ... port_no, pad, hw_addr, pad, config, mask, then properties (1.4, 1.5).
OFP14_PORT_MOD_BODY_PACK_STR = "!I4x6s2xII"
OFP14_PORT_MOD_BODY_SIZE = 24
assert calcsize(OFP14_PORT_MOD_BODY_PACK_STR) == OFP14_PORT_MOD_BODY_SIZE

# -- bundles -------------------------------------------------------------------------------------

# enum ofp_bundle_ctrl_type (OpenFlow 1.4; ONF's extension at 1.3 uses the same)
OFPBCT_OPEN_REQUEST = 0
OFPBCT_OPEN_REPLY = 1
OFPBCT_CLOSE_REQUEST = 2
OFPBCT_CLOSE_REPLY = 3
OFPBCT_COMMIT_REQUEST = 4
OFPBCT_COMMIT_REPLY = 5
OFPBCT_DISCARD_REQUEST = 6
OFPBCT_DISCARD_REPLY = 7
# enum ofp_bundle_flags
OFPBF_ATOMIC = 1 << 0
OFPBF_ORDERED = 1 << 1
# struct ofp_bundle_ctrl_msg's body: bundle_id, type, flags (then properties).
OFP_BUNDLE_CTRL_BODY_PACK_STR = "!IHH"
OFP_BUNDLE_CTRL_BODY_SIZE = 8
assert calcsize(OFP_BUNDLE_CTRL_BODY_PACK_STR) == OFP_BUNDLE_CTRL_BODY_SIZE
# struct ofp_bundle_add_msg's body before the message it carries: bundle_id, pad, flags.
OFP_BUNDLE_ADD_BODY_PACK_STR = "!I2xH"
OFP_BUNDLE_ADD_BODY_SIZE = 8
assert calcsize(OFP_BUNDLE_ADD_BODY_PACK_STR) == OFP_BUNDLE_ADD_BODY_SIZE
# ONF's bundle extension at 1.3: experimenter messages of these types.
ONFT_BUNDLE_CONTROL = 2300
ONFT_BUNDLE_ADD_MESSAGE = 2301
