"""The fleet lane: the Ansible collection's rolling_restart over real SSH.

Three hosts (`tests.harness.fleet`: each its own systemd, Open vSwitch under
ovs-service's units, the corpus bridge and two namespaces pinging through a
second bridge, and sshd), on a Linux bridge the test creates; ansible-core's
`ansible-playbook` plays the collection's playbook from a namespace on that
bridge. In order:

- check mode: the module runs `restart --dry-run` and nothing restarts;
- a rolling restart: every host's ovs-vswitchd restarted, every host whole;
- a rolling upgrade, a reinstall of Debian's openvswitch-switch .deb with
  dpkg on each host (its maintainer scripts stop and start the daemons
  through systemd, ovs-service's hooks keep the state): every host whole.
  Each host installs into private overlays of /usr, /etc, /var/lib/dpkg,
  /var/cache and /var/log, so the machine's files and package database are
  never written (the hosts share the machine's file system);
- the second host's restore fails (the test-only OVS_SERVICE_FAULT): the run
  stops there, naming the host, the bridge and the reason; the first host
  was restarted, the third never was (its ovs-vswitchd has the same PID and
  start time).

After the good restart and after the failed one, each host's Debian
prometheus-node-exporter, scraped over its loopback, serves what ovs-service
wrote: the last restart's success, the flows restored per bridge (equal to
ovs-ofctl's count), the bridge whose restore failed.

Every host's state is checked with its own ovs-ofctl (canonical dumps), not
with ovs-service; the wall time of each step is printed at the end.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness import REPO, canon
from tests.harness.fleet import EXECUTABLE, NODE_EXPORTER, Fleet, Host, fleet_of
from tests.harness.lane import assert_switch_whole
from tests.harness.promtext import MetricFamily

pytestmark = [pytest.mark.fleet, pytest.mark.root, pytest.mark.slow]

HOSTS = 3
CACHE = REPO / ".cache" / "fleet"
FAILING_BRIDGE = "brt"


@dataclass
class Times:
    config: pytest.Config
    steps: list[tuple[str, float]] = field(default_factory=list)

    def add(self, name: str, seconds: float) -> None:
        self.steps.append((name, seconds))

    def show(self, *lines: str) -> None:
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            for line in lines:
                if reporter is not None:
                    reporter.write_line(line)


@pytest.fixture(scope="module")
def times(request: pytest.FixtureRequest) -> Iterator[Times]:
    recorded = Times(request.config)
    start = time.monotonic()
    yield recorded
    recorded.show("", "fleet lane, time of each step:",
                  *(f"  {name:<58} {seconds:7.1f} s" for name, seconds in recorded.steps),
                  f"  {'in all':<58} {time.monotonic() - start:7.1f} s")


@pytest.fixture(scope="module")
def fleet(times: Times) -> Iterator[Fleet]:
    for tool in ("ansible-playbook", "ssh-keygen", "/usr/sbin/sshd", NODE_EXPORTER):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    start = time.monotonic()
    with fleet_of(HOSTS) as booted:
        times.add(f"boot {HOSTS} hosts (systemd, switch, corpus, sshd)",
                  time.monotonic() - start)
        yield booted


SUCCESS = "ovs_service_last_transaction_success"
ENDED = "ovs_service_last_transaction_timestamp_seconds"
RESTORED_FLOWS = "ovs_service_restored_flows"
FAILED = "ovs_service_restore_failed"


def _failed_bridges(metrics: dict[str, MetricFamily]) -> set[str]:
    """The bridges ovs_service_restore_failed says are failed (value 1)."""
    return {dict(labels).get("bridge", "") for labels, value in metrics[FAILED].samples.items()
            if value == 1}


def states(fleet: Fleet) -> dict[str, dict[str, list[str]]]:
    return {h.name: canon.all_states(h.lane[1]) for h in fleet.hosts}


def assert_whole(host: Host, before: dict[str, list[str]], what: str) -> None:
    assert_switch_whole(host.lane, before, f"{what} on {host.name}")
    status = host.status()
    assert status["pending"] is None and status["failed"] is None, status
    assert status["transaction"] is None, status


def played(fleet: Fleet, times: Times, what: str, **options: object) -> str:
    run = fleet.play(**options)  # type: ignore[arg-type]
    times.add(f"ansible-playbook: {what}", run.seconds)
    assert run.rc == 0, f"{what}: exit {run.rc}\n{run.output[-8000:]}"
    summary = run.summary()
    assert sorted(summary) == [h.name for h in fleet.hosts], run.output[-4000:]
    for host, line in summary.items():
        assert " ok " in f" {line} ", f"{host}: {line}"
    return run.output


def test_check_mode_runs_the_dry_run_and_restarts_nothing(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    daemon = host.vswitchd()
    proc = subprocess.run(
        ["ip", "netns", "exec", fleet.hub, "ansible", "-i", str(fleet.inventory({})),
         host.name, "--check", "-m", "ovs_service.fleet.ovs_service",
         "-a", f"command=restart executable={EXECUTABLE}", "-o"],
        capture_output=True, text=True, timeout=120, env=fleet.environment(), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout.split("=>", 1)[1])
    assert doc["result"]["dry_run"] is True, doc
    assert doc["result"]["steps"][0]["name"] == "save", doc
    assert doc["changed"] is True, doc  # what a real run would change
    assert host.vswitchd() == daemon, "check mode restarted ovs-vswitchd"


def test_rolling_restart_keeps_every_host_whole(fleet: Fleet, times: Times) -> None:
    before = states(fleet)
    daemons = {h.name: h.vswitchd() for h in fleet.hosts}
    played(fleet, times, "rolling restart of 3 hosts", operation="restart")
    for host in fleet.hosts:
        assert host.vswitchd()[0] != daemons[host.name][0], f"{host.name} was not restarted"
        assert_whole(host, before[host.name], "the rolling restart")
        # What Prometheus scrapes: the restart succeeded, every flow came back.
        metrics = host.metrics()
        assert metrics[SUCCESS].value(operation="restart") == 1, host.name
        for bridge, rows in before[host.name].items():
            flows = sum(1 for row in rows if row.startswith("flow: "))
            assert metrics[RESTORED_FLOWS].value(bridge=bridge) == flows, (host.name, bridge)
        assert _failed_bridges(metrics) == set(), host.name


def _openvswitch_switch_deb() -> Path:
    """Debian's openvswitch-switch .deb of the version installed here (a reinstall)."""
    query = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "openvswitch-switch"],
                           capture_output=True, text=True, check=False)
    if query.returncode != 0:
        pytest.skip("openvswitch-switch is not installed")
    version = query.stdout.strip()
    name = f"openvswitch-switch_{version.replace(':', '%3a')}_amd64.deb"
    CACHE.mkdir(parents=True, exist_ok=True)
    deb = CACHE / name
    if not deb.exists():
        got = subprocess.run(["apt-get", "download", "-o", "APT::Sandbox::User=root",
                              f"openvswitch-switch={version}"], cwd=CACHE,
                             capture_output=True, text=True, timeout=300, check=False)
        cached = Path("/var/cache/apt/archives") / name
        if not deb.exists() and cached.exists():
            shutil.copy(cached, deb)
        if not deb.exists():
            pytest.skip(f"cannot download openvswitch-switch {version}: {got.stderr.strip()}")
    return deb


