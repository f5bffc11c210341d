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

Interfaces are matched by name on restore; a name is data, never part of a
command line. Restore is idempotent (what is present is left alone) and goes
on past failures, which are reported with their errno names.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, ClassVar, Literal

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ovs_service import ovs
from ovs_service.errors import (
    InterfacesError,
    InterfacesSnapshotInvalid,
    OvsServiceError,
    RestorePartsFailed,
    SnapshotInvalid,
)
from ovs_service.stages import firewall
from ovs_service.stages.base import RestoreScope, SaveResult, SaveScope, Stage
from ovs_service.store import Snapshot, SnapshotWriter

log = logging.getLogger(__name__)

SCHEMA = 1

# Link flags (if.h) that a user sets and this stage restores.
IFF_UP = 0x1
IFF_NOARP = 0x80
IFF_PROMISC = 0x100
IFF_ALLMULTI = 0x200
IFF_MULTICAST = 0x1000
LINK_FLAGS_RESTORED = IFF_UP | IFF_NOARP | IFF_PROMISC | IFF_ALLMULTI | IFF_MULTICAST

# Address flags (if_addr.h). The low byte travels in ifa_flags, all of them in IFA_FLAGS.
IFA_F_SECONDARY = 0x01  # IPv4; the same bit means "temporary" for IPv6
IFA_F_TEMPORARY = 0x01
IFA_F_NODAD = 0x02
IFA_F_OPTIMISTIC = 0x04
IFA_F_HOMEADDRESS = 0x10
IFA_F_MANAGETEMPADDR = 0x100
IFA_F_NOPREFIXROUTE = 0x200
IFA_F_MCAUTOJOIN = 0x400
IFA_F_STABLE_PRIVACY = 0x800
# The flags a user chooses; the others (tentative, permanent, deprecated...) are kernel state.
ADDRESS_FLAGS_RESTORED = (
    IFA_F_NODAD
    | IFA_F_OPTIMISTIC
    | IFA_F_HOMEADDRESS
    | IFA_F_MANAGETEMPADDR
    | IFA_F_NOPREFIXROUTE
    | IFA_F_MCAUTOJOIN
)
# IFA_PROTO values the kernel puts on addresses it creates (only newer pyroute2 parses it).
IFAPROT_KERNEL = (1, 2, 3)  # loopback, router advertisement, link-local
FOREVER = 0xFFFFFFFF

# Route attributes (rtnetlink.h).
RTPROT_REDIRECT, RTPROT_KERNEL, RTPROT_RA = 1, 2, 9
ROUTE_PROTOCOLS_SKIPPED = (RTPROT_REDIRECT, RTPROT_KERNEL, RTPROT_RA)
RTM_F_CLONED = 0x200
RTNH_F_ONLINK = 0x4
RT_SCOPE_UNIVERSE = 0

Family = Literal[4, 6]
InterfaceStatus = Literal["restored", "partial", "missing"]


# -- the snapshot ---------------------------------------------------------------


@dataclass(frozen=True)
class AddressState:
    """One address of an interface, as the kernel reported it."""

    family: Family
    address: str  # the local address
    prefixlen: int
    scope: int
    flags: int  # ifa_flags exactly as dumped (low 8 bits)
    extended_flags: int | None  # the IFA_FLAGS attribute, all 32 bits, when present
    peer: str | None = None  # point-to-point peer, when it differs from the address
    label: str | None = None  # IPv4 only, e.g. "br0:1"
    broadcast: str | None = None  # IPv4 only
    valid_lft: int | None = None  # seconds left at save time; None: forever
    preferred_lft: int | None = None

    @property
    def all_flags(self) -> int:
        return self.extended_flags if self.extended_flags is not None else self.flags

    def __str__(self) -> str:
        return f"{self.address}/{self.prefixlen}"


@dataclass(frozen=True)
class NextHopState:
    """One leg of a multipath route."""

    interface: str | None
    gateway: str | None = None
    weight: int = 1
    flags: int = 0  # only the flags a user sets (onlink)


