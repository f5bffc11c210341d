"""The manifest: what a snapshot holds (every file with its size and
SHA-256), where and by what it was taken. It is the last file a snapshot
gets and the first one read; a directory without a valid one is never a
snapshot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovs_service import codec

SCHEMA = 1
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

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = codec.to_doc(self)
        return doc

    @classmethod
    def from_doc(cls, doc: object, *, where: codec.Where) -> Manifest:
        """The manifest in `doc`; its schema is checked first: another schema
        may lay its fields out differently."""
        codec.check_schema(doc, SCHEMA, where)
        return codec.from_doc(cls, doc, where=where)

    @classmethod
    def parse(cls, text: str, path: Path) -> Manifest:
        """The manifest of snapshot `path`, from its text."""
        where = codec.Where(path, MANIFEST)
        return cls.from_doc(codec.parse(text, where), where=where)


def _manifest_bytes(manifest: Manifest) -> bytes:
    # Indented by two, unlike the other files: as manifests have always been.
    return (json.dumps(manifest.to_doc(), indent=2, sort_keys=True) + "\n").encode()
