"""The background restorer starts at Nice=10 (beside ovs-vswitchd's start)
and restores at the default priority once the daemon serves its bridges:
every thread of it, and the restore's threads started after."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ovs_service import operations, ovs, store
from ovs_service.hooks import unit_hooks
from ovs_service.stages import flows

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="lowering a nice value needs root")]

# In a child process, from an absolute nice value (the runner's own does not matter).
CODE = """
import os, sys, threading
from ovs_service.hooks import unit_hooks
os.setpriority(os.PRIO_PROCESS, 0, int(sys.argv[1]))
go, seen = threading.Event(), {}
def earlier():
    go.wait()
    seen["earlier"] = os.getpriority(os.PRIO_PROCESS, 0)
thread = threading.Thread(target=earlier)
thread.start()  # a thread started before, as the metrics refresh is
unit_hooks._full_priority()
go.set(); thread.join()
def later():
    seen["later"] = os.getpriority(os.PRIO_PROCESS, 0)
later = threading.Thread(target=later)
later.start(); later.join()
print(os.getpriority(os.PRIO_PROCESS, 0), seen["earlier"], seen["later"])
"""


def _priorities(start: int) -> list[str]:
    return subprocess.run([sys.executable, "-c", CODE, str(start)], check=True,
                          capture_output=True, text=True).stdout.split()


def test_every_thread_goes_back_to_the_default_priority() -> None:
    assert _priorities(10) == ["0", "0", "0"]


def test_a_higher_priority_is_left_alone() -> None:
    """An operator's Nice=-5 is not lowered to 0."""
    assert _priorities(-5) == ["-5", "-5", "-5"]


def test_the_restore_is_reniced_once_the_switch_serves_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The restorer's own path: loading and encoding at its Nice=10, the
    priority back only once the wait for ovs-vswitchd is over."""
    seen: list[tuple[str, int]] = []

    def mark(what: str) -> None:
        seen.append((what, os.getpriority(os.PRIO_PROCESS, 0)))

    def prepare_pinned(path: Path) -> tuple[object, list[object]]:
        mark("load")
        return object(), []

    def prepare_bundles(snapshot: object, records: object) -> dict[str, object]:
        mark("encode")
        return {}

    def unserved(names: object, timeout: float) -> dict[str, str]:
        mark("wait for the bridges")
        return {}

    def restore(snapshot: object, records: object, bundles: object) -> list[object]:
        mark("restore")
        return []

    monkeypatch.setattr(operations, "prepare_pinned", prepare_pinned)
    monkeypatch.setattr(operations, "prepare_bundles", prepare_bundles)
    monkeypatch.setattr(operations, "_unserved_bridges", unserved)
    monkeypatch.setattr(operations, "_refused_by_switch", lambda *a: None)
    monkeypatch.setattr(ovs, "pin_ofports", lambda wanted: [])
    monkeypatch.setattr(flows, "restore", restore)
    store.mark_pending(tmp_path, tmp_path / "20261203T000000Z-1")
    before = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, 10)
    try:
        unit_hooks._restore_pending(tmp_path, wait=5.0)
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, before)
    assert seen == [("load", 10), ("encode", 10), ("wait for the bridges", 10), ("restore", 0)]
