"""The in-process OVSDB client against a real ovsdb-server: what it writes is
read back with ovs-vsctl, and a failure is one line."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from ovs_service import ovs as ovs_tools
from ovs_service import ovsdb
from ovs_service.errors import OvsdbRefused, OvsUnreachable
from tests.harness.ovsbed import OvsBed

KEY = "flow-restore-wait"


def other_config(ovs: OvsBed, key: str) -> str:
    return ovs.vsctl("--if-exists", "get", "Open_vSwitch", ".", f"other_config:{key}").strip()


def db_socket(ovs: OvsBed) -> Path:
    return Path(ovs.env["OVS_RUNDIR"]) / "db.sock"


def test_sets_overwrites_and_removes_one_key_leaving_the_others(ovs: OvsBed) -> None:
    ovs.vsctl("set", "Open_vSwitch", ".", "other_config:keep-me=1")
    ovsdb.set_other_config(db_socket(ovs), KEY, "true")
    assert other_config(ovs, KEY) == '"true"'
    ovsdb.set_other_config(db_socket(ovs), KEY, "false")
    assert other_config(ovs, KEY) == '"false"'
    ovsdb.set_other_config(db_socket(ovs), KEY, None)
    assert other_config(ovs, KEY) == ""
    ovsdb.set_other_config(db_socket(ovs), KEY, None)  # absent: nothing to do, no error
    assert other_config(ovs, "keep-me") == '"1"'
    ovs.vsctl("remove", "Open_vSwitch", ".", "other_config", "keep-me")


def test_no_server_is_one_line_naming_the_socket(tmp_path: Path) -> None:
    with pytest.raises(OvsUnreachable) as e:
        ovsdb.set_other_config(tmp_path / "db.sock", KEY, "true")
    assert str(tmp_path / "db.sock") in str(e.value) and "\n" not in str(e.value)


def test_a_refused_operation_is_one_line(ovs: OvsBed) -> None:
    with pytest.raises(OvsdbRefused) as e:
        ovsdb.transact(db_socket(ovs), [{"op": "mutate", "table": "Open_vSwitch", "where": [],
                                         "mutations": [["no_such_column", "delete", 1]]}],
                       "a bad mutation")
    assert "a bad mutation" in str(e.value) and "\n" not in str(e.value)


def test_applied_returns_once_ovs_vswitchd_has_caught_up(ovs: OvsBed) -> None:
    """As ovs-vsctl without --no-wait: next_cfg is bumped in the same
    transaction, and cur_cfg equals it (read with ovs-vsctl) on return."""
    before = int(ovs.vsctl("get", "Open_vSwitch", ".", "next_cfg"))
    ovsdb.set_other_config(db_socket(ovs), KEY, "true", applied=True)
    assert other_config(ovs, KEY) == '"true"'
    ovsdb.set_other_config(db_socket(ovs), KEY, None, applied=True)
    assert other_config(ovs, KEY) == ""
    assert int(ovs.vsctl("get", "Open_vSwitch", ".", "next_cfg")) == before + 2
    assert int(ovs.vsctl("get", "Open_vSwitch", ".", "cur_cfg")) == before + 2


def test_interfaces_read_in_process_are_what_ovs_vsctl_lists(
        ovs: OvsBed, monkeypatch: pytest.MonkeyPatch) -> None:
    """ovs.interfaces() (an OVSDB select, no ovs-vsctl) against ovs-vsctl's own
    list: names, types, OpenFlow numbers, requested numbers (set or not)."""
    for key, value in ovs.env.items():
        monkeypatch.setenv(key, value)
    ovs.add_bridge("brq")
    ovs.vsctl("add-port", "brq", "q1", "--", "set", "Interface", "q1", "type=internal",
              "ofport_request=7", "--", "add-port", "brq", "q2", "--", "set", "Interface", "q2",
              "type=internal")
    listed = ovs.vsctl("--format=json", "--data=json", "--columns=name,type,ofport,ofport_request",
                       "list", "Interface")
    expected = {}
    for name, kind, ofport, request in json.loads(listed)["data"]:
        number = ofport if isinstance(ofport, int) else None
        requested = request if isinstance(request, int) else None
        expected[name] = (kind, number, requested)
    got = {i.name: (i.type, i.ofport, i.ofport_request) for i in ovs_tools.interfaces()}
    assert got == expected
    assert got["q1"] == ("internal", 7, 7) and got["q2"][2] is None


def test_flow_restore_wait_on_a_switch_that_does_not_apply_it(
        ovs: OvsBed, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """ovs-vswitchd paused (SIGSTOP: busy for longer than the timeout): a set
    does not wait for it; a clear waits up to the timeout, then is a warning,
    not an error. Either way the database holds what was written (read with
    ovs-vsctl), and a failure path that clears the flag in a `finally` never
    leaves it set."""
    for key, value in ovs.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(ovsdb, "TIMEOUT", 1.0)
    pid = ovs.pid("ovs-vswitchd")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        ovs_tools.set_flow_restore_wait(True)
        assert time.monotonic() - began < 0.5
        assert other_config(ovs, KEY) == '"true"'
        with caplog.at_level(logging.WARNING):
            ovs_tools.set_flow_restore_wait(False)
        assert other_config(ovs, KEY) == ""
        assert "flow-restore-wait written, but ovs-vswitchd has not applied it" in caplog.text
    finally:
        os.kill(pid, signal.SIGCONT)


def test_started_watch_is_reached_once_a_new_daemon_has_its_bridges_and_port_numbers(
        ovs: OvsBed, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a restart waits for before it restores (instead of systemd's word
    that the unit runs). Not reached while ovs-vswitchd is down; reached once
    a new one has started, and at that moment its bridge answers on its
    OpenFlow socket (ovs-ofctl) and the database holds the new daemon's port
    numbers (one requested while it was down: ovs-vsctl reads it back)."""
    for key, value in ovs.env.items():
        monkeypatch.setenv(key, value)
    ovs.add_bridge("brw")
    ovs.vsctl("add-port", "brw", "w1", "--", "set", "Interface", "w1", "type=internal")
    old = int(ovs.vsctl("get", "Interface", "w1", "ofport"))
    ovs.stop_daemon("ovs-vswitchd")
    ovs.vsctl("--no-wait", "set", "Interface", "w1", f"ofport_request={old + 40}")
    next_cfg = ovs_tools.set_flow_restore_wait(True)
    assert next_cfg is not None
    try:
        with ovs_tools.started_watch(next_cfg, 30.0) as watch:
            assert not watch.reached(0.3)
            starter = threading.Thread(target=ovs._start_vswitchd)
            starter.start()
            deadline = time.monotonic() + 30
            while not watch.reached(0.05):
                assert time.monotonic() < deadline, "never reached"
            assert int(ovs.vsctl("get", "Interface", "w1", "ofport")) == old + 40
            assert f" {old + 40}(w1)" in ovs.ofctl("show", "brw")
            starter.join(30)
    finally:
        ovs_tools.set_flow_restore_wait(False)
    assert other_config(ovs, KEY) == ""


def test_started_watch_on_no_server_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(OvsUnreachable) as e, ovsdb.applied_watch(tmp_path / "db.sock", 1, 1.0):
        pass
    assert str(tmp_path / "db.sock") in str(e.value) and "\n" not in str(e.value)
