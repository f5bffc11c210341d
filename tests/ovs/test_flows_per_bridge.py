"""One bridge's trouble stays that bridge's: saves and restores go on for the
others, and what is not asked for is not touched. Checked with `ovs-ofctl`
and `ovs-vsctl`."""

from __future__ import annotations

import json

import pytest

from ovs_service import store
from ovs_service.hooks import unit_hooks
from tests.harness import canon
from tests.harness.ovsbed import Cli, OvsBed, one_line_error


def ofport(bed: OvsBed, interface: str) -> tuple[str, str]:
    return (bed.vsctl("get", "Interface", interface, "ofport").strip(),
            bed.vsctl("get", "Interface", interface, "ofport_request").strip())


def test_restore_of_one_bridge_leaves_other_bridges_ports_alone(ovs: OvsBed, cli: Cli) -> None:
    ovs.add_bridge("bra", ports={"pa1": 1})
    ovs.add_bridge("brb", ports={"pb1": 1, "pb2": 2})
    snapshot = cli.save()
    ovs.vsctl("set", "Interface", "pb1", "ofport_request=7")
    ovs.vsctl("set", "Interface", "pa1", "ofport_request=5")
    assert ofport(ovs, "pb1") == ("7", "7") and ofport(ovs, "pa1") == ("5", "5")

    cli.restore("--from", str(snapshot), "--bridge", "bra")
    assert ofport(ovs, "pa1") == ("1", "1")  # the bridge asked for is pinned back
    assert ofport(ovs, "pb1") == ("7", "7")  # the other is left as it is
    assert ofport(ovs, "pb2") == ("2", "2")


def test_a_bridge_that_cannot_be_saved_does_not_stop_the_others(ovs: OvsBed, cli: Cli) -> None:
    """OpenFlow 1.1 alone is a version ovs-service does not speak."""
    ovs.add_bridge("good", protocols=("OpenFlow13",), ports={"g1": 1})
    ovs.ofctl("-O", "OpenFlow13", "add-flow", "good", "priority=100,ip actions=drop")
    ovs.add_bridge("old", protocols=("OpenFlow11",), ports={"o1": 1})
    before = canon.all_states(ovs, ["good"])

    result = cli("save", "--json", check=False)
    one_line_error(result)
    assert "'old'" in result.stderr and "OpenFlow" in result.stderr, result.describe()
    doc = result.json()
    assert doc["bridges"] == ["good"] and doc["failed"] == {"old": doc["failed"]["old"]}, doc
    manifest = json.loads((cli.state_dir / doc["path"] / "manifest.json").read_text())
    assert "old" in manifest["extra"]["flows_failed"], manifest

    canon.wipe(ovs, "good")
    assert canon.all_states(ovs, ["good"]) != before
    cli.restore("--from", doc["path"])
    assert canon.all_states(ovs, ["good"]) == before


def test_background_restore_goes_on_without_a_bridge_that_never_appears(
    ovs: OvsBed, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restorer waits for ovs-vswitchd to serve each bridge; one it never
    serves (its management socket is gone) fails alone."""
    for bridge in ("good", "lost"):
        ovs.add_bridge(bridge, protocols=("OpenFlow13",), ports={f"{bridge}1": 1})
        ovs.ofctl("-O", "OpenFlow13", "add-flow", bridge, "priority=100,ip actions=drop")
    before = canon.all_states(ovs, ["good"])
    snapshot = cli.save()
    store.mark_pending(cli.state_dir, snapshot)
    canon.wipe(ovs, "good")
    (ovs.dir / "lost.mgmt").unlink()
    for key, value in {**ovs.env, "OVS_SERVICE_STATE_DIR": str(cli.state_dir)}.items():
        monkeypatch.setenv(key, value)

    assert unit_hooks._restore_pending(cli.state_dir, wait=1.0) == 0
    assert canon.all_states(ovs, ["good"]) == before
    assert store.failed_snapshot(cli.state_dir) == snapshot  # "lost" failed
    assert store.pending_snapshot(cli.state_dir) is None
