"""force-reload-kmod against Debian's openvswitch.ko, in a systemd guest.

One guest boots systemd, runs ovs-service's own units from /run/systemd/system
and carries a switch on the kernel datapath: br0 with internal ports (addresses,
routes in two tables, one port with its own MAC and MTU, one left down), two
network namespaces whose veth ends are ports of br0 and talk only through
explicit flows, groups, a meter and a TLV mapping, firewall rules in iptables,
ip6tables and nftables, a kernel GRE tunnel that is none of Open vSwitch's
business, a process with a packet socket bound to an internal port, and a
ping across the reload.

`ovs-service force-reload-kmod` runs once (a module-scoped fixture); each test
checks one thing that came back, read with the kernel's and Open vSwitch's own
tools (dmesg, sysfs, /proc, ovs-dpctl, ovs-ofctl, ovs-vsctl, ip -json,
iptables-save, nft); what ovs-service reports is checked against them.  The
last test does it again with Debian's units and ovs-service's drop-ins, which
is what the Debian package installs.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from vm.build import REPO
from vm.guest import Guest

pytestmark = [pytest.mark.vm, pytest.mark.root, pytest.mark.slow]

MODULE_INIT_LINE = "openvswitch: Open vSwitch switching datapath"
BRIDGE = "br0"
INTERNAL = ("br0", "p0", "p1", "p2")
VETHS = ("v1", "v2", "v3")
TUNNEL = "gre9"  # a kernel GRE tunnel outside Open vSwitch
OF = "OpenFlow15"
NS1_ADDRESS, NS2_ADDRESS = "192.0.2.11", "192.0.2.12"
STATE_DIR = "/var/lib/ovs-service"
RELOAD_TIMEOUT = 600.0

OUR_UNITS = """
mkdir -p /run/systemd/system
cp {repo}/units/ovsdb-server.service {repo}/units/ovs-vswitchd.service \
   {repo}/units/openvswitch.service /run/systemd/system/
systemctl daemon-reload
systemctl start openvswitch.service
"""

# Debian's ovsdb-server/ovs-vswitchd/openvswitch-switch units with
# ovs-service's drop-ins and umbrella unit, as packaging/debian installs them.
PACKAGED_UNITS = """
systemctl stop openvswitch.service ovs-vswitchd.service ovsdb-server.service
rm /run/systemd/system/ovsdb-server.service /run/systemd/system/ovs-vswitchd.service
for unit in ovsdb-server ovs-vswitchd; do
    mkdir -p /run/systemd/system/$unit.service.d
    cp {repo}/units/dropins/$unit.service.d/ovs-service.conf /run/systemd/system/$unit.service.d/
done
systemctl daemon-reload
systemctl start openvswitch-switch.service openvswitch.service
"""

TOPOLOGY = r"""
# Both numberings get gaps (gap0 comes and goes), so that ports made afresh
# in creation order would land elsewhere.
ovs-vsctl add-br br0 \
  -- add-port br0 p0 -- set interface p0 type=internal ofport_request=10 \
  -- add-port br0 gap0 -- set interface gap0 type=internal \
  -- add-port br0 p1 -- set interface p1 type=internal \
  -- add-port br0 p2 -- set interface p2 type=internal
for n in 1 2; do
    ip netns add ns$n
    ip link add v$n type veth peer name eth0 netns ns$n
    ip link set v$n up
    ip -n ns$n link set lo up
    ip -n ns$n address add 192.0.2.1$n/24 dev eth0
    ip -n ns$n link set eth0 up
done
ip link add v3 type veth peer name v3peer      # a system port left down
ovs-vsctl add-port br0 v1 -- add-port br0 v2 -- set interface v2 ofport_request=20 \
  -- add-port br0 v3
ovs-vsctl del-port br0 gap0

ip link set p1 address 02:00:5e:00:53:01 mtu 1400
ip address add 198.51.100.1/24 dev p0
ip address add 2001:db8:1::1/64 dev p0 nodad
ip address add 203.0.113.1/24 dev p1
ip address add 198.18.0.1/24 dev p2                 # p2 stays down
ip link set br0 up
ip link set p0 up
ip link set p1 up
ip route add 198.18.64.0/18 via 198.51.100.254 dev p0
ip route add 2001:db8:99::/48 via 2001:db8:1::fe dev p0
ip route add default via 203.0.113.254 dev p1 table 100
ip route add 198.51.100.128/25 dev p0 table 100 metric 7
ip link add gre9 type gre local 203.0.113.1 remote 203.0.113.9

