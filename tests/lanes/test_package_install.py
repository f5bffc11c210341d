"""The Debian package, installed for real with dpkg, in a systemd guest.

One guest boots systemd as PID 1 on the host's root (read-only, under a
tmpfs overlay: everything dpkg writes stays in the guest). Before the boot,
the host builds ovs-service's .deb (packaging/build-deb.sh) and downloads
Debian's openvswitch-switch .deb of the installed version into the
checkout's .cache/, where the guest can read them.

In the guest, without the checkout's editable install (removed from the
overlay, so that the package's /usr/bin/ovs-service-hook and
/usr/lib/python3/dist-packages/ovs_service are what runs) and without the
policy-rc.d that forbids maintainer scripts to touch units, Debian's
openvswitch-switch.service carries a netdev bridge with flows in several
tables, groups, meters and a TLV map. Then, in order:

- `dpkg -i ovs-service`: installed, verified units, the switch untouched;
- `systemctl restart openvswitch`: ovs-vswitchd restarted, state identical;
- `dpkg -i openvswitch-switch` (a reinstall: its preinst stops the daemons,
  its postinst restarts them through systemd): state identical;
- `dpkg -i ovs-service` again: the switch untouched;
- the way back to Debian's start (ovs-service(8)): the fast drop-ins
  masked, `systemctl restart openvswitch` through ovs-ctl keeps the state;
- with OVS_SERVICE_CONTROL_RUN=1, the same openvswitch-switch reinstall
  with the drop-ins masked: the flows are lost, which is what the package
  is for.

Each step's time is printed at the end of the module.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness.kmodbed import reply_body, sections
from tests.harness.vm.build import REPO
from tests.harness.vm.guest import Guest, Result

pytestmark = [pytest.mark.vm, pytest.mark.root, pytest.mark.slow]

PACKAGE = "ovs-service"
CACHE = REPO / ".cache" / "package-install"
STATE_DIR = "/var/lib/ovs-service"
BRIDGE = "br0"
OF = "OpenFlow15"
DPKG_TIMEOUT = 900.0  # a reinstall under emulation: 336 s seen, over 400 s on a loaded machine
SLOW_STEP = 60.0
UNITS = ("ovsdb-server.service", "ovs-vswitchd.service", "openvswitch-switch.service",
         "openvswitch.service")  # fmt: skip
DROPINS = ("ovs-vswitchd.service.d", "ovsdb-server.service.d")
# The hooks, and the fast start and stop (the default; masked for the way back).
DROPIN_FILES = ("ovs-service.conf", "ovs-service.fast.conf")
ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}

# In the guest (its overlay): the checkout's editable install would shadow
# the package's commands and modules (/usr/local comes first on every path).
UNSHADOW = """
rm -f /usr/local/bin/ovs-service /usr/local/bin/ovs-service-hook
rm -rf /usr/local/lib/python3*/dist-packages/__editable__*ovs_service* \
       /usr/local/lib/python3*/dist-packages/ovs_service-*.dist-info \
       /usr/local/lib/python3*/dist-packages/ovs_service
"""

# This machine's policy-rc.d exits 101 (a container's): deb-systemd-invoke
# would then neither stop nor restart anything. Removed in the guest only.
NO_POLICY = """
rm -f /usr/sbin/policy-rc.d
# man-db's trigger (mandb -pq) runs after each install that brings man pages:
# over ten minutes under emulation, past the reinstall's time limit. It runs
# while /var/lib/man-db/auto-update exists; debconf's man-db/auto-update only
# changes that file when man-db itself is configured again.
rm -f /var/lib/man-db/auto-update
"""

PROTOCOLS = ",".join(f"OpenFlow1{minor}" for minor in range(6))

TOPOLOGY = f"""
ovs-vsctl --timeout=60 add-br br0 -- set bridge br0 datapath_type=netdev protocols={PROTOCOLS} \
  -- add-port br0 p1 -- set interface p1 type=internal ofport_request=1 \
  -- add-port br0 p2 -- set interface p2 type=internal ofport_request=2 \
  -- add-port br0 p7 -- set interface p7 type=internal ofport_request=7
ovs-ofctl -O OpenFlow15 add-meter br0 \
    "meter=1,pktps,burst,bands=type=drop,rate=10000,burst_size=1000"
