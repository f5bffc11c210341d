"""The generic netlink client of the kernel's datapaths, against canned answers:
dumps over several reads, errors where the kernel puts them, one line each.
The real module is exercised in the VM lanes (force-reload-kmod)."""

from __future__ import annotations

import errno
import struct

import pytest

from ovs_service import dpnetlink
from ovs_service.dpnetlink import _NLMSG, NLMSG_DONE, NLMSG_ERROR, Datapaths
from ovs_service.errors import DatapathNetlinkError

VPORT_FAMILY_ID = 0x20


def message(kind: int, seq: int, payload: bytes) -> bytes:
    data = _NLMSG.pack(_NLMSG.size + len(payload), kind, 0, seq, 0) + payload
    return data + b"\0" * (-len(data) % 4)


def vport(number: int, name: str, kind: int | None = None) -> bytes:
    """A vport's answer: genl header, ovs_header, port number, type and name."""
    return (struct.pack("=BBHi", dpnetlink.CMD_NEW, 1, 0, 7)
            + dpnetlink._u32(dpnetlink.VPORT_ATTR_PORT_NO, number)
            + (b"" if kind is None else dpnetlink._u32(dpnetlink.VPORT_ATTR_TYPE, kind))
            + dpnetlink._string(dpnetlink.VPORT_ATTR_NAME, name))


class Canned:
    """A socket that answers each request with the next list of reads."""

    def __init__(self, reads: list[bytes]) -> None:
        self.reads = reads
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.reads.pop(0)

    def close(self) -> None:
        pass


def client(reads: list[bytes], monkeypatch: pytest.MonkeyPatch) -> Datapaths:
    monkeypatch.setattr("socket.if_nametoindex", lambda name: 7)
    kernel = Datapaths.__new__(Datapaths)
    kernel._sock = Canned(reads)  # type: ignore[assignment]
    kernel._seq = 0
    kernel._families = {dpnetlink.VPORT_FAMILY: VPORT_FAMILY_ID}
    kernel._ifindexes = {}
    return kernel


def test_a_dump_over_several_reads_with_another_requests_answer_between(
        monkeypatch: pytest.MonkeyPatch) -> None:
    odd = "p9,type=gre"
    reads = [message(VPORT_FAMILY_ID, 1, vport(1, "p0"))
             + message(VPORT_FAMILY_ID, 99, vport(5, "x")),
             message(VPORT_FAMILY_ID, 1, vport(9, odd)),
             message(NLMSG_DONE, 1, struct.pack("=i", 0))]
    assert client(reads, monkeypatch).ports("ovs-system") == {"p0": 1, odd: 9}


def test_vports_give_the_kernels_type_of_each_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """rtnetlink's vxlan_sys_4789 is a netdev vport of the module (type 1), a
    compat vxlan vport is type 4, which the module does not provide."""
    reads = [message(VPORT_FAMILY_ID, 1, vport(0, "ovs-system", 2))
             + message(VPORT_FAMILY_ID, 1, vport(3, "vxlan_sys_4789", 1))
             + message(VPORT_FAMILY_ID, 1, vport(4, "vxlan_sys_4790", 4)),
             message(NLMSG_DONE, 1, struct.pack("=i", 0))]
    found = client(reads, monkeypatch).vports("ovs-system")
    assert found == {"ovs-system": (0, 2), "vxlan_sys_4789": (3, 1), "vxlan_sys_4790": (4, 4)}
    assert [name for name, (_, kind) in found.items()
            if kind in dpnetlink.OWN_VPORT_TYPES] == ["ovs-system", "vxlan_sys_4789"]


def test_an_error_at_the_end_of_a_dump_is_an_error_not_an_empty_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    reads = [message(NLMSG_DONE, 1, struct.pack("=i", -errno.ENODEV))]
    with pytest.raises(DatapathNetlinkError) as e:
        client(reads, monkeypatch).ports("ovs-system")
    assert e.value.fields["errno"] == errno.ENODEV
    assert str(e.value) == "kernel datapath: list the ports of ovs-system: No such device"


def test_a_refused_port_names_it_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = [message(NLMSG_ERROR, 1, struct.pack("=i", -errno.EBUSY) + b"\0" * 16)]
    with pytest.raises(DatapathNetlinkError) as e:
        client(reads, monkeypatch).add_port("ovs-system", 3, "br0", "internal")
    assert str(e.value) == ("kernel datapath: add port 3 (br0) to ovs-system: "
                            "Device or resource busy")


def test_a_malformed_answer_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = [_NLMSG.pack(4, VPORT_FAMILY_ID, 0, 1, 0)]
    with pytest.raises(DatapathNetlinkError, match="malformed"):
        client(reads, monkeypatch).ports("ovs-system")