iptables -A INPUT -i p0 -p tcp --dport 22 -j ACCEPT
iptables -A FORWARD -i p1 -m comment --comment "from p1" -j DROP
iptables -t nat -A POSTROUTING -o p0 -j MASQUERADE
ip6tables -A INPUT -i p0 -p ipv6-icmp -j ACCEPT
nft -f - <<'EOF'
table inet guest {
	chain input {
		type filter hook input priority 10; policy accept;
		iif "p0" counter accept
		iifname "p1" counter drop
	}
}
EOF

# ns1 <-> ns2 only through these: anything else is dropped.
ovs-ofctl -O OpenFlow15 add-meter br0 \
    "meter=1,pktps,burst,bands=type=drop,rate=10000,burst_size=1000"
ovs-ofctl -O OpenFlow15 add-group br0 "group_id=1,type=all,bucket=bucket_id:1,actions=output:v2"
ovs-ofctl -O OpenFlow15 add-group br0 \
    "group_id=2,type=select,selection_method=hash,bucket=bucket_id:7,weight:10,actions=output:v1"
ovs-ofctl add-tlv-map br0 "{class=0xffff,type=0x3,len=4}->tun_metadata0"
ovs-ofctl -O OpenFlow15 add-flows br0 - <<'EOF'
table=0,priority=0,actions=drop
table=0,priority=100,in_port=v1,actions=goto_table:1
table=0,priority=100,in_port=v2,actions=meter:1,goto_table:2
table=0,priority=50,in_port=LOCAL,actions=drop
table=1,priority=10,arp,actions=group:1
table=1,priority=10,ip,nw_dst=192.0.2.12,actions=set_field:0x2a->reg0,group:1
table=2,priority=10,actions=group:2
table=3,priority=5,cookie=0x1234,tun_metadata0=0x1,actions=drop
EOF
"""

# A process that keeps a packet socket bound to p0, as a DHCP client or a
# capture tool would.
PACKET_SOCKET_HOLDER = """
import socket, sys, time
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
sock.bind((sys.argv[1], 0))
print("bound", sock.fileno(), flush=True)
time.sleep(3600)
"""

# Everything compared, in one round trip: `@@@ name` opens each section.
STATE = r"""
# The kernel's duplicate address detection first: tentative addresses differ.
for i in $(seq 100); do [ -z "$(ip -6 address show tentative)" ] && break; sleep 0.1; done
section() { echo "@@@ $1"; shift; "$@"; }
section dpctl ovs-dpctl show
section ofports ovs-vsctl --format=json --columns=name,ofport list Interface
section ofshow ovs-ofctl -O OpenFlow15 show br0
section flows ovs-ofctl -O OpenFlow15 dump-flows --no-stats --no-names br0
section groups ovs-ofctl -O OpenFlow15 dump-groups br0
section meters ovs-ofctl -O OpenFlow15 dump-meters br0
section tlv ovs-ofctl -O OpenFlow15 dump-tlv-map br0
section links ip -json link show
section addresses ip -json address show
section routes4 ip -json -4 route show table all
section routes6 ip -json -6 route show table all
section iptables iptables-save
section ip6tables ip6tables-save
section nft nft list ruleset
"""


# -- the guest's state, normalised ----------------------------------------------


def sections(text: str) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("@@@ "):
            current = found.setdefault(line[4:].strip(), [])
        else:
            current.append(line)
    return {name: "\n".join(lines) + "\n" for name, lines in found.items()}


def dp_ports(text: str) -> dict[str, int]:
    """`ovs-dpctl show`: port name → the kernel datapath's port number."""
    ports = {}
    for line in text.splitlines():
        if match := re.match(r"\s+port (\d+): (\S+)", line):
            ports[match.group(2)] = int(match.group(1))
    return ports


def ofports(text: str) -> dict[str, int]:
    doc = json.loads(text)
    return {name: int(ofport) for name, ofport in doc["data"]}


def of_port_descs(text: str) -> list[str]:
    """`ovs-ofctl show`: each port as `number(name) config: FLAGS`."""
    rows, port = [], None
    for line in text.splitlines():
        if match := re.match(r"^ (\S+)\((.*)\): addr:", line):
            port = f"{match.group(1)}({match.group(2)})"
        elif port and line.strip().startswith("config:"):
            rows.append(f"{port} config: {' '.join(sorted(line.split(':', 1)[1].split())) or 0}")
            port = None
    return sorted(rows)


