"""Prometheus metrics in node_exporter's textfile format (README, "Metrics").

After every transaction, save and restore, the CLI and the unit hooks write
`ovs_service.prom` into the textfile directory (`textfile.target`): the
last run of each operation (success, when, how long, each step), the
counts restored and saved per bridge, and the state of the store and the
switch (a pending or failed restore, flow-restore-wait, the newest
snapshot). Each write reads the file and replaces only what it knows now,
so the last restart stays when a save runs.

Metrics never fail an operation: a directory that is missing or not
writable, or any error while writing, is one line in the log.
"""

from __future__ import annotations

import atexit
import calendar
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ovs_service.metrics import families as fam
from ovs_service.metrics.exposition import Sample, parse, render, sample
from ovs_service.metrics.textfile import configure, target, unusable, update

if TYPE_CHECKING:
    from ovs_service.log import StepRecord
    from ovs_service.stages.flows_restore import BridgeRestore

__all__ = ["Recorder", "configure", "operation", "refresh", "refresh_in_background", "write"]

log = logging.getLogger(__name__)


@dataclass
class Recorder:
    """What one operation did, gathered while it runs and written when it ends."""

    operation: str
    started: float = field(default_factory=time.monotonic)
    steps: dict[str, float] = field(default_factory=dict)
    restored: list[BridgeRestore] | None = None  # None: this operation restored nothing
    failed: dict[str, str] = field(default_factory=dict)  # bridge ("" if none) -> reason
    ok: bool = True

    def on_step(self, then: Callable[[StepRecord], None] | None = None
                ) -> Callable[[StepRecord], None]:
        """A step callback that records each step's time, then calls `then`."""
        def record(step: StepRecord) -> None:
            self.steps[step.name] = self.steps.get(step.name, 0.0) + step.seconds
            if then is not None:
                then(step)
        return record

    def restore(self, results: Sequence[BridgeRestore]) -> None:
        self.restored = list(results)
        self.failed.update({r.bridge: bridge_reason(r) for r in results if not r.ok})

    def fail(self, error: BaseException) -> None:
        from ovs_service.errors import (
            RestoreFailed,
            RolledForward,
            SnapshotInvalid,
            SwitchRefusesSnapshot,
        )

        self.ok = False
        touched = isinstance(error, RestoreFailed | RolledForward) and not isinstance(
            error, SwitchRefusesSnapshot)  # refused before any bridge was touched
        if not touched and not self.restored:
            self.restored = None  # refused before the switch was touched: the counts hold
        if isinstance(error, RestoreFailed):
            self.failed.setdefault(str(error.fields.get("bridge", "")), "refused")
        elif isinstance(error, SnapshotInvalid):
            self.failed.setdefault("", "snapshot_invalid")


def bridge_reason(result: BridgeRestore) -> str:
    """Why a bridge was not restored, as one of `families.REASONS`."""
    if result.transient:
        return "switch_gone"
    if "does not exist" in result.reason:
        return "bridge_missing"
    if "did not serve" in result.reason:
        return "not_served"
    return "refused"


@contextmanager
def operation(name: str, restores: bool = False) -> Iterator[Recorder]:
    """Record the operation run inside, whichever way it ends. One that
    `restores` replaces the restored counts even if it fails before it
    reports any: none of the last restore's is then known to be there. One
    refused because another holds the lock (`Busy`) is not recorded."""
    from ovs_service.errors import Busy

    recorder = Recorder(name, restored=[] if restores else None)
    try:
        yield recorder
    except Busy:
        raise  # never ran: the holder of the lock records its own
    except BaseException as error:
        recorder.fail(error)
        write(recorder)
        raise
    write(recorder)


def refresh() -> None:
    """Write the state of the store and the switch, no operation."""
    write(None)


_background: list[threading.Thread] = []


def refresh_in_background(ask_switch: bool = True) -> None:
    """`refresh`, in a thread, for a process that must not wait for it (a
    write costs tens of milliseconds, most of it ovs-vsctl's). The next
    `write` of this process waits for it first. Without `ask_switch`,
    flow-restore-wait is shown as it was (the database may be restarting)."""
    thread = threading.Thread(target=write, args=(None, ask_switch), daemon=True,
                              name="metrics")
    if not _background:
        atexit.register(settle)  # a process that exits first finishes the write
    _background.append(thread)
    thread.start()


def settle() -> None:
    """Wait for the writes started in the background."""
    while _background:
        _background.pop().join()


def write(recorder: Recorder | None, ask_switch: bool = True) -> None:
    """Merge what `recorder` did (if anything) and the state now into the file.
    Never raises: metrics are not worth an operation."""
    if threading.current_thread() not in _background:
        settle()
    where = target()
    why = unusable(where)
    if why is not None:
        # The default directory missing: node_exporter is not installed, metrics are off.
        level = logging.WARNING if where.explicit or os.path.isdir(where.directory) \
            else logging.DEBUG
        log.log(level, "metrics not written: %s", why)
        return
    try:
        update(where, lambda old: _merge(old, recorder, time.time(), ask_switch))
    except Exception as e:
        log.warning("metrics not written to %s: %s", where.file, " ".join(str(e).split()))


