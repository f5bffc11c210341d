"""Processes whose packet sockets are bound to interfaces that no longer exist.

After the kernel module reloads, internal interfaces are new devices with new
ifindexes: a DHCP client or capture tool still bound to the old one receives
nothing. This finds them, as Open vSwitch's `ovs-check-dead-ifs` does.

When a bound interface is unregistered the kernel resets the socket's binding
to ifindex -1 (/proc/net/packet shows -1): the old index is not known after a
module reload, only that the interface is gone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class DeadSocket:
    pid: int
    command: str
    ifindex: int
    """The index the socket is bound to: -1 once its interface was unregistered."""
    inode: int


def _ifindexes() -> set[int]:
    found = set()
    for entry in Path("/sys/class/net").iterdir():
        try:
            found.add(int((entry / "ifindex").read_text()))
        except (OSError, ValueError):
            continue
    return found


def _packet_sockets() -> dict[int, int]:
    """Socket inode → the ifindex it is bound to (0 = every interface, skipped)."""
    sockets = {}
    lines = (PROC / "net" / "packet").read_text().splitlines()[1:]
    for line in lines:
        fields = line.split()
        # sk RefCnt Type Proto Iface R Rmem User Inode
        if len(fields) >= 9 and int(fields[4]) != 0:
            sockets[int(fields[8])] = int(fields[4])
    return sockets


def _owners(inodes: set[int]) -> list[tuple[int, int]]:
    """(pid, inode) for every process holding one of the socket inodes."""
    owners = []
    for proc in PROC.iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = os.listdir(proc / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(proc / "fd" / fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in inodes:
                    owners.append((int(proc.name), inode))
    return owners


def _command(pid: int) -> str:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a) or "?"


def check_dead_ifs() -> list[DeadSocket]:
    live = _ifindexes()
    dead = {inode: index for inode, index in _packet_sockets().items() if index not in live}
    return [DeadSocket(pid, _command(pid), dead[inode], inode)
            for pid, inode in _owners(set(dead))]