@dataclass(frozen=True)
class RouteState:
    """One route leaving through a saved interface; numbers are the kernel's own."""

    family: Family
    table: int
    dst: str | None  # None: default route
    dst_len: int
    type: int = 1  # unicast
    protocol: int = 3  # boot, what `ip route add` uses
    scope: int = RT_SCOPE_UNIVERSE
    tos: int = 0
    flags: int = 0  # onlink only
    interface: str | None = None
    gateway: str | None = None
    priority: int | None = None  # the metric
    prefsrc: str | None = None
    src: str | None = None  # source-specific routes (IPv6 `from`)
    src_len: int = 0
    pref: int | None = None  # IPv6 router preference
    metrics: tuple[tuple[str, int], ...] = ()  # RTAX_* by lower-case name: mtu, advmss...
    nexthops: tuple[NextHopState, ...] = ()

    def interfaces(self) -> set[str]:
        names = {hop.interface for hop in self.nexthops} | {self.interface}
        return {name for name in names if name is not None}

    def __str__(self) -> str:
        dst = f"{self.dst}/{self.dst_len}" if self.dst is not None else "default"
        text = f"{dst} table {self.table}"
        if self.gateway:
            text += f" via {self.gateway}"
        if self.interface is not None:
            text += f" dev {self.interface!r}"
        for hop in self.nexthops:
            text += f" nexthop via {hop.gateway} dev {hop.interface!r}"
        return text


@dataclass(frozen=True)
class InterfaceState:
    name: str
    flags: int  # ifi_flags as dumped; LINK_FLAGS_RESTORED of them are restored
    mac: str | None
    mtu: int
    txqlen: int
    alias: str | None = None
    addresses: tuple[AddressState, ...] = ()  # in the kernel's order

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


@dataclass(frozen=True)
class InterfacesSnapshot:
    interfaces: tuple[InterfaceState, ...]
    routes: tuple[RouteState, ...]
    missing: tuple[str, ...] = ()  # asked for, but absent when saved
    taken_at: float = 0.0  # wall clock, to age finite address lifetimes on restore
    schema: int = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> InterfacesSnapshot:
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise InterfacesSnapshotInvalid(reason=f"not JSON: {e}") from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: object) -> InterfacesSnapshot:
        r = _Reader(doc, "snapshot")
        if r.raw("schema") != SCHEMA:
            raise InterfacesSnapshotInvalid(
                reason=f"unknown schema {r.raw('schema')!r} (expected {SCHEMA})"
            )
        return cls(
            interfaces=tuple(_interface_from(x) for x in r.items("interfaces")),
            routes=tuple(_route_from(x) for x in r.items("routes")),
            missing=tuple(r.strings("missing")),
            taken_at=r.number("taken_at"),
            schema=SCHEMA,
        )


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

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


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
        raise InterfacesError(reason=f"netlink dump failed: {_errno_name(e.code)}") from e
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
        if _route_wanted(m, saved_indexes)
        for state in [_route_state(m, names_by_index)]
        if state is not None
    )
    return InterfacesSnapshot(
        interfaces=interfaces,
        routes=route_states,
        missing=tuple(name for name in wanted if name not in index_by_name),
        taken_at=time.time(),
    )


def _interface_state(link: Any, addresses: Iterable[Any]) -> InterfaceState:
    index = int(link["index"])
    mac = link.get_attr("IFLA_ADDRESS")
    own = (a for a in addresses if int(a["index"]) == index)
    kept = [a for a in own if not _kernel_made_address(a, mac)]
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


def _kernel_made_address(msg: Any, mac: str | None) -> bool:
    """Whether the kernel created this address itself and will again."""
    if msg.get_attr("IFA_PROTO") in IFAPROT_KERNEL:
        return True
    if msg["family"] != socket.AF_INET6:
        return False
    flags = msg.get_attr("IFA_FLAGS")
    flags = int(flags if flags is not None else msg["flags"])
    if flags & IFA_F_TEMPORARY:
        return True
    return is_generated_link_local(
        str(msg.get_attr("IFA_ADDRESS")), int(msg["prefixlen"]), flags, mac
    )


def is_generated_link_local(address: str, prefixlen: int, flags: int, mac: str | None) -> bool:
    """An IPv6 link-local address the kernel makes when the link comes up: EUI-64
    from the MAC, or stable-privacy. Link-local addresses added by hand are not."""
    ip = ipaddress.IPv6Address(address)
    if prefixlen != 64 or ip not in ipaddress.IPv6Network("fe80::/64"):
        return False
    if flags & IFA_F_STABLE_PRIVACY:
        return True
    return mac is not None and ip == eui64_link_local(mac)


