"""Forwarding gap of a restart: ovs-service against the stock scripts.

In one systemd booted in a private namespace (netdev datapath), N flows are
spread over B bridges. One bridge carries traffic between two hosts (network
namespaces with a veth each into it), steered by explicit flows and a group,
never NORMAL; every other flow is filler that the probe traffic never
matches. Each restart method runs in turn, repeated, while ping sends every
millisecond (`ping -D -i 0.001`, replies to a file); the gap is the longest
interval between two replies. After each run the flow count of every
bridge is checked with `ovs-ofctl dump-aggregate`.

Methods (see METHODS), each under the unit set it needs:
- `ovs-service restart` and `systemctl restart openvswitch`: ovs-service's units;
- `systemctl reload openvswitch-switch`: Debian's units (ovs-systemd-reload);
- `ovs-ctl restart --system-id=random`: the stock script run directly, on
  daemons that `ovs-ctl start --system-id=random` started, no unit owning them
  (under a unit, ovs-ctl and systemd would fight over the same daemons);
- optionally `systemctl restart openvswitch-switch` (Debian's units), which
  loses the flows: a reference row, marked.

Switching between ovs-service's and Debian's units swaps the unit files under
the running daemons (same unit names, same ExecStart=), so nothing restarts.
Going to or from the unit-less daemons restarts them: the tables are then
loaded again from the generated files, independently of ovs-service.

    python3 -m bench.gap_bench [--sizes 1000,100000] [--bridges 1,4] [--repeat 5]
    python3 -m bench.gap_bench --full
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
PROBE = "gb0"  # the bridge with the two hosts
FILLER_PROTOCOLS = ["OpenFlow13", "OpenFlow14", "OpenFlow15"]
OF = ("-O", "OpenFlow15")
STORE = "/var/lib/ovs-service"
LONG = 1800.0  # seconds any single command may take (1,000,000 flows on a busy machine)

DEFAULT_SIZES = (1_000, 10_000, 100_000)
DEFAULT_BRIDGES = (1, 4, 16)
FULL_SIZES = (100, 1_000, 10_000, 100_000, 1_000_000)
FULL_BRIDGES = (1, 4, 16)
# Cells left out of the default matrix (they take longest and add little).
DEFAULT_SKIP = frozenset({(10_000, 16)})
PROFILE_CELLS = ((25_000 * 4, 4), (100_000, 1))


# -- methods --------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    key: str
    label: str
    units: str  # "ours" | "debian" | "bare": which daemons/units it needs
    argv: tuple[str, ...]
    keeps_flows: bool = True


METHODS = {
    m.key: m for m in (
        # GNU time records the transaction's peak resident memory.
        Method("ovs-service", "ovs-service restart", "ours",
               ("/usr/bin/time", "-f", "%M", "-o", "/run/ovs-service-bench.rss",
                "ovs-service", "restart", "--json")),
        Method("systemctl-hooks", "systemctl restart openvswitch (hooks)", "ours",
               ("systemctl", "restart", "openvswitch.service")),
        Method("debian-reload", "systemctl reload openvswitch-switch (Debian)", "debian",
               ("systemctl", "reload", "openvswitch-switch.service")),
        Method("ovs-ctl", "ovs-ctl restart (stock)", "bare",
               (OVS_CTL, "restart", "--system-id=random")),
        Method("debian-restart", "systemctl restart openvswitch-switch (Debian, loses flows)",
               "debian", ("systemctl", "restart", "openvswitch-switch.service"),
               keeps_flows=False),
    )
}
BASELINE = "ovs-ctl"
DEFAULT_METHODS = ("ovs-service", "systemctl-hooks", "debian-reload", "ovs-ctl")
UNIT_ORDER = {"ours": 0, "debian": 1, "bare": 2}


# -- results ----------------------------------------------------------------------

@dataclass
class Run:
    method: str
    flows: int
    bridges: int
    round: int
    gap_s: float | None  # None: forwarding did not come back
    wall_s: float
    gap_from_s: float | None = None  # where the longest gap sat, from the command's start
    gap_to_s: float | None = None
    noise_s: float = 0.0  # the longest gap before the command started
    exit_code: int = 0
    flows_before: int = 0
    flows_after: int = 0
    lost: int = 0
    restarted: bool = True  # ovs-vswitchd got a new pid
    flow_restore_wait_left: bool = False
    steps: list[dict[str, Any]] = field(default_factory=list)  # ovs-service restart --json
    load: float = 0.0
    peak_rss_mib: float | None = None  # ovs-service restart's


def code_version() -> str:
    """The commit measured, and whether the tree differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=False).stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no", "--", "ovs_service", "units")
    return git("rev-parse", "--short", "HEAD") + (" (with uncommitted changes)" if changed else "")


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ovs = subprocess.run(["ovs-vswitchd", "--version"], capture_output=True, text=True,
                         check=False).stdout.split("\n")[0]
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "ovs": ovs.strip()}


# -- flow tables ----------------------------------------------------------------------

def shares(total: int, bridges: int) -> list[int]:
    base, extra = divmod(total, bridges)
    return [base + (1 if i < extra else 0) for i in range(bridges)]


def filler_line(bridge: int, j: int) -> str:
    """Flow j of a bridge: never matches the probe (ICMP between 10.77.0.1 and .2)."""
    table = j % 4
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


PROBE_FLOWS = ("table=0,priority=10,in_port=1,actions=group:7\n",
               "table=0,priority=10,in_port=2,actions=output:1\n")
PROBE_FLOWS_METERED = ("table=0,priority=10,in_port=1,actions=group:7\n",
                       "table=0,priority=10,in_port=2,actions=meter:3,output:1\n")


# -- the namespace's switch -------------------------------------------------------------

class BenchError(RuntimeError):
    pass


