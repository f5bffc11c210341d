"""The hitless bed: a kernel-datapath switch with a tunnel, conntrack and a group,
and probes that say what a restart cost the traffic crossing it.

In a systemd guest of `kmodbed` (Debian's kernel and openvswitch.ko):

- brA carries ns1 and ns2 (veth ends `a1`, `a2`) and a VXLAN port `vx0`; brB
  carries ns3 (`b3`) and the VXLAN port `vx1`. The tunnel's endpoints are two
  addresses of a dummy underlay `ul0` the bed creates, so the encapsulated
  packets cross the kernel's stack and the shared `vxlan_sys_4789` vport.
- brA forwards IP only through its flows: every packet goes through
  conntrack (`ct(table=1)`), new connections are committed (`ct(commit)`),
  invalid ones dropped; ns2 is reached through a select group, ns3 through
  the tunnel. UDP to ns2's port 9999 also copies its source port to a
  register: the datapath flow then matches that port exactly, so every new
  source port is a new datapath flow, that is an upcall.
- brB forwards by its default NORMAL flow.

NEIGHBOURS: the namespaces' neighbour entries are permanent. A dynamic one
goes stale every 15 to 45 s (base_reachable_time), and ICMP echo never
confirms it: the next use sends unicast ARP probes (3, a second apart), and
if none is answered the entry fails and traffic stops until ARP resolves
again. Those probes are new packets for the datapath, an upcall each; from
the old ovs-vswitchd's exit until flow-restore-wait is cleared nothing
answers upcalls. That window is a fraction of a second on hardware and 5 to
10 s under this guest's emulation, so a refresh that falls in it stops the
pings for seconds (seen: 1 restart in 8, a 7 s hole in which ns2's replies
were queued behind its unresolved entry and came late, not lost). That is
the slow path's outage, which the new-connection probe measures; these
probes measure what the datapath's established flows carry.

Probes (`tests/harness/vm/probe.py`, started before a restart and stopped
after it): ns1 pings ns2 (same bridge) and ns3 (through the tunnel) every
10 ms, streams TCP to ns3, and opens a fresh UDP "connection" to ns2 every
10 ms. Everything is read back with the kernel's and Open vSwitch's own
tools (ping, ip -json, ovs-dpctl, ovs-ofctl), never with ovs-service.

Shared by the hitless lanes (Debian 12's Open vSwitch 3.1 in
`test_hitless_lane.py`, Debian 13's 3.5 in `test_hitless_trixie_lane.py`):
one restart under the probes (`run_method`), what the lanes assert of it
(`assert_bridge_hitless`, `assert_tunnel_hitless`) and the figures they
write for `tests.lanes.hitless_summary` (`write_results`).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import time
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.kmodbed import dp_ports, openflow, sections, settle
from tests.harness.vm.build import REPO
from tests.harness.vm.guest import Guest

# ovs-service's own restart paths, as each lane runs them (the figures' names).
OVS_SERVICE_RESTART = "ovs-service restart"
SYSTEMCTL_RESTART = "systemctl restart openvswitch"
PROJECT_RESTARTS = {
    OVS_SERVICE_RESTART: ["ovs-service", "restart"],
    SYSTEMCTL_RESTART: ["systemctl", "restart", "openvswitch"],
}

BRIDGES = ("brA", "brB")
TUNNEL_VPORT = "vxlan_sys_4789"
DATAPATH = "ovs-system"
NS_ADDRESSES = {"ns1": "10.66.0.1", "ns2": "10.66.0.2", "ns3": "10.66.0.3"}
UDP_PORT, TCP_PORT = 9999, 5201
PROBE = f"{REPO}/tests/harness/vm/probe.py"
# Where the lanes write their figures (OVS_SERVICE_HITLESS_RESULTS, relative
# to the checkout): make test's share apart from a full make test-hitless.
RESULTS_DIR = REPO / os.environ.get("OVS_SERVICE_HITLESS_RESULTS", ".cache/hitless")
LOGS = "/tmp/hitless"
OF = "OpenFlow15"

TOPOLOGY = r"""
ip link add ul0 type dummy
ip address add 172.31.0.1/32 dev ul0
ip address add 172.31.0.2/32 dev ul0
ip link set ul0 up
ovs-vsctl add-br brA -- add-br brB
namespace() {  # NAME DEVICE: NAME's eth0, peered with DEVICE here
    ip netns add $1
    ip link add $2 type veth peer name eth0 netns $1
    ip link set $2 up
    ip -n $1 link set lo up
    ip -n $1 link set eth0 up
}
namespace ns1 a1
namespace ns2 a2
namespace ns3 b3
ip -n ns1 address add 10.66.0.1/24 dev eth0
ip -n ns2 address add 10.66.0.2/24 dev eth0
ip -n ns3 address add 10.66.0.3/24 dev eth0
# Static neighbours: every namespace knows the others' MACs for good (see
# NEIGHBOURS above).
mac() { ip -n $1 -br link show eth0 | awk '{print $3}'; }
for ns in ns1 ns2 ns3; do
    for peer in 1 2 3; do
        [ "$ns" = "ns$peer" ] || ip -n $ns neigh replace 10.66.0.$peer \
            lladdr "$(mac ns$peer)" dev eth0 nud permanent
    done
