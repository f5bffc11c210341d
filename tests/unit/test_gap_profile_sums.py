"""The gap benchmark's profile: how ovs_service's timings become per-bridge sums."""

from __future__ import annotations

from bench.gap.instrumented import ADDING, BEFORE, COMMIT, per_bridge
from bench.gap.report import RESTORE_SUMS
from ovs_service.log import Timing


def t(name: str, began: float, seconds: float, count: int = 0) -> Timing:
    return Timing(name, "br0", began, seconds, seconds / 2, count)


def test_waits_are_counted_by_bundle_phase_and_not_inside_a_hello() -> None:
    sums = per_bridge([
        t("openflow-connect", 1.0, 0.1),
        t("openflow-recv", 1.05, 0.01),  # the hello: connecting, not a wait
        t("flow-count", 1.2, 0.01, 1),
        t("openflow-recv", 1.21, 0.002),
        t("bundle-open", 1.3, 0.05),
        t("openflow-send-wait", 1.4, 0.03),
        t("bundle-commit", 1.5, 0.2),
        t("openflow-send-wait", 1.5, 0.01),
        t("openflow-recv", 1.55, 0.1),
        t("restore-bridge", 0.9, 1.0, 1002),
    ], began=0.5)["br0"]
    assert sums["connect_s"] == 0.1
    assert sums["recv_wait_s"] == sums[f"recv_wait_s {BEFORE}"] + sums[f"recv_wait_s {COMMIT}"]
    assert round(sums[f"recv_wait_s {BEFORE}"], 6) == 0.002
    assert sums[f"send_wait_s {ADDING}"] == 0.03 and sums[f"send_wait_s {COMMIT}"] == 0.01
    assert round(sums["bundle_add_phase_s"], 6) == 0.15 and sums["bundle_commit_s"] == 0.2
    assert sums["live flows seen before restoring"] == 1
    assert (sums["messages"], sums["wall_s"], sums["thread_cpu_s"]) == (1002, 1.0, 0.5)
    assert round(sums["began_s"], 6) == 0.4 and round(sums["ended_s"], 6) == 1.4
    assert {key for key, _ in RESTORE_SUMS} <= set(sums)


def test_overhead_sets_the_package_default_against_its_own_floor() -> None:
    """The package default's methods against the package floor when it was
    measured, ovs-service's units against theirs; the floor alone otherwise."""
    from bench.gap.report import overheads
    from bench.gap.runs import Commit

    def row(method: str, gap: float, flows: int = 1000) -> dict[str, object]:
        return {"bridges": 1, "flows": flows, "method": method, "gap_ms": gap}

    rows = [row("floor", 200), row("package-floor", 150), row("ovs-service", 260),
            row("package-ovs-service", 220), row("floor", 300, 10),
            row("package-ovs-service", 330, 10)]
    commits = [Commit(1000, 1, 0, 0.05), Commit(10, 1, 0, 0.03)]
    got = {(r["flows"], r["method"]): (r["floor"], round(r["overhead"], 3))
           for r in overheads(rows, commits)}
    assert got[(1000, "ovs-service")] == ("floor", 0.04)  # 260 / (200 + 50)
    assert got[(1000, "package-ovs-service")] == ("package-floor", 0.1)  # 220 / (150 + 50)
    assert got[(10, "package-ovs-service")] == ("floor", 0.0)  # 330 / (300 + 30)


def test_overhead_is_also_set_against_the_restore_onto_a_fresh_daemon() -> None:
    """Restores timed onto a daemon just restarted (`fresh`) make a second
    overhead, over the floor plus their median; the first stays over the
    restores onto a daemon that has run."""
    from bench.gap.report import overheads
    from bench.gap.runs import Commit

    rows = [{"bridges": 1, "flows": 1000, "method": "floor", "gap_ms": 200},
            {"bridges": 1, "flows": 1000, "method": "ovs-service", "gap_ms": 330,
             "restore_step_ms": 90}]
    commits = [Commit(1000, 1, 0, 0.05), Commit(1000, 1, 1, 0.07),
               Commit(1000, 1, 0, 0.12, fresh=True), Commit(1000, 1, 1, 0.14, fresh=True)]
    (got,) = overheads(rows, commits)
    assert (got["restore_ms"], got["fresh_restore_ms"]) == (60, 130)
    assert round(got["overhead"], 3) == 0.269  # 330 / (200 + 60)
    assert round(got["fresh_overhead"], 3) == 0.0  # 330 / (200 + 130)
    assert got["restore_step_ms"] == 90


