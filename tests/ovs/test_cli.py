"""The CLI around snapshots: list, show, diff, retention, status, plans; and the
store's own round trips. Checked against a private switch with ovs-ofctl."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from ovs_service import codec, store
from ovs_service.errors import SnapshotInvalid
from tests.harness import REPO, canon
from tests.harness.ovsbed import Cli, CliResult, OvsBed, one_line_error, wait_for


def test_list_show_and_diff(ovs: OvsBed, cli: Cli) -> None:
    ovs.add_bridge("br0", protocols=("OpenFlow13",))
    ovs.ofctl("-O", "OpenFlow13", "add-flow", "br0", "priority=5,ip,actions=drop")
    first = cli.save()
    ovs.ofctl("-O", "OpenFlow13", "add-flow", "br0", "priority=9,arp,actions=drop")
    ovs.ofctl("-O", "OpenFlow13", "del-flows", "br0", "ip")
    second = cli.save()

    listing = cli("snapshot", "list", "--json").json()
    assert [s["path"] for s in listing] == [str(first), str(second)]
    shown = cli("snapshot", "show", "--json").json()  # the newest
    assert shown["path"] == str(second) and shown["schema"] == store.SCHEMA
    assert shown["bridges"] == [{"name": "br0", "openflow": "OpenFlow13", "flows": 2,
                                 "groups": 0, "meters": 0, "tlv": 0}]
    diff = cli("snapshot", "diff", str(first), str(second), "--json").json()
    change = diff["bridges"]["br0"]
    assert (change["removed"], change["added"]) == (1, 1)
    assert any("priority=9,arp" in m for m in change["messages"])
    assert any("priority=5,ip" in m for m in change["messages"])
    text = cli("snapshot", "diff", str(first), str(first)).stdout
    assert text.strip() == "no differences"


def test_retention_keeps_the_newest_and_the_pending(ovs: OvsBed, cli: Cli) -> None:
    ovs.add_bridge("br0")
    first = cli.save()
    store.mark_pending(cli.state_dir, first)
    saved = [cli.save() for _ in range(6)]
    left = [Path(s["path"]) for s in cli("snapshot", "list", "--json").json()]
    assert left == [first, *saved[-5:]]
    assert all(oct(s.stat().st_mode & 0o777) == "0o700" for s in left)


def test_status_and_plans(ovs: OvsBed, cli: Cli) -> None:
    ovs.add_bridge("br0")
    status = cli("status", "--json").json()
    assert status["pending"] is None and status["flow_restore_wait"] is False
    for op in ("restart", "force-reload-kmod"):
        plan = cli(op, "--dry-run", "--json").json()
        assert plan["dry_run"] and plan["steps"][0]["name"] == "save"
    kmod = [s["name"] for s in cli("force-reload-kmod", "--dry-run", "--json").json()["steps"]]
    assert kmod.index("reload-module") < kmod.index("start-ovs-vswitchd") < kmod.index(
        "restore-interfaces")


def test_restart_without_systemd_is_one_line(ovs: OvsBed, cli: Cli) -> None:
    """No system bus here: the transaction refuses before touching anything."""
    ovs.add_bridge("br0")
    result = cli("restart", check=False)
    one_line_error(result)
    assert result.returncode == 5 and "D-Bus" in result.stderr, result.describe()
    assert cli("snapshot", "list", "--json").json() == []


def test_version_and_help() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "ovs_service", "--version"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().startswith("ovs-service ")
    for command in ("save", "restore", "restart", "force-reload-kmod", "recover", "status",
                    "check-dead-ifs"):
        text = subprocess.run([sys.executable, "-m", "ovs_service", command, "--help"], env=env,
                              capture_output=True, text=True, check=True).stdout
        assert "Example" in text or command in ("status",), command


def test_manifest_round_trip(tmp_path: Path) -> None:
    writer = store.SnapshotWriter(tmp_path / "s")
    with writer.open("flows/x.ofp") as f:
        f.write(b"\x04\x00\x00\x08\x00\x00\x00\x00")
    snap = writer.commit(ovs_version="3.1.0", stages=["flows"], bridges=["br0"])
    where = codec.Where(snap.path, store.MANIFEST)
    again = store.Manifest.from_doc(snap.manifest.to_doc(), where=where)
    assert again == snap.manifest
    assert store.load(snap.path).manifest == snap.manifest
    assert not list(tmp_path.glob(".incoming-*"))


@pytest.mark.parametrize("text", ["[]", "{}", '{"schema": 1}', "not json"])
def test_manifest_garbage_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(SnapshotInvalid):
        store.Manifest.parse(text, tmp_path)


def test_check_dead_ifs_json() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "ovs_service", "check-dead-ifs", "--json"],
                          env=env, capture_output=True, text=True, check=False)
    assert proc.returncode in (0, 1)
    assert isinstance(json.loads(proc.stdout), list)


# save and restore take the transactions' lock: two restores at once would
# delete each other's meters, and with them the flows that use them.


def _meters_and_flows(ovs: OvsBed) -> None:
    ovs.add_bridge("br0", protocols=("OpenFlow13",), ports={"p1": 1})
    for meter in range(1, 9):
        ovs.ofctl("-O", "OpenFlow13", "add-meter", "br0",
                  f"meter={meter},kbps,band=type=drop,rate={meter * 1000}")
    ovs.ofctl("-O", "OpenFlow13", "add-flows", "br0", "-", input="".join(
        f"priority={10 + i},ip,nw_dst=10.0.{i}.0/24,actions=meter:{i % 8 + 1},output:1\n"
        for i in range(200)))


def _read(file: IO[str]) -> str:
    file.seek(0)
    return file.read()


@contextlib.contextmanager
def _lock_held(cli: Cli) -> Iterator[subprocess.Popen[bytes]]:
    """The store's lock, held by another process (flock), as a transaction would."""
    lock = cli.state_dir / store.LOCK
    # One process that holds it (flock(1) with a command would leave it to a child).
    holder = subprocess.Popen(["sh", "-c", 'exec 9>>"$0" && flock 9 && exec sleep 600', lock])
    try:
        wait_for("the helper to hold the lock", lambda: subprocess.run(
            ["flock", "-n", str(lock), "true"], check=False).returncode != 0)
        yield holder
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("command", ["save", "restore"])
def test_save_and_restore_wait_for_the_lock(ovs: OvsBed, cli: Cli, command: str) -> None:
    _meters_and_flows(ovs)
    snapshot = cli.save()
    with _lock_held(cli) as holder:
        refused = cli(command, check=False)
        one_line_error(refused)
        assert refused.returncode == 6, refused.describe()
        assert str(cli.state_dir / store.LOCK) in refused.stderr, refused.describe()
        # Released only once the waiter says it waits (its start-up may take
        # longer than any fixed sleep on a loaded machine).
        with tempfile.TemporaryFile("w+") as stderr:
            argv = (sys.executable, "-m", "ovs_service", command, "--wait", "60")
            waiter = subprocess.Popen(
                argv,
                cwd=REPO, env=cli.env(), stdout=subprocess.PIPE, stderr=stderr, text=True)
            try:
                wait_for("the waiter to say it waits",
                         lambda: "waiting for another transaction" in _read(stderr), timeout=60)
                assert waiter.poll() is None, "did not wait for the lock"
                holder.kill()
                out, _ = waiter.communicate(timeout=120)
            finally:
                if waiter.poll() is None:
                    waiter.kill()
                    waiter.wait()
            stderr.seek(0)
            waited = CliResult(argv, waiter.returncode, out, stderr.read())
    assert waited.returncode == 0, waited.describe()
    assert cli("snapshot", "list", "--json").json()[0]["path"] == str(snapshot)


def test_concurrent_restores_both_leave_the_whole_state(ovs: OvsBed, cli: Cli) -> None:
    _meters_and_flows(ovs)
    before = canon.all_states(ovs)
    snapshot = cli.save()
    for _ in range(3):
        canon.wipe(ovs, "br0")
        procs = [subprocess.Popen(
            [sys.executable, "-m", "ovs_service", "restore", "--from", str(snapshot),
             "--wait", "120"], env=cli.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True) for _ in range(2)]
        done = [(p.wait(timeout=300), *p.communicate()) for p in procs]
        assert [code for code, _, _ in done] == [0, 0], done
        after = canon.all_states(ovs)
        assert after == before, canon.diff(before["br0"], after["br0"])
