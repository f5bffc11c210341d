"""The systemd lane's switch on a Debian root of another release.

`root_lane(root)` boots the root's own systemd (`debroot.RootSystemd`),
optionally builds ovs-service's package there with the root's own tools and
installs it with dpkg, starts the switch through the units it then has, and
builds the lane of `tests.harness.lane` on it: the corpus bridge `br0` and
two hosts talking through `brt`. `versions` is what each side runs;
`foreign_tools` runs another root's `ovs-vsctl`/`ovs-ofctl` against this
switch's sockets, so two Open vSwitch releases' states print alike.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.harness import corpus, debroot
from tests.harness.lane import Hosts, NsSwitch, add_hosts, remove_hosts
from tests.harness.ovsbed import BedError

# Where another root's tools are bound inside (read-only).
TOOLS_MOUNT = "/opt/ovs-tools"


@dataclass
class RootLane:
    ns: debroot.RootSystemd
    switch: NsSwitch
    hosts: Hosts
    deb: str | None  # the package's path inside, when installed

    @property
    def lane(self) -> tuple[debroot.RootSystemd, NsSwitch, Hosts]:
        return self.ns, self.switch, self.hosts


def versions(ns: debroot.Runner) -> dict[str, str]:
    """First lines of `ovs-vswitchd --version`, `systemctl --version`, `python3 --version`."""
    out = {}
    for argv in (["ovs-vswitchd", "--version"], ["systemctl", "--version"],
                 ["python3", "--version"]):
        proc = ns.run(argv, check=False)
        out[argv[0]] = (proc.stdout or proc.stderr).splitlines()[0].strip()
    return out


def install_package(ns: debroot.RootSystemd) -> str:
    """Build the package inside with the root's tools, install it with dpkg."""
    deb = debroot.build_deb(ns)
    ns.run(["dpkg", "-i", deb], env={"DEBIAN_FRONTEND": "noninteractive"})
    ns.settle()
    return deb


@contextlib.contextmanager
def root_lane(root: Path, *, with_package: bool) -> Iterator[RootLane]:
    ns = debroot.RootSystemd(root)
    with ns:
        deb = install_package(ns) if with_package else None
        # Debian's umbrella (openvswitch-switch) or, with the package, ovs-service's.
        ns.systemctl("start", "openvswitch.service" if with_package else "openvswitch-switch")
        ns.settle()
        switch = NsSwitch(ns)
        hosts = None
        try:
            corpus.build_corpus(switch, "br0")
            hosts = add_hosts(ns, switch, "brt")
            if not hosts.ping():
                raise BedError("no traffic through brt before any restart")
            yield RootLane(ns, switch, hosts, deb)
        finally:
            if hosts is not None:
                remove_hosts(hosts)
            switch.close()


class ForeignTools(NsSwitch):
    """Another root's ovs-vsctl/ovs-ofctl, run chrooted in that root (bound
    read-only inside this namespace, with this namespace's /run, /dev and
    /proc), against this namespace's switch."""

    def __init__(self, ns: debroot.RootSystemd, other_root: Path) -> None:
        super().__init__(ns)
        merged = f"{debroot.mountpoint(ns.root)}/root"
        target = f"{merged}{TOOLS_MOUNT}"
        outside = ["nsenter", "-t", str(ns.pid), "-m", "--"]
        steps: Sequence[list[str]] = (
            ["mkdir", "-p", target],
            ["mount", "--bind", str(other_root), target],
            ["mount", "-o", "remount,bind,ro", target],
            ["mount", "--rbind", f"{merged}/run", f"{target}/run"],
            ["mount", "--rbind", f"{merged}/dev", f"{target}/dev"],
            ["mount", "-t", "proc", "proc", f"{target}/proc"],
        )
        for argv in steps:
            proc = subprocess.run([*outside, *argv], capture_output=True, text=True,
                                  check=False, timeout=30)
            if proc.returncode != 0:
                raise BedError(f"{' '.join(argv)}: {proc.stderr.strip()}")

    def _tool(self, tool: str, args: Sequence[str], check: bool, input: str | None) -> str:
        return super()._tool("chroot", [TOOLS_MOUNT, tool, *args], check, input)
