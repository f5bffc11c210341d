"""The rollback check's rules (stages.flows_rollback): when it runs, which
errors of a discarded bundle it passes over, and how a meter_mod is read
against a switch's meter features."""

from __future__ import annotations

import struct

import pytest

from ovs_service.openflow import ofproto as ofp
from ovs_service.openflow import state as st
from ovs_service.openflow.messages import encode
from ovs_service.stages import flows_rollback as rb
from ovs_service.stages.flows_snapshot import BridgeRecord


@pytest.mark.parametrize(("saved", "running", "check"), [
    ("3.5.0", "3.1.0", True),  # a rollback
    ("3.1.0", "3.5.0", False),  # an upgrade
    ("3.1.0", "3.1.0", False),  # a restart
    ("3.1.1", "3.1.0", True),
    ("3.10.0", "3.9.2", True),  # numbers, not text
    ("unknown", "3.1.0", True),  # not known: checked
    ("3.1.0", "", True),
])
def test_when_the_check_runs(saved: str, running: str, check: bool) -> None:
    assert rb.needs_check(saved, running) is check


def test_versions_are_read_from_what_tools_print() -> None:
    assert rb.parse_version("ovs-vswitchd (Open vSwitch) 3.5.0") == (3, 5, 0)
    assert rb.parse_version("3.1.0-2+deb12u1") == (3, 1, 0)
    assert rb.parse_version("unknown") is None


def _error(kind: int, code: int, experimenter: int | None = None) -> bytes:
    body = struct.pack("!HH", kind, code)
    if experimenter is not None:
        body += struct.pack("!I", experimenter)
    return encode(ofp.OF13, 1, body)  # OFPT_ERROR


RECORD = BridgeRecord("br0", ofp.OF13, "flows/0000",
                      {"flows": 2, "groups": 0, "meters": 1, "tlv": 1}, [], ofp.OF13)
BARE = BridgeRecord("br1", ofp.OF13, "flows/0001",
                    {"flows": 2, "groups": 0, "meters": 0, "tlv": 0}, [], ofp.OF13)


def test_only_what_the_restore_puts_in_place_first_is_passed_over() -> None:
    invalid_meter = _error(rb.OFPET_METER_MOD_FAILED, rb.OFPMMFC_INVALID_METER)
    unmapped = _error(rb.OFPET_EXPERIMENTER, rb.NXFMFC_INVALID_TLV_FIELD, ofp.NX_VENDOR_ID)
    assert rb._expected(RECORD, invalid_meter) and rb._expected(RECORD, unmapped)
    # ...only when the snapshot has a meter, a TLV map to put there first
    assert not rb._expected(BARE, invalid_meter) and not rb._expected(BARE, unmapped)
    # another experimenter's code 37, another error: refused
    assert not rb._expected(RECORD, _error(rb.OFPET_EXPERIMENTER,
                                           rb.NXFMFC_INVALID_TLV_FIELD, 0x4F4E4600))
    assert not rb._expected(RECORD, _error(2, 2))  # OFPBAC_BAD_EXPERIMENTER


def test_a_meter_mod_is_read_for_its_flags_and_band_types() -> None:
    bands = (struct.pack("!HHII4x", 1, 16, 100, 10)  # drop
             + struct.pack("!HHIIB3x", 2, 16, 200, 20, 1))  # dscp_remark
    message = encode(ofp.OF13, ofp.OFPT_METER_MOD,
                     struct.pack("!HHI", ofp.OFPMC_ADD, 0b0101, 7) + bands)
    assert st.meter_mod_fields(message) == st.MeterMod(7, 0b0101, (1, 2))