def eui64_link_local(mac: str) -> ipaddress.IPv6Address | None:
    try:
        octets = bytes.fromhex(mac.replace(":", ""))
    except ValueError:
        return None
    if len(octets) != 6:
        return None
    iid = bytes([octets[0] ^ 0x02]) + octets[1:3] + b"\xff\xfe" + octets[3:]
    return ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + iid)


def _route_wanted(msg: Any, indexes: set[int]) -> bool:
    if msg["proto"] in ROUTE_PROTOCOLS_SKIPPED or msg["flags"] & RTM_F_CLONED:
        return False
    oifs = {msg.get_attr("RTA_OIF")} | {hop["oif"] for hop in msg.get_attr("RTA_MULTIPATH") or ()}
    return bool(oifs & indexes)


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
                gateway=_nested_attr(hop, "RTA_GATEWAY"),
                weight=int(hop["hops"]) + 1,
                flags=int(hop["flags"]) & RTNH_F_ONLINK,
            )
            for hop in msg.get_attr("RTA_MULTIPATH") or ()
        ),
    )


def _nested_attr(nla: Any, name: str) -> Any:
    for key, value in nla["attrs"]:
        if key == name:
            return value
    return None


# -- restore --------------------------------------------------------------------


def restore_interfaces(snapshot: InterfacesSnapshot) -> RestoreReport:
    """Put the saved configuration back on the interfaces of the same names.

    Per interface: link settings, then addresses, then the link state; routes
    come last, once every interface is up with its addresses, since a route's
    gateway or source may belong to another interface. A failure is reported
    and the rest goes on.
    """
    problems: list[RestoreProblem] = []
    try:
        with IPRoute() as ipr:
            outcomes = tuple(_restore_interface(ipr, state, snapshot.taken_at, problems)
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


class _Failed(Exception):
    """One netlink request failed; carries what RestoreProblem needs."""

    def __init__(self, errno_name: str, message: str) -> None:
        super().__init__(message)
        self.errno_name = errno_name
        self.message = message


def _errno_name(code: int | None) -> str:
    return errno.errorcode.get(code or 0, str(code) if code else "")


def _attempt(request: Callable[[], object]) -> None:
    """Run one netlink request, turning its failure into `_Failed`."""
    try:
        request()
    except NetlinkError as e:
        raise _Failed(_errno_name(e.code), str(e)) from e
    except OSError as e:
        raise _Failed(_errno_name(e.errno), str(e)) from e
    except (ValueError, TypeError, KeyError) as e:
        # pyroute2 refuses to encode a value: the snapshot holds something odd.
        raise _Failed("", f"cannot encode request: {e}") from e


def _link_by_name(ipr: Any, name: str) -> Any | None:
    indexes = list(ipr.link_lookup(ifname=name))
    if not indexes:
        return None
    try:
        return next(iter(ipr.get_links(indexes[0])))
    except NetlinkError as e:
        if e.code == errno.ENODEV:  # gone in between
            return None
        raise


def _restore_interface(
    ipr: Any, state: InterfaceState, taken_at: float, problems: list[RestoreProblem]
) -> InterfaceOutcome:
    before = len(problems)

    def step(action: str, request: Callable[[], object]) -> bool:
        try:
            _attempt(request)
        except _Failed as e:
            problems.append(RestoreProblem(state.name, action, e.errno_name, e.message))
            return False
        return True

    link = None
    try:
        link = _link_by_name(ipr, state.name)
    except NetlinkError as e:
        problems.append(RestoreProblem(state.name, "look up", _errno_name(e.code), str(e)))
    if link is None:
        if len(problems) == before:
            problems.append(RestoreProblem(state.name, "look up", "ENODEV", "no such interface"))
        return InterfaceOutcome(state.name, "missing")
    index = int(link["index"])
    _restore_link(ipr, index, link, state, step)
    added, present = _restore_addresses(ipr, index, state, taken_at, step, problems)
    if state.up:
        step("set up", partial(ipr.link, "set", index=index, flags=IFF_UP, change=IFF_UP))
    status: InterfaceStatus = "restored" if len(problems) == before else "partial"
    return InterfaceOutcome(state.name, status, added, present)


def _restore_link(
    ipr: Any, index: int, link: Any, state: InterfaceState, step: Callable[..., bool]
) -> None:
    """MAC, MTU, txqueuelen, alias and flags other than up. A link saved down
    goes down first: addresses added while it is down stay when it stays down."""
    flags = int(link["flags"])
    if not state.up and flags & IFF_UP:
        step("set down", lambda: ipr.link("set", index=index, flags=0, change=IFF_UP))
    if state.mac is not None and str(link.get_attr("IFLA_ADDRESS")).lower() != state.mac.lower():
        step(f"set mac {state.mac}",
             lambda: _set_mac(ipr, index, state.mac or "", bool(flags & IFF_UP)))
    if int(link.get_attr("IFLA_MTU")) != state.mtu:
        step(f"set mtu {state.mtu}", lambda: ipr.link("set", index=index, mtu=state.mtu))
    if int(link.get_attr("IFLA_TXQLEN") or 0) != state.txqlen:
        step(f"set txqueuelen {state.txqlen}",
             lambda: ipr.link("set", index=index, txqlen=state.txqlen))
    if state.alias is not None and link.get_attr("IFLA_IFALIAS") != state.alias:
        step("set alias", lambda: ipr.link("set", index=index, ifalias=state.alias))
    others = LINK_FLAGS_RESTORED & ~IFF_UP
    if (flags ^ state.flags) & others:
        step(f"set flags {state.flags & others:#x}",
             lambda: ipr.link("set", index=index, flags=state.flags & others, change=others))


def _set_mac(ipr: Any, index: int, mac: str, up: bool) -> None:
    """Change the MAC with the link down: the kernel derives the IPv6 link-local
    address from the MAC when the link comes up and keeps it across a MAC
    change (and some drivers refuse a new MAC while up). The link's IPv6
    addresses go with the down; the saved ones are added next, and the link
    state is set at the end of the restore."""
    if up:
        ipr.link("set", index=index, flags=0, change=IFF_UP)
    ipr.link("set", index=index, address=mac)


def _restore_order(addresses: Sequence[AddressState]) -> list[AddressState]:
    """The kernel lists IPv4 addresses in the order they were added and IPv6
    ones newest first, so adding IPv6 in reverse keeps each list's order (which
    decides primary addresses and, on ties, source address selection)."""
    v4 = [a for a in addresses if a.family == 4]
    v6 = [a for a in addresses if a.family == 6]
    return v4 + v6[::-1]


def _restore_addresses(
    ipr: Any,
    index: int,
    state: InterfaceState,
    taken_at: float,
    step: Callable[..., bool],
    problems: list[RestoreProblem],
) -> tuple[int, int]:
    added = present = 0
    elapsed = max(0, int(time.time() - taken_at)) if taken_at else 0
    for address in _restore_order(state.addresses):
        request = _address_request(index, address, elapsed)
        if request is None:
            log.info("%s: address %s expired since the save", state.name, address)
            continue
        try:
            _attempt(partial(ipr.addr, "add", **request))
        except _Failed as e:
            if e.errno_name == "EEXIST":
                present += 1
            else:
                problems.append(RestoreProblem(state.name, f"add address {address}",
                                               e.errno_name, e.message))
            continue
        added += 1
    return added, present


def _address_request(index: int, a: AddressState, elapsed: int) -> dict[str, Any] | None:
    """Keyword arguments of `IPRoute.addr("add", ...)`, or None if it expired."""
    request: dict[str, Any] = {
        "index": index,
        "family": socket.AF_INET if a.family == 4 else socket.AF_INET6,
        "prefixlen": a.prefixlen,
        "scope": a.scope,
        "flags": a.all_flags & ADDRESS_FLAGS_RESTORED,
    }
    if a.family == 4 or a.peer is not None:
        request["local"] = a.address
    request["address"] = a.peer if a.peer is not None else a.address
    if a.label is not None:
        request["label"] = a.label
    if a.broadcast is not None:
        request["broadcast"] = a.broadcast
    if a.valid_lft is not None:
        valid = a.valid_lft - elapsed
        if valid <= 0:
            return None
        preferred = max(0, (a.preferred_lft or 0) - elapsed)
        # pyroute2 0.9 reads preferred_lft/valid_lft; 0.7 ignores them and reads
        # `cacheinfo`, but only when it comes after them: keep this order.
        request["preferred_lft"] = preferred
        request["valid_lft"] = valid
        request["cacheinfo"] = {"preferred": preferred, "valid": valid}
    return request


def _restore_routes(
    ipr: Any, routes: Sequence[RouteState], problems: list[RestoreProblem]
) -> tuple[int, int, int]:
    """Add routes, narrowest scope first, then again those that failed as long
    as a round adds something: a gateway may be reachable only through another
    saved route. Returns (added, already present, failed)."""
    indexes = {str(m.get_attr("IFLA_IFNAME")): int(m["index"]) for m in ipr.get_links()}
    pending: list[RouteState] = []
    failures: dict[RouteState, _Failed] = {}
    for route in sorted(routes, key=lambda r: -r.scope):
        missing = sorted(route.interfaces() - indexes.keys())
        if missing:
            failures[route] = _Failed("ENODEV", f"no interface {', '.join(map(repr, missing))}")
        else:
            pending.append(route)
    added = present = 0
    while pending:
        retry: list[RouteState] = []
        for route in pending:
            try:
                _attempt(partial(ipr.route, "add", **_route_request(route, indexes)))
            except _Failed as e:
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


def _route_request(r: RouteState, indexes: Mapping[str, int]) -> dict[str, Any]:
    """Keyword arguments of `IPRoute.route("add", ...)`; every field is given,
    since pyroute2 otherwise fills in defaults of its own (protocol "static")."""
    request: dict[str, Any] = {
        "family": socket.AF_INET if r.family == 4 else socket.AF_INET6,
        "table": r.table,
        "dst": r.dst if r.dst is not None else ("0.0.0.0" if r.family == 4 else "::"),
        "dst_len": r.dst_len,
        "type": r.type,
        "proto": r.protocol,
        "scope": r.scope,
        "tos": r.tos,
        "flags": r.flags,
    }
    optional = {
        "oif": indexes[r.interface] if r.interface is not None else None,
        "gateway": r.gateway,
        "priority": r.priority,
        "prefsrc": r.prefsrc,
        "pref": r.pref,
    }
    request.update({k: v for k, v in optional.items() if v is not None})
    if r.src is not None:
        request.update(src=r.src, src_len=r.src_len)
    if r.metrics:
        request["metrics"] = dict(r.metrics)
    if r.nexthops:
        request["multipath"] = [_nexthop_request(hop, indexes) for hop in r.nexthops]
    return request


def _nexthop_request(hop: NextHopState, indexes: Mapping[str, int]) -> dict[str, Any]:
    request: dict[str, Any] = {"hops": hop.weight - 1, "flags": hop.flags}
    if hop.interface is not None:
        request["oif"] = indexes[hop.interface]
    if hop.gateway is not None:
        request["gateway"] = hop.gateway
    return request


# -- reading a snapshot back ----------------------------------------------------


class _Reader:
    """Typed access to one JSON object, with errors that say where."""

    def __init__(self, doc: object, where: str) -> None:
        if not isinstance(doc, dict):
            raise InterfacesSnapshotInvalid(reason=f"{where}: expected an object")
        self.fields: dict[str, Any] = doc
        self.where = where

    def raw(self, key: str) -> Any:
        return self.fields.get(key)

    def _bad(self, key: str, expected: str) -> InterfacesSnapshotInvalid:
        return InterfacesSnapshotInvalid(
            reason=f"{self.where}.{key}: expected {expected}, got {self.fields.get(key)!r}")

    def integer(self, key: str) -> int:
        value = self.fields.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._bad(key, "an integer")
        return value

    def opt_integer(self, key: str) -> int | None:
        return None if self.fields.get(key) is None else self.integer(key)

    def number(self, key: str) -> float:
        value = self.fields.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self._bad(key, "a number")
        return float(value)

    def text(self, key: str) -> str:
        value = self.fields.get(key)
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return value

    def opt_text(self, key: str) -> str | None:
        return None if self.fields.get(key) is None else self.text(key)

    def family(self, key: str) -> Family:
        value = self.fields.get(key)
        if value == 4:
            return 4
        if value == 6:
            return 6
        raise self._bad(key, "4 or 6")

    def values(self, key: str) -> list[object]:
        value = self.fields.get(key)
        if not isinstance(value, list):
            raise self._bad(key, "a list")
        return value

    def items(self, key: str) -> list[_Reader]:
        return [_Reader(item, f"{self.where}.{key}[{i}]")
                for i, item in enumerate(self.values(key))]

    def strings(self, key: str) -> list[str]:
        value = self.values(key)
        if not all(isinstance(v, str) for v in value):
            raise self._bad(key, "a list of strings")
        return [str(v) for v in value]


def _interface_from(r: _Reader) -> InterfaceState:
    return InterfaceState(
        name=r.text("name"),
        flags=r.integer("flags"),
        mac=r.opt_text("mac"),
        mtu=r.integer("mtu"),
        txqlen=r.integer("txqlen"),
        alias=r.opt_text("alias"),
        addresses=tuple(_address_from(a) for a in r.items("addresses")),
    )


def _address_from(r: _Reader) -> AddressState:
    return AddressState(
        family=r.family("family"),
        address=r.text("address"),
        prefixlen=r.integer("prefixlen"),
        scope=r.integer("scope"),
        flags=r.integer("flags"),
        extended_flags=r.opt_integer("extended_flags"),
        peer=r.opt_text("peer"),
        label=r.opt_text("label"),
        broadcast=r.opt_text("broadcast"),
        valid_lft=r.opt_integer("valid_lft"),
        preferred_lft=r.opt_integer("preferred_lft"),
    )


def _route_from(r: _Reader) -> RouteState:
    metrics = []
    for pair in r.values("metrics"):
        if (not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], str)
                or not isinstance(pair[1], int)):
            raise InterfacesSnapshotInvalid(reason=f"{r.where}.metrics: bad entry {pair!r}")
        metrics.append((pair[0], pair[1]))
    return RouteState(
        family=r.family("family"),
        table=r.integer("table"),
        dst=r.opt_text("dst"),
        dst_len=r.integer("dst_len"),
        type=r.integer("type"),
        protocol=r.integer("protocol"),
        scope=r.integer("scope"),
        tos=r.integer("tos"),
        flags=r.integer("flags"),
        interface=r.opt_text("interface"),
        gateway=r.opt_text("gateway"),
        priority=r.opt_integer("priority"),
        prefsrc=r.opt_text("prefsrc"),
        src=r.opt_text("src"),
        src_len=r.integer("src_len"),
        pref=r.opt_integer("pref"),
        metrics=tuple(metrics),
        nexthops=tuple(
            NextHopState(
                interface=h.opt_text("interface"),
                gateway=h.opt_text("gateway"),
                weight=h.integer("weight"),
                flags=h.integer("flags"),
            )
            for h in r.items("nexthops")
        ),
    )


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
    return InterfacesSnapshot.from_json(snapshot.file(FILE).read_text())


