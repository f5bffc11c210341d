"""The background restorer starts at Nice=10 (beside ovs-vswitchd's start)
and restores at the default priority, with its restore threads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = """
import os, threading
from ovs_service.hooks import unit_hooks
before = os.getpriority(os.PRIO_PROCESS, 0)
unit_hooks._full_priority()
seen = []
worker = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, 0)))
worker.start(); worker.join()
print(before, os.getpriority(os.PRIO_PROCESS, 0), seen[0])
"""


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="lowering a nice value needs root")
def test_the_restore_runs_at_the_default_priority() -> None:
    out = subprocess.run(["nice", "-n", "10", sys.executable, "-c", CODE], check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == ["10", "0", "0"]


def test_a_higher_priority_is_left_alone() -> None:
    """Not raised to 0 from below (an operator's Nice=-5 stays)."""
    out = subprocess.run([sys.executable, "-c", CODE], check=True, capture_output=True,
                         text=True).stdout.split()
    assert out == [out[0]] * 3
