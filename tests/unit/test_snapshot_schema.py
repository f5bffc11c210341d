"""The snapshot schema's rules (store.manifest): what this version writes, the
older layouts it reads, and what it does with a newer one: read it, ignoring
what it does not know, when the manifest declares it readable
(`compatible`), refuse it in one line with exit 7 otherwise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ovs_service import codec, errors
from ovs_service.errors import SnapshotInvalid, SnapshotTooNew
from ovs_service.stages.datapaths import DatapathsSnapshot
from ovs_service.stages.flows import BridgeRecord
from ovs_service.store import SCHEMA, FileEntry, Manifest

SNAPSHOT = Path("/var/lib/ovs-service/00000009-20270101T000000Z")

MANIFEST = Manifest(
    schema=SCHEMA, created="2027-01-01T00:00:00Z", host="h", ovs_version="3.1.0",
    tool_version="0.1.0", stages=["flows"], bridges=["br0"],
    files={"flows/index.json": FileEntry("cd" * 32, 2)},
)


def _doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(MANIFEST.to_doc()))
    doc.update(changes)
    return doc


def _parse(doc: dict[str, Any]) -> Manifest:
    return Manifest.parse(json.dumps(doc), SNAPSHOT)


def test_this_version_writes_schema_1_without_a_compatible_key() -> None:
    """Readers up to 0.1.0 refuse any key they do not know: while the layout is
    schema 1's, nothing new goes into the manifest."""
    doc = MANIFEST.to_doc()
    assert doc["schema"] == SCHEMA == 1
    assert "compatible" not in doc
    assert _parse(doc) == MANIFEST


@pytest.mark.parametrize("compatible", [None, SCHEMA + 1, SCHEMA + 5])
def test_a_newer_schema_not_declared_readable_is_refused_with_exit_7(
        compatible: int | None) -> None:
    doc = _doc(schema=SCHEMA + 1, future_field={"x": 1})
    if compatible is not None:
        doc["compatible"] = compatible
    with pytest.raises(SnapshotTooNew) as caught:
        _parse(doc)
    message = str(caught.value)
    assert caught.value.exit_code == 7 and 7 in errors.EXIT_CODES
    assert "\n" not in message
    needs = compatible if compatible is not None else SCHEMA + 1
    assert message == (f"snapshot {SNAPSHOT}: schema {SCHEMA + 1} is newer than this "
                       f"ovs-service reads (up to {SCHEMA}; readers need schema {needs} "
                       "or later), nothing was changed: upgrade ovs-service to restore it")


def test_a_newer_schema_declared_readable_is_read_ignoring_unknown_keys() -> None:
    doc = _doc(schema=SCHEMA + 2, compatible=SCHEMA, signature="abc")
    doc["files"]["flows/index.json"]["mode"] = "0600"
    manifest = _parse(doc)
    assert manifest.schema == SCHEMA + 2 and manifest.compatible == SCHEMA
    assert manifest.newer
    assert manifest.files == MANIFEST.files
    # and it is written back as read (the unknown keys are not kept)
    assert manifest.to_doc()["compatible"] == SCHEMA


def test_stage_documents_of_a_declared_readable_snapshot_ignore_unknown_keys() -> None:
    record = {"name": "br0", "version": 4, "directory": "flows/0000",
              "counts": {"flows": 1}, "ports": [{"name": "p", "port_no": 1, "config": 0,
                                                  "speed": 10}],
              "port_version": 4, "added_later": True}
    newer = codec.Where(SNAPSHOT, "flows/index.json", newer=True)
    [read] = codec.from_doc(list[BridgeRecord], [record], where=newer)
    assert read.name == "br0" and read.ports[0].port_no == 1
    datapaths = {"schema": 1, "datapaths": [], "interfaces": [], "vrfs": []}
    assert DatapathsSnapshot.from_doc(
        datapaths, where=codec.Where(SNAPSHOT, "datapaths/datapaths.json", newer=True)
    ).datapaths == []
    # The same keys in a snapshot of a schema this version knows: refused.
    with pytest.raises(SnapshotInvalid, match=r"\[0\]\.added_later: unknown field"):
        codec.from_doc(list[BridgeRecord], [record],
                       where=codec.Where(SNAPSHOT, "flows/index.json"))


@pytest.mark.parametrize("changes", [{"schema": SCHEMA + 1, "compatible": "1"},
                                     {"schema": SCHEMA + 1, "compatible": 0},
                                     {"schema": SCHEMA + 1, "compatible": True},
                                     {"schema": -1}, {"schema": None}])
def test_a_malformed_schema_or_compatible_is_damage_exit_2(changes: dict[str, Any]) -> None:
    with pytest.raises(SnapshotInvalid) as caught:
        _parse(_doc(**changes))
    assert type(caught.value) is SnapshotInvalid and caught.value.exit_code == 2
    assert "unknown schema" in str(caught.value)


def test_a_manifest_of_0_1_0_is_read() -> None:
    """As 0.1.0 wrote it: no `compatible`, no `extra` in the oldest ones."""
    doc = _doc()
    del doc["extra"]
    manifest = _parse(doc)
    assert manifest.schema == 1 and manifest.compatible is None and manifest.extra == {}
    assert not manifest.newer