def _reply_body(text: str) -> list[str]:
    """Reply lines without `XXX reply (OF1.5) (xid=0x2):` headers and blanks."""
    return [line.strip() for line in text.splitlines()
            if line.strip() and not (not line.startswith(" ") and "(xid=" in line)]


def openflow(state: dict[str, str]) -> list[str]:
    meters: list[str] = []
    for line in _reply_body(state["meters"]):
        if line.startswith("meter=") or not meters:
            meters.append(line)
        else:
            meters[-1] += " " + line  # a meter's bands follow on their own lines
    tlv = [" ".join(line.split()) for line in state["tlv"].splitlines()
           if re.match(r"^\s*0x[0-9a-f]+\s+0x[0-9a-f]+\s+\d+\s+tun_metadata\d+\s*$", line)]
    return sorted(
        [f"flow: {line}" for line in _reply_body(state["flows"])]
        + [f"group: {line}" for line in _reply_body(state["groups"])]
        + [f"meter: {line}" for line in meters]
        + [f"tlv: {line}" for line in tlv]
    )


def links(text: str, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """`ip -json link`, without the ifindex (a module reload makes new devices).

    A link that is down shows no qdisc either: `ovs-dpctl add-if` brings every
    port it adds up for a moment (the datapaths stage takes those that were
    down down again), and a link that has been up once shows the qdisc it got
    then (noqueue) instead of noop; neither does anything while it is down.
    """
    out = {}
    for link in json.loads(text):
        if link["ifname"] in names:
            down = "UP" not in link["flags"]
            out[link["ifname"]] = {k: v for k, v in link.items()
                                   if k != "ifindex" and not (down and k == "qdisc")}
    return out


def differences(before: dict[str, Any], after: dict[str, Any]) -> str:
    """What differs between two {name: value} maps, one name a line."""
    lines = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            lines.append(f"{name}: " + "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
                                                  for k in keys))
        else:
            lines.append(f"{name}: {old!r} -> {new!r}")
    return "\n".join(lines)


def _is_link_local(address: dict[str, Any]) -> bool:
    return address.get("family") == "inet6" and address.get("scope") == "link"


def addresses(text: str, names: tuple[str, ...], link_local: bool) -> dict[str, list[str]]:
    """`ip -json address`: each interface's addresses without lifetimes, sorted;
    IPv6 link-local ones alone (`link_local`) or all but those."""
    out = {}
    for link in json.loads(text):
        if link["ifname"] not in names:
            continue
        kept = [
            json.dumps({k: v for k, v in a.items()
                        if k not in ("valid_life_time", "preferred_life_time")}, sort_keys=True)
            for a in link.get("addr_info", []) if _is_link_local(a) == link_local
        ]
        out[link["ifname"]] = sorted(kept)
    return out


def routes(text: str, link_local: bool) -> list[str]:
    """`ip -json route show table all`, sorted; the local routes of IPv6
    link-local addresses alone (`link_local`) or all but those."""
    out = []
    for route in json.loads(text):
        route.pop("expires", None)
        is_ll = route.get("type") == "local" and str(route.get("dst", "")).startswith("fe80:")
        if is_ll == link_local:
            out.append(json.dumps(route, sort_keys=True))
    return sorted(out)


def firewall(state: dict[str, str]) -> dict[str, list[str]]:
    """The three listings without dates and counters. nft lists tables, and
    chains within one, in creation order, which changes nothing they do."""
    def xtables(text: str) -> list[str]:
        return [re.sub(r"\[\d+:\d+\]", "[0:0]", line)
                for line in text.splitlines() if not line.startswith("#")]
    nft = re.sub(r"counter packets \d+ bytes \d+", "counter", state["nft"])
    blocks, current = [], []
    for line in nft.splitlines():
        current.append(line)
        if line == "}":
            head, body = current[0], "\n".join(current[1:-1])
            blocks.append("\n".join([head, *sorted(body.split("\n\n")), "}"]))
            current = []
    return {"iptables": xtables(state["iptables"]), "ip6tables": xtables(state["ip6tables"]),
            "nft": sorted(blocks)}


