"""The snapshot codec: frozen dataclasses to JSON documents and back, one way for all.

Every JSON file of a snapshot (the manifest, the flows index, the datapaths,
interfaces and firewall files) is a frozen dataclass; `to_doc` turns one into
a document for `json.dumps` and `from_doc` reads one back, checked against the
dataclass's annotations: str, int, bool, float, `Any` (any JSON value, kept as
it is), `X | None`, `Literal[...]`, `list[X]`, `tuple[X, ...]`, `tuple[X, Y]`,
`dict[str, X]` and nested dataclasses. A document is kept as the dataclass
lays it out: a field is a key, a tuple a list, None null.

A wrong document stops the reading with `SnapshotInvalid`, in one line that
names the file and the field, e.g.
`snapshot S: interfaces/interfaces.json: interfaces[2].mtu: expected int, got 'x'`.

- A field without a default must be present; one with a default may be
  missing (snapshots written before the field existed) and takes its default.
- A key the dataclass does not have is refused: nothing this version writes
  has one, so it comes from a newer version or from damage, and guessing past
  it could restore something other than what was saved. Except in a snapshot
  of a newer schema whose manifest declares it readable by this version
  (`Where.newer`, see `store.manifest`): its writer said such keys may be
  ignored.
- int is not bool and bool is not int (JSON tells them apart); a float field
  takes an int too (JSON writes 0.0 as 0 when another tool re-wrote the file).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, Union, get_args, get_origin, get_type_hints

from ovs_service.errors import SnapshotInvalid

T = TypeVar("T")
_REPR_MAX = 40  # of a wrong value in a message: the line stays one short line


@dataclass(frozen=True)
class Where:
    """The file a document comes from: its snapshot, and its path in that snapshot."""

    snapshot: Path
    file: str
    # In a snapshot of a newer schema declared readable by this version:
    # fields this version does not know are ignored.
    newer: bool = False

    def invalid(self, field: str, reason: str) -> SnapshotInvalid:
        at = f"{self.file}: {field}: " if field else f"{self.file}: "
        return SnapshotInvalid(path=self.snapshot, reason=at + reason)


class _File(Protocol):
    """What `read` needs of a snapshot file (`store.SnapshotFile`)."""

    snapshot: Path
    relpath: str
    newer: bool

    def read_text(self) -> str: ...


def to_doc(obj: Any) -> Any:
    """The JSON document of a dataclass (or of a list or dict of them)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_doc(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_doc(value) for value in obj]
    if isinstance(obj, dict):
        return {key: to_doc(value) for key, value in obj.items()}
    return obj


def from_doc(cls: type[T], doc: object, *, where: Where) -> T:
    """`doc` read as `cls` (a dataclass, or `list[SomeDataclass]`...), checked all through."""
    value: T = _decode(cls, doc, where, "", None)
    return value


def parse(text: str, where: Where) -> object:
    """The JSON document in `text`."""
    try:
        return json.loads(text)
    except ValueError as e:
        raise where.invalid("", f"not valid JSON ({e})") from None


def read(file: _File) -> tuple[object, Where]:
    """A snapshot file's JSON document, and where it comes from (for `from_doc`)."""
    where = Where(file.snapshot, file.relpath, file.newer)
    return parse(file.read_text(), where), where


def check_schema(doc: object, expected: int, where: Where) -> None:
    """Refuse a document of another schema before its fields are read: they may
    differ, and the schema is what the user needs to hear about."""
    if isinstance(doc, dict) and doc.get("schema") != expected:
        raise where.invalid("schema", f"unknown schema {doc.get('schema')!r} (expected {expected})")


# -- decoding -------------------------------------------------------------------


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _describe(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if tp is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in args)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(arg) for arg in args)
    if origin in (list, tuple):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "an object"
    return getattr(tp, "__name__", str(tp))


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_MAX else text[: _REPR_MAX - 3] + "..."


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _decode(tp: Any, doc: object, where: Where, path: str, expected: str | None) -> Any:
    """`doc` as type `tp`; `expected` names the declared type when `tp` is one
    arm of it (`int` of `int | None`), for the message."""

    def wrong() -> SnapshotInvalid:
        return where.invalid(path, f"expected {expected or _describe(tp)}, got {_shown(doc)}")

    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return doc
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _decode_dataclass(tp, doc, where, path, wrong)
    if origin in (Union, types.UnionType):
        arms = [arm for arm in args if arm is not type(None)]
        if doc is None and len(arms) < len(args):
            return None
        if len(arms) == 1:
            return _decode(arms[0], doc, where, path, _describe(tp))
        for arm in arms:  # the first that fits (none of ours has two arms yet)
            try:
                return _decode(arm, doc, where, path, None)
            except SnapshotInvalid:
                continue
        raise wrong()
    if origin is Literal:
        if any(type(doc) is type(arg) and doc == arg for arg in args):
            return doc
        raise wrong()
    if origin in (list, tuple):
        if not isinstance(doc, list):
            raise wrong()
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(doc) != len(args):
                raise where.invalid(path, f"expected a list of {len(args)}, got {_shown(doc)}")
            return tuple(_decode(arm, value, where, f"{path}[{i}]", None)
                         for i, (arm, value) in enumerate(zip(args, doc, strict=True)))
        items = [_decode(args[0], value, where, f"{path}[{i}]", None)
                 for i, value in enumerate(doc)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(doc, dict):
            raise wrong()
        return {key: _decode(args[1], value, where, f"{path}[{json.dumps(key)}]", None)
                for key, value in doc.items()}
    if tp is bool:
        if type(doc) is not bool:
            raise wrong()
        return doc
    if tp is int:
        if not isinstance(doc, int) or isinstance(doc, bool):
            raise wrong()
        return doc
    if tp is float:
        if not isinstance(doc, int | float) or isinstance(doc, bool):
            raise wrong()
        return float(doc)
    if tp is str:
        if not isinstance(doc, str):
            raise wrong()
        return doc
    raise TypeError(f"the snapshot codec cannot read {tp!r} (at {path or 'the top'})")


def _decode_dataclass(cls: type, doc: object, where: Where, path: str,
                      wrong: Callable[[], SnapshotInvalid]) -> Any:
    if not isinstance(doc, dict):
        raise wrong()
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(doc.keys() - fields.keys())
    if unknown and not where.newer:
        raise where.invalid(_join(path, str(unknown[0])),
                            "unknown field (written by a newer ovs-service, or damaged)")
    hints = _hints(cls)
    values = {}
    for name, f in fields.items():
        if name in doc:  # (keys of a newer schema declared ignorable are not looked at)
            values[name] = _decode(hints[name], doc[name], where, _join(path, name), None)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise where.invalid(_join(path, name), "missing")
    return cls(**values)
