"""The flows stage: a bridge's OpenFlow state, saved and restored exactly.

Saved per bridge, at the bridge's own OpenFlow version: the TLV map, meters,
groups, flows of every table, and the port settings `mod-port` changes. Each
is stored as the OpenFlow messages that re-create it, derived byte for byte
from the switch's replies (see `openflow.state`), streamed to disk.

Restore order: TLV map, meters, then flows and groups of a bridge as one
atomic bundle (when the version has bundles), then port settings. If the
bundle fails, the TLV map and meters are put back as they were, so a failed
restore leaves the bridge as it found it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from ovs_service import codec, ovs
from ovs_service.errors import (
    OvsServiceError,
    OvsUnreachable,
    RestoreFailed,
    SnapshotInvalid,
    SwitchGone,
    UnsupportedProtocols,
)
from ovs_service.log import timed
from ovs_service.openflow import ofproto as ofp
from ovs_service.openflow import state as st
from ovs_service.openflow import tablediff
from ovs_service.openflow.connection import Connection
from ovs_service.openflow.messages import HEADER, PreparedBundle, describe, prepare_bundle
from ovs_service.openflow.ofproto import OF10, OF13, VERSION_NAME, VERSIONS_SPOKEN
from ovs_service.stages.base import RestoreScope, SaveResult, SaveScope, Stage
from ovs_service.store import Snapshot, SnapshotFile, SnapshotWriter

log = logging.getLogger(__name__)

STAGE = "flows"
KINDS = ("tlv", "meters", "groups", "flows")
METER_EXISTS = (12, 1)
MAX_ROUNDS = 4  # OFPET_METER_MOD_FAILED, OFPMMFC_METER_EXISTS


def choose_version(bridge: ovs.Bridge) -> int:
    """The highest OpenFlow version the bridge enables that we can speak."""
    usable = bridge.versions & VERSIONS_SPOKEN
    if not usable:
        raise UnsupportedProtocols(bridge=bridge.name, protocols=",".join(bridge.protocols))
    return max(usable)


@dataclass(frozen=True)
class PortSetting:
    name: str
    port_no: int
    config: int


@dataclass(frozen=True)
class BridgeRecord:
    """What a snapshot holds for one bridge (its `bridge.json`)."""

    name: str
    version: int
    directory: str
    counts: dict[str, int]
    ports: list[PortSetting]
    port_version: int  # OpenFlow 1.0 where enabled: only it shows no-flood, no-stp...
    # Whether a saved flow has the default flow's key (table 0, priority 0,
    # match all), whose add then replaces a bridge's default flow in place;
    # None in snapshots that did not record it.
    catchall: bool | None = None

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = codec.to_doc(self)
        return doc

    @classmethod
    def from_doc(cls, doc: object, *, where: codec.Where) -> BridgeRecord:
        record = codec.from_doc(cls, doc, where=where)
        record.check(where)
        return record

    def check(self, where: codec.Where, path: str = "") -> None:
        """Versions pick message layouts: one we do not speak is refused here,
        before any message of the snapshot is read, not met mid-restore."""
        for name in ("version", "port_version"):
            if getattr(self, name) not in VERSIONS_SPOKEN:
                raise where.invalid(path + name, f"OpenFlow version {getattr(self, name)!r} "
                                                 "is not one ovs-service speaks")


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
        reason = _reason(bridge.name, e)
        for named in (f"bridge {bridge.name!r}: ", f"{bridge.name}: "):
            reason = reason.removeprefix(named)
        return SaveFailure(bridge.name, reason, e)


def _reason(bridge: str, e: OvsServiceError) -> str:
    """What went wrong with a bridge, for a line that already names it."""
    reason = str(e.fields.get("reason") or e.fields.get("message") or e)
    # The connection to its management socket failed: say which socket.
    return ovs.unserved(bridge, reason) if isinstance(e, OvsUnreachable) else reason


def save_bridge(writer: SnapshotWriter, bridge: ovs.Bridge, directory: str) -> BridgeRecord:
    version = choose_version(bridge)
    port_version = OF10 if OF10 in bridge.versions else version
    counts: dict[str, int] = {}
    catchall = False

    def flow_mods(conn: Connection) -> Iterator[bytes]:
        nonlocal catchall
        for message in _flow_mods(conn):
            # Table and priority bytes first: a function call per flow costs
            # a tenth of the save.
            if not message[24] and not message[30] and not message[31]:
                catchall = catchall or st.is_catchall(version, message)
            yield message

    with Connection(ovs.mgmt_socket(bridge.name), version, bridge.name) as conn:
        counts["tlv"] = _write(writer, f"{directory}/tlv.ofp", _tlv_mods(conn))
        counts["meters"] = _write(writer, f"{directory}/meters.ofp", _meter_mods(conn))
        counts["groups"] = _write(writer, f"{directory}/groups.ofp", _group_mods(conn))
        counts["flows"] = _write(writer, f"{directory}/flows.ofp", flow_mods(conn))
    with Connection(ovs.mgmt_socket(bridge.name), port_version, bridge.name) as conn:
        ports = [PortSetting(p.name, p.port_no, p.config) for p in current_ports(conn)]
    log.debug("saved %s at %s: %s", bridge.name, VERSION_NAME[version], counts)
    return BridgeRecord(bridge.name, version, directory, counts, ports, port_version, catchall)


def _write(writer: SnapshotWriter, relpath: str, messages: Iterable[bytes]) -> int:
    count = 0
    with writer.open(relpath) as f:
        for message in messages:
            f.write(message)
            count += 1
    return count


def _tlv_mods(conn: Connection) -> Iterator[bytes]:
    maps = current_tlv_maps(conn)
    if maps:
        yield st.tlv_table_mod(conn.version, maps)


def current_tlv_maps(conn: Connection) -> bytes:
    reply = conn.request(st.tlv_table_request(conn.version), ofp.OFPT_EXPERIMENTER)
    return st.tlv_maps(reply.data)


def _meter_mods(conn: Connection) -> Iterator[bytes]:
    for meter in current_meters(conn):
        yield meter.mod(conn.version)


def current_meters(conn: Connection) -> list[st.Meter]:
    if conn.version < OF13:
        return []
    return [m for body in conn.multipart(st.meter_config_request()) for m in st.meters(body)]


def _group_mods(conn: Connection) -> Iterator[bytes]:
    for body in conn.multipart(st.group_desc_request(conn.version)):
        yield from st.group_mods(conn.version, body)


def _flow_mods(conn: Connection) -> Iterator[bytes]:
    for body in conn.multipart(st.flow_stats_request(conn.version)):
        yield from st.flow_mods(conn.version, body)


def current_ports(conn: Connection) -> list[st.PortConfig]:
    request, is_multipart = st.port_desc_request(conn.version)
    if is_multipart:
        return [p for body in conn.multipart(request)
                for p in st.ports_from_desc(conn.version, body)]
    reply = conn.request(request, ofp.OFPT_FEATURES_REPLY)
    return list(st.ports_from_features(conn.version, reply.data))


# -- reading a snapshot ---------------------------------------------------------

def records(snapshot: Snapshot) -> list[BridgeRecord]:
    if f"{STAGE}/index.json" not in snapshot.manifest.files:
        raise SnapshotInvalid(path=snapshot.path, reason="has no flows stage")
    doc, where = codec.read(snapshot.file(f"{STAGE}/index.json"))
    found = codec.from_doc(list[BridgeRecord], doc, where=where)
    for i, record in enumerate(found):
        record.check(where, f"[{i}].")
    return found


def failed_bridges(snapshot: Snapshot) -> dict[str, str]:
    """The bridges the snapshot's save could not take, and why (the manifest says)."""
    failed = snapshot.manifest.extra.get("flows_failed", {})
    if not (isinstance(failed, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in failed.items())):
        raise SnapshotInvalid(path=snapshot.path, reason="manifest.json: extra.flows_failed: "
                              "expected bridge names and reasons")
    return failed