@dataclass(frozen=True)
class SwitchState:
    raw: dict[str, str]

    @property
    def dp_ports(self) -> dict[str, int]:
        return dp_ports(self.raw["dpctl"])

    @property
    def ofports(self) -> dict[str, int]:
        return ofports(self.raw["ofports"])

    @property
    def of_port_descs(self) -> list[str]:
        return of_port_descs(self.raw["ofshow"])

    @property
    def openflow(self) -> list[str]:
        return openflow(self.raw)

    @property
    def links(self) -> dict[str, dict[str, Any]]:
        return links(self.raw["links"], INTERNAL + VETHS)

    def addresses(self, link_local: bool = False) -> dict[str, list[str]]:
        return addresses(self.raw["addresses"], INTERNAL + VETHS, link_local)

    def routes(self, link_local: bool = False) -> list[str]:
        return routes(self.raw["routes4"], link_local) + routes(self.raw["routes6"], link_local)

    @property
    def firewall(self) -> dict[str, list[str]]:
        return firewall(self.raw)


def switch_state(guest: Guest) -> SwitchState:
    return SwitchState(sections(guest.sh(STATE).stdout))


# -- the kernel's side ------------------------------------------------------------


@dataclass(frozen=True)
class ModuleMark:
    """What tells one load of openvswitch.ko from another."""

    inits: int
    """How many times the module's init function has run since boot (dmesg)."""
    sysfs_inode: int
    """/sys/module/openvswitch is made anew, with a new inode, at each load."""


def module_mark(guest: Guest) -> ModuleMark:
    out = guest.sh(f"dmesg | grep -c '{MODULE_INIT_LINE}' || true; "
                   "stat -c %i /sys/module/openvswitch; cat /sys/module/openvswitch/initstate")
    inits, inode, initstate = out.stdout.split()
    assert initstate == "live"
    return ModuleMark(int(inits), int(inode))


def ifindex(guest: Guest, name: str) -> int:
    return int(guest.run(["cat", f"/sys/class/net/{name}/ifindex"]).stdout)


def main_pid(guest: Guest, unit: str) -> int:
    return int(guest.run(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout)


def reply_times(log: str) -> list[float]:
    """The `ping -D` timestamps of the replies."""
    return [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", log, re.M)]


def guest_clock(guest: Guest) -> float:
    return float(guest.run(["date", "+%s.%N"]).stdout)


# -- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def guest() -> Iterator[Guest]:
    lane_start = time.monotonic()
    with Guest("systemd") as booted:
        print(f"\nsystemd guest up in {booted.boot_seconds:.1f} s")
        assert booted.system_state == "running", booted.run(
            ["systemctl", "--failed", "--no-legend"], check=False).stdout
        # The guest's /var/lib is the host's under an overlay: give ovs-service
        # an empty store, whatever the host holds.
        booted.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "tmpfs", STATE_DIR])
        yield booted
        print(f"\nkmod lane: {time.monotonic() - lane_start:.1f} s in all")


@dataclass(frozen=True)
class Bed:
    guest: Guest
    before: SwitchState
    module: ModuleMark
    tunnel_ifindex: int
    holder_pid: int
    holder_fd: int
    """The holder's packet socket, bound to p0."""
    ping_pid: int
    vswitchd_pid: int


@pytest.fixture(scope="module")
def bed(guest: Guest) -> Iterator[Bed]:
    start = time.monotonic()
    guest.sh(OUR_UNITS.format(repo=REPO), timeout=300)
    started = time.monotonic()
    guest.sh(TOPOLOGY, timeout=300)
    built = time.monotonic()
    ping = guest.run(["ip", "netns", "exec", "ns1", "ping", "-c", "2", "-W", "5", NS2_ADDRESS],
                     check=False)
    assert ping.ok, f"no traffic through the flows before the reload:\n{ping.stdout}{ping.stderr}"
    guest.write_file("/tmp/holder.py", PACKET_SOCKET_HOLDER)
    holder = guest.spawn(["python3", "/tmp/holder.py", "p0"], output="/tmp/holder.log")
    pinger = guest.spawn(["ip", "netns", "exec", "ns1", "ping", "-D", "-i", "0.2", NS2_ADDRESS],
                         output="/tmp/ping.log")
    before = switch_state(guest)
    deadline = time.monotonic() + 60
    while (bound := guest.read_file("/tmp/holder.log").decode().split())[:1] != ["bound"]:
        assert time.monotonic() < deadline, f"the packet socket holder did not bind: {bound}"
        time.sleep(0.5)
    print(f"\nour units started in {started - start:.1f} s; "
          f"switch built in {built - started:.1f} s")
    yield Bed(guest, before, module_mark(guest), ifindex(guest, TUNNEL), holder, int(bound[1]),
              pinger, main_pid(guest, "ovs-vswitchd.service"))
    guest.run(["kill", str(holder), str(pinger)], check=False)


