"""Where the forwarding gap of `ovs-service restart` goes, next to the stock
script's: timelines of instrumented runs, and the start-up costs around them.

The instrumented runs are `python3 -m bench.gap --inner-profile` inside the
namespace (see `instrumented`): `ovs-service restart` with ovs_service's
own timings of its steps and of the restore's parts.
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from bench.gap.bed import LONG, Bed, BenchError
from bench.gap.methods import BASELINE, METHODS, OVS_CTL
from bench.gap.probe import Prober
from tests.harness.systemd_ns import INNER_PATH, INNER_PYTHON

INSTRUMENTED_RESTART = (INNER_PYTHON, "-m", "bench.gap", "--inner-profile")
HOOKS = ("stoppost", "prestart", "poststart")
ALONE_RUNS = 5  # runs of each command timed alone


def profile_cell(bed: Bed, flows: int, bridges: int, repeat: int, interval: float,
                 units: str = "ours") -> dict[str, Any]:
    """Where the forwarding gap of `ovs-service restart` goes, next to the stock script's.

    - instrumented `ovs-service restart` runs (see `instrumented`) with the
      prober, the journal of both units and the times systemd recorded for
      ovs-vswitchd.service's start commands: one timeline per run;
    - each hook run alone, Python's and nsenter's own start-up;
    - `systemctl restart ovsdb-server` alone (ovs-vswitchd keeps running);
    - the stock `ovs-ctl restart` with a time stamp on each line it prints
      (each is printed when its action is done).
    """
    bed.use(units)
    ours = []
    for _ in range(repeat):
        cursor = bed.ns.run(["journalctl", "-n", "0", "--show-cursor", "--quiet"],
                            check=False).stdout.strip().removeprefix("-- cursor: ")
        with Prober(bed, interval) as probe:
            started = time.time()
            proc = bed.ns.run(list(INSTRUMENTED_RESTART), check=False, timeout=LONG)
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
    for hook in HOOKS:
        times = []
        for _ in range(ALONE_RUNS):
            t0 = time.monotonic()
            bed.ns.run(["ovs-service-hook", hook], check=False)
            times.append(time.monotonic() - t0)
        alone[f"ovs-service-hook {hook}"] = statistics.median(times)
    for name, argv in ((f"{INNER_PYTHON} -c pass", [INNER_PYTHON, "-c", "pass"]),
                       ("true (nsenter's own cost)", ["true"])):
        t0 = time.monotonic()
        for _ in range(ALONE_RUNS):
            bed.ns.run(argv)
        alone[name] = (time.monotonic() - t0) / ALONE_RUNS
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
    return {"flows": flows, "bridges": bridges, "units": units, "runs": ours,
            "stock_runs": stock,
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
                            env={"PATH": INNER_PATH, "LANG": "C.UTF-8"})
    assert proc.stdout is not None
    lines = [(time.time() - t0, line.strip()) for line in proc.stdout]
    if proc.wait() != 0:
        raise BenchError(f"{' '.join(argv)} failed: {lines[-5:]}")
    return lines


# What the stock ovs-ctl restart prints, each line once its action is done.
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
