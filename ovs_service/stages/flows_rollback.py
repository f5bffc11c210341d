"""A snapshot taken under a newer Open vSwitch than the switch now runs (a
rollback, say 3.5 to 3.1): checked against the switch, every bridge, before
any bridge is touched.

The snapshot records the Open vSwitch version it was taken with (the
manifest's `ovs_version`) and each bridge's OpenFlow version (its record in
the flows index). When the switch is older, or either version is unknown,
each bridge's groups and flows are sent to the switch as one bundle that is
discarded instead of committed: the switch decodes and checks every message
as it is added, and nothing takes effect. One message refused on one bridge
refuses the whole restore, naming that message, before anything is changed
on any bridge (no half restore: one bridge restored and another not).

What a discarded bundle cannot show, and why it is still safe:
- errors that only depend on what the restore puts in place before the
  bundle (a meter a flow uses, a TLV mapping a flow matches) are expected
  here and passed over; such a flow is decoded up to that field only;
- meters and TLV maps cannot go in a bundle: they are checked against what
  the switch says it supports (its meter features: highest meter, flags,
  band types, bands per meter; its TLV table: fields and option space);
- bridges at OpenFlow 1.0 or 1.2 have no bundles: they are not checked
  (said in the log); the restore of each bridge is still all or nothing.
If the real restore of a bridge then fails, that bridge is left as it was
found (see `flows_restore`).
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from ovs_service import ovs
from ovs_service.errors import OpenFlowError, SwitchRefusesSnapshot
from ovs_service.openflow import dump
from ovs_service.openflow import ofproto as ofp
from ovs_service.openflow import state as st
from ovs_service.openflow.connection import Connection
from ovs_service.openflow.messages import describe
from ovs_service.openflow.ofproto import NX_VENDOR_ID, OFP_HEADER_SIZE, VERSION_NAME
from ovs_service.stages.flows_snapshot import BridgeRecord, read_messages
from ovs_service.store import Snapshot, SnapshotFile

log = logging.getLogger(__name__)

# struct ofp_error_msg after the header: type, code; with type
# OFPET_EXPERIMENTER (OpenFlow 1.2+) `code` is the experimenter's code,
# followed by its id.
_TLV_REPLY = struct.Struct(ofp.NX_TLV_TABLE_REPLY_PACK_STR)
_TLV_MAP = struct.Struct(ofp.NX_TLV_MAP_PACK_STR)
_ERROR = struct.Struct("!HH")
_EXPERIMENTER_ID = struct.Struct("!I")
OFPET_EXPERIMENTER = 0xFFFF
OFPET_METER_MOD_FAILED = 12
OFPMMFC_INVALID_METER = 2
NXFMFC_INVALID_TLV_FIELD = 37  # NX1.2+(37), as ovs-ofctl ofp-print reads it
# ofp_flow_mod (1.1+): header, cookie, cookie_mask, then table_id, command,
# idle_timeout, hard_timeout, priority; ofp_group_mod: header, command, type,
# pad, then group_id.
TABLE_ID_OFFSET = OFP_HEADER_SIZE + 16
PRIORITY_OFFSET = TABLE_ID_OFFSET + 6
_PRIORITY = struct.Struct("!H")
GROUP_ID_OFFSET = OFP_HEADER_SIZE + 4
_GROUP_ID = struct.Struct("!I")
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """`3.5.0` (or `3.5.0-1`, `ovs-vswitchd (Open vSwitch) 3.5.0`) as numbers."""
    match = _VERSION.search(text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def needs_check(saved: str, running: str) -> bool:
    """Whether a snapshot saved under `saved` may hold what `running` does not take."""
    then, now = parse_version(saved), parse_version(running)
    return then is None or now is None or then > now


def check(snapshot: Snapshot, records: Sequence[BridgeRecord]) -> None:
    """Refuse, before any bridge is touched, a snapshot the switch would not
    take whole (see the module's text); nothing is sent when the switch is
    as new as the snapshot's Open vSwitch or newer."""
    if not records:
        return
    saved, running = snapshot.manifest.ovs_version, running_version(records)
    if not needs_check(saved, running):
        return
    log.debug("snapshot taken under Open vSwitch %s, the switch runs %s: checking "
             "that it takes every bridge's groups and flows", saved, running)
    with ThreadPoolExecutor(max_workers=min(8, len(records))) as pool:
        found = list(pool.map(lambda r: first_refusal(snapshot, r), records))
    refused = [(record, why) for record, why in zip(records, found, strict=True) if why]
    if refused:
        record, why = refused[0]
        more = f" (and {len(refused) - 1} other bridges)" if len(refused) > 1 else ""
        raise SwitchRefusesSnapshot(bridge=record.name, running=running, saved=saved,
                                    reason=why + more)


UNKNOWN = "unknown"


def running_version(records: Sequence[BridgeRecord]) -> str:
    """The version of the running ovs-vswitchd, as it says itself (one
    message), asked through the bridges in turn until one answers; "unknown"
    (which makes the check run) if none does. Never its database's record:
    that may still name the version that ran before a package downgrade."""
    for record in records:
        try:
            with Connection(ovs.mgmt_socket(record.name), record.version, record.name) as conn:
                return dump.software(conn)
        except OpenFlowError as e:
            log.debug("%s: no version from this bridge: %s", record.name, e)
    return UNKNOWN


def first_refusal(snapshot: Snapshot, record: BridgeRecord) -> str | None:
    """What the switch refuses first of the bridge's groups and flows; None if nothing."""
    kinds = ("groups", "flows")
    files = [snapshot.file(f"{record.directory}/{kind}.ofp") for kind in kinds]

    def messages() -> Iterator[bytes]:
        for file in files:
            yield from read_messages(file)

    try:
        with Connection(ovs.mgmt_socket(record.name), record.version, record.name) as conn:
            if not conn.has_bundles:
                log.warning("%s: %s has no bundles: not checked before the restore",
                            record.name, VERSION_NAME[record.version])
                return None
            problem = (_meters_problem(conn, snapshot.file(f"{record.directory}/meters.ofp"))
                       or _tlv_problem(conn, snapshot.file(f"{record.directory}/tlv.ofp")))
            if problem:
                return problem
            errors = [(index, error) for index, error in conn.bundle(messages(), commit=False)
                      if not _expected(record, error)]
    except OpenFlowError as e:
        return ovs.failure_reason(record.name, e)
    if not errors:
        return None
    index, error = errors[0]
    answer = describe(error, brief=True)
    return f"the switch answered {answer} to {_which(record, index, messages())}"


def _meters_problem(conn: Connection, path: SnapshotFile) -> str | None:
    """What of the saved meters the switch's meter features say it does not
    take (meters cannot go in a bundle)."""
    mods = [st.meter_mod_fields(m) for m in read_messages(path)]
    if not mods:
        return None
    features = dump.meter_features(conn)
    real = [m for m in mods if m.meter_id <= ofp.OFPM_MAX]  # not the virtual ones
    if len(real) > features.max_meter > 0:
        return f"{len(real)} meters were saved, the switch holds at most {features.max_meter}"
    for mod in mods:
        unknown_flags = mod.flags & ~features.capabilities
        bands = [t for t in mod.band_types if not features.band_types & (1 << t)]
        # max_meter is how many meters the datapath holds, not the highest id.
        if mod.meter_id <= ofp.OFPM_MAX and features.max_meter == 0:
            why = "cannot be added: the switch supports no meters"
        elif unknown_flags:
            why = f"has flags {unknown_flags:#x} the switch does not support"
        elif bands:
            why = f"has a band of type {bands[0]}, which the switch does not support"
        elif len(mod.band_types) > features.max_bands:
            why = (f"has {len(mod.band_types)} bands, the switch takes at most "
                   f"{features.max_bands}")
        else:
            continue
        return f"meter {mod.meter_id} {why}"
    return None


def _tlv_problem(conn: Connection, path: SnapshotFile) -> str | None:
    """What of the saved TLV map does not fit the switch's table (a TLV
    table mod cannot go in a bundle)."""
    maps = b"".join(st.tlv_maps_of_mod(m) for m in read_messages(path))
    if not maps:
        return None
    reply = conn.request(st.tlv_table_request(conn.version), ofp.OFPT_EXPERIMENTER).data
    space, fields = _TLV_REPLY.unpack_from(reply, ofp.OFP_EXPERIMENTER_HEADER_SIZE)
    entries = [_TLV_MAP.unpack_from(maps, i) for i in range(0, len(maps), _TLV_MAP.size)]
    beyond = [index for _, _, _, index in entries if index >= fields]
    if beyond:
        return f"the TLV map uses tun_metadata{beyond[0]}, the switch has {fields} fields"
    used = sum(length for _, _, length, _ in entries)
    if used > space:
        return f"the TLV map takes {used} bytes of options, the switch has {space}"
    return None


def _expected(record: BridgeRecord, error: bytes) -> bool:
    """An error that only says what the restore puts in place before the
    bundle is missing yet: a meter, a TLV mapping."""
    kind, code = _ERROR.unpack_from(error, OFP_HEADER_SIZE)
    if (kind, code) == (OFPET_METER_MOD_FAILED, OFPMMFC_INVALID_METER):
        return record.counts.get("meters", 0) > 0
    if kind == OFPET_EXPERIMENTER and code == NXFMFC_INVALID_TLV_FIELD:
        experimenter = _EXPERIMENTER_ID.unpack_from(error, OFP_HEADER_SIZE + _ERROR.size)[0]
        return experimenter == NX_VENDOR_ID and record.counts.get("tlv", 0) > 0
    return False


def _which(record: BridgeRecord, index: int, messages: Iterator[bytes]) -> str:
    """`flow 3 of 10: <the flow as this switch's ovs-ofctl prints it>`."""
    groups = record.counts.get("groups", 0)
    if index < 0:
        return "the bundle"
    kind, number, total = (("group", index + 1, groups) if index < groups
                           else ("flow", index - groups + 1, record.counts.get("flows", 0)))
    message = next((m for i, m in enumerate(messages) if i == index), b"")
    if not message:
        return f"{kind} {number} of {total}"
    shown = describe(message, brief=True)
    if "decode error" in shown:  # this switch's ovs-ofctl does not know it either
        return f"{kind} {number} of {total} ({_key(kind, message)})"
    return f"{kind} {number} of {total}: {shown}"


def _key(kind: str, message: bytes) -> str:
    """Where a message nobody here can print belongs (OpenFlow 1.3+ layouts)."""
    if kind == "group":
        (group_id,) = _GROUP_ID.unpack_from(message, GROUP_ID_OFFSET)
        return f"group_id={group_id}"
    (priority,) = _PRIORITY.unpack_from(message, PRIORITY_OFFSET)
    return f"table={message[TABLE_ID_OFFSET]}, priority={priority}"

