"""Snapshots across Open vSwitch versions: 3.1 (this machine's, a private
switch) and 3.5 (Debian 13's, in a trixie root with its own `ovs-ctl
start`), with the checkout's code on both sides (inside the root with the
root's Python 3.13 and libraries).

- A snapshot taken under 3.1 restores exactly under 3.5.
- The way back, 3.5 -> 3.1: a snapshot of what 3.1 also takes restores
  exactly; one holding a flow 3.1 does not know (a `sample` action whose
  observation ids come from a register, new in 3.4) is refused in one line
  naming it, before anything is touched on any bridge.

Both sides' states are printed by the same tool, this machine's 3.1
`ovs-ofctl`, over each switch's management socket (the root's through
/proc/PID/root), and `ovs-vsctl` of each side for port numbers: 3.5's
`ovs-ofctl` prints some fields differently.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.harness import canon, debroot
from tests.harness.ovsbed import Cli, CliResult, OvsBed, one_line_error, sh, wait_for

pytestmark = [pytest.mark.upgrade, pytest.mark.root, pytest.mark.slow]

INNER_STATE = "/var/lib/ovs-service-test"  # the root's snapshot store
INNER_SNAPSHOTS = "/root/snapshots"  # snapshots carried in from this machine
RUNDIR = "/run/openvswitch"

PORTS = {"br0": {"p1": 1, "p2": 2}, "br1": {"q1": 1, "q2": 5}}
PROTOCOLS = {"br0": ("OpenFlow10", "OpenFlow13", "OpenFlow15"), "br1": ("OpenFlow13",)}
# What both versions take: a TLV map, a meter, a group, flows using them, a
# port setting (no-flood, seen at OpenFlow 1.0 only).
COMMON: list[tuple[str, ...]] = [
    ("-O", "OpenFlow15", "add-tlv-map", "br0", "{class=0xffff,type=0,len=4}->tun_metadata0"),
    ("-O", "OpenFlow15", "add-meter", "br0",
     "meter=1 kbps burst bands=type=drop rate=100 burst_size=10"),
    ("-O", "OpenFlow15", "add-group", "br0",
     "group_id=5,type=select,bucket=output:1,bucket=output:2"),
    ("-O", "OpenFlow15", "add-flow", "br0", "priority=10,ip,tun_metadata0=7 actions=group:5"),
    ("-O", "OpenFlow15", "add-flow", "br0", "priority=20,arp actions=meter:1,output:2"),
    ("-O", "OpenFlow15", "add-flow", "br0",
     "table=3,priority=5,tcp,tp_dst=80 actions=ct(commit,zone=3),resubmit(,4)"),
    ("-O", "OpenFlow10", "mod-port", "br0", "p2", "no-flood"),
    ("-O", "OpenFlow13", "add-flow", "br1", "priority=9,in_port=1 actions=output:5"),
    ("-O", "OpenFlow13", "add-flow", "br1", "priority=8,ip,nw_dst=10.0.0.0/8 actions=drop"),
]
# Open vSwitch 3.4 and later: the observation ids of `sample` from a field
# (encoded as an action 3.1 does not know).
NEWER_ONLY = ("-O", "OpenFlow13", "add-flow", "br1",
              "priority=30,udp actions=sample(probability=65535,collector_set_id=1,"
              "obs_domain_id=NXM_NX_REG0[],obs_point_id=7),output:1")


class RootSwitch:
    """The root's Open vSwitch 3.5, seen with this machine's `ovs-ofctl` (see
    the module's text): a `canon.Switch`."""

    def __init__(self, rns: debroot.RootNamespace, dir: Path) -> None:
        self.rns = rns
        self.dir = dir

    def vsctl(self, *args: str, check: bool = True) -> str:
        return self.rns.run(["ovs-vsctl", "--timeout=30", *args], check=check).stdout

    def ofctl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        """This machine's ovs-ofctl, the first bridge name made the root's socket."""
        argv, bridges = list(args), set(self.bridges())
        first = next((i for i, arg in enumerate(argv) if arg in bridges), None)
        if first is not None:
            argv[first] = f"unix:{self.rns.path(f'{RUNDIR}/{argv[first]}.mgmt')}"
        return sh(["ovs-ofctl", *argv], check=check, input=input).stdout

    def inner_ofctl(self, *args: str) -> str:
        """The root's own ovs-ofctl (3.5), which parses what 3.1's does not."""
        return self.rns.run(["ovs-ofctl", *args]).stdout

    def bridges(self) -> list[str]:
        return self.vsctl("list-br").split()

    def add_bridge(self, name: str, protocols: Sequence[str] | None = None,
                   ports: Mapping[str, int] | None = None,
                   datapath_type: str = "netdev") -> None:
        cmd = ["add-br", name, "--", "set", "Bridge", name, f"datapath_type={datapath_type}"]
        if protocols:
            cmd.append("protocols=" + ",".join(protocols))
        for port, ofport in (ports or {}).items():
            cmd += ["--", "add-port", name, port, "--", "set", "Interface", port,
                    "type=internal", f"ofport_request={ofport}"]
        self.vsctl(*cmd)
        wait_for(f"{name}'s OpenFlow socket", self.rns.path(f"{RUNDIR}/{name}.mgmt").exists)

    def ovs_service(self, *args: str) -> CliResult:
        """The checkout's code (copied in) with the root's Python and libraries."""
        argv = ["env", f"PYTHONPATH={debroot.INNER_SOURCE}",
                f"OVS_SERVICE_STATE_DIR={INNER_STATE}", "python3", "-m", "ovs_service", *args]
        proc = self.rns.run(argv, check=False)
        return CliResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def trixie(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RootSwitch]:
    root = debroot.ensure_root(debroot.TRIXIE).path
    with debroot.RootNamespace(root) as rns:
        print("\n" + rns.run(["ovs-vswitchd", "--version"]).stdout.splitlines()[0],
              "|", rns.run(["python3", "--version"]).stdout.strip())
        debroot.start_ovs(rns)
        debroot.copy_source(rns)
        rns.run(["install", "-d", "-m", "0700", INNER_STATE, INNER_SNAPSHOTS])
        yield RootSwitch(rns, tmp_path_factory.mktemp("trixie"))


@pytest.fixture
def root_switch(trixie: RootSwitch) -> Iterator[RootSwitch]:
    yield trixie
    for bridge in trixie.bridges():
        trixie.vsctl("del-br", bridge)


def add_bridges(switch: OvsBed | RootSwitch) -> None:
    for bridge, ports in PORTS.items():
        switch.add_bridge(bridge, protocols=PROTOCOLS[bridge], ports=ports)


def fill(switch: OvsBed | RootSwitch, commands: Sequence[tuple[str, ...]]) -> None:
    for command in commands:
        (switch.inner_ofctl if isinstance(switch, RootSwitch) else switch.ofctl)(*command)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=shutil.copy2)
    return dst


