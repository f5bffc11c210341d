"""The snapshot store: one directory per snapshot, written so a crash never
leaves a half snapshot that looks whole, and checked before it is used.

The rest of the project uses the store through this package's names
(`store.load`, `store.SnapshotWriter`, `store.lock`, ...); each job lives in
its own module:

- `safedir`: reaching directories by descriptor, through nothing others
  could change, and writing files atomically;
- `manifest`: what a snapshot holds, the last file written, the first read;
- `writer`: building a snapshot and making it appear whole;
- `reader`: loading a snapshot and reading its files as they were verified;
- `naming`: the store's snapshots by name and order, the pending and failed
  markers, and prune;
- `locking`: the store's lock, one transaction at a time.
"""

from ovs_service.store.locking import LOCK, lock
from ovs_service.store.manifest import MANIFEST, SCHEMA, FileEntry, Manifest
from ovs_service.store.naming import (
    DEFAULT_KEEP,
    DEFAULT_STATE_DIR,
    FAILED,
    INCOMING,
    PENDING,
    STALE_INCOMING,
    clear_failed,
    clear_pending,
    failed_snapshot,
    keep_count,
    mark_failed,
    mark_pending,
    new_snapshot_path,
    newest,
    pending_snapshot,
    prune,
    resolve,
    sequence_of,
    snapshots,
    state_dir,
)
from ovs_service.store.reader import Snapshot, SnapshotFile, SnapshotFiles, load
from ovs_service.store.safedir import ensure_dir, write_atomic
from ovs_service.store.writer import SnapshotWriter

__all__ = [
    "DEFAULT_KEEP",
    "DEFAULT_STATE_DIR",
    "FAILED",
    "INCOMING",
    "LOCK",
    "MANIFEST",
    "PENDING",
    "SCHEMA",
    "STALE_INCOMING",
    "FileEntry",
    "Manifest",
    "Snapshot",
    "SnapshotFile",
    "SnapshotFiles",
    "SnapshotWriter",
    "clear_failed",
    "clear_pending",
    "ensure_dir",
    "failed_snapshot",
    "keep_count",
    "load",
    "lock",
    "mark_failed",
    "mark_pending",
    "new_snapshot_path",
    "newest",
    "pending_snapshot",
    "prune",
    "resolve",
    "sequence_of",
    "snapshots",
    "state_dir",
    "write_atomic",
]