class Bed:
    """One systemd namespace with Open vSwitch, the hosts and the tables of one cell."""

    def __init__(self, ns: Any, work: Path, with_meter: bool, log: Any) -> None:
        from tests.harness.lane import NsSwitch, add_hosts

        self.ns = ns
        self.work = work
        self.with_meter = with_meter
        self.log = log
        self.units = "ours"
        self.files: dict[str, Path] = {}
        self.expected: dict[str, int] = {}
        ns.install_units(self._our_units())
        ns.systemctl("start", "openvswitch.service")
        self.switch = NsSwitch(ns)
        self.hosts = add_hosts(ns, self.switch, PROBE)
        if not with_meter:
            self.switch.ofctl(*OF, "del-flows", PROBE)
            self.switch.ofctl(*OF, "del-meters", PROBE)

    @staticmethod
    def _our_units() -> list[Path]:
        from tests.harness.lane import UNITS

        return list(UNITS)

    def close(self) -> None:
        from tests.harness.lane import remove_hosts

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
                    fill -= 2
                for j in range(max(fill, 0)):
                    f.write(filler_line(b, j))
            self.files[name] = path
            self.expected[name] = max(count, 2) if name == PROBE else count
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

    def damaged(self) -> dict[str, tuple[int, int]]:
        now = self.counts()
        return {n: (self.expected[n], now[n]) for n in self.files if now[n] != self.expected[n]}

    def flow_restore_wait(self) -> bool:
        out = self.switch.vsctl("--if-exists", "get", "Open_vSwitch", ".",
                                "other_config:flow-restore-wait", check=False)
        return out.strip().strip('"') == "true"

    def vswitchd_pid(self) -> int:
        text = self.ns.run(["cat", "/run/openvswitch/ovs-vswitchd.pid"], check=False).stdout
        return int(text.strip()) if text.strip().isdigit() else 0

    # -- which units run the daemons ---------------------------------------------------

    def use(self, units: str) -> None:
        """Get the daemons running under `units`; the tables survive (or are reloaded)."""
        if units == self.units:
            return
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
            if units == "ours":
                self.ns.install_units(self._our_units())
                self.ns.systemctl("start", "openvswitch.service")
            else:
                self._remove_our_units()
                self.ns.systemctl("start", "openvswitch-switch.service")
            self.ns.settle()
            self.load_tables()
        self.log(f"  (daemons now under {units}: {time.monotonic() - began:.1f}s)")
        self.units = units
        bad = self.damaged()
        if bad:
            self.log(f"  tables changed by the switch to {units}: {bad}; loading them again")
            self.load_tables(list(bad))

    def _remove_our_units(self) -> None:
        self.ns.run(["rm", "-f", *[f"/run/systemd/system/{p.name}" for p in self._our_units()]])
        self.ns.systemctl("daemon-reload")

    def _swap_unit_files(self, units: str) -> None:
        # Same unit names and ExecStart= in both sets: only the definitions change.
        if units == "ours":
            self.ns.install_units(self._our_units())
            self.ns.systemctl("stop", "openvswitch-switch.service")
            self.ns.systemctl("start", "openvswitch.service")
        else:
            self._remove_our_units()
            self.ns.systemctl("stop", "openvswitch.service")
            self.ns.systemctl("start", "openvswitch-switch.service")
        self.ns.settle()

    def _stop_units(self) -> None:
        if self.units == "ours":
            self.ns.systemctl("stop", "openvswitch.service", "ovs-vswitchd.service",
                              "ovsdb-server.service")
        else:
            self.ns.systemctl("stop", "openvswitch-switch.service", "ovs-vswitchd.service",
                              "ovsdb-server.service")
        self.ns.settle()
        # The stop hook saved a snapshot and marked it pending: the tables are
        # loaded from the generated files instead, so a later start of
        # ovs-service's units must not restore it.
        self.ns.run(["sh", "-c", f"rm -rf {STORE}/* {STORE}/.[!.]*"], check=False)


# -- the prober -----------------------------------------------------------------------

@dataclass
class Probe:
    gap_s: float | None
    gap_from: float | None
    gap_to: float | None
    noise_s: float
    replies: int


def reply_times(text: str) -> list[float]:
    stamps = []
    for line in text.splitlines():
        if line.startswith("[") and "bytes from" in line:
            with contextlib.suppress(ValueError):
                stamps.append(float(line[1:line.index("]")]))
    return stamps


