"""Writing a snapshot so that a crash never leaves a half snapshot that
looks whole.

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
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ovs_service import __version__
from ovs_service.errors import SnapshotWriteFailed, UnsafeDirectory, UsageError
from ovs_service.store.manifest import MANIFEST, SCHEMA, FileEntry, Manifest, _manifest_bytes
from ovs_service.store.naming import INCOMING
from ovs_service.store.reader import Snapshot, SnapshotFiles
from ovs_service.store.safedir import (
    _CHUNK,
    _DIR_FLAGS,
    _NEW_FILE_FLAGS,
    _inside,
    _open_dir_to_write,
    _os_reason,
    _unsafe,
)


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
    """Builds one snapshot; `commit()` makes it appear, whole, at its final path.

    Everything is written under the descriptor of the directory it checked:
    the final path's parent (reached as `_open_dir_to_write` does) and the
    work directory made in it. A name swapped meanwhile for a symbolic link
    is never followed. In the store (`store=True`) the parent may not be
    writable by anyone else at all; a `--to` parent may be sticky (/tmp).
    """

    def __init__(self, final: Path, *, store: bool = False) -> None:
        self.final = final
        self.files: dict[str, FileEntry] = {}
        self._dirs: set[str] = set()  # made in the work directory, fsynced by commit()
        self._lock = self._parent = -1
        try:
            self._parent = _open_dir_to_write(final.parent, shared_ok=not store)
        except OSError as e:
            raise SnapshotWriteFailed(path=final.parent, reason=_os_reason(e)) from None
        self._name = f"{INCOMING}{final.name}.{secrets.token_hex(4)}"
        self.tmp = final.parent / self._name
        try:
            self._check_final()
            os.mkdir(self._name, 0o700, dir_fd=self._parent)
            # Held while the snapshot is built: `prune` leaves a locked work directory alone.
            self._lock = os.open(self._name, _DIR_FLAGS, dir_fd=self._parent)
            fcntl.flock(self._lock, fcntl.LOCK_EX)
            os.fchmod(self._lock, 0o700)  # whatever the umask
        except OSError as e:
            self.abort()
            raise SnapshotWriteFailed(path=final.parent, reason=f"cannot create "
                                      f"{self._name}: {_os_reason(e)}") from None
        except BaseException:
            self.abort()
            raise

    def _check_final(self) -> None:
        """The final name is free, or an empty directory of root's or this user's."""
        try:
            fd = os.open(self.final.name, _DIR_FLAGS, dir_fd=self._parent)
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            raise UsageError(message=f"{self.final}: exists and is not an empty directory"
                             ) from None
        try:
            st = os.fstat(fd)
            if os.listdir(fd):
                raise UsageError(message=f"{self.final}: exists and is not an empty directory")
            if (problem := _unsafe("it", st, sticky_ok=False)) is not None:
                raise UnsafeDirectory(path=self.final, reason=problem)
        finally:
            os.close(fd)

    def _subdir(self, parts: list[str]) -> int:
        """A new descriptor of the work directory's subdirectory `parts`, made 0700 if missing."""
        fd = os.dup(self._lock)
        try:
            for depth, part in enumerate(parts, 1):
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                    made = True
                except FileExistsError:
                    made = False  # by another bridge's thread
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
                if made:
                    os.fchmod(fd, 0o700)
                self._dirs.add("/".join(parts[:depth]))
            return fd
        except BaseException:
            os.close(fd)
            raise

    @contextmanager
    def open(self, relpath: str) -> Iterator[_HashingWriter]:
        if not _inside(relpath):
            raise ValueError(f"{relpath!r} lies outside the snapshot")
        *dirs, name = relpath.split("/")
        where = self._subdir(dirs)
        try:
            fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=where)
        finally:
            os.close(where)
        with os.fdopen(fd, "wb", buffering=_CHUNK) as f:
            writer = _HashingWriter(f)
            yield writer
            f.flush()
            os.fsync(f.fileno())
        self.files[relpath] = writer.entry()

    def discard(self, directory: str) -> None:
        """Forget and delete what was written under `directory` (a bridge that failed)."""
        for relpath in [p for p in self.files if p.startswith(f"{directory}/")]:
            self.files.pop(relpath, None)
        shutil.rmtree(directory, dir_fd=self._lock, ignore_errors=True)

    def write_json(self, relpath: str, doc: Any) -> None:
        """A JSON document (see `codec.to_doc`), as every snapshot file but the manifest."""
        with self.open(relpath) as f:
            f.write(json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n")

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
        # Written last, in a directory that is not a snapshot until it is renamed.
        with os.fdopen(os.open(MANIFEST, _NEW_FILE_FLAGS, 0o600, dir_fd=self._lock), "wb") as f:
            f.write(_manifest_bytes(manifest))
            f.flush()
            os.fsync(f.fileno())
        for relpath in sorted(self._dirs, key=len, reverse=True):
            fd = self._subdir(relpath.split("/"))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.fsync(self._lock)
        # The name must still be the directory written (not a link put in its place).
        here, now = os.fstat(self._lock), os.stat(self._name, dir_fd=self._parent,
                                                  follow_symlinks=False)
        if (here.st_dev, here.st_ino) != (now.st_dev, now.st_ino):
            raise OSError(errno.EXDEV, f"{self.tmp} was replaced while the snapshot was written")
        # Replaces the empty directory the caller named, if any.
        os.rename(self._name, self.final.name, src_dir_fd=self._parent,
                  dst_dir_fd=self._parent)
        os.fsync(self._parent)
        self._close()
        return Snapshot(self.final, manifest, SnapshotFiles(self.final, manifest))

    def abort(self) -> None:
        if self._parent >= 0 and self._lock >= 0:
            # Only what this writer made (the name, if it is still that directory).
            here = os.fstat(self._lock)
            try:
                now = os.stat(self._name, dir_fd=self._parent, follow_symlinks=False)
            except OSError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (here.st_dev, here.st_ino):
                shutil.rmtree(self._name, dir_fd=self._parent, ignore_errors=True)
            else:
                shutil.rmtree(".", dir_fd=self._lock, ignore_errors=True)
        self._close()

    def _close(self) -> None:
        for fd in (self._lock, self._parent):
            if fd >= 0:
                os.close(fd)
        self._lock = self._parent = -1
