"""The 3.1 -> 3.5 upgrade of Open vSwitch in a Debian 12 root, as an operator runs it.

`upgrade(lane, tools)` runs `apt-get install openvswitch-switch/trixie`
(every package from the root's apt cache: no network) while one host pings
the other every millisecond, and returns what the switch held before and
after, printed by `tools` (trixie's ovs-ofctl/ovs-vsctl: `ForeignTools`),
the versions on each side and the forwarding gap. `rollback` downgrades
back to bookworm's package and says what came of the state. Used by
tests/lanes/test_upgrade_lane.py and bench/upgrade.py.
"""

from __future__ import annotations

import calendar
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import canon, debroot
from tests.harness.lane import NsSwitch, assert_switch_whole
from tests.harness.ovsbed import BedError
from tests.harness.rootlane import ForeignTools, RootLane, root_lane, versions

APT = ["apt-get", "-q", "-y", "--no-download", "-o", "Dpkg::Options::=--force-confold",
       "-o", "APT::Install-Recommends=true"]
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
UPGRADE = [*APT, "install", "openvswitch-switch/trixie"]
PROBE_INTERVAL = 0.001
ONLINE_CONVERSION = "ovs-service: converted the database online"  # packaging/dpkg/dpkg-hook
OVS_CTL_CONVERSION = "Converting database schema"  # ovs-lib's upgrade_db


@dataclass
class UpgradeRun:
    """What one upgrade did, seen with trixie's tools."""

    versions_before: dict[str, str]
    versions_after: dict[str, str]
    before: dict[str, list[str]]
    after: dict[str, list[str]]
    gap: float
    restart_gap: float = 0.0  # `systemctl restart openvswitch` before the upgrade
    # From systemd's journal: ovs-vswitchd's last "Stopping" to its "Started",
    # and the whole `apt-get install`: the daemons stay up while dpkg unpacks
    # when the gap is close to the first, far below the second.
    vswitchd_down: float = 0.0
    stopped_after_unpack: bool = False
    apt_seconds: float = 0.0
    # Where the database met 3.5's schema: converted online by the dpkg hook
    # after the unpack (its line in apt's output), or by ovs-ctl inside the
    # restart (its "Converting database schema" in ovsdb-server's journal).
    converted_online: bool = False
    converted_at_restart: bool = False
    flow_restore_wait: str = ""
    traffic: bool = False
    refused_downgrade: str = ""  # a downgrade whose data 3.1's schema does not take
    rollback: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(map(len, self.before.values()))

    @property
    def kept(self) -> int:
        return sum(len(set(lines) & set(self.after.get(b, []))) for b, lines in
                   self.before.items())


def package_version(ns: debroot.RootSystemd, package: str) -> str:
    return ns.run(["dpkg-query", "-W", "-f", "${Version}", package]).stdout.strip()


def upgrade(lane: RootLane, tools: NsSwitch) -> UpgradeRun:
    ns = lane.ns
    # As after a boot: openvswitch-switch.service is enabled (WantedBy=
    # multi-user.target), so it runs, with ovs-record-hostname.service that it
    # Requires= (the latter's RequiredBy=); the lane started openvswitch.service.
    ns.systemctl("start", "openvswitch-switch.service")
    ns.settle()
    versions_before = versions(ns)
    before = canon.all_states(tools)
    with lane.hosts.prober(PROBE_INTERVAL) as gap:
        began = time.monotonic()
        proc = ns.run(UPGRADE, env=APT_ENV, check=False, timeout=900)
        apt_seconds = time.monotonic() - began
    if proc.returncode != 0:
        raise BedError(f"the upgrade failed:\n{proc.stdout[-3000:]}{proc.stderr}")
    ns.settle()
    run = UpgradeRun(versions_before, versions(ns), before, canon.all_states(tools),
                     gap.seconds)
    run.apt_seconds = apt_seconds
    run.converted_online = ONLINE_CONVERSION in proc.stdout + proc.stderr
    run.converted_at_restart = OVS_CTL_CONVERSION in ns.run(
        ["journalctl", "-o", "cat", "-u", "ovsdb-server.service"], check=False).stdout
    down = vswitchd_downtime(ns)
    run.vswitchd_down, run.stopped_after_unpack = down.seconds, down.after_last_unpack
    run.flow_restore_wait = tools.flow_restore_wait()
    run.traffic = lane.hosts.ping()
    return run


# systemd's catalog ids of "Stopping UNIT..." and "Started UNIT".
UNIT_STOPPING = "de5b426a63be47a7b6ac3eaac82e2f6f"
UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"