ovs-ofctl -O OpenFlow15 add-meter br0 "meter=2,kbps,bands=type=drop,rate=1000"
ovs-ofctl -O OpenFlow15 add-group br0 \
    "group_id=1,type=all,bucket=bucket_id:1,actions=output:2,bucket=bucket_id:2,actions=output:7"
ovs-ofctl -O OpenFlow15 add-group br0 "group_id=2,type=select,selection_method=hash,\
bucket=bucket_id:3,weight:10,actions=output:1,bucket=bucket_id:4,weight:20,actions=output:2"
ovs-ofctl -O OpenFlow15 add-group br0 "group_id=3,type=fast_failover,\
bucket=bucket_id:5,watch_port:1,actions=output:1,bucket=bucket_id:6,watch_port:2,actions=output:2"
ovs-ofctl add-tlv-map br0 \
    "{{class=0xffff,type=0x3,len=4}}->tun_metadata0,{{class=0xffff,type=0x4,len=8}}->tun_metadata1"
ovs-ofctl -O OpenFlow15 add-flows br0 - <<'EOF'
table=0,priority=0,actions=drop
table=0,priority=100,in_port=1,actions=goto_table:1
table=0,priority=100,in_port=2,actions=meter:1,goto_table:2
table=0,priority=90,ip,nw_src=10.0.0.0/8,actions=resubmit(,3)
table=0,priority=50,cookie=0x1234,in_port=LOCAL,actions=drop
table=1,priority=10,arp,actions=group:1
table=1,priority=10,ip,nw_dst=192.0.2.12,actions=set_field:0x2a->reg0,group:1
table=1,priority=20,tcp,tp_dst=80,actions=meter:2,output:7
table=2,priority=10,actions=group:2
table=2,priority=5,ipv6,ipv6_dst=2001:db8::1,actions=ct(commit,zone=5),output:1
table=3,priority=5,cookie=0x99,tun_metadata0=0x1,actions=drop
table=3,priority=6,tun_metadata1=0x2,actions=learn(table=4,priority=1,\
NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[]),NORMAL
table=4,priority=1,dl_vlan=100,actions=mod_vlan_vid:200,output:2
table=10,priority=7,udp,tp_dst=4789,actions=set_field:00:00:5e:00:53:01->eth_dst,output:7
table=3,priority=1,actions=group:3
EOF
"""
FLOWS, GROUPS, METERS, TLVS = 15, 3, 2, 2

STATE = r"""
echo "@@@ flows"; ovs-ofctl -O OpenFlow15 dump-flows --no-stats --no-names br0
echo "@@@ groups"; ovs-ofctl -O OpenFlow15 dump-groups br0
echo "@@@ meters"; ovs-ofctl -O OpenFlow15 dump-meters br0
echo "@@@ tlv"; ovs-ofctl -O OpenFlow15 dump-tlv-map br0
"""


# -- the canonical state ----------------------------------------------------------


def canonical(text: str) -> list[str]:
    """STATE's output as sorted `kind: line` rows."""
    parts = sections(text)
    meters: list[str] = []
    for line in reply_body(parts.get("meters", "")):
        if line.startswith("meter=") or not meters:
            meters.append(line)
        else:
            meters[-1] += " " + line  # a meter's bands come on their own lines
    tlv = [" ".join(line.split()) for line in parts.get("tlv", "").splitlines()
           if re.match(r"^\s*0x[0-9a-f]+\s+0x[0-9a-f]+\s+\d+\s+tun_metadata\d+\s*$", line)]
    return sorted(
        [f"flow: {line}" for line in reply_body(parts.get("flows", ""))]
        + [f"group: {line}" for line in reply_body(parts.get("groups", ""))]
        + [f"meter: {line}" for line in meters]
        + [f"tlv: {line}" for line in tlv]
    )


def counts(state: list[str]) -> dict[str, int]:
    found = {"flow": 0, "group": 0, "meter": 0, "tlv": 0}
    for row in state:
        found[row.split(":", 1)[0]] += 1
    return found


def diff(before: list[str], after: list[str]) -> str:
    return "\n".join([f"- {row}" for row in before if row not in after]
                     + [f"+ {row}" for row in after if row not in before])


# -- on the host, before the boot -------------------------------------------------


@dataclass(frozen=True)
class Debs:
    ovs_service: Path
    openvswitch_switch: Path
    ovs_version: str


def _host(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **ENV})


