"""Save and restore as whole operations: the stages, the store, the checks.

The CLI and the unit hooks both call these; neither talks to a stage directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ovs_service import flows, ovs, store
from ovs_service.errors import BridgeNotFound, RestoreFailed, UsageError

log = logging.getLogger(__name__)

STAGES = ("flows",)


def _check_stages(stages: Sequence[str]) -> list[str]:
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UsageError(message=f"unknown stage {unknown[0]!r} (known: {', '.join(STAGES)})")
    return list(stages) or list(STAGES)


def take_snapshot(
    bridge_names: Sequence[str] = (),
    stages: Sequence[str] = (),
    to: Path | None = None,
    store_dir: Path | None = None,
) -> store.Snapshot:
    """Save the named bridges (or all) into a new snapshot and return it."""
    stages = _check_stages(stages)
    store_dir = store_dir or store.state_dir()
    bridges = ovs.bridges(bridge_names)
    version = ovs.ovs_version()
    writer = store.SnapshotWriter(to or store.new_snapshot_path(store_dir))
    try:
        records = flows.save(writer, bridges)
        snapshot = writer.commit(
            ovs_version=version,
            stages=stages,
            bridges=[b.name for b in bridges],
            extra={"flows": {r.name: r.counts for r in records}},
        )
    except BaseException:
        writer.abort()
        raise
    if to is None:
        store.prune(store_dir, store.keep_count())
    return snapshot


@dataclass(frozen=True)
class RestoreOutcome:
    snapshot: Path
    bridges: list[flows.BridgeRestore]

    @property
    def ok(self) -> bool:
        return all(b.ok for b in self.bridges)


def prepare_restore(
    path: Path,
    bridge_names: Sequence[str] = (),
    allow_foreign: bool = False,
    skip_missing: bool = False,
) -> tuple[store.Snapshot, list[flows.BridgeRecord]]:
    """Everything a restore checks before it touches the switch.

    A bridge of the snapshot that the switch no longer has is refused, or,
    with `skip_missing` (the unit hooks), left out with a warning.
    """
    snapshot = store.load(path, allow_foreign=allow_foreign)
    records = flows.records(snapshot)
    by_name = {r.name: r for r in records}
    missing = [n for n in bridge_names if n not in by_name]
    if missing:
        raise UsageError(message=f"bridge {missing[0]!r} is not in snapshot {path}")
    selected = [by_name[n] for n in bridge_names] if bridge_names else records
    existing = {b.name for b in ovs.bridges()}
    gone = [r.name for r in selected if r.name not in existing]
    if gone and not skip_missing:
        raise BridgeNotFound(bridge=gone[0])
    if gone:
        log.warning("bridges no longer present, not restored: %s", ", ".join(gone))
    selected = [r for r in selected if r.name in existing]
    for record in selected:
        flows.check_framing(snapshot, record)
    return snapshot, selected


def restore_snapshot(
    path: Path,
    bridge_names: Sequence[str] = (),
    stages: Sequence[str] = (),
    allow_foreign: bool = False,
) -> RestoreOutcome:
    _check_stages(stages)
    snapshot, selected = prepare_restore(path, bridge_names, allow_foreign)
    results = flows.restore(snapshot, selected)
    return RestoreOutcome(snapshot.path, results)


def raise_for(outcome: RestoreOutcome) -> None:
    failed = [b for b in outcome.bridges if not b.ok]
    if failed:
        first = failed[0]
        raise RestoreFailed(
            bridge=first.bridge,
            reason=first.reason
            + (f" (and {len(failed) - 1} other bridges)" if len(failed) > 1 else ""),
        )
