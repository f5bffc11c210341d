"""ovs-service-hook, the units' sh front: what it leaves to a transaction and
what it does itself, against the journal that ovs-service writes.

ovs-vsctl is replaced on PATH by a script that records its arguments; the
hooks' behaviour under a real systemd and Open vSwitch is in
test_systemd_lane.py and test_crash_lane.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ovs_service import journal, store
from tests.harness.ovsbed import OvsBed, pid_alive

FRONT = Path(__file__).resolve().parents[2] / "bin" / "ovs-service-hook"
SET = "set Open_vSwitch . other_config:flow-restore-wait=true"
CLEAR = "--if-exists remove Open_vSwitch . other_config flow-restore-wait"
OTHER_BOOT = "00000000-0000-4000-8000-000000000000"


class Front:
    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "state"
        self.state.mkdir()
        self.run_dir = tmp / "run"
        self.calls = tmp / "vsctl.calls"
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        # The front finds its Python in the first line of ovs-service beside it.
        self.front = bin_dir / "ovs-service-hook"
        self.front.write_text(FRONT.read_text())
        (bin_dir / "ovs-service").write_text("#!/usr/bin/python3\n")
        # Stand-ins that record their arguments; no background restore runs.
        self.runs = tmp / "systemd-run.calls"
        for name, text in (("ovs-vsctl", f'echo "$*" >> {self.calls}'),
                           ("systemd-run", f'echo "$*" >> {self.runs}'),
                           ("systemctl", "echo 0")):
            tool = bin_dir / name
            tool.write_text(f"#!/bin/sh\n{text}\n")
            tool.chmod(0o755)
        self.path = f"{bin_dir}:{os.environ['PATH']}"

    def run(self, *args: str, invocation: str = "",
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        self.calls.unlink(missing_ok=True)
        env = {**os.environ, "PATH": self.path, "OVS_SERVICE_STATE_DIR": str(self.state),
               "OVS_SERVICE_RUN_DIR": str(self.run_dir),
               # No switch here: never the machine's own.
               "OVS_RUNDIR": str(self.run_dir / "no-switch"),
               "INVOCATION_ID": invocation, "PYTHONPATH": str(FRONT.parents[1])}
        return subprocess.run(["/bin/sh", str(self.front), *args], env=env, capture_output=True,
                              text=True, timeout=30, check=False, cwd=cwd)

    def vsctl(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


@pytest.fixture
def front(tmp_path: Path) -> Front:
    return Front(tmp_path)


def _deferred(proc: subprocess.CompletedProcess[str]) -> bool:
    return proc.returncode == 0 and "does this itself" in proc.stderr


def test_bad_usage(front: Front) -> None:
    for args in ((), ("restore",), ("save", "poststart")):
        proc = front.run(*args)
        assert proc.returncode == 2 and proc.stderr.startswith("usage: ovs-service-hook")


def test_prestart_sets_flow_restore_wait_only_with_a_snapshot_pending(front: Front) -> None:
    assert front.run("prestart").returncode == 0
    assert front.vsctl() == []
    assert not front.runs.exists()
    store.mark_pending(front.state, front.state / "20261125T000000Z-1")
    proc = front.run("prestart")
    assert proc.returncode == 0 and "restoring 20261125T000000Z-1" in proc.stderr
    assert [c for c in front.vsctl() if SET in c and "--no-wait" in c]
    # The restore starts in the background, bound to ovs-vswitchd.service.
    (run,) = front.runs.read_text().splitlines()
    assert "--unit=ovs-service-restore.service" in run
    assert "BindsTo=ovs-vswitchd.service" in run
    assert run.endswith(" -P -m ovs_service.hooks restorer")
    assert f"OVS_SERVICE_STATE_DIR={front.state}" in run


@contextlib.contextmanager
def _daemon(front: Front, name: str) -> Iterator[None]:
    """A process named `name` (a copy of sleep) with its pidfile where the
    front looks (OVS_RUNDIR)."""
    exe = front.run_dir.parent / "bin" / name
    shutil.copy("/bin/sleep", exe)
    proc = subprocess.Popen([str(exe), "60"])
    rundir = front.run_dir / "no-switch"
    rundir.mkdir(parents=True, exist_ok=True)
    (rundir / f"{name}.pid").write_text(f"{proc.pid}\n")
    try:
        yield
    finally:
        proc.kill()
        proc.wait()
        (rundir / f"{name}.pid").unlink()


def test_stoppost_and_idle_poststart_clear_flow_restore_wait(front: Front) -> None:
    with _daemon(front, "ovsdb-server"):
        assert front.run("stoppost").returncode == 0
    assert [c for c in front.vsctl() if CLEAR in c and "--no-wait" in c]
    # poststart with nothing pending: the daemon runs, so the change waits for it.
    assert front.run("poststart").returncode == 0
    assert [c for c in front.vsctl() if CLEAR in c and "--no-wait" not in c]


def test_stoppost_does_not_wait_for_a_stopped_database(front: Front) -> None:
    """With ovsdb-server down (no pidfile, or a pid that is not it), stoppost
    does not call ovs-vsctl, which would wait out its timeout; poststart clears."""
    proc = front.run("stoppost")
    assert proc.returncode == 0 and "ovsdb-server is down" in proc.stderr
    assert front.vsctl() == []
    with _daemon(front, "ovs-vswitchd"):
        (front.run_dir / "no-switch" / "ovsdb-server.pid").write_text(f"{os.getpid()}\n")
        assert front.run("stoppost").returncode == 0
        assert front.vsctl() == []


def test_hooks_left_to_a_running_transaction(front: Front) -> None:
    tx = journal.Journal(front.state, "restart", front.run_dir)  # this process: alive
    assert _deferred(front.run("stoppost"))
    assert not _deferred(front.run("save"))  # it has not saved yet
    tx.set_snapshot(front.state / "20261125T000000Z-1")
    assert _deferred(front.run("save"))
    store.mark_pending(front.state, front.state / "20261125T000000Z-1")
    # Before its start step, an operator's start does its own prestart.
    assert not _deferred(front.run("prestart"))
    with tx.step("start-ovs-vswitchd"):
        assert _deferred(front.run("prestart"))
        assert _deferred(front.run("poststart", invocation="any"))
        tx.set_invocation("0123abcd")
    with tx.step("restore"):
        assert _deferred(front.run("poststart", invocation="0123abcd"))
        # Another start (an operator's systemctl restart) does its own hooks
        # (here with nothing pending, so the front does not run Python).
        assert not _deferred(front.run("prestart"))
        store.clear_pending(front.state)
        other = front.run("poststart", "--debug", invocation="fedc3210")
        assert not _deferred(other) and front.vsctl()
    tx.finish()
    assert not (front.run_dir / journal.DEFER).exists()
    assert not _deferred(front.run("stoppost"))


def test_a_deferred_poststart_waits_until_the_transactions_outage_ends(front: Front) -> None:
    """The unit's ExecStartPost= commands after poststart (enabling remote
    managers) must not run in the outage: a poststart left to a transaction
    returns only once the transaction releases its outage lock. Without the
    lock held (a transaction whose daemon is not configured yet), at once."""
    tx = journal.Journal(front.state, "restart", front.run_dir)
    with tx.step("start-ovs-vswitchd"):
        assert _deferred(front.run("poststart", invocation="any"))  # nothing held
        results: list[subprocess.CompletedProcess[str]] = []
        with tx.outage():
            waiter = threading.Thread(
                target=lambda: results.append(front.run("poststart", invocation="any")))
            waiter.start()
            waiter.join(1.0)
            assert waiter.is_alive() and not results
        waiter.join(20)
        assert not waiter.is_alive() and _deferred(results[0])
    tx.finish()


def test_a_poststart_waiting_on_a_transaction_that_dies_does_its_work(front: Front) -> None:
    """The transaction is killed during its restore, while poststart waits on
    its outage lock: the kernel releases the lock, and poststart finds the
    transaction gone and clears flow-restore-wait itself."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from ovs_service import journal\n"
        "tx = journal.Journal(Path(sys.argv[1]), 'restart', Path(sys.argv[2]))\n"
        "with tx.step('start-ovs-vswitchd'), tx.outage():\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(front.state), str(front.run_dir)],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(FRONT.parents[1])})
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        results: list[subprocess.CompletedProcess[str]] = []
        waiter = threading.Thread(
            target=lambda: results.append(front.run("poststart", invocation="any")))
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive()
        holder.kill()
        waiter.join(20)
        assert not waiter.is_alive()
    finally:
        holder.kill()
        holder.wait()
    assert "the transaction is gone: doing this itself" in results[0].stderr
    assert any(call.endswith(CLEAR) for call in front.vsctl())


