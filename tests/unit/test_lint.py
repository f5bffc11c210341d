"""ruff and mypy (strict, configured in pyproject.toml) must pass: local runs and CI agree."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run_tool(module: str, *args: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(
            f"{module} is not installed for {sys.executable} "
            f"(pip install --break-system-packages ruff mypy; CI installs it)"
        )
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"{module} {' '.join(args)}:\n{proc.stdout}{proc.stderr}"


def test_ruff() -> None:
    _run_tool("ruff", "check", "--no-cache", "ovs_service", "tests", "bench", "demo")


def test_mypy() -> None:
    _run_tool("mypy")
