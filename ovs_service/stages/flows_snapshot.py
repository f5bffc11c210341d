"""What the flows stage keeps in a snapshot, and the reading of it.

`flows/index.json` lists the bridges saved, one `BridgeRecord` each; each
bridge's directory holds its TLV map, meters, groups and flows as files of
OpenFlow messages (`KINDS`), written by the save (`stages.flows`) and read
back, checked whole first, by the restore (`stages.flows_restore`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ovs_service import codec
from ovs_service.errors import SnapshotInvalid
from ovs_service.openflow.messages import HEADER
from ovs_service.openflow.ofproto import VERSIONS_SPOKEN
from ovs_service.store import Snapshot, SnapshotFile

STAGE = "flows"
KINDS = ("tlv", "meters", "groups", "flows")


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