class Prober:
    """ping -D -i INTERVAL from host 0 to host 1, its output in a file inside.

    ping is stopped by its pid (written by the shell that execs it).
    """

    def __init__(self, bed: Bed, interval: float) -> None:
        self.bed = bed
        self.interval = interval
        tag = uuid.uuid4().hex[:8]
        self.out = f"/run/gapbench-{tag}.txt"
        self.pidfile = f"/run/gapbench-{tag}.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    def _text(self) -> str:
        try:
            return self.bed.ns.path(self.out).read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Prober:
        hosts = self.bed.hosts
        script = 'echo $$ > "$1"; exec ping -D -n -i "$2" -W 1 "$3" > "$0" 2>&1'
        argv = self.bed.ns.nsenter_argv([
            "ip", "netns", "exec", hosts.names[0], "sh", "-c", script,
            self.out, self.pidfile, str(self.interval), hosts.addresses[1]])
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while len(reply_times(self._text())) < 200:
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError("no ping replies through the probe bridge before the run")
            time.sleep(0.05)
        return self

    def wait_recovered(self, since: float, hold: float = 0.5, timeout: float = 60.0) -> bool:
        """Wait until replies have flowed for `hold` seconds after `since` (epoch)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stamps = reply_times(self._text())
            recent = [t for t in stamps if t >= since]
            if recent and recent[-1] - max(recent[0], since) >= hold:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> str:
        pid = ""
        with contextlib.suppress(OSError):
            pid = self.bed.ns.path(self.pidfile).read_text().strip()
        if pid.isdigit():
            self.bed.ns.run(["kill", "-INT", pid], check=False)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        text = self._text()
        self.bed.ns.run(["rm", "-f", self.out, self.pidfile], check=False)
        return text

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()

    @staticmethod
    def measure(text: str, started: float, ended: float, recovered: bool) -> Probe:
        stamps = reply_times(text)
        before = [t for t in stamps if t < started]
        noise = max((b - a for a, b in itertools.pairwise(before)), default=0.0)
        if not recovered:
            last = max((t for t in stamps if t < ended), default=started)
            return Probe(None, last - started, None, noise, len(stamps))
        best, at = 0.0, 0
        for i in range(1, len(stamps)):
            if stamps[i] - stamps[i - 1] > best:
                best, at = stamps[i] - stamps[i - 1], i
        return Probe(best, stamps[at - 1] - started, stamps[at] - started, noise, len(stamps))


# -- one run ----------------------------------------------------------------------------

def run_method(bed: Bed, method: Method, flows: int, bridges: int, rnd: int,
               interval: float) -> Run:
    bed.use(method.units)
    before = bed.counts()
    pid = bed.vswitchd_pid()
    with Prober(bed, interval) as probe:
        started = time.time()
        t0 = time.monotonic()
        proc = bed.ns.run(list(method.argv), check=False, timeout=LONG)
        wall = time.monotonic() - t0
        ended = time.time()
        if method.units != "bare":
            bed.ns.settle()
        recovered = probe.wait_recovered(ended)
        text = probe.stop()
    if proc.returncode != 0:
        bed.log(f"  {method.label} exited {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    p = Prober.measure(text, started, ended, recovered)
    after = bed.counts()
    run = Run(method.key, flows, bridges, rnd, p.gap_s, wall, p.gap_from, p.gap_to, p.noise_s,
              proc.returncode, sum(before.values()), sum(after.values()),
              sum(max(before[n] - after[n], 0) for n in before),
              bed.vswitchd_pid() != pid, bed.flow_restore_wait(), load=os.getloadavg()[0])
    if method.key == "ovs-service" and proc.returncode == 0:
        with contextlib.suppress(ValueError, KeyError):
            run.steps = json.loads(proc.stdout)["steps"]
        rss = bed.ns.run(["cat", "/run/ovs-service-bench.rss"], check=False).stdout.split()
        run.peak_rss_mib = int(rss[-1]) / 1024 if rss and rss[-1].isdigit() else None
    if bed.damaged() or run.flow_restore_wait_left:
        if method.keeps_flows:
            bed.log(f"  {method.label} left the tables changed: {bed.damaged()}")
        if run.flow_restore_wait_left:
            bed.switch.vsctl("--if-exists", "remove", "Open_vSwitch", ".", "other_config",
                             "flow-restore-wait")
        bed.load_tables(list(bed.damaged()))
    return run


def rounds(methods: Sequence[Method], repeat: int) -> Iterator[tuple[int, Method]]:
    """Alternate the methods, grouped by unit set, in a back-and-forth order:
    each unit set is entered once per round, and no method always comes first."""
    ordered = sorted(methods, key=lambda m: UNIT_ORDER[m.units])
    for rnd in range(repeat):
        for m in (ordered if rnd % 2 == 0 else ordered[::-1]):
            yield rnd, m


# -- the profile of ovs-service restart's critical window ----------------------------------

def profile_cell(bed: Bed, flows: int, bridges: int, repeat: int, interval: float
                 ) -> dict[str, Any]:
    """Where the forwarding gap of `ovs-service restart` goes, next to the stock script's.

    - instrumented `ovs-service restart` runs (see `inner_profile`) with the
      prober, the journal of both units and the times systemd recorded for
      ovs-vswitchd.service's start commands: one timeline per run;
    - each hook run alone, Python's and nsenter's own start-up;
    - `systemctl restart ovsdb-server` alone (ovs-vswitchd keeps running);
    - the stock `ovs-ctl restart` with a time stamp on each line it prints
      (each is printed when its action is done).
    """
    bed.use("ours")
    ours = []
    for _ in range(repeat):
        cursor = bed.ns.run(["journalctl", "-n", "0", "--show-cursor", "--quiet"],
                            check=False).stdout.strip().removeprefix("-- cursor: ")
        with Prober(bed, interval) as probe:
            started = time.time()
            proc = bed.ns.run(["/usr/bin/python3", "-m", "bench.gap_bench",
                               "--inner-profile"], check=False, timeout=LONG)
            ended = time.time()
            recovered = probe.wait_recovered(ended)
            text = probe.stop()
        if proc.returncode != 0:
            raise BenchError(f"instrumented restart failed: {proc.stderr.strip()[-2000:]}")
        doc = json.loads(proc.stdout)
        p = Prober.measure(text, started, ended, recovered)
        doc["t0"] = started
        doc["wall_s"] = ended - started
        doc["gap"] = {"seconds": p.gap_s, "from": p.gap_from, "to": p.gap_to}
        doc["exec"] = exec_times(bed, started)
        doc["journal"] = journal_events(bed, cursor, started)
        doc["timeline"] = our_timeline(doc)
        ours.append(doc)
        if bed.damaged():
            raise BenchError(f"instrumented restart changed the tables: {bed.damaged()}")
    alone: dict[str, float] = {}
    for hook in ("stoppost", "prestart", "poststart"):
        times = []
        for _ in range(5):
            t0 = time.monotonic()
            bed.ns.run(["ovs-service-hook", hook], check=False)
            times.append(time.monotonic() - t0)
        alone[f"ovs-service-hook {hook}"] = statistics.median(times)
    for name, argv in (("/usr/bin/python3 -c pass", ["/usr/bin/python3", "-c", "pass"]),
                       ("true (nsenter's own cost)", ["true"])):
        t0 = time.monotonic()
        for _ in range(5):
            bed.ns.run(argv)
        alone[name] = (time.monotonic() - t0) / 5
    # ovsdb-server alone: ovs-vswitchd keeps running but, without its database
    # lock, does no work; it reconnects after its back-off (1 s, then 2 s...).
    with Prober(bed, interval) as probe:
        started = time.time()
        bed.ns.run(["systemctl", "restart", "ovsdb-server.service"])
        ended = time.time()
        recovered = probe.wait_recovered(ended, timeout=30)
        p = Prober.measure(probe.stop(), started, ended, recovered)
    db_alone = {"gap_s": p.gap_s, "wall_s": ended - started}
    bed.use("bare")
    stock = []
    for _ in range(repeat):
        with Prober(bed, interval) as probe:
            started = time.time()
            lines = timed_lines(bed, METHODS[BASELINE].argv)
            ended = time.time()
            recovered = probe.wait_recovered(ended)
            p = Prober.measure(probe.stop(), started, ended, recovered)
        run = {"t0": started, "wall_s": ended - started, "lines": lines,
               "gap": {"seconds": p.gap_s, "from": p.gap_from, "to": p.gap_to}}
        run["timeline"] = stock_timeline(run)
        stock.append(run)
        if bed.damaged():
            raise BenchError(f"the stock restart changed the tables: {bed.damaged()}")
    return {"flows": flows, "bridges": bridges, "runs": ours, "stock_runs": stock,
            "alone_s": alone, "ovsdb_server_restart_alone": db_alone,
            "vswitchd_exit_s": [vswitchd_exit(bed) for _ in range(2)]}


EXIT_SCRIPT = """p=$(cat /run/openvswitch/ovs-vswitchd.pid); a=$(date +%s.%N)
ovs-appctl -t ovs-vswitchd exit; b=$(date +%s.%N)
while [ -e /proc/$p ]; do sleep 0.002; done; c=$(date +%s.%N); echo $a $b $c"""


def vswitchd_exit(bed: Bed) -> dict[str, float]:
    """How long ovs-vswitchd takes to exit with these tables (ovs-ctl stop polls
    after 0.1 s, then 0.25 s and 0.65 s more), measured on the unit-less daemons."""
    bed.use("bare")
    a, b, c = map(float, bed.run(["sh", "-c", EXIT_SCRIPT]).stdout.split())
    bed.run([OVS_CTL, "start", "--system-id=random"])
    bed.load_tables()
    return {"appctl_exit_s": b - a, "gone_after_s": c - a}


def timed_lines(bed: Bed, argv: Sequence[str]) -> list[tuple[float, str]]:
    """Run argv inside; each output line with the time (from the start) it came."""
    t0 = time.time()
    proc = subprocess.Popen(bed.ns.nsenter_argv(list(argv)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                                 "/sbin:/bin", "LANG": "C.UTF-8"})
    assert proc.stdout is not None
    lines = [(time.time() - t0, line.strip()) for line in proc.stdout]
    if proc.wait() != 0:
        raise BenchError(f"{' '.join(argv)} failed: {lines[-5:]}")
    return lines


STOCK_EVENTS = (
    ("flows saved (ovs-save)", r"^Saving flows"),
    ("ovsdb-server asked to exit", r"^Exiting ovsdb-server"),
    ("ovsdb-server started", r"^Starting ovsdb-server"),
    ("system IDs configured", r"^Configuring Open vSwitch system IDs"),
    ("ovs-vswitchd asked to exit", r"^Exiting ovs-vswitchd"),
    ("ovs-vswitchd gone, flow-restore-wait set, start begins", r"loadable module"),
    ("ovs-vswitchd started (detached)", r"^Starting ovs-vswitchd"),
    ("flows restored (ovs-save's script)", r"^Restoring saved flows"),
    ("flow-restore-wait cleared, managers on", r"^Enabling remote OVSDB managers"),
)


def our_timeline(doc: dict[str, Any]) -> list[tuple[str, float]]:
    """The events of one instrumented run, in seconds from the command's start:
    the forwarding gap, the transaction's steps, the start commands of
    ovs-vswitchd.service and every journal line of both units."""
    out: list[tuple[str, float]] = []
    gap = doc["gap"]
    if gap["from"] is not None:
        out.append(("forwarding stops (last reply)", gap["from"]))
    for t, who, msg in doc["journal"]:
        msg = re.sub(r" - Open vSwitch[^.]*", "", msg)  # unit descriptions
        out.append((f"[{who}] {msg[:90]}", t))
    for key, (a, b) in doc["exec"].items():
        out.append((f"(systemd) {key} began", a))
        out.append((f"(systemd) {key} done", b))
    offset = doc["began"] - doc["t0"]
    for name, t in doc["marks"]:
        out.append((f"== step {name} done", t + offset))
    if gap["to"] is not None:
        out.append(("forwarding back (first reply)", gap["to"]))
    return sorted(out, key=lambda e: e[1])


def stock_timeline(run: dict[str, Any]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    gap = run["gap"]
    if gap["from"] is not None:
        out.append(("forwarding stops (last reply)", gap["from"]))
    for label, pattern in STOCK_EVENTS:
        t = next((t for t, line in run["lines"] if re.search(pattern, line)), None)
        if t is not None:
            out.append((label, t))
    if gap["to"] is not None:
        out.append(("forwarding back (first reply)", gap["to"]))
    return sorted(out, key=lambda e: e[1])


def exec_times(bed: Bed, t0: float) -> dict[str, list[float]]:
    """Start and end (seconds from t0) of ovs-vswitchd.service's start commands."""
    out: dict[str, list[float]] = {}
    text = bed.ns.run(["systemctl", "show", "--timestamp=us", "-p",
                       "ExecStartPre,ExecStart,ExecStartPost", "ovs-vswitchd.service"]).stdout
    for line in text.splitlines():
        name = line.split("=", 1)[0]
        args = re.search(r"argv\[\]=([^;]*)", line)
        stamps = re.findall(r"(?:start|stop)_time=\[([^\]]+)\]", line)
        if len(stamps) == 2 and "n/a" not in stamps:
            out[f"{name} {_command_name(args.group(1) if args else '')}"] = [
                _epoch(bed, s) - t0 for s in stamps]
    return out


