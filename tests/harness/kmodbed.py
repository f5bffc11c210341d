"""The kernel-module test bed: a rich switch on Debian's openvswitch.ko in a systemd guest.

Shared by the VM lanes (`test_kmod_lane.py`, `test_kmod_crash_lane.py`). A
guest boots systemd and runs ovs-service's own units from /run/systemd/system;
`build_switch` gives it br0 with internal ports (addresses, routes in two
tables, one port with its own MAC and MTU, one left down), two network
namespaces whose veth ends are ports of br0 and talk only through explicit
flows, groups, a meter and a TLV mapping, an Open vSwitch VXLAN port,
firewall rules in iptables, ip6tables and nftables, and a kernel GRE tunnel
that is none of Open vSwitch's business. `switch_state` reads all of it back in one round trip
with the kernel's and Open vSwitch's own tools (ovs-dpctl, ovs-ofctl,
ovs-vsctl, ip -json, iptables-save, nft), never with ovs-service.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.harness.vm.build import REPO
from tests.harness.vm.guest import Guest

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

TOPOLOGY = r"""
# Both numberings get gaps (gap0 comes and goes), so that ports made afresh
# in creation order would land elsewhere. Every OpenFlow number is asked for:
# ports added in one transaction are otherwise numbered in an order that
# changes from one build to the next.
ovs-vsctl add-br br0 \
  -- add-port br0 p0 -- set interface p0 type=internal ofport_request=10 \
  -- add-port br0 gap0 -- set interface gap0 type=internal ofport_request=1 \
  -- add-port br0 p1 -- set interface p1 type=internal ofport_request=2 \
  -- add-port br0 p2 -- set interface p2 type=internal ofport_request=3
for n in 1 2; do
    ip netns add ns$n
    ip link add v$n type veth peer name eth0 netns ns$n
    ip link set v$n up
    ip -n ns$n link set lo up
    ip -n ns$n address add 192.0.2.1$n/24 dev eth0
    ip -n ns$n link set eth0 up
done
# Static neighbours: ns1 and ns2 know each other's MAC for good. A dynamic
# entry goes stale within a minute and its refresh (unicast ARP) needs an
# upcall, which nothing answers while ovs-vswitchd is down or waiting for its
# flows: a refresh that falls in a restart or a reload stretches the pings'
# gap by seconds under emulation, for either method measured. The pings then
# measure the datapath, not the neighbour cache (the ARP flows stay in the table).
mac() { ip -n $1 -br link show eth0 | awk '{print $3}'; }
ip -n ns1 neigh replace 192.0.2.12 lladdr "$(mac ns2)" dev eth0 nud permanent
ip -n ns2 neigh replace 192.0.2.11 lladdr "$(mac ns1)" dev eth0 nud permanent
ip link add v3 type veth peer name v3peer      # a system port left down
# vx0: an Open vSwitch VXLAN port, whose datapath port is the shared vport
# vxlan_sys_4789 that ovs-vswitchd makes, numbered after gap0's.
ovs-vsctl add-port br0 v1 -- set interface v1 ofport_request=4 \
  -- add-port br0 v2 -- set interface v2 ofport_request=20 \
  -- add-port br0 v3 -- set interface v3 ofport_request=5
ovs-vsctl add-port br0 vx0 -- set interface vx0 type=vxlan ofport_request=6 \
    options:remote_ip=203.0.113.9 options:key=77
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


# The datapath ports that back Open vSwitch's tunnel ports (vxlan_sys_4789,
# genev_sys_6081, gre_sys...): ovs-vswitchd names and numbers them itself, and
# before 3.2 it deletes and makes them again at each start, at the lowest free
# number. `SwitchState.dp_ports` leaves them out; `tunnel_backers` has them.
TUNNEL_BACKER = re.compile(r"^[a-z0-9]+_sys(_\d+)?$")  # ip6gre_sys too


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


def reply_body(text: str) -> list[str]:
    """Reply lines without `XXX reply (OF1.5) (xid=0x2):` headers and blanks."""
    return [line.strip() for line in text.splitlines()
            if line.strip() and not (not line.startswith(" ") and "(xid=" in line)]


def openflow(state: dict[str, str]) -> list[str]:
    meters: list[str] = []
    for line in reply_body(state["meters"]):
        if line.startswith("meter=") or not meters:
            meters.append(line)
        else:
            meters[-1] += " " + line  # a meter's bands follow on their own lines
    tlv = [" ".join(line.split()) for line in state["tlv"].splitlines()
           if re.match(r"^\s*0x[0-9a-f]+\s+0x[0-9a-f]+\s+\d+\s+tun_metadata\d+\s*$", line)]
    return sorted(
        [f"flow: {line}" for line in reply_body(state["flows"])]
        + [f"group: {line}" for line in reply_body(state["groups"])]
        + [f"meter: {line}" for line in meters]
        + [f"tlv: {line}" for line in tlv]
    )


