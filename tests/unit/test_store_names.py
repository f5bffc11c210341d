"""Snapshot names in the store: the sequence orders them, whatever its length,
and a name the store did not make neither moves a new snapshot nor is taken
for one."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovs_service import store

STAMP = "20260101T000000.000000000"


def _snapshot(path: Path) -> Path:
    """A directory the store lists as a snapshot (its manifest is not read here)."""
    path.mkdir()
    (path / store.MANIFEST).write_text("{}")
    return path


def _save(root: Path) -> Path:
    return _snapshot(store.new_snapshot_path(root))


@pytest.mark.parametrize("parked", [
    f"{'9' * 18}-junk",  # the longest sequence the name pattern once took, then anything
    f"{'9' * 18}-{STAMP}",  # a sequence whose successor has 19 digits
    f"{'9' * 40}-{STAMP}",
])
def test_a_long_sequence_does_not_send_new_snapshots_to_the_oldest_end(
        tmp_path: Path, parked: str) -> None:
    old = _save(tmp_path)
    _snapshot(tmp_path / parked) if parked.endswith(STAMP) else (tmp_path / parked).mkdir()
    first, second = _save(tmp_path), _save(tmp_path)
    found = store.snapshots(tmp_path)
    assert found[-2:] == [first, second], found
    assert found[0] == old
    assert store.newest(tmp_path) == second
    store.prune(tmp_path, 2)
    assert store.snapshots(tmp_path) == [first, second]


def test_sequences_compare_as_numbers_not_as_text(tmp_path: Path) -> None:
    short = _snapshot(tmp_path / f"9-{STAMP}")
    padded = _snapshot(tmp_path / f"00000010-{STAMP}")
    long = _snapshot(tmp_path / f"{10 ** 20}-{STAMP}")
    assert store.snapshots(tmp_path) == [short, padded, long]
    assert store.sequence_of(store.new_snapshot_path(tmp_path).name) == 10 ** 20 + 1


@pytest.mark.parametrize("foreign", [
    "backup", "42-junk", "7-", "-20260101T000000.000000000", "1-20260101T000000",
    "20260101T000000.1.old", "\uff11-20260101T000000.000000000",  # a full-width digit one
])
def test_names_the_store_does_not_make_are_not_its_snapshots(tmp_path: Path,
                                                              foreign: str) -> None:
    """Neither listed, nor the newest, nor pruned, nor counted in the sequence."""
    legacy = _snapshot(tmp_path / "20250101T000000.123456789")
    ours = _save(tmp_path)
    _snapshot(tmp_path / foreign)
    assert store.snapshots(tmp_path) == [legacy, ours]
    assert store.sequence_of(store.new_snapshot_path(tmp_path).name) == 2
    store.prune(tmp_path, 1)
    assert (tmp_path / foreign).is_dir()
    assert store.snapshots(tmp_path) == [ours]
