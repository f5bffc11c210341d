"""Hitless restarts across the tunnel too, on Debian 13's Open vSwitch 3.5.

The bed of `tests.harness.hitlessbed` (brA/brB, a VXLAN tunnel over a dummy
underlay, conntrack ACLs, a select group; pings every 10 ms on the bridge
and through the tunnel, a TCP stream through the tunnel, a new UDP
connection every 10 ms) in a systemd guest whose root is a Debian 13 root
(`tests.harness.debroot.TRIXIE`, cached, rebuilt when stale) below the
guest's overlay (`Guest(root=...)`): Debian 12's kernel and openvswitch.ko,
Debian 13's systemd, Python 3.13 (with its typer, pystemd and pyroute2) and
Open vSwitch 3.5, ovs-service's own units running the checkout's code.

Debian 12's ovs-vswitchd 3.1 re-creates the `vxlan_sys_4789` vport at every
start, so `test_hitless_lane.py` can only assert the bridge (the tunnel is its
strict xfail). 3.2.0 fixed that (b5313a8ce, "ofproto: Fix re-creation of
tunnel backing interfaces on restart"). Here, with the fix, `ovs-service
restart` and `systemctl restart openvswitch`, alternated, REPEAT times each
(OVS_SERVICE_HITLESS_REPEAT, 2 by default), must each lose no established
packet on the bridge nor across the tunnel, keep the TCP stream, leave the
datapath and the tunnel vport as they were (same ifindex, same port numbers)
and both bridges' OpenFlow state whole. The stock restarts are measured by
the Debian 12 lane only.

Before the bed, every module of ovs_service is imported on the guest's Python
and byte-compiled (what a package's install does; the first restart's hooks
then start as fast as the next ones). The figures go to
.cache/hitless/restart-trixie.json, which `python3 -m tests.lanes.hitless_summary`
sums up (`make test-hitless`).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import debroot, hitlessbed
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
from tests.harness.kmodbed import OUR_UNITS, STATE_DIR
from tests.harness.vm.build import REPO
from tests.harness.vm.guest import Guest

# Out of make test (CI's share of the hitless lanes): make test-hitless runs it.
pytestmark = [pytest.mark.vm, pytest.mark.root, pytest.mark.slow, pytest.mark.hitless,
              pytest.mark.exhaustive]

# Each of ovs-service's restart paths this many times (OVS_SERVICE_HITLESS_REPEAT).
# Under emulation a try costs 1 to 4 minutes (without the probes a restart
# takes 40 s; they keep both emulated CPUs busy), the boot and the bed 1.5:
# the lane takes about 10 minutes with 2.
REPEAT = int(os.environ.get("OVS_SERVICE_HITLESS_REPEAT", "2"))
RESULTS = hitlessbed.RESULTS_DIR / "restart-trixie.json"
FIXED_IN = (3, 2)  # b5313a8ce: the tunnel's backing vport kept across restarts

# In one round trip: what the guest runs (one line each), then every module
# of the checkout's package imported on the guest's Python, its byte-code
# written (PYTHONDONTWRITEBYTECODE emptied). A module that breaks on that
# Python (or on its libraries) says so here, with its traceback, before any
# restart depends on it.
SETUP = r"""
ovs-vswitchd --version | head -n 1
PYTHONDONTWRITEBYTECODE= python3 - <<'EOF'
import importlib, pkgutil, sys
from importlib.metadata import version
print("Python", sys.version.split()[0])
for name in ("typer", "pystemd", "pyroute2", "sdnotify"):
    print(name, version(name))
import ovs_service
names = [m.name for m in pkgutil.walk_packages(ovs_service.__path__, "ovs_service.")
         if not m.name.endswith(".__main__")]  # that one runs the command
for name in names:
    importlib.import_module(name)
print(f"ovs_service: {len(names) + 1} modules compiled and imported")
EOF
"""


@contextmanager
def trixie_guest(root: Path) -> Iterator[Guest]:
    """A systemd guest on the Debian 13 root, with an empty ovs-service store."""
    with Guest("systemd", root=root) as booted:
        print(f"\nDebian 13 systemd guest up in {booted.boot_seconds:.1f} s")
        assert booted.system_state == "running", booted.run(
            ["systemctl", "--failed", "--no-legend"], check=False).stdout
        # An empty store of the guest's own, as kmodbed's guests have.
        booted.run(["mkdir", "-p", STATE_DIR])
        booted.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "tmpfs", STATE_DIR])
        yield booted


def ovs_version(line: str) -> tuple[int, ...]:
    """`ovs-vswitchd (Open vSwitch) 3.5.0` -> (3, 5, 0)."""
    match = re.search(r"\(Open vSwitch\) (\d+(?:\.\d+)+)", line)
    assert match, f"no Open vSwitch version in {line!r}"
    return tuple(int(part) for part in match.group(1).split("."))


@dataclass(frozen=True)
class Figures:
    """What the lane measured: each method's tries, the Open vSwitch version, the tracebacks."""

    runs: dict[str, list[MethodRun]]
    ovs_version: tuple[int, ...]
    tracebacks: str
    """What the guest's journal holds after each `Traceback` line."""


