"""The test bed itself: a private switch, the corpus, and the canonical view."""

from __future__ import annotations

import json
import time
from pathlib import Path

import canon
from corpus import PORT_MODS, SPECS, build_corpus, load_specs
from ovsbed import OvsBed, pid_alive, sh


def test_bed_is_private(ovs: OvsBed) -> None:
    assert Path(ovs.env["OVS_RUNDIR"]) == ovs.dir
    assert (ovs.dir / "db.sock").exists()
    assert not str(ovs.dir).startswith("/run/openvswitch")
    # Both daemons run inside the bed's own network namespace.
    netns = Path(f"/run/netns/{ovs.netns}").stat()
    for daemon in ("ovsdb-server", "ovs-vswitchd"):
        pid = ovs.pid(daemon)
        assert pid is not None and pid_alive(pid)
        theirs = Path(f"/proc/{pid}/ns/net").stat()
        assert (theirs.st_dev, theirs.st_ino) == (netns.st_dev, netns.st_ino), daemon


def test_bridge_ports_and_ofctl(ovs: OvsBed) -> None:
    ovs.add_bridge("br0", protocols=["OpenFlow10", "OpenFlow13"], ports={"a1": 5, "a2": 7})
    assert ovs.bridges() == ["br0"]
    assert canon.protocols(ovs, "br0") == ("OpenFlow10", "OpenFlow13")
    assert sorted(canon.ofports(ovs, "br0")) == [
        "ofport: a1=5",
        "ofport: a2=7",
        "ofport: br0=65534",
    ]
    ovs.ofctl("-O", "OpenFlow13", "add-flow", "br0", "priority=9,in_port=5 actions=output:7")
    assert "flow: priority=9,in_port=5 actions=output:7" in canon.flows(ovs, "br0", "OpenFlow13")
    # The internal ports are tap devices inside the bed's namespace, not in the host's.
    links = sh(["ip", "-n", ovs.netns, "-json", "link"]).stdout
    assert {"a1", "a2", "br0"} <= {link["ifname"] for link in json.loads(links)}
    host_links = sh(["ip", "-json", "link"]).stdout
    assert not {"a1", "a2"} & {link["ifname"] for link in json.loads(host_links)}
    assert "Open vSwitch" in ovs.appctl("version")


def test_traffic_between_namespaces(ovs: OvsBed) -> None:
    ovs.add_bridge("br0")
    a, b = ovs.add_host_pair("br0")
    ovs.wait_ping(a, b)
    # Without a flow the bridge forwards nothing (once the datapath has dropped
    # the flows it had cached: revalidation takes a moment); NORMAL brings it back.
    ovs.ofctl("del-flows", "br0")
    deadline = time.monotonic() + 5
    while a.ping(b.ip, wait=0.3) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not a.ping(b.ip, wait=0.3)
    ovs.ofctl("add-flow", "br0", "actions=NORMAL")
    ovs.wait_ping(a, b)


def test_restart_vswitchd_keeps_config_loses_flows(ovs: OvsBed) -> None:
    ovs.add_bridge("br0", ports={"p1": 1})
    ovs.ofctl("add-flow", "br0", "priority=7,in_port=1 actions=drop")
    old = ovs.pid("ovs-vswitchd")
    ovs.restart_vswitchd()
    assert ovs.pid("ovs-vswitchd") != old
    assert old is not None and not pid_alive(old)
    assert canon.flows(ovs, "br0", "OpenFlow10") == ["flow: priority=0 actions=NORMAL"]
    assert canon.ofports(ovs, "br0") and "ofport: p1=1" in canon.ofports(ovs, "br0")


def test_stop_cleans_up(ovs: OvsBed) -> None:
    bed = ovs
    pids = [bed.pid(d) for d in ("ovsdb-server", "ovs-vswitchd")]
    bed.add_bridge("br0")
    host = bed.add_host("br0", "10.77.0.1/24", 3)
    bed.stop()
    assert not bed.dir.exists()
    assert all(p is not None and not pid_alive(p) for p in pids)
    for netns in (bed.netns, host.netns):
        assert not Path(f"/run/netns/{netns}").exists()
    bed.stop()  # a second stop is harmless


def test_corpus_loads(ovs: OvsBed) -> None:
    specs = load_specs()
    assert len(specs) == 162
    report = build_corpus(ovs, "br0")
    state = canon.canonical_state(ovs, "br0")
    kinds = {
        kind: sum(1 for line in state if line.startswith(kind + ":"))
        for kind in ("flow", "group", "meter", "tlv", "port", "ofport")
    }
    # Only specs naming a group the corpus lacks are refused.
    assert all("group:123" in spec.text for spec in report.refused), report.refused
    assert report.accepted["group"] == 5
    assert kinds["group"] == 5 and kinds["meter"] == 2 and kinds["tlv"] == 4
    assert kinds["port"] == 9 and kinds["ofport"] == 9
    assert kinds["flow"] > 100
    for port, _action, _version in PORT_MODS:
        assert any(
            line.startswith(f"port: {port}(p{port}) config:") and "NO_" in line for line in state
        ), port
    print(f"corpus: {len(state)} lines of canonical state {kinds}")


def test_canon_is_deterministic_and_wipe_empties(ovs: OvsBed) -> None:
    build_corpus(ovs, "br0")
    first = canon.canonical_state(ovs, "br0")
    assert canon.canonical_state(ovs, "br0") == first
    canon.wipe(ovs, "br0")
    wiped = canon.canonical_state(ovs, "br0")
    assert [line for line in wiped if line.split(":")[0] in ("flow", "group", "meter", "tlv")] == []
    assert all("NO_" not in line for line in wiped)
    assert canon.diff(first, wiped)


def test_corpus_file_present() -> None:
    assert SPECS.is_file(), f"the corpus is expected at {SPECS}"
