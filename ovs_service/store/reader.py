"""Reading a snapshot as it was verified.

Its directory is reached from `/` through directories only root or this
user can change, every file is opened once, by descriptor, under that
directory (no symbolic links, nothing outside it, nothing the manifest does
not list), checked against the manifest, and read through that same
descriptor afterwards.
"""

from __future__ import annotations

import hashlib
import io
import os
import resource
import socket
import stat
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ovs_service.errors import SnapshotInvalid
from ovs_service.store.manifest import MANIFEST, FileEntry, Manifest
from ovs_service.store.safedir import (
    _CHUNK,
    _DIR_FLAGS,
    _FILE_FLAGS,
    _check_owned,
    _inside,
    _open_snapshot_dir,
    _problem,
    _walk,
)


@dataclass(frozen=True)
class Snapshot:
    path: Path
    manifest: Manifest
    files: SnapshotFiles = field(compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, relpath: str) -> SnapshotFile:
        """A file the manifest lists, opened and verified (once) by descriptor."""
        return self.files.get(relpath)


class _PreadReader(io.RawIOBase):
    """Reads a shared descriptor at its own offset (pread): readers do not interfere."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = os.pread(self._fd, len(view), self._offset)
        view[: len(data)] = data
        self._offset += len(data)
        return len(data)


class SnapshotFile:
    """One file of a snapshot, read through the descriptor it was verified through."""

    def __init__(self, snapshot: Path, relpath: str, fd: int, entry: FileEntry,
                 newer: bool = False) -> None:
        self.snapshot = snapshot
        self.relpath = relpath
        self.name = relpath.rsplit("/", 1)[-1]
        self.newer = newer  # of a newer schema declared readable (see store.manifest)
        self._fd = fd
        self._entry = entry
        self._verified = self._identity()

    def _identity(self) -> tuple[int, ...]:
        st = os.fstat(self._fd)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _changed(self) -> SnapshotInvalid:
        return SnapshotInvalid(path=self.snapshot,
                               reason=f"file {self.relpath!r} changed after it was verified")

    def stat(self) -> os.stat_result:
        return os.fstat(self._fd)

    def read_bytes(self) -> bytes:
        """The whole file, checked against the manifest: the bytes parsed are those hashed."""
        data = os.pread(self._fd, self._entry.size + 1, 0)
        if len(data) != self._entry.size or hashlib.sha256(data).hexdigest() != self._entry.sha256:
            raise self._changed()
        return data

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def open(self, mode: str = "rb", buffering: int = -1) -> BinaryIO:
        """A stream of the file as verified, for files too big to hold."""
        if mode != "rb":
            raise ValueError(f"snapshot files are read as bytes only, not {mode!r}")
        if self._identity() != self._verified:
            raise self._changed()
        size = buffering if buffering > 0 else io.DEFAULT_BUFFER_SIZE
        return io.BufferedReader(_PreadReader(self._fd), size)


class SnapshotFiles:
    """The files of one snapshot, each opened once (under the snapshot's
    directory descriptor) and verified; closed with the snapshot."""

    def __init__(self, path: Path, manifest: Manifest, dir_fd: int | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self._fds: list[int] = []
        self._dir_fd = dir_fd
        if dir_fd is not None:
            self._fds.append(dir_fd)
        self._opened: dict[str, SnapshotFile] = {}
        weakref.finalize(self, _close_all, self._fds)

    def _root(self) -> int:
        if self._dir_fd is None:
            self._dir_fd = _open_snapshot_dir(self.path)
            self._fds.append(self._dir_fd)
        return self._dir_fd

    def get(self, relpath: str) -> SnapshotFile:
        if relpath in self._opened:
            return self._opened[relpath]
        entry = self.manifest.files.get(relpath)
        if entry is None:
            raise SnapshotInvalid(path=self.path, reason=f"has no {relpath!r} in its manifest")
        fd = self._open(relpath)
        self._fds.append(fd)
        _verify(self.path, relpath, fd, entry)
        self._opened[relpath] = file = SnapshotFile(self.path, relpath, fd, entry,
                                                     self.manifest.newer)
        return file

    def _open(self, relpath: str) -> int:
        """The file's descriptor, reached through the snapshot's own directories."""
        if not _inside(relpath):
            raise SnapshotInvalid(path=self.path, reason=f"file {relpath!r} lies outside it")
        *dirs, name = relpath.split("/")
        fd = os.dup(self._root())
        try:
            for depth, part in enumerate(dirs, 1):
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
                _check_owned(self.path, "/".join(dirs[:depth]), os.fstat(fd), sticky_ok=False)
            return os.open(name, _FILE_FLAGS, dir_fd=fd)
        except OSError as e:
            reason = f"file {relpath!r} {_problem(e)}"
            raise SnapshotInvalid(path=self.path, reason=reason) from None
        finally:
            os.close(fd)

    def verify_all(self) -> None:
        """Every file the manifest lists, and nothing it does not: only
        directories and regular files, all of them listed."""
        found = set(_walk(self.path, self._root(), ""))
        unlisted = sorted(found - {*self.manifest.files, MANIFEST})
        if unlisted:
            reason = f"file {unlisted[0]!r} is not in the manifest"
            raise SnapshotInvalid(path=self.path, reason=reason)
        _allow_descriptors(len(self.manifest.files))
        for relpath in self.manifest.files:
            self.get(relpath)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
    fds.clear()


def _allow_descriptors(count: int) -> None:
    """Room for `count` more open files: a snapshot keeps four per bridge open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = len(os.listdir("/proc/self/fd")) + count + 64
    if soft != resource.RLIM_INFINITY and wanted > soft:
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def _verify(root: Path, relpath: str, fd: int, entry: FileEntry) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise SnapshotInvalid(path=root, reason=f"file {relpath!r} is not a regular file")
    _check_owned(root, f"file {relpath!r}", st, sticky_ok=False)
    if st.st_size != entry.size:
        raise SnapshotInvalid(
            path=root, reason=f"file {relpath!r} is {st.st_size} bytes, manifest says {entry.size}"
        )
    h = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        h.update(chunk)
        offset += len(chunk)
    if offset != entry.size or h.hexdigest() != entry.sha256:
        raise SnapshotInvalid(path=root, reason=f"file {relpath!r} fails its SHA-256 check")


