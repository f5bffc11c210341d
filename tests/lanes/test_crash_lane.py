"""Nothing lost: kill the `restart` transaction at every step, and other accidents.

For every step of `ovs-service restart`, before and after it, the CLI kills
itself with SIGKILL there (the test-only OVS_SERVICE_FAULT variable). Then
`ovs-service recover` must bring back the full canonical state and leave
flow-restore-wait absent. Also: SIGKILL of ovs-vswitchd during a restore
(the unit's restart brings everything back), of ovsdb-server during a save,
and three restarts started at once.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from ovs_service import store
from tests.harness import canon
from tests.harness.lane import Hosts, NsSwitch, assert_switch_whole
from tests.harness.systemd_ns import SystemdNamespace

pytestmark = [pytest.mark.systemd, pytest.mark.root, pytest.mark.slow]

RESTART_STEPS = ["save", "stop-ovs-vswitchd", "restart-ovsdb-server", "start-ovs-vswitchd",
                 "restore", "clear-flow-restore-wait"]
STORE = "/var/lib/ovs-service"
KILL_POINTS = [p for step in RESTART_STEPS for p in (step, f"{step}:after")]
# A restart keeps an unchanged ovsdb-server running: the database's own
# restart is killed and failed with --restart-database.
DATABASE_RESTARTED = "--restart-database"


# SIGKILL, as the caller sees it through nsenter: nsenter kills itself with
# the signal that killed its child (`env` execs ovs-service, no shell between).
KILLED = -9


def _assert_switch(ns: SystemdNamespace, switch: NsSwitch, hosts: Hosts,
                   before: dict[str, list[str]], what: str) -> None:
    assert_switch_whole((ns, switch, hosts), before, what)


def _status(ns: SystemdNamespace) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(ns.run(["ovs-service", "status", "--json"]).stdout)
    return doc


def _assert_whole(ns: SystemdNamespace, switch: NsSwitch, hosts: Hosts,
                  before: dict[str, list[str]], what: str) -> None:
    """The switch as before, and nothing left to recover."""
    _assert_switch(ns, switch, hosts, before, what)
    status = _status(ns)
    assert status["transaction"] is None and status["pending"] is None, status


def _wait_restored(ns: SystemdNamespace, what: str, timeout: float = 120) -> None:
    """Until the hooks' restore (the ovs-service-restore unit, or poststart) is done."""
    deadline = time.monotonic() + timeout
    while _status(ns)["pending"] is not None:
        assert time.monotonic() < deadline, f"the hooks never restored after {what}"
        time.sleep(0.2)
    ns.settle()


@pytest.mark.parametrize("point", [*KILL_POINTS,
                                   f"restart-ovsdb-server:after {DATABASE_RESTARTED}"])
def test_killed_at_every_step_then_recover(
    lane: tuple[SystemdNamespace, NsSwitch, Hosts], point: str
) -> None:
    ns, switch, hosts = lane
    before = canon.all_states(switch)
    point, *options = point.split()
    proc = ns.run(["env", f"OVS_SERVICE_FAULT={point}", "ovs-service", "restart", *options],
                  check=False)
    assert proc.returncode == KILLED, f"not killed at {point}: {proc.returncode} {proc.stderr}"
    ns.settle()
    status = json.loads(ns.run(["ovs-service", "status", "--json"]).stdout)
    assert status["transaction"] and not status["transaction"]["running"], status
    recovered = ns.run(["ovs-service", "recover", "--json"], check=False)
    assert recovered.returncode == 0, recovered.stderr
    _assert_whole(ns, switch, hosts, before, f"SIGKILL at {point} and recover")


