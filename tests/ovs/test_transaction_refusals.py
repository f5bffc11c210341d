"""A transaction that stops before ovs-vswitchd does leaves nothing behind, and
recover does not mistake what a killed one left for a switch to restore.

The saves are real (a private switch); systemd is stood in for by one that
fails the test if anything is asked of it: nothing may be stopped. The
same under a real systemd: test_crash_lane.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ovs_service import journal, kmod, reload, store, systemd, transaction
from ovs_service.errors import InjectedFault, PrecheckFailed, SaveIncomplete
from tests.harness.ovsbed import Cli, OvsBed

DROP_IP = "priority=10,ip actions=drop"
DROP_SSH = "priority=20,tcp,tp_dst=22 actions=drop"


class NoSystemd:
    """Systemd for a transaction that must refuse before it asks anything of it."""

    def __enter__(self) -> NoSystemd:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"systemd asked to {name} before the refusal")


@pytest.fixture
def state(ovs: OvsBed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The transactions in this process, against the private switch."""
    root = tmp_path / "state"
    for key, value in {**ovs.env, "OVS_SERVICE_STATE_DIR": str(root)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(systemd, "Systemd", NoSystemd)
    monkeypatch.setattr(kmod, "module_support", lambda: False)
    ovs.add_bridge("br0", protocols=("OpenFlow13",))
    ovs.ofctl("-O", "OpenFlow13", "add-flow", "br0", DROP_IP.replace(" ", ","))
    return root


def _nothing_left(root: Path, pending_before: Path | None = None) -> None:
    assert journal.read(root) is None, "a journal for recover, of a switch never stopped"
    assert store.pending_snapshot(root) == pending_before
    assert not (Path(journal.run_dir()) / journal.DEFER).exists()


def test_a_restart_that_cannot_save_every_bridge_leaves_nothing(
    ovs: OvsBed, state: Path
) -> None:
    ovs.add_bridge("br11", protocols=("OpenFlow11",))  # no version ovs-service speaks
    with pytest.raises(SaveIncomplete, match="br11"):
        transaction.restart()
    _nothing_left(state)


@pytest.mark.parametrize("op", ["restart", "force-reload-kmod"])
def test_a_failed_save_leaves_nothing(
    state: Path, monkeypatch: pytest.MonkeyPatch, op: str
) -> None:
    monkeypatch.setenv(journal.FAULT_ENV, "fail:save")
    with pytest.raises(InjectedFault):
        transaction.restart() if op == "restart" else reload.force_reload_kmod()
    _nothing_left(state)


@pytest.mark.parametrize("op", ["restart", "force-reload-kmod"])
def test_a_failed_precheck_leaves_nothing_marked(
    state: Path, monkeypatch: pytest.MonkeyPatch, op: str
) -> None:
    monkeypatch.setattr(transaction, "JOURNAL_ROOM", 1 << 62)
    with pytest.raises(PrecheckFailed, match="nothing was changed"):
        transaction.restart() if op == "restart" else reload.force_reload_kmod()
    _nothing_left(state)


def test_a_refusal_keeps_a_snapshot_pending_from_before(
    ovs: OvsBed, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pending snapshot the transaction did not write is not its to clear."""
    before = store.SnapshotWriter(store.new_snapshot_path(state))
    earlier = before.commit(ovs_version="3", stages=[], bridges=[], extra={})
    store.mark_pending(state, earlier.path)
    monkeypatch.setattr(transaction, "JOURNAL_ROOM", 1 << 62)
    with pytest.raises(PrecheckFailed):
        transaction.restart()
    _nothing_left(state, earlier.path)


@pytest.mark.parametrize(("op", "step", "step_state"), [
    ("restart", None, "begun"),
    ("restart", "save", "running"),
    ("restart", "save", "done"),
    ("force-reload-kmod", "save", "done"),
])
def test_recover_leaves_a_switch_that_was_never_stopped_alone(
    ovs: OvsBed, cli: Cli, op: str, step: str | None, step_state: str
) -> None:
    """Killed before the stop (after its save marked the snapshot pending):
    the switch ran on, and what it was given since stays."""
    ovs.add_bridge("br0", protocols=("OpenFlow13",))
    ovs.ofctl("-O", "OpenFlow13", "add-flow", "br0", DROP_IP.replace(" ", ","))
    snapshot = cli.save()
    if step is not None:
        store.mark_pending(cli.state_dir, snapshot)
    me = journal.ProcessId.of(1)
    assert me is not None
    left = journal.Record(op=op, pid=1 << 22, started=0.0, start=me.start, boot=me.boot,
                          step=step, state=step_state,
                          snapshot=snapshot.name if step else None,
                          done=["save"] if step_state == "done" else [])
    (cli.state_dir / journal.JOURNAL).write_text(json.dumps(left.__dict__))
    ovs.ofctl("-O", "OpenFlow13", "add-flow", "br0", DROP_SSH.replace(" ", ","))

    done = cli("recover", "--json").json()
    assert done["interrupted"]["op"] == op, done
    assert done["bridges"] == [], done
    assert any("never stopped" in a for a in done["actions"]), done
    flows = ovs.ofctl("-O", "OpenFlow13", "dump-flows", "br0", "--no-stats")
    assert DROP_SSH in flows and DROP_IP in flows, flows
    assert not (cli.state_dir / journal.JOURNAL).exists()
    assert store.pending_snapshot(cli.state_dir) is None
    assert "INTERRUPTED" not in cli("status").stdout


@pytest.mark.parametrize("op", ["restart", "force-reload-kmod"])
def test_a_dead_transaction_past_its_stop_is_recovered_first(
    state: Path, op: str
) -> None:
    """Its journal holds what recover needs (whether the kernel datapaths were
    deleted): a new transaction must not write over it."""
    state.mkdir(parents=True, exist_ok=True)
    dead = {"op": "force-reload-kmod", "pid": 0, "started": 1.0, "snapshot": None,
            "datapaths_deleted": True, "step": "reload-module", "state": "running",
            "done": [], "invocation": None, "start": 1, "boot": "another-boot"}
    (state / "transaction.json").write_text(json.dumps(dead))
    with pytest.raises(PrecheckFailed, match="recover first"):
        transaction.restart() if op == "restart" else reload.force_reload_kmod()
    assert json.loads((state / "transaction.json").read_text()) == dead
