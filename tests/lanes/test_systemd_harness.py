"""The systemd lane: its harness, and ovs-service's units under a real systemd.

Each test boots its own systemd namespace (well under a second here) so that
no test sees another's units or daemons. The unit tests replace
ovs-service-hook, inside the namespace only, with a stand-in that records
which hook ran and which daemons were alive at that moment; the order of
those records is what the units promise.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.systemd_ns import SystemdNamespace, booted

pytestmark = [pytest.mark.systemd, pytest.mark.root]

UNITS = Path(__file__).resolve().parents[2] / "units"
OUR_UNITS = [UNITS / n for n in ("ovsdb-server.service", "ovs-vswitchd.service")]
UMBRELLA = UNITS / "openvswitch.service"
DROPINS = [UNITS / "dropins" / n for n in ("ovsdb-server.service.d", "ovs-vswitchd.service.d")]

OVS_CTL = Path("/usr/share/openvswitch/scripts/ovs-ctl")
HOOK_LOG = "/run/ovs-service-test/hooks.log"
STAND_IN_HOOK = f"""#!/usr/bin/python3
# Stand-in for ovs-service-hook: records the hook and what was alive.
import json, os, socket, sys

if sys.argv[1] == "ovsdb-start":  # ovsdb-server's start: ovs-ctl's, as without the hook
    ctl = "{OVS_CTL}"
    os.execv(ctl, [ctl, "--no-ovs-vswitchd", "--no-monitor", "--system-id=random",
                   "--no-record-hostname", "start", *sys.argv[2:]])

def alive(name):
    try:
        pid = int(open(f"/run/openvswitch/{{name}}.pid").read())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None

def db_answers():
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect("/run/openvswitch/db.sock")
        return True
    except OSError:
        return False
    finally:
        s.close()

record = {{"hook": sys.argv[1], "vswitchd": alive("ovs-vswitchd"),
          "ovsdb": alive("ovsdb-server"), "db": db_answers()}}
os.makedirs(os.path.dirname("{HOOK_LOG}"), exist_ok=True)
with open("{HOOK_LOG}", "a") as f:
    f.write(json.dumps(record) + "\\n")
import sdnotify
sdnotify.SystemdNotifier().notify("STATUS=stand-in hook " + sys.argv[1] + " ran")
"""


@dataclass(frozen=True)
class Hook:
    hook: str
    vswitchd: int | None  # PID of a live ovs-vswitchd, inside the namespace
    ovsdb: int | None
    db: bool  # ovsdb-server's socket accepts connections


@dataclass(frozen=True)
class Daemon:
    pid: int
    invocation: str


class Switch:
    """A systemd namespace running Open vSwitch under one set of units."""

    def __init__(self, ns: SystemdNamespace, setup: str) -> None:
        self.ns = ns
        self.setup = setup
        self._ovsdb_hooks: list[Hook] = []

    def systemctl(self, *args: str) -> None:
        """Run systemctl, then wait for every job it started (also propagated ones)."""
        self.ns.systemctl(*args)
        self.ns.settle()

    def hooks(self) -> list[Hook]:
        """ovs-vswitchd's hooks recorded since the last call (ovsdb-server's
        own, ovsdb-stop and ovsdb-poststart, are kept for `ovsdb_hooks`)."""
        log = self.ns.path(HOOK_LOG)
        if not log.exists():
            return []
        lines = log.read_text().splitlines()
        log.write_text("")
        recorded = [Hook(**json.loads(line)) for line in lines]
        self._ovsdb_hooks += [h for h in recorded if h.hook.startswith("ovsdb-")]
        return [h for h in recorded if not h.hook.startswith("ovsdb-")]

    def ovsdb_hooks(self) -> list[Hook]:
        """ovsdb-server's hooks recorded up to the last `hooks()`, and since."""
        self.hooks()
        found, self._ovsdb_hooks = self._ovsdb_hooks, []
        return found

    def daemon(self, unit: str) -> Daemon:
        pid = self.ns.main_pid(unit)
        assert pid, f"{unit} has no main process:\n{self.ns.journal(unit)}"
        return Daemon(pid, self.ns.show(unit, "InvocationID"))

    def active(self, unit: str) -> str:
        return self.ns.systemctl("is-active", unit, check=False).stdout.strip()

    def vsctl(self, *args: str) -> str:
        return self.ns.run(["ovs-vsctl", "--timeout=20", *args]).stdout


