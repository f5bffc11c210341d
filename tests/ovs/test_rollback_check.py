"""A snapshot taken under a newer Open vSwitch, restored onto this (older)
one: every bridge is checked before any is touched, so the restore is whole
or refused, never half done (`stages.flows_rollback`). Checked with
`ovs-ofctl` on a real switch.

The snapshot here is this switch's own, with the version it records raised
and, to be refused, one flow of the second bridge made into one no Open
vSwitch takes (table 255 is OFPTT_ALL): without the check, the first bridge
would be restored and the second not. The real 3.5 -> 3.1 case is in the
upgrade lane.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ovs_service import store
from ovs_service.hooks import unit_hooks
from tests.harness import canon
from tests.harness.ovsbed import Cli, OvsBed, one_line_error

NEWER = "3.5.0"


def _manifest(snapshot: Path, **changes: Any) -> None:
    path = snapshot / "manifest.json"
    doc = json.loads(path.read_text())
    doc.update(changes)
    for relpath, entry in doc["files"].items():
        data = (snapshot / relpath).read_bytes()
        entry.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _spoil_first_flow(snapshot: Path, bridge: str) -> None:
    """The bridge's first saved flow_mod now adds to table 255 (OFPTT_ALL)."""
    record = next(r for r in json.loads((snapshot / "flows/index.json").read_text())
                  if r["name"] == bridge)
    path = snapshot / record["directory"] / "flows.ofp"
    data = bytearray(path.read_bytes())
    assert data[0] == 4 and data[1] == 14, "an OpenFlow 1.3 flow_mod"
    data[24] = 0xFF  # ofp_flow_mod's table_id
    path.write_bytes(bytes(data))


def _spoil_meter(snapshot: Path, bridge: str) -> None:
    """The bridge's saved meter's band is now of type 2 (dscp_remark), of the
    same length; the userspace switch supports drop bands only."""
    record = next(r for r in json.loads((snapshot / "flows/index.json").read_text())
                  if r["name"] == bridge)
    path = snapshot / record["directory"] / "meters.ofp"
    data = bytearray(path.read_bytes())
    assert data[1] == 29 and data[16:18] == b"\x00\x01", "a meter_mod with a drop band"
    data[16:18] = b"\x00\x02"
    path.write_bytes(bytes(data))


@dataclass
class Scene:
    bed: OvsBed
    cli: Cli
    snapshot: Path
    saved: dict[str, list[str]]

    def state(self) -> dict[str, list[str]]:
        return canon.all_states(self.bed)


@pytest.fixture
def scene(ovs: OvsBed, cli: Cli) -> Iterator[Scene]:
    """br0 with a TLV map, a meter and a group its flows use (what a
    discarded bundle cannot have in place), br1 with plain flows."""
    ovs.add_bridge("br0", protocols=("OpenFlow13", "OpenFlow15"), ports={"p1": 1, "p2": 2})
    of15 = ("-O", "OpenFlow15")
    ovs.ofctl(*of15, "add-tlv-map", "br0", "{class=0xffff,type=0,len=4}->tun_metadata0")
    ovs.ofctl(*of15, "add-meter", "br0",
              "meter=1 kbps burst bands=type=drop rate=100 burst_size=10")
    ovs.ofctl(*of15, "add-group", "br0", "group_id=5,type=select,bucket=output:1,bucket=output:2")
    for flow in ("priority=10,ip,tun_metadata0=7 actions=group:5",
                 "priority=20,arp actions=meter:1,output:2"):
        ovs.ofctl(*of15, "add-flow", "br0", flow)
    ovs.add_bridge("br1", protocols=("OpenFlow13",), ports={"q1": 1})
    for flow in ("priority=9,in_port=1 actions=drop", "priority=8,ip actions=output:1"):
        ovs.ofctl("-O", "OpenFlow13", "add-flow", "br1", flow)
    saved = canon.all_states(ovs)
    snapshot = cli.save()
    canon.wipe(ovs, "br0")
    ovs.ofctl("-O", "OpenFlow13", "del-flows", "br1")
    yield Scene(ovs, cli, snapshot, saved)


