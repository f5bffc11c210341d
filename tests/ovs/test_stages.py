"""A new stage is its own module and one line in `stages.REGISTRY`: save and
restore run it with the others, against a private switch, with nothing else
changed. The flows it sits beside are checked with ovs-ofctl."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ovs_service import operations, stages, store
from ovs_service.errors import OvsServiceError, RestorePartsFailed
from ovs_service.stages.base import RestoreScope, SaveResult, SaveScope, Stage
from tests.harness import canon
from tests.harness.ovsbed import OvsBed

FILE = "marker/bridges.json"
RESTORED: list[list[str]] = []


@dataclass(frozen=True)
class MarkerReport:
    bridges: tuple[str, ...]
    fail: bool = False
    key: ClassVar[str] = "marker"

    @property
    def ok(self) -> bool:
        return not self.fail

    def __str__(self) -> str:
        return f"marker: {', '.join(self.bridges)}"

    def to_doc(self) -> Any:
        return list(self.bridges)

    def error(self) -> OvsServiceError | None:
        return RestorePartsFailed(parts="marker", reason="asked to fail") if self.fail else None


class MarkerStage(Stage):
    """Saves the names of the bridges; its restore notes them."""

    name = "marker"
    fail = False

    def save(self, writer: store.SnapshotWriter, scope: SaveScope) -> SaveResult:
        writer.write_json(FILE, [b.name for b in scope.bridges])
        return SaveResult({"marker": len(scope.bridges)}, {})

    def restore(self, snapshot: store.Snapshot, scope: RestoreScope) -> MarkerReport:
        saved = json.loads(snapshot.file(FILE).read_text())
        RESTORED.append(saved)
        return MarkerReport(tuple(saved), self.fail)


@pytest.fixture
def registered(ovs: OvsBed, monkeypatch: pytest.MonkeyPatch) -> Iterator[OvsBed]:
    """The marker stage in the registry (one line), this process on the private switch."""
    monkeypatch.setitem(stages.REGISTRY, "marker", (f"{__name__}:MarkerStage", "asked"))
    stages.stage.cache_clear()
    for key, value in ovs.env.items():
        monkeypatch.setenv(key, value)
    RESTORED.clear()
    yield ovs
    stages.stage.cache_clear()


def test_a_registered_stage_is_saved_and_restored_with_the_others(
        registered: OvsBed, tmp_path: Path) -> None:
    registered.add_bridge("br0", protocols=("OpenFlow13",))
    registered.ofctl("-O", "OpenFlow13", "add-flow", "br0", "priority=7,ip,actions=drop")
    before = canon.all_states(registered)
    snapshot = operations.take_snapshot(stage_names=["flows", "marker"], to=tmp_path / "snap")
    assert snapshot.manifest.stages == ["flows", "marker"]
    assert snapshot.manifest.extra["marker"] == 1
    registered.ofctl("-O", "OpenFlow13", "del-flows", "br0")

    outcome = operations.restore_snapshot(snapshot.path)
    assert RESTORED == [["br0"]]
    assert outcome.ok and outcome.to_doc()["marker"] == ["br0"]
    assert "marker: br0" in str(outcome)
    assert canon.all_states(registered) == before


def test_a_failing_stage_fails_the_restore_with_its_own_error(
        registered: OvsBed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registered.add_bridge("br0", protocols=("OpenFlow13",))
    snapshot = operations.take_snapshot(stage_names=["flows", "marker"], to=tmp_path / "snap")
    monkeypatch.setattr(MarkerStage, "fail", True)
    outcome = operations.restore_snapshot(snapshot.path)
    assert not outcome.ok
    with pytest.raises(RestorePartsFailed, match="marker"):
        operations.raise_for(outcome)
