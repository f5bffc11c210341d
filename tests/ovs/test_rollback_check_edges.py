"""Edges of the rollback check (a snapshot of a newer Open vSwitch) against
a real private switch: a first bridge that does not answer, meter ids above
the switch's meter count."""

from __future__ import annotations

from tests.harness.ovsbed import Cli, OvsBed
from tests.ovs.test_rollback_check import NEWER, _manifest, _spoil_first_flow

OF13 = ("-O", "OpenFlow13")


def test_rollback_check_is_not_skipped_when_the_first_bridge_does_not_answer(
        ovs: OvsBed, cli: Cli) -> None:
    """running_version() asks only the first record's bridge, at the snapshot's
    OpenFlow version; when that fails it falls back to the database's
    ovs_version, which after a downgrade may still name the newer version (the
    reason the code asks the daemon at all). Then the check is skipped and the
    restore is half done: br0 restored, br1 refused."""
    ovs.add_bridge("a0", protocols=("OpenFlow13", "OpenFlow15"), ports={"a0p": 1})
    ovs.ofctl("-O", "OpenFlow15", "add-flow", "a0", "priority=9,in_port=1 actions=drop")
    for name in ("br0", "br1"):
        ovs.add_bridge(name, protocols=("OpenFlow13",), ports={f"{name}p": 1})
        ovs.ofctl(*OF13, "add-flow", name, "priority=9,in_port=1 actions=drop")
    snapshot = cli.save()
    _spoil_first_flow(snapshot, "br1")
    for b in ("br0", "br1"):
        ovs.ofctl(*OF13, "del-flows", b)
    # a0 no longer speaks the version it was saved at
    ovs.vsctl("set", "Bridge", "a0", "protocols=OpenFlow13")
    # a downgrade that left the database naming the newer version
    ovs.vsctl("set", "Open_vSwitch", ".", f"ovs_version={NEWER}")
    _manifest(snapshot, ovs_version=NEWER)
    before = {b: ovs.ofctl(*OF13, "dump-flows", b, "--no-stats") for b in ("br0", "br1")}
    result = cli.restore("--from", str(snapshot), check=False)
    after = {b: ovs.ofctl(*OF13, "dump-flows", b, "--no-stats") for b in ("br0", "br1")}
    assert after == before, "half restore (the check was skipped): " + result.describe()


def test_a_meter_id_the_switch_takes_is_not_refused_by_the_rollback_check(
        ovs: OvsBed, cli: Cli) -> None:
    """The check refuses a meter whose id exceeds meter features' max_meter
    ("highest meter"); but max_meter is how many meters the datapath has, not
    the highest id: Open vSwitch takes any id up to OFPM_MAX. The same
    snapshot restores from an equal version; a rollback refuses it."""
    ovs.add_bridge("br0", protocols=("OpenFlow13",), ports={"p1": 1})
    features = ovs.ofctl(*OF13, "meter-features", "br0")
    max_meter = int(features.split("max_meter:")[1].split()[0])
    big = max_meter + 1000
    ovs.ofctl(*OF13, "add-meter", "br0", f"meter={big} pktps bands=type=drop rate=100")
    ovs.ofctl(*OF13, "add-flow", "br0", f"priority=9,ip actions=meter:{big},output:1")
    snapshot = cli.save()
    ovs.ofctl(*OF13, "del-flows", "br0")
    ovs.ofctl(*OF13, "del-meters", "br0")
    cli.restore("--from", str(snapshot))  # equal version: restored
    assert f"meter={big}" in ovs.ofctl(*OF13, "dump-meters", "br0")
    ovs.ofctl(*OF13, "del-flows", "br0")
    ovs.ofctl(*OF13, "del-meters", "br0")
    _manifest(snapshot, ovs_version=NEWER)
    result = cli.restore("--from", str(snapshot), check=False)
    assert result.returncode == 0, result.describe()