@dataclass(frozen=True)
class Downtime:
    """ovs-vswitchd's last stop during the upgrade, by systemd's journal and dpkg's log."""

    seconds: float  # from "Stopping" to the next "Started"
    after_last_unpack: bool  # "Stopping" came after dpkg's last package was unpacked


def vswitchd_downtime(ns: debroot.RootSystemd) -> Downtime:
    out = ns.run(["journalctl", "-o", "json", "UNIT=ovs-vswitchd.service"], check=False).stdout
    stopping = started = 0
    stopping_wall = 0.0
    for line in out.splitlines():
        entry = json.loads(line)
        stamp = int(entry["__MONOTONIC_TIMESTAMP"])
        if entry.get("MESSAGE_ID") == UNIT_STOPPING:
            stopping, started = stamp, 0
            stopping_wall = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
        elif entry.get("MESSAGE_ID") == UNIT_STARTED and stopping:
            started = stamp
    log = ns.run(["cat", "/var/log/dpkg.log"]).stdout
    # The last unpack, and the configure of openvswitch-switch (its postinst
    # restarts the switch): at dpkg.log's one-second resolution, a stop from
    # openvswitch-switch's preinst falls in the same second as the unpack of
    # openvswitch-common that follows it, not in its configure's.
    unpacks = unpacked(log) + configured(log, "openvswitch-switch")[-1:]
    # dpkg logs local time: the roots have no /etc/localtime, so UTC.
    last_unpack = max(calendar.timegm(time.strptime(u, "%Y-%m-%d %H:%M:%S"))
                      for u in unpacks) if unpacks else 0.0
    return Downtime((started - stopping) / 1e6 if started else float("nan"),
                    int(stopping_wall) >= last_unpack)


def configured(dpkg_log: str, package: str) -> list[str]:
    """When (dpkg's "DATE TIME") each configure of `package` began."""
    return [" ".join(f[:2]) for f in map(str.split, dpkg_log.splitlines())
            if len(f) > 3 and f[2] == "configure" and f[3].split(":")[0] == package]


def unpacked(dpkg_log: str) -> list[str]:
    """When (dpkg's "DATE TIME") each package's files were in place: the
    "status unpacked P" after an "unpack P" action, which comes before P's
    preinst (that may itself stop the daemons). A configure logs "status
    unpacked P" too, as it begins: not an unpack."""
    times, action = [], ""
    for line in dpkg_log.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        if fields[2] != "status":
            action = f"{fields[2]} {fields[3]}"
        elif fields[3] == "unpacked" and len(fields) > 4 and action == f"unpack {fields[4]}":
            times.append(" ".join(fields[:2]))
    return times


def report(title: str, run: UpgradeRun) -> None:
    print(f"\nupgrade lane, {title}:")
    for tool in run.versions_before:
        print(f"  {tool}: {run.versions_before[tool]}  ->  {run.versions_after[tool]}")
    print(f"  canonical lines kept: {run.kept} of {run.total}")
    print(f"  forwarding gap of the upgrade: {run.gap * 1000:.0f} ms (apt-get install "
          f"{run.apt_seconds:.1f} s; ovs-vswitchd from Stopping to Started in the journal "
          f"{run.vswitchd_down * 1000:.0f} ms, stopped "
          f"{'after' if run.stopped_after_unpack else 'BEFORE'} dpkg's last unpack)")
    where = [w for w, done in (("online, after the unpack", run.converted_online),
                               ("by ovs-ctl, in the restart", run.converted_at_restart)) if done]
    print(f"  database converted to 3.5's schema: {' and '.join(where) or 'not seen'}")
    if run.restart_gap:
        print(f"  plain `systemctl restart openvswitch` gap, same root: "
              f"{run.restart_gap * 1000:.0f} ms (ratio {run.gap / run.restart_gap:.2f})")
    print(f"  flow-restore-wait after: {run.flow_restore_wait or 'absent'}; "
          f"traffic after: {'yes' if run.traffic else 'no'}")
    if run.refused_downgrade:
        print(f"  rollback with data 3.1 does not take: {run.refused_downgrade}")
    if run.rollback:
        print(f"  rollback 3.5 -> 3.1: {run.rollback}")


# Four prefixes: 3.5's schema allows them, 3.1's three at most.
PREFIXES = "prefixes=ip_dst,ip_src,ipv6_dst,ipv6_src"
REFUSAL = "ovs-service: refusing to go on: the database does not convert"  # dpkg-hook


