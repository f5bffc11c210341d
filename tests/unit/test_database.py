"""Whether a transaction restarts ovsdb-server (`ovs_service.database`): the
decision on a made-up /proc and runtime directory, the key against the one
ovs-service-hook's own shell computes, and systemd's expansion of the
options. Under a real systemd: test_systemd_lane.py
(test_database_restarted_only_when_changed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from ovs_service import database
from ovs_service.systemd import ServiceStart

HOOK = Path(__file__).resolve().parents[2] / "bin" / "ovs-service-hook"
UNIT_ARGV = ("/bin/sh", "-c", "exec ovs-service-hook ovsdb-start \"$$@\"", "ovsdb-start",
             "$OVS_CTL_OPTS")
PID = 4242


class Bed:
    """A running ovsdb-server as the decision sees it: /proc/PID, the binary on
    disk, the schema, the unit, and what ovsdb-start recorded."""

    def __init__(self, tmp: Path) -> None:
        self.proc, self.run_dir, self.share = tmp / "proc", tmp / "run", tmp / "share"
        for d in (self.proc / str(PID), self.run_dir, self.share):
            d.mkdir(parents=True)
        self.binary = tmp / "ovsdb-server"
        self.binary.write_bytes(b"\x7fELF binary")
        (self.share / "vswitch.ovsschema").write_text('{"version": "8.3.1"}')
        self.env_file = tmp / "openvswitch-switch"
        self.env_file.write_text("# OVS_CTL_OPTS=\n")
        self.cmdline = b"ovsdb-server\0/etc/openvswitch/conf.db\0--detach\0"
        process = self.proc / str(PID)
        (process / "comm").write_text("ovsdb-server\n")
        (process / "exe").symlink_to(self.binary)
        (process / "cmdline").write_bytes(self.cmdline)
        self.unit = ServiceStart(
            active=True, main_pid=PID, exec_start=(UNIT_ARGV,),
            environment=(f"OVS_PKGDATADIR={self.share}",),
            environment_files=((str(self.env_file), True),))

    def record_start(self) -> None:
        """What ovsdb-start leaves after starting the daemon through ovs-ctl."""
        key = database.key_now(self.unit, self.binary)
        assert key is not None
        (self.run_dir / database.KEY_FILE).write_text(key + "\n")
        (self.run_dir / database.ARGV_FILE).write_bytes(self.cmdline + database.REMOTE)

    def decide(self, unit: ServiceStart | None = None) -> database.Decision:
        return database.decide(unit or self.unit, self.proc, self.run_dir, self.binary)


@pytest.fixture
def bed(tmp_path: Path) -> Bed:
    bed = Bed(tmp_path)
    bed.record_start()
    return bed


def test_kept_when_nothing_changed(bed: Bed) -> None:
    decision = bed.decide()
    assert not decision.restart, decision.why
    assert f"pid {PID}" in decision.why


def test_kept_after_a_direct_start(bed: Bed) -> None:
    # The direct start runs the recorded argv, the remote included.
    (bed.proc / str(PID) / "cmdline").write_bytes(bed.cmdline + database.REMOTE)
    assert not bed.decide().restart


def test_restarted_when_the_options_changed(bed: Bed) -> None:
    bed.env_file.write_text('OVS_CTL_OPTS="--no-self-confinement"\n')
    decision = bed.decide()
    assert decision.restart and "options changed" in decision.why


def test_restarted_when_the_binary_was_replaced(bed: Bed) -> None:
    # dpkg unpacks the new file beside the old and renames it over: a new
    # inode at the path, while /proc/PID/exe still reaches the old one.
    exe = bed.proc / str(PID) / "exe"
    old = bed.binary.with_name("old-inode")
    os.link(bed.binary, old)
    exe.unlink()
    exe.symlink_to(old)
    new = bed.binary.with_name("ovsdb-server.dpkg-new")
    shutil.copy(bed.binary, new)
    os.replace(new, bed.binary)
    decision = bed.decide()
    assert decision.restart and "replaced" in decision.why, decision.why


def test_restarted_when_the_schema_changed(bed: Bed) -> None:
    (bed.share / "vswitch.ovsschema").write_text('{"version": "8.8.0", "more": 1}')
    assert bed.decide().restart


@pytest.mark.parametrize("change", ["inactive", "no key", "other command line", "not ovsdb",
                                    "no hook in ExecStart", "unreadable environment file"])
def test_restarted_when_it_cannot_tell(bed: Bed, change: str) -> None:
    unit = bed.unit
    if change == "inactive":
        unit = replace(unit, active=False)
    elif change == "no key":
        (bed.run_dir / database.KEY_FILE).unlink()
    elif change == "other command line":
        (bed.proc / str(PID) / "cmdline").write_bytes(b"ovsdb-server\0--other\0")
    elif change == "not ovsdb":
        (bed.proc / str(PID) / "comm").write_text("bash\n")  # a reused PID
    elif change == "no hook in ExecStart":
        unit = replace(unit, exec_start=(("/usr/share/openvswitch/scripts/ovs-ctl", "start"),))
    elif change == "unreadable environment file":
        unit = replace(unit, environment_files=((str(bed.env_file) + ".gone", False),))
    decision = bed.decide(unit)
    assert decision.restart, change
    assert decision.why.startswith("restarted: ")


def test_key_is_the_hooks(bed: Bed) -> None:
    """key_now computes what the hook's own `key=` line does, in sh, with the
    same options: the decision compares the two."""
    binary = Path("/usr/sbin/ovsdb-server")
    if not binary.exists():
        pytest.skip("Open vSwitch is not installed")
    line = next(m.group(0) for m in re.finditer(r"^\s*key=.*$", HOOK.read_text(), re.M))
    assert "/usr/sbin/ovsdb-server" in line, "the hook keys another binary than database.BINARY"
    options = "--no-self-confinement   --ovsdb-server-options=--x"
    bed.env_file.write_text(f"OVS_CTL_OPTS='{options}'\n")
    script = f'schema={bed.share}/vswitch.ovsschema\n{line.strip()}\nprintf %s "$key"'
    shell = subprocess.run(["sh", "-c", script, "sh", *options.split()],
                           capture_output=True, text=True, check=True).stdout
    assert database.key_now(bed.unit, binary) == shell


def test_expansion_is_systemds() -> None:
    env = {"OPTS": "  --a   --b=c ", "ONE": "x y", "EMPTY": ""}
    assert database.expand(("$OPTS", "${ONE}", "pre${ONE}post", "$EMPTY", "$UNSET", "$$OPTS",
                            "lit"), env) == [
        "--a", "--b=c", "x y", "prex ypost", "$OPTS", "lit"]


def test_environment_file_parsing() -> None:
    text = ("# a comment\n; another\n\n  OVS_CTL_OPTS = \"--a  --b\"  \n"
            "SINGLE='it''s'\nCONT=one \\\ntwo\nEMPTY=\n")
    assert database.parse_env_file(text) == {
        "OVS_CTL_OPTS": "--a  --b", "SINGLE": "its", "CONT": "one two", "EMPTY": ""}
    assert database.parse_env_file("not an assignment\n") is None
    assert database.parse_env_file("X='unterminated\n") is None


def test_environment_files_override_environment(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("A=from-file\n")
    unit = ServiceStart(active=True, main_pid=1, exec_start=(),
                        environment=("A=from-unit", "B=kept"),
                        environment_files=((str(env_file), False),
                                           (str(tmp_path / "missing"), True)))
    assert database.environment(unit) == {"A": "from-file", "B": "kept"}
