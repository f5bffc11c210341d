"""The store's snapshots by name: where the store is, how snapshots are
named and ordered, which is meant by a name, which ones the pending and
failed markers name, and which ones prune deletes.

Snapshots in the store are named `<sequence>-<UTC time>`: the sequence, one
more than any in the store, orders them, so a clock that goes back cannot
make a new snapshot look old. The sequence has as many digits as it needs
and is compared as a number. Those named by the time alone (the format
before sequences) come first, by name. A directory with any other name is
not one of the store's snapshots: it is not listed, restored by default,
pruned or counted for the next sequence (`--from NAME` still reads it).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from ovs_service.errors import SnapshotNotFound
from ovs_service.store.manifest import MANIFEST
from ovs_service.store.safedir import _DIR_FLAGS, _fsync_dir, _inside, ensure_dir, write_atomic

DEFAULT_STATE_DIR = Path("/var/lib/ovs-service")
DEFAULT_KEEP = 5
PENDING = "pending"
FAILED = "failed"


def state_dir() -> Path:
    return Path(os.environ.get("OVS_SERVICE_STATE_DIR") or DEFAULT_STATE_DIR)


def keep_count() -> int:
    value = os.environ.get("OVS_SERVICE_KEEP", "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_KEEP


INCOMING = ".incoming-"  # a snapshot being built: `.incoming-<final name>.<random>`
_STAMP = r"[0-9]{8}T[0-9]{6}"
# `<sequence>-<UTC time>.<nanoseconds>`: a sequence of any length (it is
# compared as a number, so no name can make the next one fall out of the pattern).
_SEQUENCED = re.compile(rf"(?P<sequence>[0-9]+)-{_STAMP}\.[0-9]{{9}}")
_LEGACY = re.compile(rf"{_STAMP}\.[0-9]{{1,9}}")  # the format before sequences


def sequence_of(name: str) -> int | None:
    """The sequence number in a name the store made (or a work directory's);
    None for a name of the format before, or one the store did not make."""
    if name.startswith(INCOMING):
        name = name.removeprefix(INCOMING).rpartition(".")[0]
    match = _SEQUENCED.fullmatch(name)
    return int(match["sequence"]) if match else None


def _is_snapshot_name(name: str) -> bool:
    """Whether the store could have made this name: others are not its snapshots."""
    return bool(_SEQUENCED.fullmatch(name) or _LEGACY.fullmatch(name))


def _order(path: Path) -> tuple[int, int, str]:
    """Oldest first: the format without a sequence by name, then by sequence."""
    sequence = sequence_of(path.name)
    return (0, 0, path.name) if sequence is None else (1, sequence, path.name)


def new_snapshot_path(store: Path) -> Path:
    """`<sequence>-<UTC time>`: the sequence, one more than any in the store
    (snapshots being built included), orders snapshots whatever the clock does;
    the time is for people."""
    names = [p.name for p in store.iterdir()] if store.is_dir() else []
    sequence = max((n for n in map(sequence_of, names) if n is not None), default=0) + 1
    seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))
    return store / f"{sequence:08d}-{stamp}.{nanoseconds:09d}"


def snapshots(store: Path) -> list[Path]:
    """Snapshot directories in the store, oldest first: those with a name the
    store makes (not work directories, not what someone else parked there)."""
    if not store.is_dir():
        return []
    return sorted(
        (p for p in store.iterdir()
         if _is_snapshot_name(p.name) and p.is_dir() and (p / MANIFEST).is_file()),
        key=_order,
    )


def newest(store: Path) -> Path:
    found = snapshots(store)
    if not found:
        raise SnapshotNotFound(what=f"in {store}")
    return found[-1]


def resolve(store: Path, name: str | None) -> Path:
    """A snapshot given by path (with a `/`: `./NAME`) or by name in the store
    (a bare name is never looked up in the current directory); the newest if None."""
    if name is None:
        return newest(store)
    if "/" in name:
        return Path(name)
    if not _inside(name) or name.startswith(".") or not os.path.lexists(store / name):
        raise SnapshotNotFound(what=f"named {name!r} in {store}")
    return store / name


# An unlocked work directory this much older or newer than the clock is a
# dead save's; a younger one may be a save that has not locked it yet.
STALE_INCOMING = 60.0


def prune(store: Path, keep: int, protect: Iterable[Path] = ()) -> list[Path]:
    """Delete all but the newest `keep` snapshots (never the pending, the
    failed or a `protect`ed one), and the work directories of dead saves."""
    kept = {pending_snapshot(store), failed_snapshot(store), *protect}
    found = snapshots(store)
    doomed = [p for p in found[:-keep] if p not in kept] if keep > 0 else []
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    for work in store.glob(f"{INCOMING}*"):
        if _abandoned(work):
            shutil.rmtree(work, ignore_errors=True)
    return doomed


def _abandoned(work: Path) -> bool:
    """Whether no save is building `work`: its writer holds it locked. The
    clock only guards the moment before the lock, in either direction."""
    try:
        fd = os.open(work, _DIR_FLAGS)
    except OSError:
        return False
    try:
        if abs(time.time() - os.fstat(fd).st_mtime) < STALE_INCOMING:
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _mark(store: Path, marker: str, snapshot: Path) -> None:
    write_atomic(ensure_dir(store) / marker, f"{snapshot.name}\n".encode())


def _marked(store: Path, marker: str) -> Path | None:
    try:
        name = (store / marker).read_text().strip()
    except FileNotFoundError:
        return None
    # A name in the store, nothing else: not `..`, not a work directory.
    return store / name if _inside(name) and "/" not in name and not name.startswith(".") else None


def _unmark(store: Path, marker: str) -> None:
    path = store / marker
    if path.exists():
        path.unlink()
        _fsync_dir(store)


def mark_pending(store: Path, snapshot: Path) -> None:
    """`snapshot` is to be restored by the next start of ovs-vswitchd."""
    _mark(store, PENDING, snapshot)


def pending_snapshot(store: Path) -> Path | None:
    return _marked(store, PENDING)


def clear_pending(store: Path) -> None:
    _unmark(store, PENDING)


def mark_failed(store: Path, snapshot: Path) -> None:
    """The restore of `snapshot` failed: keep it, and say so in `status`."""
    _mark(store, FAILED, snapshot)


def failed_snapshot(store: Path) -> Path | None:
    return _marked(store, FAILED)


def clear_failed(store: Path) -> None:
    _unmark(store, FAILED)
