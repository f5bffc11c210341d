"""The kernel's Open vSwitch datapaths over generic netlink: list, delete and
create them, and add ports at given numbers.

What `ovs-dpctl dump-dps`, `del-dp`, `add-dp` and `add-if` do, in one socket
of this process: a module reload deletes every datapath, and nothing
forwards until they are back, so each port should cost a netlink round
trip, not the start of a process (a few hundred milliseconds on a slow
machine). Ports keep their link state: the kernel neither brings them up
nor down (`ovs-dpctl add-if` brought each one up). Names go to the kernel
as they are, so any name Linux allows can be re-created.

Messages follow include/uapi/linux/openvswitch.h: a netlink header, a
generic netlink header, `struct ovs_header` (the datapath's ifindex), then
attributes.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

from ovs_service.errors import DatapathNetlinkError

NETLINK_GENERIC = 16
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
GENL_ID_CTRL, CTRL_CMD_GETFAMILY = 0x10, 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 1, 2

DATAPATH_FAMILY, DATAPATH_VERSION = "ovs_datapath", 2
VPORT_FAMILY, VPORT_VERSION = "ovs_vport", 1
CMD_NEW, CMD_DEL, CMD_GET = 1, 2, 3
DP_ATTR_NAME, DP_ATTR_UPCALL_PID, DP_ATTR_USER_FEATURES = 1, 2, 5
# What `ovs-dpctl add-dp` asks for; ovs-vswitchd sets its own when it opens the datapath.
DP_F_UNALIGNED, DP_F_VPORT_PIDS = 1 << 0, 1 << 1
VPORT_ATTR_PORT_NO, VPORT_ATTR_TYPE, VPORT_ATTR_NAME, VPORT_ATTR_UPCALL_PID = 1, 2, 3, 5
VPORT_TYPE_NETDEV, VPORT_TYPE_INTERNAL = 1, 2
VPORT_TYPES = {"": VPORT_TYPE_NETDEV, "system": VPORT_TYPE_NETDEV,
               "internal": VPORT_TYPE_INTERNAL}
# The vport types that the openvswitch module provides itself (the others,
# compat tunnel vports, come from vport-* modules).
OWN_VPORT_TYPES = frozenset({VPORT_TYPE_NETDEV, VPORT_TYPE_INTERNAL})

TIMEOUT = 10.0  # seconds for any one answer of the kernel

_NLMSG = struct.Struct("=IHHII")
_GENL = struct.Struct("=BBH")
_OVS_HEADER = struct.Struct("=i")
_NLA = struct.Struct("=HH")


@dataclass(frozen=True)
class Message:
    type: int
    payload: bytes


def _attr(kind: int, value: bytes) -> bytes:
    data = _NLA.pack(_NLA.size + len(value), kind) + value
    return data + b"\0" * (-len(data) % 4)


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _string(kind: int, value: str) -> bytes:
    return _attr(kind, os.fsencode(value) + b"\0")


def attributes(data: bytes) -> dict[int, bytes]:
    """Netlink attributes → their payloads, by type (flags bits dropped)."""
    found, offset = {}, 0
    while offset + _NLA.size <= len(data):
        length, kind = _NLA.unpack_from(data, offset)
        if length < _NLA.size:
            break
        found[kind & 0x3FFF] = data[offset + _NLA.size:offset + length]
        offset += (length + 3) & ~3
    return found


def _text(value: bytes) -> str:
    return os.fsdecode(value.split(b"\0", 1)[0])


class Datapaths:
    """One generic netlink socket to the openvswitch module (loaded)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self._sock.settimeout(TIMEOUT)
        self._sock.bind((0, 0))
        self._seq = 0
        self._families: dict[str, int] = {}
        self._ifindexes: dict[str, int] = {}

    def __enter__(self) -> Datapaths:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._sock.close()

    # -- requests --------------------------------------------------------------

    def names(self) -> list[str]:
        """The kernel's datapaths (`ovs-dpctl dump-dps`, without `system@`)."""
        replies = self._request("list datapaths", DATAPATH_FAMILY, CMD_GET, 0, b"", dump=True)
        found = (attributes(body) for body in replies)
        return [_text(attrs[DP_ATTR_NAME]) for attrs in found if DP_ATTR_NAME in attrs]

    def ports(self, datapath: str) -> dict[str, int]:
        """A datapath's ports: name → number (`ovs-dpctl show`'s port lines)."""
        return {name: number for name, (number, _) in self.vports(datapath).items()}

    def vports(self, datapath: str) -> dict[str, tuple[int, int]]:
        """A datapath's ports: name → (number, the kernel's vport type).

        The kernel's type, not ovs-dpctl's: a tunnel device that ovs-vswitchd
        made with rtnetlink (vxlan_sys_4789 on any recent kernel) is a
        netdev vport (OVS_VPORT_TYPE_NETDEV) of the openvswitch module,
        although ovs-dpctl shows it as `vxlan`.
        """
        replies = self._request(f"list the ports of {datapath}", VPORT_FAMILY, CMD_GET,
                                self._ifindex(datapath), b"", dump=True)
        found = {}
        for body in replies:
            attrs = attributes(body)
            if VPORT_ATTR_NAME in attrs and VPORT_ATTR_PORT_NO in attrs:
                kind = (struct.unpack("=I", attrs[VPORT_ATTR_TYPE][:4])[0]
                        if VPORT_ATTR_TYPE in attrs else 0)
                found[_text(attrs[VPORT_ATTR_NAME])] = (
                    struct.unpack("=I", attrs[VPORT_ATTR_PORT_NO][:4])[0], kind)
        return found

    def delete(self, name: str) -> None:
        self._request(f"delete datapath {name}", DATAPATH_FAMILY, CMD_DEL, 0,
                      _string(DP_ATTR_NAME, name))
        self._ifindexes.pop(name, None)  # a new one gets a new local port

    def create(self, name: str) -> None:
        """A datapath and its local port 0 (`EEXIST` if there is one)."""
        self._request(f"create datapath {name}", DATAPATH_FAMILY, CMD_NEW, 0,
                      _string(DP_ATTR_NAME, name) + _u32(DP_ATTR_UPCALL_PID, 0)
                      + _u32(DP_ATTR_USER_FEATURES, DP_F_UNALIGNED | DP_F_VPORT_PIDS))

    def add_port(self, datapath: str, number: int, name: str, kind: str) -> None:
        """Port `name` at `number`: a device that exists (`system`), or one the
        module makes (`internal`). Upcalls go nowhere until ovs-vswitchd opens it."""
        self._request(f"add port {number} ({name}) to {datapath}", VPORT_FAMILY, CMD_NEW,
                      self._ifindex(datapath),
                      _u32(VPORT_ATTR_PORT_NO, number) + _u32(VPORT_ATTR_TYPE, VPORT_TYPES[kind])
                      + _string(VPORT_ATTR_NAME, name) + _u32(VPORT_ATTR_UPCALL_PID, 0))

    # -- the protocol ------------------------------------------------------------

    def _ifindex(self, datapath: str) -> int:
        """The datapath's local port's interface index (looked up once per datapath)."""
        if datapath not in self._ifindexes:
            self._ifindexes[datapath] = socket.if_nametoindex(datapath)
        return self._ifindexes[datapath]

    def _family(self, name: str) -> int:
        if name not in self._families:
            body = _GENL.pack(CTRL_CMD_GETFAMILY, 1, 0) + _string(CTRL_ATTR_FAMILY_NAME, name)
            try:
                [reply] = self._exchange(f"find {name}", GENL_ID_CTRL,
                                         NLM_F_REQUEST | NLM_F_ACK, body)
            except DatapathNetlinkError as e:
                raise DatapathNetlinkError(
                    request=e.fields["request"], errno=e.fields["errno"],
                    reason=f"{e.fields['reason']} (the openvswitch module is not loaded, "
                           "and the kernel could not load it)") from None
            found = attributes(reply[_GENL.size:])
            self._families[name] = struct.unpack("=H", found[CTRL_ATTR_FAMILY_ID][:2])[0]
        return self._families[name]

    def _request(self, what: str, family: str, cmd: int, ifindex: int, attrs: bytes,
                 dump: bool = False) -> list[bytes]:
        """Send one command; the replies' attributes (after the ovs_header)."""
        version = DATAPATH_VERSION if family == DATAPATH_FAMILY else VPORT_VERSION
        body = _GENL.pack(cmd, version, 0) + _OVS_HEADER.pack(ifindex) + attrs
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
        skip = _GENL.size + _OVS_HEADER.size
        replies = self._exchange(what, self._family(family), flags, body)
        return [reply[skip:] for reply in replies]

    def _exchange(self, what: str, kind: int, flags: int, body: bytes) -> list[bytes]:
        self._seq += 1
        self._sock.send(_NLMSG.pack(_NLMSG.size + len(body), kind, flags, self._seq, 0) + body)
        replies = []
        for message in self._receive(self._seq, what):
            if message.type in (NLMSG_DONE, NLMSG_ERROR):
                # An error, or 0: the acknowledgement, or the end of a dump
                # (whose own error the kernel puts there).
                code = -struct.unpack_from("=i", message.payload)[0] if message.payload else 0
                if code:
                    raise DatapathNetlinkError(request=what, reason=os.strerror(code),
                                               errno=code)
                break
            replies.append(message.payload)
        return replies

    def _receive(self, seq: int, what: str) -> Iterator[Message]:
        while True:
            data = self._sock.recv(1 << 16)
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, kind, _, got_seq, _ = _NLMSG.unpack_from(data, offset)
                if length < _NLMSG.size:
                    raise DatapathNetlinkError(request=what, reason="a malformed netlink answer",
                                               errno=0)
                if got_seq == seq:
                    yield Message(kind, data[offset + _NLMSG.size:offset + length])
                offset += (length + 3) & ~3