done
ovs-vsctl \
  -- add-port brA a1 -- set interface a1 ofport_request=1 \
  -- add-port brA a2 -- set interface a2 ofport_request=2 \
  -- add-port brA vx0 -- set interface vx0 type=vxlan ofport_request=3 \
       options:local_ip=172.31.0.1 options:remote_ip=172.31.0.2 options:key=5001 \
  -- add-port brB b3 \
  -- add-port brB vx1 -- set interface vx1 type=vxlan \
       options:local_ip=172.31.0.2 options:remote_ip=172.31.0.1 options:key=5001
"""

FLOWS = r"""
ovs-ofctl -O OpenFlow15 del-flows brA
ovs-ofctl -O OpenFlow15 del-groups brA
ovs-ofctl -O OpenFlow15 add-group brA "group_id=1,type=select,bucket=bucket_id:1,actions=output:2"
ovs-ofctl -O OpenFlow15 add-flows brA - <<'EOF'
table=0,priority=0,actions=drop
table=0,priority=10,arp,actions=NORMAL
table=0,priority=10,ip,actions=ct(table=1,zone=7)
table=1,priority=10,ct_state=+new+trk,ip,actions=ct(commit,zone=7),goto_table:2
table=1,priority=10,ct_state=+est+trk,ip,actions=goto_table:2
table=1,priority=5,ct_state=+inv+trk,actions=drop
table=2,priority=10,ip,nw_dst=10.66.0.1,actions=output:1
table=2,priority=10,ip,nw_dst=10.66.0.2,actions=group:1
table=2,priority=10,ip,nw_dst=10.66.0.3,actions=output:3
table=2,priority=20,udp,nw_dst=10.66.0.2,tp_dst=9999,actions=move:NXM_OF_UDP_SRC[]->NXM_NX_REG1[0..15],group:1
EOF
"""

STATE = r"""
section() { echo "@@@ $1"; shift; "$@"; }
section dpctl ovs-dpctl show
section links ip -json link show
for br in brA brB; do
    section flows.$br ovs-ofctl -O OpenFlow15 dump-flows --no-stats --no-names $br
    section groups.$br ovs-ofctl -O OpenFlow15 dump-groups $br
    section meters.$br ovs-ofctl -O OpenFlow15 dump-meters $br
    section tlv.$br ovs-ofctl -O OpenFlow15 dump-tlv-map $br
done
section vswitchd systemctl show -p MainPID --value ovs-vswitchd.service
section pidfile cat /run/openvswitch/ovs-vswitchd.pid
section ovsdb cat /run/openvswitch/ovsdb-server.pid
"""


# -- state: the datapath, the vports, the OpenFlow tables ------------------------------


@dataclass(frozen=True)
class HitlessState:
    dp_ports: dict[str, int]
    ifindex: dict[str, int]
    """The datapath's and the tunnel vport's interface index."""
    openflow: list[str]
    """Both bridges' canonical OpenFlow lines, each prefixed with its bridge."""
    vswitchd_pid: int
    ovsdb_pid: int


