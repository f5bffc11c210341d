"""The manifest: what a snapshot holds (every file with its size and
SHA-256), where and by what it was taken. It is the last file a snapshot
gets and the first one read; a directory without a valid one is never a
snapshot.

Its `schema` numbers the layout of the whole snapshot (the manifest and
every file a stage writes). A reader reads every schema up to its own
`SCHEMA`. A newer one it reads only if the manifest's `compatible` says
readers of its schema may (as ext4's compatible features or SQLite's read
version): the writer declares the oldest schema whose readers restore the
snapshot exactly when they ignore what they do not know. Such a reader then
ignores the fields and files it does not know; without that declaration
(or with a higher one) it refuses the snapshot in one line, exit 7, before
anything is touched (`SnapshotTooNew`).

How to change the layout: a change older readers may ignore (a new field
with a default, a new file or stage read only when present) raises SCHEMA
and leaves COMPATIBLE; a change they must not ignore (a field whose absence
would restore something else, a new meaning of a field) raises both. While
the layout is schema 1's the manifest says `schema: 1` and has no
`compatible` (readers up to 0.1.0 refuse any key they do not know).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovs_service import codec
from ovs_service.errors import SnapshotTooNew

SCHEMA = 1  # the newest layout this version reads, and the one it writes
# The oldest schema whose readers read what this version writes (written
# into the manifest only when lower than SCHEMA).
COMPATIBLE = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    schema: int
    created: str
    host: str
    ovs_version: str
    tool_version: str
    stages: list[str]
    bridges: list[str]
    files: dict[str, FileEntry]
    extra: dict[str, Any] = field(default_factory=dict)
    # The oldest schema whose readers may read this snapshot; None: `schema`.
    compatible: int | None = None

    @property
    def newer(self) -> bool:
        """Of a newer schema than this version's (declared readable by it):
        what this version does not know in its files is ignored."""
        return self.schema > SCHEMA

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = codec.to_doc(self)
        if self.compatible is None:
            del doc["compatible"]  # unknown to readers up to 0.1.0
        return doc

    @classmethod
    def from_doc(cls, doc: object, *, where: codec.Where) -> Manifest:
        """The manifest in `doc`; its schema is checked first: another schema
        may lay its fields out differently."""
        schema = readable_schema(doc, where)
        if schema > SCHEMA:
            where = codec.Where(where.snapshot, where.file, newer=True)
        return codec.from_doc(cls, doc, where=where)

    @classmethod
    def parse(cls, text: str, path: Path) -> Manifest:
        """The manifest of snapshot `path`, from its text."""
        where = codec.Where(path, MANIFEST)
        return cls.from_doc(codec.parse(text, where), where=where)


def readable_schema(doc: object, where: codec.Where) -> int:
    """The schema of manifest `doc`, if this version may read it; one line
    (SnapshotTooNew) if the snapshot is newer and not declared readable here."""
    if not isinstance(doc, dict):
        raise where.invalid("", f"expected an object, got {type(doc).__name__}")
    schema, compatible = doc.get("schema"), doc.get("compatible", doc.get("schema"))
    for name, value in (("schema", schema), ("compatible", compatible)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise where.invalid(name, f"unknown schema {value!r}")
    assert isinstance(schema, int) and isinstance(compatible, int)
    if compatible > SCHEMA:
        raise SnapshotTooNew(path=where.snapshot, schema=schema, compatible=compatible,
                             known=SCHEMA)
    if compatible > schema:
        raise where.invalid("compatible", f"{compatible} is above the schema, {schema}")
    return schema


def _manifest_bytes(manifest: Manifest) -> bytes:
    # Indented by two, unlike the other files: as manifests have always been.
    return (json.dumps(manifest.to_doc(), indent=2, sort_keys=True) + "\n").encode()
