"""The transaction journal: which step of which transaction is running.

Written atomically next to the snapshots before and after every step, so
that after a crash `ovs-service recover` (or the unit hooks, on their own)
can tell what was happening and finish it. The unit hooks also read it to
leave a live transaction's work to the transaction.

A journal outlives its process: a failed transaction leaves it for recover,
and it survives reboots. So it names its process by PID, start time and
boot id (`ProcessId`), never by PID alone: PIDs are reused, and start over
after a reboot. What the sh front reads (`DEFER`) lives in the runtime
directory, which a reboot empties, and goes on every way out of a
transaction.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ovs_service import store
from ovs_service.errors import InjectedFault

log = logging.getLogger(__name__)

JOURNAL = "transaction.json"
# For ovs-service-hook, a sh script: "PID START BOOT INVOCATION HOOK...", the
# unit hooks the transaction does itself at this point (see
# `left_to_transaction`), in the runtime directory (`run_dir`).
DEFER = "transaction.defer"
# Held (flock, exclusive) by a transaction from the moment the ovs-vswitchd
# it started is configured until the switch forwards again; see `Journal.outage`.
OUTAGE = "transaction.outage"
DEFAULT_RUN_DIR = Path("/run/ovs-service")
PROC = Path("/proc")
# The steps in which a transaction starts ovs-vswitchd and restores itself.
STARTS = ("start-ovs-vswitchd", "start-units")
# Tests only: "STEP" or "STEP:after" kills us there; "fail:STEP" makes STEP fail;
# "fail:restore:BRIDGE" makes that bridge's restore fail (`bridge_fault`).
FAULT_ENV = "OVS_SERVICE_FAULT"
FAIL_PREFIX = "fail:"
# /proc/PID/stat: the fields after "(comm)" start at field 3; starttime is field 22.
_STAT_FIRST_AFTER_COMM = 3
_STAT_STARTTIME = 22
# How an earlier version's transaction shows in /proc/PID/cmdline.
OWN_COMMAND = "ovs-service"
OWN_PACKAGE = "ovs_service"


def run_dir() -> Path:
    return Path(os.environ.get("OVS_SERVICE_RUN_DIR") or DEFAULT_RUN_DIR)


@dataclass(frozen=True)
class ProcessId:
    """A process as it can be recognised later: its PID may be another's by then."""

    pid: int
    start: int  # clock ticks from boot to its start (/proc/PID/stat field 22)
    boot: str  # /proc/sys/kernel/random/boot_id

    @classmethod
    def of(cls, pid: int, proc: Path = PROC) -> ProcessId | None:
        """The process that has `pid` now, or None if there is none (or it cannot be read)."""
        start = start_time(pid, proc)
        return None if start is None else cls(pid=pid, start=start, boot=boot_id(proc))

    def alive(self, proc: Path = PROC) -> bool:
        return self.pid > 0 and ProcessId.of(self.pid, proc) == self


def boot_id(proc: Path = PROC) -> str:
    return (proc / "sys/kernel/random/boot_id").read_text().strip()


def start_time(pid: int, proc: Path = PROC) -> int | None:
    """Field 22 of /proc/PID/stat, of a process that has not exited (a zombie,
    state Z or X, has: None). The command name (field 2) is in parentheses
    and may itself hold spaces and parentheses: the fields after it start
    after the last ')'."""
    if pid <= 0:  # kill(0) and /proc/0 would name something else
        return None
    try:
        stat = (proc / str(pid) / "stat").read_text()
        after_comm = stat[stat.rindex(")") + 1:].split()
        if after_comm[0] in ("Z", "X"):
            return None
        return int(after_comm[_STAT_STARTTIME - _STAT_FIRST_AFTER_COMM])
    except (OSError, ValueError, IndexError):
        return None


def _runs_ovs_service(pid: int, op: str, proc: Path = PROC) -> bool:
    """Whether the process with `pid` runs `ovs-service ... OP ...` (the console
    script, or `python3 -m ovs_service`), by its /proc/PID/cmdline."""
    if pid <= 0:
        return False
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    for i, arg in enumerate(args):
        if Path(arg).name == OWN_COMMAND or (arg == OWN_PACKAGE and args[i - 1:i] == ["-m"]):
            return op in args[i + 1:]
    return False