def test_rolling_upgrade_keeps_every_host_whole(fleet: Fleet, times: Times) -> None:
    deb = _openvswitch_switch_deb()
    for host in fleet.hosts:
        fleet.overlay_packages(host)
    before = states(fleet)
    daemons = {h.name: h.vswitchd() for h in fleet.hosts}
    played(fleet, times, "rolling upgrade (dpkg -i openvswitch-switch) of 3 hosts",
           operation="upgrade", extra={"ovs_fleet_upgrade_debs": [str(deb)]})
    for host in fleet.hosts:
        assert host.vswitchd()[0] != daemons[host.name][0], (
            f"the reinstall did not restart {host.name}'s ovs-vswitchd")
        assert_whole(host, before[host.name], "the rolling upgrade")


def test_a_failed_restore_stops_the_run_at_that_host(fleet: Fleet, times: Times) -> None:
    first, second, third = fleet.hosts
    daemons = {h.name: h.vswitchd() for h in fleet.hosts}
    third_ended = third.metrics()[ENDED].value(operation="restart")
    before = states(fleet)
    fault = {"ovs_fleet_environment": {"OVS_SERVICE_FAULT": f"fail:restore:{FAILING_BRIDGE}"}}
    run = fleet.play(operation="restart", host_vars={second.name: fault})
    times.add("ansible-playbook: rolling restart, the 2nd host's restore fails", run.seconds)
    assert run.rc != 0, run.output[-6000:]
    # The failure names the host, the bridge and the reason.
    fatal = [line for line in run.output.splitlines() if line.startswith("fatal: [")]
    assert fatal and fatal[-1].startswith(f"fatal: [{second.name}]"), run.output[-6000:]
    assert f"restore of bridge '{FAILING_BRIDGE}' failed" in fatal[-1], fatal[-1]
    assert "injected" in fatal[-1], fatal[-1]
    # The first host was restarted and is whole; the third was never touched.
    assert first.vswitchd()[0] != daemons[first.name][0]
    assert_whole(first, before[first.name], "a run that failed later")
    assert third.vswitchd() == daemons[third.name], "the third host's switch was restarted"
    assert third.status()["newest"] is not None
    summary = run.summary()
    assert summary[third.name] == "untouched", run.output[-4000:]
    assert "FAILED" in summary[second.name] and FAILING_BRIDGE in summary[second.name], summary
    assert " ok " in f" {summary[first.name]} ", summary
    # What Prometheus scrapes: the second host's restart failed, at that bridge;
    # the third's last restart is still the good one of the earlier run.
    failed = second.metrics()
    assert failed[SUCCESS].value(operation="restart") == 0
    assert _failed_bridges(failed) == {FAILING_BRIDGE}, failed[FAILED].samples
    untouched = third.metrics()
    assert untouched[SUCCESS].value(operation="restart") == 1
    assert untouched[ENDED].value(operation="restart") == third_ended
    assert _failed_bridges(untouched) == set()