def read_state(guest: Guest) -> HitlessState:
    raw = sections(guest.sh(STATE).stdout)
    lines = []
    for br in BRIDGES:
        per = {kind: raw[f"{kind}.{br}"] for kind in ("flows", "groups", "meters", "tlv")}
        lines += [f"{br} {line}" for line in openflow(per)]
    links = {link["ifname"]: int(link["ifindex"]) for link in json.loads(raw["links"])}
    pid = raw["pidfile"].strip() or raw["vswitchd"].strip() or "0"
    return HitlessState(
        dp_ports=dp_ports(raw["dpctl"]),
        ifindex={name: links.get(name, 0) for name in (DATAPATH, TUNNEL_VPORT)},
        openflow=sorted(lines),
        vswitchd_pid=int(pid),
        ovsdb_pid=int(raw["ovsdb"].strip() or "0"),
    )


def build(guest: Guest) -> None:
    """Topology and flows on a running switch; the long-lived probe servers."""
    guest.sh(TOPOLOGY, timeout=300)
    guest.sh(FLOWS, timeout=120)
    guest.run(["mkdir", "-p", LOGS])
    guest.spawn(["ip", "netns", "exec", "ns2", "python3", PROBE, "udp-echo", str(UDP_PORT)],
                output=f"{LOGS}/udp-echo.out")
    guest.spawn(["ip", "netns", "exec", "ns3", "python3", PROBE, "tcp-server", str(TCP_PORT),
                 f"{LOGS}/tcp-server.log"], output=f"{LOGS}/tcp-server.out")
    for peer in ("ns2", "ns3"):
        ping = guest.run(["ip", "netns", "exec", "ns1", "ping", "-c", "3", "-i", "0.2", "-W", "5",
                          NS_ADDRESSES[peer]], check=False, timeout=60)
        assert ping.ok, f"ns1 does not reach {peer}: {ping.stdout}{ping.stderr}"


def reset_flows(guest: Guest) -> None:
    """brA's flows and group again (after a method that lost them)."""
    guest.sh(FLOWS, timeout=120)


# -- probes -------------------------------------------------------------------------


@dataclass
class Probes:
    pids: dict[str, int] = field(default_factory=dict)
    tag: str = ""


def start_probes(guest: Guest, tag: str) -> Probes:
    probes = Probes(tag=tag)
    ns1 = ["ip", "netns", "exec", "ns1"]
    for name, peer in (("ping-local", "ns2"), ("ping-tunnel", "ns3")):
        probes.pids[name] = guest.spawn(
            [*ns1, "ping", "-D", "-i", "0.01", NS_ADDRESSES[peer]], output=f"{LOGS}/{tag}.{name}")
    probes.pids["tcp"] = guest.spawn(
        [*ns1, "python3", PROBE, "tcp-client", NS_ADDRESSES["ns3"], str(TCP_PORT),
         f"{LOGS}/{tag}.tcp"], output=f"{LOGS}/{tag}.tcp.out")
    probes.pids["udp-new"] = guest.spawn(
        [*ns1, "python3", PROBE, "udp-new", NS_ADDRESSES["ns2"], str(UDP_PORT),
         f"{LOGS}/{tag}.udp-new"], output=f"{LOGS}/{tag}.udp-new.out")
    # Established: every probe has had answers before the restart begins.
    deadline = time.monotonic() + 60
    while not all(_answered(guest, probes, name) for name in probes.pids):
        assert time.monotonic() < deadline, f"probes without answers: {probes.pids}"
        time.sleep(0.5)
    guest.run(["sleep", "1"])
    return probes


def _answered(guest: Guest, probes: Probes, name: str) -> bool:
    path = f"{LOGS}/tcp-server.log" if name == "tcp" else f"{LOGS}/{probes.tag}.{name}"
    out = guest.run(["sh", "-c", f"tail -n 2 {shlex.quote(path)} 2>/dev/null"], check=False)
    lines = out.stdout.splitlines()
    if name.startswith("ping"):
        return any("bytes from" in line for line in lines)
    return any(re.match(r"^\d+\.\d+ \d+$", line) for line in lines)


