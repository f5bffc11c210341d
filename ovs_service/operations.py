"""Save and restore as whole operations: the stages, the store, the checks.

The CLI and the unit hooks both call these; neither talks to a stage directly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ovs_service import kmod, ovs, stages, store
from ovs_service.errors import (
    BridgeNotFound,
    OvsServiceError,
    OvsUnreachable,
    RestoreFailed,
    SaveIncomplete,
    SnapshotWriteFailed,
    SwitchRefusesSnapshot,
    UsageError,
)
from ovs_service.openflow.messages import PreparedBundle
from ovs_service.stages import datapaths, flows, flows_rollback
from ovs_service.stages.base import Report, RestoreScope, SaveScope

log = logging.getLogger(__name__)

def _check_stages(names: Sequence[str], allowed: Sequence[str],
                  default: Sequence[str]) -> list[str]:
    unknown = [s for s in names if s not in allowed]
    if unknown:
        raise UsageError(message=f"unknown stage {unknown[0]!r} (known: {', '.join(allowed)})")
    return [s for s in allowed if s in names] if names else list(default)


def take_snapshot(
    bridge_names: Sequence[str] = (),
    stage_names: Sequence[str] = (),
    to: Path | None = None,
    store_dir: Path | None = None,
    pending: bool = False,
) -> store.Snapshot:
    """Save the named bridges (or all) into a new snapshot and return it.

    Each stage named (or each saved by default) writes its files, with the
    stages that go along with it. Bridges are saved one by one: if some
    cannot be, the snapshot of the others is still written (the manifest's
    `flows_failed` says which and why), and SaveIncomplete is raised with it.
    If none can be, the first bridge's error is raised and nothing is
    written. With `pending`, the snapshot is marked for the next start of
    ovs-vswitchd before the store is pruned (which never takes the new one).
    """
    named = _check_stages(stage_names, stages.save_names(), stages.default_save())
    store_dir = store_dir or store.state_dir()
    bridges = ovs.bridges(bridge_names)
    version = ovs.ovs_version()
    # In the store, no one else may write beside the snapshots; `--to` may be under /tmp.
    writer = (store.SnapshotWriter(to) if to is not None
              else store.SnapshotWriter(store.new_snapshot_path(store_dir), store=True))
    scope = SaveScope(bridges)
    try:
        results = [stages.stage(name).save(writer, scope) for name in stages.saved_along(named)]
        failed = {bridge: why for r in results for bridge, why in r.failed.items()}
        snapshot = writer.commit(
            ovs_version=version,
            stages=named,
            bridges=[b.name for b in bridges if b.name not in failed],
            extra={key: value for r in results for key, value in r.extra.items()},
        )
    except OSError as e:
        writer.abort()
        raise SnapshotWriteFailed(path=writer.final.parent, reason=e.strerror or str(e)) from None
    except BaseException:
        writer.abort()
        raise
    if pending:
        store.mark_pending(store_dir, snapshot.path)
    if to is None:
        store.prune(store_dir, store.keep_count(), protect=[snapshot.path])
    if failed:
        first = next(iter(failed))
        more = f" (and {len(failed) - 1} other bridges)" if len(failed) > 1 else ""
        raise SaveIncomplete(bridge=first, reason=failed[first], more=more,
                             path=snapshot.path, snapshot=snapshot)
    return snapshot


# `restore --json` has these keys whichever stages ran (documented, stable).
DOC_KEYS: dict[str, Any] = {"bridges": [], "port_mismatches": [], "interfaces": None,
                            "firewall": None}


@dataclass(frozen=True)
class RestoreOutcome:
    """What a restore did, stage by stage (and what the checks afterwards saw)."""

    snapshot: Path
    reports: tuple[Report, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports)

    @property
    def bridges(self) -> list[flows.BridgeRestore]:
        return [b for r in self.reports if isinstance(r, flows.FlowsReport) for b in r.results]

    def __str__(self) -> str:
        return "\n".join(text for r in self.reports if (text := str(r)))

    def to_doc(self) -> dict[str, Any]:
        return {"snapshot": str(self.snapshot), "ok": self.ok, **DOC_KEYS,
                **{r.key: r.to_doc() for r in self.reports}}

    def error(self) -> OvsServiceError | None:
        """The first failure: a bridge before a part beside the bridges."""
        return next((e for r in self.reports if (e := r.error()) is not None), None)


def raise_for(outcome: RestoreOutcome) -> None:
    if (error := outcome.error()) is not None:
        raise error


def recreate_kernel_datapaths(snapshot: store.Snapshot) -> list[str] | None:
    """After a module reload was interrupted, before ovs-vswitchd starts: the
    module loaded and the snapshot's kernel datapaths back with their ports at
    the saved numbers (only what is missing). What was done and what could
    not be, a line each; None if the snapshot has no kernel datapaths."""
    saved = datapaths.load(snapshot)
    if saved is None or not saved.system_datapaths:
        return None
    done = [f"loaded the {kmod.MODULE} module"] if kmod.ensure_loaded() else []
    made = datapaths.recreate_kernel_datapaths(saved)
    if made.ports:
        done.append(f"re-created kernel datapath ports {', '.join(made.ports)}")
    return done + made.problems


def restore_interfaces(snapshot: store.Snapshot, module_reloaded: bool = False) -> Report:
    """The interfaces stage alone (a module reload, or the recovery of one)."""
    scope = RestoreScope(bridges=(), module_reloaded=module_reloaded)
    return stages.stage("interfaces").restore(snapshot, scope)


def prepare_restore(
    path: Path,
    bridge_names: Sequence[str] = (),
    allow_foreign: bool = False,
) -> tuple[store.Snapshot, list[flows.BridgeRecord], list[flows.BridgeRecord]]:
    """The verified snapshot, the bridges a restore of it takes, and those of
    them that the switch no longer has.

    A bridge named that the switch does not have is refused before anything
    is touched. Without names, the bridges gone are returned apart: one
    deleted since the save does not keep the others from being restored.
    """
    snapshot = store.load(path, allow_foreign=allow_foreign)
    records = flows.records(snapshot)
    by_name = {r.name: r for r in records}
    unsaved = flows.failed_bridges(snapshot)
    missing = [n for n in bridge_names if n not in by_name]
    if missing:
        why = f" (its save failed: {unsaved[missing[0]]})" if missing[0] in unsaved else ""
        raise UsageError(message=f"bridge {missing[0]!r} is not in snapshot {path}{why}")
    for name in [n for n in unsaved if not bridge_names]:
        log.warning("bridge %r is not in the snapshot: its save failed (%s)", name, unsaved[name])
    selected = [by_name[n] for n in bridge_names] if bridge_names else records
    existing = {b.name for b in ovs.bridges()}
    gone = [r for r in selected if r.name not in existing]
    if gone and bridge_names:
        raise BridgeNotFound(bridge=gone[0].name)
    return snapshot, [r for r in selected if r.name in existing], gone


def prepare_pinned(path: Path) -> tuple[store.Snapshot, list[flows.BridgeRecord]]:
    """`prepare_restore` for a restart's restore (bridges gone are left out,
    with a warning: the operator deleted them while the switch was down),
    with the flows stage's checks done before the switch is touched."""
    snapshot, selected, gone = prepare_restore(path)
    if gone:
        log.warning("bridges no longer present, not restored: %s",
                    ", ".join(r.name for r in gone))
    # The files only: the switch may not run yet (`restore_pinned` asks it).
    for record in selected:
        flows.check_framing(snapshot, record)
    return snapshot, selected


