"""Logging to stderr in a form the journal keeps well, and timed steps.

Under systemd (JOURNAL_STREAM set) each line starts with the syslog priority
prefix `<N>` so journald records the level; on a terminal, lines are plain.
"""

from __future__ import annotations

import logging
import os
import sys
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