def links(text: str, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """`ip -json link`, without the ifindex (a module reload makes new devices).

    A link that is down shows no qdisc either: a link that has been up once
    shows the qdisc it got then (noqueue) instead of noop (ports used to be
    re-created with `ovs-dpctl add-if`, which brought each one up for a
    moment); neither does anything while it is down.
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
    link-local addresses alone (`link_local`) or all but those. Without the
    routes of tunnel backers (TUNNEL_BACKER): ovs-vswitchd's own devices,
    which 3.1 makes again at each start, with a new MAC and so a new
    link-local address."""
    out = []
    for route in json.loads(text):
        if TUNNEL_BACKER.match(str(route.get("dev", ""))):
            continue
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
        """Every datapath port but tunnel backers (see TUNNEL_BACKER)."""
        return {name: number for name, number in dp_ports(self.raw["dpctl"]).items()
                if not TUNNEL_BACKER.match(name)}

    @property
    def tunnel_backers(self) -> dict[str, int]:
        return {name: number for name, number in dp_ports(self.raw["dpctl"]).items()
                if TUNNEL_BACKER.match(name)}

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


    def changes(self, after: SwitchState) -> list[str]:
        """What differs in `after`, one entry per aspect; empty when nothing does."""
        aspects: dict[str, tuple[Any, Any]] = {
            "datapath port numbers": (self.dp_ports, after.dp_ports),
            "OpenFlow port numbers": (self.ofports, after.ofports),
            "OpenFlow port config": (self.of_port_descs, after.of_port_descs),
            "OpenFlow state": (self.openflow, after.openflow),
            "links": (self.links, after.links),
            "addresses": (self.addresses(), after.addresses()),
            "IPv6 link-local addresses": (self.addresses(True), after.addresses(True)),
            "routes": (self.routes(), after.routes()),
            "IPv6 link-local routes": (self.routes(True), after.routes(True)),
            "firewall": (self.firewall, after.firewall),
        }
        return [f"{name}:\n{_changed(old, new)}" for name, (old, new) in aspects.items()
                if old != new]


def _changed(old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        return differences(old, new)
    return "\n".join([f"- {x}" for x in old if x not in new]
                     + [f"+ {x}" for x in new if x not in old]) or f"{old!r} -> {new!r}"


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


# -- the bed ------------------------------------------------------------------------


@contextmanager
def booted_guest(lane: str) -> Iterator[Guest]:
    """A systemd guest with an empty ovs-service store; prints the lane's time at the end."""
    lane_start = time.monotonic()
    with Guest("systemd") as booted:
        print(f"\nsystemd guest up in {booted.boot_seconds:.1f} s")
        assert booted.system_state == "running", booted.run(
            ["systemctl", "--failed", "--no-legend"], check=False).stdout
        # The guest's /var/lib is the host's under an overlay: give ovs-service
        # an empty store, whatever the host holds.
        booted.run(["mkdir", "-p", STATE_DIR])  # the overlay is the guest's own
        booted.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "tmpfs", STATE_DIR])
        yield booted
        print(f"\n{lane}: {time.monotonic() - lane_start:.1f} s in all")


def build_switch(guest: Guest) -> None:
    """Start ovs-service's units and build the switch; traffic passes through the flows."""
    start = time.monotonic()
    guest.sh(OUR_UNITS.format(repo=REPO), timeout=300)
    started = time.monotonic()
    guest.sh(TOPOLOGY, timeout=300)
    built = time.monotonic()
    assert ping(guest), "no traffic through the flows"
    print(f"\nour units started in {started - start:.1f} s; "
          f"switch built in {built - started:.1f} s")


def ping(guest: Guest, count: int = 2) -> bool:
    """Whether ns1 reaches ns2 through the bridge's flows."""
    return guest.run(["ip", "netns", "exec", "ns1", "ping", "-c", str(count), "-W", "5",
                      NS2_ADDRESS], check=False).ok


SETTLE = """
for i in $(seq 1500); do
    [ -z "$(systemctl list-jobs --no-legend --plain)" ] && exit 0
    sleep 0.2
done
systemctl list-jobs --no-legend --plain
exit 1
"""


def settle(guest: Guest) -> None:
    """Wait until the guest's systemd has no job left (a unit may still be
    running its ExecStartPost= hooks when the command that started it is gone)."""
    result = guest.sh(SETTLE, timeout=330, check=False)
    assert result.ok, f"systemd jobs still queued:\n{result.stdout}"