def _merge(old_text: str, recorder: Recorder | None, now: float, ask_switch: bool = True
           ) -> str:
    old = parse(old_text, fam.NAMES)
    state = _state(old, recorder, now, ask_switch)  # all of it afresh (what is unknown, as it was)
    state_names = {f.name for f in fam.STATE}
    kept = [s for s in old if s.name not in state_names and not _replaced_by(s, recorder)]
    new = _operation_samples(recorder, now) if recorder is not None else []
    return render(fam.ALL, [*kept, *new, *state])


def _replaced_by(s: Sample, recorder: Recorder | None) -> bool:
    if recorder is None:
        return False
    if s.name in (f.name for f in fam.TRANSACTION):
        return s.label("operation") == recorder.operation
    return recorder.restored is not None and s.name in (f.name for f in fam.RESTORED.values())


def _operation_samples(recorder: Recorder, now: float) -> list[Sample]:
    op = recorder.operation
    out = [sample(fam.SUCCESS.name, recorder.ok, operation=op),
           sample(fam.TIMESTAMP.name, now, operation=op),
           sample(fam.DURATION.name, time.monotonic() - recorder.started, operation=op)]
    out += [sample(fam.STEP.name, seconds, operation=op, step=step)
            for step, seconds in recorder.steps.items()]
    for r in recorder.restored or []:
        if r.ok:
            out += [sample(f.name, r.counts.get(kind, 0), bridge=r.bridge)
                    for kind, f in fam.RESTORED.items()]
    return out


# -- the state now ---------------------------------------------------------------

def _state(old: list[Sample], recorder: Recorder | None, now: float, ask_switch: bool
           ) -> list[Sample]:
    from ovs_service import store

    root = store.state_dir()
    frw = (_flow_restore_wait(old, now) if ask_switch
           else [s for s in old if s.name in (fam.FRW.name, fam.FRW_SINCE.name)])
    return [*_pending(root), *_failed(root, old, recorder), *frw, *_snapshots(root)]


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _pending(root: Path) -> list[Sample]:
    from ovs_service import store

    if store.pending_snapshot(root) is None:
        return [sample(fam.PENDING.name, 0)]
    since = _mtime(root / store.PENDING)
    return [sample(fam.PENDING.name, 1)] + (
        [sample(fam.PENDING_SINCE.name, since)] if since is not None else [])


def _failed(root: Path, old: list[Sample], recorder: Recorder | None) -> list[Sample]:
    """One sample per failed bridge while the store keeps a failed snapshot:
    the bridges of the restore that failed, if it was recorded."""
    from ovs_service import store

    if store.failed_snapshot(root) is None:
        return [sample(fam.FAILED.name, 0, bridge="", reason="")]
    if recorder is not None and recorder.failed:
        return [sample(fam.FAILED.name, 1, bridge=b, reason=r)
                for b, r in sorted(recorder.failed.items())]
    before = [s for s in old if s.name == fam.FAILED.name and s.value == 1]
    return before or [sample(fam.FAILED.name, 1, bridge="", reason="unknown")]


def _flow_restore_wait(old: list[Sample], now: float) -> list[Sample]:
    """Set or not, and since when it is seen set; as before if the database
    cannot be asked."""
    from ovs_service import ovs
    from ovs_service.errors import OvsServiceError

    as_before = [s for s in old if s.name in (fam.FRW.name, fam.FRW_SINCE.name)]
    if not ovs.daemon_running("ovsdb-server"):
        return as_before  # ovs-vsctl would wait its whole time-out for it
    try:
        on = ovs.flow_restore_wait()
    except OvsServiceError:
        return as_before
    if not on:
        return [sample(fam.FRW.name, 0)]
    seen = {s.name: s.value for s in old}
    since = seen.get(fam.FRW_SINCE.name, now) if seen.get(fam.FRW.name) == 1 else now
    return [sample(fam.FRW.name, 1), sample(fam.FRW_SINCE.name, since)]


def _snapshots(root: Path) -> list[Sample]:
    """How many snapshots, when the newest was taken and what it holds."""
    from ovs_service import store
    from ovs_service.errors import OvsServiceError

    found = store.snapshots(root) if root.is_dir() else []
    out = [sample(fam.SNAPSHOTS.name, len(found))]
    if not found:
        return out
    try:
        manifest = store.load(found[-1], verify=False, allow_foreign=True).manifest
    except OvsServiceError as e:  # the rest is still worth writing
        # Debug only: the operation or `status` says it; an error gets one line.
        log.debug("metrics: newest snapshot unreadable: %s", e)
        return out
    try:
        taken = float(calendar.timegm(time.strptime(manifest.created, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        taken = _mtime(found[-1]) or 0.0
    out.append(sample(fam.NEWEST.name, taken))
    return out + _saved_counts(manifest.extra.get("flows"))


def _saved_counts(flows: object) -> list[Sample]:
    """The manifest's per-bridge counts; what is not a count is left out (a
    newer schema declared readable may shape it otherwise)."""
    out: list[Sample] = []
    for bridge, counts in (flows.items() if isinstance(flows, dict) else ()):
        if not isinstance(counts, dict):
            continue
        for kind, family in fam.SAVED.items():
            value = counts.get(kind, 0)
            if isinstance(value, int | float) and not isinstance(value, bool):
                out.append(sample(family.name, value, bridge=str(bridge)))
    return out
