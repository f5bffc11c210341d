"""One run of a method under the prober, the rounds that alternate the
methods, and the matrix of cells (flows x bridges) with the profile."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.gap.bed import LONG, Bed, BenchError, Log
from bench.gap.methods import FLOORS, RSS_FILE, UNIT_ORDER, Method
from bench.gap.probe import Prober
from bench.gap.profile import profile_cell
from bench.gap.report import print_profile, summarize_profile
from tests.harness.systemd_ns import INNER_PYTHON, SystemdNamespace

# The snapshot whose restore is timed on a running switch (inside: private /run).
COMMIT_DIR = "/run/ovs-service-bench-commit"
INNER_COMMIT = (INNER_PYTHON, "-m", "bench.gap", "--inner-commit", COMMIT_DIR)


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


@dataclass(frozen=True)
class Commit:
    """The restore of a cell's snapshot onto a running switch (bundles encoded
    beforehand): what a restart's restore costs without the restart. Onto
    the running daemon, emptied first (`fresh` false: after the first round,
    one that has already held the table once), or onto one the floor's bare
    restart has just started (`fresh`), as a restart's restore meets it."""
    flows: int
    bridges: int
    round: int
    seconds: float
    fresh: bool = False


@dataclass(frozen=True)
class Plan:
    methods: list[Method]
    cells: list[tuple[int, int]]  # (flows in all, bridges) measured with every method
    profile_cells: list[tuple[int, int]]
    repeat: int
    interval: float
    with_meter: bool
    profile_repeat: int
    profile_units: str = "ours"  # the unit set of the profiled ovs-service restart


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
    if method.argv[-2:] == ("restart", "--json") and proc.returncode == 0:
        with contextlib.suppress(ValueError, KeyError):
            run.steps = json.loads(proc.stdout)["steps"]
    if method.key == "ovs-service" and proc.returncode == 0:
        rss = bed.ns.run(["cat", RSS_FILE], check=False).stdout.split()
        run.peak_rss_mib = int(rss[-1]) / 1024 if rss and rss[-1].isdigit() else None
    if bed.damaged() or run.flow_restore_wait_left:
        if method.keeps_flows:
            bed.log(f"  {method.label} left the tables changed: {bed.damaged()}")
        if run.flow_restore_wait_left:
            bed.clear_flow_restore_wait()
        if bed.empty:
            bed.empty_tables()
        else:
            bed.load_tables(list(bed.damaged()))
    return run


def measure_commits(bed: Bed, flows: int, bridges: int, repeat: int,
                    floor_units: str | None = None) -> list[Commit]:
    """Save the cell's tables, then `repeat` times: empty every bridge (as a
    restarted one comes up) and time the restore of that snapshot; with
    `floor_units`, also time it right after that floor's bare restart of
    ovs-vswitchd (a fresh daemon). The tables are checked with ovs-ofctl
    after each."""
    if bed.empty:
        bed.load_tables()
    bed.run(["rm", "-rf", COMMIT_DIR])
    bed.run(["ovs-service", "save", "--to", COMMIT_DIR])
    out = []
    for rnd in range(repeat):
        bed.empty_tables()
        out.append(_timed_commit(bed, flows, bridges, rnd, fresh=False))
        if floor_units is not None:
            bed.restart_bare(floor_units)
            out.append(_timed_commit(bed, flows, bridges, rnd, fresh=True))
    bed.run(["rm", "-rf", COMMIT_DIR])
    return out


def _timed_commit(bed: Bed, flows: int, bridges: int, rnd: int, fresh: bool) -> Commit:
    proc = bed.run(INNER_COMMIT)
    result = json.loads(proc.stdout)
    bad = bed.damaged()
    if not result["ok"] or bad:
        raise BenchError(f"the timed restore failed: {result['errors']} {bad}")
    return Commit(flows, bridges, rnd, result["seconds"], fresh)


def rounds(methods: Sequence[Method], repeat: int) -> Iterator[tuple[int, Method]]:
    """Alternate the methods, grouped by unit set, in a back-and-forth order:
    each unit set is entered once per round, and no method always comes first."""
    ordered = sorted(methods, key=lambda m: UNIT_ORDER[m.units])
    for rnd in range(repeat):
        for m in (ordered if rnd % 2 == 0 else ordered[::-1]):
            yield rnd, m


def measure(plan: Plan, work: Path, log: Log, runs: list[Run], commits: list[Commit],
            profiles: list[dict[str, Any]], checkpoint: Callable[[], None]) -> None:
    """Boot the bed and measure every cell, smallest bridge count first; what is
    measured is appended to `runs`, `commits` (with the floor among the
    methods) and `profiles`, `checkpoint` after each cell."""
    with SystemdNamespace() as ns:
        bed = Bed(ns, work, plan.with_meter, log)
        try:
            todo = list(plan.cells) + [c for c in plan.profile_cells if c not in plan.cells]
            for flows, bridges in sorted(todo, key=lambda c: (c[1], c[0])):
                t = time.monotonic()
                bed.build(flows, bridges)
                log(f"{bridges} bridges x {flows:,} flows: tables built in "
                    f"{time.monotonic() - t:.1f}s")
                if (flows, bridges) in plan.cells:
                    for rnd, m in rounds(plan.methods, plan.repeat):
                        r = run_method(bed, m, flows, bridges, rnd, plan.interval)
                        runs.append(r)
                        gap = "never back" if r.gap_s is None else f"{r.gap_s * 1000:.0f} ms"
                        log(f"  {m.label}: gap {gap}, wall {r.wall_s:.2f}s"
                            + (f", LOST {r.lost} flows" if r.lost else "")
                            + (f", exit {r.exit_code}" if r.exit_code else ""))
                    floors = [m.units for m in plan.methods if m.key in FLOORS]
                    if floors:
                        cs = measure_commits(bed, flows, bridges, plan.repeat, floors[0])
                        commits += cs
                        for fresh, where in ((False, "a running switch"),
                                             (True, "a switch just restarted bare")):
                            log(f"  restore onto {where}: " + ", ".join(
                                f"{c.seconds * 1000:.0f} ms" for c in cs if c.fresh == fresh))
                    checkpoint()
                if (flows, bridges) in plan.profile_cells:
                    profiles.append(profile_cell(bed, flows, bridges, plan.profile_repeat,
                                                 plan.interval, plan.profile_units))
                    print_profile(summarize_profile(profiles[-1]))
                    checkpoint()
        finally:
            bed.close()
