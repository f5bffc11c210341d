"""The datapaths stage: datapath port numbers and OpenFlow port numbers.

Saved: every datapath (name, type) with its ports (number, name, type,
options), and for every interface its bridge, type, options, OpenFlow port
number and datapath port number. Secrets among the options (IPsec
pre-shared keys and certificates) are left out: no restore needs them (the
database keeps its interfaces' options), so no snapshot holds them.

Restored: kernel (`system`) datapaths are re-created with their ports at
their old numbers before ovs-vswitchd starts (it adopts existing ports);
OpenFlow port numbers are pinned with `ofport_request` where they would
move. Afterwards both numberings are compared with the snapshot.

Ports are re-created over netlink, which leaves their link state alone:
a port the module creates (an internal one) stays down until the
interfaces stage has set its MAC and brings it up, so the kernel derives
no IPv6 link-local address from a random MAC first.
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ovs_service import codec, dpnetlink, ovs
from ovs_service.errors import DatapathNetlinkError, OvsServiceError
from ovs_service.stages.base import RestoreScope, SaveResult, SaveScope, Stage
from ovs_service.store import Snapshot, SnapshotWriter

log = logging.getLogger(__name__)

SCHEMA = 1
STAGE = "datapaths"
SECRET_OPTIONS = frozenset({"psk", "peer_cert", "certificate", "private_key", "use_ssl_cert"})
LOCAL_OFPORT = 65534
RECREATED_TYPES = frozenset({"", "system", "internal"})

_DP_HEADER = re.compile(r"^(?P<type>[\w-]+)@(?P<name>[^:]+):\s*$")
_DP_PORT = re.compile(r"^\s+port (?P<no>\d+): (?P<name>\S+)(?: \((?P<desc>.*)\))?\s*$")
_BRIDGE_LINE = re.compile(r"^  (?P<bridge>\S+):\s*$")
_IFACE_LINE = re.compile(
    r"^    (?P<name>\S+) (?P<ofport>\d+)/(?P<dp>\d+|none): \((?P<desc>.*)\)\s*$"
)


@dataclass(frozen=True)
class DatapathPort:
    number: int
    name: str
    type: str
    options: dict[str, str]


@dataclass(frozen=True)
class Datapath:
    name: str
    type: str
    ports: list[DatapathPort]


@dataclass(frozen=True)
class InterfaceNumbers:
    bridge: str
    name: str
    type: str
    ofport: int
    dp_port: int | None
    options: dict[str, str]  # without secrets


@dataclass(frozen=True)
class DatapathsSnapshot:
    datapaths: list[Datapath]
    interfaces: list[InterfaceNumbers]
    schema: int = SCHEMA

    @property
    def system_datapaths(self) -> list[Datapath]:
        """The kernel's datapaths (type `system`), which a module reload deletes."""
        return [dp for dp in self.datapaths if dp.type == "system"]

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = codec.to_doc(self)
        return doc

    @classmethod
    def from_doc(cls, doc: object, *, where: codec.Where) -> DatapathsSnapshot:
        codec.check_schema(doc, SCHEMA, where)
        return codec.from_doc(cls, doc, where=where)


def _options(desc: str) -> tuple[str, dict[str, str]]:
    """'gre: key=5, remote_ip=10.9.9.9' → ('gre', {...})."""
    kind, _, rest = desc.partition(":")
    options = {}
    for item in rest.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            options[key] = value
    return kind.strip(), options


def parse_dpctl_show(text: str) -> list[Datapath]:
    datapaths: list[Datapath] = []
    for line in text.splitlines():
        if m := _DP_HEADER.match(line):
            datapaths.append(Datapath(m["name"], m["type"], []))
        elif (m := _DP_PORT.match(line)) and datapaths:
            kind, options = _options(m["desc"] or "")
            datapaths[-1].ports.append(DatapathPort(int(m["no"]), m["name"], kind, options))
    return datapaths


def parse_dpif_show(text: str) -> dict[str, tuple[str, int, int | None]]:
    """Interface name → (bridge, OpenFlow port, datapath port)."""
    found: dict[str, tuple[str, int, int | None]] = {}
    bridge = ""
    for line in text.splitlines():
        if m := _BRIDGE_LINE.match(line):
            bridge = m["bridge"]
        elif m := _IFACE_LINE.match(line):
            dp = None if m["dp"] == "none" else int(m["dp"])
            found[m["name"]] = (bridge, int(m["ofport"]), dp)
    return found


