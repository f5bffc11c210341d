"""The store's lock: one transaction at a time, across the command line
and the unit hooks. Its file lies in the store, reached as every directory
written in is (see `safedir`), and is never followed if it is a link.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ovs_service.errors import Busy, UnsafeDirectory, UsageError
from ovs_service.store.safedir import _open_dir_to_write

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
