"""The bed: Open vSwitch under a systemd booted in a namespace, two hosts on
the probe bridge, and generated filler tables spread over the bridges."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.gap.methods import FLOORS, OVS_CTL
from tests.harness.lane import DROPINS, UNITS, NsSwitch, add_hosts, remove_hosts
from tests.harness.systemd_ns import SystemdNamespace

PROBE = "gb0"  # the bridge with the two hosts
FILLER_PROTOCOLS = ["OpenFlow13", "OpenFlow14", "OpenFlow15"]
OF = ("-O", "OpenFlow15")
STORE = "/var/lib/ovs-service"
LONG = 1800.0  # seconds any single command may take (1,000,000 flows on a busy machine)
TABLES = 4  # the filler goes to tables 0..TABLES-1

PROBE_FLOWS = ("table=0,priority=10,in_port=1,actions=group:7\n",
               "table=0,priority=10,in_port=2,actions=output:1\n")
PROBE_FLOWS_METERED = ("table=0,priority=10,in_port=1,actions=group:7\n",
                       "table=0,priority=10,in_port=2,actions=meter:3,output:1\n")

Log = Callable[[str], None]

UNIT_DIR = "/run/systemd/system"
UMBRELLA = UNITS[-1]  # units/openvswitch.service: ours, and the package's
assert UMBRELLA.name == "openvswitch.service"
# What each unit set puts over Debian's units ("debian": nothing, "bare": no
# units run the daemons); "floor" and "package-floor" are written from "ours"
# and "package" (floor_units).
PACKAGE_UNITS = [UMBRELLA, *DROPINS]


def _without_hooks(unit: Path, folder: Path) -> Path:
    """A copy of a unit file, or of a drop-in folder, in `folder`, without a
    line that runs ovs-service-hook (continued lines joined first)."""
    def strip(src: Path, dst: Path) -> None:
        lines = src.read_text().replace("\\\n", " ").splitlines()
        dst.write_text("".join(f"{ln}\n" for ln in lines if "ovs-service-hook" not in ln))

    copy = folder / unit.name
    if unit.is_dir():
        copy.mkdir(exist_ok=True)
        for conf in sorted(unit.glob("*.conf")):
            strip(conf, copy / conf.name)
    else:
        strip(unit, copy)
    return copy


class BenchError(RuntimeError):
    pass


def shares(total: int, bridges: int) -> list[int]:
    base, extra = divmod(total, bridges)
    return [base + (1 if i < extra else 0) for i in range(bridges)]


def filler_line(bridge: int, j: int) -> str:
    """Flow j of a bridge: never matches the probe (ICMP between 10.77.0.1 and .2)."""
    table = j % TABLES
    addr = f"10.{128 + (j >> 16)}.{(j >> 8) & 255}.{j & 255}"
    port = 1 + (bridge * 7919 + j) % 60000
    if table == 0:
        return (f"table=0,priority=5,ip,nw_dst={addr},tcp,tp_dst={port},"
                f"actions=mod_nw_tos:{(j % 63) * 4},resubmit(,1)\n")
    if table == 1:
        return (f"table=1,priority={1 + j % 1000},ip,nw_src={addr},tcp,tp_src={port},"
                f"actions=load:{j & 0xffff}->NXM_NX_REG0[0..15],resubmit(,2)\n")
    if table == 2:
        return (f"table=2,priority={1 + j % 1000},udp,nw_dst={addr},tp_dst={port},"
                f"actions=mod_dl_src:02:00:00:{(j >> 16) & 255:02x}:{(j >> 8) & 255:02x}:"
                f"{j & 255:02x},resubmit(,3)\n")
    return (f"table=3,priority={1 + j % 1000},tcp,nw_src={addr},nw_dst=10.200.0.1,"
            f"tp_dst={port},actions=output:{1 + j % 2}\n")


class Bed:
    """One systemd namespace with Open vSwitch, the hosts and the tables of one cell."""

    def __init__(self, ns: SystemdNamespace, work: Path, with_meter: bool, log: Log) -> None:
        self.ns = ns
        self.work = work
        self.with_meter = with_meter
        self.log = log
        self.units = "ours"
        self.files: dict[str, Path] = {}
        self.expected: dict[str, int] = {}
        self.empty = False  # every bridge holds only a fresh bridge's table (the floor)
        ns.install_units(UNITS)
        ns.systemctl("start", "openvswitch.service")
        self.switch = NsSwitch(ns)
        self.hosts = add_hosts(ns, self.switch, PROBE)
        if not with_meter:
            self.switch.ofctl(*OF, "del-flows", PROBE)
            self.switch.ofctl(*OF, "del-meters", PROBE)

    def close(self) -> None:
        remove_hosts(self.hosts)
        self.switch.close()

    def run(self, argv: Sequence[str], timeout: float = LONG) -> subprocess.CompletedProcess[str]:
        return self.ns.run(list(argv), timeout=timeout)

    # -- tables ---------------------------------------------------------------------

    def build(self, total: int, bridges: int) -> None:
        """Bridges gb0..gb{B-1} holding `total` flows between them, loaded from files."""
        names = [f"gb{i}" for i in range(bridges)]
        for name in self.switch.bridges():
            if name != PROBE and name not in names:
                self.switch.vsctl("del-br", name)
        have = set(self.switch.bridges())
        for name in names:
            if name not in have:
                self.switch.add_bridge(name, protocols=FILLER_PROTOCOLS)
        self.files.clear()
        self.expected.clear()
        for b, (name, count) in enumerate(zip(names, shares(total, bridges), strict=True)):
            path = self.work / f"{name}.flows"
            with open(path, "w") as f:
                fill = count
                if name == PROBE:
                    f.writelines(PROBE_FLOWS_METERED if self.with_meter else PROBE_FLOWS)
                    fill -= len(PROBE_FLOWS)
                for j in range(max(fill, 0)):
                    f.write(filler_line(b, j))
            self.files[name] = path
            self.expected[name] = max(count, len(PROBE_FLOWS)) if name == PROBE else count
        self.load_tables()

    def load_tables(self, only: Sequence[str] = ()) -> None:
        """Put the generated tables in place (groups and meter of the probe bridge too)."""
        for name, path in self.files.items():
            if only and name not in only:
                continue
            self.run(["ovs-ofctl", *OF, "del-flows", name])
            if name == PROBE:
                self.run(["ovs-ofctl", *OF, "del-groups", name])
                self.run(["ovs-ofctl", *OF, "del-meters", name])
                self.run(["ovs-ofctl", *OF, "add-group", name,
                          "group_id=7,type=all,bucket=output:2"])
                if self.with_meter:
                    self.run(["ovs-ofctl", *OF, "add-meter", name,
                              "meter=3 pktps bands=type=drop rate=100000"])
            self.run(["ovs-ofctl", *OF, "--bundle", "add-flows", name, str(path)])
        if not only:
            self.empty = False
        bad = self.damaged()
        if bad:
            raise BenchError(f"tables not loaded as generated: {bad}")

    def counts(self) -> dict[str, int]:
        out = {}
        for name in self.files:
            text = self.ns.run(["ovs-ofctl", *OF, "dump-aggregate", name], check=False).stdout
            m = re.search(r"flow_count=(\d+)", text)
            out[name] = int(m.group(1)) if m else -1
        return out

    def expected_now(self) -> dict[str, int]:
        return dict.fromkeys(self.files, 1) if self.empty else self.expected

    def damaged(self) -> dict[str, tuple[int, int]]:
        now, expected = self.counts(), self.expected_now()
        return {n: (expected[n], now[n]) for n in self.files if now[n] != expected[n]}

    def empty_tables(self) -> None:
        """Every bridge as a fresh one comes up (fail_mode standalone, no
        controller): only priority=0 actions=NORMAL, no group, no meter."""
        for name in self.files:
            for what in ("del-flows", "del-groups", "del-meters"):
                self.run(["ovs-ofctl", *OF, what, name])
            self.run(["ovs-ofctl", *OF, "add-flow", name, "priority=0,actions=NORMAL"])

    def flow_restore_wait(self) -> bool:
        out = self.switch.vsctl("--if-exists", "get", "Open_vSwitch", ".",
                                "other_config:flow-restore-wait", check=False)
        return out.strip().strip('"') == "true"

    def clear_flow_restore_wait(self) -> None:
        self.switch.vsctl("--if-exists", "remove", "Open_vSwitch", ".", "other_config",
                          "flow-restore-wait")

    def vswitchd_pid(self) -> int:
        text = self.ns.run(["cat", "/run/openvswitch/ovs-vswitchd.pid"], check=False).stdout
        return int(text.strip()) if text.strip().isdigit() else 0

    # -- which units run the daemons ---------------------------------------------------

    def use(self, units: str) -> None:
        """Get the daemons running under `units`, with the tables they are
        measured with: a floor's emptied, everyone else's whole. Also when
        the units stay: a new cell, or the restores timed after the rounds,
        may have filled a floor's tables since."""
        if units != self.units:
            self._switch_units(units)
        if units in FLOORS:
            if not self.empty:
                self.empty_tables()
                self.empty = True
        elif self.empty:
            self.load_tables()
        bad = self.damaged()
        if bad:
            self.log(f"  tables changed by the switch to {units}: {bad}; loading them again")
            self.load_tables(list(bad))

    def restart_bare(self, floor_units: str) -> None:
        """ovs-vswitchd restarted by a floor's units on emptied tables: a fresh
        daemon holding a fresh bridge's table, for a timed restore to fill.
        The tables count as the cell's whole ones from here: that restore is
        checked against them."""
        self.use(floor_units)
        self.ns.run(["systemctl", "restart", "ovs-vswitchd.service"], timeout=LONG)
        self.ns.settle()
        self.empty = False

    def _switch_units(self, units: str) -> None:
        began = time.monotonic()
        if self.units != "bare" and units != "bare":
            pid = self.vswitchd_pid()
            self._swap_unit_files(units)
            if self.vswitchd_pid() != pid:
                raise BenchError(f"swapping to {units} units restarted ovs-vswitchd")
        elif units == "bare":
            self._stop_units()
            self.run([OVS_CTL, "start", "--system-id=random"])
            self.load_tables()
        else:
            self.run([OVS_CTL, "stop"])
            self._install(units)
            self.ns.systemctl("start", self._umbrella(units))
            self.ns.settle()
            self.load_tables()
        self.log(f"  (daemons now under {units}: {time.monotonic() - began:.1f}s)")
        self.units = units

    @staticmethod
    def _umbrella(units: str) -> str:
        return "openvswitch-switch.service" if units == "debian" else "openvswitch.service"

    def _install(self, units: str) -> None:
        """Put `units`' files over Debian's (none for "debian"), and nothing else."""
        names = [p.name for p in (*UNITS, *DROPINS)]
        self.ns.run(["rm", "-rf", *[f"{UNIT_DIR}/{n}" for n in names]])
        wanted = {"ours": UNITS, "package": PACKAGE_UNITS, "debian": [],
                  "floor": UNITS, "package-floor": PACKAGE_UNITS}[units]
        if units in FLOORS:
            wanted = self.floor_units(units, wanted)
        self.ns.install_units(wanted, reload=False)
        self.ns.systemctl("daemon-reload")

    def floor_units(self, name: str, units: Sequence[Path]) -> list[Path]:
        """`units` with no line of ovs-vswitchd's unit or drop-ins that runs a
        hook: that daemon alone. ovsdb-server's stay as they are (the floor
        restarts ovs-vswitchd only)."""
        folder = self.work / name
        folder.mkdir(exist_ok=True)
        return [_without_hooks(unit, folder) if unit.name.startswith("ovs-vswitchd.service")
                else unit for unit in units]

    def _swap_unit_files(self, units: str) -> None:
        # Same unit names in every set, and the same daemons (started with
        # ovs-ctl or directly, with the same options): only the definitions
        # change. Debian's units are PartOf=openvswitch-switch: that unit is
        # stopped only once they are replaced (ours, floor).
        self._install(units)
        if units in ("ours", "floor"):
            self.ns.systemctl("stop", "openvswitch-switch.service")
        elif units == "debian":
            self.ns.systemctl("stop", "openvswitch.service")
        self.ns.systemctl("start", self._umbrella(units))
        self.ns.settle()
        if units in ("ours", "package", "package-floor"):
            # The database still runs as the other units started it: the
            # next `ovs-service restart` would restart it (its unit changed,
            # ovs_service.database), which a machine that runs these units
            # does not see. Restarted alone, it starts as these units start it.
            self.ns.systemctl("restart", "--job-mode=ignore-dependencies",
                              "ovsdb-server.service")
            self.ns.settle()

    def _stop_units(self) -> None:
        self.ns.systemctl("stop", self._umbrella(self.units), "ovs-vswitchd.service",
                          "ovsdb-server.service")
        self.ns.settle()
        # The stop hook saved a snapshot and marked it pending: the tables are
        # loaded from the generated files instead, so a later start of
        # ovs-service's units must not restore it.
        self.ns.run(["sh", "-c", f"rm -rf {STORE}/* {STORE}/.[!.]*"], check=False)