@dataclass(frozen=True)
class Record:
    op: str
    pid: int
    started: float
    snapshot: str | None = None
    # force-reload-kmod began deleting the kernel datapaths: until it (or
    # recover) finishes, they and the internal interfaces may be gone.
    datapaths_deleted: bool = False
    step: str | None = None
    state: str = "begun"  # running | done, of `step`
    done: list[str] = field(default_factory=list)
    # The ovs-vswitchd.service start this transaction restores itself ($INVOCATION_ID)
    invocation: str | None = None
    # The writer's start time and boot id (see ProcessId); absent from the
    # journals of earlier versions.
    start: int | None = None
    boot: str | None = None

    @property
    def alive(self) -> bool:
        return self.is_alive()

    def is_alive(self, proc: Path = PROC) -> bool:
        """Whether the process that wrote this journal still runs.

        A journal of an earlier version names its process by PID alone. That
        PID counts as its writer only while the process holding it runs
        ovs-service with the journal's operation (`ovs-service restart`): a
        PID reused after the writer died, in this boot or after a reboot,
        almost always belongs to something else. Not the journal's wall-clock
        `started`: the clock may have been stepped since, or be another boot's.
        """
        if self.pid <= 0:  # an unreadable journal
            return False
        if self.start is not None and self.boot is not None:
            return ProcessId(self.pid, self.start, self.boot).alive(proc)
        return _runs_ovs_service(self.pid, self.op, proc)


_FIELDS = frozenset(f.name for f in fields(Record))


def _path(root: Path) -> Path:
    return root / JOURNAL


# What each field of a journal may hold. bool is an int to isinstance: a pid
# or a start time that is true or false is as wrong as one that is a string.
_NONE = type(None)
_TYPES: dict[str, tuple[type, ...]] = {
    "op": (str,), "pid": (int,), "started": (int, float), "snapshot": (str, _NONE),
    "datapaths_deleted": (bool,), "step": (str, _NONE), "state": (str,), "done": (list,),
    "invocation": (str, _NONE), "start": (int, _NONE), "boot": (str, _NONE),
}
assert set(_TYPES) == _FIELDS, "every field of Record has its types"


def _well_typed(name: str, value: object) -> bool:
    kinds = _TYPES[name]
    if isinstance(value, bool) and bool not in kinds:
        return False
    if not isinstance(value, kinds):
        return False
    if isinstance(value, list):  # done: the steps' names
        return all(isinstance(step, str) for step in value)
    if name == "snapshot" and isinstance(value, str):
        # A name in the store, never a path out of it.
        return "/" not in value and "\0" not in value and value not in ("", ".", "..")
    return True


def _unreadable() -> Record:
    return Record(op="unknown", pid=0, started=0.0, state="unreadable")


