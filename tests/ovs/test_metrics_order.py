"""Two restores that the store's lock puts in order write their metrics in
that order: the metrics are written before the lock is released. Made
deterministic by holding the textfile directory's lock and stopping the first
restore while it waits for it (written after the release, the second
restore's metrics would land first and the first's last)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.harness import REPO, promtext
from tests.harness.ovsbed import Cli, OvsBed

OF13 = "OpenFlow13"


def _waiting_for_flock(pid: int) -> bool:
    """Whether `pid` is blocked on a flock (a `->` line of /proc/locks)."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and "FLOCK" in fields and str(pid) in fields:
            return True
    return False


def _wait(what: str, cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _start(cli: Cli, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen((sys.executable, "-m", "ovs_service", *args), cwd=REPO,
                            env=cli.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_the_last_restore_is_the_one_the_metrics_name(ovs: OvsBed, cli: Cli) -> None:
    ovs.add_bridge("br0", protocols=(OF13,))
    ovs.ofctl("-O", OF13, "add-flow", "br0", "priority=5,ip actions=drop")
    first = cli.save()  # 1 flow of its own (+ the default)
    for i in range(4):
        ovs.ofctl("-O", OF13, "add-flow", "br0", f"priority={10 + i},tcp,tp_dst={80 + i} "
                  "actions=drop")
    second = cli.save()
    ovs.ofctl("-O", OF13, "del-flows", "br0")

    fd = os.open(cli.metrics_dir, os.O_RDONLY | os.O_DIRECTORY)
    a = b = None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the metrics writers wait
        a = _start(cli, "restore", "--from", str(first))
        _wait("restore A to wait for the metrics lock", lambda: _waiting_for_flock(a.pid))
        os.kill(a.pid, signal.SIGSTOP)  # its restore is done, its metrics not written
        b = _start(cli, "restore", "--from", str(second), "--wait", "60")
        said: list[str] = []
        reader = threading.Thread(target=lambda: said.extend(b.stderr or ()), daemon=True)
        reader.start()
        # B waits: for the store's lock (A holds it until its metrics are
        # written), or, were the metrics written after its release, for theirs.
        _wait("restore B to wait for a lock", lambda: _waiting_for_flock(b.pid) or any(
            "waiting for another transaction" in line for line in said))
        fcntl.flock(fd, fcntl.LOCK_UN)
        # Written after the release of the store's lock, B's metrics land now,
        # and A's last once it runs again; written under it, B waits for A.
        with contextlib.suppress(subprocess.TimeoutExpired):
            b.wait(15)
        os.kill(a.pid, signal.SIGCONT)
        assert a.wait(60) == 0, a.stderr.read() if a.stderr else ""
        assert b.wait(60) == 0, "".join(said)
    finally:
        os.close(fd)
        for p in (a, b):
            if p is not None and p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
                p.wait()

    on_switch = sum("actions=" in line for line in
                    ovs.ofctl("-O", OF13, "dump-flows", "br0", "--no-stats").splitlines())
    got = promtext.parse((cli.metrics_dir / "ovs_service.prom").read_text())
    restored = int(got["ovs_service_restored_flows"].value(bridge="br0"))
    assert restored == on_switch, (
        f"the switch holds {on_switch} flows (restore B, the last), the metrics say the last "
        f"restore put back {restored} (restore A's)")