# The bridge's own port (OpenFlow 1.0, 1.1+): it is never pinned.
OFPP_LOCAL = (0xFFFE, 0xFFFFFFFE)


def restore_pinned(snapshot: store.Snapshot, records: Sequence[flows.BridgeRecord],
                   bundles: dict[str, PreparedBundle] | None = None,
                   wait: float = 0.0,
                   served: Callable[[], None] | None = None) -> list[flows.BridgeRestore]:
    """Put interfaces back at their saved OpenFlow port numbers, then restore
    the bridges (with the bundles prepared for them, if any).

    With `wait`, first wait up to that long for ovs-vswitchd to serve each
    bridge: one that it still does not serve then is reported failed (and
    transient if ovs-vswitchd is no longer running), the others are restored.
    `served` is called once the wait is over, before anything is restored.
    """
    unserved = _unserved_bridges([r.name for r in records], wait) if wait else {}
    if served is not None:
        served()
    present = [r for r in records if r.name not in unserved]
    if (refused := _refused_by_switch(snapshot, present)) is not None:
        # Nothing was touched: every bridge failed, with the same reason.
        return [flows.BridgeRestore(r.name, False, r.counts, str(refused),
                                    refused.fields["reason"]) for r in records]
    wanted = {p.name: p.port_no for r in present for p in r.ports if p.port_no not in OFPP_LOCAL}
    moved = ovs.pin_ofports(wanted)
    if moved:
        log.warning("pinned OpenFlow port numbers of %s", ", ".join(moved))
    results = flows.restore(snapshot, present, bundles)
    if unserved:
        gone = not ovs.daemon_running("ovs-vswitchd")
        results += [flows.BridgeRestore(r.name, False, r.counts,
                                        f"restore of bridge {r.name!r} failed: {unserved[r.name]}",
                                        unserved[r.name], gone)
                    for r in records if r.name in unserved]
    return results