def _machine_state() -> dict[str, object]:
    """What a namespace must not change on the machine."""
    with open("/proc/self/mountinfo") as f:
        cgroup_mount = [ln.split(" - ")[1] for ln in f if " /sys/fs/cgroup " in ln]
    return {
        "cgroup tmpfs": cgroup_mount,
        "cgroup entries": sorted(os.listdir("/sys/fs/cgroup")),
        "file-max": Path("/proc/sys/fs/file-max").read_text(),
        "nr_open": Path("/proc/sys/fs/nr_open").read_text(),
        "hostname": os.uname().nodename,
    }


def _need_debian_ovs() -> None:
    if not OVS_CTL.exists() or not Path("/lib/systemd/system/ovs-vswitchd.service").exists():
        pytest.skip("Debian's openvswitch-switch is not installed")


# -- the harness ------------------------------------------------------------


@pytest.fixture
def booted_ns() -> Iterator[SystemdNamespace]:
    with booted() as ns:
        yield ns


def test_boot_is_minimal_and_leaves_the_machine_alone(tmp_path: Path) -> None:
    marker = tmp_path / "still-here"
    marker.write_text("the machine's /tmp")
    before = _machine_state()
    with booted() as ns:
        assert ns.systemctl("is-system-running").stdout.strip() == "running"
        print(f"systemd namespace ready in {ns.boot_seconds:.2f}s")
        # Private /tmp: the machine's file is not visible inside.
        assert ns.run(["test", "-e", str(marker)], check=False).returncode == 1
        running = ns.systemctl(
            "list-units", "--type=service", "--state=running", "--plain", "--no-legend"
        ).stdout.split()
        assert {u for u in running if u.endswith(".service")} == {
            "dbus.service",
            "systemd-journald.service",
        }
        assert ns.show("systemd-tmpfiles-setup.service", "LoadState") == "masked"
        assert ns.show("getty@tty1.service", "LoadState") == "masked"
        # Its own network namespace, with nothing but lo.
        links = ns.run(["ip", "-o", "link"]).stdout
        assert [ln.split(":")[1].strip() for ln in links.splitlines()] == ["lo"]
    assert marker.read_text() == "the machine's /tmp"
    assert _machine_state() == before


PROBE_UNIT = "[Service]\nExecStart=/bin/sleep infinity\n"


def test_pystemd_talks_to_the_namespace_manager(booted_ns: SystemdNamespace) -> None:
    booted_ns.write_file("/run/systemd/system/probe.service", PROBE_UNIT)
    booted_ns.systemctl("daemon-reload")
    out = booted_ns.python(
        "import json\n"
        "from pystemd.systemd1 import Manager, Unit\n"
        "m = Manager(); m.load()\n"
        "bus = Unit(b'dbus.service'); bus.load()\n"
        "probe = Unit(b'probe.service'); probe.load()\n"
        "probe.Unit.Start(b'replace')\n"
        "import time\n"
        "for _ in range(200):\n"
        "    if probe.Unit.ActiveState in (b'active', b'failed'): break\n"
        "    time.sleep(0.05)\n"
        "print(json.dumps({'version': m.Manager.Version.decode(),\n"
        "    'state': m.Manager.SystemState.decode(),\n"
        "    'bus': bus.Unit.ActiveState.decode(), 'bus_pid': bus.Service.MainPID,\n"
        "    'probe': probe.Unit.ActiveState.decode(),\n"
        "    'probe_pid': probe.Service.MainPID}))\n"
    ).stdout
    seen = json.loads(out)
    assert seen["version"].startswith(booted_ns.run(["systemctl", "--version"]).stdout.split()[1])
    assert seen["state"] == "running"
    assert seen["bus"] == "active"
    assert seen["bus_pid"] == booted_ns.main_pid("dbus.service")
    assert seen["probe"] == "active", booted_ns.journal("probe.service")
    assert seen["probe_pid"] == booted_ns.main_pid("probe.service")


