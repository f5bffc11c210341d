"""Where the metrics go, and writing them so a scrape never sees half a file.

node_exporter's textfile collector reads `*.prom` in one directory
(Debian's prometheus-node-exporter: /var/lib/prometheus/node-exporter).
The file is replaced whole: a temporary file in the same directory (a name
the collector does not read), fsync, rename, fsync of the directory. Its
writers take turns (a lock on the directory itself), each reading what the
last one wrote and merging into it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = Path("/var/lib/prometheus/node-exporter")
ENV = "OVS_SERVICE_METRICS_DIR"
FILE_NAME = "ovs_service.prom"
MODE = 0o644  # node_exporter runs as its own user

_override: Path | None = None


def configure(directory: Path | None) -> None:
    """The directory given on the command line (before the environment)."""
    global _override
    _override = directory


@dataclass(frozen=True)
class Target:
    directory: Path
    explicit: bool  # given by the operator, not the default

    @property
    def file(self) -> Path:
        return self.directory / FILE_NAME


def target() -> Target:
    if _override is not None:
        return Target(_override, True)
    value = os.environ.get(ENV)
    return Target(Path(value), True) if value else Target(DEFAULT_DIR, False)


def unusable(where: Target) -> str | None:
    """Why metrics cannot be written there, or None."""
    if not where.directory.is_dir():
        return f"{where.directory} is not a directory"
    if not os.access(where.directory, os.W_OK | os.X_OK):
        return f"{where.directory} is not writable"
    return None


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One writer at a time: each reads, merges and replaces the file in turn."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read(path: Path) -> str:
    try:
        # Bytes, decoded: no newline translation (a \r in a label is data).
        return path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""


def replace(path: Path, text: str) -> None:
    """Put `text` at `path` whole: a scrape sees the old file or the new one."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, MODE)
    except FileExistsError:  # left by a process of this pid that died
        tmp.unlink()
        fd = os.open(tmp, flags, MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode())
            f.flush()
            os.fchmod(f.fileno(), MODE)  # whatever the umask
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL:  # some file systems cannot sync a directory
            raise
    finally:
        os.close(fd)


def update(where: Target, merge: Callable[[str], str]) -> None:
    """Replace the file with `merge(what it holds now)`, under the lock."""
    with locked(where.directory):
        _remove_stale(where.file)
        replace(where.file, merge(read(where.file)))


def _remove_stale(path: Path) -> None:
    """Temporary files of writers killed before their rename (none can be
    writing one now: writers hold the lock)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)
