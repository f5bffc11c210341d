"""Edges of the metrics file and the snapshot schema: labels holding
line-break characters other than \n, a manifest whose `extra` is shaped
otherwise, temporary files of killed writers, a `compatible` above this
reader, a rollback refusal's counts."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from ovs_service import codec, metrics, store
from ovs_service.errors import SnapshotInvalid
from ovs_service.metrics import exposition
from ovs_service.stages.flows_restore import BridgeRestore
from ovs_service.store import manifest as mf
from tests.harness import promtext


def _restore(bridge: str) -> metrics.Recorder:
    recorder = metrics.Recorder("restore")
    recorder.restore([BridgeRestore(bridge, True, {"flows": 7, "groups": 2, "meters": 1})])
    return recorder


# Characters Python's str.splitlines() breaks a line at, which the exposition
# format does not escape (only \n is a line end there) and which a bridge name
# may hold (a userspace bridge's name is any string; a kernel one takes UTF-8).
LINE_BREAKS = ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("char", LINE_BREAKS, ids=[f"U+{ord(c):04X}" for c in LINE_BREAKS])
def test_restored_counts_of_a_bridge_with_a_line_break_char_survive_the_next_write(
        metrics_dir: Path, char: str) -> None:
    bridge = f"br{char}x"
    metrics.write(_restore(bridge))
    first = (metrics_dir / "ovs_service.prom").read_bytes().decode()
    assert f'bridge="{bridge}"' in first  # written (node_exporter reads it: \n ends a line)
    metrics.refresh()  # any later save or refresh re-reads the file and merges
    second = (metrics_dir / "ovs_service.prom").read_bytes().decode()
    assert f'bridge="{bridge}"' in second, "restored counts of the bridge were dropped"


@pytest.mark.parametrize("char", LINE_BREAKS, ids=[f"U+{ord(c):04X}" for c in LINE_BREAKS])
def test_exposition_round_trips_a_label_with_a_line_break_char(char: str) -> None:
    s = exposition.sample("ovs_service_restored_flows", 3, bridge=f"a{char}b")
    text = exposition.render(metrics.fam.ALL, [s])
    assert exposition.parse(text, metrics.fam.NAMES) == [s]


def test_a_newest_snapshot_with_an_unexpected_extra_leaves_the_other_metrics_written(
        metrics_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The manifest's `extra` is `dict[str, Any]`: nothing checks its shape (a
    newer schema declared readable may well change it). One whose `flows` is
    not a dict of dicts of numbers must not cost every other metric."""
    (tmp_path / "store").mkdir()
    fake = tmp_path / "store" / "snap"
    monkeypatch.setattr(store, "snapshots", lambda root: [fake])
    manifest = types.SimpleNamespace(created="2026-12-01T12:00:00Z",
                                     extra={"flows": {"br0": {"flows": None}}})
    monkeypatch.setattr(store, "load", lambda *a, **k: types.SimpleNamespace(manifest=manifest))
    metrics.write(_restore("br0"))
    got = promtext.parse((metrics_dir / "ovs_service.prom").read_text())
    assert "ovs_service_last_transaction_success" in got, "no metrics written at all"


def test_a_stale_temporary_file_of_a_killed_writer_is_cleaned_up(metrics_dir: Path) -> None:
    """A writer killed between open and rename leaves `.ovs_service.prom.PID.tmp`;
    only one of the same pid is ever removed: they pile up in the textfile folder."""
    stale = metrics_dir / ".ovs_service.prom.999999.tmp"
    stale.write_text("half a file")
    metrics.refresh()
    assert not stale.exists(), "stale temporary file left behind"


def test_a_manifest_whose_compatible_exceeds_this_reader_is_refused_exit_7(
        tmp_path: Path) -> None:
    """`compatible: N` says readers need schema N or later; a schema-1 reader
    reading `schema: 1, compatible: 2` reads it anyway (the check requires
    schema > SCHEMA too). compatible > schema is also never checked."""
    where = codec.Where(tmp_path, mf.MANIFEST)
    with pytest.raises(SnapshotInvalid):
        mf.readable_schema({"schema": 1, "compatible": 2}, where)


def test_a_rollback_refusal_keeps_the_restored_counts_as_other_refusals_do(
        metrics_dir: Path, tmp_path: Path) -> None:
    """SwitchRefusesSnapshot says "restore refused, nothing was changed" (the
    rollback check runs before any bridge is touched), as SnapshotTooNew
    (exit 7) does. The latter keeps the last restore's counts; the former,
    being a RestoreFailed subclass, drops them all."""
    from ovs_service.errors import SnapshotTooNew, SwitchRefusesSnapshot

    metrics.write(_restore("br0"))
    with pytest.raises(SnapshotTooNew), metrics.operation("restore", restores=True):
        raise SnapshotTooNew(path=tmp_path, schema=3, compatible=3, known=1)
    got = promtext.parse((metrics_dir / "ovs_service.prom").read_text())
    assert got["ovs_service_restored_flows"].value(bridge="br0") == 7  # kept: a refusal

    with pytest.raises(SwitchRefusesSnapshot), metrics.operation("restore", restores=True):
        raise SwitchRefusesSnapshot(bridge="br1", running="3.1.0", saved="3.5.0",
                                    reason="the switch answered OFPFMFC_BAD_TABLE_ID")
    got = promtext.parse((metrics_dir / "ovs_service.prom").read_text())
    assert "ovs_service_restored_flows" in got, "a refusal that changed nothing dropped them"
