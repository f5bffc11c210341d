"""Snapshots that must be refused: damaged, truncated, tampered, foreign, or not snapshots.

Each restore must exit non-zero with one line on stderr and no traceback, and
leave the switch exactly as it was (compared with `canon.canonical_state`).
The switch is changed after the save, so a restore that went ahead anyway
would show.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import canon
from tests.harness.corpus import build_corpus
from tests.harness.ovsbed import Cli, OvsBed, manifest, one_line_error


def _edit_manifest(snapshot: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = snapshot / "manifest.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=2))


def _largest_data_file(snapshot: Path) -> Path:
    files = manifest(snapshot)["files"]
    relpath: str = max(files, key=lambda name: (files[name]["size"], name))
    assert files[relpath]["size"] > 0
    return snapshot / relpath


def flip_a_byte(snapshot: Path) -> None:
    path = _largest_data_file(snapshot)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))


def flip_a_byte_in_every_file(snapshot: Path) -> None:
    for relpath in manifest(snapshot)["files"]:
        path = snapshot / relpath
        data = bytearray(path.read_bytes())
        if data:
            data[-1] ^= 0x01
            path.write_bytes(bytes(data))


def truncate(snapshot: Path) -> None:
    path = _largest_data_file(snapshot)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty_a_file(snapshot: Path) -> None:
    _largest_data_file(snapshot).write_bytes(b"")


def remove_a_file(snapshot: Path) -> None:
    _largest_data_file(snapshot).unlink()


def tamper_sha256(snapshot: Path) -> None:
    def change(doc: dict[str, Any]) -> None:
        entry = next(iter(doc["files"].values()))
        digest = entry["sha256"]
        entry["sha256"] = ("0" if digest[0] != "0" else "1") + digest[1:]

    _edit_manifest(snapshot, change)


def tamper_size(snapshot: Path) -> None:
    def change(doc: dict[str, Any]) -> None:
        entry = next(iter(doc["files"].values()))
        entry["size"] += 1

    _edit_manifest(snapshot, change)


def unknown_schema(snapshot: Path) -> None:
    # No schema is 0 (a newer one is refused with exit 7: test_snapshot_schema.py).
    _edit_manifest(snapshot, lambda doc: doc.update(schema=0))


def schema_as_text(snapshot: Path) -> None:
    _edit_manifest(snapshot, lambda doc: doc.update(schema="1"))


def another_host(snapshot: Path) -> None:
    _edit_manifest(snapshot, lambda doc: doc.update(host="elsewhere.example.org"))


def truncated_manifest(snapshot: Path) -> None:
    path = snapshot / "manifest.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def manifest_not_an_object(snapshot: Path) -> None:
    (snapshot / "manifest.json").write_text("[1, 2, 3]\n")


def manifest_without_files(snapshot: Path) -> None:
    _edit_manifest(snapshot, lambda doc: doc.pop("files"))


def file_outside_the_snapshot(snapshot: Path) -> None:
    """A manifest naming a file outside its directory, with that file's true digest."""
    outside = snapshot.parent / "outside.bin"
    outside.write_bytes(b"not yours")

    def change(doc: dict[str, Any]) -> None:
        relpath = next(iter(doc["files"]))
        entry = doc["files"].pop(relpath)
        doc["files"]["../" * (relpath.count("/") + 1) + "outside.bin"] = entry

    _edit_manifest(snapshot, change)


def rehash(snapshot: Path) -> None:
    """Make the manifest agree with the files it lists, as a careful tamperer would."""
    def change(doc: dict[str, Any]) -> None:
        for relpath, entry in doc["files"].items():
            data = (snapshot / relpath).read_bytes()
            entry.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))

    _edit_manifest(snapshot, change)