@dataclass(frozen=True)
class Reload:
    result: dict[str, Any]
    seconds: float
    """Wall time of `ovs-service force-reload-kmod` in the guest."""
    started: float
    finished: float
    """The guest's clock around it."""
    after: SwitchState
    module: ModuleMark


@pytest.fixture(scope="module")
def reload(bed: Bed) -> Reload:
    guest = bed.guest
    started = guest_clock(guest)
    run = guest.run(["ovs-service", "force-reload-kmod", "--json"], timeout=RELOAD_TIMEOUT,
                    check=False)
    finished = guest_clock(guest)
    assert run.ok, f"force-reload-kmod failed:\n{run.stdout}{run.stderr}\n{guest.journal(80)}"
    result = json.loads(run.stdout)
    reloaded = Reload(result, run.seconds, started, finished, switch_state(guest),
                      module_mark(guest))
    print(f"\nforce-reload-kmod: {run.seconds:.1f} s in the guest "
          f"(steps: {result['seconds']:.1f} s)")
    for step in result["steps"]:
        print(f"  {step['name']:<26} {step['seconds']:7.2f} s  {step['detail']}")
    return reloaded


@pytest.fixture(scope="module")
def plan(bed: Bed) -> dict[str, Any]:
    """`force-reload-kmod --dry-run --json`."""
    out = bed.guest.run(["ovs-service", "force-reload-kmod", "--dry-run", "--json"]).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


# -- before the reload ------------------------------------------------------------


def test_dry_run_prints_the_plan_and_changes_nothing(bed: Bed, plan: dict[str, Any]) -> None:
    guest = bed.guest
    store_before = guest.run(["ls", "-A", STATE_DIR]).stdout
    text = guest.run(["ovs-service", "force-reload-kmod", "--dry-run"]).stdout
    assert plan["dry_run"] is True and plan["op"] == "force-reload-kmod"
    names = [step["name"] for step in plan["steps"]]
    # The order that matters: everything saved before anything stops, the
    # datapaths back before ovs-vswitchd, flows before the interfaces.
    key = ["save", "stop-ovs-vswitchd", "delete-datapaths", "reload-module", "restore-datapaths",
           "start-ovs-vswitchd", "restore", "clear-flow-restore-wait", "restore-interfaces",
           "check-dead-ifs"]
    assert [n for n in names if n in key] == key
    lines = text.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"{i}. {n}" for i, n in enumerate(names, 1)]
    assert all(step["description"] for step in plan["steps"])
    assert module_mark(guest) == bed.module, "the dry run reloaded the module"
    assert main_pid(guest, "ovs-vswitchd.service") == bed.vswitchd_pid
    assert guest.run(["ls", "-A", STATE_DIR]).stdout == store_before, "the dry run saved"


