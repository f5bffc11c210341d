"""The systemd lane: ovs-service's units and hooks under a real systemd.

A systemd booted as PID 1 of a private namespace runs Debian's Open vSwitch
daemons through ovs-service's units (netdev bridges). After each way an
operator restarts the switch, the full canonical state (the corpus table
with meters, TLV map and port settings, a traffic bridge with a group and a
meter, OpenFlow port numbers) must be identical, flow-restore-wait absent,
and traffic between two namespaces must flow again through the flows that
steer it. Everything is checked with ovs-ofctl/ovs-vsctl and ping.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.harness import canon, promtext
from tests.harness.lane import Hosts, NsSwitch, assert_switch_whole
from tests.harness.systemd_ns import SystemdNamespace

pytestmark = [pytest.mark.systemd, pytest.mark.root, pytest.mark.slow]


def _openflow10_bridge(switch: NsSwitch) -> None:
    switch.add_bridge("br10", protocols=["OpenFlow10"], ports={"b10p1": 3, "b10p2": 9})
    switch.ofctl("add-flow", "br10", "table=1,priority=5,reg1=7,actions=output:9")


LANE_EXTRA = _openflow10_bridge


def _check(switch: NsSwitch, hosts: Hosts, before: dict[str, list[str]], what: str) -> None:
    assert_switch_whole((switch.ns, switch, hosts), before, what)


def _metrics(ns: SystemdNamespace) -> dict[str, promtext.MetricFamily]:
    """The Prometheus metrics ovs-service wrote inside (node_exporter's textfile folder)."""
    return promtext.parse(ns.path("/var/lib/prometheus/node-exporter/ovs_service.prom")
                          .read_text())


OPERATIONS = {
    "systemctl restart openvswitch": [["systemctl", "restart", "openvswitch"]],
    "systemctl restart ovs-vswitchd": [["systemctl", "restart", "ovs-vswitchd"]],
    "systemctl restart ovsdb-server": [["systemctl", "restart", "ovsdb-server"]],
    "systemctl stop openvswitch; start": [["systemctl", "stop", "openvswitch"],
                                          ["systemctl", "start", "openvswitch"]],
    "ovs-service restart": [["ovs-service", "restart"]],
    # What Debian's maintainer scripts do on an upgrade: preinst stops the
    # database first (ovs-vswitchd only wants it), then ovs-vswitchd;
    # postinst starts both.
    "an upgrade's stops and start": [["systemctl", "stop", "ovsdb-server"],
                                     ["systemctl", "stop", "ovs-vswitchd"],
                                     ["systemctl", "start", "ovsdb-server", "ovs-vswitchd"]],
}


@pytest.mark.parametrize("what", list(OPERATIONS))
def test_state_survives(lane: tuple[SystemdNamespace, NsSwitch, Hosts], what: str) -> None:
    ns, switch, hosts = lane
    before = canon.all_states(switch)
    assert len(before["br0"]) > 120, "the corpus bridge is not whole"
    pids = ns.main_pid("ovs-vswitchd")
    for argv in OPERATIONS[what]:
        proc = ns.run(argv, check=False)
        assert proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
        # `systemctl stop openvswitch` returns once the umbrella stopped, before
        # the daemons have (as with Debian's units): wait for systemd's queue.
        ns.settle()
    if what != "systemctl restart ovsdb-server":
        assert ns.main_pid("ovs-vswitchd") != pids, "ovs-vswitchd was not restarted"
    else:
        assert ns.main_pid("ovs-vswitchd") == pids, "restarting ovsdb-server restarted ovs-vswitchd"
    _check(switch, hosts, before, what)
    # Nothing left for a later start to restore over what the switch has by then.
    assert not ns.path("/var/lib/ovs-service/pending").exists(), what


def test_status_and_dry_run(lane: tuple[SystemdNamespace, NsSwitch, Hosts]) -> None:
    ns, _, _ = lane
    plan = json.loads(ns.run(["ovs-service", "restart", "--dry-run", "--json"]).stdout)
    assert next(s["name"] for s in plan["steps"]) == "save"
    status = json.loads(ns.run(["ovs-service", "status", "--json"]).stdout)
    states = {u["name"]: u["active_state"] for u in status["units"]}
    assert states["ovs-vswitchd.service"] == "active"
    assert status["flow_restore_wait"] is False and status["pending"] is None


def test_restart_reports_steps_as_json(lane: tuple[SystemdNamespace, NsSwitch, Hosts]) -> None:
    ns, switch, hosts = lane
    before = canon.all_states(switch)
    result = json.loads(ns.run(["ovs-service", "restart", "--json"]).stdout)
    assert result["ok"] and [s["name"] for s in result["steps"]] == [
        "save", "stop-ovs-vswitchd", "restart-ovsdb-server", "start-ovs-vswitchd", "restore",
        "clear-flow-restore-wait"]
    assert {b["bridge"] for b in result["bridges"]} == {"br0", "br10", "brt"}
    _check(switch, hosts, before, "ovs-service restart --json")
    got = _metrics(ns)
    assert got["ovs_service_last_transaction_success"].value(operation="restart") == 1
    steps = got["ovs_service_step_duration_seconds"].samples
    assert {dict(k)["step"] for k in steps if ("operation", "restart") in k} == {
        s["name"] for s in result["steps"]}
    for bridge in ("br0", "br10", "brt"):
        version = canon.newest(switch, bridge)
        assert got["ovs_service_restored_flows"].value(bridge=bridge) == len(
            canon.flows(switch, bridge, version)), bridge
        assert got["ovs_service_restored_groups"].value(bridge=bridge) == len(
            canon.groups(switch, bridge, version)), bridge
    assert got["ovs_service_restore_pending"].value() == 0
    assert got["ovs_service_flow_restore_wait"].value() == 0


def _restart(ns: SystemdNamespace, *options: str) -> tuple[str, int, int]:
    """`ovs-service restart`: what it said of ovsdb-server, and the main PIDs
    of ovsdb-server and ovs-vswitchd after it, as systemd reports them."""
    vswitchd = ns.main_pid("ovs-vswitchd")
    result = json.loads(ns.run(["ovs-service", "restart", "--json", *options]).stdout)
    detail = next(s["detail"] for s in result["steps"] if s["name"] == "restart-ovsdb-server")
    assert ns.main_pid("ovs-vswitchd") != vswitchd, "ovs-vswitchd was not restarted"
    return detail, ns.main_pid("ovsdb-server"), ns.main_pid("ovs-vswitchd")


def _cmdline(ns: SystemdNamespace, pid: int) -> list[str]:
    return ns.run(["cat", f"/proc/{pid}/cmdline"]).stdout.split("\0")


# ovs-ctl's line as it starts the database (systemd's says "Starting ovsdb-server.service").
OVS_CTL_DB_START = re.compile(r"\]: Starting ovsdb-server\.$", re.MULTILINE)
OPTIONS_DROPIN = "/run/systemd/system/ovsdb-server.service.d/50-test-options.conf"


def _journal_cursor(ns: SystemdNamespace) -> str | None:
    out = ns.run(["journalctl", "-n", "0", "--show-cursor", "--quiet"], check=False).stdout
    return out.strip().removeprefix("-- cursor: ") or None

OPTIONS_FILE = "/run/ovs-service-test/ovsdb-options.env"
# ovs-ctl's own documented form: quotes inside the value, which systemd
# removes as it splits $OVS_CTL_OPTS.
QUOTED_OPTIONS = ("OVS_CTL_OPTS=\"--no-self-confinement "
                  "--ovsdb-server-options='-vconsole:info -vsyslog:info'\"\n")
BINARY_COPY = "/tmp/ovsdb-server.copy"


# Set in the manager's environment: no Open vSwitch program reads it, ovs-ctl
# passes it on to the daemon it starts.
MARK = "OVS_LANE_MARK"


def _environ(ns: SystemdNamespace, pid: int) -> list[str]:
    return ns.run(["cat", f"/proc/{pid}/environ"]).stdout.split("\0")


def _open_files_limit(ns: SystemdNamespace, pid: int) -> str:
    limits = ns.run(["cat", f"/proc/{pid}/limits"]).stdout
    return next(ln.split()[3] for ln in limits.splitlines() if ln.startswith("Max open files"))


def test_database_restarted_only_when_changed(
    lane: tuple[SystemdNamespace, NsSwitch, Hosts],
) -> None:
    """ovs-service restart leaves ovsdb-server running while what it starts
    from is unchanged, and restarts it when asked to or when its options (an
    environment file's, quoted), its unit (a drop-in's LimitNOFILE=) or its
    binary changed, or a variable of the manager's environment; each change is
    seen applied in the new daemon."""
    ns, switch, hosts = lane
    before = canon.all_states(switch)
    db = ns.main_pid("ovsdb-server")
    try:
        detail, now, _ = _restart(ns)
        assert now == db and detail.startswith("kept running"), detail

        journal = _journal_cursor(ns)
        detail, now, _ = _restart(ns, "--restart-database")
        assert now != db and "--restart-database" in detail, detail
        # In full: ovs-ctl's start, not the daemon alone with a recorded command line.
        assert OVS_CTL_DB_START.search(ns.journal(None, since_cursor=journal)), detail
        db = now

        ns.write_file(OPTIONS_FILE, QUOTED_OPTIONS)
        ns.write_file(OPTIONS_DROPIN, f"[Service]\nEnvironmentFile=-{OPTIONS_FILE}\n")
        ns.systemctl("daemon-reload")
        detail, now, _ = _restart(ns)
        assert now != db and "changed since it started" in detail, detail
        argv = _cmdline(ns, now)
        assert "--no-self-confinement" in argv and "-vsyslog:info" in argv, argv
        db = now
        # What systemd passes now is what the hook recorded: the same key.
        detail, now, _ = _restart(ns)
        assert now == db and detail.startswith("kept running"), detail

        limit = _open_files_limit(ns, db)
        ns.write_file(OPTIONS_DROPIN, f"[Service]\nEnvironmentFile=-{OPTIONS_FILE}\n"
                                      "LimitNOFILE=4096\n")
        ns.systemctl("daemon-reload")
        detail, now, _ = _restart(ns)
        assert now != db and "unit's files" in detail, detail
        assert _open_files_limit(ns, now) == "4096" != limit
        db = now

        # A variable of the manager's that ovs-ctl may read: in no file and no option.
        ns.systemctl("set-environment", f"{MARK}=1")
        detail, now, _ = _restart(ns)
        assert now != db and "the manager's environment" in detail, detail
        assert f"{MARK}=1" in _environ(ns, now)
        db = now
        detail, now, _ = _restart(ns)
        assert now == db and detail.startswith("kept running"), detail

        # An upgrade's new binary, without the upgrade: another inode at the path.
        ns.run(["cp", "/usr/sbin/ovsdb-server", BINARY_COPY])
        ns.run(["mount", "--bind", BINARY_COPY, "/usr/sbin/ovsdb-server"])
        detail, now, _ = _restart(ns)
        assert now != db and "replaced" in detail, detail
        db = now
    finally:
        ns.run(["umount", "/usr/sbin/ovsdb-server"], check=False)
        ns.systemctl("unset-environment", MARK)
        ns.run(["rm", "-f", OPTIONS_DROPIN, OPTIONS_FILE, BINARY_COPY])
        ns.systemctl("daemon-reload")
    detail, now, _ = _restart(ns)
    assert now != db and detail.startswith("restarted"), detail
    assert "--no-self-confinement" not in _cmdline(ns, now)
    # ovs-ctl started it (its options changed): the next start of the unit is
    # the direct one, with the niceness and core file limit ovs-ctl gave.
    settings = _nice_and_core(ns, now)
    journal = _journal_cursor(ns)
    ns.systemctl("restart", "ovsdb-server.service")
    direct = ns.main_pid("ovsdb-server")
    assert "as ovs-ctl last did" in ns.journal(None, since_cursor=journal)
    assert direct != now and _nice_and_core(ns, direct) == settings == ("-10", settings[1])
    _check(switch, hosts, before, "ovs-service restart, the database kept or restarted")


def _nice_and_core(ns: SystemdNamespace, pid: int) -> tuple[str, str]:
    stat = ns.run(["cat", f"/proc/{pid}/stat"]).stdout
    limits = ns.run(["cat", f"/proc/{pid}/limits"]).stdout
    core = next(ln.split()[4] for ln in limits.splitlines() if ln.startswith("Max core file"))
    return stat.rpartition(") ")[2].split()[16], core


def _break_snapshot(ns: SystemdNamespace, snapshot: str, bridge: str) -> None:
    """Edit a snapshot the way an operator could by mistake: drop a bridge's groups
    (its flows still use them) and fix up the checksums, so it passes verification."""
    code = f"""
import hashlib, json, pathlib
root = pathlib.Path({snapshot!r})
index = json.loads((root / "flows/index.json").read_text())
rec = next(r for r in index if r["name"] == {bridge!r})
(root / rec["directory"] / "groups.ofp").write_bytes(b"")
rec["counts"]["groups"] = 0
(root / "flows/index.json").write_text(json.dumps(index))
manifest = json.loads((root / "manifest.json").read_text())
for rel in list(manifest["files"]):
    data = (root / rel).read_bytes()
    manifest["files"][rel] = {{"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}}
(root / "manifest.json").write_text(json.dumps(manifest))
"""
    ns.python(code)


def test_failing_restore_clears_flow_restore_wait(
    lane: tuple[SystemdNamespace, NsSwitch, Hosts],
) -> None:
    ns, switch, hosts = lane
    before = canon.all_states(switch)
    good = ns.run(["ovs-service", "save"]).stdout.strip()
    snap = ns.run(["ovs-service", "save"]).stdout.strip()
    _break_snapshot(ns, snap, "brt")

    # By hand, onto an emptied bridge: a non-zero exit that names the bridge,
    # and the bridge left as it was (the bundle failed as a whole).
    for what in ("del-flows", "del-groups", "del-meters"):
        switch.ofctl("-O", "OpenFlow15", what, "brt")
    wiped = canon.all_states(switch)
    proc = ns.run(["ovs-service", "restore", "--from", snap], check=False)
    assert proc.returncode != 0
    assert "brt" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert canon.all_states(switch) == wiped
    ns.run(["ovs-service", "restore", "--from", good])
    assert canon.all_states(switch) == before

    # Through the unit: the broken snapshot is the pending one when the daemon starts.
    ns.systemctl("stop", "ovs-vswitchd")
    ns.run(["sh", "-c", f'basename {snap} > /var/lib/ovs-service/pending'])
    ns.systemctl("start", "ovs-vswitchd")
    assert switch.flow_restore_wait() == "", "flow-restore-wait left set after a failed restore"
    status = json.loads(ns.run(["ovs-service", "status", "--json"]).stdout)
    assert status["failed"] and status["failed"].endswith(snap.split("/")[-1])
    # The unit's journal says so, and the background restore's says which bridge.
    assert f"the restore of {snap.split('/')[-1]} failed" in ns.journal("ovs-vswitchd")
    got = _metrics(ns)  # as the unit's background restore wrote them
    assert got["ovs_service_restore_failed"].samples == {
        (("bridge", "brt"), ("reason", "refused")): 1}
    assert got["ovs_service_last_transaction_success"].value(operation="restore") == 0
    assert got["ovs_service_flow_restore_wait"].value() == 0
    journal = ns.journal("ovs-service-restore")
    assert "brt" in journal and "failed" in journal
    # The other bridges came back whole; put brt back from a good snapshot.
    after = canon.all_states(switch)
    assert after["br0"] == before["br0"] and after["br10"] == before["br10"]
    assert after["brt"] != before["brt"]
    ns.run(["ovs-service", "restore", "--from", good])
    _check(switch, hosts, before, "restore of the last good snapshot")