def read_messages(path: SnapshotFile) -> Iterator[bytes]:
    """The OpenFlow messages stored in `path`, streamed."""
    with path.open("rb", buffering=1 << 20) as f:
        while header := f.read(HEADER.size):
            if len(header) < HEADER.size:
                raise ValueError(f"{path.name}: truncated message header")
            length = int.from_bytes(header[2:4], "big")
            rest = f.read(length - HEADER.size) if length > HEADER.size else b""
            if length < HEADER.size or len(rest) != length - HEADER.size:
                raise ValueError(f"{path.name}: truncated message")
            yield header + rest


def check_framing(snapshot: Snapshot, record: BridgeRecord) -> None:
    """Every stored message is whole and of the bridge's version."""
    for kind in KINDS:
        count = 0
        try:
            for message in read_messages(snapshot.file(f"{record.directory}/{kind}.ofp")):
                if message[0] != record.version:
                    raise ValueError(f"{kind}.ofp: message of another OpenFlow version")
                count += 1
        except (OSError, ValueError) as e:
            reason = f"bridge {record.name!r}: {e}"
            raise SnapshotInvalid(path=snapshot.path, reason=reason) from None
        if count != record.counts.get(kind, 0):
            raise SnapshotInvalid(
                path=snapshot.path,
                reason=f"bridge {record.name!r}: {kind} holds {count} messages, "
                f"index says {record.counts.get(kind, 0)}",
            )


