"""The dpkg hook's online conversion (`dpkg-hook convert`, run by its post
after the dpkg run that unpacked a new schema) against a real ovsdb-server.

The private switch (`ovs`) serves Open vSwitch 3.1's schema; the "unpacked"
schema is a copy with a later version, written where the hook reads it
(OVS_PKGDATADIR), with a new column, or with a bound the data does not fit.
The upgrade lane (tests/lanes/test_upgrade_lane.py) runs the same hook on a
real 3.1 -> 3.5 upgrade and back.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

from tests.harness import REPO
from tests.harness.ovsbed import SCHEMA, OvsBed

HOOK = REPO / "packaging" / "dpkg" / "dpkg-hook"


def _schema(folder: Path, version: str, change: str) -> Path:
    schema = json.loads(SCHEMA.read_text())
    schema["version"] = version
    tables = schema["tables"]
    if change == "new column":
        tables["Open_vSwitch"]["columns"]["x_unpacked"] = {
            "type": {"key": "string", "min": 0, "max": 1}}
    elif change == "one prefix at most":
        tables["Flow_Table"]["columns"]["prefixes"]["type"]["max"] = 1
    folder.mkdir(exist_ok=True)
    (folder / "vswitch.ovsschema").write_text(json.dumps(schema))
    return folder


def _convert(ovs: OvsBed, pkgdata: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OVS_RUNDIR": str(ovs.dir), "OVS_PKGDATADIR": str(pkgdata)}
    return subprocess.run(["/bin/sh", str(HOOK), "convert"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def _server_version(ovs: OvsBed) -> str:
    return subprocess.run(
        ["ovsdb-client", "get-schema-version", f"unix:{ovs.dir / 'db.sock'}", "Open_vSwitch"],
        capture_output=True, text=True, check=True).stdout.strip()


def _state(ovs: OvsBed) -> tuple[str, str]:
    return ovs.vsctl("show"), ovs.ofctl("dump-flows", "--no-stats", "br0")


def _backups(ovs: OvsBed) -> list[Path]:
    return sorted(ovs.dir.glob("conf.db.backup*"))


def _leftovers(ovs: OvsBed) -> list[Path]:
    """What the hook's work may leave: its folder, a trial, a lock."""
    return sorted(p for p in ovs.dir.iterdir()
                  if p.name.startswith(".ovs-service-convert") or "trial" in p.name
                  or (p.name.startswith(".conf.db.backup") and p.name.endswith("~lock~")))


def test_the_running_database_takes_the_unpacked_schema(ovs: OvsBed, tmp_path: Path) -> None:
    ovs.add_bridge("br0")
    ovs.ofctl("add-flow", "br0", "priority=5,ip,actions=drop")
    before = _state(ovs)
    db = ovs.dir / "conf.db"
    db.chmod(0o640)
    proc = _convert(ovs, _schema(tmp_path / "pkgdata", "8.99.0", "new column"))
    assert proc.returncode == 0, proc.stderr
    assert "converted the database online from schema 8.3.1 to 8.99.0" in proc.stderr
    assert _server_version(ovs) == "8.99.0"
    # The server serves the new column; the daemons run on, nothing was lost.
    served = json.loads(subprocess.run(
        ["ovsdb-client", "get-schema", f"unix:{ovs.dir / 'db.sock'}", "Open_vSwitch"],
        capture_output=True, text=True, check=True).stdout)
    assert "x_unpacked" in served["tables"]["Open_vSwitch"]["columns"]
    assert _state(ovs) == before
    # ovs-ctl's backup, of the old schema, no more readable than the database.
    [backup] = _backups(ovs)
    assert backup.name.startswith("conf.db.backup8.3.1-")
    assert stat.S_IMODE(backup.stat().st_mode) == 0o640
    version = subprocess.run(["ovsdb-tool", "db-version", str(backup)], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert version == "8.3.1"
    assert _leftovers(ovs) == []


def test_data_the_new_schema_does_not_take_stops_dpkg(ovs: OvsBed, tmp_path: Path) -> None:
    """Two prefixes where the unpacked schema allows one: ovs-ctl's conversion
    at the restart would fail and start on an empty database (and a 3.5 server
    converting online crashed on the like). Tried offline first: the hook
    fails (dpkg fails, apt stops before the configure), the live database
    untouched, the backup kept."""
    ovs.add_bridge("br0")
    ovs.vsctl("--no-wait", "--", "--id=@ft", "create", "Flow_Table",
              "prefixes=ip_dst,ip_src", "--", "set", "Bridge", "br0", "flow_tables:0=@ft")
    before = _state(ovs)
    pid = ovs.pid("ovsdb-server")
    proc = _convert(ovs, _schema(tmp_path / "pkgdata", "8.99.0", "one prefix at most"))
    assert proc.returncode == 1, proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith("ovs-service: refusing to go on: the database does not convert "
                           "to schema 8.99.0 (ovsdb-tool: syntax "), line
    assert "on an empty one" in line and "dpkg --configure -a" in line
    assert _server_version(ovs) == "8.3.1"
    assert ovs.pid("ovsdb-server") == pid and _state(ovs) == before
    # The backup, named in the line, stays for the operator; nothing else is left.
    [backup] = _backups(ovs)
    assert f"(backup: {backup})" in line
    assert _leftovers(ovs) == []


def test_a_folder_others_may_write_is_left_alone(ovs: OvsBed, tmp_path: Path) -> None:
    """Where another user may write beside the database, they could plant a
    link where the backup goes: no backup, no conversion (ovs-ctl's, at the
    restart, as without the hook)."""
    ovs.dir.chmod(0o777)
    try:
        proc = _convert(ovs, _schema(tmp_path / "pkgdata", "8.99.0", "new column"))
    finally:
        ovs.dir.chmod(0o700)
    assert proc.returncode == 0
    assert "is not root's alone: the database is left for ovs-ctl" in proc.stderr
    assert _server_version(ovs) == "8.3.1"
    assert _backups(ovs) == [] and _leftovers(ovs) == []


def test_nothing_happens_when_the_schema_is_the_one_served(ovs: OvsBed,
                                                          tmp_path: Path) -> None:
    pkgdata = tmp_path / "pkgdata"
    pkgdata.mkdir()
    (pkgdata / "vswitch.ovsschema").write_text(SCHEMA.read_text())
    proc = _convert(ovs, pkgdata)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert _backups(ovs) == []


def test_no_server_no_conversion(tmp_path: Path) -> None:
    """No ovsdb-server where the pidfile says (none, or a pid that is not it)."""
    rundir = tmp_path / "run"
    rundir.mkdir()
    env = {**os.environ, "OVS_RUNDIR": str(rundir),
           "OVS_PKGDATADIR": str(_schema(tmp_path / "pkgdata", "8.99.0", "new column"))}
    for pidfile in (None, f"{os.getpid()}\n"):
        if pidfile:
            (rundir / "ovsdb-server.pid").write_text(pidfile)
        proc = subprocess.run(["/bin/sh", str(HOOK), "convert"], env=env, capture_output=True,
                              text=True, timeout=30, check=False)
        assert (proc.returncode, proc.stderr) == (0, "")
