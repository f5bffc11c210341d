"""Every JSON file of a real snapshot decodes and encodes back to the same bytes.

A snapshot of every stage is taken on a private switch with content in each
file (the test-suite corpus, port settings, an internal interface with an
address and a route, and whatever firewall the switch's namespace has); each
file is decoded with the codec, encoded again and written as the store
writes it, which must give the file's own bytes: the codec changes nothing
on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ovs_service import codec, store
from ovs_service.stages.datapaths import FILE as DATAPATHS_FILE
from ovs_service.stages.datapaths import DatapathsSnapshot
from ovs_service.stages.firewall import FILE as FIREWALL_FILE
from ovs_service.stages.firewall import FirewallSnapshot
from ovs_service.stages.flows import STAGE, BridgeRecord
from ovs_service.stages.interfaces import FILE as INTERFACES_FILE
from ovs_service.stages.interfaces import InterfacesSnapshot
from tests.harness.corpus import build_corpus
from tests.harness.ovsbed import Cli, OvsBed


def _records(doc: object, where: codec.Where) -> Any:
    return [r.to_doc() for r in codec.from_doc(list[BridgeRecord], doc, where=where)]


# file → decode and encode again
FILES: dict[str, Callable[[object, codec.Where], Any]] = {
    f"{STAGE}/index.json": _records,
    DATAPATHS_FILE: lambda doc, where: DatapathsSnapshot.from_doc(doc, where=where).to_doc(),
    INTERFACES_FILE: lambda doc, where: InterfacesSnapshot.from_doc(doc, where=where).to_doc(),
    FIREWALL_FILE: lambda doc, where: FirewallSnapshot.from_doc(doc, where=where).to_doc(),
}


def _save_every_stage(ovs: OvsBed, cli: Cli, snapshot: Path) -> None:
    """`save` in the switch's namespace, where its internal interfaces are."""
    argv = ["ip", "netns", "exec", ovs.netns, sys.executable, "-m", "ovs_service", "save",
            "--stage", "flows", "--stage", "datapaths", "--stage", "interfaces",
            "--to", str(snapshot)]
    proc = subprocess.run(argv, env=cli.env(), capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_every_file_encodes_back_to_its_bytes(ovs: OvsBed, cli: Cli, tmp_path: Path) -> None:
    build_corpus(ovs, "br0")
    ovs.add_bridge("br1", protocols=("OpenFlow10", "OpenFlow13"), ports={"q1": 1})
    ovs.ofctl("-O", "OpenFlow10", "mod-port", "br1", "q1", "no-flood")
    for command in (["addr", "add", "192.0.2.1/24", "dev", "q1"],
                    ["link", "set", "q1", "up"],
                    ["route", "add", "10.9.0.0/16", "via", "192.0.2.254", "table", "100"]):
        subprocess.run(["ip", "-n", ovs.netns, *command], check=True)
    snapshot = tmp_path / "snapshot"
    _save_every_stage(ovs, cli, snapshot)
    loaded = store.load(snapshot)
    assert set(FILES) <= set(loaded.manifest.files)

    text = (snapshot / store.MANIFEST).read_text()
    manifest = store.Manifest.parse(text, snapshot)
    assert manifest == loaded.manifest
    assert json.dumps(manifest.to_doc(), indent=2, sort_keys=True) + "\n" == text

    for relpath, again in FILES.items():
        file = loaded.file(relpath)
        doc, where = codec.read(file)
        encoded = again(doc, where)
        assert encoded == doc, relpath
        assert json.dumps(encoded, indent=1, sort_keys=True) + "\n" == file.read_text(), relpath

    # The files hold what was set up, not empty documents.
    records = json.loads(loaded.file(f"{STAGE}/index.json").read_text())
    assert {r["name"] for r in records} == {"br0", "br1"}
    assert any(p["config"] for r in records for p in r["ports"])
    interfaces = json.loads(loaded.file(INTERFACES_FILE).read_text())
    q1 = next(i for i in interfaces["interfaces"] if i["name"] == "q1")
    assert "192.0.2.1" in {a["address"] for a in q1["addresses"]}
    assert any(r["table"] == 100 for r in interfaces["routes"])
    datapaths = json.loads(loaded.file(DATAPATHS_FILE).read_text())
    assert "q1" in {i["name"] for i in datapaths["interfaces"]}
    assert os.path.getsize(snapshot / FIREWALL_FILE) > 0


def test_a_damaged_stage_file_is_refused_before_any_stage_runs(
        ovs: OvsBed, cli: Cli, tmp_path: Path) -> None:
    """Every stage checks what it will read before the first one restores: an
    interfaces file of the wrong shape (re-hashed, as a careful tamperer
    would) leaves the flows as they are."""
    ovs.add_bridge("br0", protocols=("OpenFlow13",), ports={"q0": 1})
    ovs.ofctl("-O", "OpenFlow13", "add-flow", "br0", "priority=9,ip,actions=drop")
    snapshot = tmp_path / "snapshot"
    _save_every_stage(ovs, cli, snapshot)
    doc = json.loads((snapshot / INTERFACES_FILE).read_text())
    doc["interfaces"][0]["mtu"] = "x"
    (snapshot / INTERFACES_FILE).write_text(json.dumps(doc))
    manifest = json.loads((snapshot / store.MANIFEST).read_text())
    data = (snapshot / INTERFACES_FILE).read_bytes()
    manifest["files"][INTERFACES_FILE].update(sha256=hashlib.sha256(data).hexdigest(),
                                              size=len(data))
    (snapshot / store.MANIFEST).write_text(json.dumps(manifest))
    ovs.ofctl("-O", "OpenFlow13", "del-flows", "br0")
    ovs.ofctl("-O", "OpenFlow13", "add-flow", "br0", "priority=77,actions=drop")
    before = ovs.ofctl("-O", "OpenFlow13", "dump-flows", "--no-stats", "br0")

    refused = cli("restore", "--from", str(snapshot), check=False)
    assert refused.returncode == 2 and "interfaces[0].mtu" in refused.stderr, refused.describe()
    assert ovs.ofctl("-O", "OpenFlow13", "dump-flows", "--no-stats", "br0") == before
