"""The snapshot store: one directory per snapshot, written so a crash never
leaves a half snapshot that looks whole, and checked before it is used.

A snapshot is built in a hidden sibling directory; every file is fsynced,
the manifest (with the SHA-256 of every file) is written last, and only then
is the directory renamed into place and its parent fsynced. A directory
without a valid manifest is never a snapshot.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from ovs_service import __version__
from ovs_service.errors import Busy, SnapshotInvalid, SnapshotNotFound, UsageError

SCHEMA = 1
DEFAULT_STATE_DIR = Path("/var/lib/ovs-service")
DEFAULT_KEEP = 5
MANIFEST = "manifest.json"
PENDING = "pending"
FAILED = "failed"
_CHUNK = 1 << 20


def state_dir() -> Path:
    return Path(os.environ.get("OVS_SERVICE_STATE_DIR") or DEFAULT_STATE_DIR)


def keep_count() -> int:
    value = os.environ.get("OVS_SERVICE_KEEP", "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_KEEP


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    schema: int
    created: str
    host: str
    ovs_version: str
    tool_version: str
    stages: list[str]
    bridges: list[str]
    files: dict[str, FileEntry]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, path: Path) -> Manifest:
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise SnapshotInvalid(path=path, reason=f"manifest is not valid JSON ({e})") from None
        if not isinstance(doc, dict):
            raise SnapshotInvalid(path=path, reason="manifest is not a JSON object")
        if doc.get("schema") != SCHEMA:
            reason = f"unknown schema version {doc.get('schema')!r} (expected {SCHEMA})"
            raise SnapshotInvalid(path=path, reason=reason)
        try:
            files = {
                str(name): FileEntry(sha256=str(e["sha256"]), size=int(e["size"]))
                for name, e in doc["files"].items()
            }
            return cls(
                schema=SCHEMA,
                created=str(doc["created"]),
                host=str(doc["host"]),
                ovs_version=str(doc["ovs_version"]),
                tool_version=str(doc["tool_version"]),
                stages=[str(s) for s in doc["stages"]],
                bridges=[str(b) for b in doc["bridges"]],
                files=files,
                extra=dict(doc.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SnapshotInvalid(path=path, reason=f"manifest lacks or mangles {e}") from None


@dataclass(frozen=True)
class Snapshot:
    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, relpath: str) -> Path:
        return self.path / relpath


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: temporary file, fsync, rename, fsync of the directory."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def ensure_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class _HashingWriter:
    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._f.write(data)
        self._hash.update(data)
        self.size += len(data)

    def entry(self) -> FileEntry:
        return FileEntry(self._hash.hexdigest(), self.size)


class SnapshotWriter:
    """Builds one snapshot; `commit()` makes it appear, whole, at its final path."""

    def __init__(self, final: Path) -> None:
        if final.exists() and (not final.is_dir() or any(final.iterdir())):
            raise UsageError(message=f"{final}: exists and is not an empty directory")
        ensure_dir(final.parent)
        self.final = final
        self.tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".incoming-{final.name}."))
        os.chmod(self.tmp, 0o700)
        self.files: dict[str, FileEntry] = {}

    @contextmanager
    def open(self, relpath: str) -> Iterator[_HashingWriter]:
        path = self.tmp / relpath
        ensure_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb", buffering=_CHUNK) as f:
            writer = _HashingWriter(f)
            yield writer
            f.flush()
            os.fsync(f.fileno())
        self.files[relpath] = writer.entry()

    def write_json(self, relpath: str, obj: Any) -> None:
        with self.open(relpath) as f:
            f.write(json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n")

    def commit(self, *, ovs_version: str, stages: list[str], bridges: list[str],
               extra: dict[str, Any] | None = None) -> Snapshot:
        manifest = Manifest(
            schema=SCHEMA,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            host=socket.gethostname(),
            ovs_version=ovs_version,
            tool_version=__version__,
            stages=stages,
            bridges=bridges,
            files=dict(sorted(self.files.items())),
            extra=extra or {},
        )
        write_atomic(self.tmp / MANIFEST, manifest.to_json().encode())
        for sub in {p.parent for p in self.tmp.rglob("*")} | {self.tmp}:
            _fsync_dir(sub)
        if self.final.is_dir():
            self.final.rmdir()  # the empty directory the caller named
        os.rename(self.tmp, self.final)
        _fsync_dir(self.final.parent)
        return Snapshot(self.final, manifest)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def new_snapshot_path(store: Path) -> Path:
    """Named by the time, to the nanosecond: names sort as snapshots were taken."""
    seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))
    return store / f"{stamp}.{nanoseconds:09d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def load(path: Path, *, verify: bool = True, allow_foreign: bool = False) -> Snapshot:
    """Read a snapshot's manifest and (by default) check every file against it.

    Refuses, with one line, anything that is not a whole snapshot of this host.
    """
    if not path.is_dir():
        raise SnapshotInvalid(path=path, reason="not a directory")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise SnapshotInvalid(path=path, reason="not a snapshot (no manifest.json)")
    manifest = Manifest.from_json(manifest_path.read_text(errors="replace"), path)
    if not allow_foreign and manifest.host != socket.gethostname():
        raise SnapshotInvalid(
            path=path, reason=f"taken on host {manifest.host!r}, not this one "
            "(--allow-foreign to use it anyway)"
        )
    if verify:
        for relpath, entry in manifest.files.items():
            _verify_file(path, relpath, entry)
    return Snapshot(path, manifest)


def _verify_file(root: Path, relpath: str, entry: FileEntry) -> None:
    file = (root / relpath).resolve()
    if root.resolve() not in file.parents:
        raise SnapshotInvalid(path=root, reason=f"file {relpath!r} lies outside the snapshot")
    if not file.is_file():
        raise SnapshotInvalid(path=root, reason=f"file {relpath!r} is missing")
    size = file.stat().st_size
    if size != entry.size:
        raise SnapshotInvalid(
            path=root, reason=f"file {relpath!r} is {size} bytes, manifest says {entry.size}"
        )
    if _sha256(file) != entry.sha256:
        raise SnapshotInvalid(path=root, reason=f"file {relpath!r} fails its SHA-256 check")


def snapshots(store: Path) -> list[Path]:
    """Snapshot directories in the store, oldest first (hidden work dirs excluded)."""
    if not store.is_dir():
        return []
    return sorted(
        p for p in store.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
    )


def newest(store: Path) -> Path:
    found = snapshots(store)
    if not found:
        raise SnapshotNotFound(what=f"in {store}")
    return found[-1]


def resolve(store: Path, name: str | None) -> Path:
    """A snapshot given by path or by name in the store; the newest if None."""
    if name is None:
        return newest(store)
    candidate = Path(name)
    if candidate.exists() or "/" in name:
        return candidate
    return store / name


def prune(store: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` snapshots (never the pending one)."""
    kept = {pending_snapshot(store), failed_snapshot(store)}
    found = snapshots(store)
    doomed = [p for p in found[:-keep] if p not in kept] if keep > 0 else []
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    for stale in store.glob(".incoming-*"):
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    return doomed


def _mark(store: Path, marker: str, snapshot: Path) -> None:
    write_atomic(ensure_dir(store) / marker, f"{snapshot.name}\n".encode())


def _marked(store: Path, marker: str) -> Path | None:
    try:
        name = (store / marker).read_text().strip()
    except FileNotFoundError:
        return None
    return store / name if name and "/" not in name else None


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


LOCK = "lock"


@contextmanager
def lock(store: Path, wait: float = 0.0, on_wait: Any = None) -> Iterator[None]:
    """Hold the store's lock: one transaction at a time, across CLI and hooks.

    Waits up to `wait` seconds (calling `on_wait()` once when it has to wait),
    then raises Busy naming the holder.
    """
    ensure_dir(store)
    fd = os.open(store / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                raise Busy(holder=f"{store / LOCK}, {holder}")
            if on_wait and not told:
                on_wait()
                told = True
            time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
