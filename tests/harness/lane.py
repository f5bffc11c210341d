"""Open vSwitch inside a systemd namespace, seen with its own tools.

`NsSwitch` gives the test-bed interface that `canon` and `corpus` use
(`vsctl`, `ofctl`, `bridges`, `add_bridge`, `dir`), running every command
inside the namespace. `Hosts` are two network namespaces (made inside the
systemd namespace's private network) with a veth each into a bridge, and a
prober that measures the longest gap between ping replies.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.harness import REPO
from tests.harness.ovsbed import BedError, unique_name
from tests.harness.systemd_ns import SystemdNamespace

# Shared with every namespace at the same path (/dev is the machine's).
SCRATCH = "/dev/shm"
UNITS = [REPO / "units" / n for n in ("ovsdb-server.service", "ovs-vswitchd.service",
                                      "openvswitch.service")]
DROPINS = [REPO / "units" / "dropins" / n for n in ("ovs-vswitchd.service.d",
                                                     "ovsdb-server.service.d")]


class NsSwitch:
    """The namespace's Open vSwitch, for `canon` and `corpus`."""

    def __init__(self, ns: SystemdNamespace) -> None:
        self.ns = ns
        # Batch files must be readable inside at the same path: not under /tmp
        # or /run (private there), nor in the checkout (it may be read-only).
        self.dir = Path(tempfile.mkdtemp(prefix=f"{unique_name('lane')}-", dir=SCRATCH))

    def close(self) -> None:
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)

    def _tool(self, tool: str, args: Sequence[str], check: bool, input: str | None) -> str:
        proc = self.ns.run([tool, *args], check=False, input=input)
        if check and proc.returncode != 0:
            raise BedError(f"{tool} {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def vsctl(self, *args: str, check: bool = True) -> str:
        return self._tool("ovs-vsctl", args, check, None)

    def ofctl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        return self._tool("ovs-ofctl", args, check, input)

    def bridges(self) -> list[str]:
        return self.vsctl("list-br").split()

    def add_bridge(self, name: str, protocols: Sequence[str] | None = None,
                   ports: Mapping[str, int] | None = None, datapath_type: str = "netdev") -> None:
        args = ["add-br", name, "--", "set", "bridge", name, f"datapath_type={datapath_type}"]
        if protocols:
            args.append("protocols=" + ",".join(protocols))
        for port, number in (ports or {}).items():
            args += ["--", "add-port", name, port, "--", "set", "interface", port,
                     "type=internal", f"ofport_request={number}"]
        self.vsctl(*args)

    def flow_restore_wait(self) -> str:
        return self.vsctl("--if-exists", "get", "Open_vSwitch", ".",
                          "other_config:flow-restore-wait").strip()


@dataclass
class Hosts:
    """Two hosts on one bridge, steered by explicit flows (no NORMAL)."""

    ns: SystemdNamespace
    bridge: str
    names: tuple[str, str]
    addresses: tuple[str, str] = ("10.77.0.1", "10.77.0.2")

    def ping(self, count: int = 3, timeout: float = 20.0) -> bool:
        """True once host 0 reaches host 1 (retrying while the switch settles)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.ns.run(["ip", "netns", "exec", self.names[0], "ping", "-c", "1",
                                "-W", "1", self.addresses[1]], check=False)
            if proc.returncode == 0:
                return True
            time.sleep(0.2)
        return False

    @contextlib.contextmanager
    def prober(self, interval: float = 0.001) -> Iterator[Gap]:
        """Ping every `interval` seconds while the block runs; the result's `.seconds`
        is the longest gap between replies. Output goes to a file: a pipe that is
        not drained would stall ping and measure itself."""
        out = f"/run/{unique_name('ping')}.txt"
        gap = Gap()
        proc = self.ns.popen([
            "ip", "netns", "exec", self.names[0], "sh", "-c",
            f'exec ping -D -n -i {interval} -W 1 {self.addresses[1]} > "$0"', out],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            yield gap
            time.sleep(0.5)
        finally:
            self.ns.run(["pkill", "-INT", "-f", f"ping -D -n -i {interval}"], check=False)
            proc.wait(timeout=10)
        gap.seconds = longest_gap(self.ns.run(["cat", out]).stdout)
        self.ns.run(["rm", "-f", out], check=False)


@dataclass
class Gap:
    seconds: float = 0.0


def longest_gap(ping_output: str) -> float:
    stamps = []
    for line in ping_output.splitlines():
        if line.startswith("[") and "bytes from" in line:
            stamps.append(float(line[1:line.index("]")]))
    if len(stamps) < 2:
        return float("inf")
    return max(b - a for a, b in itertools.pairwise(stamps))


def add_hosts(ns: SystemdNamespace, switch: NsSwitch, bridge: str) -> Hosts:
    """Two hosts through `bridge`, with flows, a group and a meter that carry their traffic."""
    names = (unique_name("h"), unique_name("h"))
    switch.add_bridge(bridge, protocols=["OpenFlow13", "OpenFlow15"])
    for i, (name, address) in enumerate(zip(names, ("10.77.0.1", "10.77.0.2"), strict=True)):
        outer = f"{name[-8:]}-o"
        ns.run(["ip", "netns", "add", name])
        ns.run(["ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0",
                "netns", name])
        ns.run(["ip", "-n", name, "addr", "add", f"{address}/24", "dev", "eth0"])
        ns.run(["ip", "-n", name, "link", "set", "eth0", "up"])
        ns.run(["ip", "-n", name, "link", "set", "lo", "up"])
        ns.run(["ip", "link", "set", outer, "up"])
        switch.vsctl("add-port", bridge, outer, "--", "set", "interface", outer,
                     f"ofport_request={i + 1}")
    switch.ofctl("-O", "OpenFlow15", "del-flows", bridge)
    switch.ofctl("-O", "OpenFlow15", "add-group", bridge, "group_id=7,type=all,bucket=output:2")
    switch.ofctl("-O", "OpenFlow15", "add-meter", bridge,
                 "meter=3 pktps bands=type=drop rate=100000")
    switch.ofctl("-O", "OpenFlow15", "add-flow", bridge, "priority=10,in_port=1,actions=group:7")
    switch.ofctl("-O", "OpenFlow15", "add-flow", bridge,
                 "priority=10,in_port=2,actions=meter:3,output:1")
    return Hosts(ns, bridge, names)


def remove_hosts(hosts: Hosts) -> None:
    for name in hosts.names:
        hosts.ns.run(["ip", "netns", "del", name], check=False)


def snapshot_paths(ns: SystemdNamespace) -> list[Path]:
    out = ns.run(["ls", "/var/lib/ovs-service"], check=False).stdout.split()
    return [Path("/var/lib/ovs-service") / n for n in out]


Lane = tuple[SystemdNamespace, NsSwitch, Hosts]


@contextlib.contextmanager
def running_lane(extra: Callable[[NsSwitch], None] | None = None) -> Iterator[Lane]:
    """A booted systemd with ovs-service's units running Open vSwitch: the corpus
    bridge `br0`, whatever `extra` adds, and two hosts talking through `brt`."""
    from tests.harness.systemd_ns import booted

    with booted() as ns:
        ns.install_units(UNITS)
        ns.systemctl("start", "openvswitch.service")
        with loaded_switch(ns, extra) as lane:
            yield lane


@contextlib.contextmanager
def loaded_switch(ns: SystemdNamespace,
                  extra: Callable[[NsSwitch], None] | None = None) -> Iterator[Lane]:
    """The running switch of `ns` loaded as every lane loads it: the corpus
    bridge `br0`, whatever `extra` adds, and two hosts talking through `brt`
    (removed afterwards)."""
    from tests.harness import corpus

    switch = NsSwitch(ns)
    hosts = None
    try:
        corpus.build_corpus(switch, "br0")
        if extra is not None:
            extra(switch)
        hosts = add_hosts(ns, switch, "brt")
        assert hosts.ping(), "no traffic before any restart"
        yield ns, switch, hosts
    finally:
        if hosts is not None:
            remove_hosts(hosts)
        switch.close()


def assert_switch_whole(lane: Lane, before: dict[str, list[str]], what: str) -> None:
    """The one check of every systemd lane: once systemd's jobs are done, the
    switch's canonical state (its own tools' dumps) is what it was, with
    flow-restore-wait cleared, and traffic passes through the flows."""
    from tests.harness import canon

    ns, switch, hosts = lane
    ns.settle()
    after = canon.all_states(switch)
    problems = [f"{b}:\n{canon.diff(before[b], after.get(b, []))}"
                for b in before if before[b] != after.get(b)]
    assert not problems, f"after {what}:\n" + "\n".join(problems)
    assert switch.flow_restore_wait() == "", f"flow-restore-wait left set after {what}"
    assert hosts.ping(), f"no traffic through the flows after {what}"
