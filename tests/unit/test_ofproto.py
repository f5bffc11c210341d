"""The named OpenFlow layouts against the specification's own numbers.

Sizes and offsets below are written out as the OpenFlow specifications
(and Open vSwitch's nicira-ext.h) give them, not computed: they check the
computations in `ofproto`.
"""

from __future__ import annotations

from struct import calcsize

import pytest

from ovs_service.openflow import ofproto as ofp
from ovs_service.openflow import snapshotdiff


def _layouts() -> list[tuple[str, str, int]]:
    names = vars(ofp)
    out = []
    for name, value in names.items():
        if name.endswith("_PACK_STR") and isinstance(value, str) and value.startswith("!"):
            size = name.removesuffix("_PACK_STR") + "_SIZE"
            if size in names:
                out.append((name, value, names[size]))
    return out


@pytest.mark.parametrize(("name", "pack_str", "size"), _layouts(), ids=lambda v: str(v))
def test_every_named_layout_has_its_size(name: str, pack_str: str, size: int) -> None:
    assert calcsize(pack_str) == size, name


def test_the_layouts_that_matter_are_all_sized() -> None:
    sized = {name for name, _, _ in _layouts()}
    for name in ("OFP_HEADER_PACK_STR", "OFP_FLOW_MOD_BODY_PACK_STR", "NX_FLOW_MOD_BODY_PACK_STR",
                 "OFP_FLOW_STATS_PACK_STR", "OFP15_FLOW_DESC_PACK_STR", "NX_FLOW_STATS_PACK_STR",
                 "OFP15_GROUP_MOD_BODY_PACK_STR", "OFP_METER_MOD_BODY_PACK_STR",
                 "OFP_BUNDLE_CTRL_BODY_PACK_STR", "OFP_BUNDLE_ADD_BODY_PACK_STR",
                 "OFP_PORT_PACK_STR", "OFP14_PORT_PACK_STR", "OFP10_PHY_PORT_PACK_STR"):
        assert name in sized


@pytest.mark.parametrize(("name", "spec"), [
    # struct sizes with their header, as the specifications state them
    ("OFP_HEADER_SIZE", 8),
    ("OFP_EXPERIMENTER_HEADER_SIZE", 16),
    # ofp_flow_mod: table_id at 24, command 25, priority 30, match at 48 (its length at 50)
    ("OFP_FLOW_MOD_TABLE_ID_OFFSET", 24),
    ("OFP_FLOW_MOD_COMMAND_OFFSET", 25),
    ("OFP_FLOW_MOD_PRIORITY_OFFSET", 30),
    ("OFP_FLOW_MOD_MATCH_OFFSET", 48),
    ("OFP_FLOW_MOD_MATCH_LENGTH_OFFSET", 50),
    # nx_flow_mod (with nicira_header): command at 24, priority 30, match_len 40, match 48
    ("NX_FLOW_MOD_COMMAND_OFFSET", 24),
    ("NX_FLOW_MOD_PRIORITY_OFFSET", 30),
    ("NX_FLOW_MOD_MATCH_LEN_OFFSET", 40),
    ("NX_FLOW_MOD_MATCH_OFFSET", 48),
    # ofp_meter_mod: meter_id at 12
    ("OFP_METER_MOD_METER_ID_OFFSET", 12),
    # ofp_aggregate_stats_reply: flow_count after two 64-bit counters
    ("OFP_AGGREGATE_STATS_REPLY_FLOW_COUNT_OFFSET", 16),
    ("OFP_HEADER_XID_OFFSET", 4),
    ("OFP_HEADER_LENGTH_OFFSET", 2),
])
def test_offsets_are_the_specifications(name: str, spec: int) -> None:
    assert getattr(ofp, name) == spec


def test_bundle_codes_and_flags() -> None:
    assert (ofp.OFPBCT_OPEN_REQUEST, ofp.OFPBCT_COMMIT_REQUEST, ofp.OFPBCT_DISCARD_REQUEST) == (
        0, 4, 6)
    assert (ofp.OFPBF_ATOMIC, ofp.OFPBF_ORDERED) == (1, 2)


def test_table_diff_counts_repeated_messages_and_keeps_order() -> None:
    removed, added = snapshotdiff.diff_tables([b"a", b"b", b"a", b"c"], [b"c", b"d", b"a"])
    assert removed == (b"a", b"b")
    assert added == (b"d",)
    assert snapshotdiff.diff_tables([b"x"], [b"x"]) == ((), ())
