"""What a transaction does when a step fails: before the stop, refuse and
change nothing; after it, put the switch back, then report. The switch and
systemd are stood in for here (the steps themselves run in the systemd and
VM lanes: test_crash_lane.py, test_kmod_crash_lane.py)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from ovs_service import journal, kmod, reload, store, transaction
from ovs_service.errors import CommandFailed, PrecheckFailed, RolledForward
from ovs_service.log import StepLog


def _failing_step(run: transaction.Run) -> None:
    with run.step("restart-ovsdb-server"):
        raise CommandFailed(command="systemctl", returncode=1, stderr="job failed")


def test_a_failure_after_the_stop_is_reported_once_the_switch_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[journal.Record | None] = []

    def roll_forward(root: Path, record: journal.Record | None, tx: journal.Journal,
                     result: transaction.Recovery, start: bool = False) -> None:
        assert start, "ovs-vswitchd may be on its way down: start it whatever it looks like"
        seen.append(record)
        result.actions.append(f"started {transaction.VSWITCHD_UNIT}")
        tx.finish()

    monkeypatch.setattr(transaction, "_roll_forward", roll_forward)
    with (transaction.Run(tmp_path, "restart", StepLog()) as run,
          pytest.raises(RolledForward) as raised, transaction.rolling_forward(run)):
        _failing_step(run)
    assert str(raised.value) == (
        "restart failed at restart-ovsdb-server: systemctl failed (exit 1): job failed; "
        f"the switch was put back: started {transaction.VSWITCHD_UNIT}")
    assert raised.value.exit_code == 1
    (record,) = seen
    assert record is not None and record.step == "restart-ovsdb-server"
    assert journal.read(tmp_path) is None  # nothing left to recover


def test_when_putting_back_fails_too_the_journal_stays_for_recover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def roll_forward(root: Path, record: journal.Record | None, tx: journal.Journal,
                     result: transaction.Recovery, start: bool = False) -> None:
        # The disk is full now: the journal cannot follow, the work goes on.
        monkeypatch.setattr(store, "write_atomic", _no_space)
        with tx.step("start-units"):
            raise CommandFailed(command="systemctl", returncode=1, stderr="again")

    monkeypatch.setattr(transaction, "_roll_forward", roll_forward)
    with (transaction.Run(tmp_path, "restart", StepLog()) as run,
          pytest.raises(RolledForward) as raised, transaction.rolling_forward(run)):
        _failing_step(run)
    assert "putting the switch back failed too" in str(raised.value)
    assert "ovs-service recover" in str(raised.value)
    left = journal.read(tmp_path)
    assert left is not None and left.step == "restart-ovsdb-server"
    assert not (Path(journal.run_dir()) / journal.DEFER).exists()


def _no_space(path: Path, data: bytes) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_module_that_cannot_go_stops_force_reload_kmod_before_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVS_SERVICE_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(kmod, "module_support", lambda: True)
    monkeypatch.setattr(kmod, "unload_blockers", lambda own_ports: [
        "openvswitch is built into the kernel, not a module"])
    with pytest.raises(PrecheckFailed) as raised:
        reload.force_reload_kmod()
    assert str(raised.value) == ("force-reload-kmod not started, nothing was changed: "
                                 "openvswitch is built into the kernel, not a module")
    assert journal.read(tmp_path) is None
    assert store.snapshots(tmp_path) == []


def test_no_room_for_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert transaction.room_for_journal(tmp_path) == []
    monkeypatch.setattr(transaction, "JOURNAL_ROOM", 1 << 62)
    (reason,) = transaction.room_for_journal(tmp_path)
    assert "free for the transaction journal" in reason