def _point_index_outside(snapshot: Path) -> tuple[str, str]:
    """br1's messages copied beside the snapshot, and the index sent there;
    its old and new directory."""
    index_path = snapshot / "flows" / "index.json"
    index = json.loads(index_path.read_text())
    record = next(r for r in index if r["name"] == "br1")
    old = record["directory"]
    shutil.copytree(snapshot / old, snapshot.parent / "elsewhere")
    record["directory"] = "../elsewhere"
    index_path.write_text(json.dumps(index))
    return old, record["directory"]


def index_points_outside(snapshot: Path) -> None:
    """The index sends br1 to files outside the snapshot; the manifest is re-hashed."""
    _point_index_outside(snapshot)
    rehash(snapshot)


def index_points_outside_consistently(snapshot: Path) -> None:
    """The same, with the outside files listed in the manifest under their true digests."""
    old, new = _point_index_outside(snapshot)

    def change(doc: dict[str, Any]) -> None:
        for relpath in [r for r in doc["files"] if r.startswith(old + "/")]:
            doc["files"][new + relpath[len(old):]] = doc["files"].pop(relpath)

    _edit_manifest(snapshot, change)
    rehash(snapshot)


def unlisted_file(snapshot: Path) -> None:
    (snapshot / "notes.txt").write_text("not in the manifest\n")


def secrets_changed(snapshot: Path) -> None:
    (snapshot / "datapaths" / "secrets.json").write_text('{"ipsec0": {"psk": "x"}}\n')


def unlisted_firewall(snapshot: Path) -> None:
    (snapshot / "interfaces").mkdir()
    (snapshot / "interfaces" / "firewall.json").write_text("{}\n")


def _br1_flows(snapshot: Path) -> Path:
    index = json.loads((snapshot / "flows" / "index.json").read_text())
    directory: str = next(r["directory"] for r in index if r["name"] == "br1")
    return snapshot / directory / "flows.ofp"


def symlinked_file_inside(snapshot: Path) -> None:
    """A listed file replaced by a link to the same bytes, elsewhere in the snapshot."""
    flows = _br1_flows(snapshot)
    flows.rename(flows.with_name("flows.real"))
    flows.symlink_to("flows.real")


def symlinked_file_outside(snapshot: Path) -> None:
    flows = _br1_flows(snapshot)
    outside = snapshot.parent / "flows.outside"
    flows.rename(outside)
    flows.symlink_to(outside)


def symlinked_directory(snapshot: Path) -> None:
    directory = _br1_flows(snapshot).parent
    outside = snapshot.parent / "bridge.outside"
    directory.rename(outside)
    directory.symlink_to(outside)


def snapshot_writable_by_others(snapshot: Path) -> None:
    os.chmod(snapshot, 0o757)


def snapshot_writable_by_group(snapshot: Path) -> None:
    os.chmod(snapshot, 0o770)


def store_writable_by_others(snapshot: Path) -> None:
    os.chmod(snapshot.parent, 0o777)  # no sticky bit: anyone may swap the snapshot


def file_writable_by_others(snapshot: Path) -> None:
    os.chmod(_br1_flows(snapshot), 0o606)


def owned_by_another_user(snapshot: Path) -> None:
    for path in [snapshot, *snapshot.rglob("*")]:
        os.chown(path, 65534, 65534)