class InterfacesStage(Stage):
    """OVS internal interfaces: link state, MAC, MTU, addresses, routes.

    What a module reload re-creates; so after one (`scope.module_reloaded`)
    it also puts back the nft tables that bind those interfaces by index or
    as a device (the reload broke them), unless the snapshot was taken before
    the host last booted: then it is an old copy.
    """

    name = "interfaces"

    def save(self, writer: SnapshotWriter, scope: SaveScope) -> SaveResult:
        with writer.open(FILE) as f:
            f.write(save_interfaces(internal_interfaces()).to_json().encode())
        return SaveResult({}, {})

    def check(self, snapshot: Snapshot, scope: RestoreScope) -> None:
        missing = [f for f in (FILE, firewall.FILE) if f not in snapshot.manifest.files]
        if missing:
            reason = f"has no interfaces stage ({missing[0]} is not in its manifest)"
            raise SnapshotInvalid(path=snapshot.path, reason=reason)

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
                log.warning("firewall not restored: %s was saved before the host last booted",
                            snapshot.path)
                fw_report = {"ok": True, "parts": [], "skipped": "saved before the last boot"}
        ok = bool(report["ok"] and (fw_report is None or fw_report["ok"]))
        return InterfacesReport({"ok": ok, "interfaces": report, "firewall": fw_report})