@pytest.mark.ovs
def test_debian_units_run_a_netdev_bridge(booted_ns: SystemdNamespace) -> None:
    _need_debian_ovs()
    ns = booted_ns
    ns.systemctl("start", "openvswitch-switch.service")
    for unit in ("ovsdb-server", "ovs-vswitchd", "openvswitch-switch"):
        assert ns.systemctl("is-active", unit, check=False).stdout.strip() == "active"
    ns.run(["ovs-vsctl", "--timeout=20", "add-br", "br0", "--",
            "set", "bridge", "br0", "datapath_type=netdev"])  # fmt: skip
    assert "port 1: br0" in ns.run(["ovs-appctl", "dpctl/show"]).stdout
    assert "br0" in ns.run(["ip", "-o", "link", "show", "br0"]).stdout


def test_an_exception_inside_still_cleans_up() -> None:
    with pytest.raises(RuntimeError, match="test body failed"), booted() as ns:
        ns.run(["systemd-run", "--unit=sleeper", "/bin/sleep", "infinity"])
        raise RuntimeError("test body failed")
    assert ns.leftovers() == []


def test_a_hung_namespace_is_killed() -> None:
    before = _machine_state()
    with booted(stop_timeout=2) as ns:
        ns.run(["systemd-run", "--unit=sleeper", "/bin/sleep", "infinity"])
        # A stopped PID 1 cannot power off; stop() must kill it.
        os.kill(ns.pid, signal.SIGSTOP)
        start = time.monotonic()
        ns.stop()
        assert time.monotonic() - start < 15
    assert _machine_state() == before


# -- the units ----------------------------------------------------------------

SETUPS = {
    # ovs-service's units replace Debian's; Debian's openvswitch-switch.service
    # stays installed next to them.
    "units": [*OUR_UNITS, UMBRELLA],
    # The package's drop-ins apply to the replacements too: hooks run once.
    "units+dropins": [*OUR_UNITS, UMBRELLA, *DROPINS],
    # Debian's own units with ovs-service's drop-ins.
    "debian+dropins": [UMBRELLA, *DROPINS],
}


@pytest.fixture(params=[pytest.param(name, marks=pytest.mark.ovs) for name in SETUPS])
def switch(request: pytest.FixtureRequest) -> Iterator[Switch]:
    _need_debian_ovs()
    with booted() as ns:
        ns.shadow_command("ovs-service-hook", STAND_IN_HOOK)
        ns.install_units(SETUPS[request.param])
        sw = Switch(ns, request.param)
        sw.systemctl("start", "openvswitch.service", "openvswitch-switch.service")
        sw.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev")
        yield sw


def test_start_runs_prestart_then_poststart(switch: Switch) -> None:
    vswitchd = switch.daemon("ovs-vswitchd")
    assert switch.hooks() == [
        Hook("prestart", vswitchd=None, ovsdb=switch.daemon("ovsdb-server").pid, db=True),
        Hook("poststart", vswitchd=vswitchd.pid, ovsdb=switch.daemon("ovsdb-server").pid, db=True),
    ]
    # The hooks' sd_notify STATUS= reaches systemd (NotifyAccess=all).
    assert switch.ns.show("ovs-vswitchd", "StatusText") == "stand-in hook poststart ran"


