"""Netlink for the interfaces stage: which addresses and routes the kernel
makes itself, how a failed request is named, and the requests that put a
saved address or route back (keyword arguments of pyroute2's `IPRoute`).

Kernel constants come from pyroute2 (those of both 0.7, Debian 12's, and
0.9); the few pyroute2 0.7 lacks are defined here, each saying so.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import rt_proto
from pyroute2.netlink.rtnl.ifaddrmsg import (
    IFA_F_HOMEADDRESS,
    IFA_F_MANAGETEMPADDR,
    IFA_F_MCAUTOJOIN,
    IFA_F_NODAD,
    IFA_F_NOPREFIXROUTE,
    IFA_F_OPTIMISTIC,
    IFA_F_STABLE_PRIVACY,
    IFA_F_TEMPORARY,
)
from pyroute2.netlink.rtnl.ifinfmsg import (
    IFF_ALLMULTI,
    IFF_MULTICAST,
    IFF_NOARP,
    IFF_PROMISC,
    IFF_UP,
)

from ovs_service.errors import NetlinkRequestFailed

if TYPE_CHECKING:
    from ovs_service.stages.interfaces_snapshot import (
        AddressState,
        InterfaceState,
        NextHopState,
        RouteState,
    )

# Link flags (if.h) that a user sets and the stage restores.
LINK_FLAGS_RESTORED = IFF_UP | IFF_NOARP | IFF_PROMISC | IFF_ALLMULTI | IFF_MULTICAST
# Address flags (if_addr.h) a user chooses; the others (tentative, permanent,
# deprecated...) are kernel state. The low byte travels in ifa_flags, all of them in IFA_FLAGS.
ADDRESS_FLAGS_RESTORED = (
    IFA_F_NODAD
    | IFA_F_OPTIMISTIC
    | IFA_F_HOMEADDRESS
    | IFA_F_MANAGETEMPADDR
    | IFA_F_NOPREFIXROUTE
    | IFA_F_MCAUTOJOIN
)
# IFA_PROTO values the kernel puts on addresses it creates: loopback, router
# advertisement, link-local (if_addr.h). pyroute2 0.7 names none of them.
IFAPROT_KERNEL = (1, 2, 3)
# An address lifetime of "forever" (INFINITY_LIFE_TIME, if_addr.h); pyroute2 names it in neither.
FOREVER = 0xFFFFFFFF
# Routes the kernel derives from addresses and router advertisements, and makes again.
ROUTE_PROTOCOLS_SKIPPED = (rt_proto["redirect"], rt_proto["kernel"], rt_proto["ra"])
# A cached (cloned) route, not a configured one (rtnetlink.h); pyroute2 0.7 does not name it.
RTM_F_CLONED = 0x200


def errno_name(code: int | None) -> str:
    return errno.errorcode.get(code or 0, str(code) if code else "")


def attempt(request: Callable[[], object]) -> None:
    """Run one netlink request, turning its failure into `NetlinkRequestFailed`."""
    try:
        request()
    except NetlinkError as e:
        raise NetlinkRequestFailed(errno_name=errno_name(e.code), message=str(e)) from e
    except OSError as e:
        raise NetlinkRequestFailed(errno_name=errno_name(e.errno), message=str(e)) from e
    except (ValueError, TypeError, KeyError) as e:
        # pyroute2 refuses to encode a value: the snapshot holds something odd.
        raise NetlinkRequestFailed(errno_name="", message=f"cannot encode request: {e}") from e


def link_by_name(ipr: Any, name: str) -> Any | None:
    indexes = list(ipr.link_lookup(ifname=name))
    if not indexes:
        return None
    try:
        return next(iter(ipr.get_links(indexes[0])))
    except NetlinkError as e:
        if e.code == errno.ENODEV:  # gone in between
            return None
        raise


def nested_attr(nla: Any, name: str) -> Any:
    for key, value in nla["attrs"]:
        if key == name:
            return value
    return None


def kernel_made_address(msg: Any, mac: str | None) -> bool:
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


def route_wanted(msg: Any, indexes: set[int]) -> bool:
    if msg["proto"] in ROUTE_PROTOCOLS_SKIPPED or msg["flags"] & RTM_F_CLONED:
        return False
    oifs = {msg.get_attr("RTA_OIF")} | {hop["oif"] for hop in msg.get_attr("RTA_MULTIPATH") or ()}
    return bool(oifs & indexes)


def restore_link(
    ipr: Any, index: int, link: Any, state: InterfaceState, step: Callable[..., bool]
) -> None:
    """MAC, MTU, txqueuelen, alias and flags other than up. A link saved down
    goes down first: addresses added while it is down stay when it stays down."""
    flags = int(link["flags"])
    if not state.up and flags & IFF_UP:
        step("set down", lambda: ipr.link("set", index=index, flags=0, change=IFF_UP))
    if state.mac is not None and str(link.get_attr("IFLA_ADDRESS")).lower() != state.mac.lower():
        step(f"set mac {state.mac}",
             lambda: set_mac(ipr, index, state.mac or "", bool(flags & IFF_UP)))
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


def restore_order(addresses: Sequence[AddressState]) -> list[AddressState]:
    """The kernel lists IPv4 addresses in the order they were added and IPv6
    ones newest first, so adding IPv6 in reverse keeps each list's order (which
    decides primary addresses and, on ties, source address selection)."""
    v4 = [a for a in addresses if a.family == 4]
    v6 = [a for a in addresses if a.family == 6]
    return v4 + v6[::-1]


def set_mac(ipr: Any, index: int, mac: str, up: bool) -> None:
    """Change the MAC with the link down: the kernel derives the IPv6 link-local
    address from the MAC when the link comes up and keeps it across a MAC
    change (and some drivers refuse a new MAC while up). The link's IPv6
    addresses go with the down; the saved ones are added next, and the link
    state is set at the end of the restore."""
    if up:
        ipr.link("set", index=index, flags=0, change=IFF_UP)
    ipr.link("set", index=index, address=mac)


def address_request(index: int, a: AddressState, elapsed: int) -> dict[str, Any] | None:
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


def route_request(r: RouteState, indexes: Mapping[str, int]) -> dict[str, Any]:
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
        request["multipath"] = [nexthop_request(hop, indexes) for hop in r.nexthops]
    return request


def nexthop_request(hop: NextHopState, indexes: Mapping[str, int]) -> dict[str, Any]:
    request: dict[str, Any] = {"hops": hop.weight - 1, "flags": hop.flags}
    if hop.interface is not None:
        request["oif"] = indexes[hop.interface]
    if hop.gateway is not None:
        request["gateway"] = hop.gateway
    return request
