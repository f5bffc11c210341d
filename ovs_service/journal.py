"""The transaction journal: which step of which transaction is running.

Written atomically next to the snapshots before and after every step, so
that after a crash `ovs-service recover` (or the unit hooks, on their own)
can tell what was happening and finish it. The unit hooks also read it to
leave a live transaction's work to the transaction.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ovs_service import store

JOURNAL = "transaction.json"
# For ovs-service-hook, a sh script: "PID INVOCATION HOOK...", the unit hooks
# the transaction does itself at this point (see `left_to_transaction`).
DEFER = "transaction.defer"
# The steps in which a transaction starts ovs-vswitchd and restores itself.
STARTS = ("start-ovs-vswitchd", "start-units")
FAULT_ENV = "OVS_SERVICE_FAULT"  # tests only: "STEP" or "STEP:after" kills us there


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

    @property
    def alive(self) -> bool:
        if self.pid <= 0:  # unreadable journal; kill(0) would signal our own group
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


_FIELDS = frozenset(f.name for f in fields(Record))


def _path(root: Path) -> Path:
    return root / JOURNAL


def read(root: Path) -> Record | None:
    try:
        doc = json.loads(_path(root).read_text())
        # What another version of ovs-service wrote may hold more than we know.
        return Record(**{k: v for k, v in doc.items() if k in _FIELDS})
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, AttributeError):
        return Record(op="unknown", pid=0, started=0.0, state="unreadable")


def active(root: Path) -> Record | None:
    """The journal of a transaction whose process still runs, if any."""
    record = read(root)
    return record if record and record.pid and record.alive else None


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


def _write(root: Path, record: Record) -> None:
    store.write_atomic(_path(root), json.dumps(asdict(record)).encode())
    # Not synced: after a crash the PID in it is gone, and the hooks do their work.
    line = f"{record.pid} {record.invocation or '-'} {' '.join(left_to_transaction(record))}\n"
    tmp = root / f".{DEFER}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(line)
    tmp.replace(root / DEFER)


def _fault(step: str, when: str) -> None:
    target = os.environ.get(FAULT_ENV, "")
    if target and target == (step if when == "before" else f"{step}:after"):
        os.kill(os.getpid(), signal.SIGKILL)


class Journal:
    def __init__(self, root: Path, op: str) -> None:
        self.root = store.ensure_dir(root)
        self.record = Record(op=op, pid=os.getpid(), started=time.time())
        _write(self.root, self.record)

    def set_snapshot(self, snapshot: Path) -> None:
        self.record = replace(self.record, snapshot=snapshot.name)
        _write(self.root, self.record)

    def set_invocation(self, invocation: str) -> None:
        self.record = replace(self.record, invocation=invocation)
        _write(self.root, self.record)

    def set_datapaths_deleted(self) -> None:
        self.record = replace(self.record, datapaths_deleted=True)
        _write(self.root, self.record)

    def take_over(self, dead: Record) -> None:
        """Carry a dead transaction's unfinished kernel work into this journal."""
        self.record = replace(self.record, snapshot=dead.snapshot,
                              datapaths_deleted=dead.datapaths_deleted)
        _write(self.root, self.record)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        _fault(name, "before")
        self.record = replace(self.record, step=name, state="running")
        _write(self.root, self.record)
        yield
        self.record = replace(self.record, state="done", done=[*self.record.done, name])
        _write(self.root, self.record)
        _fault(name, "after")

    def finish(self) -> None:
        clear(self.root)


def clear(root: Path) -> None:
    (root / DEFER).unlink(missing_ok=True)
    _path(root).unlink(missing_ok=True)
