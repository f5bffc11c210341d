"""Debian 13 (trixie): Open vSwitch 3.5, systemd 257, Python 3.13.

A trixie root (tests/harness/debroot.py, cached, rebuilt when stale) boots
its own systemd as PID 1 in private namespaces. ovs-service's package is
built there with trixie's debhelper and dh-python and installed with dpkg
next to trixie's openvswitch-switch; the switch runs through the units it
then has. Every way an operator restarts the switch must keep the full
canonical state (corpus, meters, TLV map, port settings, both port
numberings, printed by trixie's own ovs-ofctl/ovs-vsctl), with
flow-restore-wait absent and traffic passing through the same flows.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import canon, debroot
from tests.harness.lane import assert_switch_whole
from tests.harness.rootlane import RootLane, root_lane, versions

pytestmark = [pytest.mark.upgrade, pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def trixie() -> Iterator[RootLane]:
    root = debroot.ensure_root(debroot.TRIXIE)
    with root_lane(root.path, with_package=True) as lane:
        seen = versions(lane.ns)
        print(f"\ntrixie lane: root {'built' if root.fresh else 'cached'} "
              f"({root.seconds:.0f} s); " + "; ".join(seen.values()))
        yield lane


def test_runs_trixies_releases(trixie: RootLane) -> None:
    seen = versions(trixie.ns)
    assert seen["ovs-vswitchd"].endswith(" 3.5.0") or " 3.5." in seen["ovs-vswitchd"], seen
    assert seen["systemctl"].startswith("systemd 257"), seen
    assert seen["python3"].startswith("Python 3.13"), seen


OPERATIONS = {
    "systemctl restart openvswitch": ["systemctl", "restart", "openvswitch"],
    "systemctl restart ovs-vswitchd": ["systemctl", "restart", "ovs-vswitchd"],
    "systemctl restart ovsdb-server": ["systemctl", "restart", "ovsdb-server"],
    "ovs-service restart": ["ovs-service", "restart"],
}


@pytest.mark.parametrize("what", list(OPERATIONS))
def test_restart_keeps_the_whole_state(trixie: RootLane, what: str) -> None:
    ns, switch, _ = trixie.lane
    before = canon.all_states(switch)
    assert len(before["br0"]) > 120, "the corpus bridge is not whole"
    pid, db = ns.main_pid("ovs-vswitchd"), ns.main_pid("ovsdb-server")
    proc = ns.run(OPERATIONS[what], check=False)
    assert proc.returncode == 0, f"{what}: {proc.stdout}{proc.stderr}"
    ns.settle()
    if what != "systemctl restart ovsdb-server":
        assert ns.main_pid("ovs-vswitchd") != pid, "ovs-vswitchd was not restarted"
    if what == "ovs-service restart":
        # Debian 13's units with the package's drop-ins, systemd 257: nothing
        # the database starts from changed, so it runs on.
        assert ns.main_pid("ovsdb-server") == db, "an unchanged ovsdb-server was restarted"
    assert_switch_whole(trixie.lane, before, what)
    print(f"\ntrixie lane: {what}: all {sum(map(len, before.values()))} canonical lines kept")


def test_lintian_of_trixie_passes_the_package(trixie: RootLane) -> None:
    assert trixie.deb is not None
    proc = trixie.ns.run(["lintian", "--fail-on", "error,warning", trixie.deb], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tags = [ln for ln in proc.stdout.splitlines() if ln[:2] in ("E:", "W:")]
    assert not tags, tags


def test_cli_runs_on_python_313(trixie: RootLane) -> None:
    ns = trixie.ns
    shebang = ns.path("/usr/bin/ovs-service").read_text().splitlines()[0]
    assert shebang.replace(" ", "") == "#!/usr/bin/python3", shebang
    out = ns.run(["ovs-service", "--version"]).stdout
    assert "0." in out, out
    status = ns.run(["ovs-service", "status", "--json"]).stdout
    assert '"flow_restore_wait": false' in status, status
    used = ns.run(["python3", "-c", "import sys, ovs_service; print(sys.version_info[:2], "
                   "ovs_service.__file__)"]).stdout
    assert used.startswith("(3, 13)") and "/usr/lib/python3/dist-packages/" in used, used
