"""Shared fixtures: a private Open vSwitch (`ovs`) and the ovs-service CLI (`cli`).

A test that uses `ovs` is marked `root` and `ovs` automatically, so
`-m "not ovs"` selects the tests that need neither.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.ovsbed import Cli, OvsBed

OVS_TOOLS = ("ovsdb-server", "ovs-vswitchd", "ovsdb-tool", "ovs-vsctl", "ovs-ofctl", "ip")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "ovs" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.root)
            item.add_marker(pytest.mark.ovs)


@pytest.fixture(autouse=True)
def _private_run_dir(tmp_path_factory: pytest.TempPathFactory,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's runtime directory (transaction.defer) of its own, never the machine's."""
    monkeypatch.setenv("OVS_SERVICE_RUN_DIR", str(tmp_path_factory.mktemp("run")))


@pytest.fixture(autouse=True)
def _private_metrics_dir(tmp_path_factory: pytest.TempPathFactory,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's Prometheus textfile folder of its own, never the machine's."""
    monkeypatch.setenv("OVS_SERVICE_METRICS_DIR", str(tmp_path_factory.mktemp("metrics")))


def _why_no_ovs() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, Open vSwitch daemons)"
    missing = [tool for tool in OVS_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"Open vSwitch tools not installed: {', '.join(missing)}"
    return None


@pytest.fixture
def ovs() -> Iterator[OvsBed]:
    """A running private ovsdb-server + ovs-vswitchd, stopped by pid afterwards."""
    if reason := _why_no_ovs():
        pytest.skip(reason)
    bed = OvsBed()
    bed.start()
    try:
        yield bed
    finally:
        bed.stop()


@pytest.fixture
def cli(ovs: OvsBed, tmp_path: Path) -> Cli:
    state = tmp_path / "state"
    state.mkdir()
    return Cli(ovs, state)
