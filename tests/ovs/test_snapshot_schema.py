"""Snapshots across versions of ovs-service, on a real switch checked with
`ovs-ofctl`: a newer snapshot declared readable by this version is restored
exactly, one that is not is refused before anything is touched (exit 7),
and the version before the schema rule (its code, from git history) restores
what this version writes and refuses a newer snapshot without touching the
switch."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import REPO, canon
from tests.harness.ovsbed import Cli, CliResult, OvsBed, one_line_error

# The last commit before the schema rule: what is released as 0.1.0 today.
PREVIOUS = "5e78b9a39d8e27569f4e8405506268c9b7df31b3"


def _edit_json(snapshot: Path, relpath: str, change: Callable[[Any], None]) -> None:
    """Change one JSON file of the snapshot and make the manifest agree, as a
    newer writer would have written it."""
    path = snapshot / relpath
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    if relpath != "manifest.json":
        _rehash(snapshot)


def _rehash(snapshot: Path) -> None:
    def change(doc: dict[str, Any]) -> None:
        for relpath, entry in doc["files"].items():
            data = (snapshot / relpath).read_bytes()
            entry.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))

    _edit_json(snapshot, "manifest.json", change)


def _add_file(snapshot: Path, relpath: str, data: bytes) -> None:
    (snapshot / relpath).parent.mkdir(mode=0o700, exist_ok=True)
    (snapshot / relpath).write_bytes(data)
    (snapshot / relpath).chmod(0o600)
    _edit_json(snapshot, "manifest.json",
               lambda doc: doc["files"].update({relpath: {"sha256": "", "size": 0}}))
    _rehash(snapshot)


def make_newer(snapshot: Path, compatible: int | None) -> None:
    """What a later version could write: schema 2, with what schema 1 does not
    know in the manifest, the flows index, the datapaths file, a new file and
    a new stage; `compatible` declared (or not)."""
    def manifest(doc: dict[str, Any]) -> None:
        doc.update(schema=2, written_by_feature={"x": 1})
        doc["stages"].append("later")
        if compatible is not None:
            doc["compatible"] = compatible

    def index(records: list[dict[str, Any]]) -> None:
        for record in records:
            record.update(added_later=True)

    _edit_json(snapshot, "flows/index.json", index)
    _edit_json(snapshot, "datapaths/datapaths.json", lambda doc: doc.update(vrfs=[]))
    _add_file(snapshot, "later/state.json", b"{}\n")
    _edit_json(snapshot, "manifest.json", manifest)


@dataclass
class Scene:
    """A switch whose state was saved, then lost: a restore must bring it
    back exactly; a refusal must leave the loss as it is."""

    bed: OvsBed
    cli: Cli
    snapshot: Path
    saved: dict[str, list[str]]

    def state(self) -> dict[str, list[str]]:
        return canon.all_states(self.bed)


def small_state(bed: OvsBed) -> None:
    """Some of every kind the flows stage saves (the corpus lanes cover the rest)."""
    bed.add_bridge("br0", protocols=("OpenFlow10", "OpenFlow13", "OpenFlow15"),
                   ports={"p1": 1, "p2": 2})
    of15 = ("-O", "OpenFlow15")
    bed.ofctl(*of15, "add-tlv-map", "br0", "{class=0xffff,type=0,len=4}->tun_metadata0")
    bed.ofctl(*of15, "add-meter", "br0",
              "meter=1 kbps burst bands=type=drop rate=100 burst_size=10")
    bed.ofctl(*of15, "add-group", "br0", "group_id=5,type=select,bucket=output:1,bucket=output:2")
    for flow in ("priority=10,ip,tun_metadata0=7 actions=group:5",
                 "priority=20,arp actions=meter:1,output:2",
                 "table=3,priority=5,tcp,tp_dst=80 actions=drop"):
        bed.ofctl(*of15, "add-flow", "br0", flow)
    bed.ofctl("-O", "OpenFlow10", "mod-port", "br0", "p2", "no-flood")


@pytest.fixture
def scene(ovs: OvsBed, cli: Cli) -> Iterator[Scene]:
    small_state(ovs)
    ovs.add_bridge("br1", protocols=("OpenFlow13",), ports={"q1": 1})
    ovs.ofctl("-O", "OpenFlow13", "add-flow", "br1", "priority=9,in_port=1 actions=drop")
    saved = canon.all_states(ovs)
    snapshot = cli.save()
    canon.wipe(ovs, "br0")
    ovs.ofctl("-O", "OpenFlow13", "del-flows", "br1")
    assert canon.all_states(ovs) != saved
    yield Scene(ovs, cli, snapshot, saved)


def _restored_exactly(scene: Scene, result: CliResult) -> None:
    assert result.returncode == 0, result.describe()
    after = scene.state()
    assert after == scene.saved, "\n".join(
        canon.diff(scene.saved[b], after.get(b, [])) for b in scene.saved)


def _refused_untouched(scene: Scene, result: CliResult, before: dict[str, list[str]],
                       code: int) -> None:
    after = scene.state()
    assert after == before, "a refused restore changed the switch:\n" + "\n".join(
        canon.diff(before[b], after.get(b, [])) for b in before)
    one_line_error(result)
    assert result.returncode == code, result.describe()


def test_this_version_writes_schema_1_without_compatible(scene: Scene) -> None:
    doc = json.loads((scene.snapshot / "manifest.json").read_text())
    assert doc["schema"] == 1 and "compatible" not in doc, doc


def test_a_newer_snapshot_declared_readable_is_restored_exactly(scene: Scene) -> None:
    make_newer(scene.snapshot, compatible=1)
    _restored_exactly(scene, scene.cli.restore("--from", str(scene.snapshot), check=False))


@pytest.mark.parametrize("compatible", [None, 2])
def test_a_newer_snapshot_not_declared_readable_is_refused_untouched(
        scene: Scene, compatible: int | None) -> None:
    make_newer(scene.snapshot, compatible)
    before = scene.state()
    result = scene.cli.restore("--from", str(scene.snapshot), check=False)
    _refused_untouched(scene, result, before, code=7)
    assert "schema 2 is newer than this ovs-service reads" in result.stderr, result.describe()


# -- the version before the schema rule -----------------------------------------------


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as it was at PREVIOUS, from git history."""
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{PREVIOUS}^{{commit}}"],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip(f"commit {PREVIOUS[:12]} is not in this clone's history (shallow?)")
    root = tmp_path_factory.mktemp("previous")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", PREVIOUS, "ovs_service"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root


def run_previous(cli: Cli, previous: Path, *args: str) -> CliResult:
    env = {**cli.env(), "PYTHONPATH": str(previous)}
    argv = (sys.executable, "-m", "ovs_service", *args)
    proc = subprocess.run(argv, cwd=previous, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    return CliResult(argv, proc.returncode, proc.stdout, proc.stderr)


def test_the_previous_version_restores_what_this_one_writes(scene: Scene,
                                                           previous: Path) -> None:
    assert run_previous(scene.cli, previous, "--version").returncode == 0
    result = run_previous(scene.cli, previous, "restore", "--from", str(scene.snapshot))
    _restored_exactly(scene, result)


def test_the_previous_version_refuses_a_newer_snapshot_untouched(scene: Scene,
                                                                previous: Path) -> None:
    """It knows no `compatible`: even a snapshot declared readable by schema 1
    is refused, in one line, exit 2, before the switch is touched."""
    make_newer(scene.snapshot, compatible=1)
    before = scene.state()
    result = run_previous(scene.cli, previous, "restore", "--from", str(scene.snapshot))
    _refused_untouched(scene, result, before, code=2)
    assert "unknown schema 2 (expected 1)" in result.stderr, result.describe()
