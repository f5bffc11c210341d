"""Save and restore as whole operations: the stages, the store, the checks.

The CLI and the unit hooks both call these; neither talks to a stage directly.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ovs_service import kmod, ovs, store
from ovs_service.errors import (
    BridgeNotFound,
    OvsUnreachable,
    RestoreFailed,
    RestorePartsFailed,
    SaveIncomplete,
    SnapshotInvalid,
    SnapshotWriteFailed,
    UsageError,
)
from ovs_service.openflow.messages import PreparedBundle
from ovs_service.stages import datapaths, flows

if TYPE_CHECKING:
    from ovs_service.stages.firewall import FirewallSnapshot

log = logging.getLogger(__name__)

STAGES = ("flows", "datapaths", "interfaces")
DEFAULT_STAGES = ("flows", "datapaths")  # interfaces matter when the kernel module reloads
DATAPATHS_FILE = "datapaths/datapaths.json"
INTERFACES_FILE, FIREWALL_FILE = "interfaces/interfaces.json", "interfaces/firewall.json"


def _check_stages(stages: Sequence[str], default: Sequence[str] = DEFAULT_STAGES) -> list[str]:
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UsageError(message=f"unknown stage {unknown[0]!r} (known: {', '.join(STAGES)})")
    return [s for s in STAGES if s in stages] if stages else list(default)


def internal_interfaces() -> list[str]:
    """OVS internal interfaces: bridge local ports and `type=internal` interfaces."""
    return sorted(i.name for i in ovs.interfaces() if i.type == "internal")


def save_interfaces_stage(writer: store.SnapshotWriter) -> None:
    from ovs_service.stages import firewall, interfaces

    with writer.open(INTERFACES_FILE) as f:
        f.write(interfaces.save_interfaces(internal_interfaces()).to_json().encode())
    with writer.open(FIREWALL_FILE) as f:
        f.write(firewall.save_firewall().to_json().encode())


def take_snapshot(
    bridge_names: Sequence[str] = (),
    stages: Sequence[str] = (),
    to: Path | None = None,
    store_dir: Path | None = None,
    pending: bool = False,
) -> store.Snapshot:
    """Save the named bridges (or all) into a new snapshot and return it.

    Bridges are saved one by one: if some cannot be, the snapshot of the
    others is still written (the manifest's `flows_failed` says which and
    why), and SaveIncomplete is raised with it. If none can be, the first
    bridge's error is raised and nothing is written. With `pending`, the
    snapshot is marked for the next start of ovs-vswitchd before the store is
    pruned (which never takes the new snapshot).
    """
    stages = _check_stages(stages)
    store_dir = store_dir or store.state_dir()
    bridges = ovs.bridges(bridge_names)
    version = ovs.ovs_version()
    writer = store.SnapshotWriter(to or store.new_snapshot_path(store_dir))
    try:
        records, failures = flows.save(writer, bridges) if "flows" in stages else ([], [])
        if failures and not records:
            raise failures[0].error
        failed = {f.bridge: f.reason for f in failures}
        if "datapaths" in stages:
            dps = datapaths.save()
            writer.write_json(DATAPATHS_FILE, dps.to_json())
        if "interfaces" in stages:
            save_interfaces_stage(writer)
        snapshot = writer.commit(
            ovs_version=version,
            stages=stages,
            bridges=[b.name for b in bridges if b.name not in failed],
            extra={"flows": {r.name: r.counts for r in records},
                   **({"flows_failed": failed} if failed else {})},
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
    if failures:
        more = f" (and {len(failures) - 1} other bridges)" if len(failures) > 1 else ""
        raise SaveIncomplete(bridge=failures[0].bridge, reason=failures[0].reason, more=more,
                             path=snapshot.path, snapshot=snapshot)
    return snapshot


@dataclass(frozen=True)
class RestoreOutcome:
    snapshot: Path
    bridges: list[flows.BridgeRestore]
    port_mismatches: list[datapaths.Mismatch] = field(default_factory=list)
    interfaces: dict[str, Any] | None = None  # the interfaces stage's report
    firewall: dict[str, Any] | None = None  # the firewall's report, if asked for

    @property
    def ok(self) -> bool:
        return all(b.ok for b in self.bridges) and all(
            report is None or bool(report.get("ok")) for report in (self.interfaces, self.firewall)
        )


def load_datapaths(snapshot: store.Snapshot) -> datapaths.DatapathsSnapshot | None:
    if DATAPATHS_FILE not in snapshot.manifest.files:
        return None
    try:
        return datapaths.DatapathsSnapshot.from_json(
            json.loads(snapshot.file(DATAPATHS_FILE).read_text()))
    except (ValueError, KeyError, TypeError) as e:
        reason = f"datapaths stage unreadable ({e})"
        raise SnapshotInvalid(path=snapshot.path, reason=reason) from None


def recreate_kernel_datapaths(snapshot: store.Snapshot) -> list[str] | None:
    """After a module reload was interrupted, before ovs-vswitchd starts: the
    module loaded and the snapshot's kernel datapaths back with their ports at
    the saved numbers (only what is missing). What was done and what could
    not be, a line each; None if the snapshot has no kernel datapaths."""
    saved = load_datapaths(snapshot)
    if saved is None or not saved.system_datapaths:
        return None
    done = [f"loaded the {kmod.MODULE} module"] if kmod.ensure_loaded() else []
    made = datapaths.recreate_kernel_datapaths(saved)
    if made.ports:
        done.append(f"re-created kernel datapath ports {', '.join(made.ports)}")
    return done + made.problems


def restore_interfaces_stage(snapshot: store.Snapshot, firewall: bool = False) -> dict[str, Any]:
    """Put back internal interfaces' kernel state; a report, never a raise.

    With `firewall` (a module reload, or the recovery of one), also the nft
    tables that bind those interfaces by index or as a device, which their
    re-creation broke; nothing else of the firewall, and not at all if the
    snapshot was taken before the host last booted: then it is an old copy.
    """
    from ovs_service.stages import firewall as fw
    from ovs_service.stages import interfaces

    _require_interfaces_stage(snapshot)
    saved = interfaces.InterfacesSnapshot.from_json(snapshot.file(INTERFACES_FILE).read_text())
    report = interfaces.restore_interfaces(saved).to_dict()
    fw_report: dict[str, Any] | None = None
    if firewall:
        rules = _firewall_snapshot(snapshot)
        if fw.saved_this_boot(rules):
            names = [i.name for i in saved.interfaces] + list(saved.missing)
            fw_report = fw.restore_firewall(rules, interfaces=names).to_dict()
        else:
            log.warning("firewall not restored: %s was saved before the host last booted",
                        snapshot.path)
            fw_report = {"ok": True, "parts": [], "skipped": "saved before the last boot"}
    return {"ok": bool(report["ok"] and (fw_report is None or fw_report["ok"])),
            "interfaces": report, "firewall": fw_report}


def _firewall_snapshot(snapshot: store.Snapshot) -> FirewallSnapshot:
    from ovs_service.stages import firewall as fw

    if FIREWALL_FILE not in snapshot.manifest.files:
        raise SnapshotInvalid(path=snapshot.path, reason="has no firewall rules")
    return fw.FirewallSnapshot.from_json(snapshot.file(FIREWALL_FILE).read_text())


def restore_firewall_stage(snapshot: store.Snapshot) -> dict[str, Any]:
    """Replace the firewall tables the snapshot holds with its copies, as
    asked for explicitly (`restore --firewall`); tables it does not hold stay."""
    from ovs_service.stages import firewall as fw

    return fw.restore_firewall(_firewall_snapshot(snapshot)).to_dict()


def _require_interfaces_stage(snapshot: store.Snapshot) -> None:
    missing = [f for f in (INTERFACES_FILE, FIREWALL_FILE) if f not in snapshot.manifest.files]
    if missing:
        reason = f"has no interfaces stage ({missing[0]} is not in its manifest)"
        raise SnapshotInvalid(path=snapshot.path, reason=reason)


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
    unsaved = {str(k): str(v) for k, v in snapshot.manifest.extra.get("flows_failed", {}).items()}
    missing = [n for n in bridge_names if n not in by_name]
    if missing:
        why = f" (its save failed: {unsaved[missing[0]]})" if missing[0] in unsaved else ""
        raise UsageError(message=f"bridge {missing[0]!r} is not in snapshot {path}{why}")
    for name in [n for n in unsaved if not bridge_names]:
        log.warning("bridge %r is not in the snapshot: its save failed (%s)", name, unsaved[name])
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


# The bridge's own port (OpenFlow 1.0, 1.1+): it is never pinned.
OFPP_LOCAL = (0xFFFE, 0xFFFFFFFE)


def restore_pinned(snapshot: store.Snapshot, records: Sequence[flows.BridgeRecord],
                   bundles: dict[str, PreparedBundle] | None = None,
                   wait: float = 0.0) -> list[flows.BridgeRestore]:
    """Put interfaces back at their saved OpenFlow port numbers, then restore
    the bridges (with the bundles prepared for them, if any).

    With `wait`, first wait up to that long for ovs-vswitchd to serve each
    bridge: one that it still does not serve then is reported failed (and
    transient if ovs-vswitchd is no longer running), the others are restored.
    """
    unserved = _unserved_bridges([r.name for r in records], wait) if wait else {}
    present = [r for r in records if r.name not in unserved]
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


def restore_snapshot(
    path: Path,
    bridge_names: Sequence[str] = (),
    stages: Sequence[str] = (),
    allow_foreign: bool = False,
    firewall: bool = False,
) -> RestoreOutcome:
    """Restore the stages a snapshot holds (or those named): ports pinned first,
    then flows, then interfaces; port numbers verified at the end. The
    firewall only with `firewall`: the host's firewall is not ovs-service's
    to replace unless asked."""
    snapshot, selected = prepare_restore(path, bridge_names, allow_foreign)
    if firewall:  # refused before anything is touched
        _firewall_snapshot(snapshot)
    wanted = _check_stages(stages, default=snapshot.manifest.stages)
    if "interfaces" in wanted:
        _require_interfaces_stage(snapshot)  # before anything is touched
    dps = load_datapaths(snapshot) if "datapaths" in wanted else None
    if dps is not None:
        moved = datapaths.pin_ofports(dps, set(bridge_names) if bridge_names else None)
        if moved:
            log.warning("pinned OpenFlow port numbers of %s", ", ".join(moved))
    results = flows.restore(snapshot, selected) if "flows" in wanted else []
    report = restore_interfaces_stage(snapshot) if "interfaces" in wanted else None
    fw_report = restore_firewall_stage(snapshot) if firewall else None
    mismatches = []
    if dps is not None:
        restored = {r.name for r in selected}
        names = [i.name for i in dps.interfaces if i.bridge in restored]
        mismatches = datapaths.verify(dps, names) if names else []
    return RestoreOutcome(snapshot.path, results, mismatches, report, fw_report)


def raise_for(outcome: RestoreOutcome) -> None:
    """Raise for the first thing that failed: a bridge, else a part beside them."""
    failed = [b for b in outcome.bridges if not b.ok]
    if failed:
        first = failed[0]
        raise RestoreFailed(
            bridge=first.bridge,
            reason=first.reason
            + (f" (and {len(failed) - 1} other bridges)" if len(failed) > 1 else ""),
        )
    parts = {name: report for name, report in
             (("interfaces", outcome.interfaces), ("firewall", outcome.firewall))
             if report is not None and not report.get("ok")}
    if parts:
        reasons = [_first_problem(report) for report in parts.values()]
        raise RestorePartsFailed(parts=" and ".join(parts), reason="; ".join(reasons))


def _first_problem(report: dict[str, Any]) -> str:
    """One line for a failed part: its first problem, or its first failed piece.

    The interfaces stage's report nests the interfaces' and (within a module
    reload) the firewall's; the firewall's own lists its parts.
    """
    for problem in report.get("problems", []):
        return f"{problem.get('subject')}: {problem.get('action')}: {problem.get('message')}"
    for part in report.get("parts", []):
        if part.get("status") == "failed":
            return f"{part.get('part')}: {part.get('detail')}"
    for name in ("interfaces", "firewall"):
        nested = report.get(name)
        if isinstance(nested, dict) and not nested.get("ok", True):
            return f"{name}: {_first_problem(nested)}"
    return "see the report"
