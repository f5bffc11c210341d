"""The flows stage: a bridge's OpenFlow state, saved and restored exactly.

Saved per bridge, at the bridge's own OpenFlow version: the TLV map, meters,
groups, flows of every table, and the port settings `mod-port` changes. Each
is stored as the OpenFlow messages that re-create it, derived byte for byte
from the switch's replies (see `openflow.state`), streamed to disk.

Restore order: TLV map, meters, then flows and groups of a bridge as one
atomic bundle (when the version has bundles), then port settings. If the
bundle fails, the TLV map and meters are put back as they were, so a failed
restore leaves the bridge as it found it.

This module holds the save and the stage; `stages.flows_snapshot` what a
snapshot holds and its reading, `stages.flows_restore` the putting back,
`openflow.dump` what a bridge holds now. Their public names are importable
from here too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from ovs_service import ovs
from ovs_service.errors import OvsServiceError, RestoreFailed, UnsupportedProtocols
from ovs_service.openflow import dump
from ovs_service.openflow import state as st
from ovs_service.openflow.connection import Connection
from ovs_service.openflow.ofproto import OF10, VERSION_NAME, VERSIONS_SPOKEN
from ovs_service.stages import flows_rollback
from ovs_service.stages.base import RestoreScope, SaveResult, SaveScope, Stage
from ovs_service.stages.flows_restore import BridgeRestore as BridgeRestore
from ovs_service.stages.flows_restore import prepare as prepare
from ovs_service.stages.flows_restore import restore as restore
from ovs_service.stages.flows_snapshot import KINDS as KINDS
from ovs_service.stages.flows_snapshot import STAGE as STAGE
from ovs_service.stages.flows_snapshot import BridgeRecord as BridgeRecord
from ovs_service.stages.flows_snapshot import PortSetting as PortSetting
from ovs_service.stages.flows_snapshot import check_framing as check_framing
from ovs_service.stages.flows_snapshot import failed_bridges as failed_bridges
from ovs_service.stages.flows_snapshot import read_messages as read_messages
from ovs_service.stages.flows_snapshot import records as records
from ovs_service.store import Snapshot, SnapshotWriter

log = logging.getLogger(__name__)


def choose_version(bridge: ovs.Bridge) -> int:
    """The highest OpenFlow version the bridge enables that we can speak."""
    usable = bridge.versions & VERSIONS_SPOKEN
    if not usable:
        raise UnsupportedProtocols(bridge=bridge.name, protocols=",".join(bridge.protocols))
    return max(usable)


# -- saving -----------------------------------------------------------------------

@dataclass(frozen=True)
class SaveFailure:
    """A bridge that could not be saved, and why; the others are saved regardless."""

    bridge: str
    reason: str
    error: OvsServiceError


def save(writer: SnapshotWriter, bridges: Sequence[ovs.Bridge]
         ) -> tuple[list[BridgeRecord], list[SaveFailure]]:
    """Save every bridge into the snapshot being written, in parallel.

    A bridge that cannot be saved (a version we do not speak, an error from
    the switch) leaves nothing in the snapshot and is returned as a failure.
    """
    jobs = [(b, f"{STAGE}/{i:04d}") for i, b in enumerate(bridges)]
    with ThreadPoolExecutor(max_workers=min(8, len(jobs) or 1)) as pool:
        results = list(pool.map(lambda job: _save_one(writer, *job), jobs))
    records = [r for r in results if isinstance(r, BridgeRecord)]
    failures = [r for r in results if isinstance(r, SaveFailure)]
    writer.write_json(f"{STAGE}/index.json", [r.to_doc() for r in records])
    return records, failures


def _save_one(writer: SnapshotWriter, bridge: ovs.Bridge,
              directory: str) -> BridgeRecord | SaveFailure:
    try:
        return save_bridge(writer, bridge, directory)
    except OvsServiceError as e:
        log.debug("%s", e)
        # What was written of the bridge goes: the snapshot holds it whole or not at all.
        writer.discard(directory)
        reason = ovs.failure_reason(bridge.name, e)
        for named in (f"bridge {bridge.name!r}: ", f"{bridge.name}: "):
            reason = reason.removeprefix(named)
        return SaveFailure(bridge.name, reason, e)


def save_bridge(writer: SnapshotWriter, bridge: ovs.Bridge, directory: str) -> BridgeRecord:
    version = choose_version(bridge)
    port_version = OF10 if OF10 in bridge.versions else version
    counts: dict[str, int] = {}
    catchall = False

    def flow_mods(conn: Connection) -> Iterator[bytes]:
        nonlocal catchall
        for message in dump.flow_mods(conn):
            # Table and priority bytes first: a function call per flow costs
            # a tenth of the save.
            if not message[24] and not message[30] and not message[31]:
                catchall = catchall or st.is_catchall(version, message)
            yield message

    with Connection(ovs.mgmt_socket(bridge.name), version, bridge.name) as conn:
        counts["tlv"] = _write(writer, f"{directory}/tlv.ofp", dump.tlv_mods(conn))
        counts["meters"] = _write(writer, f"{directory}/meters.ofp", dump.meter_mods(conn))
        counts["groups"] = _write(writer, f"{directory}/groups.ofp", dump.group_mods(conn))
        counts["flows"] = _write(writer, f"{directory}/flows.ofp", flow_mods(conn))
    with Connection(ovs.mgmt_socket(bridge.name), port_version, bridge.name) as conn:
        ports = [PortSetting(p.name, p.port_no, p.config) for p in dump.current_ports(conn)]
    log.debug("saved %s at %s: %s", bridge.name, VERSION_NAME[version], counts)
    return BridgeRecord(bridge.name, version, directory, counts, ports, port_version, catchall)


def _write(writer: SnapshotWriter, relpath: str, messages: Iterable[bytes]) -> int:
    count = 0
    with writer.open(relpath) as f:
        for message in messages:
            f.write(message)
            count += 1
    return count


# -- the stage --------------------------------------------------------------------

@dataclass(frozen=True)
class FlowsReport:
    """Each bridge restored, or not and why."""

    results: tuple[BridgeRestore, ...]
    key: ClassVar[str] = "bridges"

    @property
    def ok(self) -> bool:
        return all(b.ok for b in self.results)

    def __str__(self) -> str:
        return "\n".join(
            f"{b.bridge}: {'restored' if b.ok else 'FAILED'} "
            f"({b.counts.get('flows', 0)} flows, {b.counts.get('groups', 0)} groups, "
            f"{b.counts.get('meters', 0)} meters){'' if b.ok else ': ' + b.error}"
            for b in self.results)

    def to_doc(self) -> list[dict[str, Any]]:
        return [asdict(b) for b in self.results]

    def error(self) -> OvsServiceError | None:
        failed = [b for b in self.results if not b.ok]
        if not failed:
            return None
        more = f" (and {len(failed) - 1} other bridges)" if len(failed) > 1 else ""
        return RestoreFailed(bridge=failed[0].bridge, reason=failed[0].reason + more)


def selected_records(snapshot: Snapshot, bridges: Sequence[str]) -> list[BridgeRecord]:
    """The snapshot's records of `bridges`, in the snapshot's order."""
    wanted = set(bridges)
    return [r for r in records(snapshot) if r.name in wanted]


class FlowsStage(Stage):
    """Every bridge's flows, groups, meters, TLV map and port settings."""

    name = STAGE

    def save(self, writer: SnapshotWriter, scope: SaveScope) -> SaveResult:
        saved, failures = save(writer, scope.bridges)
        if failures and not saved:
            raise failures[0].error
        failed = {f.bridge: f.reason for f in failures}
        extra: dict[str, Any] = {"flows": {r.name: r.counts for r in saved}}
        if failed:
            extra["flows_failed"] = failed
        return SaveResult(extra, failed, [f.error for f in failures])

    def check(self, snapshot: Snapshot, scope: RestoreScope) -> None:
        selected = selected_records(snapshot, scope.bridges)
        for record in selected:
            check_framing(snapshot, record)
        flows_rollback.check(snapshot, selected)  # last: it asks the switch

    def restore(self, snapshot: Snapshot, scope: RestoreScope) -> FlowsReport:
        return FlowsReport(tuple(restore(snapshot, selected_records(snapshot, scope.bridges))))
