"""The metrics file: node_exporter's text format, read back with a strict
reader that shares nothing with the writer, merged per operation, written
whole, and never a reason for an operation to fail."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from ovs_service import metrics
from ovs_service.errors import Busy, PrecheckFailed, RolledForward
from ovs_service.log import StepRecord
from ovs_service.metrics import exposition, families
from ovs_service.stages.flows_restore import BridgeRestore
from tests.harness import promtext


def read(directory: Path) -> dict[str, promtext.MetricFamily]:
    return promtext.parse((directory / "ovs_service.prom").read_text())


def restart(ok: bool = True) -> metrics.Recorder:
    recorder = metrics.Recorder("restart", ok=ok)
    on_step = recorder.on_step()
    for name, seconds in (("save", 0.25), ("restore", 0.5)):
        on_step(StepRecord(name, seconds))
    recorder.restore([BridgeRestore("br-int", True, {"flows": 7, "groups": 2, "meters": 1}),
                      BridgeRestore('odd"br\\name', True, {"flows": 3})])
    return recorder


def test_every_family_is_named_by_the_conventions() -> None:
    for family in families.ALL:
        assert promtext.METRIC_NAME.match(family.name) and family.name.startswith("ovs_service_")
        assert family.type == "gauge" and family.help.endswith(".")
        assert not family.name.endswith("_total")  # no counters here
        if "timestamp" in family.name or "duration" in family.name:
            assert family.name.endswith("_seconds"), family.name
    assert len({f.name for f in families.ALL}) == len(families.ALL)


def test_a_transaction_is_written_in_the_exposition_format(metrics_dir: Path) -> None:
    metrics.write(restart())
    got = read(metrics_dir)
    for family in families.ALL:
        if family.name in got:
            assert got[family.name].type == "gauge" and got[family.name].help == family.help
    assert got["ovs_service_last_transaction_success"].value(operation="restart") == 1
    assert got["ovs_service_step_duration_seconds"].value(operation="restart",
                                                          step="restore") == 0.5
    assert got["ovs_service_restored_flows"].value(bridge="br-int") == 7
    assert got["ovs_service_restored_flows"].value(bridge='odd"br\\name') == 3
    assert got["ovs_service_restored_meters"].value(bridge="br-int") == 1
    # The state: an empty store, nothing pending or failed.
    assert got["ovs_service_restore_pending"].value() == 0
    assert got["ovs_service_restore_failed"].value(bridge="", reason="") == 0
    assert got["ovs_service_snapshots"].value() == 0


def test_a_save_keeps_the_last_restart(metrics_dir: Path) -> None:
    metrics.write(restart())
    before = read(metrics_dir)
    with metrics.operation("save"):
        pass
    after = read(metrics_dir)
    success = after["ovs_service_last_transaction_success"]
    assert success.value(operation="restart") == 1 and success.value(operation="save") == 1
    for name in ("ovs_service_last_transaction_timestamp_seconds",
                 "ovs_service_step_duration_seconds", "ovs_service_restored_flows"):
        kept = {k: v for k, v in after[name].samples.items() if ("operation", "save") not in k}
        assert kept == before[name].samples, name


def test_a_failed_run_replaces_only_its_own_operation(metrics_dir: Path) -> None:
    metrics.write(restart())
    with pytest.raises(RuntimeError), metrics.operation("save"):
        raise RuntimeError("disk full")
    got = read(metrics_dir)
    success = got["ovs_service_last_transaction_success"]
    assert (success.value(operation="save"), success.value(operation="restart")) == (0, 1)
    assert got["ovs_service_restored_flows"].value(bridge="br-int") == 7  # not a restore

    with pytest.raises(PrecheckFailed), metrics.operation("restart", restores=True):
        raise PrecheckFailed(op="restart", reason="an interrupted restart")
    assert read(metrics_dir)["ovs_service_restored_flows"].value(bridge="br-int") == 7

    with pytest.raises(RolledForward), metrics.operation("restart", restores=True) as recorded:
        recorded.on_step()(StepRecord("save", 0.125))
        raise RolledForward(op="restart", step="restore", reason="the switch went away",
                            after="the switch was put back")
    got = read(metrics_dir)
    assert got["ovs_service_last_transaction_success"].value(operation="restart") == 0
    assert got["ovs_service_step_duration_seconds"].samples == {
        (("operation", "restart"), ("step", "save")): 0.125}  # the old run's steps are gone
    assert "ovs_service_restored_flows" not in got  # none known to be there any more


def test_a_run_refused_for_the_lock_is_not_recorded(metrics_dir: Path) -> None:
    """The caller that holds the lock records its own run; the one refused
    never touched the switch, so the last restart's success stays."""
    metrics.write(restart())
    before = (metrics_dir / "ovs_service.prom").read_text()
    with pytest.raises(Busy), metrics.operation("restart", restores=True):
        raise Busy(holder="pid 4242, restart at restore")
    assert (metrics_dir / "ovs_service.prom").read_text() == before


