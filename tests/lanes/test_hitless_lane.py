"""Hitless restarts on the kernel datapath: what each way of restarting costs the traffic.

One systemd guest (Debian's kernel and openvswitch.ko) carries the bed of
`tests.harness.hitlessbed`: two bridges, a VXLAN tunnel between them over an
underlay the bed creates, conntrack ACLs (`ct(commit)`) and a select group;
established traffic (pings every 10 ms, a TCP stream) and new connections (a
fresh UDP source port every 10 ms, each an upcall) run across every restart.

In order, in the same guest:
1. ovs-service's own units: `ovs-service restart` and
   `systemctl restart openvswitch`, alternated, REPEAT times each; each
   `systemctl restart` comes right after an `ovs-service restart`, the
   sequence in which a restart once lost established traffic.
2. Debian's units with ovs-service's drop-ins (what the package installs):
   a reinstall of openvswitch-switch (`dpkg -i` of the installed version,
   downloaded on the host; its maintainer scripts restart the daemons).
3. Debian's units alone, for comparison (reported, not asserted): Debian's
   `systemctl restart openvswitch-switch`, then, with brA's flows given back,
   the stock `ovs-ctl restart`.

For ovs-service's methods the lane asserts: no established packet lost on the
bridge, the datapath untouched (same ifindex, same port numbers) and both
bridges' OpenFlow state whole. Across the tunnel (its vport's ifindex, the
pings and the TCP stream through it) the goal is a strict xfail: ovs-vswitchd
3.1 re-creates the tunnel vport whenever it starts (fixed in 3.2.0). The same
bed on Debian 13's Open vSwitch 3.5, where the goal is asserted across the
tunnel too, is `test_hitless_trixie_lane.py`. The
figures of every run go to restart.json (in .cache/hitless, or
OVS_SERVICE_HITLESS_RESULTS), which
`python3 -m tests.lanes.hitless_summary` sums up (`make test-hitless`).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import hitlessbed
from tests.harness.hitlessbed import (
    OVS_SERVICE_RESTART,
    PROJECT_RESTARTS,
    SYSTEMCTL_RESTART,
    MethodRun,
    assert_bridge_hitless,
    assert_tunnel_hitless,
    diagnose,
    run_method,
)
from tests.harness.kmodbed import OUR_UNITS, booted_guest, settle
from tests.harness.vm.build import REPO
from tests.harness.vm.guest import Guest

pytestmark = [pytest.mark.vm, pytest.mark.root, pytest.mark.slow, pytest.mark.hitless]

# Each project path this many times (OVS_SERVICE_HITLESS_REPEAT). A try costs
# 1 to 5 minutes under emulation, depending on the machine's load: 3 alternated
# pairs is what fits the lane's budget; it shows a loss that happens in most
# tries, not a rare one (see the report in restart.json for every try).
REPEAT = int(os.environ.get("OVS_SERVICE_HITLESS_REPEAT", "3"))
# Steps 2 and 3, under Debian's units (OVS_SERVICE_HITLESS_DEBIAN_UNITS=0 leaves
# them out: CI's share, where the reinstall alone took 10 minutes under
# emulation; the package install lane reinstalls there too, without probes).
DEBIAN_UNITS = os.environ.get("OVS_SERVICE_HITLESS_DEBIAN_UNITS", "1") != "0"
LEFT_OUT = ("Debian's units left out (OVS_SERVICE_HITLESS_DEBIAN_UNITS=0): "
            "make test-hitless runs them")
CACHE = REPO / ".cache" / "hitless"
RESULTS = hitlessbed.RESULTS_DIR / "restart.json"

REINSTALL = "reinstall openvswitch-switch (drop-ins)"
STOCK_DEBIAN = "systemctl restart openvswitch-switch (stock)"
STOCK_OVS_CTL = "ovs-ctl restart (stock)"
PROJECT_METHODS = (OVS_SERVICE_RESTART, SYSTEMCTL_RESTART, REINSTALL)

# Debian's ovsdb-server/ovs-vswitchd/openvswitch-switch units with ovs-service's
# drop-ins and umbrella unit, as packaging/debian installs them.
PACKAGED_UNITS = """
systemctl stop openvswitch.service ovs-vswitchd.service ovsdb-server.service
rm /run/systemd/system/ovsdb-server.service /run/systemd/system/ovs-vswitchd.service
for unit in ovsdb-server ovs-vswitchd; do
    mkdir -p /run/systemd/system/$unit.service.d
    cp {repo}/units/dropins/$unit.service.d/ovs-service.conf /run/systemd/system/$unit.service.d/