def test_no_dead_interface_before_the_reload(bed: Bed) -> None:
    # The holder is bound to p0, which exists: not reported.
    check = bed.guest.run(["ovs-service", "check-dead-ifs"], check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no process" in check.stdout


def test_the_switch_before_the_reload_is_worth_keeping(bed: Bed) -> None:
    """The reference state is what it should be: a vacuous comparison proves nothing."""
    before = bed.before
    numbers = sorted(n for name, n in before.dp_ports.items() if name != "ovs-system")
    assert numbers != list(range(1, len(numbers) + 1)), "no gap in the datapath's port numbers"
    assert {"p0", "v1", "v2", "v3"} <= before.dp_ports.keys()
    assert before.ofports["p0"] == 10 and before.ofports["v2"] == 20
    kinds = {line.split(":")[0] for line in before.openflow}
    assert kinds == {"flow", "group", "meter", "tlv"}
    assert any("PORT_DOWN" in row for row in before.of_port_descs)
    assert before.links["p1"]["address"] == "02:00:5e:00:53:01"
    assert before.links["p1"]["mtu"] == 1400
    assert "UP" not in before.links["p2"]["flags"] and "UP" not in before.links["v3"]["flags"]
    assert any(json.loads(route).get("table") == "100" for route in before.routes())
    assert any('iif "p0"' in block for block in before.firewall["nft"])


# -- the reload -----------------------------------------------------------------------


def test_the_module_was_unloaded_and_loaded_again(bed: Bed, reload: Reload) -> None:
    assert reload.result["ok"] is True
    assert reload.result["module_reloaded"] is True
    assert reload.module.inits == bed.module.inits + 1, "the module's init ran once more"
    assert reload.module.sysfs_inode != bed.module.sysfs_inode, "/sys/module/openvswitch is new"
    steps = {step["name"]: step for step in reload.result["steps"]}
    assert steps["reload-module"]["detail"] == "reloaded openvswitch"


def test_json_gives_every_step_with_its_time(reload: Reload, plan: dict[str, Any]) -> None:
    steps = reload.result["steps"]
    assert [s["name"] for s in steps] == [s["name"] for s in plan["steps"]]
    assert all(step["ok"] for step in steps), steps
    assert all(step["seconds"] > 0 for step in steps), steps
    assert sum(s["seconds"] for s in steps) == pytest.approx(reload.result["seconds"])
    assert reload.result["seconds"] <= reload.seconds


def test_datapath_port_numbers_are_kept(bed: Bed, reload: Reload) -> None:
    assert reload.after.dp_ports == bed.before.dp_ports
    assert reload.result["port_mismatches"] == []


def test_openflow_port_numbers_are_kept(bed: Bed, reload: Reload) -> None:
    assert reload.after.ofports == bed.before.ofports
    assert reload.after.of_port_descs == bed.before.of_port_descs


def test_openflow_state_is_identical(bed: Bed, reload: Reload) -> None:
    assert reload.after.openflow == bed.before.openflow
    [restored] = reload.result["bridges"]
    assert restored["ok"] and restored["counts"] == {"flows": 8, "groups": 2, "meters": 1,
                                                     "tlv": 1}


def test_internal_interfaces_are_back(bed: Bed, reload: Reload) -> None:
    for name in INTERNAL:
        assert ifindex(bed.guest, name) > 0
    before, after = bed.before, reload.after
    assert after.links == before.links, differences(before.links, after.links)
    assert after.addresses() == before.addresses(), differences(before.addresses(),
                                                                after.addresses())
    assert after.routes() == before.routes(), "\n".join(
        [f"- {r}" for r in before.routes() if r not in after.routes()]
        + [f"+ {r}" for r in after.routes() if r not in before.routes()])
    report = reload.result["interfaces"]["interfaces"]
    assert report["problems"] == [] and report["routes_failed"] == 0


def test_ipv6_link_local_addresses_follow_the_restored_mac(bed: Bed, reload: Reload) -> None:
    before, after = bed.before.addresses(link_local=True), reload.after.addresses(link_local=True)
    assert after == before, differences(before, after)
    assert reload.after.routes(link_local=True) == bed.before.routes(link_local=True)


def test_firewall_is_identical(bed: Bed, reload: Reload) -> None:
    assert reload.after.firewall == bed.before.firewall
    parts = reload.result["interfaces"]["firewall"]["parts"]
    assert [(p["part"], p["status"]) for p in parts] == [
        ("nft", "restored"), ("iptables", "restored"), ("ip6tables", "restored")]


def test_an_unrelated_gre_tunnel_survives(bed: Bed, reload: Reload) -> None:
    # Unloading ip_gre would delete it: the reload must leave the module alone.
    assert ifindex(bed.guest, TUNNEL) == bed.tunnel_ifindex


def test_traffic_between_the_namespaces_resumes(bed: Bed, reload: Reload) -> None:
    guest = bed.guest
    deadline = time.monotonic() + 60
    while True:
        replies = reply_times(guest.read_file("/tmp/ping.log").decode())
        if replies and replies[-1] > reload.finished:
            break
        assert time.monotonic() < deadline, "no ping reply after the reload"
        time.sleep(1)
    before = [t for t in replies if t < reload.started]
    assert before, "the ping ran before the reload"
    gaps = [b - a for a, b in itertools.pairwise(replies)]
    print(f"\nforwarding gap: {max(gaps):.1f} s "
          f"(reload {reload.finished - reload.started:.1f} s, ping every 0.2 s)")
    guest.run(["kill", str(bed.ping_pid)])

    def packets() -> tuple[int, int]:
        """Packets the explicit flows from v1 (table 1) and v2 (table 2) matched."""
        out = guest.run(["ovs-ofctl", "-O", OF, "dump-flows", BRIDGE]).stdout
        counts = [0, 0]
        for match in re.finditer(r"table=([12]),.*?n_packets=(\d+)", out):
            counts[int(match.group(1)) - 1] += int(match.group(2))
        return counts[0], counts[1]

    # The counts settle first: the ping just stopped may still be counted.
    settled, from_v1, from_v2 = time.monotonic() + 15, -1, -1
    while (counts := packets()) != (from_v1, from_v2) and time.monotonic() < settled:
        from_v1, from_v2 = counts
        time.sleep(1.5)
    from_v1, from_v2 = counts
    ping = guest.run(["ip", "netns", "exec", "ns2", "ping", "-c", "3", "-i", "0.2", "-W", "5",
                      NS1_ADDRESS], check=False)
    assert ping.ok, ping.stdout + ping.stderr
    # ovs-vswitchd's revalidators bring the datapath's counts to the flows
    # every half second or so (slower under emulation).
    deadline = time.monotonic() + 30
    while True:
        now_v1, now_v2 = packets()
        if now_v1 >= from_v1 + 3 and now_v2 >= from_v2 + 3:
            break
        assert time.monotonic() < deadline, (
            f"the explicit flows did not carry the ping: table 1 counted "
            f"{now_v1 - from_v1} packets, table 2 {now_v2 - from_v2}, of 3 each")
        time.sleep(1)


def test_check_dead_ifs_reports_the_process_bound_to_the_old_port(
    bed: Bed, reload: Reload
) -> None:
    guest = bed.guest
    # The kernel's own view: the socket's binding was reset to -1 with p0's old device.
    fd = f"/proc/{bed.holder_pid}/fd/{bed.holder_fd}"
    inode = guest.run(["stat", "-L", "-c", "%i", fd]).stdout.strip()
    packet = guest.run(["cat", "/proc/net/packet"]).stdout
    [row] = [line.split() for line in packet.splitlines()[1:] if line.split()[8:9] == [inode]]
    assert row[4] == "-1"
    expected = {"pid": bed.holder_pid, "ifindex": -1, "inode": int(inode)}

    def found(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: e[k] for k in expected} for e in entries if e["pid"] == bed.holder_pid]

    assert found(reload.result["dead_sockets"]) == [expected]
    check = guest.run(["ovs-service", "check-dead-ifs", "--json"], check=False)
    assert check.returncode == 1, check.stdout + check.stderr
    assert found(json.loads(check.stdout)) == [expected]
    assert "holder.py p0" in json.loads(check.stdout)[0]["command"]


