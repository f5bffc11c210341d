"""Reaching directories so that no one but root and this user can change
what is found there, and replacing files so that a crash leaves the old or
the new, never half.

A snapshot being read, and a directory being written in (the store, a
`--to` directory), is reached from `/` one component at a time, by
descriptor, each directory checked for its owner and mode; its files are
then opened under that descriptor, never through a symbolic link. The
snapshot reader and writer and the store's lock all go through here.

`ensure_dir` and `write_atomic` work by path: the markers and the journal
use them.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ovs_service.errors import SnapshotInvalid, UnsafeDirectory

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
_OPEN_ERRORS = {
    errno.ELOOP: "is a symbolic link",
    errno.ENOTDIR: "is not a directory",
    errno.ENOENT: "is missing",
}
_CHUNK = 1 << 20  # read, hashed and buffered this much at a time


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