done
systemctl daemon-reload
systemctl start openvswitch-switch.service openvswitch.service
"""

# Debian's units as they are: the drop-ins go; the daemons keep running.
DEBIAN_UNITS_ALONE = """
rm -r /run/systemd/system/ovsdb-server.service.d /run/systemd/system/ovs-vswitchd.service.d
systemctl daemon-reload
"""

# The guest keeps Open vSwitch's database in /etc/openvswitch (a tmpfs); a real
# install links it to /var/lib/openvswitch, and the postinst would otherwise
# move the live file across file systems under the running ovsdb-server.
# The host's policy-rc.d (a container's, exit 101) would have the postinst's
# deb-systemd-invoke skip the restart: the guest's overlay drops it. man-db's
# trigger (mandb -pq, run while /var/lib/man-db/auto-update exists) would
# rebuild its index for minutes under emulation after the reinstall.
GUEST_SETUP = """
touch /var/lib/openvswitch/conf.db
rm -f /usr/sbin/policy-rc.d /var/lib/man-db/auto-update
"""

# The stock `ovs-ctl restart` on daemons that `ovs-ctl start` started, as an
# init script would: under Debian's units, their ExecStop= (`ovs-ctl stop`,
# run when the main process exits) kills the ovsdb-server that the script
# has just started again, and the script fails.
OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
STOCK_DAEMONS = f"""
systemctl stop openvswitch-switch.service ovs-vswitchd.service ovsdb-server.service
{OVS_CTL} --system-id=random --no-record-hostname start
"""


def installed_deb() -> Path:
    """Debian's openvswitch-switch .deb of the installed version, in the lane's cache."""
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "openvswitch-switch"],
                             check=True, capture_output=True, text=True).stdout.strip()
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"openvswitch-switch_{version.split(':')[-1]}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", f"openvswitch-switch={version}"], cwd=debs,
                       check=True, capture_output=True)
        found = sorted(debs.glob("openvswitch-switch_*.deb"))
    assert found, f"apt-get download openvswitch-switch={version} left no .deb"
    return found[-1]


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, list[MethodRun]]]:
    deb = installed_deb() if DEBIAN_UNITS else None
    start = time.monotonic()
    done: list[MethodRun] = []

    def phase(text: str) -> None:
        print(f"[{time.monotonic() - start:6.1f} s] {text}", flush=True)

    def record(run: MethodRun, guest: Guest) -> None:
        done.append(run)
        phase(run.line())
        if diagnosis := diagnose(guest, run):
            print(diagnosis)

    with booted_guest("hitless lane") as guest:
        guest.sh(GUEST_SETUP)
        guest.sh(OUR_UNITS.format(repo=REPO), timeout=300)
        phase("ovs-service's units started")
        hitlessbed.build(guest)
        phase("bridges, tunnel, flows and probe servers up")
        for i in range(REPEAT):
            for method, tag in ((OVS_SERVICE_RESTART, "osr"), (SYSTEMCTL_RESTART, "sys")):
                record(run_method(guest, method, PROJECT_RESTARTS[method], f"{tag}{i}"), guest)
        if deb is not None:
            guest.sh(PACKAGED_UNITS.format(repo=REPO), timeout=300)
            settle(guest)
            phase("Debian's units with ovs-service's drop-ins")
            record(run_method(guest, REINSTALL, ["dpkg", "--no-triggers", "-i", str(deb)],
                              "deb0"), guest)
            guest.sh(DEBIAN_UNITS_ALONE, timeout=120)
            phase("Debian's units alone")
            record(run_method(guest, STOCK_DEBIAN,
                              ["systemctl", "restart", "openvswitch-switch"], "stockdeb"), guest)
            guest.sh(STOCK_DAEMONS, timeout=300)
            settle(guest)
            hitlessbed.reset_flows(guest)
            record(run_method(guest, STOCK_OVS_CTL,
                              [OVS_CTL, "restart", "--system-id=random", "--no-record-hostname"],
                              "stockctl"), guest)
        else:
            phase(LEFT_OUT)
    hitlessbed.write_results(RESULTS, done, time.monotonic() - start, repeat=REPEAT,
                             project_methods=PROJECT_METHODS,
                             extra={"debian_units": DEBIAN_UNITS})
    by_method: dict[str, list[MethodRun]] = {}
    for run in done:
        by_method.setdefault(run.method, []).append(run)
    yield by_method


def _assert_hitless(runs: list[MethodRun]) -> None:
    """The goal on the bridge itself: nothing established lost, nothing changed."""
    assert runs, "the method did not run"
    for run in runs:
        assert_bridge_hitless(run)


def test_ovs_service_restart_is_hitless(runs: dict[str, list[MethodRun]]) -> None:
    _assert_hitless(runs[OVS_SERVICE_RESTART])


def test_systemctl_restart_is_hitless(runs: dict[str, list[MethodRun]]) -> None:
    _assert_hitless(runs[SYSTEMCTL_RESTART])


def test_ovs_service_restart_keeps_the_database(runs: dict[str, list[MethodRun]]) -> None:
    """Nothing ovsdb-server starts from changed between the restarts, so each
    `ovs-service restart` keeps it running, the first after the guest's boot
    too (see ovs_service/database.py)."""
    restarted = [run.line() for run in runs[OVS_SERVICE_RESTART] if run.ovsdb_restarted]
    assert not restarted, "\n".join(restarted)


def test_package_reinstall_is_hitless(runs: dict[str, list[MethodRun]]) -> None:
    if not DEBIAN_UNITS:
        pytest.skip(LEFT_OUT)
    _assert_hitless(runs[REINSTALL])


# Across the tunnel the goal is not met: ovs-vswitchd 3.1 itself deletes the
# shared tunnel vport when it starts (open_dpif_backer() removes every datapath
# port whose name is no Interface's name, and `vxlan_sys_4789` never is one)
# and adds it again (same port number, new ifindex); established traffic over
# the tunnel, the TCP stream with it, stops until flow-restore-wait is cleared.
# No restart of ovs-vswitchd keeps it: strict, so that one that does is noticed.
# Upstream fixed it in 3.2.0 (b5313a8ce, "ofproto: Fix re-creation of tunnel
# backing interfaces on restart"); Debian 12's 3.1 does not carry the fix.
# test_hitless_trixie_lane.py runs the same bed on Debian 13's 3.5, which
# does, and asserts this there.
@pytest.mark.xfail(strict=True, reason="ovs-vswitchd 3.1 re-creates the VXLAN vport at start "
                   "(fixed in 3.2.0; asserted on 3.5 by test_hitless_trixie_lane.py)")
def test_project_methods_keep_the_tunnel(runs: dict[str, list[MethodRun]]) -> None:
    for method in PROJECT_METHODS:
        for run in runs.get(method, []):
            assert_tunnel_hitless(run)


def test_stock_methods_were_measured(runs: dict[str, list[MethodRun]]) -> None:
    """Reported, not asserted: only that both ran under the probes."""
    if not DEBIAN_UNITS:
        pytest.skip(LEFT_OUT)
    for method in (STOCK_DEBIAN, STOCK_OVS_CTL):
        [run] = runs[method]
        assert run.vswitchd_restarted, f"{method}: ovs-vswitchd was not restarted"
        assert run.probes.ping_local_replies > 0 and run.probes.ping_tunnel_replies > 0
