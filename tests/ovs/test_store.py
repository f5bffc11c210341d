"""The store against a clock that goes back, and against the directories around it.

Snapshots are ordered by a sequence number, never by the clock: a save made
while the clock is behind the names already in the store must survive the
prune it triggers, be the newest, and be the pending one. `save --to DIR`
gives its own modes only to the directories it creates.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ovs_service import store
from tests.harness import REPO, canon
from tests.harness.ovsbed import Cli, OvsBed

# Names of the format before sequences, far in the future: a clock that was
# ahead when they were taken (a real-time clock then corrected, a VM reverted).
FUTURE = [f"2999010{day}T000000.000000000" for day in range(1, 6)]


def _hook(cli: Cli, hook: str) -> subprocess.CompletedProcess[str]:
    """`python3 -m ovs_service.hooks HOOK`, as the unit runs it, against the bed."""
    env = {**os.environ, **cli.bed.env, "OVS_SERVICE_STATE_DIR": str(cli.state_dir),
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", ""))
                                         if p)}
    return subprocess.run([sys.executable, "-m", "ovs_service.hooks", hook], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def _flows(bed: OvsBed) -> list[str]:
    return canon.canonical_state(bed, "br0", "OpenFlow13")


def test_a_save_behind_the_clock_survives_and_is_pending(ovs: OvsBed, cli: Cli) -> None:
    ovs.add_bridge("br0", protocols=("OpenFlow13",))
    ovs.ofctl("-O", "OpenFlow13", "add-flow", "br0", "priority=7,ip actions=drop")
    stale = cli.save()
    stale_state = _flows(ovs)
    for name in FUTURE:  # five older snapshots that sort after today by their names
        shutil.copytree(stale, cli.state_dir / name)
    shutil.rmtree(stale)
    ovs.ofctl("-O", "OpenFlow13", "add-flow", "br0", "priority=9,arp actions=NORMAL")
    wanted = _flows(ovs)
    assert wanted != stale_state

    done = _hook(cli, "save")  # ExecStop=: save, mark pending, prune
    assert done.returncode == 0, done.stderr
    pending = (cli.state_dir / "pending").read_text().strip()
    assert (cli.state_dir / pending / "manifest.json").is_file(), (pending, done.stderr)
    assert pending not in FUTURE
    left = sorted(p.name for p in cli.state_dir.iterdir() if not p.name.startswith("."))
    assert pending in left and len([n for n in left if n in FUTURE]) == 4, left
    listed = [s["name"] for s in cli("snapshot", "list", "--json").json()]
    assert listed[-1] == pending, listed
    assert cli("status", "--json").json()["newest"] == str(cli.state_dir / pending)

    # The default restore takes that snapshot, not a stale "newest".
    canon.wipe(ovs, "br0")
    cli.restore()
    assert _flows(ovs) == wanted


def test_sequence_survives_a_clock_behind_its_own_names(ovs: OvsBed, cli: Cli) -> None:
    """Sequenced names whose times lie in the future still give way to a new save."""
    ovs.add_bridge("br0")
    first = cli.save()
    future = cli.state_dir / f"{first.name.split('-')[0]}-29990101T000000.000000000"
    first.rename(future)
    second = cli.save()
    listed = [s["path"] for s in cli("snapshot", "list", "--json").json()]
    assert listed == [str(future), str(second)]


@pytest.mark.parametrize("mode", [0o1777, 0o755])
def test_save_to_leaves_existing_directories_alone(ovs: OvsBed, cli: Cli, tmp_path: Path,
                                                   mode: int) -> None:
    ovs.add_bridge("br0")
    parent = tmp_path / "parent"
    parent.mkdir()
    os.chmod(parent, mode)
    before = parent.stat()
    assert cli("save", "--to", str(parent / "snap"), "--json").json()["path"] == str(
        parent / "snap")
    after = parent.stat()
    assert stat.S_IMODE(after.st_mode) == mode == stat.S_IMODE(before.st_mode)
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    # What the save makes is its own: 0700.
    target = parent / "made" / "by" / "save" / "snap"
    cli("save", "--to", str(target))
    assert stat.S_IMODE(parent.stat().st_mode) == mode
    for made in (parent / "made", parent / "made" / "by", parent / "made" / "by" / "save",
                 target):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
    # An existing store keeps its mode too; a store the tool makes is 0700.
    os.chmod(cli.state_dir, 0o755)
    cli.save()
    assert stat.S_IMODE(cli.state_dir.stat().st_mode) == 0o755
    fresh = Cli(ovs, tmp_path / "new-store" / "state")
    fresh.save()
    assert stat.S_IMODE(fresh.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(fresh.state_dir.parent.stat().st_mode) == 0o700


def test_prune_spares_a_save_in_progress_whatever_the_clock(tmp_path: Path) -> None:
    """Work directories go when no save holds them, not by their age alone."""
    root = tmp_path / "state"
    live = store.SnapshotWriter(root / "00000001-20000101T000000.000000000")
    dead_old = root / ".incoming-00000002-x.dead"
    dead_future = root / ".incoming-00000003-y.dead"
    for work in (dead_old, dead_future):
        work.mkdir(mode=0o700)
    hour = 3600
    os.utime(live.tmp, (time.time() - 2 * hour, time.time() - 2 * hour))
    os.utime(dead_old, (time.time() - 2 * hour, time.time() - 2 * hour))
    os.utime(dead_future, (time.time() + 2 * hour, time.time() + 2 * hour))
    store.prune(root, 5)
    left = sorted(p.name for p in root.iterdir())
    assert left == [live.tmp.name], left
    live.abort()


@pytest.mark.parametrize("name", ["..", ".", ".incoming-x", "a/b", ""])
def test_a_marker_names_a_snapshot_in_the_store(tmp_path: Path, name: str) -> None:
    (tmp_path / "pending").write_text(f"{name}\n")
    assert store.pending_snapshot(tmp_path) is None