def save() -> DatapathsSnapshot:
    """Needs ovs-vswitchd running (its view of both numberings)."""
    datapaths = parse_dpctl_show(ovs.appctl("dpctl/show").stdout)
    numbers = parse_dpif_show(ovs.appctl("dpif/show").stdout)
    rows = ovs.vsctl_list("Interface", ["name", "type", "options"])
    interfaces = []
    for row in rows:
        name = row["name"]
        if name not in numbers:
            continue
        options = row["options"] if isinstance(row["options"], dict) else {}
        bridge, ofport, dp_port = numbers[name]
        interfaces.append(InterfaceNumbers(
            bridge, name, row["type"], ofport, dp_port,
            {k: v for k, v in options.items() if k not in SECRET_OPTIONS},
        ))
    interfaces.sort(key=lambda i: (i.bridge, i.ofport))
    return DatapathsSnapshot(datapaths, interfaces)


def kernel_datapaths() -> dict[str, Datapath]:
    """The kernel's datapaths by name, as the kernel has them (no ovs-vswitchd needed)."""
    return {dp.name: dp for dp in parse_dpctl_show(ovs.dpctl("show").stdout)}


@dataclass
class Recreated:
    ports: list[str] = field(default_factory=list)
    """Ports made afresh, as `datapath:number(name)`."""
    problems: list[str] = field(default_factory=list)


def recreate_kernel_datapaths(snapshot: DatapathsSnapshot) -> Recreated:
    """Before ovs-vswitchd starts: kernel datapaths with ports at their old numbers.

    Only what is missing is made: a datapath or port that exists is left as
    it is, so that this can run again after an interrupted run. Problems are
    what could not be done; ovs-vswitchd creates the rest itself, possibly
    at other numbers (the verification reports it). One netlink socket for
    all of it (`dpnetlink`): nothing forwards meanwhile.
    """
    made = Recreated()
    if not snapshot.system_datapaths:
        return made
    try:
        with dpnetlink.Datapaths() as kernel:
            existing = {name: kernel.ports(name) for name in kernel.names()}
            for dp in snapshot.system_datapaths:
                if dp.name not in existing and not _add_datapath(kernel, dp, made):
                    continue
                have = existing.get(dp.name, {})
                for port in dp.ports:
                    if port.name not in have and _recreated(port):
                        _add_port(kernel, dp, port, made)
    except (DatapathNetlinkError, OSError) as e:
        made.problems.append(f"cannot re-create the kernel's datapaths: {e}")
    return made


def _recreated(port: DatapathPort) -> bool:
    # Port 0, the datapath's own local port, comes with it; tunnel vports are
    # shared and named by ovs-vswitchd, which makes them.
    return port.number != 0 and port.type in RECREATED_TYPES


def _add_datapath(kernel: dpnetlink.Datapaths, dp: Datapath, made: Recreated) -> bool:
    """Create the datapath; whether it exists now."""
    try:
        kernel.create(dp.name)
    except DatapathNetlinkError as e:
        if e.fields["errno"] != errno.EEXIST:
            made.problems.append(str(e))
            return False
    return True


def _add_port(kernel: dpnetlink.Datapaths, dp: Datapath, port: DatapathPort,
              made: Recreated) -> None:
    try:
        kernel.add_port(dp.name, port.number, port.name, port.type)
    except (DatapathNetlinkError, OSError) as e:
        made.problems.append(f"system@{dp.name} port {port.number} ({port.name}): {e}")
        return
    made.ports.append(f"{dp.name}:{port.number}({port.name})")


def own_kernel_ports() -> int:
    """Ports of every kernel datapath whose vport type the openvswitch module
    provides (netdev and internal: the local ports, system ports, and tunnel
    devices that ovs-vswitchd made with rtnetlink), each holding a reference
    to the module. Compat tunnel vports hold their vport module instead."""
    with dpnetlink.Datapaths() as kernel:
        return sum(kind in dpnetlink.OWN_VPORT_TYPES
                   for name in kernel.names()
                   for _, kind in kernel.vports(name).values())


def delete_kernel_datapaths() -> list[str]:
    """Delete every kernel datapath (with its ports); their names."""
    with dpnetlink.Datapaths() as kernel:
        names = kernel.names()
        for name in names:
            kernel.delete(name)
    return names