def read(root: Path) -> Record | None:
    """The journal, or None if there is none. One that cannot be parsed, lacks
    a field or has a field of the wrong type is `unreadable`: it names no
    live process, and recover clears it."""
    try:
        doc = json.loads(_path(root).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return _unreadable()
    if not isinstance(doc, dict):
        return _unreadable()
    # What another version of ovs-service wrote may hold more than we know.
    known = {k: v for k, v in doc.items() if k in _FIELDS}
    if not all(_well_typed(k, v) for k, v in known.items()):
        return _unreadable()
    try:
        return Record(**known)
    except TypeError:  # a field missing
        return _unreadable()


def active(root: Path) -> Record | None:
    """The journal of a transaction whose process still runs, if any."""
    record = read(root)
    return record if record and record.alive else None


def left_to_transaction(record: Record) -> list[str]:
    """The unit hooks whose work this transaction does itself, at its step.

    It saved before stopping the daemon, it clears flow-restore-wait on its
    own, and it restores after the starts it makes: in its start steps, and,
    past them, in the ExecStartPost= of that start (its $INVOCATION_ID,
    `invocation`). An operator's concurrent `systemctl restart` runs the
    hooks at other steps: then they do their work.
    """
    hooks = ["stoppost"]
    if record.snapshot:
        hooks.append("save")
    if record.step in STARTS:
        hooks += ["prestart", "poststart"]
    return hooks


def _write(root: Path, run: Path, record: Record) -> None:
    store.write_atomic(_path(root), json.dumps(asdict(record)).encode())
    # Not synced, and in the runtime directory: after a crash or a reboot the
    # process it names is gone, and the hooks do their work.
    line = (f"{record.pid} {record.start} {record.boot} {record.invocation or '-'} "
            f"{' '.join(left_to_transaction(record))}\n")
    tmp = run / f".{DEFER}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(line)
    tmp.replace(run / DEFER)


def _fault(step: str, when: str) -> None:
    target = os.environ.get(FAULT_ENV, "")
    if not target:
        return
    if when == "running":
        if target == f"{FAIL_PREFIX}{step}":
            del os.environ[FAULT_ENV]  # once: putting the switch back may run the step again
            raise InjectedFault(step=step)
        return
    if target == (step if when == "before" else f"{step}:after"):
        os.kill(os.getpid(), signal.SIGKILL)


def bridge_fault(step: str, bridge: str) -> None:
    """Tests only: "fail:STEP:BRIDGE" makes STEP fail for that bridge alone (once),
    as a switch refusing it would; the other bridges go on."""
    if os.environ.get(FAULT_ENV, "") == f"{FAIL_PREFIX}{step}:{bridge}":
        os.environ.pop(FAULT_ENV, None)
        raise InjectedFault(step=f"{step}:{bridge}")


class Journal:
    """This process's transaction, on disk. Used as a context manager: on
    every way out the hooks stop leaving work to it (`DEFER` goes); the
    journal itself stays until `finish`, for recover."""

    def __init__(self, root: Path, op: str, run: Path | None = None) -> None:
        self.root = store.ensure_dir(root)
        self.run = store.ensure_dir(run or run_dir())
        me = ProcessId.of(os.getpid())
        assert me is not None, "our own /proc/PID/stat"
        self.record = Record(op=op, pid=me.pid, started=time.time(), start=me.start,
                             boot=me.boot)
        # After a failure the steps still taken are best done without a journal
        # than not at all (the disk may be full): see `keep_going`.
        self.best_effort = False
        self.failed: str | None = None  # the step that failed first
        (self.root / DEFER).unlink(missing_ok=True)  # where earlier versions kept it
        self._write()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        (self.run / DEFER).unlink(missing_ok=True)

    def keep_going(self) -> None:
        """From now on a journal that cannot be written is logged, not raised."""
        self.best_effort = True

    def _write(self) -> None:
        try:
            _write(self.root, self.run, self.record)
        except OSError as e:
            if not self.best_effort:
                raise
            log.warning("cannot write the transaction journal: %s", e)

    def set_snapshot(self, snapshot: Path) -> None:
        self.record = replace(self.record, snapshot=snapshot.name)
        self._write()

    def set_invocation(self, invocation: str) -> None:
        self.record = replace(self.record, invocation=invocation)
        self._write()

    def set_datapaths_deleted(self) -> None:
        self.record = replace(self.record, datapaths_deleted=True)
        self._write()

    def take_over(self, dead: Record) -> None:
        """Carry a dead transaction's unfinished kernel work into this journal."""
        self.record = replace(self.record, snapshot=dead.snapshot,
                              datapaths_deleted=dead.datapaths_deleted)
        self._write()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        _fault(name, "before")
        self.record = replace(self.record, step=name, state="running")
        self._write()
        try:
            _fault(name, "running")  # fails as the step itself would
            yield
        except BaseException:
            # The first to fail: steps in `finally:` clauses run after it.
            self.failed = self.failed or name
            raise
        self.record = replace(self.record, state="done", done=[*self.record.done, name])
        self._write()
        _fault(name, "after")

    @contextmanager
    def outage(self) -> Iterator[None]:
        """While the switch is not forwarding, an exclusive flock on
        `OUTAGE` in the runtime directory. The unit's poststart, when it
        leaves a start's restore to this transaction, waits for the lock
        (shared, bounded): the unit's ExecStartPost= commands after it
        (enabling remote managers) then run once forwarding is back, instead
        of taking CPU from the restore. The kernel drops the lock with us.
        Not getting it only gives up that wait."""
        try:
            fd = os.open(self.run / OUTAGE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            log.debug("no %s (%s)", OUTAGE, e)
            fd = -1
        try:
            if fd >= 0 and not _lock_exclusive(fd):
                log.debug("%s is held by another process", OUTAGE)
            yield
        finally:
            if fd >= 0:
                os.close(fd)

    def finish(self) -> None:
        clear(self.root, self.run)


def _lock_exclusive(fd: int, tries: int = 50) -> bool:
    """flock(LOCK_EX) on `fd`, waiting up to about `tries` ms: a hook holds
    the lock shared only for a moment (`flock -s ... true`)."""
    for _ in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(0.001)
        except OSError:
            return False
    return False


def clear(root: Path, run: Path | None = None) -> None:
    (root / DEFER).unlink(missing_ok=True)  # an earlier version's
    ((run or run_dir()) / DEFER).unlink(missing_ok=True)
    _path(root).unlink(missing_ok=True)
