"""What the gap benchmark prints and writes: medians and ratios per cell, the
profile's figures and timelines, the JSON document and the plot."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from bench.gap.instrumented import ADDING
from bench.gap.methods import BASELINE, FLOORS, METHODS

if TYPE_CHECKING:
    from bench.gap.runs import Commit, Run

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "bench" / "out"


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


def describe_machine(info: dict[str, Any]) -> str:
    return (f"{info['cpu']}, {info['cores']} cores, kernel {info['kernel']}, "
            f"{info['ovs']}; ovs-service at {info['code']}")


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
                # The restore step of `ovs-service restart --json`, where it reported one.
                "restore_step_ms": _median_of_known([_step_ms(r, "restore") for r in rs]),
            })
    return rows


def _median_of_known(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _step_ms(run: Run, name: str) -> float | None:
    return next((s["seconds"] * 1000 for s in run.steps if s.get("name") == name), None)


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def print_table(rows: Sequence[dict[str, Any]], out: TextIO = sys.stdout) -> None:
    print("\n| bridges | flows | method | gap ms | (min-max) | wall s | gap ratio | wall ratio "
          "| flows lost | runs | peak RSS |", file=out)
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|", file=out)
    for r in rows:
        gap = "never back" if r["gap_ms"] is None else f"{r['gap_ms']:.0f}"
        rng = f"{r['gap_ms_min']:.0f}-{r['gap_ms_max']:.0f}"
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
              f"{r['wall_s']:.2f} | {_ratio(r['gap_ratio'])} | {_ratio(r['wall_ratio'])} | "
              f"{lost} | {runs} | {'' if rss is None else f'{rss:.0f} MiB'} |", file=out)


# -- overhead over the floor -------------------------------------------------------------

# The methods that save and restore, set against the floor plus the restore alone:
# each against the floor of its own unit set when it was measured.
OVER_FLOOR = ("ovs-service", "package-ovs-service", "systemctl-hooks", "package-systemctl")
FLOOR_OF = {"package-ovs-service": "package-floor", "package-systemctl": "package-floor"}


def overheads(rows: Sequence[dict[str, Any]], commits: Sequence[Commit],
              runs: Sequence[Run] = ()) -> list[dict[str, Any]]:
    """Per cell: the floor's median gap, the median restore of the same snapshot
    onto a running switch, and each method's gap over their sum (0.15: 15% more);
    where it was measured, also over the floor plus the median restore onto a
    switch just restarted bare (`fresh_*`). With `runs`, also `paired`: the
    median over the rounds of each round's gap over the same round's floor
    (the two measured a few seconds apart, so a slow phase of the machine
    weighs on both) plus the median restore (see `_paired`).

    Each method is set against its own unit set's floor; where that was not
    measured, against the other one (the row names which)."""
    gaps = {(r["bridges"], r["flows"], r["method"]): r["gap_ms"] for r in rows}
    by_round = {(r.bridges, r.flows, r.method, r.round): r.gap_s for r in runs}
    step = {(r["bridges"], r["flows"], r["method"]): r.get("restore_step_ms") for r in rows}
    restores: dict[tuple[int, int], list[float]] = {}
    fresh: dict[tuple[int, int], list[float]] = {}
    for c in commits:
        (fresh if c.fresh else restores).setdefault((c.bridges, c.flows), []).append(
            c.seconds * 1000)
    out = []
    for (bridges, flows), values in sorted(restores.items()):
        commit = float(statistics.median(values))
        fresh_commit = _median_of_known(fresh.get((bridges, flows), []))
        for key in OVER_FLOOR:
            gap = gaps.get((bridges, flows, key))
            own = FLOOR_OF.get(key, "floor")
            floor_key = next((f for f in (own, *FLOORS) if (bridges, flows, f) in gaps), own)
            floor = gaps.get((bridges, flows, floor_key))
            if gap is None or floor is None:
                continue
            out.append({"bridges": bridges, "flows": flows, "method": key,
                        "label": METHODS[key].label, "gap_ms": gap, "floor_ms": floor,
                        "floor": floor_key, "restore_ms": commit,
                        "overhead": gap / (floor + commit) - 1,
                        "fresh_restore_ms": fresh_commit,
                        "restore_step_ms": step.get((bridges, flows, key)),
                        "fresh_overhead": (None if fresh_commit is None
                                           else gap / (floor + fresh_commit) - 1),
                        "paired_overhead": _paired(by_round, (bridges, flows), key, floor_key,
                                                   commit)})
    return out


def _paired(by_round: dict[tuple[int, int, str, int], float | None], cell: tuple[int, int],
            key: str, floor_key: str, commit_ms: float) -> float | None:
    """The median of the method's per-round overheads. A round whose run
    never recovered ranks as infinite (as in `median_or_none`); a round
    without a recovered floor cannot be paired. None unless over half the
    method's rounds are paired and the median is finite."""
    rounds = 0
    ratios = []
    for (bridges, flows, method, rnd), gap in by_round.items():
        if (bridges, flows) != cell or method != key:
            continue
        rounds += 1
        floor = by_round.get((bridges, flows, floor_key, rnd))
        if floor:
            ratios.append(math.inf if gap is None else gap * 1000 / (floor * 1000 + commit_ms) - 1)
    if not ratios or len(ratios) * 2 <= rounds:
        return None
    middle = float(statistics.median(ratios))
    return middle if math.isfinite(middle) else None


