"""The transaction journal as recover reads it: damaged, foreign, or from another version."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from ovs_service import journal, ovs, store
from tests.harness.ovsbed import Cli, manifest, wait_for


def test_a_journal_with_fields_we_do_not_know_is_still_read(tmp_path: Path) -> None:
    doc = {"op": "force-reload-kmod", "pid": 1 << 22, "started": 1.0, "snapshot": "s",
           "step": "reload-module", "state": "done", "from_a_later_version": [1]}
    (tmp_path / journal.JOURNAL).write_text(json.dumps(doc))
    record = journal.read(tmp_path)
    assert record is not None
    assert (record.op, record.step, record.snapshot) == ("force-reload-kmod", "reload-module", "s")


def test_an_unreadable_journal_names_no_live_process(tmp_path: Path) -> None:
    for text in ("{not json", "[1, 2]", '{"op": "restart"}'):
        (tmp_path / journal.JOURNAL).write_text(text)
        record = journal.read(tmp_path)
        assert record is not None and record.state == "unreadable", text
        assert not record.alive, text  # kill(0, 0) would have said yes
        assert journal.active(tmp_path) is None


# Valid JSON, wrong types: each one crashed status, recover or the hooks (the
# stop-time save among them: `systemctl restart` then lost every flow).
WRONG_TYPES = [
    {"op": "restart", "pid": "12", "started": 0},
    {"op": "restart", "pid": 1, "started": None},
    {"op": "restart", "pid": True, "started": 0},
    {"op": 7, "pid": 1 << 22, "started": 0},
    {"op": "force-reload-kmod", "pid": 1 << 22, "started": 0, "datapaths_deleted": True,
     "snapshot": 7},
    {"op": "force-reload-kmod", "pid": 1 << 22, "started": 0, "datapaths_deleted": "yes"},
    {"op": "restart", "pid": 1 << 22, "started": 0, "start": "x", "boot": "y"},
    {"op": "restart", "pid": 1 << 22, "started": 0, "start": 1, "boot": 2},
    {"op": "restart", "pid": 1 << 22, "started": 0, "done": "save"},
    {"op": "restart", "pid": 1 << 22, "started": 0, "done": [1]},
    {"op": "restart", "pid": 1 << 22, "started": 0, "step": ["save"]},
    {"op": "restart", "pid": 1 << 22, "started": 0, "state": None},
    {"op": "restart", "pid": 1 << 22, "started": 0, "invocation": 1},
    # A snapshot is a name in the store, not a path out of it.
    {"op": "restart", "pid": 1 << 22, "started": 0, "snapshot": "../../etc"},
    {"op": "restart", "pid": 1 << 22, "started": 0, "snapshot": ".."},
    "just a string",
]


@pytest.mark.parametrize("doc", WRONG_TYPES, ids=json.dumps)
def test_a_journal_with_a_field_of_the_wrong_type_is_unreadable(
    tmp_path: Path, doc: object
) -> None:
    (tmp_path / journal.JOURNAL).write_text(json.dumps(doc))
    record = journal.read(tmp_path)
    assert record is not None and record.state == "unreadable", record
    assert not record.alive
    assert journal.active(tmp_path) is None


def test_status_recover_and_the_save_hook_read_a_wrong_typed_journal(cli: Cli) -> None:
    cli.bed.add_bridge("br0")
    cli.bed.ofctl("add-flow", "br0", "priority=10,ip,actions=drop")
    left = cli.state_dir / journal.JOURNAL
    left.write_text(json.dumps({"op": "restart", "pid": 1, "started": None}))
    status = cli("status", "--json").json()
    assert status["transaction"]["running"] is False, status
    # The stop-time save: without it, `systemctl restart` loses every flow.
    hook = subprocess.run([sys.executable, "-P", "-m", "ovs_service.hooks", "save"],
                          env=cli.env(), capture_output=True, text=True, timeout=120,
                          check=False)
    assert hook.returncode == 0 and "Traceback" not in hook.stderr, hook.stderr
    pending = store.pending_snapshot(cli.state_dir)
    assert pending is not None and manifest(pending)["bridges"] == ["br0"]
    done = cli("recover", "--json").json()
    assert done["interrupted"]["state"] == "unreadable", done
    assert not left.exists()
    assert "priority=10,ip actions=drop" in cli.bed.ofctl("dump-flows", "br0", "--no-stats")


def test_recover_takes_over_what_the_kernel_side_left(tmp_path: Path) -> None:
    dead = journal.Record(op="force-reload-kmod", pid=1 << 22, started=1.0, snapshot="s",
                          datapaths_deleted=True, step="reload-module", state="done")
    tx = journal.Journal(tmp_path, "recover")
    tx.take_over(dead)
    record = journal.read(tmp_path)
    assert record is not None and record.pid == os.getpid()
    assert (record.op, record.snapshot, record.datapaths_deleted) == ("recover", "s", True)
    assert record.step is None


# A journal outlives its process (a failed transaction leaves it for recover,
# and it survives reboots), and PIDs are reused: a live process with the
# journal's PID is not, by that alone, the transaction.

OTHER_BOOT = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def unrelated() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that has nothing to do with any transaction."""
    proc = subprocess.Popen(["sleep", "600"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _stat_starttime(pid: int, comm: str) -> int:
    """Field 22 of /proc/PID/stat, read knowing the command name beforehand."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    prefix = f"{pid} ({comm}) "
    assert stat.startswith(prefix), stat
    return int(stat[len(prefix):].split()[19])


def test_a_live_pid_with_another_start_time_or_boot_is_not_the_writer(
    tmp_path: Path, unrelated: subprocess.Popen[bytes]
) -> None:
    me = journal.ProcessId.of(unrelated.pid)
    assert me is not None and me.start == _stat_starttime(unrelated.pid, "sleep")
    assert me.boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert journal.Record(op="restart", pid=me.pid, started=time.time(), start=me.start,
                          boot=me.boot).alive
    for start, boot in ((me.start + 1, me.boot), (me.start, OTHER_BOOT)):
        record = journal.Record(op="restart", pid=me.pid, started=time.time(), start=start,
                                boot=boot, snapshot="s", step="stop-ovs-vswitchd")
        assert not record.alive, (start, boot)
        (tmp_path / journal.JOURNAL).write_text(json.dumps(asdict(record)))
        assert journal.active(tmp_path) is None


def test_a_journal_of_an_earlier_version_names_its_pid_only(
    tmp_path: Path, unrelated: subprocess.Popen[bytes]
) -> None:
    """As after a reboot, or after the writer died and its PID went to another
    process: that process is no ovs-service, whenever it started. The wall
    clock the journal was written with says nothing: it may have been stepped
    (`started` ten minutes ahead, then set back) or be another boot's."""
    doc = {"op": "force-reload-kmod", "pid": unrelated.pid, "snapshot": "s",
           "datapaths_deleted": True, "step": "reload-module", "state": "running"}
    for started in (time.time() - 3600, time.time(), time.time() + 600):
        (tmp_path / journal.JOURNAL).write_text(json.dumps({**doc, "started": started}))
        assert journal.active(tmp_path) is None, started


@pytest.fixture
def legacy_writer(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A live process that runs `ovs-service restart`, as an earlier version's would."""
    script = tmp_path / "bin" / "ovs-service"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\nsleep 600\n")
    script.chmod(0o755)
    proc = subprocess.Popen([str(script), "--debug", "restart", "--wait", "5"],
                            start_new_session=True)
    try:
        # Until it has exec'd: the child of the fork shows our command line first.
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        wait_for("the script's exec", lambda: str(script).encode() in cmdline.read_bytes())
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and its sleep, by their group
        proc.wait()


def test_an_earlier_versions_journal_counts_while_its_writer_runs(
    tmp_path: Path, legacy_writer: subprocess.Popen[bytes]
) -> None:
    doc = {"op": "restart", "pid": legacy_writer.pid, "started": 0.0, "snapshot": "s",
           "step": "stop-ovs-vswitchd", "state": "running"}
    (tmp_path / journal.JOURNAL).write_text(json.dumps(doc))
    assert journal.active(tmp_path) is not None
    # The same process, but it runs another command than the journal's.
    (tmp_path / journal.JOURNAL).write_text(json.dumps({**doc, "op": "force-reload-kmod"}))
    assert journal.active(tmp_path) is None


def test_an_earlier_versions_writer_is_recognised_by_its_command_line(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    record = journal.Record(op="recover", pid=42, started=0.0)
    for argv, alive in (
        (["/usr/bin/python3", "/usr/bin/ovs-service", "recover"], True),
        (["/usr/bin/python3", "-m", "ovs_service", "--debug", "recover"], True),
        (["/opt/venv/bin/python", "/opt/venv/bin/ovs-service", "recover", "--wait", "9"], True),
        (["/usr/bin/python3", "/usr/bin/ovs-service", "status"], False),
        (["/usr/bin/python3", "-m", "ovs_service.hooks", "save"], False),
        (["sleep", "recover"], False),
        (["/usr/bin/python3", "/tmp/not-ovs-service", "recover"], False),
        ([], False),  # a zombie, or a kernel thread
    ):
        (proc / "42").mkdir(parents=True, exist_ok=True)
        (proc / "42" / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
        assert record.is_alive(proc) is alive, argv


def test_the_command_name_may_hold_spaces_and_parentheses(
    tmp_path: Path, unrelated: subprocess.Popen[bytes]
) -> None:
    name = "a) 1 2 (b) R 9"  # /proc/PID/comm keeps the first 15 bytes
    tricky = tmp_path / name
    shutil.copy(shutil.which("sleep") or "/bin/sleep", tricky)
    proc = subprocess.Popen([str(tricky), "600"])
    try:
        found = journal.ProcessId.of(proc.pid)
        assert found is not None
        assert found.start == _stat_starttime(proc.pid, name[:15])
        assert found.alive()
    finally:
        proc.kill()
        proc.wait()


def test_the_proc_root_is_read_as_given(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "sys/kernel/random").mkdir(parents=True)
    (proc / "sys/kernel/random/boot_id").write_text(OTHER_BOOT + "\n")
    (proc / "42").mkdir()
    fields = " ".join(str(n) for n in range(3, 53))  # field N holds N
    (proc / "42/stat").write_text(f"42 (x) y) (z) {fields}\n")
    assert journal.ProcessId.of(42, proc) == journal.ProcessId(42, 22, OTHER_BOOT)
    assert journal.ProcessId.of(43, proc) is None
    assert journal.start_time(0, proc) is None


def test_the_hooks_stop_deferring_on_every_way_out(tmp_path: Path) -> None:
    """The defer file is in the runtime directory, and goes on success,
    failure and exception alike; the journal stays for recover unless finished."""
    run = tmp_path / "run"
    with pytest.raises(RuntimeError), journal.Journal(tmp_path, "restart", run) as tx:
        assert (run / journal.DEFER).is_file()
        assert not (tmp_path / journal.DEFER).exists()
        tx.set_snapshot(tmp_path / "s")
        raise RuntimeError("a step failed")
    assert not (run / journal.DEFER).exists()
    assert (tmp_path / journal.JOURNAL).is_file()
    with journal.Journal(tmp_path, "restart", run) as tx:
        tx.finish()
    assert not (run / journal.DEFER).exists() and not (tmp_path / journal.JOURNAL).exists()


def test_a_failure_can_be_injected_at_a_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ovs_service.errors import InjectedFault

    monkeypatch.setenv(journal.FAULT_ENV, "fail:reload-module")
    tx = journal.Journal(tmp_path, "force-reload-kmod", tmp_path / "run")
    with tx.step("delete-datapaths"):
        pass
    with pytest.raises(InjectedFault, match="reload-module"), tx.step("reload-module"):
        pass
    # As a real failure would: inside the step, which the journal names.
    assert tx.record.step == "reload-module" and tx.record.state == "running"
    with tx.step("reload-module"):  # once
        pass


def test_recover_proceeds_past_a_journal_whose_pid_is_another_process(
    cli: Cli, unrelated: subprocess.Popen[bytes]
) -> None:
    """Before, recover exited 6 ("another transaction holds the lock") for as
    long as the unrelated process lived."""
    me = journal.ProcessId.of(unrelated.pid)
    assert me is not None
    left = {"op": "restart", "pid": me.pid, "started": time.time() - 60, "step": "save",
            "state": "running"}
    for record in ({**left, "start": me.start - 1, "boot": me.boot},
                   {**left, "start": me.start, "boot": OTHER_BOOT},
                   left):  # an earlier version's, PID only
        (cli.state_dir / journal.JOURNAL).write_text(json.dumps(record))
        done = cli("recover", "--json", check=False)
        assert done.returncode == 0, done.describe()
        assert done.json()["interrupted"] == {"op": "restart", "step": "save",
                                              "state": "running"}
        assert not (cli.state_dir / journal.JOURNAL).exists()


def test_a_pidfile_naming_another_process_is_no_running_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unrelated: subprocess.Popen[bytes]
) -> None:
    """The same mistake in Open vSwitch's pidfiles: one left by a daemon that
    died may name a PID that is another process's by now (recover would then
    not start ovs-vswitchd)."""
    monkeypatch.setenv("OVS_RUNDIR", str(tmp_path))
    (tmp_path / "ovs-vswitchd.pid").write_text(f"{unrelated.pid}\n")
    assert not ovs.daemon_running("ovs-vswitchd")
    proc = tmp_path / "proc"
    (proc / str(unrelated.pid)).mkdir(parents=True)
    (proc / str(unrelated.pid) / "comm").write_text("ovs-vswitchd\n")
    assert ovs.daemon_running("ovs-vswitchd", proc)


def test_a_zombie_is_not_alive(tmp_path: Path) -> None:
    """A process that has exited but is not yet reaped (state Z) no longer
    holds anything: its transaction is over."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    me = journal.ProcessId.of(child.pid)
    assert me is not None and me.alive()
    assert child.stdin is not None
    child.stdin.close()  # it exits; nobody reaps it yet
    deadline = time.monotonic() + 10
    while (Path("/proc") / str(child.pid) / "stat").read_text().rsplit(") ", 1)[1][0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not me.alive()
    child.wait()