def _command_name(argv: str) -> str:
    """`ovs-service-hook prestart`, `ovs-vswitchd`, `ovs-ctl`: the program and a
    first argument that is a word (not an option, not a path)."""
    words = argv.split()
    if not words:
        return "?"
    name = words[0].rsplit("/", 1)[-1]
    if len(words) > 1 and re.fullmatch(r"[a-z][a-z-]*", words[1]):
        name += f" {words[1]}"
    return name


def _epoch(bed: Bed, stamp: str) -> float:
    # "Wed 2026-11-25 09:04:57.319189 UTC": date(1) prints it as seconds since the epoch.
    text = bed.ns.run(["date", "-d", stamp.split(" ", 1)[1], "+%s.%N"]).stdout
    return float(text.strip())


def journal_events(bed: Bed, cursor: str, t0: float) -> list[tuple[float, str, str]]:
    argv = ["journalctl", "--no-pager", "-o", "json", "-u", "ovs-vswitchd.service",
            "-u", "ovsdb-server.service"]
    if cursor:
        argv += ["--after-cursor", cursor]
    events = []
    for line in bed.ns.run(argv, check=False).stdout.splitlines():
        with contextlib.suppress(ValueError, KeyError):
            e = json.loads(line)
            msg = e.get("MESSAGE")
            if isinstance(msg, list):
                msg = bytes(msg).decode(errors="replace")
            who = e.get("SYSLOG_IDENTIFIER") or e.get("_COMM") or ""
            events.append((int(e["__REALTIME_TIMESTAMP"]) / 1e6 - t0, who, str(msg)))
    return events


