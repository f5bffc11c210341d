"""What differs between two snapshots' OpenFlow state, bridge by bridge.

Compared as the stored messages themselves (TLV map, meters, groups and
flows), as multisets: a message that one snapshot has more often than the
other counts as many times as it has more.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from ovs_service.stages import flows
from ovs_service.store import Snapshot


@dataclass(frozen=True)
class BridgeDiff:
    """The messages of one bridge that only one of the snapshots has."""

    name: str
    removed: tuple[bytes, ...]  # only in the old snapshot, in its order
    added: tuple[bytes, ...]  # only in the new snapshot, in its order


@dataclass(frozen=True)
class SnapshotDiff:
    only_in_old: tuple[str, ...]  # bridges, sorted
    only_in_new: tuple[str, ...]
    bridges: tuple[BridgeDiff, ...]  # bridges of both that differ, sorted by name


def diff_tables(old: Iterable[bytes], new: Iterable[bytes]
                ) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """(messages only `old` has, messages only `new` has), each in its own order."""
    in_old, in_new = Counter(old), Counter(new)
    return tuple((in_old - in_new).elements()), tuple((in_new - in_old).elements())


def _stored(snapshot: Snapshot, record: flows.BridgeRecord) -> Iterable[bytes]:
    for kind in flows.KINDS:
        yield from flows.read_messages(snapshot.file(f"{record.directory}/{kind}.ofp"))


def diff_snapshots(old: Snapshot, new: Snapshot) -> SnapshotDiff:
    """The bridges only one snapshot has, and the messages that differ in the others."""
    in_old = {r.name: r for r in flows.records(old)}
    in_new = {r.name: r for r in flows.records(new)}
    bridges = []
    for name in sorted(in_old.keys() & in_new.keys()):
        removed, added = diff_tables(_stored(old, in_old[name]), _stored(new, in_new[name]))
        if removed or added:
            bridges.append(BridgeDiff(name, removed, added))
    return SnapshotDiff(only_in_old=tuple(sorted(in_old.keys() - in_new.keys())),
                        only_in_new=tuple(sorted(in_new.keys() - in_old.keys())),
                        bridges=tuple(bridges))
