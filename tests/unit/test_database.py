"""Whether a transaction restarts ovsdb-server (`ovs_service.database`): the
decision on a made-up /proc and runtime directory (with a real database
made by ovsdb-tool, and a stand-in `systemctl show-environment`), and the
key against the one ovs-service-hook's own shell computes. Under a real
systemd: test_systemd_lane.py (test_database_restarted_only_when_changed)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
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
MANAGER_ENVIRONMENT = "LANG=C.UTF-8\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin\n"


class Bed:
    """A running ovsdb-server as the decision sees it: /proc/PID, the binary on
    disk, the schema, the unit, the manager's environment, and what
    ovsdb-start recorded."""

    def __init__(self, tmp: Path) -> None:
        self.proc, self.run_dir, self.share = tmp / "proc", tmp / "run", tmp / "share"
        for d in (self.proc / str(PID) / "fd", self.run_dir, self.share):
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
        self.manager = tmp / "manager-environment"
        self.manager.write_text(MANAGER_ENVIRONMENT)
        self.cmdline = b"ovsdb-server\0/etc/openvswitch/conf.db\0--detach\0"
        process = self.proc / str(PID)
        (process / "comm").write_text("ovsdb-server\n")
        (process / "exe").symlink_to(self.binary)
        (process / "cmdline").write_bytes(self.cmdline)
        (process / "fd" / "17").symlink_to(self.db)
        (process / "maps").write_text(
            f"55d0-55d1 r-xp 00000000 fd:01 42 {self.binary}\n"
            "7f00-7f01 r-xp 00000000 fd:01 43 /usr/lib/x86_64-linux-gnu/libssl.so.3\n"
            "7f02-7f03 rw-s 00000000 00:01 44 /memfd:scratch (deleted)\n")
        self.unit = ServiceStart(
            active=True, main_pid=PID, exec_start=(UNIT_ARGV,),
            environment_files=((str(self.env_file), True),),
            unit_files=(str(self.unit_file),))

    def key(self, unit: ServiceStart | None = None) -> database.Key:
        return database.key_now(unit or self.unit, self.db, self.schema, self.binary)

    def record_start(self) -> None:
        """What ovsdb-start leaves after starting the daemon through ovs-ctl."""
        (self.run_dir / database.KEY_FILE).write_text(self.key().text() + "\n")
        (self.run_dir / database.ARGV_FILE).write_bytes(self.cmdline + database.REMOTE)

    def decide(self, unit: ServiceStart | None = None) -> database.Decision:
        return database.decide(unit or self.unit, self.proc, self.run_dir, self.binary)


@pytest.fixture
def bed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bed]:
    bed = Bed(tmp_path)
    monkeypatch.setattr(database, "SHOW_ENVIRONMENT", ("cat", str(bed.manager)))
    bed.record_start()
    yield bed


def test_kept_when_nothing_changed(bed: Bed) -> None:
    decision = bed.decide()
    assert not decision.restart, decision.why
    assert f"pid {PID}" in decision.why


def test_kept_after_a_direct_start(bed: Bed) -> None:
    # The direct start runs the recorded argv, the remote included.
    (bed.proc / str(PID) / "cmdline").write_bytes(bed.cmdline + database.REMOTE)
    assert not bed.decide().restart


@pytest.mark.parametrize("text", ['OVS_CTL_OPTS="--no-self-confinement"\n',
                                  # Whitespace alone: systemd passes a different value.
                                  "# OVS_CTL_OPTS= \n"])
def test_restarted_when_the_environment_file_changed(bed: Bed, text: str) -> None:
    bed.env_file.write_text(text)
    decision = bed.decide()
    assert decision.restart and "environment files changed" in decision.why, decision.why


def test_kept_with_an_environment_file_systemd_reads_its_own_way(bed: Bed) -> None:
    # A continued line, tabs, quotes next to each other: what systemd makes of
    # them is systemd's business; the file is the same, so the options are.
    bed.env_file.write_text("OVS_CTL_OPTS=--no-self-confinement \\\n\t--x=\"a\" \"b\"  # c\n")
    bed.record_start()
    assert not bed.decide().restart


@pytest.mark.parametrize("variable", ["OVS_CTL_OPTS=--x", "OVS_LOGDIR=/var/log/elsewhere",
                                      "LD_PRELOAD=/usr/lib/libjemalloc.so.2",
                                      "GLIBC_TUNABLES=glibc.malloc.arena_max=2", "TZ=UTC"])
def test_restarted_when_the_managers_environment_changed(bed: Bed, variable: str) -> None:
    # systemctl set-environment: every unit's commands get it, and no file changed.
    bed.manager.write_text(MANAGER_ENVIRONMENT + variable + "\n")
    decision = bed.decide()
    assert decision.restart and "the manager's environment" in decision.why, decision.why


def test_restarted_when_a_unit_file_changed(bed: Bed) -> None:
    # A drop-in's LimitNOFILE=, Nice=...: nothing in the options, all in the files.
    bed.unit_file.write_text("[Service]\nLimitNOFILE=4096\n")
    decision = bed.decide()
    assert decision.restart and "unit's files" in decision.why, decision.why


def test_restarted_after_an_edit_of_the_same_size_in_the_same_second(bed: Bed) -> None:
    # Same inode, size and mtime to the second: only the contents tell.
    bed.unit_file.write_text("[Service]\nLimitNOFILE=65536\n")
    bed.record_start()
    stat = bed.unit_file.stat()
    bed.unit_file.write_text("[Service]\nLimitNOFILE=16384\n")
    os.utime(bed.unit_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert bed.decide().restart


def test_restarted_when_a_drop_in_was_renamed(bed: Bed) -> None:
    # systemd applies drop-ins in the order of their names, whatever their
    # folder: the same contents under another name may apply in another order.
    renamed = bed.unit_file.with_name("00-" + bed.unit_file.name)
    bed.unit_file.rename(renamed)
    decision = bed.decide(replace(bed.unit, unit_files=(str(renamed),)))
    assert decision.restart and "unit's files" in decision.why, decision.why


def test_the_direct_start_gets_the_niceness_and_core_limit_ovs_ctl_gave(tmp_path: Path) -> None:
    """The hook's daemon_settings reads them from the daemon ovs-ctl started;
    apply_settings gives them to the process that then execs the daemon."""
    text = HOOK.read_text()
    functions = [re.search(rf"^{name}\(\) \{{$.*?^\}}$", text, re.M | re.S)
                 for name in ("say", "stat_field", "daemon_settings", "apply_settings")]
    assert all(functions), "no daemon_settings or apply_settings in the hook"
    defs = "\n".join(f.group(0) for f in functions if f)
    sleeper = subprocess.Popen(["sh", "-c", "renice -n 7 -p $$ >/dev/null; ulimit -c 0; "
                                "exec sleep 30"])
    try:
        for _ in range(100):  # until it is sleep, with its settings
            if Path(f"/proc/{sleeper.pid}/comm").read_text().strip() == "sleep":
                break
            subprocess.run(["sleep", "0.01"], check=True)
        recorded = subprocess.run(["sh", "-c", f"{defs}\ndaemon_settings {sleeper.pid}"],
                                  capture_output=True, text=True, check=True).stdout.split()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert recorded[:2] == ["7", "0"], recorded
    (tmp_path / "ovsdb-server.settings").write_text(" ".join(recorded) + "\n")
    applied = subprocess.run(
        ["sh", "-c", f"{defs}\nRUN={shlex.quote(str(tmp_path))}; HOOK=ovsdb-start\n"
         "apply_settings\nexec cat /proc/self/stat /proc/self/limits"],
        capture_output=True, text=True, check=True).stdout
    stat, _, limits = applied.partition("\n")
    assert stat.rpartition(") ")[2].split()[16] == "7"
    assert re.search(r"^Max core file size +0 ", limits, re.M), limits


def test_restarted_when_the_unit_is_not_loaded_as_it_is_on_disk(bed: Bed) -> None:
    decision = bed.decide(replace(bed.unit, needs_reload=True))
    assert decision.restart and "daemon-reload" in decision.why, decision.why


def test_restarted_when_started_with_files_not_loaded(bed: Bed) -> None:
    # That start ran the old definition: no later key may match it.
    key = replace(bed.key(), needs_reload=True)
    (bed.run_dir / database.KEY_FILE).write_text(key.text() + "\n")
    assert bed.decide().restart


def test_dpkgs_guard_drop_in_is_not_part_of_the_key(bed: Bed) -> None:
    # The guard is there while dpkg restarts the database, gone by the next
    # transaction: no restart for that alone.
    guard = bed.unit_file.with_name("zz-ovs-service-dpkg.conf")
    guard.write_text("[Service]\n")
    with_guard = replace(bed.unit, unit_files=(*bed.unit.unit_files, str(guard)))
    assert bed.key(with_guard) == bed.key()


def test_restarted_when_a_library_was_replaced(bed: Bed) -> None:
    maps = bed.proc / str(PID) / "maps"
    maps.write_text(maps.read_text().replace("libssl.so.3\n", "libssl.so.3 (deleted)\n"))
    decision = bed.decide()
    assert decision.restart and "libssl.so.3 was replaced" in decision.why, decision.why


def test_restarted_when_the_database_file_was_replaced(bed: Bed) -> None:
    # A backup put back by a rename: the daemon holds the old file, and would
    # write it over the new one at its next compaction.
    fd = bed.proc / str(PID) / "fd" / "17"
    fd.unlink()
    fd.symlink_to(f"{os.path.realpath(bed.db)} (deleted)")
    decision = bed.decide()
    assert decision.restart and "conf.db was replaced" in decision.why, decision.why


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
    decision = bed.decide()
    assert decision.restart and "schema changed" in decision.why, decision.why


def test_restarted_when_the_database_needs_converting(bed: Bed) -> None:
    schema = bed.schema.read_text()
    old = re.search(r'"version": "([0-9.]+)"', schema)
    assert old
    # The same schema under a newer version number: the key's stat changes
    # too, so record the start again to test the conversion alone.
    bed.schema.write_text(schema.replace(old.group(0), '"version": "99.0.0"'))
    bed.record_start()
    decision = bed.decide()
    assert decision.restart and "needs converting" in decision.why, decision.why


@pytest.mark.parametrize("change", ["inactive", "no key", "key of another version",
                                    "other command line", "not ovsdb", "no hook in ExecStart",
                                    "wildcard environment file", "PassEnvironment=",
                                    "unreadable unit file", "no systemctl"])
def test_restarted_when_it_cannot_tell(bed: Bed, change: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    unit = bed.unit
    if change == "inactive":
        unit = replace(unit, active=False)
    elif change == "no key":
        (bed.run_dir / database.KEY_FILE).unlink()
    elif change == "key of another version":
        (bed.run_dir / database.KEY_FILE).write_text("1:2:3:4,|--opts\n")
    elif change == "other command line":
        (bed.proc / str(PID) / "cmdline").write_bytes(b"ovsdb-server\0--other\0")
    elif change == "not ovsdb":
        (bed.proc / str(PID) / "comm").write_text("bash\n")  # a reused PID
    elif change == "no hook in ExecStart":
        unit = replace(unit, exec_start=(("/usr/share/openvswitch/scripts/ovs-ctl", "start"),))
    elif change == "wildcard environment file":
        unit = replace(unit, environment_files=((str(bed.env_file.parent / "*.env"), True),))
    elif change == "PassEnvironment=":
        unit = replace(unit, pass_environment=("OVS_CTL_OPTS",))
    elif change == "unreadable unit file":
        unit = replace(unit, unit_files=(str(bed.unit_file.parent),))  # a folder
    elif change == "no systemctl":
        monkeypatch.setattr(database, "SHOW_ENVIRONMENT", ("false",))
    decision = bed.decide(unit)
    assert decision.restart, change
    assert decision.why.startswith("restarted: "), decision.why


def test_key_is_the_hooks(bed: Bed) -> None:
    """key_now computes what the hook's own start_key does, in sh, given the
    same files and the same manager environment (stand-ins for systemctl):
    the decision compares the two. (Which files systemd names is the lane's
    to check.)"""
    binary = Path("/usr/sbin/ovsdb-server")
    if not binary.exists():
        pytest.skip("Open vSwitch is not installed")
    text = HOOK.read_text()
    functions = [re.search(rf"^{name}\(\) \{{$.*?^\}}$", text, re.M | re.S)
                 for name in ("manager_key", "start_key")]
    assert all(functions), "no manager_key or start_key in the hook"
    bed.env_file.write_bytes(b"OVS_CTL_OPTS='--no-self-confinement \\\n  --x=\"a b\"'\xff\n")
    # sha256sum marks a name with a backslash (and a name with a space would
    # be two words to the hook: a restart every time, never a wrong keep).
    odd = bed.env_file.with_name("odd\\name")
    odd.write_text("A=1\n")
    files = sorted([str(bed.unit_file), str(bed.env_file), str(odd),
                    str(bed.env_file) + ".missing"])
    unit = replace(bed.unit, environment_files=(*bed.unit.environment_files,
                                                (str(odd), True), (files[-1], True)))
    bed.manager.write_text(MANAGER_ENVIRONMENT + "TZ=$'\\303\\251t\\303\\251'\n")
    stubs = bed.run_dir / "bin"
    stubs.mkdir()
    (stubs / "systemctl").write_text(
        f"#!/bin/sh\ncase $1 in show-environment) cat {shlex.quote(str(bed.manager))} ;;\n"
        f"*) printf '%s\\n' {' '.join(shlex.quote(f) for f in files)} ;; esac\n")
    (stubs / "systemctl").chmod(0o755)
    hook_unit_files = "unit_files() { systemctl show; }\n"
    manager_key, start_key = (f.group(0) for f in functions if f)
    script = (f"{hook_unit_files}{manager_key}\n{start_key}\n"
              f"db={shlex.quote(str(bed.db))}; schema={shlex.quote(str(bed.schema))}\n"
              "start_key")
    shell = subprocess.run(["sh", "-c", script], capture_output=True, check=True,
                           env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"}
                           ).stdout.decode()
    assert database.key_now(unit, bed.db, bed.schema, binary).text() == shell
    assert database.Key.parse(shell).database() == (bed.db, bed.schema)


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