def downgrade(version31: str) -> list[str]:
    return [*APT, "--allow-downgrades", "install", f"openvswitch-switch={version31}",
            f"openvswitch-common={version31}"]


def refused_downgrade(lane: RootLane, tools: NsSwitch, version31: str) -> str:
    """A downgrade whose data 3.1's schema does not take: the dpkg hook must
    stop apt after the unpack, before the configure (whose ovs-ctl would
    start on an empty database), with 3.5's daemons running on, every line
    kept. Then the data is fixed, for the rollback to go on. Says what came."""
    ns = lane.ns
    running = _running_vswitchd(ns)
    ns.run(["ovs-vsctl", "--", "--id=@ft", "create", "Flow_Table", PREFIXES, "--",
            "set", "Bridge", "br0", "flow_tables:0=@ft"])
    before = canon.all_states(tools)
    proc = ns.run(downgrade(version31), env=APT_ENV, check=False, timeout=900)
    out = proc.stdout + proc.stderr
    refusal = next((ln for ln in out.splitlines() if REFUSAL in ln), "")
    ns.settle()
    problems = [what for what, bad in (
        ("apt-get succeeded", proc.returncode == 0),
        ("no refusal from the hook", not refusal),
        ("ovs-vswitchd was restarted", _running_vswitchd(ns) != running),
        ("state changed", canon.all_states(tools) != before)) if bad]
    ns.run(["ovs-vsctl", "clear", "Bridge", "br0", "flow_tables"])
    if problems:
        return f"not refused: {', '.join(problems)}"
    return f"refused, {running[1]} running on with every line: {refusal.strip()}"


def _running_vswitchd(ns: debroot.RootSystemd) -> tuple[str, str]:
    """The running ovs-vswitchd: its pid and the version it says (not its binary's on disk)."""
    pid = ns.run(["systemctl", "show", "-p", "MainPID", "--value", "ovs-vswitchd"]).stdout
    said = ns.run(["ovs-appctl", "-t", "ovs-vswitchd", "version"]).stdout
    return pid.strip(), said.splitlines()[0].strip()


def rollback(lane: RootLane, tools: NsSwitch, version31: str) -> str:
    """Downgrade to bookworm's package; say what the switch holds after."""
    ns = lane.ns
    before = canon.all_states(tools)
    proc = ns.run(downgrade(version31), env=APT_ENV, check=False, timeout=900)
    if proc.returncode != 0:
        return f"not run: apt-get refused the downgrade: {proc.stderr.strip().splitlines()[-1:]}"
    ns.settle()
    after = canon.all_states(tools)
    running = versions(ns)["ovs-vswitchd"]
    if after == before:
        return f"restored exactly ({sum(map(len, before.values()))} lines), now {running}"
    journal = ns.journal()
    refusals = [ln for ln in journal.splitlines() if "refus" in ln.lower()]
    kept = sum(len(set(v) & set(after.get(b, []))) for b, v in before.items())
    what = refusals[-1].split(": ", 1)[-1] if refusals else "no refusal in the journal"
    return (f"not restored: {kept} of {sum(map(len, before.values()))} lines on {running}; "
            f"{what}")


def with_ovs_service(bookworm: Path, trixie: Path, *, try_rollback: bool = True) -> UpgradeRun:
    """The plain `systemctl restart openvswitch` (for the ratio), the upgrade,
    then (when the upgrade kept everything) the rollback, with ovs-service's package."""
    with root_lane(bookworm, with_package=True) as lane:
        tools = ForeignTools(lane.ns, trixie)
        version31 = package_version(lane.ns, "openvswitch-switch")
        before = canon.all_states(tools)
        with lane.hosts.prober(PROBE_INTERVAL) as restart_gap:
            lane.ns.run(["systemctl", "restart", "openvswitch"])
            lane.ns.settle()
        assert_switch_whole((lane.ns, tools, lane.hosts), before, "the plain restart")
        run = upgrade(lane, tools)
        run.restart_gap = restart_gap.seconds
        if not try_rollback:
            run.rollback = ""
        elif run.after == run.before:
            run.refused_downgrade = refused_downgrade(lane, tools, version31)
            run.rollback = rollback(lane, tools, version31)
        else:
            run.rollback = "not tried: the upgrade itself lost state"
        return run


def with_debian_units(bookworm: Path, trixie: Path) -> UpgradeRun:
    """The control run: the same upgrade with Debian's units alone."""
    with root_lane(bookworm, with_package=False) as lane:
        return upgrade(lane, ForeignTools(lane.ns, trixie))
