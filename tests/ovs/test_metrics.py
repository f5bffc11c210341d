"""The metrics file after the real CLI and unit hooks ran against a private
switch: the counts are checked against `ovs-ofctl dump-*`, the markers
against the store's files, flow-restore-wait against `ovs-vsctl`, and the
file is read with the tests' own strict reader of the format."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.harness import canon, nodeexporter, promtext
from tests.harness.ovsbed import Cli, CliResult, OvsBed, manifest

OF13 = "OpenFlow13"


def metrics(cli: Cli) -> dict[str, promtext.MetricFamily]:
    return promtext.parse((cli.metrics_dir / "ovs_service.prom").read_text())


def build(ovs: OvsBed, bridge: str, flows: int) -> None:
    """A bridge with `flows` flows of its own, a group and (OpenFlow 1.3) a meter."""
    ovs.add_bridge(bridge, protocols=(OF13,), ports={f"{bridge}p1": 1})
    ovs.ofctl("-O", OF13, "add-group", bridge, "group_id=1,type=all,bucket=output:1")
    ovs.ofctl("-O", OF13, "add-meter", bridge, "meter=3 pktps bands=type=drop rate=100")
    for i in range(flows):
        ovs.ofctl("-O", OF13, "add-flow", bridge, f"priority={100 + i},ip,nw_dst=10.0.0.{i} "
                  "actions=meter:3,group:1")


def switch_counts(ovs: OvsBed, bridge: str) -> dict[str, int]:
    """What the switch holds, counted by ovs-ofctl."""
    return {"flows": len(canon.flows(ovs, bridge, OF13)),
            "groups": len(canon.groups(ovs, bridge, OF13)),
            "meters": len(canon.meters(ovs, bridge, OF13))}


def counts(got: dict[str, promtext.MetricFamily], what: str, bridge: str) -> dict[str, int]:
    return {kind: int(got[f"ovs_service_{what}_{kind}"].value(bridge=bridge))
            for kind in ("flows", "groups", "meters")}


def hook(cli: Cli, name: str) -> CliResult:
    """A unit hook as the units run it (its Python half), against the bed."""
    argv = (sys.executable, "-m", "ovs_service.hooks", name)
    proc = subprocess.run(argv, env=cli.env(), capture_output=True, text=True, timeout=120,
                          check=False)
    result = CliResult(argv, proc.returncode, proc.stdout, proc.stderr)
    assert result.returncode == 0, result.describe()
    return result


def test_save_and_restore_counts_match_the_switch(ovs: OvsBed, cli: Cli) -> None:
    build(ovs, "br-a", 3)
    build(ovs, "br-b", 5)
    saved = {b: switch_counts(ovs, b) for b in ("br-a", "br-b")}
    before = time.time()
    snapshot = cli.save()
    got = metrics(cli)
    assert {b: counts(got, "saved", b) for b in saved} == saved
    assert got["ovs_service_last_transaction_success"].value(operation="save") == 1
    assert got["ovs_service_snapshots"].value() == 1
    created = time.mktime(time.strptime(manifest(snapshot)["created"], "%Y-%m-%dT%H:%M:%SZ")) \
        - time.timezone
    assert got["ovs_service_newest_snapshot_timestamp_seconds"].value() == created
    assert int(before) - 1 <= created <= time.time()

    for bridge in saved:
        canon.wipe(ovs, bridge)
    cli.restore()
    got = metrics(cli)
    assert {b: switch_counts(ovs, b) for b in saved} == saved
    assert {b: counts(got, "restored", b) for b in saved} == saved
    success = got["ovs_service_last_transaction_success"]
    assert success.value(operation="restore") == 1
    assert success.value(operation="save") == 1  # the save's stays

    # A restart that cannot even begin here (no systemd) is recorded as failed;
    # the restore before it keeps its own.
    assert cli("restart", check=False).returncode != 0
    got = metrics(cli)
    success = got["ovs_service_last_transaction_success"]
    assert (success.value(operation="restart"), success.value(operation="restore")) == (0, 1)
    assert {b: counts(got, "restored", b) for b in saved} == saved


def test_flow_restore_wait_and_since_when(ovs: OvsBed, cli: Cli) -> None:
    build(ovs, "br0", 1)
    ovs.vsctl("set", "Open_vSwitch", ".", "other_config:flow-restore-wait=true")
    before = time.time()
    cli.save()
    first = metrics(cli)
    since = first["ovs_service_flow_restore_wait_since_timestamp_seconds"].value()
    assert first["ovs_service_flow_restore_wait"].value() == 1
    assert before <= since <= time.time()
    cli.save()  # later: still the time it was first seen set
    assert metrics(cli)["ovs_service_flow_restore_wait_since_timestamp_seconds"].value() == since
    ovs.vsctl("remove", "Open_vSwitch", ".", "other_config", "flow-restore-wait")
    cli.save()
    got = metrics(cli)
    assert got["ovs_service_flow_restore_wait"].value() == 0
    assert "ovs_service_flow_restore_wait_since_timestamp_seconds" not in got


def test_the_unit_hooks_show_a_pending_restore_then_its_result(ovs: OvsBed, cli: Cli) -> None:
    build(ovs, "br0", 4)
    saved = switch_counts(ovs, "br0")
    hook(cli, "save")  # ExecStop=: the snapshot is pending for the next start
    got = metrics(cli)
    pending = cli.state_dir / "pending"
    assert pending.is_file()
    assert got["ovs_service_restore_pending"].value() == 1
    assert got["ovs_service_restore_pending_since_timestamp_seconds"].value() == \
        pending.stat().st_mtime
    assert counts(got, "saved", "br0") == saved

    canon.wipe(ovs, "br0")
    hook(cli, "poststart")
    got = metrics(cli)
    assert not pending.exists()
    assert got["ovs_service_restore_pending"].value() == 0
    assert "ovs_service_restore_pending_since_timestamp_seconds" not in got
    assert got["ovs_service_last_transaction_success"].value(operation="restore") == 1
    assert switch_counts(ovs, "br0") == saved == counts(got, "restored", "br0")
    assert got["ovs_service_restore_failed"].value(bridge="", reason="") == 0


def test_a_failed_restore_names_its_bridge_until_one_succeeds(ovs: OvsBed, cli: Cli) -> None:
    for bridge in ("good", "full"):
        build(ovs, bridge, 2)
    saved = switch_counts(ovs, "good")
    hook(cli, "save")
    for bridge in ("good", "full"):
        canon.wipe(ovs, bridge)
    # A table that takes one flow: the switch refuses the restore of "full".
    ovs.vsctl("--", "--id=@limit", "create", "Flow_Table", "flow_limit=1",
              "overflow_policy=refuse", "--", "set", "Bridge", "full", "flow_tables:0=@limit")
    hook(cli, "poststart")
    got = metrics(cli)
    assert (cli.state_dir / "failed").is_file()
    failed = got["ovs_service_restore_failed"].samples
    assert failed == {(("bridge", "full"), ("reason", "refused")): 1}
    assert got["ovs_service_last_transaction_success"].value(operation="restore") == 0
    assert switch_counts(ovs, "good") == saved == counts(got, "restored", "good")
    assert list(got["ovs_service_restored_flows"].samples) == [(("bridge", "good"),)]
    cli.save()  # another operation: the failure stays shown while the store keeps it
    assert metrics(cli)["ovs_service_restore_failed"].samples == failed

    # Fixed, and restored by the unit hooks: the failure is gone.
    ovs.vsctl("clear", "Bridge", "full", "flow_tables")
    (cli.state_dir / "pending").write_text((cli.state_dir / "failed").read_text())
    hook(cli, "poststart")
    got = metrics(cli)
    assert not (cli.state_dir / "failed").exists()
    assert got["ovs_service_restore_failed"].samples == {(("bridge", ""), ("reason", "")): 0}
    assert got["ovs_service_last_transaction_success"].value(operation="restore") == 1


def test_a_missing_metrics_directory_never_fails_the_operation(ovs: OvsBed, cli: Cli,
                                                              tmp_path: Path) -> None:
    build(ovs, "br0", 1)
    result = cli("--metrics-dir", str(tmp_path / "absent"), "save")
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        f"metrics not written: {tmp_path / 'absent'} is not a directory"]
    assert not (tmp_path / "absent").exists()
    assert not (cli.metrics_dir / "ovs_service.prom").exists()


def test_node_exporter_serves_the_metrics_it_reads(ovs: OvsBed, cli: Cli) -> None:
    """Debian's prometheus-node-exporter reads the file without an error and
    serves the values of a save and a restore, as a scrape sees them."""
    build(ovs, "br0", 6)
    saved = switch_counts(ovs, "br0")
    with nodeexporter.NodeExporter(cli.metrics_dir) as exporter:
        cli.save()
        canon.wipe(ovs, "br0")
        cli.restore()
        scraped = promtext.parse(exporter.scrape())
    assert scraped["node_textfile_scrape_error"].value() == 0
    mtime = scraped["node_textfile_mtime_seconds"]
    assert list(mtime.samples) == [(("file", str(cli.metrics_dir / "ovs_service.prom")),)]
    success = scraped["ovs_service_last_transaction_success"]
    assert (success.value(operation="save"), success.value(operation="restore")) == (1, 1)
    assert switch_counts(ovs, "br0") == saved
    assert counts(scraped, "saved", "br0") == saved == counts(scraped, "restored", "br0")
    assert scraped["ovs_service_restore_pending"].value() == 0
    assert scraped["ovs_service_flow_restore_wait"].value() == 0
    assert scraped["ovs_service_restore_failed"].type == "gauge"