def print_overheads(rows: Sequence[dict[str, Any]], out: TextIO = sys.stdout) -> None:
    if not rows:
        return
    print("\nOverhead over the floor (bare ovs-vswitchd restart, empty tables; the "
          "package default's own where measured) plus the restore of the same snapshot "
          "onto a running switch (medians):", file=out)
    print("(fresh: the restore onto a daemon the floor's bare restart has just started, "
          "as a restart's restore meets it)", file=out)
    print("\n| bridges | flows | method | gap ms | floor | floor ms | restore ms | overhead "
          "| paired by round | fresh restore ms | overhead (fresh) | its restore step ms |",
          file=out)
    print("|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|", file=out)
    for r in rows:
        fresh_ms, fresh_over = r.get("fresh_restore_ms"), r.get("fresh_overhead")
        print(f"| {r['bridges']} | {r['flows']:,} | {r['label']} | {r['gap_ms']:.0f} | "
              f"{r.get('floor', 'floor')} | {r['floor_ms']:.0f} | {r['restore_ms']:.0f} | "
              f"{r['overhead'] * 100:+.0f}% | {_pct(r.get('paired_overhead'))} | "
              f"{_whole_ms(fresh_ms)} | {_pct(fresh_over)} | "
              f"{_whole_ms(r.get('restore_step_ms'))} |", file=out)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.0f}%"


def _whole_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


# -- the profile -----------------------------------------------------------------------

# Per-bridge sums of the instrumented restart (see instrumented.per_bridge).
RESTORE_SUMS = (
    ("thread_cpu_s", "Python CPU in restore threads"),
    ("bundle_add_phase_s", "bundle: adding messages (send)"),
    (f"send_wait_s {ADDING}", "  of which waiting to send"),
    ("bundle_commit_s", "bundle: commit (switch applies it)"),
    ("recv_wait_s", "blocked in recv (all replies)"),
    ("connect_s", "connect + hello"),
)