def inner_profile() -> None:
    """Inside the namespace: `ovs-service restart`, timing its parts from within.

    What the CLI does (transaction.restart), with the OpenFlow connection,
    the bundle and the per-bridge restore wrapped in timers, and the CPU time
    of ovs-vswitchd (per thread) read at the restore's start and end.
    """
    import threading

    from ovs_service import log as logsetup
    from ovs_service import openflow, tablediff, transaction
    from ovs_service.stages import flows

    logsetup.setup(False)
    lock = threading.Lock()
    marks: list[tuple[str, float]] = []
    per_bridge: dict[str, dict[str, float]] = {}
    vswitchd: dict[str, dict[str, float]] = {}

    def add(bridge: str, key: str, value: float) -> None:
        with lock:
            d = per_bridge.setdefault(bridge, {})
            d[key] = d.get(key, 0.0) + value

    class TimedSocket:
        """Time spent blocked in the socket, by phase of the bridge's restore."""

        def __init__(self, sock: Any, bridge: str) -> None:
            self._sock, self._bridge = sock, bridge
            self.phase = "before the bundle"

        def sendall(self, data: bytes) -> None:
            t = time.monotonic()
            self._sock.sendall(data)
            add(self._bridge, "sendall_s", time.monotonic() - t)
            add(self._bridge, "sent_bytes", len(data))

        def recv(self, n: int) -> bytes:
            t = time.monotonic()
            data: bytes = self._sock.recv(n)
            add(self._bridge, "recv_wait_s", time.monotonic() - t)
            add(self._bridge, f"recv_wait_s {self.phase}", time.monotonic() - t)
            return data

        def __getattr__(self, name: str) -> Any:
            return getattr(self._sock, name)

    orig_init = openflow.Connection.__init__

    def init(self: Any, path: Path, version: int, bridge: str, timeout: float = 30.0) -> None:
        t = time.monotonic()
        orig_init(self, path, version, bridge, timeout)
        self._sock = TimedSocket(self._sock, bridge)
        add(bridge, "connect_s", time.monotonic() - t)

    orig_control = openflow.Connection._bundle_control

    def control(self: Any, bundle_id: int, ctrl: int, flags: int) -> Any:
        t = time.monotonic()
        if ctrl == 4:
            add(self.bridge, "bundle_add_phase_s", t - self._adds_began)
            self._sock.phase = "commit"
        result = orig_control(self, bundle_id, ctrl, flags)
        if ctrl == 0:
            self._adds_began = time.monotonic()
            self._sock.phase = "adding to the bundle"
        if ctrl == 4:
            add(self.bridge, "bundle_commit_s", time.monotonic() - t)
            self._sock.phase = "after the commit"
        return result

    orig_flow_count = flows._flow_count

    def flow_count(conn: Any) -> int:
        n: int = orig_flow_count(conn)
        add(conn.bridge, "live flows seen before restoring", n)
        return n

    orig_flow_changes = tablediff.flow_changes

    def flow_changes(version: int, live: Any, saved: Any) -> Any:
        t, c = time.monotonic(), time.thread_time()
        deletes, adds = orig_flow_changes(version, live, saved)
        add("(all)", "diff against a live table: indexing the snapshot", time.monotonic() - t)
        add("(all)", "diff: its Python CPU", time.thread_time() - c)
        add("(all)", "diff: strict deletes sent", len(deletes))
        return deletes, adds

    orig_restore_bridge = flows.restore_bridge

    def restore_bridge(snapshot: Any, record: Any, *rest: Any) -> None:
        t, c = time.monotonic(), time.thread_time()
        add(record.name, "began_s", t - began)
        try:
            orig_restore_bridge(snapshot, record, *rest)
        finally:
            add(record.name, "wall_s", time.monotonic() - t)
            add(record.name, "thread_cpu_s", time.thread_time() - c)
            add(record.name, "ended_s", time.monotonic() - began)
            add(record.name, "messages", record.counts.get("flows", 0)
                + record.counts.get("groups", 0))

    def vswitchd_cpu() -> dict[str, float]:
        tick = os.sysconf("SC_CLK_TCK")
        try:
            pid = int(Path("/run/openvswitch/ovs-vswitchd.pid").read_text())
            out: dict[str, float] = {}
            for task in Path(f"/proc/{pid}/task").iterdir():
                stat = (task / "stat").read_text()
                comm = stat[stat.index("(") + 1:stat.rindex(")")]
                fields = stat[stat.rindex(")") + 2:].split()
                kind = re.sub(r"\d+$", "", comm)
                out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
            return out
        except (OSError, ValueError):
            return {}

    def on_step(record: Any) -> None:
        now = time.time()
        marks.append((record.name, now))
        if record.name == "start-ovs-vswitchd":
            vswitchd["at_restore_start"] = vswitchd_cpu()
            vswitchd["rusage_at_restore_start"] = {"self": _rusage()}
        if record.name == "restore":
            vswitchd["at_restore_end"] = vswitchd_cpu()
            vswitchd["rusage_at_restore_end"] = {"self": _rusage()}

    openflow.Connection.__init__ = init  # type: ignore[method-assign]
    openflow.Connection._bundle_control = control  # type: ignore[method-assign]
    flows.restore_bridge = restore_bridge
    flows._flow_count = flow_count
    tablediff.flow_changes = flow_changes
    began = time.monotonic()
    t0 = time.time()
    outcome = transaction.restart(on_step=on_step)
    steps = [{"name": s.name, "seconds": s.seconds} for s in outcome.steps]
    print(json.dumps({"ok": outcome.ok, "began": t0, "steps": steps,
                      "marks": [(n, t - t0) for n, t in marks],
                      "bridges": per_bridge, "vswitchd": vswitchd}))