# -- restoring ------------------------------------------------------------------

@dataclass(frozen=True)
class BridgeRestore:
    bridge: str
    ok: bool
    counts: dict[str, int]
    error: str = ""  # the whole message
    reason: str = ""  # what the switch refused, without the bridge's name
    transient: bool = False  # the switch went away: trying again later may work


# Bytes of encoded bundles kept in memory at most: with the interpreter and a
# bridge being encoded, the process stays under 100 MiB however big the tables.
PREPARE_BUDGET = 48 << 20


def prepare(snapshot: Snapshot, records: Sequence[BridgeRecord],
            budget: int = PREPARE_BUDGET) -> dict[str, PreparedBundle]:
    """Encode, before the switch stops, the bundles that will fill empty bridges,
    as far as `budget` allows; the rest is streamed from disk as usual."""
    prepared: dict[str, PreparedBundle] = {}
    used = 0
    for record in records:
        if record.version < OF13:
            continue  # no bundles
        files = [snapshot.file(f"{record.directory}/{kind}.ofp") for kind in ("groups", "flows")]
        size = sum(f.stat().st_size for f in files) + 24 * sum(record.counts.values())
        if used + size > budget:
            continue
        # The same messages, in the same order, as `_restore_table`'s fresh path.
        messages = (m for f in files for m in read_messages(f))
        prepared[record.name] = prepare_bundle(
            record.version, itertools.chain(_clear_default(record), messages))
        used += size
    return prepared


def restore(snapshot: Snapshot, selected: Sequence[BridgeRecord],
            prepared: dict[str, PreparedBundle] | None = None) -> list[BridgeRestore]:
    """Restore bridges in parallel; each result says whether its bridge made it."""
    ready = prepared or {}
    with ThreadPoolExecutor(max_workers=min(8, len(selected) or 1)) as pool:
        return list(pool.map(lambda r: _restore_one(snapshot, r, ready.get(r.name)), selected))


def _restore_one(snapshot: Snapshot, record: BridgeRecord,
                 prepared: PreparedBundle | None = None) -> BridgeRestore:
    try:
        with timed("restore-bridge", record.name,
                   record.counts.get("flows", 0) + record.counts.get("groups", 0)):
            restore_bridge(snapshot, record, prepared)
    except OvsServiceError as e:
        log.debug("%s", e)
        reason = _reason(record.name, e)
        transient = isinstance(e, SwitchGone | OvsUnreachable)
        return BridgeRestore(record.name, False, record.counts, str(e), reason, transient)
    except (OSError, ValueError) as e:
        # The snapshot's files, read as the restore goes (checked beforehand):
        # one bridge's trouble is not the others'.
        log.debug("%s: %s", record.name, e, exc_info=True)
        error = RestoreFailed(bridge=record.name, reason=f"cannot read the snapshot ({e})")
        return BridgeRestore(record.name, False, record.counts, str(error), str(e))
    return BridgeRestore(record.name, True, record.counts)


def restore_bridge(snapshot: Snapshot, record: BridgeRecord,
                   prepared: PreparedBundle | None = None) -> None:
    files = {kind: snapshot.file(f"{record.directory}/{kind}.ofp") for kind in KINDS}
    with Connection(ovs.mgmt_socket(record.name), record.version, record.name) as conn:
        undo_tlv = _restore_tlv(conn, record, files["tlv"])
        undo_meters = _restore_meters(conn, record, files["meters"])
        try:
            _restore_table(conn, record, files["groups"], files["flows"], prepared)
        except RestoreFailed:
            _undo(conn, undo_meters + undo_tlv)
            raise
        _delete_unsaved_meters(conn, files["meters"])
        conn.barrier()
    with Connection(ovs.mgmt_socket(record.name), record.port_version, record.name) as conn:
        _restore_ports(conn, record)


