"""The interfaces stage: kernel configuration of Open vSwitch internal interfaces.

Reloading the openvswitch kernel module destroys every internal interface
(bridge local ports, `type=internal` ports); ovs-vswitchd re-creates them bare:
down, default MTU, a new random MAC, no addresses, no routes. This stage saves
what the kernel held for those interfaces, over netlink, and puts it back.

Saved per interface: the link flags a user sets (up, noarp, promisc, allmulti,
multicast), MAC, MTU, txqueuelen, alias, and every IPv4 and IPv6 address with
prefix length, peer, scope, flags, label, broadcast and remaining lifetimes.
Addresses the kernel makes by itself are left out because it makes them again:
IPv6 temporary (privacy) addresses, and link-local addresses derived from the
MAC (EUI-64) or by stable-privacy generation. Routes are saved when they leave
through one of the interfaces (their output interface, or any leg of a
multipath route), in every table, except those the kernel derives from
addresses and router advertisements (protocol `kernel`, `ra`, `redirect`).

Not saved: per-interface sysctls (net.ipv4.conf.*, net.ipv6.conf.*), queueing
disciplines, neighbour entries, routes using nexthop objects or encapsulation
(logged and skipped), and the address attributes older pyroute2 (0.7) cannot
parse: the prefix-route metric of an address (IFA_RT_PRIORITY) and IFA_PROTO.

Finite lifetimes are shortened on restore by the time since the save, read
from the boot clock within the boot the snapshot was taken in (a stepped
wall clock would drop addresses or lengthen them); an address whose
lifetime ran out is reported, not restored.

Interfaces are matched by name on restore; a name is data, never part of a
command line. Restore is idempotent (what is present is left alone) and goes
on past failures, which are reported with their errno names.

This module holds the save, the restore and the order of things;
`stages.interfaces_snapshot` the snapshot (its names are importable from
here too); `ovs_service.netlink` the kernel's side: what it makes by
itself, and the requests that put a link, an address or a route back.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, ClassVar, Literal

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP
from pyroute2.netlink.rtnl.rtmsg import RTNH_F_ONLINK

from ovs_service import codec, ovs
from ovs_service.errors import (
    InterfacesError,
    NetlinkRequestFailed,
    OvsServiceError,
    RestorePartsFailed,
    SnapshotInvalid,
)
from ovs_service.netlink import (
    FOREVER,
    address_request,
    attempt,
    errno_name,
    kernel_made_address,
    link_by_name,
    nested_attr,
    restore_link,
    restore_order,
    route_request,
    route_wanted,
)
from ovs_service.stages import firewall
from ovs_service.stages.base import RestoreScope, SaveResult, SaveScope, Stage
from ovs_service.stages.interfaces_snapshot import SCHEMA as SCHEMA
from ovs_service.stages.interfaces_snapshot import AddressState as AddressState
from ovs_service.stages.interfaces_snapshot import Family
from ovs_service.stages.interfaces_snapshot import InterfacesSnapshot as InterfacesSnapshot
from ovs_service.stages.interfaces_snapshot import InterfaceState as InterfaceState
from ovs_service.stages.interfaces_snapshot import NextHopState as NextHopState
from ovs_service.stages.interfaces_snapshot import RouteState as RouteState
from ovs_service.store import Snapshot, SnapshotWriter

log = logging.getLogger(__name__)

InterfaceStatus = Literal["restored", "partial", "missing"]


# -- the restore report ---------------------------------------------------------


@dataclass(frozen=True)
class RestoreProblem:
    subject: str  # an interface name, or a route as text
    action: str  # what was being done, e.g. "set mtu 9000", "add address 10.0.0.1/24"
    errno_name: str  # e.g. "ENODEV"; "" when the failure carried no errno
    message: str


@dataclass(frozen=True)
class InterfaceOutcome:
    name: str
    status: InterfaceStatus
    addresses_added: int = 0
    addresses_present: int = 0
    # Saved with a finite lifetime that ran out since the save: not put back,
    # as the kernel would have dropped them by now.
    addresses_expired: tuple[str, ...] = ()


@dataclass(frozen=True)
class RestoreReport:
    interfaces: tuple[InterfaceOutcome, ...]
    routes_added: int
    routes_present: int
    routes_failed: int
    problems: tuple[RestoreProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# -- save -----------------------------------------------------------------------


def save_interfaces(names: Sequence[str]) -> InterfacesSnapshot:
    """The configuration of the named interfaces and of the routes through them.

    Names that match no interface are recorded in `missing`, not an error.
    """
    wanted = list(dict.fromkeys(names))
    try:
        with IPRoute() as ipr:
            links = list(ipr.get_links())
            addresses = list(ipr.get_addr())
            routes = list(ipr.get_routes())
    except NetlinkError as e:
        raise InterfacesError(reason=f"netlink dump failed: {errno_name(e.code)}") from e
    except OSError as e:
        raise InterfacesError(reason=f"netlink unavailable: {e}") from e
    names_by_index = {int(m["index"]): str(m.get_attr("IFLA_IFNAME")) for m in links}
    index_by_name = {name: index for index, name in names_by_index.items()}
    present = [name for name in wanted if name in index_by_name]
    saved_indexes = {index_by_name[name] for name in present}
    by_index = {int(m["index"]): m for m in links}
    interfaces = tuple(
        _interface_state(by_index[index_by_name[name]], addresses) for name in present
    )
    route_states = tuple(
        state
        for m in routes
        if route_wanted(m, saved_indexes)
        for state in [_route_state(m, names_by_index)]
        if state is not None
    )
    return InterfacesSnapshot(
        interfaces=interfaces,
        routes=route_states,
        missing=tuple(name for name in wanted if name not in index_by_name),
        taken_at=time.time(),
        boottime=time.clock_gettime(time.CLOCK_BOOTTIME),
        boot_id=firewall.boot_id(),
    )


def _interface_state(link: Any, addresses: Iterable[Any]) -> InterfaceState:
    index = int(link["index"])
    mac = link.get_attr("IFLA_ADDRESS")
    own = (a for a in addresses if int(a["index"]) == index)
    kept = [a for a in own if not kernel_made_address(a, mac)]
    return InterfaceState(
        name=str(link.get_attr("IFLA_IFNAME")),
        flags=int(link["flags"]),
        mac=str(mac) if mac is not None else None,
        mtu=int(link.get_attr("IFLA_MTU")),
        txqlen=int(link.get_attr("IFLA_TXQLEN") or 0),
        alias=link.get_attr("IFLA_IFALIAS") or None,
        addresses=tuple(_address_state(a) for a in kept),
    )


def _address_state(msg: Any) -> AddressState:
    family: Family = 4 if msg["family"] == socket.AF_INET else 6
    local = msg.get_attr("IFA_LOCAL")
    prefix = msg.get_attr("IFA_ADDRESS")
    # IFA_LOCAL is the address itself; IFA_ADDRESS is the peer when they differ.
    address = local if local is not None else prefix
    peer = prefix if local is not None and prefix not in (None, local) else None
    cache = msg.get_attr("IFA_CACHEINFO")
    valid = preferred = None
    if cache is not None and cache["ifa_valid"] != FOREVER:
        valid = int(cache["ifa_valid"])
        preferred = int(cache["ifa_preferred"])
    extended = msg.get_attr("IFA_FLAGS")
    return AddressState(
        family=family,
        address=str(address),
        prefixlen=int(msg["prefixlen"]),
        scope=int(msg["scope"]),
        flags=int(msg["flags"]),
        extended_flags=int(extended) if extended is not None else None,
        peer=str(peer) if peer is not None else None,
        label=msg.get_attr("IFA_LABEL") if family == 4 else None,
        broadcast=msg.get_attr("IFA_BROADCAST") if family == 4 else None,
        valid_lft=valid,
        preferred_lft=preferred,
    )


def _route_state(msg: Any, names: Mapping[int, str]) -> RouteState | None:
    family: Family = 4 if msg["family"] == socket.AF_INET else 6
    if msg.get_attr("RTA_NH_ID") is not None or msg.get_attr("RTA_ENCAP") is not None:
        log.warning("route to %s: nexthop objects and encapsulation are not saved",
                    msg.get_attr("RTA_DST"))
        return None
    table = msg.get_attr("RTA_TABLE")
    metrics = msg.get_attr("RTA_METRICS")
    oif = msg.get_attr("RTA_OIF")
    return RouteState(
        family=family,
        table=int(table if table is not None else msg["table"]),
        dst=msg.get_attr("RTA_DST"),
        dst_len=int(msg["dst_len"]),
        type=int(msg["type"]),
        protocol=int(msg["proto"]),
        scope=int(msg["scope"]),
        tos=int(msg["tos"]),
        flags=int(msg["flags"]) & RTNH_F_ONLINK,
        interface=names.get(int(oif)) if oif is not None else None,
        gateway=msg.get_attr("RTA_GATEWAY"),
        priority=msg.get_attr("RTA_PRIORITY"),
        prefsrc=msg.get_attr("RTA_PREFSRC"),
        src=msg.get_attr("RTA_SRC"),
        src_len=int(msg["src_len"]),
        pref=msg.get_attr("RTA_PREF"),
        metrics=tuple(
            (str(name)[len("RTAX_"):].lower(), value)
            for name, value in (metrics["attrs"] if metrics else ())
            if str(name).startswith("RTAX_") and isinstance(value, int)
        ),
        nexthops=tuple(
            NextHopState(
                interface=names.get(int(hop["oif"])),
                gateway=nested_attr(hop, "RTA_GATEWAY"),
                weight=int(hop["hops"]) + 1,
                flags=int(hop["flags"]) & RTNH_F_ONLINK,
            )
            for hop in msg.get_attr("RTA_MULTIPATH") or ()
        ),
    )


# -- restore --------------------------------------------------------------------


def restore_interfaces(snapshot: InterfacesSnapshot) -> RestoreReport:
    """Put the saved configuration back on the interfaces of the same names.

    Per interface: link settings, then addresses, then the link state; routes
    come last, once every interface is up with its addresses, since a route's
    gateway or source may belong to another interface. A failure is reported
    and the rest goes on.
    """
    problems: list[RestoreProblem] = []
    elapsed = seconds_since(snapshot)
    try:
        with IPRoute() as ipr:
            outcomes = tuple(_restore_interface(ipr, state, elapsed, problems)
                             for state in snapshot.interfaces)
            added, present, failed = _restore_routes(ipr, snapshot.routes, problems)
    except OSError as e:
        raise InterfacesError(reason=f"netlink unavailable: {e}") from e
    return RestoreReport(
        interfaces=outcomes,
        routes_added=added,
        routes_present=present,
        routes_failed=failed,
        problems=tuple(problems),
    )


def seconds_since(snapshot: InterfacesSnapshot) -> int:
    """How long ago the snapshot was taken, never less than 0.

    In the boot it was taken in, by the boot clock: the wall clock may have
    been stepped since (by hand, or by a first time sync), which would drop
    addresses as expired or lengthen their lifetimes. In another boot the
    kernel has forgotten the addresses anyway; only the wall clock spans boots.
    """
    if snapshot.boottime is not None and snapshot.boot_id is not None \
            and snapshot.boot_id == firewall.boot_id():
        return max(0, int(time.clock_gettime(time.CLOCK_BOOTTIME) - snapshot.boottime))
    return max(0, int(time.time() - snapshot.taken_at)) if snapshot.taken_at else 0


def _restore_interface(
    ipr: Any, state: InterfaceState, elapsed: int, problems: list[RestoreProblem]
) -> InterfaceOutcome:
    before = len(problems)

    def step(action: str, request: Callable[[], object]) -> bool:
        try:
            attempt(request)
        except NetlinkRequestFailed as e:
            problems.append(RestoreProblem(state.name, action, e.errno_name, e.message))
            return False
        return True

    link = None
    try:
        link = link_by_name(ipr, state.name)
    except NetlinkError as e:
        problems.append(RestoreProblem(state.name, "look up", errno_name(e.code), str(e)))
    if link is None:
        if len(problems) == before:
            problems.append(RestoreProblem(state.name, "look up", "ENODEV", "no such interface"))
        return InterfaceOutcome(state.name, "missing")
    index = int(link["index"])
    restore_link(ipr, index, link, state, step)
    added, present, expired = _restore_addresses(ipr, index, state, elapsed, problems)
    if state.up:
        step("set up", partial(ipr.link, "set", index=index, flags=IFF_UP, change=IFF_UP))
    status: InterfaceStatus = "restored" if len(problems) == before else "partial"
    return InterfaceOutcome(state.name, status, added, present, expired)


def _restore_addresses(
    ipr: Any,
    index: int,
    state: InterfaceState,
    elapsed: int,
    problems: list[RestoreProblem],
) -> tuple[int, int, tuple[str, ...]]:
    """Add the saved addresses, their lifetimes shortened by `elapsed` seconds;
    returns how many were added, how many were there, and those that expired."""
    added = present = 0
    expired: list[str] = []
    for address in restore_order(state.addresses):
        request = address_request(index, address, elapsed)
        if request is None:
            log.warning("%s: address %s expired since the save (%ds ago), not restored",
                        state.name, address, elapsed)
            expired.append(str(address))
            continue
        try:
            attempt(partial(ipr.addr, "add", **request))
        except NetlinkRequestFailed as e:
            if e.errno_name == "EEXIST":
                present += 1
            else:
                problems.append(RestoreProblem(state.name, f"add address {address}",
                                               e.errno_name, e.message))
            continue
        added += 1
    return added, present, tuple(expired)


def _restore_routes(
    ipr: Any, routes: Sequence[RouteState], problems: list[RestoreProblem]
) -> tuple[int, int, int]:
    """Add routes, narrowest scope first, then again those that failed as long
    as a round adds something: a gateway may be reachable only through another
    saved route. Returns (added, already present, failed)."""
    indexes = {str(m.get_attr("IFLA_IFNAME")): int(m["index"]) for m in ipr.get_links()}
    pending: list[RouteState] = []
    failures: dict[RouteState, NetlinkRequestFailed] = {}
    for route in sorted(routes, key=lambda r: -r.scope):
        missing = sorted(route.interfaces() - indexes.keys())
        if missing:
            failures[route] = NetlinkRequestFailed(
                errno_name="ENODEV", message=f"no interface {', '.join(map(repr, missing))}")
        else:
            pending.append(route)
    added = present = 0
    while pending:
        retry: list[RouteState] = []
        for route in pending:
            try:
                attempt(partial(ipr.route, "add", **route_request(route, indexes)))
            except NetlinkRequestFailed as e:
                if e.errno_name == "EEXIST":
                    present += 1
                else:
                    failures[route] = e
                    retry.append(route)
                continue
            failures.pop(route, None)
            added += 1
        if len(retry) == len(pending):
            break
        pending = retry
    for route, failure in failures.items():
        problems.append(RestoreProblem(str(route), "add route", failure.errno_name,
                                       failure.message))
    return added, present, len(failures)


# -- the stage --------------------------------------------------------------------

FILE = "interfaces/interfaces.json"


def internal_interfaces() -> list[str]:
    """OVS internal interfaces: bridge local ports and `type=internal` interfaces."""
    return sorted(i.name for i in ovs.interfaces() if i.type == "internal")


@dataclass(frozen=True)
class InterfacesReport:
    """The interfaces put back, and within a module reload the firewall tables
    that bind them."""

    report: dict[str, Any]  # {"ok", "interfaces": ..., "firewall": ... or None}
    key: ClassVar[str] = "interfaces"

    @property
    def ok(self) -> bool:
        return bool(self.report.get("ok"))

    def __str__(self) -> str:
        problems = self.report["interfaces"]["problems"]
        lines = [f"interfaces: {'restored' if not problems else 'PROBLEMS'}"]
        lines += [f"  {p['subject']}: {p['action']}: {p['errno_name']} {p['message']}"
                  for p in problems]
        lines += [f"  {i['name']}: address {a} expired since the save, not restored"
                  for i in self.report["interfaces"].get("interfaces", ())
                  for a in i.get("addresses_expired", ())]
        if self.report.get("firewall") is not None:
            lines.append(str(firewall.FirewallReport(self.report["firewall"])))
        return "\n".join(lines)

    def to_doc(self) -> dict[str, Any]:
        return self.report

    def error(self) -> OvsServiceError | None:
        if self.ok:
            return None
        problems = self.report["interfaces"]["problems"]
        if problems:
            p = problems[0]
            reason = f"{p['subject']}: {p['action']}: {p['message']}"
            return RestorePartsFailed(parts="interfaces", reason=reason)
        fw = firewall.FirewallReport(self.report["firewall"] or {})
        return RestorePartsFailed(parts="interfaces' firewall", reason=fw.first_problem())


def load(snapshot: Snapshot) -> InterfacesSnapshot:
    doc, where = codec.read(snapshot.file(FILE))
    return InterfacesSnapshot.from_doc(doc, where=where)


class InterfacesStage(Stage):
    """OVS internal interfaces: link state, MAC, MTU, addresses, routes.

    What a module reload re-creates; so after one (`scope.module_reloaded`)
    it also puts back the nft tables that bind those interfaces by index or
    as a device (the reload broke them), unless the snapshot was taken before
    the host last booted: then it is an old copy.
    """

    name = "interfaces"

    def save(self, writer: SnapshotWriter, scope: SaveScope) -> SaveResult:
        writer.write_json(FILE, save_interfaces(internal_interfaces()).to_doc())
        return SaveResult({}, {})

    def check(self, snapshot: Snapshot, scope: RestoreScope) -> None:
        """Both files there and readable: a restore must not start on them to
        find the second damaged halfway."""
        missing = [f for f in (FILE, firewall.FILE) if f not in snapshot.manifest.files]
        if missing:
            reason = f"has no interfaces stage ({missing[0]} is not in its manifest)"
            raise SnapshotInvalid(path=snapshot.path, reason=reason)
        load(snapshot)
        if scope.module_reloaded:
            firewall.load(snapshot)

    def restore(self, snapshot: Snapshot, scope: RestoreScope) -> InterfacesReport:
        self.check(snapshot, scope)
        saved = load(snapshot)
        report = restore_interfaces(saved).to_dict()
        fw_report: dict[str, Any] | None = None
        if scope.module_reloaded:
            rules = firewall.load(snapshot)
            if firewall.saved_this_boot(rules):
                names = [i.name for i in saved.interfaces] + list(saved.missing)
                fw_report = firewall.restore_firewall(rules, interfaces=names).to_dict()
            else:
                log.warning("firewall not restored: %s is not known to be of this boot "
                            "(saved before the host last booted, or by a version that did not "
                            "record the boot)", snapshot.path)
                fw_report = {"ok": True, "parts": [], "skipped": "not known to be of this boot"}
        ok = bool(report["ok"] and (fw_report is None or fw_report["ok"]))
        return InterfacesReport({"ok": ok, "interfaces": report, "firewall": fw_report})
