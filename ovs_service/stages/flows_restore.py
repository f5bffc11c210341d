"""Putting a bridge's saved OpenFlow state back.

Restore order: TLV map, meters, then flows and groups of a bridge as one
atomic bundle (when the version has bundles), then port settings. If the
bundle fails, the TLV map and meters are put back as they were, so a failed
restore leaves the bridge as it found it. Bundles for empty bridges can be
encoded beforehand (`prepare`), while the switch is still stopped.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ovs_service import journal, ovs
from ovs_service.errors import (
    OvsServiceError,
    OvsUnreachable,
    RestoreFailed,
    SwitchGone,
)
from ovs_service.log import timed
from ovs_service.openflow import dump, tablediff
from ovs_service.openflow import ofproto as ofp
from ovs_service.openflow import state as st
from ovs_service.openflow.connection import Connection
from ovs_service.openflow.messages import PreparedBundle, describe, prepare_bundle
from ovs_service.openflow.ofproto import OF10, OF13
from ovs_service.stages.flows_snapshot import KINDS, BridgeRecord, read_messages
from ovs_service.store import Snapshot, SnapshotFile

log = logging.getLogger(__name__)

METER_EXISTS = (12, 1)  # OFPET_METER_MOD_FAILED, OFPMMFC_METER_EXISTS
MAX_ROUNDS = 4


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
            journal.bridge_fault("restore", record.name)
            restore_bridge(snapshot, record, prepared)
    except OvsServiceError as e:
        log.debug("%s", e)
        reason = ovs.failure_reason(record.name, e)
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
    current = dump.current_tlv_maps(conn)
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
    before = {m.meter_id: m for m in dump.current_meters(conn)}
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
             for m in dump.current_meters(conn) if m.meter_id not in saved]
    if extra:
        conn.send_all(extra)


def _undo(conn: Connection, messages: list[bytes]) -> None:
    if messages:
        for _, error in conn.send_all(messages):
            log.warning("%s: could not undo a change: %s", conn.bridge, describe(error))



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
    live_groups = list(dump.group_mods(conn))
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
                version, dump.flow_mods(conn), lambda: read_messages(flows))
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
        live_groups = list(dump.group_mods(conn))
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
    count = dump.flow_count(conn)
    if count > 1:
        return False
    return count == 0 or all(st.is_default_flow(conn.version, m) for m in dump.flow_mods(conn))


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
        for port in dump.current_ports(conn)
        if port.name in saved and port.config & mask != saved[port.name]
    ]
    errors = conn.send_all(changes)
    if errors:
        raise _fail(conn, record, errors, changes)
