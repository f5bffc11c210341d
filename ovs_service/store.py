"""The snapshot store: one directory per snapshot, written so a crash never
leaves a half snapshot that looks whole, and checked before it is used.

A snapshot is built in a hidden sibling directory; every file is fsynced,
the manifest (with the SHA-256 of every file) is written last, and only then
is the directory renamed into place and its parent fsynced. A directory
without a valid manifest is never a snapshot.

A snapshot is read as it was verified: its directory is reached from `/`
through directories only root or this user can change, every file is opened
once, by descriptor, under that directory (no symbolic links, nothing outside
it, nothing the manifest does not list), checked against the manifest, and
read through that same descriptor afterwards.

Snapshots in the store are named `<sequence>-<UTC time>`: the sequence, one
more than any in the store, orders them, so a clock that goes back cannot
make a new snapshot look old. The sequence has as many digits as it needs
and is compared as a number. Those named by the time alone (the format
before sequences) come first, by name. A directory with any other name is
not one of the store's snapshots: it is not listed, restored by default,
pruned or counted for the next sequence (`--from NAME` still reads it).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import math
import os
import re
import resource
import secrets
import shutil
import socket
import stat
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from ovs_service import __version__, codec
from ovs_service.errors import (
    Busy,
    SnapshotInvalid,
    SnapshotNotFound,
    SnapshotWriteFailed,
    UnsafeDirectory,
    UsageError,
)

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

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = codec.to_doc(self)
        return doc

    @classmethod
    def from_doc(cls, doc: object, *, where: codec.Where) -> Manifest:
        """The manifest in `doc`; its schema is checked first: another schema
        may lay its fields out differently."""
        codec.check_schema(doc, SCHEMA, where)
        return codec.from_doc(cls, doc, where=where)

    @classmethod
    def parse(cls, text: str, path: Path) -> Manifest:
        """The manifest of snapshot `path`, from its text."""
        where = codec.Where(path, MANIFEST)
        return cls.from_doc(codec.parse(text, where), where=where)


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
    """`path` as a directory. The directories this creates are 0700; those
    that exist keep their modes (`save --to /tmp/x` leaves /tmp as it is)."""
    missing = []
    parent = path
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs, not ours to chmod
        os.chmod(directory, 0o700)  # whatever the umask
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    return path


# Symbolic links followed on the way to a directory, at most (as the kernel does).
_MAX_LINKS = 40


def _open_dir_to_write(path: Path, *, shared_ok: bool) -> int:
    """A descriptor of directory `path` to write in, reached from / one
    component at a time, each directory on the way one only root or this user
    can change (the last one sticky, as /tmp, only if `shared_ok`): another
    user cannot swap a name on the way. A symbolic link on the way is
    followed only if it is root's or this user's (its directory is). Missing
    directories are made, 0700; nothing is made before the directory it goes
    in has passed. Raises UnsafeDirectory, or OSError naming the path."""
    todo = list(Path(os.path.abspath(path)).parts[1:])
    here = Path("/")
    fd = os.open("/", _DIR_FLAGS)
    links = 0
    try:
        _check_writable(path, "directory /", os.fstat(fd), sticky_ok=shared_ok or bool(todo))
        while todo:
            part = todo.pop(0)
            if part in ("", "."):
                continue
            try:
                child = _open_or_make(part, fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise OSError(e.errno, e.strerror, str(here / part)) from None
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    raise OSError(e.errno, e.strerror, str(here / part)) from None
                if st.st_uid not in (0, os.geteuid()):
                    raise UnsafeDirectory(path=path, reason=f"symbolic link {here / part} is "
                                          f"owned by uid {st.st_uid}, neither root nor this user"
                                          ) from None
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path)) from None
                target = os.readlink(part, dir_fd=fd)
                todo[:0] = target.split("/")
                if target.startswith("/"):
                    os.close(fd)
                    fd, here = os.open("/", _DIR_FLAGS), Path("/")
                continue
            os.close(fd)
            fd = child
            here = here.parent if part == ".." else here / part
            last = not any(p not in ("", ".") for p in todo)
            _check_writable(path, f"directory {here}", os.fstat(fd),
                            sticky_ok=shared_ok or not last)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_or_make(name: str, dir_fd: int) -> int:
    """Directory `name` under `dir_fd`, made 0700 if it is missing (not following a link)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    except FileExistsError:  # made meanwhile by someone else: theirs, checked as it is
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    os.fchmod(fd, 0o700)  # whatever the umask
    return fd


def _check_writable(path: Path, what: str, st: os.stat_result, *, sticky_ok: bool) -> None:
    if (problem := _unsafe(what, st, sticky_ok=sticky_ok)) is not None:
        raise UnsafeDirectory(path=path, reason=problem)


def _os_reason(e: OSError) -> str:
    return f"{e.filename}: {e.strerror}" if e.filename and e.strerror else e.strerror or str(e)


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