def test_the_file_is_replaced_whole_and_readable_by_the_exporter(metrics_dir: Path) -> None:
    old = metrics_dir / "ovs_service.prom"
    old.write_text("# a file from before, garbage included\nnot a metric at all {\n")
    inode = old.stat().st_ino
    os.umask(0o077)  # as the unit hooks run
    try:
        metrics.write(restart())
    finally:
        os.umask(0o022)
    new = metrics_dir / "ovs_service.prom"
    assert new.stat().st_ino != inode  # renamed over, never rewritten in place
    assert stat.S_IMODE(new.stat().st_mode) == 0o644
    assert sorted(p.name for p in metrics_dir.iterdir()) == ["ovs_service.prom"]
    assert "not a metric" not in new.read_text()
    read(metrics_dir)


@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_an_unusable_directory_is_one_log_line_and_no_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        kind: str) -> None:
    where = tmp_path / "textfile"
    if kind == "a file":
        where.write_text("")
    monkeypatch.setenv("OVS_SERVICE_METRICS_DIR", str(where))
    with metrics.operation("save"):
        pass
    assert [r.getMessage() for r in caplog.records] == [
        f"metrics not written: {where} is not a directory"]
    assert not list(tmp_path.glob("**/*.prom"))


def test_a_write_that_fails_does_not_fail_the_operation(
        metrics_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    (metrics_dir / "ovs_service.prom").mkdir()  # the rename cannot replace it
    with metrics.operation("save") as recorded:
        recorded.ok = True
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith("metrics not written to ")
    assert sorted(p.name for p in metrics_dir.iterdir()) == ["ovs_service.prom"]


def test_a_strict_reader_refuses_what_a_scraper_would() -> None:
    good = '# HELP a_b x\n# TYPE a_b gauge\na_b{l="v\\"q"} 1\n'
    assert promtext.parse(good)["a_b"].value(l='v"q') == 1
    for bad in ('a_b 1',  # no newline at the end
                'a_b 1\nc 2\na_b{x="1"} 3\n',  # a family split in two
                'a_b 1\na_b 2\n',  # a duplicate series
                'a_b{l="\\t"} 1\n',  # a bad escape
                'a_b 1\n# TYPE a_b gauge\n',  # TYPE after samples
                'a-b 1\n', 'a_b{1x="y"} 1\n', 'a_b one\n'):
        with pytest.raises(promtext.FormatError):
            promtext.parse(bad)


def test_rendering_and_reading_back_keep_every_label_value() -> None:
    odd = 'a "quoted" \\ back\nslash'
    text = exposition.render(families.ALL, [exposition.sample(
        "ovs_service_restored_flows", 5, bridge=odd)])
    assert promtext.parse(text)["ovs_service_restored_flows"].value(bridge=odd) == 5
    assert exposition.parse(text, families.NAMES) == [
        exposition.sample("ovs_service_restored_flows", 5, bridge=odd)]


def test_a_refresh_in_the_background_is_written_before_the_next_write(
        metrics_dir: Path, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    marker = store_dir / "pending"
    marker.write_text("00000001-20261202T000000.000000000\n")
    metrics.refresh_in_background()
    metrics.write(restart())  # waits for it, then merges over it
    got = read(metrics_dir)
    assert got["ovs_service_restore_pending"].value() == 1
    assert got["ovs_service_restore_pending_since_timestamp_seconds"].value() == \
        marker.stat().st_mtime
    assert got["ovs_service_last_transaction_success"].value(operation="restart") == 1
    assert sorted(p.name for p in metrics_dir.iterdir()) == ["ovs_service.prom"]


def test_an_unreadable_newest_snapshot_leaves_the_rest_written(
        metrics_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ovs_service")
    damaged = tmp_path / "store" / "00000001-20261202T000000.000000000"
    damaged.mkdir(parents=True)
    (damaged / "manifest.json").write_text("{not json")
    metrics.write(restart())
    got = read(metrics_dir)
    assert got["ovs_service_snapshots"].value() == 1
    assert "ovs_service_newest_snapshot_timestamp_seconds" not in got
    assert got["ovs_service_last_transaction_success"].value(operation="restart") == 1
    # Said at debug level only: the operation reading it, or `status`, says it
    # (an error must stay one line).
    said = [(r.levelname, r.getMessage()) for r in caplog.records
            if r.getMessage().startswith("metrics")]
    assert [level for level, text in said if "newest snapshot unreadable" in text] == ["DEBUG"]
    assert all(level == "DEBUG" for level, _ in said), said


def test_without_ovsdb_server_the_database_is_not_asked(
        metrics_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ovsdb-server (no pidfile in the run directory here): ovs-vsctl would
    wait its whole time-out, in every hook and command that writes metrics."""
    from ovs_service import ovs

    def asked() -> bool:
        raise AssertionError("the database was asked")

    monkeypatch.setattr(ovs, "flow_restore_wait", asked)
    metrics.write(restart())
    assert read(metrics_dir)["ovs_service_last_transaction_success"].value(
        operation="restart") == 1