def test_a_snapshot_of_3_1_restores_exactly_under_3_5(ovs: OvsBed, cli: Cli,
                                                     root_switch: RootSwitch) -> None:
    add_bridges(ovs)
    fill(ovs, COMMON)
    saved = canon.all_states(ovs)
    snapshot = cli.save()
    assert json.loads((snapshot / "manifest.json").read_text())["ovs_version"].startswith("3.1")

    inside = f"{INNER_SNAPSHOTS}/{snapshot.name}"
    _copy(snapshot, root_switch.rns.path(inside))
    add_bridges(root_switch)
    result = root_switch.ovs_service("restore", "--from", inside)
    assert result.returncode == 0, result.describe()
    restored = canon.all_states(root_switch)
    assert restored == saved, "\n".join(canon.diff(saved[b], restored[b]) for b in saved)


def _save_inside(root_switch: RootSwitch, tmp_path: Path) -> Path:
    """A snapshot taken under 3.5 by the checkout's code, carried out."""
    result = root_switch.ovs_service("save", "--json")
    assert result.returncode == 0, result.describe()
    inner = json.loads(result.stdout)["path"]
    snapshot = _copy(root_switch.rns.path(inner), tmp_path / Path(inner).name)
    assert json.loads((snapshot / "manifest.json").read_text())["ovs_version"].startswith("3.5")
    return snapshot


def test_a_snapshot_of_3_5_that_3_1_takes_restores_exactly(
        ovs: OvsBed, cli: Cli, root_switch: RootSwitch, tmp_path: Path) -> None:
    add_bridges(root_switch)
    fill(root_switch, COMMON)
    saved = canon.all_states(root_switch)
    snapshot = _save_inside(root_switch, tmp_path)

    add_bridges(ovs)
    cli.restore("--from", str(snapshot), "--allow-foreign")
    restored = canon.all_states(ovs)
    assert restored == saved, "\n".join(canon.diff(saved[b], restored[b]) for b in saved)


def test_a_snapshot_of_3_5_with_what_3_1_lacks_is_refused_untouched(
        ovs: OvsBed, cli: Cli, root_switch: RootSwitch, tmp_path: Path) -> None:
    add_bridges(root_switch)
    fill(root_switch, [*COMMON, NEWER_ONLY])
    snapshot = _save_inside(root_switch, tmp_path)

    add_bridges(ovs)
    ovs.ofctl("add-flow", "br0", "priority=1 actions=drop")  # what was there before
    before = canon.all_states(ovs)
    result = cli.restore("--from", str(snapshot), "--allow-foreign", check=False)
    after = canon.all_states(ovs)
    assert after == before, "\n".join(canon.diff(before[b], after[b]) for b in before)
    one_line_error(result)
    assert result.returncode == 4, result.describe()
    said = result.stderr
    assert "nothing was changed: bridge 'br1': Open vSwitch 3.1.0 does not take what 3.5" in said
    # 3.1 does not know the action's subtype; its ovs-ofctl cannot print the
    # flow either, so it is named by where it goes.
    assert "the switch answered OFPBAC_BAD_VENDOR_TYPE to flow 1 of 4 (table=0, priority=30)" \
        in said, said
    print(f"\nrollback 3.5 -> 3.1 refused: {said.strip()}")


def test_the_root_runs_3_5(trixie: RootSwitch) -> None:
    """What the other tests stand on (and print): Open vSwitch 3.5 inside."""
    version = trixie.rns.run(["ovs-vsctl", "get", "Open_vSwitch", ".", "ovs_version"]).stdout
    assert version.strip().strip('"').startswith("3.5"), version
    assert subprocess.run(["ovs-vswitchd", "--version"], capture_output=True, text=True,
                          check=True).stdout.split()[-1].startswith("3.1")