def _median_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ranked = sorted(runs, key=lambda r: r["gap"]["seconds"] or math.inf)
    return ranked[len(ranked) // 2]


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize_profile(cell: dict[str, Any]) -> dict[str, Any]:
    """Medians (seconds) over the runs of one profiled cell, and the timelines
    of the runs with the median gap."""
    runs = cell["runs"]
    steps: dict[str, list[float]] = {}
    for r in runs:
        for s in r["steps"]:
            steps.setdefault(s["name"], []).append(s["seconds"])
    restore: dict[str, list[float]] = {}
    for r in runs:
        b = r["bridges"]
        restore.setdefault("restore_bridge wall, longest bridge", []).append(
            max((v.get("wall_s", 0.0) for v in b.values()), default=0.0))
        for key, label in RESTORE_SUMS:
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
        "units": cell.get("units", "ours"),
        "gap": _med(gaps), "stock_gap": _med(stock_gaps),
        "wall": _med([r["wall_s"] for r in runs]),
        "stock_wall": _med([r["wall_s"] for r in cell["stock_runs"]]),
        "steps": {k: _med(v) for k, v in steps.items()},
        "restore": {k: _med(v) for k, v in restore.items()},
        "alone": cell["alone_s"],
        "ovsdb_server_restart_alone": cell["ovsdb_server_restart_alone"],
        "vswitchd_exit": cell.get("vswitchd_exit_s", []),
        "timeline": _median_run(runs)["timeline"],
        "stock_timeline": _median_run(cell["stock_runs"])["timeline"],
    }


def _print_timeline(events: Sequence[Sequence[Any]], out: TextIO) -> None:
    start = next((t for label, t in events if label.startswith("forwarding stops")), 0.0)
    last = start
    for label, t in events:
        inside = "" if t < start else f"+{(t - last) * 1000:7.1f}"
        print(f"    {(t - start) * 1000:8.1f} ms {inside:>9}  {label}", file=out)
        if t >= start:
            last = t


def _ms(v: float | None) -> str:
    return "never" if v is None else f"{v * 1000:.0f} ms"


def print_profile(p: dict[str, Any], out: TextIO = sys.stdout) -> None:
    units = {"ours": "", "package": " (package default)"}.get(p.get("units", "ours"), "")
    print(f"\nProfile, {p['bridges']} bridges x {p['flows'] // p['bridges']:,} flows "
          f"({p['runs']} runs each, medians): ovs-service restart{units} gap {_ms(p['gap'])} "
          f"(wall {p['wall']:.2f} s), stock ovs-ctl restart gap {_ms(p['stock_gap'])} "
          f"(wall {p['stock_wall']:.2f} s)", file=out)
    for title, figures in (("steps of ovs-service restart (--json):", p["steps"]),
                           ("restore step, inside (summed over the bridges' threads):",
                            p["restore"]),
                           ("run alone (start-up costs):", p["alone"])):
        print(f"  {title}", file=out)
        for k, v in figures.items():
            print(f"    {k:<56} {v * 1000:9.1f} ms", file=out)
    for i, e in enumerate(p.get("vswitchd_exit", [])):
        print(f"    {'ovs-appctl exit: ovs-vswitchd gone after (run ' + str(i + 1) + ')':<56} "
              f"{e['gone_after_s'] * 1000:9.1f} ms", file=out)
    db = p["ovsdb_server_restart_alone"]
    print(f"    {'systemctl restart ovsdb-server: forwarding gap':<56} "
          f"{_ms(db['gap_s']):>12} (wall {db['wall_s'] * 1000:.0f} ms)", file=out)
    print("  timeline of ovs-service restart (median run; ms from the gap's start, "
          "+ since the previous event):", file=out)
    _print_timeline(p["timeline"], out)
    print("  timeline of the stock ovs-ctl restart (median run):", file=out)
    _print_timeline(p["stock_timeline"], out)


# -- out ---------------------------------------------------------------------------------

def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str))


def plot(doc: dict[str, Any], png: Path) -> None:
    """The plot of median gaps, or a note that matplotlib is missing."""
    from bench.plot import plot_gaps

    try:
        plot_gaps(doc, png)
        print(f"written: {png}")
    except ImportError:
        print("no plot: matplotlib is missing (apt-get install -y python3-matplotlib)")
