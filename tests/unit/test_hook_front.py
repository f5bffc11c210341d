"""ovs-service-hook, the units' sh front: what it leaves to a transaction and
what it does itself, against the journal that ovs-service writes.

ovs-vsctl is replaced on PATH by a script that records its arguments; the
hooks' behaviour under a real systemd and Open vSwitch is in
test_systemd_lane.py and test_crash_lane.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ovs_service import journal, store

FRONT = Path(__file__).resolve().parents[2] / "bin" / "ovs-service-hook"
SET = "set Open_vSwitch . other_config:flow-restore-wait=true"
CLEAR = "--if-exists remove Open_vSwitch . other_config flow-restore-wait"


class Front:
    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "state"
        self.state.mkdir()
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


def test_stoppost_and_idle_poststart_clear_flow_restore_wait(front: Front) -> None:
    assert front.run("stoppost").returncode == 0
    assert [c for c in front.vsctl() if CLEAR in c and "--no-wait" in c]
    # poststart with nothing pending: the daemon runs, so the change waits for it.
    assert front.run("poststart").returncode == 0
    assert [c for c in front.vsctl() if CLEAR in c and "--no-wait" not in c]


def test_hooks_left_to_a_running_transaction(front: Front) -> None:
    tx = journal.Journal(front.state, "restart")  # this process: alive
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
    assert not (front.state / journal.DEFER).exists()
    assert not _deferred(front.run("stoppost"))


def test_a_dead_transaction_is_ignored(front: Front) -> None:
    proc = subprocess.Popen(["/bin/true"])
    proc.wait()
    (front.state / journal.DEFER).write_text(f"{proc.pid} - stoppost save prestart poststart\n")
    assert not _deferred(front.run("stoppost"))
    assert front.vsctl()


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