def _edit_index(snapshot: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Change br1's record in the flows index, and re-hash the manifest to agree."""
    index_path = snapshot / "flows" / "index.json"
    index = json.loads(index_path.read_text())
    change(next(r for r in index if r["name"] == "br1"))
    index_path.write_text(json.dumps(index))
    rehash(snapshot)


def index_counts_a_list(snapshot: Path) -> None:
    _edit_index(snapshot, lambda record: record.update(counts=[1, 2]))


def index_version_unknown(snapshot: Path) -> None:
    _edit_index(snapshot, lambda record: record.update(version=99))


def index_port_version_unknown(snapshot: Path) -> None:
    _edit_index(snapshot, lambda record: record.update(port_version=99))


def failed_bridges_a_list(snapshot: Path) -> None:
    _edit_manifest(snapshot, lambda doc: doc.setdefault("extra", {}).update(flows_failed=[1]))


def datapaths_a_list(snapshot: Path) -> None:
    (snapshot / "datapaths" / "datapaths.json").write_text("[]\n")
    rehash(snapshot)


DAMAGES: dict[str, Callable[[Path], None]] = {
    f.__name__: f
    for f in (
        flip_a_byte,
        flip_a_byte_in_every_file,
        truncate,
        empty_a_file,
        remove_a_file,
        tamper_sha256,
        tamper_size,
        unknown_schema,
        schema_as_text,
        another_host,
        truncated_manifest,
        manifest_not_an_object,
        manifest_without_files,
        file_outside_the_snapshot,
        index_points_outside,
        index_points_outside_consistently,
        unlisted_file,
        secrets_changed,
        unlisted_firewall,
        symlinked_file_inside,
        symlinked_file_outside,
        symlinked_directory,
        snapshot_writable_by_others,
        snapshot_writable_by_group,
        store_writable_by_others,
        file_writable_by_others,
        owned_by_another_user,
        index_counts_a_list,
        index_version_unknown,
        index_port_version_unknown,
        failed_bridges_a_list,
        datapaths_a_list,
    )
}


@dataclass
class Scene:
    """A switch with a saved snapshot, changed since: what a refused restore must keep."""

    bed: OvsBed
    cli: Cli
    snapshot: Path

    def state(self) -> dict[str, list[str]]:
        return canon.all_states(self.bed)

    def assert_refused(self, *restore_args: str, code: int | None = 2) -> None:
        before = self.state()
        result = self.cli.restore(*restore_args, check=False)
        after = self.state()
        assert after == before, "a refused restore changed the switch:\n" + "\n".join(
            canon.diff(before[b], after.get(b, [])) for b in before if before[b] != after.get(b)
        )
        one_line_error(result)
        if code is not None:
            assert result.returncode == code, result.describe()


@pytest.fixture
def scene(ovs: OvsBed, cli: Cli) -> Iterator[Scene]:
    build_corpus(ovs, "br0")
    ovs.add_bridge("br1", protocols=("OpenFlow13",), ports={"q1": 1})
    ovs.ofctl("-O", "OpenFlow13", "add-flow", "br1", "priority=9,in_port=1 actions=drop")
    snapshot = cli.save()
    # Lose part of the state, so that any restore would visibly change it.
    canon.wipe(ovs, "br0")
    ovs.ofctl("-O", "OpenFlow15", "add-flow", "br0", "priority=1,ip actions=output:3")
    ovs.ofctl("-O", "OpenFlow13", "del-flows", "br1")
    yield Scene(ovs, cli, snapshot)


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_snapshot_is_refused(scene: Scene, damage: str) -> None:
    DAMAGES[damage](scene.snapshot)
    scene.assert_refused("--from", str(scene.snapshot))


def test_damaged_newest_snapshot_is_refused(scene: Scene) -> None:
    """Without --from, the newest snapshot is checked just the same."""
    flip_a_byte(scene.snapshot)
    scene.assert_refused()


def test_damaged_file_refused_for_one_bridge_too(scene: Scene) -> None:
    flip_a_byte_in_every_file(scene.snapshot)
    scene.assert_refused("--from", str(scene.snapshot), "--bridge", "br1")


def test_foreign_snapshot_by_name_is_refused(scene: Scene) -> None:
    another_host(scene.snapshot)
    scene.assert_refused("--from", scene.snapshot.name)


def test_bridge_that_no_longer_exists(scene: Scene) -> None:
    """A bridge deleted since the save: named, the restore is refused before
    anything is touched; not named, the other bridges are restored, and the
    missing one is reported failed (exit 4, as any bridge's failed restore)."""
    scene.bed.add_bridge("gone", protocols=("OpenFlow13",))
    scene.bed.ofctl("-O", "OpenFlow13", "add-flow", "gone", "priority=3 actions=drop")
    scene.bed.ofctl("-O", "OpenFlow13", "add-flow", "br1", "priority=9,in_port=1 actions=drop")
    only_gone = scene.cli.save("--bridge", "gone")
    both = scene.cli.save("--bridge", "gone", "--bridge", "br1")
    scene.bed.ofctl("-O", "OpenFlow13", "del-flows", "br1")
    scene.bed.del_bridge("gone")
    scene.assert_refused("--from", str(both), "--bridge", "gone", code=None)
    scene.assert_refused("--from", str(only_gone), "--bridge", "gone", code=None)
    scene.assert_refused("--from", str(only_gone), code=4)

    result = scene.cli.restore("--from", str(both), "--json", check=False)
    one_line_error(result)
    assert result.returncode == 4 and "'gone'" in result.stderr, result.describe()
    doc = result.json()
    assert doc["ok"] is False
    by_name = {b["bridge"]: b for b in doc["bridges"]}
    assert by_name["br1"]["ok"], doc
    assert not by_name["gone"]["ok"] and "does not exist" in by_name["gone"]["error"], doc
    assert "in_port=1 actions=drop" in _br1_dump(scene.bed)
    text = scene.cli.restore("--from", str(both), check=False)
    assert text.returncode == 4 and "gone: FAILED" in text.stdout, text.describe()


@pytest.mark.parametrize("kind", ["empty", "stray files", "a file", "missing", "store itself"])
def test_not_a_snapshot(scene: Scene, tmp_path: Path, kind: str) -> None:
    target = tmp_path / "not-a-snapshot"
    if kind == "empty":
        target.mkdir()
    elif kind == "stray files":
        target.mkdir()
        (target / "flows").mkdir()
        (target / "notes.txt").write_text("hello\n")
        (target / "flows" / "0000").write_bytes(b"\x04\x0e\x00\x08junk")
    elif kind == "a file":
        target.write_text('{"schema": 1}\n')
    elif kind == "store itself":
        target = scene.cli.state_dir
    scene.assert_refused("--from", str(target))


def _br1_dump(bed: OvsBed) -> str:
    return bed.ofctl("-O", "OpenFlow13", "--no-stats", "dump-flows", "br1")


def test_a_sticky_directory_holds_a_snapshot_but_not_the_store(scene: Scene,
                                                               tmp_path: Path) -> None:
    """A directory writable by others but sticky (as /tmp): they cannot swap
    what is ours, so a snapshot in it is read. The store itself may not be
    one: others could add a `pending` marker or names that come first."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    moved = shared / scene.snapshot.name
    scene.snapshot.rename(moved)
    scene.cli.restore("--from", str(moved), "--bridge", "br1")
    assert "in_port=1 actions=drop" in _br1_dump(scene.bed)
    os.chmod(scene.snapshot.parent, 0o1777)
    scene.assert_refused("--from", str(moved))


def test_a_name_is_looked_up_in_the_store_only(scene: Scene, tmp_path: Path) -> None:
    """`restore --from NAME` with a directory NAME in the current directory:
    the store's snapshot is restored; `./NAME` takes the other one."""
    other = scene.cli.save()  # br1 has no flows here
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    other.rename(cwd / scene.snapshot.name)
    assert "actions=drop" not in _br1_dump(scene.bed)
    scene.cli("restore", "--from", scene.snapshot.name, "--bridge", "br1", cwd=cwd)
    assert "in_port=1 actions=drop" in _br1_dump(scene.bed)
    scene.cli("restore", "--from", f"./{scene.snapshot.name}", "--bridge", "br1", cwd=cwd)
    assert "actions=drop" not in _br1_dump(scene.bed)


@pytest.mark.parametrize("name", ["..", ".", ".hidden"])
def test_a_name_stays_in_the_store(scene: Scene, name: str) -> None:
    scene.assert_refused("--from", name)
