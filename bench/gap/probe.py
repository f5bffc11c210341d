"""The prober: ping every millisecond through the probe bridge, replies to a
file inside; the gap is the longest interval between two replies."""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import time
import uuid
from dataclasses import dataclass

from bench.gap.bed import Bed, BenchError

# Replies seen before a run counts as started: the path works.
WARM_REPLIES = 200


@dataclass
class Probe:
    gap_s: float | None  # None: forwarding did not come back
    gap_from: float | None  # where the longest gap sat, from the command's start
    gap_to: float | None
    noise_s: float  # the longest gap before the command started
    replies: int


def reply_times(text: str) -> list[float]:
    """The time stamps (`ping -D`, seconds since the epoch) of the replies."""
    stamps = []
    for line in text.splitlines():
        if line.startswith("[") and "bytes from" in line:
            with contextlib.suppress(ValueError):
                stamps.append(float(line[1:line.index("]")]))
    return stamps


class Prober:
    """ping -D -i INTERVAL from host 0 to host 1, its output in a file inside.

    ping is stopped by its pid (written by the shell that execs it).
    """

    def __init__(self, bed: Bed, interval: float) -> None:
        self.bed = bed
        self.interval = interval
        tag = uuid.uuid4().hex[:8]
        self.out = f"/run/gapbench-{tag}.txt"
        self.pidfile = f"/run/gapbench-{tag}.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    def _text(self) -> str:
        try:
            return self.bed.ns.path(self.out).read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Prober:
        hosts = self.bed.hosts
        script = 'echo $$ > "$1"; exec ping -D -n -i "$2" -W 1 "$3" > "$0" 2>&1'
        argv = self.bed.ns.nsenter_argv([
            "ip", "netns", "exec", hosts.names[0], "sh", "-c", script,
            self.out, self.pidfile, str(self.interval), hosts.addresses[1]])
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while len(reply_times(self._text())) < WARM_REPLIES:
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError("no ping replies through the probe bridge before the run")
            time.sleep(0.05)
        return self

    def wait_recovered(self, since: float, hold: float = 0.5, timeout: float = 60.0) -> bool:
        """Wait until replies have flowed for `hold` seconds after `since` (epoch)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stamps = reply_times(self._text())
            recent = [t for t in stamps if t >= since]
            if recent and recent[-1] - max(recent[0], since) >= hold:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> str:
        pid = ""
        with contextlib.suppress(OSError):
            pid = self.bed.ns.path(self.pidfile).read_text().strip()
        if pid.isdigit():
            self.bed.ns.run(["kill", "-INT", pid], check=False)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        text = self._text()
        self.bed.ns.run(["rm", "-f", self.out, self.pidfile], check=False)
        return text

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()

    @staticmethod
    def measure(text: str, started: float, ended: float, recovered: bool) -> Probe:
        stamps = reply_times(text)
        before = [t for t in stamps if t < started]
        noise = max((b - a for a, b in itertools.pairwise(before)), default=0.0)
        if not recovered:
            last = max((t for t in stamps if t < ended), default=started)
            return Probe(None, last - started, None, noise, len(stamps))
        best, at = 0.0, 0
        for i in range(1, len(stamps)):
            if stamps[i] - stamps[i - 1] > best:
                best, at = stamps[i] - stamps[i - 1], i
        return Probe(best, stamps[at - 1] - started, stamps[at] - started, noise, len(stamps))
