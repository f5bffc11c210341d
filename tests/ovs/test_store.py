"""The store against a clock that goes back, and against the directories around it.

Snapshots are ordered by a sequence number, never by the clock: a save made
while the clock is behind the names already in the store must survive the
prune it triggers, be the newest, and be the pending one. `save --to DIR`
gives its own modes only to the directories it creates.

Where it writes (a snapshot, the lock), no one but root and this user may be
able to change a directory: another user could swap a name in it for a link
to a place only root may write. And what it writes goes under the directory
it checked (by descriptor), never through a name swapped since.
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
from ovs_service.errors import UnsafeDirectory
from tests.harness import REPO, canon
from tests.harness.ovsbed import Cli, OvsBed, one_line_error

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


NOBODY = 65534


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (directories of another user)")


def _take_lock(root: Path) -> None:
    with store.lock(root):
        pass


def _victim(tmp_path: Path) -> Path:
    """A directory only root may write, with a file of its own."""
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    (victim / "manifest.json").write_text("root's own\n")
    return victim


def _tree(path: Path) -> list[tuple[str, str]]:
    return sorted((str(p.relative_to(path)), p.read_text() if p.is_file() else "")
                  for p in path.rglob("*"))


@pytest.mark.parametrize(("mode", "owner", "depth"), [
    (0o777, 0, 0),  # the parent: anyone may write it
    (0o770, 0, 0),  # the parent: the group may
    (0o755, NOBODY, 0),  # the parent: another user owns it
    (0o1777, NOBODY, 0),  # sticky, but its owner may still rename what is in it
    (0o777, 0, 2),  # a directory above it, not sticky
])
def test_writing_where_another_user_can_swap_a_name_is_refused(
        tmp_path: Path, mode: int, owner: int, depth: int) -> None:
    _needs_root()
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    os.chown(shared, owner, -1)
    below = shared / "a" / "b"
    below.mkdir(parents=True, mode=0o700)
    parent = below if depth else shared
    with pytest.raises(UnsafeDirectory, match=str(shared)):
        store.SnapshotWriter(parent / "snap")
    with pytest.raises(UnsafeDirectory, match=str(shared)):
        _take_lock(parent / "state")
    # Refused before anything was written.
    assert sorted(p.name for p in parent.iterdir()) == (["a"] if not depth else [])


@pytest.mark.parametrize("mode", [0o1777, 0o755, 0o700])
def test_a_directory_only_root_or_this_user_can_change_is_written(tmp_path: Path,
                                                                  mode: int) -> None:
    """/tmp and its like (sticky, root's) hold a `save --to`; a store may not be
    writable by anyone else at all."""
    parent = tmp_path / "parent"
    parent.mkdir()
    os.chmod(parent, mode)
    writer = store.SnapshotWriter(parent / "made" / "snap")
    writer.write_json("x.json", {})
    assert writer.commit(ovs_version="test", stages=[], bridges=[]).path.is_dir()
    if mode & 0o022:
        with pytest.raises(UnsafeDirectory, match="writable by group or others"):
            store.SnapshotWriter(store.new_snapshot_path(parent), store=True)
    else:
        store.SnapshotWriter(store.new_snapshot_path(parent), store=True).abort()


def test_a_link_the_path_goes_through_is_followed_only_if_it_is_safe(tmp_path: Path) -> None:
    _needs_root()
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "ours").symlink_to(real)
    store.SnapshotWriter(tmp_path / "ours" / "snap").abort()
    theirs = tmp_path / "theirs"
    theirs.symlink_to(real)
    os.chown(theirs, NOBODY, NOBODY, follow_symlinks=False)
    with pytest.raises(UnsafeDirectory, match="symbolic link"):
        store.SnapshotWriter(theirs / "snap")


def test_a_work_directory_swapped_for_a_link_is_never_written_through(tmp_path: Path) -> None:
    """Were the parent's check passed (or the check dodged), a work directory
    swapped for a symbolic link mid-save still leads nowhere: files go under
    the directory the writer made, by descriptor, and the commit refuses."""
    victim = _victim(tmp_path)
    parent = tmp_path / "parent"
    parent.mkdir(mode=0o700)
    writer = store.SnapshotWriter(parent / "snap")
    writer.write_json("first.json", {})
    writer.tmp.rename(parent / ".moved")
    writer.tmp.symlink_to(victim)
    before = _tree(victim)
    try:
        with writer.open("flows/0000/flows.ofp") as f:
            f.write(b"x")
        writer.write_json("datapaths/datapaths.json", {})
        with pytest.raises(OSError):
            writer.commit(ovs_version="test", stages=[], bridges=[])
    finally:
        writer.abort()
    assert _tree(victim) == before
    assert not (parent / "snap").exists()


def test_save_to_a_directory_another_user_can_write_is_one_line(ovs: OvsBed, cli: Cli,
                                                                tmp_path: Path) -> None:
    ovs.add_bridge("br0")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    os.chown(shared, NOBODY, NOBODY)
    result = cli("save", "--to", str(shared / "snap"), check=False)
    one_line_error(result)
    assert result.returncode == 2, result.describe()
    assert f"refusing to write in {shared}" in result.stderr, result.describe()
    assert list(shared.iterdir()) == []


def test_the_lock_never_follows_a_link_nor_truncates_a_file_not_ours(tmp_path: Path) -> None:
    _needs_root()
    secret = tmp_path / "secret"
    secret.write_text("root-only\n")
    secret.chmod(0o600)
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    (root / store.LOCK).symlink_to(secret)
    with pytest.raises(UnsafeDirectory, match="symbolic link"):
        _take_lock(root)
    (root / store.LOCK).unlink()
    os.link(secret, root / store.LOCK)  # a second name of a file: not the store's lock
    with pytest.raises(UnsafeDirectory, match="link"):
        _take_lock(root)
    (root / store.LOCK).unlink()
    theirs = root / store.LOCK
    theirs.write_text("theirs\n")
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(UnsafeDirectory, match="uid 65534"):
        _take_lock(root)
    assert secret.read_text() == "root-only\n" and theirs.read_text() == "theirs\n"
    theirs.unlink()
    with store.lock(root):
        assert (root / store.LOCK).read_text() == f"pid {os.getpid()}\n"


def test_a_store_in_another_users_directory_keeps_the_lock_from_their_link(
        tmp_path: Path) -> None:
    """The store's directory is theirs: they point `lock` at a root-only file."""
    _needs_root()
    secret = tmp_path / "secret"
    secret.write_text("root-only\n")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    (theirs / store.LOCK).symlink_to(secret)
    with pytest.raises(UnsafeDirectory, match="uid 65534"):
        _take_lock(theirs)
    assert secret.read_text() == "root-only\n"
