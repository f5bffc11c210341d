"""The tests' fault injection kills (or fails) exactly where it says: a kill
"STEP:after" comes once STEP's work is done and journalled, never before it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO

STEP = r"""
import sys
from pathlib import Path
from ovs_service import journal
root, marker = Path(sys.argv[1]), Path(sys.argv[2])
tx = journal.Journal(root, "restart")
with tx.step("first"):
    pass
with tx.step("second"):
    marker.write_text("the step's work ran")
print("survived")
"""


def _run(tmp_path: Path, fault: str) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    root, marker = tmp_path / "state", tmp_path / "marker"
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OVS_SERVICE_FAULT": fault,
           "OVS_SERVICE_RUN_DIR": str(tmp_path / "run")}
    proc = subprocess.run([sys.executable, "-c", STEP, str(root), str(marker)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    return proc, root, marker


@pytest.mark.parametrize("fault, ran, step, state", [
    ("second", False, "first", "done"),
    ("second:after", True, "second", "done"),
    ("first:after", False, "first", "done"),
])
def test_a_kill_point_kills_where_it_says(tmp_path: Path, fault: str, ran: bool, step: str,
                                          state: str) -> None:
    proc, root, marker = _run(tmp_path, fault)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert marker.exists() == ran
    record = json.loads((root / "transaction.json").read_text())
    assert (record["step"], record["state"]) == (step, state)


def test_a_failure_point_fails_inside_the_step(tmp_path: Path) -> None:
    proc, root, marker = _run(tmp_path, "fail:second")
    assert proc.returncode == 1 and "InjectedFault" in proc.stderr
    assert not marker.exists()
    record = json.loads((root / "transaction.json").read_text())
    assert (record["step"], record["state"]) == ("second", "running")