def _manifest_bytes(manifest: Manifest) -> bytes:
    # Indented by two, unlike the other files: as manifests have always been.
    return (json.dumps(manifest.to_doc(), indent=2, sort_keys=True) + "\n").encode()


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


# -- reading a snapshot: through descriptors, as verified ---------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
_OPEN_ERRORS = {
    errno.ELOOP: "is a symbolic link",
    errno.ENOTDIR: "is not a directory",
    errno.ENOENT: "is missing",
}


def _problem(e: OSError) -> str:
    return _OPEN_ERRORS.get(e.errno or 0, e.strerror or str(e))


def _unsafe(what: str, st: os.stat_result, *, sticky_ok: bool) -> str | None:
    """Why someone other than root or this user could change `what`, or None.
    A sticky directory (such as /tmp) may be writable by others: they cannot
    rename what is not theirs."""
    if st.st_uid not in (0, os.geteuid()):
        return f"{what} is owned by uid {st.st_uid}, neither root nor this user"
    if st.st_mode & _WRITABLE_BY_OTHERS and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        return f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _check_owned(root: Path, what: str, st: os.stat_result, *, sticky_ok: bool) -> None:
    """Only root or this user may be able to change `what` (a snapshot being read)."""
    if (problem := _unsafe(what, st, sticky_ok=sticky_ok)) is not None:
        raise SnapshotInvalid(path=root, reason=problem)


def _open_snapshot_dir(path: Path) -> int:
    """A descriptor of directory `path`, reached from / one component at a time,
    none of them a symbolic link, each one only root or this user can change."""
    parts = Path(os.path.realpath(path)).parts[1:]
    fd = os.open("/", _DIR_FLAGS)
    try:
        _check_owned(path, "directory /", os.fstat(fd), sticky_ok=True)
        for depth, part in enumerate(parts, 1):
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR):
                    raise SnapshotInvalid(path=path, reason="not a directory") from None
                where = "/" + "/".join(parts[:depth])
                raise SnapshotInvalid(path=path, reason=f"{where} {_problem(e)}") from None
            os.close(fd)
            fd = child
            last = depth == len(parts)
            what = "the directory" if last else "directory /" + "/".join(parts[:depth])
            _check_owned(path, what, os.fstat(fd), sticky_ok=not last)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _inside(relpath: str) -> bool:
    """Whether a manifest's name stays inside the snapshot: relative, no `..`, no `.`."""
    return all(part not in ("", ".", "..") and "\0" not in part for part in relpath.split("/"))


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

    def __init__(self, snapshot: Path, relpath: str, fd: int, entry: FileEntry) -> None:
        self.snapshot = snapshot
        self.relpath = relpath
        self.name = relpath.rsplit("/", 1)[-1]
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
        self._opened[relpath] = file = SnapshotFile(self.path, relpath, fd, entry)
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


def _walk(root: Path, dir_fd: int, prefix: str) -> Iterator[str]:
    """Relative paths of the regular files under `dir_fd`; refuses anything else."""
    for name in sorted(os.listdir(dir_fd)):
        relpath = prefix + name
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            yield relpath
            continue
        if not stat.S_ISDIR(st.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise SnapshotInvalid(path=root, reason=f"{relpath!r} is {kind}")
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            raise SnapshotInvalid(path=root, reason=f"{relpath!r} {_problem(e)}") from None
        try:
            _check_owned(root, repr(relpath), os.fstat(child), sticky_ok=False)
            yield from _walk(root, child, relpath + "/")
        finally:
            os.close(child)


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


LOCK = "lock"


def _open_lock(store: Path) -> int:
    store_fd = _open_dir_to_write(store, shared_ok=False)
    try:
        fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=store_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeDirectory(path=store, reason=f"{LOCK} is a symbolic link") from None
        raise OSError(e.errno, e.strerror, str(store / LOCK)) from None
    finally:
        os.close(store_fd)
    st = os.fstat(fd)
    problem = ("is not a regular file" if not stat.S_ISREG(st.st_mode) else
               f"is owned by uid {st.st_uid}, not this user" if st.st_uid != os.geteuid() else
               f"has {st.st_nlink} names (hard links)" if st.st_nlink != 1 else None)
    if problem is not None:
        os.close(fd)
        raise UnsafeDirectory(path=store, reason=f"{LOCK} {problem}")
    return fd


@contextmanager
def lock(store: Path, wait: float = 0.0, on_wait: Any = None) -> Iterator[None]:
    """Hold the store's lock: one transaction at a time, across CLI and hooks.

    Waits up to `wait` seconds (calling `on_wait()` once when it has to wait),
    then raises Busy naming the holder. The store may be changed by no one but
    root and this user, and its lock file must be this user's own, not a
    symbolic link nor a second name of another file: it is written.
    """
    if not math.isfinite(wait) or wait < 0:  # nan compares false: it would wait for ever
        raise UsageError(message=f"cannot wait {wait} seconds for the lock")
    fd = _open_lock(store)
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
