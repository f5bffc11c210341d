"""The gap benchmark's command line: `python3 -m bench.gap --help`.

Options can also come from the environment: GAP_SIZES, GAP_BRIDGES,
GAP_REPEAT, GAP_METHODS, GAP_FULL.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import bench.gap
from bench.gap import report
from bench.gap.methods import BASELINE, DEFAULT_METHODS, METHODS

DEFAULT_SIZES = (1_000, 10_000, 100_000)
DEFAULT_BRIDGES = (1, 4, 16)
FULL_SIZES = (100, 1_000, 10_000, 100_000, 1_000_000)
FULL_BRIDGES = (1, 4, 16)
# Cells left out of the default matrix (they take longest and add little).
DEFAULT_SKIP = frozenset({(10_000, 16)})
PROFILE_CELLS = ((25_000 * 4, 4), (100_000, 1))


def parse_list(text: str) -> list[int]:
    return [int(s.replace("_", "")) for s in text.split(",") if s.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    env = os.environ.get
    doc = bench.gap.__doc__ or ""
    p = argparse.ArgumentParser(prog="python3 -m bench.gap", description=doc.splitlines()[0])
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
    p.add_argument("--profile-units", choices=("ours", "package"), default="ours",
                   help="the units profiled: ovs-service's own, or Debian's with the "
                   "package's drop-ins (default %(default)s)")
    p.add_argument("--profile-cells", default=",".join(f"{b}x{n // b}" for n, b in PROFILE_CELLS),
                   help="BRIDGESxFLOWS_PER_BRIDGE, comma-separated (default %(default)s)")
    p.add_argument("--json", type=Path, default=report.OUT / "gap.json")
    p.add_argument("--png", type=Path, default=report.OUT / "gap.png")
    p.add_argument("--inner-profile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--inner-commit", type=Path, help=argparse.SUPPRESS)
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


def profile_cells_of(args: argparse.Namespace) -> list[tuple[int, int]]:
    if not (args.profile or args.profile_only):
        return []
    return [(int(n) * int(b), int(b)) for b, n in
            (c.split("x") for c in args.profile_cells.split(",") if c)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.inner_profile:
        # Inside the namespace, timed from outside: only ovs_service is imported.
        from bench.gap.instrumented import instrumented_restart

        print(json.dumps(instrumented_restart()))
        return 0
    if args.inner_commit:
        from bench.gap.instrumented import instrumented_commit

        print(json.dumps(instrumented_commit(args.inner_commit)))
        return 0
    if os.geteuid() != 0:
        raise SystemExit("the gap benchmark needs root (it boots systemd in a namespace)")
    from bench.gap.runs import Commit, Plan, Run, measure  # the beds: tests.harness

    keys = list(METHODS) if args.methods == "all" else [
        k.strip() for k in args.methods.split(",") if k.strip()]
    unknown = [k for k in keys if k not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method {unknown[0]!r} (known: {', '.join(METHODS)})")
    plan = Plan(methods=[METHODS[k] for k in keys], cells=cells_of(args),
                profile_cells=profile_cells_of(args), repeat=args.repeat,
                interval=args.interval, with_meter=args.with_meter,
                profile_repeat=args.profile_repeat, profile_units=args.profile_units)
    info = report.machine()
    info["code"] = report.code_version()
    began = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - began:7.1f}s] {text}", flush=True)

    log(f"machine: {report.describe_machine(info)}")
    log(f"cells (flows x bridges): {', '.join(f'{n:,}x{b}' for n, b in plan.cells) or '-'}; "
        f"methods: {', '.join(m.label for m in plan.methods)}; {args.repeat} runs each")
    work = report.REPO / ".cache" / f"gap-bench-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    commits: list[Commit] = []
    profiles: list[dict[str, Any]] = []
    doc: dict[str, Any] = {}

    def save() -> None:
        doc.update({
            "machine": info, "code_at_end": report.code_version(),
            "command": " ".join(sys.argv), "argv": argv and list(argv),
            "repeat": args.repeat, "interval_s": args.interval, "with_meter": args.with_meter,
            "methods": {m.key: {"label": m.label, "argv": list(m.argv), "units": m.units}
                        for m in plan.methods},
            "baseline": BASELINE, "cells": plan.cells,
            "seconds": time.monotonic() - began,
            "summary": report.summarize(runs), "runs": [asdict(r) for r in runs],
            "commits": [asdict(c) for c in commits],
            "overhead": report.overheads(report.summarize(runs), commits, runs),
            "profile": [report.summarize_profile(c) for c in profiles],
            "profile_runs": profiles,
        })
        report.write_json(doc, args.json)

    try:
        measure(plan, work, log, runs, commits, profiles, save)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
        save()
    print(f"\nmachine: {report.describe_machine(info)}")
    if doc["code_at_end"] != info["code"]:
        print(f"warning: the code changed during the run (now {doc['code_at_end']}): "
              "the runs measured a mix of versions")
    print(f"ping every {args.interval * 1000:g} ms; medians of {args.repeat} runs; ratios "
          f"against {METHODS[BASELINE].label} in the same run (below 1: better)")
    report.print_table(doc["summary"])
    report.print_overheads(doc["overhead"])
    for p in doc["profile"]:
        report.print_profile(p)
    print(f"\nwritten: {args.json} ({time.monotonic() - began:.0f}s in all)")
    if runs:
        report.plot(doc, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