# -- Debian's units, as the package installs them ---------------------------------------


def test_with_debians_units_and_the_drop_ins(bed: Bed, reload: Reload) -> None:
    guest = bed.guest
    start = time.monotonic()
    guest.sh(PACKAGED_UNITS.format(repo=REPO), timeout=300)
    units = guest.run(["systemctl", "is-active", "openvswitch-switch", "ovsdb-server",
                       "ovs-vswitchd", "openvswitch"])
    assert units.stdout.split() == ["active"] * 4
    print(f"\nswitched to Debian's units in {time.monotonic() - start:.1f} s")
    before, mark = switch_state(guest), module_mark(guest)
    run = guest.run(["ovs-service", "force-reload-kmod", "--json"], timeout=RELOAD_TIMEOUT,
                    check=False)
    print(f"force-reload-kmod with Debian's units: exit {run.returncode}, {run.seconds:.1f} s")
    states = guest.run(["systemctl", "is-active", "openvswitch-switch", "ovsdb-server",
                        "ovs-vswitchd", "openvswitch"], check=False).stdout.split()
    assert run.ok, f"exit {run.returncode}: {run.stderr.strip()}; units: {states}"
    assert states == ["active"] * 4
    after = switch_state(guest)
    assert module_mark(guest).inits == mark.inits + 1
    assert after.dp_ports == before.dp_ports
    assert after.ofports == before.ofports
    assert after.openflow == before.openflow
    assert after.addresses() == before.addresses()
    assert after.firewall == before.firewall