def _project_version() -> str:
    with open(REPO / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert isinstance(version, str)
    return version


def _download_openvswitch_switch(folder: Path) -> tuple[Path, str]:
    """Debian's openvswitch-switch .deb, of the version installed here (a reinstall)."""
    query = _host(["dpkg-query", "-W", "-f=${Status}\t${Version}", "openvswitch-switch"])
    if query.returncode != 0 or not query.stdout.startswith("install ok installed"):
        pytest.skip("openvswitch-switch is not installed")
    version = query.stdout.split("\t")[1]
    name = f"openvswitch-switch_{version.replace(':', '%3a')}_amd64.deb"
    deb = folder / name
    if not deb.exists():
        got = subprocess.run(
            ["apt-get", "download", "-o", "APT::Sandbox::User=root",
             f"openvswitch-switch={version}"],
            cwd=folder, capture_output=True, text=True, timeout=300, check=False)
        if not deb.exists():
            # Offline: apt's own cache may hold it (the machine installed it).
            cached = Path("/var/cache/apt/archives") / name
            if not cached.exists():
                pytest.skip(f"cannot download openvswitch-switch {version}: {got.stderr.strip()}")
            shutil.copy(cached, deb)
    return deb, version


@dataclass
class Times:
    """Each step's wall time, printed as it ends and all together at the end,
    past pytest's output capture."""

    config: pytest.Config
    steps: list[tuple[str, float]] = field(default_factory=list)

    def add(self, name: str, seconds: float) -> None:
        self.steps.append((name, seconds))
        self.show(f"  {name:<62} {seconds:7.1f} s")

    def show(self, *lines: str) -> None:
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            for line in lines:
                if reporter is not None:
                    reporter.write_line(line)
                else:
                    print(line)


@pytest.fixture(scope="module")
def times(request: pytest.FixtureRequest) -> Iterator[Times]:
    recorded = Times(request.config)
    recorded.show("", "package install lane:")
    start = time.monotonic()
    yield recorded
    recorded.show("", "package install lane, time of each step:",
                  *(f"  {name:<62} {seconds:7.1f} s" for name, seconds in recorded.steps),
                  f"  {'in all':<62} {time.monotonic() - start:7.1f} s")


@pytest.fixture(scope="module")
def debs(times: Times) -> Debs:
    for tool in ("dpkg-buildpackage", "dpkg-deb", "apt-get"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    # Under the checkout: the guest sees the host's files as they are at its boot.
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / "deb"
    shutil.rmtree(out, ignore_errors=True)
    start = time.monotonic()
    proc = _host([str(REPO / "packaging" / "build-deb.sh"), str(out)], timeout=900)
    assert proc.returncode == 0, f"build-deb.sh failed:\n{(proc.stdout + proc.stderr)[-6000:]}"
    deb = out / f"{PACKAGE}_{_project_version()}_all.deb"
    assert deb.exists(), sorted(out.iterdir())
    times.add("build the .deb (host)", time.monotonic() - start)
    start = time.monotonic()
    apt = CACHE / "apt"
    apt.mkdir(exist_ok=True)
    switch_deb, version = _download_openvswitch_switch(apt)
    times.add("apt-get download openvswitch-switch (host)", time.monotonic() - start)
    return Debs(deb, switch_deb, version)


# -- the guest --------------------------------------------------------------------


def main_pid(guest: Guest, unit: str) -> int:
    return int(guest.run(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout)


def settle(guest: Guest, timeout: float = 120) -> None:
    """Until systemd has no job queued."""
    guest.sh(f"for i in $(seq {int(timeout * 5)}); do "
             "[ -z \"$(systemctl list-jobs --no-legend)\" ] && exit 0; sleep 0.2; done; "
             "systemctl list-jobs; exit 1", timeout=timeout + 30)


@pytest.fixture(scope="module")
def guest(debs: Debs, times: Times) -> Iterator[Guest]:
    # The package's own code, not the checkout's.
    with Guest("systemd", own_code=False) as booted:
        times.add("boot the systemd guest", booted.boot_seconds or 0.0)
        assert booted.system_state == "running", booted.run(
            ["systemctl", "--failed", "--no-legend"], check=False).stdout
        start = time.monotonic()
        booted.sh(UNSHADOW)
        # A private store, empty whatever the host's holds.
        booted.sh(f"mkdir -p {STATE_DIR} && mount -t tmpfs -o mode=0700 tmpfs {STATE_DIR}")
        booted.sh(NO_POLICY)
        # The userspace datapath's internal ports are tap devices.
        booted.run(["modprobe", "tun"])
        times.add("prepare the guest", time.monotonic() - start)
        yield booted


@dataclass(frozen=True)
class Switch:
    guest: Guest
    debs: Debs
    times: Times
    before: list[str]

    def state(self) -> list[str]:
        return canonical(self.guest.sh(STATE).stdout)

    def pids(self) -> dict[str, int]:
        return {unit: main_pid(self.guest, unit)
                for unit in ("ovsdb-server.service", "ovs-vswitchd.service")}

    def flow_restore_wait(self) -> str:
        return self.guest.run(["ovs-vsctl", "--if-exists", "get", "Open_vSwitch", ".",
                               "other_config:flow-restore-wait"]).stdout.strip()

    def active(self) -> list[str]:
        return self.guest.run(["systemctl", "is-active", *UNITS], check=False).stdout.split()

    def timed(self, name: str, argv: list[str], **options: object) -> Result:
        start = time.monotonic()
        result = self.guest.run(argv, check=False, **options)  # type: ignore[arg-type]
        settle(self.guest)
        self.times.add(f"{name} (in the guest: {result.seconds:.1f} s)",
                       time.monotonic() - start)
        if result.seconds > SLOW_STEP:
            self.times.show(f"  -- slower than {SLOW_STEP:.0f} s; the units' journal:",
                            *self.guest.journal(60, *UNITS, "ovs-record-hostname.service")
                            .splitlines())
        assert result.ok, (f"{' '.join(argv)}: exit {result.returncode}\n{result.stdout}"
                           f"{result.stderr}\n{self.journal()}")
        return result

    def dpkg_install(self, name: str, deb: Path) -> Result:
        return self.timed(name, ["dpkg", "-i", str(deb)], env=ENV, timeout=DPKG_TIMEOUT)

    def journal(self) -> str:
        return self.guest.journal(80, "ovsdb-server.service", "ovs-vswitchd.service",
                                  "openvswitch-switch.service", "openvswitch.service")

    def assert_kept(self, what: str) -> None:
        after = self.state()
        assert after == self.before, f"{what} changed the state:\n{diff(self.before, after)}\n" \
                                     f"{self.journal()}"
        assert self.flow_restore_wait() == "", f"{what} left flow-restore-wait set"


@pytest.fixture(scope="module")
def switch(guest: Guest, debs: Debs, times: Times) -> Switch:
    """Debian's openvswitch-switch, as the host installs it, with a bridge worth keeping."""
    start = time.monotonic()
    guest.run(["systemctl", "start", "openvswitch-switch.service"], timeout=300)
    settle(guest)
    times.add("start openvswitch-switch.service", time.monotonic() - start)
    start = time.monotonic()
    built = guest.sh(TOPOLOGY, timeout=300, check=False)
    assert built.ok, built.stderr + guest.sh("tail -n 30 /var/log/openvswitch/ovs-vswitchd.log",
                                             check=False).stdout
    times.add("build the bridge", time.monotonic() - start)
    before = canonical(guest.sh(STATE).stdout)
    assert counts(before) == {"flow": FLOWS, "group": GROUPS, "meter": METERS, "tlv": TLVS}, before
    return Switch(guest, debs, times, before)


@dataclass(frozen=True)
class Installed:
    switch: Switch
    pids: dict[str, int]
    """The daemons' MainPIDs before the install."""
    dpkg: Result


@pytest.fixture(scope="module")
def installed(switch: Switch) -> Installed:
    guest = switch.guest
    # Nothing of ovs-service is there yet: not even the editable install.
    probe = guest.run(["/usr/bin/python3", "-c", "import ovs_service"], cwd="/", check=False)
    assert "ModuleNotFoundError" in probe.stderr, probe.stdout + probe.stderr
    assert not guest.run(["sh", "-c", "command -v ovs-service-hook"], check=False).ok
    pids = switch.pids()
    dpkg = switch.dpkg_install("dpkg -i ovs-service (first install)", switch.debs.ovs_service)
    return Installed(switch, pids, dpkg)


# -- the tests, in order ---------------------------------------------------------------


def test_the_bridge_is_worth_keeping(switch: Switch) -> None:
    assert switch.active()[:3] == ["active"] * 3
    kinds = counts(switch.before)
    assert kinds == {"flow": FLOWS, "group": GROUPS, "meter": METERS, "tlv": TLVS}
    tables = {m.group(1) for row in switch.before if (m := re.search(r"table=(\d+)", row))}
    assert len(tables) >= 5, tables


def test_install_gives_the_packages_commands_and_units(installed: Installed) -> None:
    guest, debs = installed.switch.guest, installed.switch.debs
    status = guest.run(["dpkg-query", "-W", "-f=${Status} ${Version}", PACKAGE]).stdout
    assert status == f"install ok installed {_project_version()}"
    version = guest.run(["/usr/bin/ovs-service", "--version"], cwd="/")
    assert version.stdout.strip() == f"ovs-service {_project_version()}"
    where = guest.sh("command -v ovs-service; command -v ovs-service-hook").stdout.split()
    assert where == ["/usr/bin/ovs-service", "/usr/bin/ovs-service-hook"]
    probe = "import ovs_service; print(ovs_service.__file__)"
    module = guest.run(["/usr/bin/python3", "-c", probe], cwd="/").stdout.strip()
    assert module == "/usr/lib/python3/dist-packages/ovs_service/__init__.py"
    # The tmpfiles line made the store (on the guest's private tmpfs).
    mode = guest.run(["stat", "-c", "%a %U", STATE_DIR]).stdout.split()
    assert mode == ["700", "root"]
    # systemd took the drop-ins (the postinst's daemon-reload).
    dropins = guest.run(["systemctl", "show", "-p", "DropInPaths", "--value",
                         "ovs-vswitchd.service", "ovsdb-server.service"]).stdout
    for unit in DROPINS:
        for conf in DROPIN_FILES:
            assert f"/lib/systemd/system/{unit}/{conf}" in dropins, dropins
    exec_stop = guest.run(["systemctl", "show", "-p", "ExecStop", "--value",
                           "ovs-vswitchd.service"]).stdout
    assert "ovs-service-hook" in exec_stop, exec_stop
    # The fast path is the default: the daemon started without ovs-ctl.
    exec_start = guest.run(["systemctl", "show", "-p", "ExecStart", "--value",
                            "ovs-vswitchd.service"]).stdout
    assert "path=/usr/sbin/ovs-vswitchd" in exec_start, exec_start
    enabled = guest.run(["systemctl", "is-enabled", "openvswitch.service"], check=False)
    assert enabled.stdout.strip() == "enabled", enabled.stdout + enabled.stderr
    assert debs.ovs_service.name in " ".join(installed.dpkg.argv)


def test_installed_units_verify(installed: Installed) -> None:
    guest = installed.switch.guest
    verify = guest.run(["systemd-analyze", "verify", "/lib/systemd/system/openvswitch.service",
                        "ovs-vswitchd.service", "ovsdb-server.service",
                        "openvswitch-switch.service"], cwd="/", check=False, timeout=120)
    # Only what concerns these units: verify also loads everything they pull in.
    ours = [line for line in (verify.stdout + verify.stderr).splitlines()
            if re.search(r"openvswitch|ovs-|ovsdb", line)]
    assert verify.ok and not ours, verify.stdout + verify.stderr


def test_install_leaves_the_switch_running(installed: Installed) -> None:
    switch = installed.switch
    assert switch.pids() == installed.pids, "installing restarted a daemon"
    assert switch.active()[:3] == ["active"] * 3
    # The umbrella is enabled, not started: starting it would change nothing anyway.
    assert switch.active()[3] == "inactive"
    switch.assert_kept("dpkg -i ovs-service")


def test_restart_openvswitch(installed: Installed) -> None:
    switch = installed.switch
    old = switch.pids()
    switch.timed("systemctl restart openvswitch", ["systemctl", "restart", "openvswitch"],
                 timeout=300)
    new = switch.pids()
    for unit, pid in old.items():
        assert new[unit] not in (0, pid), f"{unit} did not restart: {old} -> {new}"
    assert switch.active() == ["active"] * 4
    switch.assert_kept("systemctl restart openvswitch")


def test_reinstall_of_openvswitch_switch_keeps_the_state(installed: Installed) -> None:
    switch = installed.switch
    old = switch.pids()
    dpkg = switch.dpkg_install("dpkg -i openvswitch-switch (reinstall)",
                               switch.debs.openvswitch_switch)
    new = switch.pids()
    assert new["ovs-vswitchd.service"] not in (0, old["ovs-vswitchd.service"]), (
        f"the reinstall did not restart ovs-vswitchd: {old} -> {new}\n{dpkg.stdout}")
    assert switch.active()[:3] == ["active"] * 3
    # The drop-in's hooks ran: a snapshot was saved on the stop.
    store = switch.guest.run(["find", STATE_DIR, "-type", "f"]).stdout.split()
    assert store, f"nothing saved in {STATE_DIR}\n{switch.journal()}"
    switch.assert_kept("dpkg -i openvswitch-switch")


def test_reinstall_of_ovs_service_leaves_the_switch_alone(installed: Installed) -> None:
    switch = installed.switch
    old = switch.pids()
    switch.dpkg_install("dpkg -i ovs-service (reinstall)", switch.debs.ovs_service)
    assert switch.pids() == old, "reinstalling ovs-service restarted a daemon"
    status = switch.guest.run(["dpkg-query", "-W", "-f=${Status}", PACKAGE]).stdout
    assert status == "install ok installed"
    switch.assert_kept("dpkg -i ovs-service again")


def test_the_way_back_to_debians_start_keeps_the_state(installed: Installed) -> None:
    """ovs-service(8)'s way back: the fast drop-ins masked in /etc, Debian's
    ovs-ctl starts and stops the daemon again, and a restart keeps the state;
    the links removed, the fast path is back."""
    switch, guest = installed.switch, installed.switch.guest
    links = [f"/etc/systemd/system/{unit}/{DROPIN_FILES[1]}" for unit in DROPINS]
    guest.sh(" && ".join(f"mkdir -p {link.rsplit('/', 1)[0]} && ln -sf /dev/null {link}"
                         for link in links))
    guest.run(["systemctl", "daemon-reload"])
    exec_start = guest.run(["systemctl", "show", "-p", "ExecStart", "--value",
                            "ovs-vswitchd.service"]).stdout
    assert "path=/usr/share/openvswitch/scripts/ovs-ctl" in exec_start, exec_start
    old = switch.pids()
    switch.timed("systemctl restart openvswitch (Debian's start)",
                 ["systemctl", "restart", "openvswitch"], timeout=300)
    assert switch.pids()["ovs-vswitchd.service"] not in (0, old["ovs-vswitchd.service"])
    assert re.search(r"ovs-ctl\[\d+\]: Starting ovs-vswitchd", switch.journal()), \
        switch.journal()
    switch.assert_kept("systemctl restart openvswitch, fast drop-ins masked")
    guest.run(["rm", "-f", *links])
    guest.run(["systemctl", "daemon-reload"])
    exec_start = guest.run(["systemctl", "show", "-p", "ExecStart", "--value",
                            "ovs-vswitchd.service"]).stdout
    assert "path=/usr/sbin/ovs-vswitchd" in exec_start, exec_start


def test_without_the_drop_ins_the_same_reinstall_loses_the_flows(installed: Installed) -> None:
    """The control: the drop-ins masked (an empty file of the same name in
    /etc wins over the package's), Debian's units alone.  Another reinstall
    (a minute and more under emulation): only with OVS_SERVICE_CONTROL_RUN=1."""
    if os.environ.get("OVS_SERVICE_CONTROL_RUN") != "1":
        pytest.skip("the control run: OVS_SERVICE_CONTROL_RUN=1")
    switch, guest = installed.switch, installed.switch.guest
    for unit in DROPINS:
        for conf in DROPIN_FILES:
            guest.sh(f"mkdir -p /etc/systemd/system/{unit} && "
                     f": > /etc/systemd/system/{unit}/{conf}")
    guest.run(["systemctl", "daemon-reload"])
    exec_stop = guest.run(["systemctl", "show", "-p", "ExecStop", "--value",
                           "ovs-vswitchd.service"]).stdout
    assert "ovs-service-hook" not in exec_stop, exec_stop
    old = switch.pids()
    switch.dpkg_install("control: dpkg -i openvswitch-switch, drop-ins masked",
                        switch.debs.openvswitch_switch)
    assert switch.pids()["ovs-vswitchd.service"] != old["ovs-vswitchd.service"]
    after = switch.state()
    lost = counts(after)
    print(f"\nwithout the drop-ins: {lost} of {counts(switch.before)} kept")
    assert after != switch.before
    assert lost["group"] == 0 and lost["meter"] == 0
    assert [row for row in after if row.startswith("flow:")] == [
        "flow: priority=0 actions=NORMAL"], after
