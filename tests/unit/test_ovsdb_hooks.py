"""The ovsdb-stop / ovsdb-poststart hooks' decisions: a pending snapshot they
did not save, a mark naming a dead ovs-vswitchd, garbage marks, the units'
stop timeouts against the hooks' wait for the lock. Driven in-process, with
the switch's answers stubbed (the systemd lane runs them for real)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ovs_service import journal, operations, ovs, store
from ovs_service.hooks import unit_hooks


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state, run = tmp_path / "state", tmp_path / "run"
    state.mkdir(mode=0o700)
    run.mkdir(mode=0o700)
    monkeypatch.setenv("OVS_SERVICE_STATE_DIR", str(state))
    monkeypatch.setenv("OVS_SERVICE_RUN_DIR", str(run))
    monkeypatch.setenv("OVS_SERVICE_METRICS_DIR", str(tmp_path / "metrics"))
    return state


def _running_switch(monkeypatch: pytest.MonkeyPatch, *, restore_wait: bool) -> None:
    """ovs-vswitchd is this test's own process (alive, same boot); the database answers."""
    me = os.getpid()
    monkeypatch.setattr(ovs, "daemon_pid", lambda name, *a, **k: me)
    monkeypatch.setattr(ovs, "daemon_running", lambda name, *a, **k: True)
    monkeypatch.setattr(ovs, "flow_restore_wait", lambda: restore_wait)

    def no_save(**_: object) -> object:
        raise AssertionError("a new snapshot was taken")

    monkeypatch.setattr(operations, "take_snapshot", no_save)


def test_ovsdb_restart_keeps_a_restore_pending_from_an_earlier_vswitchd_stop(
        dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot saved by an earlier stop of ovs-vswitchd is pending and the
    running ovs-vswitchd still waits for it (flow-restore-wait set, restore not
    done yet). A restart of ovsdb-server alone must leave it pending: the
    switch never got those tables back. ovsdb-stop keeps it (right, as
    ovs-vswitchd's own save does), but then writes its mark naming it, and
    ovsdb-poststart takes it for its own and clears it."""
    earlier = dirs / "00000001-20260101T000000Z"
    earlier.mkdir(mode=0o700)
    store.mark_pending(dirs, earlier)
    assert store.pending_snapshot(dirs) == earlier
    _running_switch(monkeypatch, restore_wait=True)

    assert unit_hooks.ovsdb_stop() == 0
    assert unit_hooks.ovsdb_poststart() == 0

    assert store.pending_snapshot(dirs) == earlier, (
        "ovsdb-poststart cleared a pending restore that ovsdb-stop never saved")


def test_a_mark_naming_a_dead_vswitchd_is_not_kept(
        dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Held: a mark naming a process with our PID but another start time (PID
    reuse) is not the same ovs-vswitchd: poststart leaves the snapshot pending."""
    snap = dirs / "00000002-20260101T000000Z"
    snap.mkdir(mode=0o700)
    (dirs / "pending").write_text(snap.name + "\n")
    me = journal.ProcessId.of(os.getpid())
    assert me is not None
    (journal.run_dir() / unit_hooks.OVSDB_STOPPED).write_text(json.dumps(
        {"snapshot": snap.name,
         "vswitchd": {"pid": me.pid, "start": me.start + 1, "boot": me.boot}}))
    assert unit_hooks.ovsdb_poststart() == 0
    assert store.pending_snapshot(dirs) == snap


@pytest.mark.parametrize("garbage", [b"", b"\xff\xfe", b"null", b"[]", b'{"snapshot": 1}',
                                     b'{"snapshot": "x", "vswitchd": {"pid": "a", "start": 1, '
                                     b'"boot": "b"}}'])
def test_garbage_mark_is_harmless(dirs: Path, garbage: bytes) -> None:
    """Held: an unreadable or oddly shaped mark is ignored, and removed."""
    snap = dirs / "00000003-20260101T000000Z"
    snap.mkdir(mode=0o700)
    (dirs / "pending").write_text(snap.name + "\n")
    path = journal.run_dir() / unit_hooks.OVSDB_STOPPED
    path.write_bytes(garbage)
    assert unit_hooks.ovsdb_poststart() == 0
    assert store.pending_snapshot(dirs) == snap
    assert not path.exists()


def test_ovsdb_stop_can_wait_for_the_lock_as_long_as_its_unit_lets_it_run() -> None:
    """ovsdb-stop waits up to LOCK_WAIT (120 s) for the store's lock (held by
    a long `ovs-service save/restore`, or the background restorer, which holds
    it while waiting up to 300 s for ovs-vswitchd); ovsdb-server.service gives
    each ExecStop= TimeoutStopSec=60 s. Past 60 s systemd kills the hook and
    the database: nothing is saved for the running ovs-vswitchd, whose own
    save then cannot list its bridges, the very loss these hooks are for."""
    from tests.harness import REPO

    for name in ("ovsdb-server.service", "ovs-vswitchd.service"):
        unit = (REPO / "units" / name).read_text()
        timeout = next(float(line.split("=", 1)[1]) for line in unit.splitlines()
                       if line.startswith("TimeoutStopSec="))
        assert timeout > unit_hooks.LOCK_WAIT + 60, (name, timeout, unit_hooks.LOCK_WAIT)