def pin_ofports(snapshot: DatapathsSnapshot, bridges: Collection[str] | None = None) -> list[str]:
    """Pin the saved OpenFlow port numbers of the interfaces on `bridges` (all if None)."""
    wanted = {i.name: i.ofport for i in snapshot.interfaces
              if i.ofport != LOCAL_OFPORT and (bridges is None or i.bridge in bridges)}
    return ovs.pin_ofports(wanted)


@dataclass(frozen=True)
class Mismatch:
    interface: str
    what: str  # "ofport" | "dp_port" | "missing"
    saved: int | None
    now: int | None


def verify(snapshot: DatapathsSnapshot, names: Sequence[str] = ()) -> list[Mismatch]:
    """Compare both numberings of every saved interface with the running switch."""
    numbers = parse_dpif_show(ovs.appctl("dpif/show").stdout)
    out = []
    for iface in snapshot.interfaces:
        if names and iface.name not in names:
            continue
        now = numbers.get(iface.name)
        if now is None:
            out.append(Mismatch(iface.name, "missing", iface.ofport, None))
            continue
        if now[1] != iface.ofport:
            out.append(Mismatch(iface.name, "ofport", iface.ofport, now[1]))
        if iface.dp_port is not None and now[2] != iface.dp_port:
            out.append(Mismatch(iface.name, "dp_port", iface.dp_port, now[2]))
    return out


# -- the stage --------------------------------------------------------------------

FILE = f"{STAGE}/datapaths.json"
LEGACY_SECRETS_FILE = f"{STAGE}/secrets.json"


def load(snapshot: Snapshot) -> DatapathsSnapshot | None:
    """The snapshot's datapaths stage; None if it has none."""
    if FILE not in snapshot.manifest.files:
        return None
    doc, where = codec.read(snapshot.file(FILE))
    return DatapathsSnapshot.from_doc(doc, where=where)


@dataclass(frozen=True)
class PinReport:
    """Interfaces put back at their saved OpenFlow port numbers."""

    pinned: tuple[str, ...]
    key: ClassVar[str] = "ports_pinned"
    ok: ClassVar[bool] = True

    def __str__(self) -> str:
        return f"pinned OpenFlow port numbers: {', '.join(self.pinned)}" if self.pinned else ""

    def to_doc(self) -> list[str]:
        return list(self.pinned)

    def error(self) -> OvsServiceError | None:
        return None


@dataclass(frozen=True)
class MismatchReport:
    """Port numbers that differ from the snapshot's after a restore: reported, not failed."""

    mismatches: tuple[Mismatch, ...]
    key: ClassVar[str] = "port_mismatches"
    ok: ClassVar[bool] = True

    def __str__(self) -> str:
        return "\n".join(f"port number moved: {m.interface} {m.what} {m.saved} -> {m.now}"
                         for m in self.mismatches)

    def to_doc(self) -> list[dict[str, Any]]:
        return [asdict(m) for m in self.mismatches]

    def error(self) -> OvsServiceError | None:
        return None


class DatapathsStage(Stage):
    """Datapath and OpenFlow port numbers, port types and options."""

    name = STAGE

    def save(self, writer: SnapshotWriter, scope: SaveScope) -> SaveResult:
        writer.write_json(FILE, save().to_doc())
        # No secrets are kept, but versions up to 0.1.0 read this file with
        # the stage: an empty one lets them restore a snapshot of this one.
        writer.write_json(LEGACY_SECRETS_FILE, {})
        return SaveResult({}, {})

    def check(self, snapshot: Snapshot, scope: RestoreScope) -> None:
        load(snapshot)

    def restore(self, snapshot: Snapshot, scope: RestoreScope) -> PinReport:
        saved = load(snapshot)
        pinned = pin_ofports(saved, scope.named) if saved is not None else []
        if pinned:
            log.warning("pinned OpenFlow port numbers of %s", ", ".join(pinned))
        return PinReport(tuple(pinned))

    def verify(self, snapshot: Snapshot, scope: RestoreScope) -> MismatchReport | None:
        saved = load(snapshot)
        if saved is None:
            return None
        restored = set(scope.bridges)
        names = [i.name for i in saved.interfaces if i.bridge in restored]
        return MismatchReport(tuple(verify(saved, names) if names else ()))