def stop_probes(guest: Guest, probes: Probes) -> None:
    guest.run(["kill", "-INT", str(probes.pids["ping-local"]), str(probes.pids["ping-tunnel"])],
              check=False)
    guest.run(["kill", "-TERM", str(probes.pids["tcp"]), str(probes.pids["udp-new"])], check=False)
    # Until each has written its last lines and exited.
    guest.sh("for i in $(seq 100); do kill -0 " + " ".join(map(str, probes.pids.values()))
             + " 2>/dev/null || exit 0; sleep 0.1; done", check=False, timeout=30)


@dataclass(frozen=True)
class ProbeResult:
    ping_local_lost: int
    ping_tunnel_lost: int
    ping_local_replies: int
    ping_tunnel_replies: int
    ping_longest_gap_ms: float
    new_conn_longest_gap_ms: float
    new_conn_answers: int
    tcp_survived: bool
    tcp_longest_gap_ms: float
    tcp_detail: str
    holes: list[str] = field(default_factory=list)
    """Each established probe's silences over 100 ms: probe, UTC start, length."""
    unreachable: int = 0
    """ping's "Destination Host Unreachable" lines: ns1's neighbour entry failed
    (its ARP probes went unanswered), not a datapath flow."""

    @property
    def established_lost(self) -> int:
        return self.ping_local_lost + self.ping_tunnel_lost


def _ping(log: str) -> tuple[int, int, list[float]]:
    """Lost (sequence numbers missing between the first and the last reply), replies,
    reply times."""
    seqs, times = set(), []
    for match in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)", log, re.M):
        times.append(float(match.group(1)))
        seqs.add(int(match.group(2)))
    if not seqs:
        return 0, 0, []
    return (max(seqs) - min(seqs) + 1) - len(seqs), len(seqs), sorted(times)


HOLE = 0.1  # seconds without a reply that count as a hole


def _holes(name: str, times: list[float]) -> list[str]:
    pairs = itertools.pairwise(sorted(times))
    return [f"{name} {time.strftime('%H:%M:%S', time.gmtime(a))}.{int(a % 1 * 1000):03d}Z "
            f"{1000 * (b - a):.0f} ms" for a, b in pairs if b - a > HOLE]


def _longest_gap(times: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(sorted(times))), default=float("inf"))


def read_probes(guest: Guest, probes: Probes) -> ProbeResult:
    def text(name: str) -> str:
        return guest.run(["cat", f"{LOGS}/{probes.tag}.{name}"], check=False).stdout

    local_lost, local_n, local_t = _ping(text("ping-local"))
    tunnel_lost, tunnel_n, tunnel_t = _ping(text("ping-tunnel"))
    udp = [float(line.split()[0]) for line in text("udp-new").splitlines() if line.strip()]
    client = text("tcp")
    server = guest.run(["cat", f"{LOGS}/tcp-server.log"]).stdout
    # This run's stream: the reads after the last "connect" line.
    stream = server.rsplit("connect ", 1)[-1].splitlines()[1:]
    reads = [line.split() for line in stream if re.match(r"^\d+\.\d+ \d+$", line)]
    received = sum(int(n) for _, n in reads)
    sent = int(m.group(1)) if (m := re.search(r"^sent (\d+)", client, re.M)) else -1
    error = m.group(1) if (m := re.search(r"^error (.*)$", client, re.M)) else ""
    survived = not error and sent > 0 and received >= sent - 64 * 4
    return ProbeResult(
        ping_local_lost=local_lost,
        ping_tunnel_lost=tunnel_lost,
        ping_local_replies=local_n,
        ping_tunnel_replies=tunnel_n,
        ping_longest_gap_ms=round(1000 * max(_longest_gap(local_t), _longest_gap(tunnel_t)), 1),
        new_conn_longest_gap_ms=round(1000 * _longest_gap(udp), 1),
        new_conn_answers=len(udp),
        tcp_survived=survived,
        tcp_longest_gap_ms=round(1000 * _longest_gap([float(t) for t, _ in reads]), 1),
        tcp_detail=error or f"sent {sent} B, received {received} B",
        holes=_holes("ping-local", local_t) + _holes("ping-tunnel", tunnel_t),
        unreachable=sum(text(name).count("Unreachable") for name in ("ping-local", "ping-tunnel")),
    )


