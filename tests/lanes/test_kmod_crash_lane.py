"""Nothing lost: kill `force-reload-kmod` at every step, on the real kernel module.

One systemd guest carries the switch of `kmodbed` (flows, groups, a meter, a
TLV map, datapath and OpenFlow port numbers with gaps, internal interfaces
with addresses and routes, firewall rules). For every step of
`ovs-service force-reload-kmod`, before and after it, the CLI kills itself
with SIGKILL there (the test-only OVS_SERVICE_FAULT variable); then
`ovs-service recover` must bring back everything the guest's own tools show
(ovs-dpctl, ovs-ofctl, ovs-vsctl, ip -json, iptables-save, nft), leave
flow-restore-wait absent and no transaction or pending snapshot behind, and
the namespaces must talk through the flows again. Also: the operator starts
the units instead of running recover, a kill inside the module reload that
leaves the module unloaded, and recover itself killed.

`make test` (CI) runs two kills: one with the datapaths re-created and the
restore pending, then recover; one with the daemons down, after which the
units' own hooks restore (`systemctl start`). The rest are marked
`exhaustive`, which only `make test-kmod-crash` runs (each kill costs one to
three minutes under emulation: all of them take 30 to 55).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.harness.kmodbed import (
    RELOAD_TIMEOUT,
    STATE_DIR,
    SwitchState,
    booted_guest,
    build_switch,
    ping,
    settle,
    switch_state,
)
from tests.harness.vm.guest import Guest

pytestmark = [pytest.mark.vm, pytest.mark.root, pytest.mark.slow]

KMOD_STEPS = ["save", "stop-ovs-vswitchd", "restart-ovsdb-server", "delete-datapaths",
              "reload-module", "restore-datapaths", "start-ovs-vswitchd", "restore",
              "clear-flow-restore-wait", "restore-interfaces", "check-dead-ifs"]
KILL_POINTS = [p for step in KMOD_STEPS for p in (step, f"{step}:after")]
# Killed at these, the guest has no kernel datapath: recover must make them again.
NO_DATAPATH = ("delete-datapaths:after", "reload-module", "reload-module:after",
               "restore-datapaths")
# The kill make test runs, then recover: the datapaths re-created, the restore pending.
REPRESENTATIVE = ("restore",)
JOURNAL = f"{STATE_DIR}/transaction.json"
TRAFFIC_TIMEOUT = 60.0


def sampled(values: list[str], kept: tuple[str, ...]) -> list[Any]:
    """`values` as parameters, those not in `kept` marked exhaustive."""
    assert set(kept) <= set(values), f"not among the values: {set(kept) - set(values)}"
    return [value if value in kept else pytest.param(value, marks=pytest.mark.exhaustive)
            for value in values]


@pytest.fixture(scope="module")
def guest() -> Iterator[Guest]:
    with booted_guest("kmod crash lane") as booted:
        build_switch(booted)
        yield booted


@pytest.fixture(scope="module")
def reference(guest: Guest) -> SwitchState:
    """The switch as built. Every test compares with it, not with the state
    the test before left: nothing may drift from one kill to the next (and
    the guest reads its state once a test, not twice)."""
    return switch_state(guest)


@dataclass(frozen=True)
class Killed:
    journal: dict[str, Any]
    """The dead transaction's journal."""
    datapaths: list[str]
    """`ovs-dpctl dump-dps` right after the kill."""
    seconds: float


def kill_at(guest: Guest, point: str) -> Killed:
    run = guest.run(["env", f"OVS_SERVICE_FAULT={point}", "ovs-service", "force-reload-kmod"],
                    timeout=RELOAD_TIMEOUT, check=False)
    assert run.returncode in (-9, 137), (
        f"not killed at {point}: exit {run.returncode}\n{run.stdout}{run.stderr}")
    settle(guest)
    journal = json.loads(guest.read_file(JOURNAL))
    dps = guest.run(["ovs-dpctl", "dump-dps"], check=False).stdout.split()
    return Killed(journal, dps, run.seconds)


def recover(guest: Guest, point: str) -> dict[str, Any]:
    # --wait: a unit hook may be restoring (the dead transaction left it to them).
    run = guest.run(["ovs-service", "recover", "--wait", "120", "--json"],
                    timeout=RELOAD_TIMEOUT, check=False)
    assert run.ok, (f"recover after a kill at {point}: exit {run.returncode}\n"
                    f"{run.stdout}{run.stderr}\n{guest.journal(60)}")
    doc: dict[str, Any] = json.loads(run.stdout)
    return doc


def assert_whole(guest: Guest, before: SwitchState, what: str) -> None:
    """Everything as before, nothing left over, and traffic through the flows."""
    after = switch_state(guest)
    changes = before.changes(after)
    assert not changes, f"after {what}:\n" + "\n".join(changes)
    other_config = guest.run(["ovs-vsctl", "get", "Open_vSwitch", ".", "other_config"]).stdout
    assert "flow-restore-wait" not in other_config, f"after {what}: {other_config}"
    status = json.loads(guest.run(["ovs-service", "status", "--json"]).stdout)
    assert status["transaction"] is None and status["pending"] is None, status
    deadline = time.monotonic() + TRAFFIC_TIMEOUT
    while not ping(guest):
        assert time.monotonic() < deadline, f"no traffic between the namespaces after {what}"