def _fail(conn: Connection, record: BridgeRecord, errors: list[tuple[int, bytes]],
          sent: Sequence[bytes] | None = None) -> RestoreFailed:
    index, error = errors[0]
    reason = f"the switch answered {describe(error, brief=True)}"
    if sent is not None and 0 <= index < len(sent) and sent[index]:
        reason += f" to: {describe(sent[index], brief=True)}"
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    return RestoreFailed(bridge=record.name, reason=reason + more)


def _restore_tlv(conn: Connection, record: BridgeRecord, path: SnapshotFile) -> list[bytes]:
    saved = b"".join(st.tlv_maps_of_mod(m) for m in read_messages(path))
    current = current_tlv_maps(conn)
    wanted, have = _tlv_set(saved), _tlv_set(current)
    # Only the mappings that differ are deleted, then added: a clear would
    # take the saved mappings away too, for a moment, and the switch refuses
    # it while flows (or flows being freed) still use a mapping.
    extra = b"".join(sorted(have - wanted))
    missing = b"".join(sorted(wanted - have))
    messages, undo = [], []
    if extra:
        messages.append(st.tlv_table_mod(conn.version, extra, ofp.NXTTMC_DELETE))
    if missing:
        messages.append(st.tlv_table_mod(conn.version, missing))
        undo.append(st.tlv_table_mod(conn.version, missing, ofp.NXTTMC_DELETE))
    if extra:
        undo.append(st.tlv_table_mod(conn.version, extra))
    errors = conn.send_all(messages) if messages else []
    if errors:
        raise _fail(conn, record, errors, messages)
    return undo


def _tlv_set(maps: bytes) -> set[bytes]:
    return {maps[i:i + 8] for i in range(0, len(maps), 8)}


def _restore_meters(conn: Connection, record: BridgeRecord, path: SnapshotFile) -> list[bytes]:
    """Add or modify the saved meters; return the messages that undo that."""
    if conn.version < OF13:
        return []
    before = {m.meter_id: m for m in current_meters(conn)}
    messages, undo = [], []
    for message in read_messages(path):
        meter_id = st.meter_id_of_mod(message)
        old = before.get(meter_id)
        if old is None:
            messages.append(message)
            undo.append(st.delete_meter(conn.version, meter_id))
        elif old.mod(conn.version) != message:
            messages.append(message[:8] + ofp.OFPMC_MODIFY.to_bytes(2, "big") + message[10:])
            undo.append(old.mod(conn.version, ofp.OFPMC_MODIFY))
    errors = conn.send_all(messages)
    if errors:
        _undo(conn, undo)
        raise _fail(conn, record, errors, messages)
    return undo


def _delete_unsaved_meters(conn: Connection, path: SnapshotFile) -> None:
    if conn.version < OF13:
        return
    saved = {st.meter_id_of_mod(m) for m in read_messages(path)}
    extra = [st.delete_meter(conn.version, m.meter_id)
             for m in current_meters(conn) if m.meter_id not in saved]
    if extra:
        conn.send_all(extra)


def _undo(conn: Connection, messages: list[bytes]) -> None:
    if messages:
        for _, error in conn.send_all(messages):
            log.warning("%s: could not undo a change: %s", conn.bridge, describe(error))


def _flow_count(conn: Connection) -> int:
    with timed("flow-count", conn.bridge) as record:
        body = next(iter(conn.multipart(st.aggregate_request(conn.version))))
        record.count = st.aggregate_flow_count(conn.version, body)
    return record.count


