"""What the Python hooks do (see the package docstring; prestart and stoppost
are in the sh front, bin/ovs-service-hook)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from ovs_service import flows, journal, operations, ovs, store
from ovs_service.errors import Busy, OvsServiceError

log = logging.getLogger("ovs_service.hooks")

OFPP_LOCAL = (0xFFFE, 0xFFFFFFFE)


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
    if not ovs.daemon_running("ovs-vswitchd"):
        _status("ovs-vswitchd is not running: nothing to save")
        return 0
    if store.pending_snapshot(root) and ovs.flow_restore_wait():
        # The daemon never got its tables back: saving now would save less.
        _status("a restore is still pending; keeping its snapshot")
        return 0
    start = time.monotonic()
    snapshot = operations.take_snapshot()
    store.mark_pending(root, snapshot.path)
    _status(f"saved {len(snapshot.manifest.bridges)} bridges to {snapshot.path} "
            f"in {time.monotonic() - start:.3f}s")
    return 0


def poststart() -> int:
    return _under_lock(_poststart)


def _poststart(root: Path) -> int:
    try:
        return _restore_pending(root)
    finally:
        ovs.set_flow_restore_wait(False)


def _restore_pending(root: Path) -> int:
    pending = store.pending_snapshot(root)
    if pending is None:
        _status("no snapshot pending")
        return 0
    start = time.monotonic()
    try:
        outcome = restore_with_ofports(pending)
    except OvsServiceError as e:
        log.error("restore of %s refused: %s", pending, e)
        store.mark_failed(root, pending)
        store.clear_pending(root)
        return 0
    for bridge in outcome.bridges:
        if not bridge.ok:
            log.error("%s", bridge.error)
    if any(b.transient for b in outcome.bridges):
        _status(f"the switch went away during the restore; {pending.name} stays pending")
        return 0
    if outcome.ok:
        store.clear_failed(root)
    else:
        store.mark_failed(root, pending)
    store.clear_pending(root)
    restored = sum(b.ok for b in outcome.bridges)
    _status(f"restored {restored}/{len(outcome.bridges)} bridges from {pending.name} "
            f"in {time.monotonic() - start:.3f}s")
    return 0


def restore_with_ofports(path: Path) -> operations.RestoreOutcome:
    """Restore a snapshot, first pinning interfaces back to their saved port numbers."""
    snapshot, records = operations.prepare_restore(path, skip_missing=True)
    wanted = {p.name: p.port_no for r in records for p in r.ports if p.port_no not in OFPP_LOCAL}
    moved = ovs.pin_ofports(wanted)
    if moved:
        log.warning("pinned OpenFlow port numbers of %s", ", ".join(moved))
    return operations.RestoreOutcome(snapshot.path, flows.restore(snapshot, records))