# -- one restart under the probes ----------------------------------------------------------


@dataclass(frozen=True)
class MethodRun:
    method: str
    seconds: float
    """Wall time of the method's command in the guest."""
    probes: ProbeResult
    vswitchd_restarted: bool
    datapath_untouched: bool
    tunnel_vport_untouched: bool
    dp_ports_kept: bool
    openflow_lines_kept: int
    openflow_lines_total: int
    changes: list[str]
    ifindex_before: dict[str, int] = field(default_factory=dict)
    ifindex_after: dict[str, int] = field(default_factory=dict)
    """The datapath's and the tunnel vport's interface index, before and after."""
    ovsdb_restarted: bool = False
    """ovsdb-server has another PID after the method."""

    @property
    def state_whole(self) -> bool:
        return self.openflow_lines_kept == self.openflow_lines_total and not self.changes

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["established_lost"] = self.probes.established_lost
        doc["state_whole"] = self.state_whole
        return doc

    def line(self) -> str:
        p = self.probes
        return (f"{self.method:<36} {self.seconds:5.1f} s  lost {p.ping_local_lost}+"
                f"{p.ping_tunnel_lost} (local+tunnel, of {p.ping_local_replies}+"
                f"{p.ping_tunnel_replies})  new-conn gap {p.new_conn_longest_gap_ms:.0f} ms  "
                f"tcp {'survived' if p.tcp_survived else 'BROKEN'} "
                f"(gap {p.tcp_longest_gap_ms:.0f} ms)  vport "
                f"{'same' if self.tunnel_vport_untouched else 'NEW'} (ifindex "
                f"{self.ifindex_before.get(TUNNEL_VPORT, 0)}->"
                f"{self.ifindex_after.get(TUNNEL_VPORT, 0)})  dp "
                f"{'same' if self.datapath_untouched and self.dp_ports_kept else 'CHANGED'}  "
                f"openflow {self.openflow_lines_kept}/{self.openflow_lines_total}"
                + ("  ovsdb-server restarted" if self.ovsdb_restarted else "  ovsdb-server kept")
                + ("" if self.vswitchd_restarted else "  (ovs-vswitchd NOT restarted)"))


def run_method(guest: Guest, method: str, argv: list[str], tag: str,
               timeout: float = 900.0) -> MethodRun:
    before = read_state(guest)
    probes = start_probes(guest, tag)
    run = guest.run(argv, timeout=timeout, check=False)
    settle(guest)
    guest.run(["sleep", "2"])  # the revalidators' first rounds, and late answers
    stop_probes(guest, probes)
    assert run.ok, f"{method}: exit {run.returncode}\n{run.stdout}{run.stderr}"
    result = read_probes(guest, probes)
    after = read_state(guest)
    kept = sum(1 for line in before.openflow if line in after.openflow)
    changes = ([f"- {x}" for x in before.openflow if x not in after.openflow]
               + [f"+ {x}" for x in after.openflow if x not in before.openflow])
    return MethodRun(
        method=method,
        seconds=round(run.seconds, 2),
        probes=result,
        vswitchd_restarted=after.vswitchd_pid != before.vswitchd_pid,
        datapath_untouched=after.ifindex[DATAPATH] == before.ifindex[DATAPATH],
        tunnel_vport_untouched=(after.ifindex[TUNNEL_VPORT] == before.ifindex[TUNNEL_VPORT]
                                and before.ifindex[TUNNEL_VPORT] > 0),
        dp_ports_kept=after.dp_ports == before.dp_ports,
        openflow_lines_kept=kept,
        openflow_lines_total=len(before.openflow),
        changes=changes,
        ifindex_before=before.ifindex,
        ifindex_after=after.ifindex,
        ovsdb_restarted=after.ovsdb_pid != before.ovsdb_pid,
    )