def test_a_dead_transaction_is_ignored(front: Front) -> None:
    proc = subprocess.Popen(["/bin/true"])
    proc.wait()
    front.run_dir.mkdir()
    (front.run_dir / journal.DEFER).write_text(
        f"{proc.pid} 1 {_boot_id()} - stoppost save prestart poststart\n")
    with _daemon(front, "ovsdb-server"):
        assert not _deferred(front.run("stoppost"))
    assert front.vsctl()


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _starttime(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[19])


def test_a_live_pid_of_another_process_is_not_a_transaction(front: Front, tmp_path: Path) -> None:
    """What a failed transaction (or one before a reboot) leaves: a defer file
    whose PID now belongs to an unrelated process. The hooks do their work."""
    # A command name with spaces and parentheses, as any process may have.
    sleep = tmp_path / "x) 1 (y"
    sleep.write_bytes(Path(shutil.which("sleep") or "/bin/sleep").read_bytes())
    sleep.chmod(0o755)
    unrelated = subprocess.Popen([str(sleep), "600"])
    try:
        pid, start, boot = unrelated.pid, _starttime(unrelated.pid), _boot_id()
        front.run_dir.mkdir()
        defer = front.run_dir / journal.DEFER
        # Where and how an earlier version wrote it, PID only: left across a reboot.
        (front.state / journal.DEFER).write_text(f"{pid} - stoppost save prestart poststart\n")
        for stale in (f"{pid} {start + 1} {boot}", f"{pid} {start} {OTHER_BOOT}"):
            defer.write_text(f"{stale} - stoppost save prestart poststart\n")
            with _daemon(front, "ovsdb-server"):
                stoppost = front.run("stoppost")
            assert not _deferred(stoppost), (stale, stoppost.stderr)
            assert [c for c in front.vsctl() if CLEAR in c], stale
            # save goes on to the Python hook (which finds no switch to save here).
            save = front.run("save")
            assert not _deferred(save) and "ovs-vswitchd is not running" in save.stderr, (
                stale, save.stderr)
        # The same process, named exactly: it is the transaction.
        defer.write_text(f"{pid} {start} {boot} - stoppost save prestart poststart\n")
        assert _deferred(front.run("stoppost"))
        assert _deferred(front.run("save"))
    finally:
        unrelated.kill()
        unrelated.wait()