def _refused_by_switch(snapshot: store.Snapshot, records: Sequence[flows.BridgeRecord]
                       ) -> SwitchRefusesSnapshot | None:
    """Why the switch (older than the snapshot's Open vSwitch) does not take
    one of the bridges (see flows_rollback); None if it takes them all."""
    try:
        flows_rollback.check(snapshot, records)
    except SwitchRefusesSnapshot as e:
        return e
    return None


def _unserved_bridges(names: Sequence[str], timeout: float) -> dict[str, str]:
    """The bridges ovs-vswitchd does not serve within `timeout`, with why."""
    deadline = time.monotonic() + timeout
    unserved = {}
    for name in names:
        try:
            ovs.wait_for_bridges([name], max(0.0, deadline - time.monotonic()))
        except OvsUnreachable:
            unserved[name] = (f"ovs-vswitchd did not serve {ovs.mgmt_socket(name)} "
                              f"within {timeout:.0f}s")
    return unserved


def prepare_bundles(snapshot: store.Snapshot, records: Sequence[flows.BridgeRecord]
                    ) -> dict[str, PreparedBundle]:
    """Encode, before the switch stops, what will fill its empty bridges."""
    return flows.prepare(snapshot, records)


def restore_snapshot(
    path: Path,
    bridge_names: Sequence[str] = (),
    stage_names: Sequence[str] = (),
    allow_foreign: bool = False,
    firewall: bool = False,
) -> RestoreOutcome:
    """Restore the stages a snapshot holds (or those named), in registry order,
    each checked before any is run, then verified once all have run. The
    firewall only with `firewall` (or named): the host's firewall is not
    ovs-service's to replace unless asked."""
    snapshot, selected, gone = prepare_restore(path, bridge_names, allow_foreign)
    held = [*snapshot.manifest.stages, *(["firewall"] if firewall else [])]
    wanted = _check_stages([*stage_names, *(["firewall"] if firewall and stage_names else [])],
                           stages.names(), default=[n for n in stages.names() if n in held])
    scope = RestoreScope(bridges=[r.name for r in selected],
                         named=set(bridge_names) if bridge_names else None)
    chosen = [stages.stage(name) for name in wanted]
    for stage in chosen:  # before anything is touched
        stage.check(snapshot, scope)
    reports = [stage.restore(snapshot, scope) for stage in chosen]
    reports += [r for stage in chosen if (r := stage.verify(snapshot, scope)) is not None]
    return RestoreOutcome(snapshot.path, _with_gone(reports, gone))


def end_failure(root: Path, outcome: RestoreOutcome) -> bool:
    """A whole restore of the snapshot whose restore had failed (what `status`
    tells the operator to run once the cause is fixed) ends that failure: the
    store forgets it, so status and the metrics stop saying so. True if so."""
    failed = store.failed_snapshot(root)
    if not outcome.ok or failed is None or failed.resolve() != outcome.snapshot.resolve():
        return False
    store.clear_failed(root)
    return True


def _with_gone(reports: Sequence[Report], gone: Sequence[flows.BridgeRecord]
               ) -> tuple[Report, ...]:
    """The reports, with each bridge the switch no longer has failed among
    the bridges restored by the flows stage (if it ran)."""
    if not gone:
        return tuple(reports)
    reason = "the bridge does not exist on the switch"
    failed = tuple(flows.BridgeRestore(r.name, False, r.counts,
                                       str(RestoreFailed(bridge=r.name, reason=reason)), reason)
                   for r in gone)
    if not any(isinstance(r, flows.FlowsReport) for r in reports):
        return tuple(reports)  # the flows were not asked for: nothing of the bridge failed
    return tuple(replace(r, results=(*r.results, *failed)) if isinstance(r, flows.FlowsReport)
                 else r for r in reports)