def test_killed_after_stop_then_unit_start(lane: tuple[SystemdNamespace, NsSwitch, Hosts]) -> None:
    """No recover: the operator just starts the switch again; the hooks finish the job."""
    ns, switch, hosts = lane
    before = canon.all_states(switch)
    proc = ns.run(["env", "OVS_SERVICE_FAULT=stop-ovs-vswitchd:after", "ovs-service", "restart"],
                  check=False)
    assert proc.returncode == KILLED, f"{proc.returncode} {proc.stderr}"
    assert _status(ns)["pending"] is not None, "the transaction saved nothing to restore"
    ns.systemctl("start", "openvswitch")
    _wait_restored(ns, "systemctl start")
    # Checked before any recover: the hooks alone brought everything back.
    _assert_switch(ns, switch, hosts, before, "SIGKILL after stop, then systemctl start")
    # recover only clears the dead transaction's journal: nothing left to restore or start.
    recovered = json.loads(ns.run(["ovs-service", "recover", "--json"]).stdout)
    assert recovered["interrupted"]["op"] == "restart", recovered
    assert recovered["actions"] == ["nothing to recover"], recovered
    _assert_whole(ns, switch, hosts, before, "SIGKILL after stop, systemctl start, recover")


def test_vswitchd_killed_during_restore(lane: tuple[SystemdNamespace, NsSwitch, Hosts]) -> None:
    ns, switch, hosts = lane
    # A big bridge makes the restore last long enough to be hit in the middle.
    switch.add_bridge("bigbr", protocols=["OpenFlow13"])
    flows = switch.dir / "big.flows"
    flows.write_text("".join(f"priority=5,ip,nw_dst=10.{i >> 16 & 255}.{i >> 8 & 255}."
                             f"{i & 255},actions=drop\n" for i in range(200_000)))
    switch.ofctl("-O", "OpenFlow13", "add-flows", "bigbr", str(flows))
    before = canon.all_states(switch)
    # Kill ovs-vswitchd the moment the transaction enters its restore step.
    watcher = ns.popen(["sh", "-c", """
        while ! grep -q '"step": "restore"' /var/lib/ovs-service/transaction.json 2>/dev/null
        do sleep 0.005; done
        kill -9 $(cat /run/openvswitch/ovs-vswitchd.pid)"""])
    proc = ns.run(["ovs-service", "restart"], check=False)
    watcher.wait(timeout=60)
    # The switch went away under the restore: 4, the snapshot stays pending
    # for the daemon's next start; or 1, if that showed as a failed step,
    # rolled forward. Either way one line.
    assert proc.returncode in (1, 4), f"{proc.returncode} {proc.stderr}"
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    # Restart=on-failure brings ovs-vswitchd back; its hooks restore the snapshot.
    deadline = time.monotonic() + 60
    while ns.main_pid("ovs-vswitchd") == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    _wait_restored(ns, "the daemon's restart")
    # Checked before any recover: the hooks (or the rolled-forward transaction) did it.
    _assert_switch(ns, switch, hosts, before, "SIGKILL of ovs-vswitchd during the restore")
    ns.run(["ovs-service", "recover", "--wait", "120"])  # the failed transaction's journal
    _assert_whole(ns, switch, hosts, before, "SIGKILL of ovs-vswitchd during the restore")
    switch.vsctl("del-br", "bigbr")


def test_ovsdb_killed_during_save(lane: tuple[SystemdNamespace, NsSwitch, Hosts]) -> None:
    ns, switch, hosts = lane
    before = canon.all_states(switch)
    ns.run(["kill", "-9", ns.run(["cat", "/run/openvswitch/ovsdb-server.pid"]).stdout.strip()])
    proc = ns.run(["ovs-service", "save"], check=False)
    if proc.returncode != 0:
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    ns.systemctl("start", "ovsdb-server")  # Restart=on-failure may have done it already
    ns.settle()
    # A half-written snapshot never appears as one; the switch was untouched.
    listing = json.loads(ns.run(["ovs-service", "snapshot", "list", "--json"]).stdout)
    assert all("error" not in s for s in listing), listing
    _assert_whole(ns, switch, hosts, before, "SIGKILL of ovsdb-server during a save")


