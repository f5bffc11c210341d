"""A real Open vSwitch upgrade, 3.1 -> 3.5, under running traffic.

A Debian 12 root (tests/harness/debroot.py: trixie in its apt sources,
trixie's openvswitch-switch and all it pulls in already in its apt cache)
boots its own systemd as PID 1 in private namespaces, with bookworm's
openvswitch-switch 3.1 and ovs-service's package (built there with
bookworm's tools). The lane's switch is loaded (corpus bridge, two hosts
steered by explicit flows through `brt`), then the operator's upgrade runs:
`apt-get install openvswitch-switch/trixie`, whose maintainer scripts stop
and start the daemons, while one host pings the other every millisecond.

The state is printed before and after with the same tools, trixie's
ovs-ofctl and ovs-vsctl (bound in from the trixie root, talking to the old
switch's sockets), so a field 3.5 prints differently from 3.1 cannot look
like a change. Every line must be kept, flow-restore-wait absent, traffic
back through the same flows. The control run does the same upgrade with
Debian's units alone (no ovs-service); the rollback downgrades back to 3.1
and reports whether the state came back exactly or the restore was refused.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import canon, debroot, upgrade
from tests.harness.upgrade import UpgradeRun, report

pytestmark = [pytest.mark.upgrade, pytest.mark.root, pytest.mark.slow]

@pytest.fixture(scope="module")
def trixie_root() -> debroot.RootState:
    return debroot.ensure_root(debroot.TRIXIE)


@pytest.fixture(scope="module")
def bookworm_root() -> debroot.RootState:
    return debroot.ensure_root(debroot.BOOKWORM_UPGRADE)


@pytest.fixture(scope="module")
def with_ovs_service(trixie_root: debroot.RootState,
                     bookworm_root: debroot.RootState) -> Iterator[UpgradeRun]:
    run = upgrade.with_ovs_service(bookworm_root.path, trixie_root.path)
    report("with ovs-service", run)
    yield run


@pytest.fixture(scope="module")
def with_debian_units(trixie_root: debroot.RootState,
                      bookworm_root: debroot.RootState) -> Iterator[UpgradeRun]:
    run = upgrade.with_debian_units(bookworm_root.path, trixie_root.path)
    report("control run, Debian's units alone", run)
    yield run


def test_upgrade_runs_trixies_switch(with_ovs_service: UpgradeRun) -> None:
    run = with_ovs_service
    assert " 3.1." in run.versions_before["ovs-vswitchd"], run.versions_before
    assert " 3.5." in run.versions_after["ovs-vswitchd"], run.versions_after


def test_upgrade_keeps_every_line(with_ovs_service: UpgradeRun) -> None:
    run = with_ovs_service
    problems = [f"{b}:\n{canon.diff(run.before[b], run.after.get(b, []))}"
                for b in run.before if run.before[b] != run.after.get(b)]
    assert not problems, "\n".join(problems)
    assert run.total > 120


def test_upgrade_clears_flow_restore_wait_and_traffic_resumes(
        with_ovs_service: UpgradeRun) -> None:
    assert with_ovs_service.flow_restore_wait == ""
    assert with_ovs_service.traffic


def test_the_switch_forwards_while_dpkg_unpacks(with_ovs_service: UpgradeRun) -> None:
    """Only the restart may cost: openvswitch-switch's preinst may not stop the
    daemons (the package's dpkg hook), so ovs-vswitchd is stopped after dpkg's
    last unpack (its log), and the gap is within its down time (the journal)."""
    run = with_ovs_service
    assert run.stopped_after_unpack, "ovs-vswitchd was stopped while dpkg still unpacked"
    assert run.gap <= run.vswitchd_down + 1.0, (run.gap, run.vswitchd_down)


def test_the_database_is_converted_before_the_restart(with_ovs_service: UpgradeRun) -> None:
    """The running 3.1 ovsdb-server takes 3.5's schema once dpkg has unpacked
    it (the dpkg hook's post-invoke), so ovs-ctl's start in the restart has
    nothing to back up, compact or convert."""
    run = with_ovs_service
    assert run.converted_online, "the dpkg hook did not convert the database"
    assert not run.converted_at_restart, "ovs-ctl converted the database inside the restart"


def test_a_rollback_whose_data_the_old_schema_does_not_take_stops_before_the_configure(
        with_ovs_service: UpgradeRun) -> None:
    """Four Flow_Table prefixes (3.5 allows them, 3.1 three): ovs-ctl's
    conversion at the configure's restart would fail and start on an empty
    database. The dpkg hook's trial conversion fails the unpack run, apt
    stops, 3.5's daemons run on with every line."""
    result = with_ovs_service.refused_downgrade
    assert result.startswith("refused, "), result
    assert "set must have 0 to 3 members but 4 are present" in result, result


def test_rollback_restores_exactly_or_is_refused(with_ovs_service: UpgradeRun) -> None:
    result = with_ovs_service.rollback
    assert result.startswith(("restored exactly", "not restored")), result
    if result.startswith("not restored"):
        # A refusal must say so; a silent half restore is what must never happen.
        assert "no refusal in the journal" not in result, result


def test_debian_units_alone_lose_the_table(with_debian_units: UpgradeRun) -> None:
    run = with_debian_units
    assert " 3.5." in run.versions_after["ovs-vswitchd"], run.versions_after
    # What this lane exists to show: without ovs-service the upgrade loses state.
    assert run.kept < run.total, "Debian's units alone kept everything"
    # And, the control for the conversion: without the hook ovs-ctl converts.
    assert run.converted_at_restart and not run.converted_online