@pytest.mark.parametrize("point", sampled(KILL_POINTS, REPRESENTATIVE))
def test_killed_at_every_step_then_recover(
    guest: Guest, reference: SwitchState, point: str
) -> None:
    start = time.monotonic()
    killed = kill_at(guest, point)
    assert killed.journal["op"] == "force-reload-kmod", killed.journal
    # The journal says when the kernel's datapaths may be gone: from inside
    # delete-datapaths on.
    deleting = KILL_POINTS.index(point) > KILL_POINTS.index("delete-datapaths")
    assert killed.journal["datapaths_deleted"] is deleting, killed.journal
    if point in NO_DATAPATH:
        assert killed.datapaths == [], f"killed at {point}, the kernel has {killed.datapaths}"
    killing = time.monotonic()
    recovered = recover(guest, point)
    assert recovered["interrupted"]["op"] == "force-reload-kmod", recovered
    recovering = time.monotonic()
    assert_whole(guest, reference, f"SIGKILL at {point} and recover")
    print(f"\n{point}: {time.monotonic() - start:.1f} s (kill {killing - start:.1f}, recover "
          f"{recovering - killing:.1f}, checks {time.monotonic() - recovering:.1f}); "
          f"recover: {'; '.join(recovered['actions'])}")


@pytest.mark.exhaustive
def test_recover_again_changes_nothing(guest: Guest, reference: SwitchState) -> None:
    assert recover(guest, "nothing")["actions"] == ["nothing to recover"]
    assert_whole(guest, reference, "a recover with nothing to recover")


@pytest.mark.parametrize("point", sampled(["restart-ovsdb-server:after", "delete-datapaths:after",
                                           "reload-module:after", "restore-datapaths:after"],
                                          ("restart-ovsdb-server:after",)))
def test_killed_then_unit_start(guest: Guest, reference: SwitchState, point: str) -> None:
    """No recover at first: the operator just starts the switch again. The
    prestart hook re-creates kernel datapaths the reload had deleted, at
    their port numbers, and the hooks restore the flows. recover, run after,
    clears the dead transaction's journal and, once the datapaths were
    deleted, puts the internal interfaces back (the hooks restore OpenFlow
    state only)."""
    killed = kill_at(guest, point)
    if point in NO_DATAPATH:
        assert killed.datapaths == [], f"killed at {point}, the kernel has {killed.datapaths}"
    guest.run(["systemctl", "start", "openvswitch"], timeout=RELOAD_TIMEOUT)
    settle(guest)
    recovered = recover(guest, f"{point}, then systemctl start")
    if killed.journal["datapaths_deleted"]:
        assert any(action.startswith("restored interfaces and firewall")
                   for action in recovered["actions"]), recovered
    assert_whole(guest, reference, f"SIGKILL at {point}, then systemctl start")


@pytest.mark.exhaustive
def test_killed_with_the_module_unloaded(guest: Guest, reference: SwitchState) -> None:
    """A kill inside reload-module, between unloading and loading the module."""
    killed = kill_at(guest, "reload-module")
    assert killed.datapaths == []
    guest.run(["rmmod", "openvswitch"])
    recovered = recover(guest, "reload-module, module unloaded")
    assert "loaded the openvswitch module" in recovered["actions"], recovered
    assert_whole(guest, reference, "SIGKILL with the module unloaded, and recover")


@pytest.mark.exhaustive
def test_recover_killed_too_then_recover_again(guest: Guest, reference: SwitchState) -> None:
    """recover itself killed twice: once with the datapaths made again and the
    units still down, once before the interfaces. The third run finishes, and
    makes nothing twice (the ports made by the first run stay the same devices)."""
    kill_at(guest, "reload-module:after")
    for point in ("start-units", "restore-interfaces"):
        run = guest.run(["env", f"OVS_SERVICE_FAULT={point}", "ovs-service", "recover"],
                        timeout=RELOAD_TIMEOUT, check=False)
        assert run.returncode in (-9, 137), f"recover not killed at {point}: {run.stderr}"
        settle(guest)
        if point == "start-units":
            made = guest.run(["cat", "/sys/class/net/p0/ifindex"]).stdout
    recovered = recover(guest, "two killed recovers")
    assert recovered["interrupted"]["op"] == "recover", recovered
    assert not any("re-created" in action for action in recovered["actions"]), recovered
    assert guest.run(["cat", "/sys/class/net/p0/ifindex"]).stdout == made
    assert_whole(guest, reference, "SIGKILL of force-reload-kmod and of two recovers")


# After the stop, what can fail (rmmod refused, a failed ovsdb-server job, a
# full disk) is injected here: OVS_SERVICE_FAULT=fail:STEP makes STEP raise.
@pytest.mark.parametrize("step", sampled(["restart-ovsdb-server", "reload-module", "restore"],
                                         ()))
def test_a_failure_after_the_stop_rolls_forward(
    guest: Guest, reference: SwitchState, step: str
) -> None:
    """No recover: the transaction puts the switch back itself (units started,
    datapaths at their port numbers, flows, interfaces), then exits 1 with
    the reason in one line."""
    run = guest.run(["env", f"OVS_SERVICE_FAULT=fail:{step}", "ovs-service",
                     "force-reload-kmod"], timeout=RELOAD_TIMEOUT, check=False)
    assert run.returncode == 1, f"exit {run.returncode}\n{run.stdout}{run.stderr}"
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert f"force-reload-kmod failed at {step}: step {step} failed (injected" in lines[0], lines
    assert "the switch was put back" in lines[0], lines
    settle(guest)
    assert_whole(guest, reference, f"a failure at {step}, rolled forward")


def test_fault_points_cover_every_step() -> None:
    """The count the issue asks for: kill points covered / steps that exist."""
    from ovs_service import reload

    steps = [name for name, _ in reload.KMOD_PLAN]
    assert steps == KMOD_STEPS
    print(f"force-reload-kmod: {len(KILL_POINTS)} kill points over "
          f"{len(steps)}/{len(steps)} steps")