# -- what the lanes assert, report and write ------------------------------------------


def assert_bridge_hitless(run: MethodRun) -> None:
    """The goal on the bridge itself: nothing established lost, nothing changed."""
    p = run.probes
    assert run.vswitchd_restarted, f"{run.method}: ovs-vswitchd was not restarted"
    assert p.ping_local_lost == 0, run.line()
    assert run.datapath_untouched and run.dp_ports_kept, (
        f"{run.method}: the datapath or its port numbers changed")
    assert run.state_whole, f"{run.method}: OpenFlow state changed:\n" + "\n".join(run.changes)
    # New connections need ovs-vswitchd: they pass again once it runs.
    assert p.new_conn_answers > 0


def assert_tunnel_hitless(run: MethodRun) -> None:
    """The goal across the tunnel: the same vport, nothing established lost, the stream alive."""
    assert run.tunnel_vport_untouched, (
        f"{run.method}: the tunnel vport was re-created (ifindex "
        f"{run.ifindex_before.get(TUNNEL_VPORT)} -> {run.ifindex_after.get(TUNNEL_VPORT)})")
    assert run.probes.ping_tunnel_lost == 0, run.line()
    assert run.probes.tcp_survived, f"{run.method}: {run.probes.tcp_detail}"


def diagnose(guest: Guest, run: MethodRun) -> str:
    """What the guest logged around a run that lost traffic (times in UTC)."""
    if run.probes.established_lost == 0:
        return ""
    holes = "\n".join(run.probes.holes)
    journal = guest.run(["env", "TZ=UTC", "journalctl", "-b", "--no-pager", "-o",
                         "short-precise", "-n", "120",
                         "-u", "ovs-vswitchd", "-u", "ovsdb-server", "-u", "ovs-service-restore",
                         "-u", "openvswitch", "-u", "openvswitch-switch"], check=False).stdout
    log = guest.run(["tail", "-n", "60", "/var/log/openvswitch/ovs-vswitchd.log"],
                    check=False).stdout
    return (f"--- holes (unreachable lines: {run.probes.unreachable})\n{holes}\n"
            f"--- journal\n{journal}\n--- ovs-vswitchd.log\n{log}")


def write_results(path: Path, runs: list[MethodRun], lane_seconds: float, *, repeat: int,
                  project_methods: Collection[str],
                  extra: Mapping[str, Any] | None = None) -> None:
    """A lane's figures, every try's and per method, as `tests.lanes.hitless_summary` reads
    them; `extra`: more top-level keys (what the guest ran, say)."""
    methods: dict[str, dict[str, Any]] = {}
    for run in runs:
        entry = methods.setdefault(run.method, {"project": run.method in project_methods,
                                                "runs": []})
        entry["runs"].append(run.to_doc())
    for entry in methods.values():
        docs = entry["runs"]
        entry.update(
            tries=len(docs),
            established_lost=sum(d["established_lost"] for d in docs),
            established_lost_bridge=sum(d["probes"]["ping_local_lost"] for d in docs),
            established_lost_tunnel=sum(d["probes"]["ping_tunnel_lost"] for d in docs),
            new_conn_longest_gap_ms=max(d["probes"]["new_conn_longest_gap_ms"] for d in docs),
            tcp_survived=all(d["probes"]["tcp_survived"] for d in docs),
            tunnel_vport_untouched=all(d["tunnel_vport_untouched"] for d in docs),
            datapath_untouched=all(d["datapath_untouched"] and d["dp_ports_kept"]
                                   for d in docs),
            openflow_lines_kept=min(d["openflow_lines_kept"] for d in docs),
            openflow_lines_total=max(d["openflow_lines_total"] for d in docs),
            state_whole=all(d["state_whole"] for d in docs),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"lane_seconds": round(lane_seconds, 1), "repeat": repeat,
                                **(extra or {}), "methods": methods}, indent=2) + "\n")