def test_concurrent_restarts(lane: tuple[SystemdNamespace, NsSwitch, Hosts]) -> None:
    ns, switch, hosts = lane
    before = canon.all_states(switch)
    argvs = [["ovs-service", "restart"], ["ovs-service", "restart"],
             ["systemctl", "restart", "openvswitch"]]
    procs = [ns.popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for a in argvs]
    results = [(a, p.wait(timeout=300), *p.communicate()) for a, p in zip(argvs, procs,
                                                                          strict=True)]
    ours = [r for r in results if r[0][0] == "ovs-service"]
    # One transaction at a time: a caller that finds the other running says so
    # (exit 6, test_a_second_caller_is_refused_or_waits); if the first is already
    # done, the second runs. A transaction may also fail, in one line, when the
    # operator's systemctl restart takes the switch away under it; the hooks
    # keep the state either way.
    for _, code, _, err in ours:
        assert code == 0 or len(err.strip().splitlines()) == 1, err
        assert code != 6 or "lock" in err, err
    assert results[2][1] == 0, results[2]
    ns.settle()
    ns.run(["ovs-service", "recover", "--wait", "120"])
    _assert_whole(ns, switch, hosts, before, "three concurrent restarts")
    # With --wait, both succeed one after the other.
    procs = [ns.popen(["ovs-service", "restart", "--wait", "120"], stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.communicate() for p in procs]
    _assert_whole(ns, switch, hosts, before, "two restarts with --wait")


def test_a_second_caller_is_refused_or_waits(
    lane: tuple[SystemdNamespace, NsSwitch, Hosts]
) -> None:
    ns, switch, hosts = lane
    before = canon.all_states(switch)
    lock = f"{STORE}/{store.LOCK}"
    holder = ns.popen(["flock", lock, "sleep", "4"])
    try:
        deadline = time.monotonic() + 10
        while ns.run(["flock", "-n", lock, "true"], check=False).returncode == 0:
            assert time.monotonic() < deadline, "the lock was never taken"
            time.sleep(0.05)
        refused = ns.run(["ovs-service", "restart"], check=False)
        assert refused.returncode == 6, refused
        assert len(refused.stderr.strip().splitlines()) == 1 and "lock" in refused.stderr
        waited = ns.run(["ovs-service", "restart", "--wait", "60"], check=False)
        assert waited.returncode == 0, waited.stderr
    finally:
        holder.wait(timeout=30)
    _assert_whole(ns, switch, hosts, before, "a restart that waited for the lock")


@pytest.mark.parametrize("step", ["restart-ovsdb-server",
                                  f"restart-ovsdb-server {DATABASE_RESTARTED}",
                                  "start-ovs-vswitchd", "restore"])
def test_a_failure_after_the_stop_rolls_forward(
    lane: tuple[SystemdNamespace, NsSwitch, Hosts], step: str
) -> None:
    """No recover: a step that fails once ovs-vswitchd has stopped (a failed
    job; here injected, OVS_SERVICE_FAULT=fail:STEP) leaves the switch running
    with its state, and the CLI exits 1 saying what failed."""
    ns, switch, hosts = lane
    before = canon.all_states(switch)
    step, *options = step.split()
    proc = ns.run(["env", f"OVS_SERVICE_FAULT=fail:{step}", "ovs-service", "restart", *options],
                  check=False)
    assert proc.returncode == 1, f"{proc.returncode} {proc.stderr}"
    (line,) = proc.stderr.strip().splitlines()
    assert f"restart failed at {step}: step {step} failed (injected" in line, line
    assert "the switch was put back" in line, line
    _assert_whole(ns, switch, hosts, before, f"a failure at {step}, rolled forward")


NEWER_FLOW = "priority=20,tcp,tp_dst=22 actions=drop"


@pytest.mark.parametrize("how", ["an OpenFlow 1.1 bridge", "fail:save", "stop-ovs-vswitchd"])
def test_a_restart_that_ends_before_the_stop_leaves_the_running_switch_alone(
    lane: tuple[SystemdNamespace, NsSwitch, Hosts], how: str
) -> None:
    """Refused at its save (a bridge it cannot save, a failed save) or killed
    just before the stop: ovs-vswitchd ran on. A refusal leaves nothing to
    recover; after the kill, recover must not roll the running switch back
    to the snapshot, deleting what it was given since."""
    ns, switch, hosts = lane
    before = canon.all_states(switch)
    if how == "an OpenFlow 1.1 bridge":
        switch.add_bridge("br11", protocols=["OpenFlow11"])
    try:
        daemon = ns.main_pid("ovs-vswitchd")
        fault = [] if how.startswith("an ") else [f"OVS_SERVICE_FAULT={how}"]
        proc = ns.run(["env", *fault, "ovs-service", "restart"], check=False)
        killed = how == "stop-ovs-vswitchd"
        assert proc.returncode == (KILLED if killed else 1), f"{proc.returncode} {proc.stderr}"
        assert killed or len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert ns.main_pid("ovs-vswitchd") == daemon, "ovs-vswitchd was stopped"
        status = _status(ns)
        if not killed:
            assert status["transaction"] is None and status["pending"] is None, status
        # The operator (or a controller) goes on changing the running switch.
        switch.ofctl("-O", "OpenFlow15", "add-flow", "brt", NEWER_FLOW.replace(" ", ","))
        recovered = ns.run(["ovs-service", "recover", "--json"], check=False)
        assert recovered.returncode == 0, recovered.stderr
        assert json.loads(recovered.stdout)["bridges"] == [], recovered.stdout
        flows = switch.ofctl("-O", "OpenFlow15", "dump-flows", "brt", "--no-stats")
        assert NEWER_FLOW in flows, f"recover rolled the running switch back:\n{flows}"
        assert ns.main_pid("ovs-vswitchd") == daemon, "ovs-vswitchd was restarted"
    finally:
        switch.ofctl("-O", "OpenFlow15", "del-flows", "brt", "--strict",
                     NEWER_FLOW.split(" ")[0], check=False)
        switch.vsctl("--if-exists", "del-br", "br11")
        ns.run(["ovs-service", "recover"], check=False)
    _assert_whole(ns, switch, hosts, before, f"a restart that ended before the stop ({how})")


def test_fault_points_cover_every_step() -> None:
    """The count the issue asks for: kill points covered / steps that exist."""
    from ovs_service import transaction

    steps = [name for name, _ in transaction.RESTART_PLAN]
    assert steps == RESTART_STEPS
    print(f"restart: {len(KILL_POINTS)} kill points over {len(steps)}/{len(steps)} steps")


def test_recover_removes_the_dpkg_guard_a_killed_dpkg_left(
    lane: tuple[SystemdNamespace, NsSwitch, Hosts]
) -> None:
    """The Debian package's dpkg hook makes both units refuse a direct stop for
    a dpkg run that unpacks openvswitch-switch; a dpkg killed before its
    post-invoke hook leaves that in /run. recover takes it away (with no dpkg
    running), and restarts work again."""
    ns, switch, hosts = lane
    before = canon.all_states(switch)
    guards = [f"/run/systemd/system/{u}.d/zz-ovs-service-dpkg.conf"
              for u in ("ovsdb-server.service", "ovs-vswitchd.service")]
    write = 'mkdir -p "${0%/*}" && printf "[Unit]\\nRefuseManualStop=yes\\n" > "$0"'
    for guard in guards:
        ns.run(["sh", "-c", write, guard])
    ns.systemctl("daemon-reload")

    def refuses() -> list[str]:
        return [ns.systemctl("show", "-p", "RefuseManualStop", "--value", u).stdout.strip()
                for u in ("ovsdb-server.service", "ovs-vswitchd.service")]

    assert refuses() == ["yes", "yes"]
    assert ns.systemctl("stop", "ovs-vswitchd", check=False).returncode != 0
    proc = ns.run(["ovs-service", "recover", "--json"])
    actions = json.loads(proc.stdout)["actions"]
    assert [a for a in actions if "left by a dpkg run" in a] and len(actions) == 2, actions
    assert refuses() == ["no", "no"]
    assert ns.run(["ls", *guards], check=False).returncode != 0
    ns.run(["ovs-service", "restart"])
    _assert_whole(ns, switch, hosts, before, "recover of a dpkg guard, then a restart")
