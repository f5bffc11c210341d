"""What the interfaces stage keeps in a snapshot: each saved interface's
link settings and addresses, and the routes through them, with the kernel's
own numbers; `InterfacesSnapshot` is `interfaces/interfaces.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pyroute2.netlink.rtnl import rt_proto, rt_type
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP
from pyroute2.netlink.rtnl.rtmsg import RT_SCOPE_UNIVERSE

from ovs_service import codec

SCHEMA = 1

Family = Literal[4, 6]


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
    type: int = rt_type["unicast"]
    protocol: int = rt_proto["boot"]  # what `ip route add` uses
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
    # When it was taken, to age finite address lifetimes on restore: by the
    # boot clock (CLOCK_BOOTTIME, which no one steps) in the same boot, by the
    # wall clock in another. None, 0.0: snapshots from before these were saved.
    taken_at: float = 0.0  # wall clock
    boottime: float | None = None  # CLOCK_BOOTTIME
    boot_id: str | None = None  # /proc/sys/kernel/random/boot_id
    schema: int = SCHEMA

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = codec.to_doc(self)
        return doc

    @classmethod
    def from_doc(cls, doc: object, *, where: codec.Where) -> InterfacesSnapshot:
        codec.check_schema(doc, SCHEMA, where)
        return codec.from_doc(cls, doc, where=where)