def test_prestart_after_a_dead_transaction_runs_the_python_prestart(front: Front) -> None:
    """A journal left by a killed force-reload-kmod that had not deleted the
    datapaths: the Python prestart has nothing to re-create, and says nothing;
    the front goes on and sets flow-restore-wait."""
    proc = subprocess.Popen(["/bin/true"])
    proc.wait()
    record = {"op": "force-reload-kmod", "pid": proc.pid, "started": 0.0,
              "snapshot": "20261125T000000Z-1", "step": "stop-ovs-vswitchd", "state": "done"}
    (front.state / journal.JOURNAL).write_text(json.dumps(record))
    store.mark_pending(front.state, front.state / "20261125T000000Z-1")
    done = front.run("prestart")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "re-created" not in done.stderr
    assert [c for c in front.vsctl() if SET in c]
    # The same journal, datapaths deleted, but its snapshot is gone: one line
    # in the journal, and still flow-restore-wait.
    (front.state / journal.JOURNAL).write_text(json.dumps({**record, "datapaths_deleted": True}))
    broken = front.run("prestart")
    assert broken.returncode == 0 and "Traceback" not in broken.stderr, broken.stderr
    assert "20261125T000000Z-1: not a directory" in broken.stderr, broken.stderr
    assert [c for c in front.vsctl() if SET in c]