def _restore_table(conn: Connection, record: BridgeRecord, groups: SnapshotFile,
                   flows: SnapshotFile,
                   prepared: PreparedBundle | None = None) -> None:
    """Onto an empty bridge (after a restart): every group and flow in one bundle.

    Onto a live bridge: only the difference (see `openflow.tablediff`), in an order that
    never takes a saved flow away: one bundle adds what is missing or changed,
    then what the snapshot lacks is deleted, flow by flow, outside any bundle
    (Open vSwitch 3.1 aborts on some deletions inside bundles: flows whose
    `learn` uses `delete_learned`, groups that bundled flows use). Deletions
    can take saved flows with them (learned cookies, groups), so the table is
    compared again until it matches.
    """
    version = conn.version
    prefix = [st.flow_mod_table_id(version)] if version == OF10 else []
    live_groups = list(_group_mods(conn))
    if not live_groups and _fresh_table(conn):
        def messages() -> Iterator[bytes]:
            yield from prefix
            yield from _clear_default(record)
            yield from read_messages(groups)
            yield from read_messages(flows)
        if prepared is not None and prepared.version == version:
            errors = conn.bundle_prepared(prepared)
            if errors:
                raise _fail(conn, record, errors,
                            _nth_messages(messages(), {i for i, _ in errors}))
            return
        _apply(conn, record, messages)
        return
    for _ in range(MAX_ROUNDS):
        with timed("table-diff", record.name) as diff:
            flow_deletes, flow_adds = tablediff.flow_changes(
                version, _flow_mods(conn), lambda: read_messages(flows))
            diff.count = len(flow_deletes)
        group_deletes, group_changes = tablediff.group_changes(
            version, live_groups, read_messages(groups))
        if group_changes:
            # Changing a group can remove the flows that use it: send every
            # saved flow again, so the bundle either restores them all or fails.
            def flow_adds() -> Iterator[bytes]:
                return read_messages(flows)

        def additions(changes: list[bytes] = group_changes,
                      adds: Callable[[], Iterator[bytes]] = flow_adds) -> Iterator[bytes]:
            yield from prefix
            yield from changes
            yield from adds()

        adding = bool(group_changes) or next(flow_adds(), None) is not None
        if not adding and not flow_deletes and not group_deletes:
            return
        if adding:
            _apply(conn, record, additions)
        deletions = [*flow_deletes, *group_deletes]
        if deletions:
            errors = conn.send_all([*prefix, *deletions])
            if errors:
                raise _fail(conn, record, errors, [*prefix, *deletions])
        live_groups = list(_group_mods(conn))
    raise RestoreFailed(
        bridge=record.name,
        reason=f"the table still differs from the snapshot after {MAX_ROUNDS} rounds "
        "(flows that delete or learn each other?)",
    )


def _clear_default(record: BridgeRecord) -> list[bytes]:
    """What removes the default NORMAL flow from a fresh table, if it is
    there: nothing when a saved flow's add replaces it in place (deleting
    it first would take a saved flow away for a moment)."""
    return [] if record.catchall else [st.delete_all_flows(record.version)]


def _fresh_table(conn: Connection) -> bool:
    """No flows, or only the `priority=0 actions=NORMAL` flow a bridge starts
    with (as after a restart): then the restore replaces the table whole."""
    count = _flow_count(conn)
    if count > 1:
        return False
    return count == 0 or all(st.is_default_flow(conn.version, m) for m in _flow_mods(conn))


def _apply(conn: Connection, record: BridgeRecord,
           messages: Callable[[], Iterator[bytes]]) -> None:
    errors = conn.bundle(messages()) if conn.has_bundles else conn.send_all(messages())
    if errors:
        raise _fail(conn, record, errors, _nth_messages(messages(), {i for i, _ in errors}))


def _nth_messages(messages: Iterator[bytes], wanted: set[int]) -> list[bytes]:
    """A list where only the wanted indexes hold their message (for error text)."""
    out: list[bytes] = []
    last = max(wanted, default=-1)
    for index, message in enumerate(messages):
        if index > last:
            break
        out.append(message if index in wanted else b"")
    return out


def _restore_ports(conn: Connection, record: BridgeRecord) -> None:
    mask = st.port_config_mask(conn.version)
    saved = {p.name: p.config & mask for p in record.ports}
    changes = [
        st.port_mod(conn.version, port, saved[port.name])
        for port in current_ports(conn)
        if port.name in saved and port.config & mask != saved[port.name]
    ]
    errors = conn.send_all(changes)
    if errors:
        raise _fail(conn, record, errors, changes)


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
        for record in selected_records(snapshot, scope.bridges):
            check_framing(snapshot, record)

    def restore(self, snapshot: Snapshot, scope: RestoreScope) -> FlowsReport:
        return FlowsReport(tuple(restore(snapshot, selected_records(snapshot, scope.bridges))))