def test_restart_vswitchd_saves_before_the_daemon_stops(switch: Switch) -> None:
    switch.hooks()
    old, db = switch.daemon("ovs-vswitchd"), switch.daemon("ovsdb-server")
    switch.systemctl("restart", "ovs-vswitchd.service")
    new, new_db = switch.daemon("ovs-vswitchd"), switch.daemon("ovsdb-server")
    assert new.pid != old.pid
    if switch.setup.startswith("units"):
        assert new_db == db
    else:
        # Debian's units: openvswitch-switch.service Requires= ovs-vswitchd,
        # so it restarts too, and ovsdb-server is PartOf= it: restarting
        # ovs-vswitchd restarts the database as well.
        assert new_db.pid != db.pid
    assert switch.hooks() == [
        Hook("save", vswitchd=old.pid, ovsdb=db.pid, db=True),
        Hook("stop", vswitchd=old.pid, ovsdb=db.pid, db=True),
        Hook("stoppost", vswitchd=None, ovsdb=db.pid, db=True),
        Hook("prestart", vswitchd=None, ovsdb=new_db.pid, db=True),
        Hook("poststart", vswitchd=new.pid, ovsdb=new_db.pid, db=True),
    ]


def test_restart_ovsdb_server(switch: Switch) -> None:
    switch.ovsdb_hooks()  # forget all recorded so far
    vswitchd, old_db = switch.daemon("ovs-vswitchd"), switch.daemon("ovsdb-server")
    switch.systemctl("restart", "ovsdb-server.service")
    db = switch.daemon("ovsdb-server")
    assert db.pid != old_db.pid
    if switch.setup.startswith("units"):
        # Forwarding untouched: same process, same invocation, no hook of its
        # ran; the database's stop saved for it, and its start found it alive.
        assert switch.daemon("ovs-vswitchd") == vswitchd
        assert switch.hooks() == []
        assert switch.ovsdb_hooks() == [
            Hook("ovsdb-stop", vswitchd=vswitchd.pid, ovsdb=old_db.pid, db=True),
            Hook("ovsdb-poststart", vswitchd=vswitchd.pid, ovsdb=db.pid, db=True),
        ]
    else:
        # Debian's ovs-vswitchd.service Requires= ovsdb-server.service, and a
        # drop-in cannot take a dependency away: systemd restarts
        # ovs-vswitchd too. The hooks still run in the right order: the save
        # while both daemons run, the restore once both are back.
        new = switch.daemon("ovs-vswitchd")
        assert new.pid != vswitchd.pid
        assert switch.hooks() == [
            Hook("save", vswitchd=vswitchd.pid, ovsdb=old_db.pid, db=True),
            Hook("stop", vswitchd=vswitchd.pid, ovsdb=old_db.pid, db=True),
            Hook("stoppost", vswitchd=None, ovsdb=old_db.pid, db=True),
            Hook("prestart", vswitchd=None, ovsdb=db.pid, db=True),
            Hook("poststart", vswitchd=new.pid, ovsdb=db.pid, db=True),
        ]
    # ovs-vswitchd is connected to the new database: it configures a new
    # bridge (ovs-vsctl waits for it to do so).
    switch.vsctl("add-br", "br1", "--", "set", "bridge", "br1", "datapath_type=netdev")
    assert "br1" in switch.ns.run(["ovs-appctl", "dpctl/show"]).stdout


def test_restart_openvswitch_restarts_both_in_order(switch: Switch) -> None:
    switch.hooks()
    old, old_db = switch.daemon("ovs-vswitchd"), switch.daemon("ovsdb-server")
    switch.systemctl("restart", "openvswitch.service")
    new, db = switch.daemon("ovs-vswitchd"), switch.daemon("ovsdb-server")
    assert new.pid != old.pid and db.pid != old_db.pid
    # ovs-vswitchd stops first (it is ordered after ovsdb-server), so the save
    # sees the database; it starts last, so prestart sees the new database.
    assert switch.hooks() == [
        Hook("save", vswitchd=old.pid, ovsdb=old_db.pid, db=True),
        Hook("stop", vswitchd=old.pid, ovsdb=old_db.pid, db=True),
        Hook("stoppost", vswitchd=None, ovsdb=old_db.pid, db=True),
        Hook("prestart", vswitchd=None, ovsdb=db.pid, db=True),
        Hook("poststart", vswitchd=new.pid, ovsdb=db.pid, db=True),
    ]
    assert "br0" in switch.vsctl("list-br")