def test_paired_overhead_sets_each_round_against_that_rounds_floor() -> None:
    """A slow round (floor and restart both slow) does not tip the paired
    figure: each round's gap is set against that round's floor."""
    from bench.gap.report import overheads, summarize
    from bench.gap.runs import Commit, Run

    def run(method: str, rnd: int, gap_s: float) -> Run:
        return Run(method, 1000, 1, rnd, gap_s, wall_s=1.0)

    runs = [run("floor", 0, 0.2), run("ovs-service", 0, 0.22),
            run("floor", 1, 0.4), run("ovs-service", 1, 0.44),
            run("floor", 2, 0.2), run("ovs-service", 2, 0.44)]
    (got,) = overheads(summarize(runs), [Commit(1000, 1, 0, 0.0)], runs)
    assert round(got["overhead"], 3) == 1.2  # median 440 over median floor 200 + 0
    assert round(got["paired_overhead"], 3) == 0.1  # 0.1, 0.1, 1.2: median 0.1


def test_paired_overhead_ranks_a_run_that_never_recovered_as_infinite() -> None:
    """A round whose restart never recovered counts against the method, as in
    the plain median; rounds without a floor are not paired, and too few
    paired rounds give no figure."""
    from bench.gap.report import overheads, summarize
    from bench.gap.runs import Commit, Run

    def run(method: str, rnd: int, gap_s: float | None) -> Run:
        return Run(method, 1000, 1, rnd, gap_s, wall_s=1.0)

    floors = [run("floor", i, 0.2) for i in range(5)]
    gaps = [0.22, 0.22, 0.3, 0.3, None]
    runs = floors + [run("ovs-service", i, g) for i, g in enumerate(gaps)]
    (got,) = overheads(summarize(runs), [Commit(1000, 1, 0, 0.0)], runs)
    assert round(got["paired_overhead"], 3) == 0.5  # 0.1, 0.1, 0.5, 0.5, inf

    one_floor = floors[:1] + [run("ovs-service", i, 0.22) for i in range(3)]
    (got,) = overheads(summarize(one_floor), [Commit(1000, 1, 0, 0.0)], one_floor)
    assert got["paired_overhead"] is None  # 1 round of 3 paired


def test_a_method_without_its_own_floor_is_set_against_the_other() -> None:
    from bench.gap.report import overheads
    from bench.gap.runs import Commit

    rows = [{"bridges": 1, "flows": 1000, "method": "package-floor", "gap_ms": 200},
            {"bridges": 1, "flows": 1000, "method": "ovs-service", "gap_ms": 220}]
    (got,) = overheads(rows, [Commit(1000, 1, 0, 0.0)])
    assert (got["floor"], round(got["overhead"], 3)) == ("package-floor", 0.1)


def test_summary_gives_the_median_restore_step_in_milliseconds() -> None:
    from bench.gap.report import summarize
    from bench.gap.runs import Run

    runs = [Run("ovs-service", 1000, 1, i, 0.3, wall_s=1.0,
                steps=[{"name": "save", "seconds": 0.5}, {"name": "restore", "seconds": s}])
            for i, s in enumerate((0.004, 0.006, 0.009))]
    runs.append(Run("floor", 1000, 1, 0, 0.2, wall_s=1.0))
    got = {r["method"]: r["restore_step_ms"] for r in summarize(runs)}
    assert got == {"ovs-service": 6.0, "floor": None}