def test_a_snapshot_of_a_newer_switch_that_it_takes_is_restored_exactly(scene: Scene) -> None:
    """The check passes over what only the restore puts in place first (the
    meter, the TLV mapping), and restores."""
    _manifest(scene.snapshot, ovs_version=NEWER)
    scene.cli.restore("--from", str(scene.snapshot))
    assert scene.state() == scene.saved


def test_a_message_the_older_switch_refuses_refuses_the_whole_restore(scene: Scene) -> None:
    _spoil_first_flow(scene.snapshot, "br1")
    _manifest(scene.snapshot, ovs_version=NEWER)
    before = scene.state()
    result = scene.cli.restore("--from", str(scene.snapshot), check=False)
    assert scene.state() == before, "br0 was restored although br1 is refused"
    one_line_error(result)
    assert result.returncode == 4, result.describe()
    said = result.stderr
    assert "restore refused, nothing was changed: bridge 'br1'" in said, said
    assert f"does not take what {NEWER} saved" in said, said
    # br1's flows: the default one and the two added; the first is the one spoilt
    assert "answered OFPFMFC_BAD_TABLE_ID to flow 1 of 3 (table=255, priority=" in said, said


def test_a_meter_the_older_switch_does_not_support_refuses_the_whole_restore(
        scene: Scene) -> None:
    """Meters cannot go in a bundle: they are checked against the meter
    features the switch reports, before anything is touched."""
    assert "band_types: drop\n" in scene.bed.ofctl("-O", "OpenFlow13", "meter-features", "br0")
    _spoil_meter(scene.snapshot, "br0")
    _manifest(scene.snapshot, ovs_version=NEWER)
    before = scene.state()
    result = scene.cli.restore("--from", str(scene.snapshot), check=False)
    assert scene.state() == before
    one_line_error(result)
    assert result.returncode == 4, result.describe()
    assert ("bridge 'br0': Open vSwitch 3.1.0 does not take what 3.5.0 saved: meter 1 has "
            "a band of type 2, which the switch does not support") in result.stderr, \
        result.describe()


def test_the_background_restore_refuses_it_before_pinning_ports(
        scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hooks' restore after a start: the same check, before port numbers
    are pinned; the snapshot is marked failed, kept for a restore by hand."""
    _spoil_first_flow(scene.snapshot, "br1")
    _manifest(scene.snapshot, ovs_version=NEWER)
    scene.bed.vsctl("set", "Interface", "p1", "ofport_request=7")
    before = scene.state()
    store.mark_pending(scene.cli.state_dir, scene.snapshot)
    for key, value in {**scene.bed.env, "OVS_SERVICE_STATE_DIR": str(scene.cli.state_dir)
                       }.items():
        monkeypatch.setenv(key, value)
    assert unit_hooks._restore_pending(scene.cli.state_dir, wait=1.0) == 0
    assert scene.state() == before
    assert scene.bed.vsctl("get", "Interface", "p1", "ofport").strip() == "7"
    assert store.failed_snapshot(scene.cli.state_dir) == scene.snapshot


def test_the_same_snapshot_from_an_equal_version_is_restored_bridge_by_bridge(
        scene: Scene) -> None:
    """Without a newer version recorded nothing is checked first (a restart's
    restore pays nothing): br0 comes back, br1 fails alone (exit 4)."""
    _spoil_first_flow(scene.snapshot, "br1")
    _manifest(scene.snapshot)
    result = scene.cli.restore("--from", str(scene.snapshot), check=False)
    assert result.returncode == 4, result.describe()
    after = scene.state()
    assert after["br0"] == scene.saved["br0"]
    assert after["br1"] != scene.saved["br1"]