def test_python_never_imports_ovs_service_from_the_current_directory(
    front: Front, tmp_path: Path
) -> None:
    """`python3 -m` puts the current directory first on sys.path: a package
    named ovs_service there would run as root in place of ours."""
    planted = tmp_path / "cwd" / "ovs_service"
    (planted / "hooks").mkdir(parents=True)
    marker = tmp_path / "planted-code-ran"
    (planted / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (planted / "hooks" / "__init__.py").write_text("")
    (planted / "hooks" / "__main__.py").write_text("")
    # A journal left by a dead process: prestart runs the Python hooks.
    proc = subprocess.Popen(["true"])
    proc.wait()
    (front.state / journal.JOURNAL).write_text(
        json.dumps({"op": "restart", "pid": proc.pid, "started": 0.0}))
    result = front.run("prestart", cwd=planted.parent)
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "the hook imported ovs_service from its current directory"
    assert "Error" not in result.stderr, result.stderr


def test_save_runs_when_a_failed_transaction_left_its_files(
    ovs: OvsBed, tmp_path: Path
) -> None:
    """`systemctl restart` after a failed transaction whose PID is now another
    process's: ExecStop='s save saves the switch (before, it said "a
    transaction is running and does this itself", and every flow was lost)."""
    ovs.add_bridge("br0", protocols=("OpenFlow13",))
    ovs.ofctl("-O", "OpenFlow13", "add-flow", "br0", "priority=5,ip,actions=drop")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ovs-service-hook").write_text(FRONT.read_text())
    (bin_dir / "ovs-service").write_text(f"#!{sys.executable}\n")
    state, run = tmp_path / "state", tmp_path / "run"
    unrelated = subprocess.Popen(["sleep", "600"])
    try:
        pid, start = unrelated.pid, _starttime(unrelated.pid)
        left = {"op": "restart", "pid": pid, "started": time.time() - 60, "start": start - 1,
                "boot": _boot_id(), "snapshot": "gone", "step": "restart-ovsdb-server",
                "state": "running"}
        state.mkdir()
        run.mkdir()
        (state / journal.JOURNAL).write_text(json.dumps(left))
        (run / journal.DEFER).write_text(f"{pid} {start - 1} {_boot_id()} - stoppost save\n")
        (state / journal.DEFER).write_text(f"{pid} - stoppost save\n")  # an earlier version's
        env = {**os.environ, **ovs.env, "OVS_SERVICE_STATE_DIR": str(state),
               "OVS_SERVICE_RUN_DIR": str(run), "PYTHONPATH": str(FRONT.parents[1])}
        proc = subprocess.run(["/bin/sh", str(bin_dir / "ovs-service-hook"), "save"], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
    finally:
        unrelated.kill()
        unrelated.wait()
    assert proc.returncode == 0 and "does this itself" not in proc.stderr, proc.stderr
    pending = store.pending_snapshot(state)
    assert pending is not None, proc.stderr
    assert json.loads((pending / "manifest.json").read_text())["bridges"] == ["br0"]


def _fake_appctl(front: Front, dpif_show: str) -> Path:
    """ovs-appctl replaced: it answers dpif/show with `dpif_show`, records every call."""
    calls = front.run_dir.parent / "appctl.calls"
    tool = Path(front.path.split(":")[0]) / "ovs-appctl"
    tool.write_text(f"#!/bin/sh\necho \"$*\" >> {calls}\n"
                    f"case \"$*\" in *dpif/show*) printf '%s' '{dpif_show}' ;; esac\n")
    tool.chmod(0o755)
    return calls


def _exits(calls: Path) -> list[str]:
    return [line for line in calls.read_text().splitlines() if line.endswith("exit")]


def test_stop_leaves_a_kernel_datapath_switch_to_sigterm(front: Front) -> None:
    """`exit` would tear the bridges down while revalidators run; SIGTERM follows instead."""
    calls = _fake_appctl(front, "system@ovs-system: hit:5 missed:1\n  br0:\n")
    proc = front.run("stop")
    assert proc.returncode == 0 and _exits(calls) == []
    assert any("dpif/show" in line for line in calls.read_text().splitlines())


NETDEV = "netdev@ovs-netdev: hit:0 missed:0\n  br0:\n    br0 65534/1: (tap)\n"


@pytest.mark.parametrize("shown", [NETDEV, "system@ovs-system: hit:5 missed:1\n  br0:\n" + NETDEV])
def test_stop_leaves_a_userspace_datapath_switch_to_sigterm(front: Front, shown: str) -> None:
    """Its flows die with the process and its taps stay either way: no teardown."""
    calls = _fake_appctl(front, shown)
    assert front.run("stop").returncode == 0
    assert _exits(calls) == []


@pytest.mark.parametrize("port", ["dpdk0 1/2: (dpdk: configured_rx_queues=1)",
                                  "vhu0 2/3: (dpdkvhostuserclient: configured_rx_queues=1)",
                                  "vhu1 4/5: (dpdkvhostuser: configured_rx_queues=1)",
                                  "eth1 3/4: (afxdp: n_rxq=1)",
                                  "eth2 5/6: (afxdp-nonpmd: n_rxq=1)"])
@pytest.mark.parametrize("kernel", ["", "system@ovs-system: hit:5 missed:1\n  brk:\n"])
def test_stop_has_dpdk_and_afxdp_ports_exit(front: Front, port: str, kernel: str) -> None:
    """Their ports are stopped only by exit's teardown (beside kernel bridges too)."""
    calls = _fake_appctl(front, f"{kernel}{NETDEV}    {port}\n")
    assert front.run("stop").returncode == 0
    assert _exits(calls) == ["-T 10 -t ovs-vswitchd exit"]


def test_stop_leaves_a_real_userspace_switch_and_its_tap_to_sigterm(front: Front,
                                                                     ovs: OvsBed) -> None:
    """The private switch (netdev datapath): the real ovs-appctl; the daemon
    still runs after the hook, and SIGTERM (systemd's, here the test's) ends
    it; the bridge's tap device stays for the next daemon, which takes it over."""
    ovs.add_bridge("brstop")
    pid = ovs.pid("ovs-vswitchd")
    assert pid
    before = _ifindex(ovs, "brstop")
    env = {**os.environ, "OVS_SERVICE_STATE_DIR": str(front.state),
           "OVS_SERVICE_RUN_DIR": str(front.run_dir), **ovs.env}
    proc = subprocess.run(["/bin/sh", str(front.front), "stop"], env=env, capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert pid_alive(pid), "the stop hook made ovs-vswitchd exit"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid), "ovs-vswitchd did not exit on SIGTERM"
    assert _ifindex(ovs, "brstop") == before
    ovs.restart_vswitchd()
    assert _ifindex(ovs, "brstop") == before


def _ifindex(ovs: OvsBed, name: str) -> int:
    (link,) = json.loads(subprocess.run(["ip", "-n", ovs.netns, "-json", "link", "show", "dev",
                                         name], check=True, capture_output=True,
                                        text=True).stdout)
    return int(link["ifindex"])


def test_poststart_waits_for_the_background_restore_without_forking(front: Front) -> None:
    """poststart waits until the restorer (its MainPID, from systemctl) exits,
    with one waiting process, not a `sleep` forked every 10 ms."""
    # Not a child of this process (a zombie would look alive): reaped by init.
    restorer = int(subprocess.run(["sh", "-c", "sleep 1 >/dev/null 2>&1 & echo $!"],
                                  check=True, capture_output=True, text=True).stdout)
    try:
        tool = Path(front.path.split(":")[0]) / "systemctl"
        tool.write_text(f"#!/bin/sh\necho {restorer}\n")
        (front.state / "restoring").write_text("20261125T000000Z-1\n")
        forks = Path(front.path.split(":")[0]) / "sleep"  # a sleep on PATH counts its runs
        forks.write_text(f"#!/bin/sh\necho x >> {front.state}/sleeps\nexec /bin/sleep \"$@\"\n")
        forks.chmod(0o755)
        started = time.monotonic()
        proc = front.run("poststart")
        waited = time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(restorer, 9)
    assert proc.returncode == 0 and "20261125T000000Z-1 restored" in proc.stderr, proc.stderr
    assert waited >= 0.8, f"poststart returned after {waited:.2f} s, before the restorer ended"
    assert not (front.state / "sleeps").exists(), "poststart polled with sleep"
