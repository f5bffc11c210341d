"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A textfile folder, an empty store, and no switch to ask (no ovsdb socket)."""
    out = tmp_path / "textfile"
    out.mkdir()
    monkeypatch.setenv("OVS_SERVICE_METRICS_DIR", str(out))
    monkeypatch.setenv("OVS_SERVICE_STATE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("OVS_RUNDIR", str(tmp_path))
    return out
