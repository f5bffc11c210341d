"""Save, lose, restore: the switch must give back exactly the state it had.

Every check compares `canon.canonical_state` (ovs-ofctl's own dumps) before the
save and after the restore; ovs-service is only ever run as a command.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.harness import canon
from tests.harness.corpus import build_corpus
from tests.harness.ovsbed import Cli, OvsBed, manifest, one_line_error, pid_alive

ALL_VERSIONS = canon.VERSIONS

# Flows every version can carry (Open vSwitch extensions make OpenFlow 1.0 rich).
FLOWS = (
    "table=0,priority=100,ip,nw_src=10.0.0.1 actions=output:1",
    "table=0,priority=90,cookie=0x1234,tcp,tp_dst=80 actions=mod_nw_tos:16,output:2",
    "table=0,priority=80,in_port=1,dl_vlan=10 actions=strip_vlan,output:2",
    "table=0,priority=70,ip,nw_dst=10.1.0.0/16 actions=group:1",
    "table=0,priority=1 actions=resubmit(,1)",
    "table=1,priority=5,idle_timeout=600,arp actions=NORMAL",
    "table=1,priority=4,cookie=0xfeed,ipv6,ipv6_src=2001:db8::/32 actions=drop",
    "table=3,priority=0 actions=CONTROLLER:128",
)
# Open vSwitch offers groups at OpenFlow 1.0 too (a Nicira extension).
GROUPS = (
    "group_id=1,type=all,bucket=output:1,bucket=output:2",
    "group_id=2,type=select,bucket=weight:5,output:1,bucket=weight:5,output:2",
    "group_id=3,type=indirect,bucket=output:2",
    "group_id=4,type=ff,bucket=watch_port:1,output:1,bucket=watch_port:2,output:2",
)
METERS = ("meter=3 pktps burst stats bands=type=drop rate=100 burst_size=10",)
METERED = ("table=0,priority=60,udp actions=meter:3,output:1",)
VARIANTS = {
    "b10": ("OpenFlow10",),
    "b13": ("OpenFlow13",),
    "b15": ALL_VERSIONS,
}


def populate(bed: OvsBed, bridge: str, protocols: Sequence[str], ports: int = 3) -> None:
    """A bridge with flows in several tables, groups, and meters where the version allows."""
    bed.add_bridge(
        bridge, protocols=protocols, ports={f"{bridge}p{n}": n for n in range(1, ports + 1)}
    )
    version = protocols[-1]
    for group in GROUPS:
        bed.ofctl("-O", version, "add-group", bridge, group)
    for flow in FLOWS:
        bed.ofctl("-O", version, "add-flow", bridge, flow)
    if canon.has_meters(version):
        for meter in METERS:
            bed.ofctl("-O", version, "add-meter", bridge, meter)
        for flow in METERED:
            bed.ofctl("-O", version, "add-flow", bridge, flow)
    bed.ofctl("-O", version, "add-tlv-map", bridge, "{class=0xffff,type=5,len=8}->tun_metadata7")
    if "OpenFlow10" in protocols:
        bed.ofctl("-O", "OpenFlow10", "mod-port", bridge, "1", "no-flood")
    bed.ofctl("-O", version, "mod-port", bridge, "2", "no-receive")


def assert_same(expected: dict[str, list[str]], actual: dict[str, list[str]]) -> None:
    """Bridge by bridge, 100% of the canonical lines; the diff on failure."""
    assert actual.keys() == expected.keys()
    problems = [
        f"bridge {name}: {len(expected[name])} lines saved, {len(actual[name])} now\n"
        + canon.diff(expected[name], actual[name])
        for name in expected
        if expected[name] != actual[name]
    ]
    assert not problems, "\n".join(problems)


def wipe_all(bed: OvsBed, bridges: Sequence[str]) -> None:
    for bridge in bridges:
        before = canon.canonical_state(bed, bridge)
        canon.wipe(bed, bridge)
        assert canon.canonical_state(bed, bridge) != before, f"{bridge}: wipe changed nothing"


def check_manifest(snapshot: Path, bridges: Sequence[str]) -> None:
    doc = manifest(snapshot)
    assert doc["schema"] == 1
    for key in ("ovs_version", "host", "created", "stages", "bridges", "files"):
        assert key in doc, key
    assert sorted(doc["bridges"]) == sorted(bridges)
    assert doc["files"], "a snapshot with no data files"
    for relpath, entry in doc["files"].items():
        data = (snapshot / relpath).read_bytes()
        assert len(data) == entry["size"], relpath
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], relpath


# -- the corpus ---------------------------------------------------------------


def test_corpus_after_wipe(ovs: OvsBed, cli: Cli) -> None:
    build_corpus(ovs, "br0")
    before = canon.all_states(ovs)
    snapshot = cli.save()
    check_manifest(snapshot, ["br0"])
    assert canon.all_states(ovs) == before, "save changed the switch"
    wipe_all(ovs, ["br0"])
    cli.restore("--from", str(snapshot))
    assert_same(before, canon.all_states(ovs))


def test_corpus_after_vswitchd_restart(ovs: OvsBed, cli: Cli) -> None:
    build_corpus(ovs, "br0")
    populate(ovs, "b15", ALL_VERSIONS)
    before = canon.all_states(ovs)
    cli.save()
    ovs.restart_vswitchd()
    lost = canon.all_states(ovs)
    assert lost["br0"] != before["br0"] and lost["b15"] != before["b15"]
    cli.restore()  # the newest snapshot
    assert_same(before, canon.all_states(ovs))


def test_corpus_over_a_changed_table(ovs: OvsBed, cli: Cli) -> None:
    """Restore over live state (not a wiped one): flows still using the TLV map,
    other groups and meters, other port flags; then a second restore changes nothing."""
    build_corpus(ovs, "br0")
    before = canon.all_states(ovs)
    snapshot = cli.save()
    of15 = ("-O", "OpenFlow15")
    ovs.ofctl(*of15, "del-flows", "br0", "table=0")
    ovs.ofctl(*of15, "add-flow", "br0", "priority=2,tun_metadata0=0x1 actions=drop")
    ovs.ofctl(*of15, "del-groups", "br0", "group_id=1")
    ovs.ofctl(*of15, "add-group", "br0", "group_id=77,type=all,bucket=output:4")
    ovs.ofctl(*of15, "del-meter", "br0", "meter=2")
    ovs.ofctl(*of15, "add-meter", "br0", "meter=9 kbps bands=type=drop rate=5")
    ovs.ofctl(*of15, "mod-port", "br0", "4", "receive")
    ovs.ofctl(*of15, "mod-port", "br0", "5", "no-forward")
    assert canon.all_states(ovs) != before
    cli.restore("--from", str(snapshot))
    assert_same(before, canon.all_states(ovs))
    cli.restore("--from", str(snapshot))
    assert_same(before, canon.all_states(ovs))


# Two flows from the corpus: deleting LEARNER also deletes every flow with
# cookie 0x345 in table 3 (delete_learned), which is where LEARNED lives.
LEARNER = "cookie=0x123,table=1,reg0=0x3 actions=learn(table=3,delete_learned,cookie=0x345)"
LEARNED = "cookie=0x345,table=3,reg0=0x4 actions=learn(table=5,delete_learned,cookie=0x567)"
LEARNED_CHANGED = LEARNED + ",output:1"


@pytest.mark.parametrize(
    ("saved", "live"),
    [
        ((LEARNER, LEARNED), (LEARNER, LEARNED)),
        ((LEARNER, LEARNED), (LEARNER, LEARNED_CHANGED)),
        ((LEARNER, LEARNED), ()),
        ((LEARNED,), (LEARNER, LEARNED_CHANGED)),
        ((LEARNED,), (LEARNER, LEARNED)),
    ],
    ids=["same", "learned-changed", "wiped", "learner-gone", "learner-gone-same"],
)
def test_restore_over_delete_learned_flows(
    ovs: OvsBed, cli: Cli, saved: tuple[str, ...], live: tuple[str, ...]
) -> None:
    """Replacing such flows in one bundle (delete all, add all) trips an assertion
    in ovs-vswitchd 3.1 (learned_cookies_update_one__), which then exits; and a
    bundle that deletes LEARNER takes LEARNED with it, whatever else it adds."""
    ovs.add_bridge("br0", protocols=("OpenFlow15",), ports={"p1": 1})
    for flow in saved:
        ovs.ofctl("-O", "OpenFlow15", "add-flow", "br0", flow)
    before = canon.all_states(ovs)
    snapshot = cli.save()
    ovs.ofctl("-O", "OpenFlow15", "del-flows", "br0")
    ovs.ofctl("-O", "OpenFlow15", "add-flow", "br0", "priority=0 actions=NORMAL")
    for flow in live:
        ovs.ofctl("-O", "OpenFlow15", "add-flow", "br0", flow)
    pid = ovs.pid("ovs-vswitchd")
    result = cli.restore("--from", str(snapshot), check=False)
    assert pid is not None and pid_alive(pid), "ovs-vswitchd died during the restore:\n" + (
        ovs.log_tail("ovs-vswitchd", 3)
    )
    assert result.returncode == 0, result.describe()
    assert_same(before, canon.all_states(ovs))


def test_save_prints_the_path(ovs: OvsBed, cli: Cli) -> None:
    ovs.add_bridge("br0")
    result = cli("save")
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.describe()
    path = Path(lines[0])
    assert path.is_dir() and path.parent == cli.state_dir, result.describe()
    check_manifest(path, ["br0"])


# -- versions, several bridges, empty and big bridges -----------------------


@pytest.mark.parametrize("bridge", list(VARIANTS))
def test_protocol_versions(ovs: OvsBed, cli: Cli, bridge: str) -> None:
    populate(ovs, bridge, VARIANTS[bridge])
    before = canon.all_states(ovs)
    snapshot = cli.save()
    wipe_all(ovs, [bridge])
    cli.restore("--from", str(snapshot))
    assert_same(before, canon.all_states(ovs))


def test_three_bridges_at_once(ovs: OvsBed, cli: Cli) -> None:
    for bridge, protocols in VARIANTS.items():
        populate(ovs, bridge, protocols)
    before = canon.all_states(ovs)
    snapshot = cli.save()
    check_manifest(snapshot, list(VARIANTS))
    wipe_all(ovs, list(VARIANTS))
    cli.restore("--from", str(snapshot))
    assert_same(before, canon.all_states(ovs))


def test_empty_bridge(ovs: OvsBed, cli: Cli) -> None:
    """A bridge with no flow at all comes back empty, even over flows added since."""
    ovs.add_bridge("empty", protocols=ALL_VERSIONS, ports={"e1": 1})
    ovs.ofctl("del-flows", "empty")
    before = canon.all_states(ovs)
    assert not [line for line in before["empty"] if line.startswith("flow:")]
    snapshot = cli.save()
    ovs.ofctl("-O", "OpenFlow15", "add-group", "empty", "group_id=9,type=all,bucket=output:1")
    ovs.ofctl("-O", "OpenFlow15", "add-flow", "empty", "priority=3 actions=group:9")
    ovs.ofctl("-O", "OpenFlow15", "add-meter", "empty", "meter=4 pktps bands=type=drop rate=10")
    assert canon.all_states(ovs) != before
    cli.restore("--from", str(snapshot))
    assert_same(before, canon.all_states(ovs))


def test_bridge_option_limits_save_and_restore(ovs: OvsBed, cli: Cli) -> None:
    for bridge, protocols in VARIANTS.items():
        populate(ovs, bridge, protocols)
    before = canon.all_states(ovs)

    partial = cli.save("--bridge", "b10", "--bridge", "b15")
    check_manifest(partial, ["b10", "b15"])
    full = cli.save()
    check_manifest(full, list(VARIANTS))

    wipe_all(ovs, list(VARIANTS))
    wiped = canon.all_states(ovs)
    cli.restore("--from", str(full), "--bridge", "b13")
    assert_same({**wiped, "b13": before["b13"]}, canon.all_states(ovs))

    cli.restore("--from", str(partial), "--bridge", "b15")
    assert_same({**wiped, "b13": before["b13"], "b15": before["b15"]}, canon.all_states(ovs))

    # Without --bridge, a partial snapshot restores what it holds and nothing else.
    canon.wipe(ovs, "b13")
    cli.restore("--from", str(partial))
    assert_same({**before, "b13": wiped["b13"]}, canon.all_states(ovs))

    # A bridge the snapshot does not hold is a usage error, and nothing changes.
    now = canon.all_states(ovs)
    result = cli.restore("--from", str(partial), "--bridge", "b13", check=False)
    one_line_error(result)
    assert result.returncode == 2, result.describe()
    assert_same(now, canon.all_states(ovs))


def _write_many_flows(path: Path, count: int) -> None:
    with path.open("w") as out:
        for i in range(count):
            a, b, c = (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF
            if i % 3 == 0:
                out.write(f"table=0,priority={i % 1000 + 10},ip,nw_dst=10.{a}.{b}.{c}"
                          f" actions=output:{i % 4 + 1}\n")
            elif i % 3 == 1:
                out.write(f"table=1,cookie={i:#x},tcp,nw_src=172.{a + 16}.{b}.{c},tp_dst=443"
                          f" actions=mod_nw_tos:8,resubmit(,2)\n")
            else:
                out.write(f"table=2,priority=7,udp6,ipv6_dst=2001:db8::{a:x}:{b:x}:{c:x},"
                          f"tp_dst=53 actions=drop\n")


@pytest.mark.slow
def test_hundred_thousand_flows(ovs: OvsBed, cli: Cli) -> None:
    count = 100_000
    ovs.add_bridge("big", protocols=("OpenFlow13", "OpenFlow15"),
                   ports={f"g{n}": n for n in range(1, 5)})
    flows_file = ovs.dir / "many-flows.txt"
    _write_many_flows(flows_file, count)
    ovs.ofctl("-O", "OpenFlow15", "--bundle", "add-flows", "big", str(flows_file))
    before = canon.all_states(ovs)
    assert sum(line.startswith("flow:") for line in before["big"]) == count + 1  # + NORMAL

    timings = {}
    start = time.monotonic()
    snapshot = cli.save()
    timings["save"] = time.monotonic() - start
    wipe_all(ovs, ["big"])
    start = time.monotonic()
    cli.restore("--from", str(snapshot))
    timings["restore"] = time.monotonic() - start
    assert_same(before, canon.all_states(ovs))
    print(f"{count} flows: save {timings['save']:.2f}s, restore {timings['restore']:.2f}s")


# -- a failing restore leaves the bridge as it was ---------------------------


@pytest.mark.parametrize("protocols", [("OpenFlow13",), ALL_VERSIONS], ids=["of13", "of10-15"])
def test_failed_restore_leaves_table_unchanged(
    ovs: OvsBed, cli: Cli, protocols: tuple[str, ...]
) -> None:
    """A table that fills up halfway through the restore: the bridge keeps its old table.

    The snapshot is sound; the switch refuses it because table 0 now has a flow
    limit (a real Open vSwitch setting) below the snapshot's size. Groups, meters,
    TLV map and ports are the same before and after, so only an atomic flow
    table replacement passes.
    """
    version = protocols[-1]
    ovs.add_bridge("br0", protocols=protocols, ports={"p1": 1, "p2": 2})
    ovs.ofctl("-O", version, "add-group", "br0", "group_id=7,type=all,bucket=output:1")
    for i in range(30):
        ovs.ofctl("-O", version, "add-flow", "br0", f"priority={i + 10},ip,nw_dst=10.5.0.{i}"
                  " actions=group:7")
    snapshot = cli.save()

    ovs.ofctl("-O", version, "del-flows", "br0", "ip")
    for i in range(3):
        ovs.ofctl("-O", version, "add-flow", "br0", f"priority=5,tcp,tp_dst={i + 1000}"
                  " actions=output:2")
    ovs.vsctl("--", "--id=@limit", "create", "Flow_Table", "flow_limit=10",
              "overflow_policy=refuse", "--", "set", "Bridge", "br0", "flow_tables:0=@limit")
    before = canon.all_states(ovs)

    result = cli.restore("--from", str(snapshot), check=False)
    assert result.returncode != 0, result.describe()
    assert_same(before, canon.all_states(ovs))
    one_line_error(result)
