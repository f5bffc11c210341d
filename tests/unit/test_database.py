"""Whether a transaction restarts ovsdb-server (`ovs_service.database`): the
decision on a made-up /proc and runtime directory (with a real database
made by ovsdb-tool), the key against the one ovs-service-hook's own shell
computes, and the expansion of the options. Against systemd's own
expansion, under a real systemd: test_systemd_lane.py
(test_database_restarted_only_when_changed)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from ovs_service import database
from ovs_service.systemd import ServiceStart

HOOK = Path(__file__).resolve().parents[2] / "bin" / "ovs-service-hook"
SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
pytestmark = pytest.mark.skipif(not SCHEMA.exists() or not shutil.which("ovsdb-tool"),
                                reason="Open vSwitch is not installed")
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
        self.schema = self.share / "vswitch.ovsschema"
        shutil.copy(SCHEMA, self.schema)
        self.db = tmp / "conf.db"
        subprocess.run(["ovsdb-tool", "create", str(self.db), str(self.schema)], check=True)
        self.env_file = tmp / "openvswitch-switch"
        self.env_file.write_text("# OVS_CTL_OPTS=\n")
        self.unit_file = tmp / "ovsdb-server.service"
        self.unit_file.write_text("[Service]\n")
        self.cmdline = b"ovsdb-server\0/etc/openvswitch/conf.db\0--detach\0"
        process = self.proc / str(PID)
        (process / "comm").write_text("ovsdb-server\n")
        (process / "exe").symlink_to(self.binary)
        (process / "cmdline").write_bytes(self.cmdline)
        (process / "maps").write_text(
            f"55d0-55d1 r-xp 00000000 fd:01 42 {self.binary}\n"
            "7f00-7f01 r-xp 00000000 fd:01 43 /usr/lib/x86_64-linux-gnu/libssl.so.3\n"
            "7f02-7f03 rw-s 00000000 00:01 44 /memfd:scratch (deleted)\n")
        self.unit = ServiceStart(
            active=True, main_pid=PID, exec_start=(UNIT_ARGV,),
            environment=(f"OVS_PKGDATADIR={self.share}", f"OVS_DBDIR={tmp}"),
            environment_files=((str(self.env_file), True),),
            unit_files=(str(self.unit_file),))

    def record_start(self) -> None:
        """What ovsdb-start leaves after starting the daemon through ovs-ctl."""
        key = database.key_now(self.unit, database.environment(self.unit), self.binary)
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


def test_restarted_when_the_environment_file_changed(bed: Bed) -> None:
    bed.env_file.write_text('OVS_CTL_OPTS="--no-self-confinement"\n')
    decision = bed.decide()
    assert decision.restart and "environment files changed" in decision.why, decision.why


def test_restarted_when_the_managers_environment_changed(bed: Bed) -> None:
    # systemctl set-environment OVS_CTL_OPTS=...: every unit's commands get
    # it, and no file changed.
    decision = bed.decide(replace(bed.unit, manager_environment=("OVS_CTL_OPTS=--x",)))
    assert decision.restart and "its options changed" in decision.why, decision.why


@pytest.mark.parametrize("variable", ["OVS_LOGDIR=/var/log/elsewhere", "OVSDB_OPTS=-v",
                                      "LD_PRELOAD=/usr/lib/libjemalloc.so.2"])
def test_restarted_when_a_variable_from_the_manager_changed(bed: Bed, variable: str) -> None:
    # systemctl set-environment OVS_LOGDIR=...: ovs-ctl and the daemon read it,
    # and it is in neither a file nor the options.
    decision = bed.decide(replace(bed.unit, manager_environment=(variable,)))
    assert decision.restart and "its environment" in decision.why, decision.why


def test_kept_when_another_variable_of_the_manager_changed(bed: Bed) -> None:
    decision = bed.decide(replace(bed.unit, manager_environment=("HTTP_PROXY=http://proxy",)))
    assert not decision.restart, decision.why


def test_restarted_when_a_unit_file_changed(bed: Bed) -> None:
    # A drop-in's LimitNOFILE=, Nice=...: nothing in the options, all in the files.
    bed.unit_file.write_text("[Service]\nLimitNOFILE=4096\n")
    decision = bed.decide()
    assert decision.restart and "unit files" in decision.why, decision.why


def test_restarted_when_the_unit_is_not_loaded_as_it_is_on_disk(bed: Bed) -> None:
    decision = bed.decide(replace(bed.unit, needs_reload=True))
    assert decision.restart and "daemon-reload" in decision.why, decision.why


def test_dpkgs_guard_drop_in_is_not_part_of_the_key(bed: Bed) -> None:
    # The guard is there while dpkg restarts the database, gone by the next
    # transaction: no restart for that alone.
    guard = bed.unit_file.with_name("zz-ovs-service-dpkg.conf")
    guard.write_text("[Service]\n")
    with_guard = replace(bed.unit, unit_files=(*bed.unit.unit_files, str(guard)))
    assert database.key_now(with_guard, {}, bed.binary) == database.key_now(bed.unit, {},
                                                                            bed.binary)


def test_restarted_when_a_library_was_replaced(bed: Bed) -> None:
    maps = bed.proc / str(PID) / "maps"
    maps.write_text(maps.read_text().replace("libssl.so.3\n", "libssl.so.3 (deleted)\n"))
    decision = bed.decide()
    assert decision.restart and "libssl.so.3 was replaced" in decision.why, decision.why


def test_restarted_when_the_database_is_missing(bed: Bed) -> None:
    bed.db.unlink()
    decision = bed.decide()
    assert decision.restart and "conf.db is missing" in decision.why, decision.why


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
                                    "no hook in ExecStart", "missing environment file",
                                    "wildcard environment file", "PassEnvironment="])
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
    elif change == "missing environment file":
        unit = replace(unit, environment_files=((str(bed.env_file) + ".gone", False),))
    elif change == "wildcard environment file":
        unit = replace(unit, environment_files=((str(bed.env_file.parent / "*.env"), True),))
    elif change == "PassEnvironment=":
        unit = replace(unit, pass_environment=("OVS_CTL_OPTS",))
    decision = bed.decide(unit)
    assert decision.restart, change
    assert decision.why.startswith("restarted: "), decision.why


def test_odd_bytes_and_lines_in_the_environment_file_do_not_stop_the_decision(bed: Bed) -> None:
    # systemd reads these without complaint: so must the decision (which
    # then compares what it reads with what it read before).
    bed.env_file.write_bytes(b"# ge\xe4ndert\nexport FOO=1\nnot an assignment\n"
                             b"OVS_CTL_OPTS=--no-self-confinement\n")
    bed.record_start()
    assert not bed.decide().restart


def test_key_is_the_hooks(bed: Bed) -> None:
    """key_now computes what the hook's own `key=` statement does, in sh, given
    the same arguments: the decision compares the two. (Which arguments
    systemd passes is the lane's to check.)"""
    binary = Path("/usr/sbin/ovsdb-server")
    if not binary.exists():
        pytest.skip("Open vSwitch is not installed")
    text = HOOK.read_text()
    statement = re.search(r'^\s*key="\$\(stat.*?\|\$\*"$', text, re.M | re.S)
    assert statement, "no key= statement in the hook"
    assert "/usr/sbin/ovsdb-server" in statement.group(0), "the hook keys another binary"
    bed.env_file.write_text("OVS_CTL_OPTS='--no-self-confinement   --x=\"a b\"'\n")
    args = ["--no-self-confinement", "--x=a b"]  # what systemd passes for $OVS_CTL_OPTS
    files = sorted([str(bed.unit_file), str(bed.env_file), str(bed.env_file) + ".missing"])
    unit = replace(bed.unit, environment_files=(*bed.unit.environment_files,
                                                (files[-1], True)))
    env_key = re.search(r"^env_key\(\) \{$.*?^\}$", text, re.M | re.S)
    assert env_key, "no env_key in the hook"
    script = (f"{env_key.group(0)}\nunits={shlex.quote(chr(10).join(files))}\n"
              f"schema={shlex.quote(str(bed.schema))}\n{statement.group(0).strip()}\n"
              'printf %s "$key"')
    # The hook runs with the unit's environment, as systemd gives it; an
    # odd byte and a newline in values, and a variable that is not keyed.
    env = {**database.environment(unit), "OVS_ODD": "a\nb \udcff", "LD_LIBRARY_PATH": "/x",
           "OTHER": "not keyed", "PATH": os.environ["PATH"]}
    shell = subprocess.run(["sh", "-c", script, "sh", *args], capture_output=True,
                           env={k: v.encode("utf-8", "surrogateescape") for k, v in env.items()},
                           check=True).stdout.decode()
    assert database.key_now(unit, env, binary) == shell
    assert database.key_now(unit, {**env, "OTHER": "changed"}, binary) == shell
    assert database.key_now(unit, {**env, "OVS_ODD": "changed"}, binary) != shell


def test_expansion_is_systemds() -> None:
    env = {"OPTS": "  --a   --b=c ", "ONE": "x y", "EMPTY": "",
           "QUOTED": "--ovsdb-server-options='-vconsole:info -vsyslog:info'"}
    assert database.expand(("$OPTS", "${ONE}", "pre${ONE}post", "$EMPTY", "$UNSET", "$$OPTS",
                            "lit", "$QUOTED"), env) == [
        "--a", "--b=c", "x y", "prex ypost", "$OPTS", "lit",
        "--ovsdb-server-options=-vconsole:info -vsyslog:info"]


def test_environment_file_parsing() -> None:
    text = ("# a comment\n; another\n\n  OVS_CTL_OPTS = \"--a  --b\"  \n"
            "SINGLE='it''s'\nCONT=one \\\ntwo\nEMPTY=\nexport SKIPPED=1\nnot one\n")
    assert database.parse_env_file(text) == {
        "OVS_CTL_OPTS": "--a  --b", "SINGLE": "its", "CONT": "one two", "EMPTY": ""}


def test_restarted_with_an_unbalanced_quote(bed: Bed) -> None:
    bed.env_file.write_text("OVS_CTL_OPTS='--no-self-confinement\n")
    decision = bed.decide()
    assert decision.restart and "unbalanced quote in OVS_CTL_OPTS" in decision.why, decision.why


def test_environment_files_override_environment(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("A=from-file\n")
    unit = ServiceStart(active=True, main_pid=1, exec_start=(),
                        environment=("A=from-unit", "B=kept"),
                        environment_files=((str(env_file), False),
                                           (str(tmp_path / "missing"), True)))
    assert database.environment(unit) == {"A": "from-file", "B": "kept"}


def test_hooks_unit_files_reads_systemctl_show(tmp_path: Path) -> None:
    """The hook's unit_files(): the paths of `systemctl show` (here a stand-in
    printing what systemd 252 prints), sorted, without dpkg-hook's guard, and
    the marker last when the unit is not loaded as it is on disk."""
    function = re.search(r"^unit_files\(\) \{.*?^\}$", HOOK.read_text(), re.M | re.S)
    assert function, "no unit_files() in the hook"
    show = ("NeedDaemonReload={reload}\n"
            "FragmentPath=/lib/systemd/system/ovsdb-server.service\n"
            "DropInPaths=/lib/systemd/system/ovsdb-server.service.d/ovs-service.conf "
            "/run/systemd/system/ovsdb-server.service.d/zz-ovs-service-dpkg.conf "
            "/etc/systemd/system/ovsdb-server.service.d/a.conf\n"
            "EnvironmentFiles=/etc/default/openvswitch-switch (ignore_errors=yes)\n")
    stub = tmp_path / "systemctl"

    def listed(reload: str) -> list[str]:
        stub.write_text(f"#!/bin/sh\nprintf '%s' {shlex.quote(show.format(reload=reload))}\n")
        stub.chmod(0o755)
        out = subprocess.run(["sh", "-c", f"{function.group(0)}\nunit_files"],
                             env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
                             capture_output=True, text=True, check=True).stdout
        return out.splitlines()

    paths = ["/etc/default/openvswitch-switch",
             "/etc/systemd/system/ovsdb-server.service.d/a.conf",
             "/lib/systemd/system/ovsdb-server.service",
             "/lib/systemd/system/ovsdb-server.service.d/ovs-service.conf"]
    assert listed("no") == paths
    assert listed("yes") == [*paths, "needs-daemon-reload"]