def test_stop_and_start_openvswitch(switch: Switch) -> None:
    switch.hooks()
    old, db = switch.daemon("ovs-vswitchd"), switch.daemon("ovsdb-server")
    switch.systemctl("stop", "openvswitch.service")
    assert switch.active("ovs-vswitchd") == "inactive"
    assert switch.active("ovsdb-server") == "inactive"
    assert switch.hooks() == [
        Hook("save", vswitchd=old.pid, ovsdb=db.pid, db=True),
        Hook("stop", vswitchd=old.pid, ovsdb=db.pid, db=True),
        Hook("stoppost", vswitchd=None, ovsdb=db.pid, db=True),
    ]
    switch.systemctl("start", "openvswitch.service")
    new, db = switch.daemon("ovs-vswitchd"), switch.daemon("ovsdb-server")
    assert switch.hooks() == [
        Hook("prestart", vswitchd=None, ovsdb=db.pid, db=True),
        Hook("poststart", vswitchd=new.pid, ovsdb=db.pid, db=True),
    ]


def test_restart_openvswitch_switch(switch: Switch) -> None:
    """Debian's umbrella: it restarts the daemons only with Debian's units."""
    switch.hooks()
    old = switch.daemon("ovs-vswitchd")
    switch.systemctl("restart", "openvswitch-switch.service")
    if switch.setup.startswith("units"):
        # The replacements are not PartOf=openvswitch-switch.service: that
        # unit Requires= ovsdb-server.service, so a restart of ovsdb-server
        # restarts it, and would restart ovs-vswitchd through PartOf=.
        assert switch.daemon("ovs-vswitchd") == old
        assert switch.hooks() == []
    else:
        assert [h.hook for h in switch.hooks()] == [
            "save", "stop", "stoppost", "prestart", "poststart"]
        assert switch.daemon("ovs-vswitchd").pid != old.pid


# -- with the real hook ----------------------------------------------------------


@pytest.mark.ovs
def test_a_flow_survives_restart_of_ovs_vswitchd_with_the_real_hook() -> None:
    """The checkout's own hook, whatever ovs-service the machine has installed."""
    _need_debian_ovs()
    with booted() as ns:
        ns.install_units([*OUR_UNITS, UMBRELLA])
        ns.systemctl("start", "openvswitch.service")
        ns.run(["ovs-vsctl", "--timeout=20", "add-br", "br0", "--",
                "set", "bridge", "br0", "datapath_type=netdev"])  # fmt: skip
        ns.run(["ovs-ofctl", "add-flow", "br0", "table=3,priority=77,ip,actions=drop"])
        ns.systemctl("restart", "ovs-vswitchd.service")
        flows = ns.run(["ovs-ofctl", "dump-flows", "--no-stats", "br0"]).stdout
        journal = ns.journal("ovs-vswitchd.service")
        assert "table=3, priority=77,ip actions=drop" in flows, journal
        frw = ns.run(["ovs-vsctl", "get", "Open_vSwitch", ".", "other_config"]).stdout
        assert "flow-restore-wait" not in frw or 'flow-restore-wait="false"' in frw


@pytest.mark.ovs
def test_units_work_without_ovs_service_installed() -> None:
    """The hooks carry "-": a missing ovs-service-hook never blocks Open vSwitch."""
    _need_debian_ovs()
    with booted(own_code=False) as ns:
        # Inside only: hide the machine's /usr/local/bin (and the hook in it).
        ns.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/usr/local/bin"])
        ns.install_units([*OUR_UNITS, UMBRELLA])
        ns.systemctl("start", "openvswitch.service")
        ns.systemctl("restart", "ovs-vswitchd.service")
        ns.settle()
        for unit in ("ovsdb-server", "ovs-vswitchd", "openvswitch"):
            assert ns.systemctl("is-active", unit, check=False).stdout.strip() == "active"
        assert "ovs-service-hook" in ns.journal("ovs-vswitchd.service")
