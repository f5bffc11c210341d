"""The in-process OVSDB client against a real ovsdb-server: what it writes is
read back with ovs-vsctl, and a failure is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

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
