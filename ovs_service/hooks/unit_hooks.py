"""What the Python hooks do (see the package docstring; prestart and stoppost
are in the sh front, bin/ovs-service-hook)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ovs_service import journal, metrics, operations, ovs, store
from ovs_service.errors import Busy, OvsServiceError, SaveIncomplete

log = logging.getLogger("ovs_service.hooks")


def _status(text: str) -> None:
    log.info("%s", text)
    try:
        import sdnotify

        sdnotify.SystemdNotifier().notify(f"STATUS={text}")
    except Exception:  # progress reports never stop a hook
        pass


LOCK_WAIT = 120.0


def _under_lock(action: Callable[[Path], int]) -> int:
    """Run `action` holding the store's lock; without it while a transaction runs.

    A running transaction holds the lock while systemd runs these hooks, for
    it or for an operator's concurrent `systemctl restart`: waiting for the
    lock then would deadlock. The package's `main` has already returned for
    the hooks that the transaction does itself; what is left here (a save
    before the transaction has saved, a restore it did not start) is safe
    to do alongside it: snapshots are written apart and restores are
    idempotent.
    """
    root = store.state_dir()
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        if journal.active(root):
            return action(root)
        try:
            with store.lock(root):
                return action(root)
        except Busy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def save() -> int:
    return _under_lock(_save)


def _save(root: Path) -> int:
    _save_new(root)
    return 0


def _save_new(root: Path) -> Path | None:
    """Save and mark pending; the new snapshot, or None if none was taken."""
    if not ovs.daemon_running("ovs-vswitchd"):
        _status("ovs-vswitchd is not running: nothing to save")
        return None
    kept = _saved_as_the_database_stopped(root)
    if kept is not None:
        # Without its database it cannot be asked for its bridges: the
        # snapshot taken while the database still answered is the one.
        _status(f"ovsdb-server stopped first; keeping {kept.name}, saved as it stopped")
        return None
    if store.pending_snapshot(root) and ovs.flow_restore_wait():
        # The daemon never got its tables back: saving now would save less.
        _status("a restore is still pending; keeping its snapshot")
        return None
    start = time.monotonic()
    with metrics.operation("save") as recorded:
        try:
            snapshot = operations.take_snapshot(store_dir=root, pending=True)
        except SaveIncomplete as e:
            # The other bridges' snapshot is whole and pending: restore them after the restart.
            log.error("%s", e)
            snapshot = e.snapshot
            recorded.ok = False
    _status(f"saved {len(snapshot.manifest.bridges)} bridges to {snapshot.path} "
            f"in {time.monotonic() - start:.3f}s")
    return snapshot.path


def prestart() -> int:
    """What the sh front's prestart cannot do alone: after an interrupted
    force-reload-kmod (its journal names a dead process that had begun
    deleting the kernel datapaths), load the module and re-create the kernel
    datapaths at their saved port numbers before ovs-vswitchd starts, so that
    it adopts them instead of numbering the ports afresh. `ovs-service
    recover` puts the internal interfaces back afterwards."""
    return _under_lock(_recreate_datapaths)


def _recreate_datapaths(root: Path) -> int:
    record = journal.read(root)
    if record is None or record.alive or not record.datapaths_deleted or not record.snapshot:
        return 0
    done = operations.recreate_kernel_datapaths(store.load(root / record.snapshot))
    if done is not None:
        _status("after an interrupted force-reload-kmod: "
                + "; ".join(done or ["no kernel datapath was missing"])
                + "; ovs-service recover puts the interfaces back")
    return 0


def poststart() -> int:
    return _under_lock(_poststart)


# How long the background restore waits for ovs-vswitchd (the unit's TimeoutStartSec).
RESTORER_WAIT = 300.0


def restorer() -> int:
    """The restore that `prestart` starts in the background, as its own
    transient unit: load, verify and encode the pending snapshot while
    ovs-vswitchd starts, restore as soon as it serves its bridges, clear
    flow-restore-wait. `poststart` waits for it (and restores itself if it
    could not)."""
    # flow-restore-wait is set and the snapshot pending: shown from now on,
    # in the background (the restore does not wait for it).
    metrics.refresh_in_background()
    try:
        return _under_lock(lambda root: _poststart(root, wait=RESTORER_WAIT))
    finally:
        metrics.settle()


def _poststart(root: Path, wait: float = 0.0) -> int:
    recorded = metrics.Recorder("restore")
    try:
        return _restore_pending(root, wait, recorded)
    except BaseException as error:
        recorded.fail(error)
        raise
    finally:
        ovs.set_flow_restore_wait(False)
        if recorded.restored is not None or not recorded.ok:
            metrics.write(recorded)  # a restore ran (not: nothing was pending)


def _full_priority() -> None:
    """The background restorer prepares at Nice=10, beside ovs-vswitchd's own
    start. Once the daemon serves its bridges the restore is what the switch
    waits for: every thread of this process (a nice value is a thread's own
    on Linux) back to the default priority, and the restore's threads,
    started after this, with them. A negative nice value stays."""
    for task in Path("/proc/self/task").iterdir():
        tid = int(task.name)
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) > 0:
                os.setpriority(os.PRIO_PROCESS, tid, 0)
        except ProcessLookupError:
            continue  # a thread that ended meanwhile
        except OSError as e:
            log.warning("the restore stays at a lower priority: %s", e)
            return


def _restore_pending(root: Path, wait: float = 0.0, recorded: metrics.Recorder | None = None
                     ) -> int:
    recorded = recorded or metrics.Recorder("restore")
    pending = store.pending_snapshot(root)
    if pending is None:
        _status("no snapshot pending")
        return 0
    start = time.monotonic()
    recorded.restored = []  # a restore runs: the last one's counts no longer hold
    try:
        snapshot, records = operations.prepare_pinned(pending)
        bundles = operations.prepare_bundles(snapshot, records)
        results = operations.restore_pinned(snapshot, records, bundles, wait,
                                            served=_full_priority)
    except OvsServiceError as e:
        log.error("restore of %s refused: %s", pending, e)
        store.mark_failed(root, pending)
        store.clear_pending(root)
        recorded.fail(e)
        recorded.failed.setdefault("", "error")
        return 0
    recorded.restore(results)
    recorded.ok = all(b.ok for b in results)
    for bridge in results:
        if not bridge.ok:
            log.error("%s", bridge.error)
    if any(b.transient for b in results):
        _status(f"the switch went away during the restore; {pending.name} stays pending")
        return 0
    if all(b.ok for b in results):
        store.clear_failed(root)
    else:
        store.mark_failed(root, pending)
    store.clear_pending(root)
    restored = sum(b.ok for b in results)
    _status(f"restored {restored}/{len(results)} bridges from {pending.name} "
            f"in {time.monotonic() - start:.3f}s")
    return 0


# ovs-service's own ovs-vswitchd.service only wants ovsdb-server.service, so a
# stop of the database alone leaves ovs-vswitchd forwarding without it.
# Debian's maintainer scripts do just that on an upgrade (ovsdb-server first,
# then ovs-vswitchd), and by the time ovs-vswitchd's save hook runs nothing
# can list its bridges. So the database's own stop saves for it.
OVSDB_STOPPED = "ovsdb-stopped.json"


@dataclass(frozen=True)
class OvsdbStopped:
    """The snapshot saved as ovsdb-server stopped, and the ovs-vswitchd it was saved from."""

    snapshot: str
    vswitchd: journal.ProcessId

    @classmethod
    def read(cls, path: Path) -> OvsdbStopped | None:
        try:
            doc = json.loads(path.read_text())
            return cls(str(doc["snapshot"]), journal.ProcessId(**doc["vswitchd"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _stopped_path() -> Path:
    return journal.run_dir() / OVSDB_STOPPED


def _saved_as_the_database_stopped(root: Path) -> Path | None:
    """The pending snapshot, if it was saved as ovsdb-server stopped under this
    same ovs-vswitchd, and the database is still down."""
    if ovs.daemon_running("ovsdb-server"):
        return None
    mark = OvsdbStopped.read(_stopped_path())
    pending = store.pending_snapshot(root)
    if mark is None or pending is None or pending.name != mark.snapshot:
        return None
    return pending if mark.vswitchd.alive() else None


def ovsdb_stop() -> int:
    """ExecStop= of ovs-service's own ovsdb-server.service, before it exits:
    with ovs-vswitchd running, save its state and mark it pending (as its own
    stop would), and remember which ovs-vswitchd it was."""
    return _under_lock(_ovsdb_stop)


def _ovsdb_stop(root: Path) -> int:
    pid = ovs.daemon_pid("ovs-vswitchd")
    vswitchd = journal.ProcessId.of(pid) if pid is not None else None
    if vswitchd is None:
        _status("ovs-vswitchd is not running: nothing to save")
        return 0
    saved = _save_new(root)
    if saved is not None:  # only what this stop saved (not a restore pending before)
        path = _stopped_path()
        store.ensure_dir(path.parent)
        store.write_atomic(path, json.dumps(
            asdict(OvsdbStopped(saved.name, vswitchd))).encode())
    return 0


def ovsdb_poststart() -> int:
    """ExecStartPost= of ovs-service's own ovsdb-server.service: if the
    ovs-vswitchd that ovsdb_stop saved from still runs, the database alone was
    restarted and the switch kept its tables: its snapshot is not pending any
    more. Otherwise it stays pending for ovs-vswitchd's start."""
    return _under_lock(_ovsdb_poststart)


def _ovsdb_poststart(root: Path) -> int:
    path = _stopped_path()
    mark = OvsdbStopped.read(path)
    path.unlink(missing_ok=True)
    pending = store.pending_snapshot(root)
    if mark is None or pending is None or pending.name != mark.snapshot:
        return 0
    if mark.vswitchd.alive():
        store.clear_pending(root)
        _status(f"ovs-vswitchd ran on while the database restarted: {pending.name} "
                "is not pending any more")
    else:
        _status(f"ovs-vswitchd stopped since the database did: {pending.name} stays pending")
    return 0
