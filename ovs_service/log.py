"""Logging to stderr in a form the journal keeps well, and timed steps.

Under systemd (JOURNAL_STREAM set) each line starts with the syslog priority
prefix `<N>` so journald records the level; on a terminal, lines are plain.

Steps (`StepLog`) are what an operation reports (progress, `--json`).
Finer parts of a step -- an OpenFlow connection, a bundle's commit, one
bridge's restore -- are marked with `timed`, which costs nothing unless a
profiler has asked for them with `timings` (the benchmarks do).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelno, 6)}>{record.getMessage()}"


def setup(debug: bool = False) -> None:
    """Configure the root logger once: INFO (or DEBUG) to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)


@dataclass
class StepRecord:
    name: str
    seconds: float = 0.0
    ok: bool = True
    detail: str = ""


@dataclass
class StepLog:
    """The steps of one operation with their timings, for progress and --json."""

    steps: list[StepRecord] = field(default_factory=list)
    on_step: Callable[[StepRecord], None] | None = None

    @contextmanager
    def step(self, name: str) -> Iterator[StepRecord]:
        record = StepRecord(name)
        start = time.monotonic()
        try:
            yield record
        except BaseException:
            record.ok = False
            raise
        finally:
            record.seconds = time.monotonic() - start
            self.steps.append(record)
            if self.on_step:
                self.on_step(record)


@dataclass
class Timing:
    """One timed part of a step, as a profiler receives it."""

    name: str  # what: "openflow-connect", "bundle-commit", "restore-bridge"...
    scope: str = ""  # which bridge, if any
    began: float = 0.0  # time.monotonic()
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the thread that ran it
    count: int = 0  # how much it handled (flows, messages), where the caller says


TimingSink = Callable[[Timing], None]
_sink: TimingSink | None = None
_sink_lock = threading.Lock()


@contextmanager
def timings(sink: TimingSink) -> Iterator[None]:
    """Send every `timed` part to `sink` while inside (one sink at a time).

    The sink is called from whichever thread ran the part (bridges are
    restored in parallel): it must be thread-safe and quick.
    """
    global _sink
    with _sink_lock:
        if _sink is not None:
            raise RuntimeError("timings are already being collected")
        _sink = sink
    try:
        yield
    finally:
        with _sink_lock:
            _sink = None


@contextmanager
def timed(name: str, scope: str = "", count: int = 0) -> Iterator[Timing]:
    """Time the block for the sink of `timings`; without one, only a test.

    `count` (or the record's, set inside the block) says how much it handled.
    """
    record = Timing(name, scope, count=count)
    sink = _sink
    if sink is None:
        yield record
        return
    record.began = time.monotonic()
    cpu = time.thread_time()
    try:
        yield record
    finally:
        record.seconds = time.monotonic() - record.began
        record.cpu_seconds = time.thread_time() - cpu
        sink(record)
