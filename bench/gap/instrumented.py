"""Inside the namespace: `ovs-service restart`, timed from within.

What the CLI does (`transaction.restart`), with ovs_service's own timings
collected (`log.timings`: OpenFlow connections, waits on the sockets, the
bundles' phases, each bridge's restore, see `log.timed`) and the CPU time
of ovs-vswitchd (per thread) and of this process read when the restore
starts and ends (the transaction's `on_step`). Nothing of ovs_service is
replaced. Run as `python3 -m bench.gap --inner-profile`, which prints the
result as one JSON document; it imports little before it starts, since its
wall time is measured from outside.
"""

from __future__ import annotations

import os
import re
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ovs_service.log import StepRecord, Timing

VSWITCHD_PID = Path("/run/openvswitch/ovs-vswitchd.pid")
# The bundle phases a wait on the socket is counted in, by when it began.
BEFORE, ADDING, COMMIT, AFTER = ("before the bundle", "adding to the bundle", "commit",
                                 "after the commit")


def instrumented_restart() -> dict[str, Any]:
    # Imported here: the report reads this module's names without ovs_service.
    from ovs_service import log, transaction

    log.setup(False)
    timings: list[Timing] = []  # list.append is atomic: the restore's threads share it
    marks: list[tuple[str, float]] = []
    vswitchd: dict[str, dict[str, float]] = {}

    def on_step(record: StepRecord) -> None:
        marks.append((record.name, time.time()))
        if record.name == "start-ovs-vswitchd":
            vswitchd["at_restore_start"] = vswitchd_cpu()
            vswitchd["rusage_at_restore_start"] = {"self": process_cpu()}
        if record.name == "restore":
            vswitchd["at_restore_end"] = vswitchd_cpu()
            vswitchd["rusage_at_restore_end"] = {"self": process_cpu()}

    began = time.monotonic()
    t0 = time.time()
    with log.timings(timings.append):
        outcome = transaction.restart(on_step=on_step)
    steps = [{"name": s.name, "seconds": s.seconds} for s in outcome.steps]
    return {"ok": outcome.ok, "began": t0, "steps": steps,
            "marks": [(n, t - t0) for n, t in marks],
            "bridges": per_bridge(timings, began), "vswitchd": vswitchd}


def per_bridge(timings: Sequence[Timing], began: float) -> dict[str, dict[str, float]]:
    """Sums per bridge (seconds unless named otherwise) over the whole transaction.

    Waits on the socket inside a connection's hello count as connecting, not
    as sending or receiving; the rest are counted by bundle phase too.
    """
    out: dict[str, dict[str, float]] = {}

    def add(bridge: str, key: str, value: float) -> None:
        d = out.setdefault(bridge, {})
        d[key] = d.get(key, 0.0) + value

    ordered = sorted(timings, key=lambda t: t.began)
    connects: dict[str, list[Timing]] = {}
    bundles: dict[str, list[tuple[float, float, float]]] = {}  # open done, commit began, ended
    opened: dict[str, float] = {}
    for t in ordered:
        if t.name == "openflow-connect":
            connects.setdefault(t.scope, []).append(t)
            add(t.scope, "connect_s", t.seconds)
        elif t.name == "bundle-open":
            opened[t.scope] = t.began + t.seconds
        elif t.name == "bundle-commit":
            adds_began = opened.pop(t.scope, t.began)
            bundles.setdefault(t.scope, []).append((adds_began, t.began, t.began + t.seconds))
            add(t.scope, "bundle_add_phase_s", t.began - adds_began)
            add(t.scope, "bundle_commit_s", t.seconds)
        elif t.name == "flow-count":
            add(t.scope, "live flows seen before restoring", t.count)
        elif t.name == "table-diff":
            add("(all)", "diff against a live table: indexing the snapshot", t.seconds)
            add("(all)", "diff: its Python CPU", t.cpu_seconds)
            add("(all)", "diff: strict deletes sent", t.count)
        elif t.name == "restore-bridge":
            add(t.scope, "began_s", t.began - began)
            add(t.scope, "wall_s", t.seconds)
            add(t.scope, "thread_cpu_s", t.cpu_seconds)
            add(t.scope, "ended_s", t.began + t.seconds - began)
            add(t.scope, "messages", t.count)
    for t in ordered:
        if t.name not in ("openflow-recv", "openflow-send-wait") or any(
                c.began <= t.began <= c.began + c.seconds for c in connects.get(t.scope, ())):
            continue
        key = "send_wait_s" if t.name == "openflow-send-wait" else "recv_wait_s"
        add(t.scope, key, t.seconds)
        add(t.scope, f"{key} {_phase(t.began, bundles.get(t.scope, []))}", t.seconds)
    return out


def _phase(at: float, bundles: Sequence[tuple[float, float, float]]) -> str:
    phase = BEFORE
    for adds_began, commit_began, ended in bundles:
        if at < adds_began:
            break
        phase = ADDING if at < commit_began else COMMIT if at < ended else AFTER
    return phase


def vswitchd_cpu() -> dict[str, float]:
    """ovs-vswitchd's CPU time (s), summed over its threads of each kind
    (handler12, handler13 -> handler)."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        pid = int(VSWITCHD_PID.read_text())
        out: dict[str, float] = {}
        for task in Path(f"/proc/{pid}/task").iterdir():
            stat = (task / "stat").read_text()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            kind = re.sub(r"\d+$", "", comm)
            # utime and stime: fields 14 and 15 of proc_pid_stat(5), 12 and 13 after comm.
            out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
        return out
    except (OSError, ValueError):
        return {}


def process_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def instrumented_commit(path: Path) -> dict[str, Any]:
    """The restore a restart does in its window, onto a running switch whose
    bridges hold a fresh bridge's table: the same snapshot loaded, checked and
    its bundles encoded beforehand (as the transaction does before the stop),
    then only the restore of every bridge in parallel is timed."""
    from ovs_service import log, operations
    from ovs_service.stages import flows

    log.setup(False)
    snapshot, records = operations.prepare_pinned(path)
    bundles = operations.prepare_bundles(snapshot, records)
    t0 = time.monotonic()
    results = flows.restore(snapshot, records, bundles)
    seconds = time.monotonic() - t0
    return {"ok": all(r.ok for r in results), "seconds": seconds,
            "errors": [r.error for r in results if not r.ok]}