@pytest.fixture(scope="module")
def figures() -> Iterator[Figures]:
    RESULTS.unlink(missing_ok=True)  # a lane cut short leaves no old figures behind
    start = time.monotonic()
    done: list[MethodRun] = []

    def phase(text: str) -> None:
        print(f"[{time.monotonic() - start:6.1f} s] {text}", flush=True)

    root = debroot.ensure_root(debroot.TRIXIE)
    phase(f"Debian 13 root {'built' if root.fresh else 'cached'} ({root.seconds:.0f} s)")
    with trixie_guest(root.path) as guest:
        *versions, imported = guest.sh(SETUP, env={"PYTHONPATH": str(REPO)},
                                       timeout=300).stdout.strip().splitlines()
        phase("the guest runs " + "; ".join(versions) + f"; {imported}")
        version = ovs_version(versions[0])
        assert version >= FIXED_IN, f"Open vSwitch {version} has no fix for the tunnel vport"
        guest.sh(OUR_UNITS.format(repo=REPO), timeout=300)
        phase("ovs-service's units started")
        hitlessbed.build(guest)
        phase("bridges, tunnel, flows and probe servers up")
        for i in range(REPEAT):
            for method, tag in ((OVS_SERVICE_RESTART, "osr"), (SYSTEMCTL_RESTART, "sys")):
                run = run_method(guest, method, PROJECT_RESTARTS[method], f"{tag}{i}")
                done.append(run)
                phase(run.line())
                if diagnosis := diagnose(guest, run):
                    print(diagnosis)
        tracebacks = guest.sh("journalctl -b --no-pager -o cat | grep -A 30 Traceback || true",
                              timeout=120).stdout
    lane_seconds = time.monotonic() - start
    print(f"\nhitless lane (Debian 13): {lane_seconds:.1f} s in all")
    hitlessbed.write_results(
        RESULTS, done, lane_seconds, repeat=REPEAT, project_methods=PROJECT_RESTARTS,
        extra={"guest": "Debian 13", "ovs_version": ".".join(map(str, version)),
               "versions": versions},
    )
    by_method: dict[str, list[MethodRun]] = {}
    for run in done:
        by_method.setdefault(run.method, []).append(run)
    yield Figures(by_method, version, tracebacks)


def test_open_vswitch_has_the_tunnel_fix(figures: Figures) -> None:
    assert figures.ovs_version >= FIXED_IN, figures.ovs_version


def _assert_hitless(runs: list[MethodRun]) -> None:
    assert len(runs) == REPEAT, "the method did not run as often as asked"
    for run in runs:
        assert_bridge_hitless(run)
        assert_tunnel_hitless(run)


def test_ovs_service_restart_is_hitless_across_the_tunnel(figures: Figures) -> None:
    _assert_hitless(figures.runs[OVS_SERVICE_RESTART])


def test_systemctl_restart_is_hitless_across_the_tunnel(figures: Figures) -> None:
    _assert_hitless(figures.runs[SYSTEMCTL_RESTART])


def test_ovs_service_restart_keeps_the_database(figures: Figures) -> None:
    """Nothing ovsdb-server starts from changed between the restarts, so each
    `ovs-service restart` keeps it running (the key compared is computed on
    Debian 13's systemd and environment here: see ovs_service/database.py)."""
    restarted = [run.line() for run in figures.runs[OVS_SERVICE_RESTART] if run.ovsdb_restarted]
    assert not restarted, "\n".join(restarted)


def test_ovs_services_python_left_no_traceback(figures: Figures) -> None:
    """The hooks and the restore ran on Python 3.13 without an exception (the
    hooks' failures never stop a restart: they would show only here)."""
    assert not figures.tracebacks, (
        f"Python tracebacks in the guest's journal:\n{figures.tracebacks}")
