"""Save and restore of N flows: ovs-service against the stock `ovs-save`.

On one private switch (netdev datapath), for each table size spread over
B bridges, alternating the two tools and repeating each: the stock
`ovs-save save-flows BRIDGE...` (which prints a restore script) and that
script, against `ovs-service save` and `ovs-service restore`. Prints
medians, the ratios (ovs-service / stock; below 1 is faster), the time per
million flows (linear scaling keeps it flat) and ovs-service's peak
resident memory.

    python3 -m bench.flows_bench [--sizes 10000,100000,1000000] [--bridges 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.harness import REPO
from tests.harness.ovsbed import OvsBed

OVS_SAVE = "/usr/share/openvswitch/scripts/ovs-save"
PROTOCOLS = ("OpenFlow10", "OpenFlow13", "OpenFlow14", "OpenFlow15")


def timed(argv: list[str], env: dict[str, str],
          stdout: int | None = None) -> tuple[float, int, float]:
    """Run argv; return its wall time, its peak RSS in KiB (that process tree's
    largest) and its CPU time (user + system, the tree's)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=stdout or subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - start
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[:4]} failed: {stderr.strip()}")
    return elapsed, usage.ru_maxrss, usage.ru_utime + usage.ru_stime


def build_table(bed: OvsBed, bridges: list[str], count: int, work: Path) -> None:
    """`count` flows in tables 0-3, spread evenly over the bridges."""
    for b, bridge in enumerate(bridges):
        bed.ofctl("del-flows", bridge)
        path = work / "flows.txt"
        with open(path, "w") as f:
            for i in range(b, count, len(bridges)):
                table = i % 4
                f.write(f"table={table},priority={i % 1000 + 1},ip,nw_dst=10.{i >> 16 & 255}."
                        f"{i >> 8 & 255}.{i & 255},tcp,tp_dst={i % 60000 + 1},"
                        f"actions=mod_nw_tos:{(i % 63) * 4},resubmit(,{table + 1})\n")
        bed.ofctl("-O", "OpenFlow15", "add-flows", bridge, str(path))


def flow_count(bed: OvsBed, bridges: list[str]) -> int:
    return sum(int(bed.ofctl("-O", "OpenFlow15", "dump-aggregate", bridge)
                   .split("flow_count=")[1].split()[0]) for bridge in bridges)


def wipe(bed: OvsBed, bridges: list[str]) -> None:
    for bridge in bridges:
        bed.ofctl("-O", "OpenFlow15", "del-flows", bridge)


def run_size(bed: OvsBed, bridges: list[str], count: int, repeat: int,
             work: Path) -> dict[str, Any]:
    env = {**os.environ, **bed.env, "OVS_SERVICE_STATE_DIR": str(work / "state"),
           "PYTHONPATH": str(REPO)}
    build_table(bed, bridges, count, work)
    total = flow_count(bed, bridges)
    times: dict[str, list[float]] = {k: [] for k in ("stock_save", "stock_restore",
                                                      "ours_save", "ours_restore")}
    peak_kib = 0
    cpu_s: dict[str, list[float]] = {"save": [], "restore": []}  # ovs-service's own
    for i in range(repeat):
        # Stock: the save prints a script that restores from files it wrote.
        script = work / f"restore-{i}.sh"
        with open(script, "w") as out:
            t, _, _ = timed([OVS_SAVE, "save-flows", *bridges], env, stdout=out.fileno())
        times["stock_save"].append(t)
        wipe(bed, bridges)
        t, _, _ = timed(["sh", str(script)], env)
        times["stock_restore"].append(t)
        assert flow_count(bed, bridges) == total, "stock restore lost flows"

        snap = work / f"snap-{i}"
        t, rss, cpu = timed([sys.executable, "-m", "ovs_service", "save", "--to", str(snap)],
                            env)
        times["ours_save"].append(t)
        cpu_s["save"].append(cpu)
        peak_kib = max(peak_kib, rss)
        wipe(bed, bridges)
        t, rss, cpu = timed([sys.executable, "-m", "ovs_service", "restore", "--from",
                             str(snap)], env)
        times["ours_restore"].append(t)
        cpu_s["restore"].append(cpu)
        peak_kib = max(peak_kib, rss)
        assert flow_count(bed, bridges) == total, "ovs-service restore lost flows"
        subprocess.run(["rm", "-rf", str(snap)], check=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "flows": total,
        "bridges": len(bridges),
        "median_s": med,
        "s_per_million": {k: v * 1e6 / total for k, v in med.items()},
        "ours_cpu_s_per_million": {k: statistics.median(v) * 1e6 / total
                                   for k, v in cpu_s.items()},
        "ratio_save": med["ours_save"] / med["stock_save"],
        "ratio_restore": med["ours_restore"] / med["stock_restore"],
        "peak_rss_mib": peak_kib / 1024,
        "runs": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=os.environ.get("BENCH_SIZES", "10000,100000,1000000"))
    parser.add_argument("--bridges", type=int, default=int(os.environ.get("BENCH_BRIDGES", "1")))
    parser.add_argument("--repeat", type=int, default=int(os.environ.get("BENCH_REPEAT", "3")))
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "out" / "flows.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results = []
    bridges = [f"bench{b}" for b in range(args.bridges)]
    with tempfile.TemporaryDirectory(prefix="ovs-bench-", dir="/var/tmp") as tmp, OvsBed() as bed:
        for bridge in bridges:
            bed.add_bridge(bridge, protocols=PROTOCOLS)
        for count in sizes:
            results.append(run_size(bed, bridges, count, args.repeat, Path(tmp)))
            r = results[-1]
            print(f"{r['flows']:>9} flows x {len(bridges)} bridges: save "
                  f"{r['median_s']['ours_save']:.2f}s vs {r['median_s']['stock_save']:.2f}s "
                  f"(ratio {r['ratio_save']:.2f}), restore {r['median_s']['ours_restore']:.2f}s "
                  f"vs {r['median_s']['stock_restore']:.2f}s (ratio {r['ratio_restore']:.2f}), "
                  f"peak RSS {r['peak_rss_mib']:.1f} MiB", flush=True)
    print("\n| flows | bridges | ovs-service save | ovs-save | ratio | ovs-service restore "
          "| stock script | ratio | save, restore per 10^6 flows (CPU of ovs-service) "
          "| peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        m, per, cpu = r["median_s"], r["s_per_million"], r["ours_cpu_s_per_million"]
        print(f"| {r['flows']:,} | {r['bridges']} | {m['ours_save']:.2f} s | "
              f"{m['stock_save']:.2f} s | {r['ratio_save']:.2f} | {m['ours_restore']:.2f} s | "
              f"{m['stock_restore']:.2f} s | {r['ratio_restore']:.2f} | "
              f"{per['ours_save']:.1f} s, {per['ours_restore']:.1f} s "
              f"({cpu['save']:.1f} s, {cpu['restore']:.1f} s) | "
              f"{r['peak_rss_mib']:.0f} MiB |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