def _rusage() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _median_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ranked = sorted(runs, key=lambda r: r["gap"]["seconds"] or math.inf)
    return ranked[len(ranked) // 2]


def summarize_profile(cell: dict[str, Any]) -> dict[str, Any]:
    """Medians (seconds) over the runs of one profiled cell, and the timelines
    of the runs with the median gap."""
    runs = cell["runs"]

    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    steps: dict[str, list[float]] = {}
    for r in runs:
        for s in r["steps"]:
            steps.setdefault(s["name"], []).append(s["seconds"])
    restore: dict[str, list[float]] = {}
    for r in runs:
        b = r["bridges"]
        restore.setdefault("restore_bridge wall, longest bridge", []).append(
            max((v.get("wall_s", 0.0) for v in b.values()), default=0.0))
        for key, label in (("thread_cpu_s", "Python CPU in restore threads"),
                           ("bundle_add_phase_s", "bundle: adding messages (send)"),
                           ("sendall_s", "  of which blocked in sendall"),
                           ("bundle_commit_s", "bundle: commit (switch applies it)"),
                           ("recv_wait_s", "blocked in recv (all replies)"),
                           ("connect_s", "connect + hello")):
            restore.setdefault(f"{label}, sum over bridges", []).append(
                sum(v.get(key, 0.0) for v in b.values()))
        v0 = r["vswitchd"].get("at_restore_start", {})
        v1 = r["vswitchd"].get("at_restore_end", {})
        for kind in v1:
            restore.setdefault(f"ovs-vswitchd CPU, threads {kind}*", []).append(
                v1[kind] - v0.get(kind, 0.0))
        s0 = r["vswitchd"].get("rusage_at_restore_start", {}).get("self")
        s1 = r["vswitchd"].get("rusage_at_restore_end", {}).get("self")
        if s0 is not None and s1 is not None:
            restore.setdefault("ovs-service process CPU (all threads)", []).append(s1 - s0)
    gaps = [r["gap"]["seconds"] for r in runs if r["gap"]["seconds"] is not None]
    stock_gaps = [r["gap"]["seconds"] for r in cell["stock_runs"]
                  if r["gap"]["seconds"] is not None]
    return {
        "flows": cell["flows"], "bridges": cell["bridges"], "runs": len(runs),
        "gap": med(gaps), "stock_gap": med(stock_gaps),
        "wall": med([r["wall_s"] for r in runs]),
        "stock_wall": med([r["wall_s"] for r in cell["stock_runs"]]),
        "steps": {k: med(v) for k, v in steps.items()},
        "restore": {k: med(v) for k, v in restore.items()},
        "alone": cell["alone_s"],
        "ovsdb_server_restart_alone": cell["ovsdb_server_restart_alone"],
        "vswitchd_exit": cell.get("vswitchd_exit_s", []),
        "timeline": _median_run(runs)["timeline"],
        "stock_timeline": _median_run(cell["stock_runs"])["timeline"],
    }


def _print_timeline(events: Sequence[Sequence[Any]], out: Any) -> None:
    start = next((t for label, t in events if label.startswith("forwarding stops")), 0.0)
    last = start
    for label, t in events:
        inside = "" if t < start else f"+{(t - last) * 1000:7.1f}"
        print(f"    {(t - start) * 1000:8.1f} ms {inside:>9}  {label}", file=out)
        if t >= start:
            last = t


def print_profile(p: dict[str, Any], out: Any = sys.stdout) -> None:
    def ms(v: float | None) -> str:
        return "never" if v is None else f"{v * 1000:.0f} ms"

    print(f"\nProfile, {p['bridges']} bridges x {p['flows'] // p['bridges']:,} flows "
          f"({p['runs']} runs each, medians): ovs-service restart gap {ms(p['gap'])} "
          f"(wall {p['wall']:.2f} s), stock ovs-ctl restart gap {ms(p['stock_gap'])} "
          f"(wall {p['stock_wall']:.2f} s)", file=out)
    print("  steps of ovs-service restart (--json):", file=out)
    for k, v in p["steps"].items():
        print(f"    {k:<56} {v * 1000:9.1f} ms", file=out)
    print("  restore step, inside (summed over the bridges' threads):", file=out)
    for k, v in p["restore"].items():
        print(f"    {k:<56} {v * 1000:9.1f} ms", file=out)
    print("  run alone (start-up costs):", file=out)
    for k, v in p["alone"].items():
        print(f"    {k:<56} {v * 1000:9.1f} ms", file=out)
    for i, e in enumerate(p.get("vswitchd_exit", [])):
        print(f"    {'ovs-appctl exit: ovs-vswitchd gone after (run ' + str(i + 1) + ')':<56} "
              f"{e['gone_after_s'] * 1000:9.1f} ms", file=out)
    db = p["ovsdb_server_restart_alone"]
    print(f"    {'systemctl restart ovsdb-server: forwarding gap':<56} "
          f"{ms(db['gap_s']):>12} (wall {db['wall_s'] * 1000:.0f} ms)", file=out)
    print("  timeline of ovs-service restart (median run; ms from the gap's start, "
          "+ since the previous event):", file=out)
    _print_timeline(p["timeline"], out)
    print("  timeline of the stock ovs-ctl restart (median run):", file=out)
    _print_timeline(p["stock_timeline"], out)


# -- the matrix ------------------------------------------------------------------------

def median_or_none(values: Sequence[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        # A run that never recovered makes the median meaningless when it is
        # half or more; otherwise take the median of what recovered, counting
        # the others as infinite.
        finite = sorted(v for v in values if v is not None)
        inf = len(values) - len(finite)
        if not values or inf * 2 >= len(values):
            return None
        ranked = finite + [math.inf] * inf
        return float(statistics.median(ranked))
    return float(statistics.median([v for v in values if v is not None]))


def summarize(runs: Sequence[Run]) -> list[dict[str, Any]]:
    cells: dict[tuple[int, int], dict[str, list[Run]]] = {}
    for r in runs:
        cells.setdefault((r.bridges, r.flows), {}).setdefault(r.method, []).append(r)
    rows = []
    for (bridges, flows), by_method in sorted(cells.items()):
        base = by_method.get(BASELINE, [])
        base_gap = median_or_none([r.gap_s for r in base])
        base_wall = statistics.median([r.wall_s for r in base]) if base else None
        for key in METHODS:
            rs = by_method.get(key)
            if not rs:
                continue
            gap = median_or_none([r.gap_s for r in rs])
            wall = statistics.median([r.wall_s for r in rs])
            rows.append({
                "bridges": bridges, "flows": flows, "method": key,
                "label": METHODS[key].label, "runs": len(rs),
                "gap_ms": None if gap is None else gap * 1000,
                "gap_ms_min": min((r.gap_s for r in rs if r.gap_s is not None),
                                  default=math.nan) * 1000,
                "gap_ms_max": max((r.gap_s for r in rs if r.gap_s is not None),
                                  default=math.nan) * 1000,
                "wall_s": wall,
                "gap_ratio": (gap / base_gap) if gap and base_gap else None,
                "wall_ratio": (wall / base_wall) if base_wall else None,
                "lost_flows_max": max(r.lost for r in rs),
                "unrecovered": sum(r.gap_s is None for r in rs),
                "failed": sum(r.exit_code != 0 for r in rs),
                "not_restarted": sum(not r.restarted for r in rs),
                "peak_rss_mib": max((r.peak_rss_mib for r in rs if r.peak_rss_mib), default=None),
            })
    return rows


def print_table(rows: Sequence[dict[str, Any]], out: Any = sys.stdout) -> None:
    print("\n| bridges | flows | method | gap ms | (min-max) | wall s | gap ratio | wall ratio "
          "| flows lost | runs | peak RSS |", file=out)
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|", file=out)
    for r in rows:
        gap = "never back" if r["gap_ms"] is None else f"{r['gap_ms']:.0f}"
        rng = f"{r['gap_ms_min']:.0f}-{r['gap_ms_max']:.0f}"

        def ratio(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}"

        lost = str(r["lost_flows_max"]) if r["lost_flows_max"] else "0"
        notes = []
        if r["failed"]:
            notes.append(f"{r['failed']} failed")
        if r["unrecovered"]:
            notes.append(f"{r['unrecovered']} never back")
        if r["not_restarted"]:
            notes.append(f"{r['not_restarted']} not restarted")
        runs = f"{r['runs']}" + (f" ({', '.join(notes)})" if notes else "")
        rss = r.get("peak_rss_mib")
        print(f"| {r['bridges']} | {r['flows']:,} | {r['label']} | {gap} | {rng} | "
              f"{r['wall_s']:.2f} | {ratio(r['gap_ratio'])} | {ratio(r['wall_ratio'])} | "
              f"{lost} | {runs} | {'' if rss is None else f'{rss:.0f} MiB'} |", file=out)


def parse_list(text: str) -> list[int]:
    return [int(s.replace("_", "")) for s in text.split(",") if s.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=env("GAP_SIZES"),
                   help="total flows per cell, comma-separated "
                   f"(default {','.join(map(str, DEFAULT_SIZES))})")
    p.add_argument("--bridges", default=env("GAP_BRIDGES"),
                   help="bridge counts, comma-separated "
                   f"(default {','.join(map(str, DEFAULT_BRIDGES))})")
    p.add_argument("--full", action="store_true", default=bool(env("GAP_FULL")),
                   help=f"the whole matrix: {FULL_SIZES} x {FULL_BRIDGES} flows x bridges")
    p.add_argument("--repeat", type=int, default=int(env("GAP_REPEAT", "5")),
                   help="runs of each method per cell (default 5)")
    p.add_argument("--methods", default=env("GAP_METHODS", ",".join(DEFAULT_METHODS)),
                   help=f"comma-separated, or 'all' (known: {', '.join(METHODS)})")
    p.add_argument("--interval", type=float, default=0.001, help="ping interval (s)")
    p.add_argument("--with-meter", action="store_true",
                   help="keep a meter on the probe path (the stock scripts do not save "
                   "meters: they then lose the probe bridge's flows)")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                   help="profile ovs-service restart at 4x25,000 and 1x100,000 flows")
    p.add_argument("--profile-only", action="store_true",
                   help="only the profile, no matrix")
    p.add_argument("--profile-repeat", type=int, default=3)
    p.add_argument("--profile-cells", default=",".join(f"{b}x{n // b}" for n, b in PROFILE_CELLS),
                   help="BRIDGESxFLOWS_PER_BRIDGE, comma-separated (default %(default)s)")
    p.add_argument("--json", type=Path, default=OUT / "gap.json")
    p.add_argument("--png", type=Path, default=OUT / "gap.png")
    p.add_argument("--inner-profile", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def cells_of(args: argparse.Namespace) -> list[tuple[int, int]]:
    if args.profile_only:
        return []
    sizes = parse_list(args.sizes) if args.sizes else list(
        FULL_SIZES if args.full else DEFAULT_SIZES)
    bridges = parse_list(args.bridges) if args.bridges else list(
        FULL_BRIDGES if args.full else DEFAULT_BRIDGES)
    skip = DEFAULT_SKIP if not (args.full or args.sizes or args.bridges) else frozenset()
    cells = [(n, b) for b in bridges for n in sizes if (n, b) not in skip and n >= 2 * b]
    return sorted(cells, key=lambda c: (c[1], c[0]))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.inner_profile:
        inner_profile()
        return 0
    if os.geteuid() != 0:
        raise SystemExit("the gap benchmark needs root (it boots systemd in a namespace)")
    from tests.harness.systemd_ns import SystemdNamespace

    keys = list(METHODS) if args.methods == "all" else [
        k.strip() for k in args.methods.split(",") if k.strip()]
    unknown = [k for k in keys if k not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method {unknown[0]!r} (known: {', '.join(METHODS)})")
    methods = [METHODS[k] for k in keys]
    cells = cells_of(args)
    profile_cells = [(int(n) * int(b), int(b)) for b, n in
                     (c.split("x") for c in args.profile_cells.split(",") if c)
                     ] if args.profile or args.profile_only else []
    info = machine()
    info["code"] = code_version()
    began = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - began:7.1f}s] {text}", flush=True)

    log(f"machine: {info['cpu']}, {info['cores']} cores, kernel {info['kernel']}, "
        f"{info['ovs']}; ovs-service at {info['code']}")
    log(f"cells (flows x bridges): {', '.join(f'{n:,}x{b}' for n, b in cells) or '-'}; "
        f"methods: {', '.join(m.label for m in methods)}; {args.repeat} runs each")
    work = REPO / ".cache" / f"gap-bench-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    profiles: list[dict[str, Any]] = []
    doc: dict[str, Any] = {}

    def save() -> None:
        doc.update({
            "machine": info, "code_at_end": code_version(),
            "command": " ".join(sys.argv), "argv": argv and list(argv),
            "repeat": args.repeat, "interval_s": args.interval, "with_meter": args.with_meter,
            "methods": {m.key: {"label": m.label, "argv": list(m.argv), "units": m.units}
                        for m in methods},
            "baseline": BASELINE, "cells": cells,
            "seconds": time.monotonic() - began,
            "summary": summarize(runs), "runs": [asdict(r) for r in runs],
            "profile": [summarize_profile(c) for c in profiles],
            "profile_runs": profiles,
        })
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1, default=str))

    try:
        with SystemdNamespace() as ns:
            bed = Bed(ns, work, args.with_meter, log)
            try:
                todo = list(cells) + [c for c in profile_cells if c not in cells]
                for flows, bridges in sorted(todo, key=lambda c: (c[1], c[0])):
                    t = time.monotonic()
                    bed.build(flows, bridges)
                    log(f"{bridges} bridges x {flows:,} flows: tables built in "
                        f"{time.monotonic() - t:.1f}s")
                    if (flows, bridges) in cells:
                        for rnd, m in rounds(methods, args.repeat):
                            r = run_method(bed, m, flows, bridges, rnd, args.interval)
                            runs.append(r)
                            gap = "never back" if r.gap_s is None else f"{r.gap_s * 1000:.0f} ms"
                            log(f"  {m.label}: gap {gap}, wall {r.wall_s:.2f}s"
                                + (f", LOST {r.lost} flows" if r.lost else "")
                                + (f", exit {r.exit_code}" if r.exit_code else ""))
                        save()
                    if (flows, bridges) in profile_cells:
                        profiles.append(profile_cell(bed, flows, bridges, args.profile_repeat,
                                                     args.interval))
                        print_profile(summarize_profile(profiles[-1]))
                        save()
            finally:
                bed.close()
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
        save()
    print(f"\nmachine: {info['cpu']}, {info['cores']} cores, kernel {info['kernel']}, "
          f"{info['ovs']}; ovs-service at {info['code']}")
    if doc["code_at_end"] != info["code"]:
        print(f"warning: the code changed during the run (now {doc['code_at_end']}): "
              "the runs measured a mix of versions")
    print(f"ping every {args.interval * 1000:g} ms; medians of {args.repeat} runs; ratios "
          f"against {METHODS[BASELINE].label} in the same run (below 1: better)")
    print_table(doc["summary"])
    for p in doc["profile"]:
        print_profile(p)
    print(f"\nwritten: {args.json} ({time.monotonic() - began:.0f}s in all)")
    if runs:
        from plot import plot_gaps

        try:
            plot_gaps(doc, args.png)
            print(f"written: {args.png}")
        except ImportError:
            print("no plot: matplotlib is missing (apt-get install -y python3-matplotlib)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
