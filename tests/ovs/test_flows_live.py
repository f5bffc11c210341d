"""Restores that meet a switch which refuses or already holds things.

Watched from outside: the switch's own flow monitor (`ovs-ofctl monitor
BRIDGE watch:`) records every flow it adds, changes or deletes during the
restore, and `ovs-ofctl dump-*` shows the end state.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import canon
from tests.harness.ovsbed import Cli, OvsBed, wait_for

SENTINEL = "table=250,priority=1,cookie=0x5e17,actions=drop"


@contextlib.contextmanager
def flow_monitor(bed: OvsBed, bridge: str, version: str) -> Iterator[Path]:
    """`ovs-ofctl monitor BRIDGE watch:` in the background; yields its output file,
    whole (up to a sentinel flow added last) once the block ends."""
    out = bed.dir / f"monitor-{bridge}.txt"
    with open(out, "w") as f:
        proc = subprocess.Popen(
            ["ovs-ofctl", "-O", version, "monitor", bridge, "watch:"],
            stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **bed.env},
        )
    try:
        wait_for("the flow monitor's first reply", lambda: "reply" in out.read_text())
        yield out
        bed.ofctl("-O", version, "add-flow", bridge, SENTINEL)
        wait_for("the sentinel flow in the monitor", lambda: "0x5e17" in out.read_text())
        bed.ofctl("-O", version, "del-flows", bridge, "table=250")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def deleted(monitor: Path, needle: str) -> list[str]:
    return [line for line in monitor.read_text().splitlines()
            if "event=DELETED" in line and needle in line]


# -- saved flows are never taken away, not even for a moment ------------------


@pytest.mark.parametrize("protocols", [("OpenFlow10",), ("OpenFlow13",)], ids=["of10", "of13"])
def test_restore_onto_a_live_table_never_deletes_a_saved_flow(
    ovs: OvsBed, cli: Cli, protocols: tuple[str, ...]
) -> None:
    """Live flows with a saved flow's match and priority but other actions (or
    other groups' buckets, other meters' bands) are changed in place."""
    version = protocols[-1]
    of = ("-O", version)
    ovs.add_bridge("br0", protocols=protocols, ports={"p1": 1, "p2": 2})
    ovs.ofctl(*of, "add-group", "br0", "group_id=1,type=all,bucket=output:1")
    ovs.ofctl(*of, "add-flow", "br0", "priority=100,ip,nw_dst=10.9.9.9 actions=drop")
    ovs.ofctl(*of, "add-flow", "br0", "priority=90,udp,tp_dst=53 actions=group:1")
    ovs.ofctl(*of, "add-flow", "br0", "priority=5,ip actions=output:2")
    meters = canon.has_meters(version)
    if meters:
        ovs.ofctl(*of, "add-meter", "br0", "meter=3 pktps bands=type=drop rate=100")
        ovs.ofctl(*of, "add-flow", "br0", "priority=80,tcp,tp_dst=22 actions=meter:3,output:1")
    before = canon.all_states(ovs)
    snapshot = cli.save()

    ovs.ofctl(*of, "add-flow", "br0", "priority=100,ip,nw_dst=10.9.9.9 actions=output:2")
    ovs.ofctl(*of, "add-flow", "br0", "priority=7,arp actions=drop")  # not saved
    ovs.ofctl(*of, "mod-group", "br0", "group_id=1,type=all,bucket=output:2")
    if meters:
        ovs.ofctl(*of, "mod-meter", "br0", "meter=3 pktps bands=type=drop rate=200")
    assert canon.all_states(ovs) != before

    with flow_monitor(ovs, "br0", version) as monitor:
        cli.restore("--from", str(snapshot))
    assert canon.all_states(ovs) == before
    assert deleted(monitor, "arp"), monitor.read_text()  # the monitor saw the deletion
    for needle in ("nw_dst=10.9.9.9", "tp_dst=53", "tp_dst=22"):
        assert not deleted(monitor, needle), monitor.read_text()


# -- many refused messages outside a bundle ------------------------------------


def test_many_refused_flows_fail_fast_with_the_switch_error(ovs: OvsBed, cli: Cli) -> None:
    """OpenFlow 1.0 has no bundles: each of 20,000 flows that a full table
    refuses gets its own error reply while the restore is still writing."""
    count = 20_000
    ovs.add_bridge("br0", protocols=("OpenFlow10",), ports={"p1": 1})
    flows = ovs.dir / "flows.txt"
    flows.write_text("".join(
        f"priority=10,ip,nw_dst=10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255} actions=output:1\n"
        for i in range(count)))
    ovs.ofctl("add-flows", "br0", str(flows))
    snapshot = cli.save()
    ovs.ofctl("del-flows", "br0")
    ovs.vsctl("--", "--id=@limit", "create", "Flow_Table", "flow_limit=10",
              "overflow_policy=refuse", "--", "set", "Bridge", "br0", "flow_tables:0=@limit")

    start = time.monotonic()
    result = cli("restore", "--from", str(snapshot), "--json", check=False, timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode == 4, result.describe()
    (bridge,) = result.json()["bridges"]
    assert not bridge["ok"] and not bridge["transient"], result.describe()
    assert "TABLE_FULL" in bridge["reason"], result.describe()
    assert elapsed < 15, f"{elapsed:.1f}s\n{result.describe()}"
    table = [line for line in ovs.ofctl("dump-flows", "br0").splitlines() if "actions=" in line]
    assert len(table) == 10, table


def test_restore_keeps_tlv_mappings_that_flows_use(ovs: OvsBed, cli: Cli) -> None:
    """A live TLV map with one mapping more than the saved one: only that one
    goes; the saved mapping, used by a saved flow, stays throughout."""
    of = ("-O", "OpenFlow13")
    ovs.add_bridge("br0", protocols=("OpenFlow13",), ports={"p1": 1})
    ovs.ofctl(*of, "add-tlv-map", "br0", "{class=0xffff,type=5,len=8}->tun_metadata7")
    ovs.ofctl(*of, "add-flow", "br0", "priority=100,tun_metadata7=0x1 actions=drop")
    before = canon.all_states(ovs)
    snapshot = cli.save()
    ovs.ofctl(*of, "add-tlv-map", "br0", "{class=0xffff,type=6,len=4}->tun_metadata1")
    assert canon.all_states(ovs) != before

    with flow_monitor(ovs, "br0", "OpenFlow13") as monitor:
        cli.restore("--from", str(snapshot))
    assert canon.all_states(ovs) == before
    assert not deleted(monitor, "tun_metadata7"), monitor.read_text()


@pytest.mark.parametrize("protocols", [("OpenFlow10",), ("OpenFlow13",)], ids=["of10", "of13"])
def test_restore_onto_a_bridge_with_only_its_default_flow_keeps_it(
    ovs: OvsBed, cli: Cli, protocols: tuple[str, ...]
) -> None:
    """A table holding only `priority=0 actions=NORMAL` is filled whole; when
    the snapshot has that flow too, it is never deleted on the way."""
    version = protocols[-1]
    ovs.add_bridge("br0", protocols=protocols, ports={"p1": 1})
    ovs.ofctl("-O", version, "add-flow", "br0", "priority=100,ip,nw_dst=10.9.9.9 actions=drop")
    before = canon.all_states(ovs)
    assert "flow: priority=0 actions=NORMAL" in before["br0"]
    snapshot = cli.save()
    ovs.ofctl("-O", version, "del-flows", "br0", "ip")
    assert canon.all_states(ovs) != before

    with flow_monitor(ovs, "br0", version) as monitor:
        cli.restore("--from", str(snapshot))
    assert canon.all_states(ovs) == before
    assert not deleted(monitor, "actions=NORMAL"), monitor.read_text()