def _read_manifest(path: Path, dir_fd: int) -> Manifest:
    try:
        fd = os.open(MANIFEST, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        raise SnapshotInvalid(path=path, reason="not a snapshot (no manifest.json)") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SnapshotInvalid(path=path, reason="not a snapshot (no manifest.json)")
        _check_owned(path, MANIFEST, st, sticky_ok=False)
        chunks = []
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return Manifest.parse(b"".join(chunks).decode(errors="replace"), path)


def load(path: Path, *, verify: bool = True, allow_foreign: bool = False) -> Snapshot:
    """Read a snapshot's manifest and (by default) check every file against it.

    Refuses, with one line, anything that is not a whole snapshot of this
    host, or that others than root and this user could have changed.
    """
    dir_fd = _open_snapshot_dir(path)
    try:
        manifest = _read_manifest(path, dir_fd)
    except BaseException:
        os.close(dir_fd)
        raise
    files = SnapshotFiles(path, manifest, dir_fd)
    if not allow_foreign and manifest.host != socket.gethostname():
        raise SnapshotInvalid(
            path=path, reason=f"taken on host {manifest.host!r}, not this one "
            "(--allow-foreign to use it anyway)"
        )
    outside = [name for name in manifest.files if not _inside(name) or name == MANIFEST]
    if outside:
        raise SnapshotInvalid(path=path, reason=f"file {outside[0]!r} lies outside it")
    if verify:
        files.verify_all()
    return Snapshot(path, manifest, files)
