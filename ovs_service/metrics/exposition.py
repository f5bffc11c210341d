"""Prometheus' text exposition format, as node_exporter's textfile collector
reads it: `# HELP` and `# TYPE` once per family, then its samples.

Only what ovs-service writes is parsed back (a read-merge-write keeps the
other operations' samples): lines this module did not write are dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Family:
    """A metric family: its name, type, help line and the labels its samples carry."""

    name: str
    type: str  # "gauge": every value here is a state or a last value
    help: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Labels
    value: float

    def label(self, key: str) -> str:
        return dict(self.labels).get(key, "")


def sample(name: str, value: float, **labels: str) -> Sample:
    return Sample(name, tuple(sorted(labels.items())), float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _sample_line(s: Sample) -> str:
    labels = ",".join(f'{k}="{_escape(v)}"' for k, v in s.labels)
    return f"{s.name}{{{labels}}} {_number(s.value)}" if labels else f"{s.name} {_number(s.value)}"


def render(families: Sequence[Family], samples: Iterable[Sample]) -> str:
    """The file: each family that has samples, in `families` order, its samples sorted."""
    by_name: dict[str, list[Sample]] = {}
    for s in samples:
        by_name.setdefault(s.name, []).append(s)
    lines = []
    for family in families:
        found = by_name.get(family.name)
        if not found:
            continue
        help_text = family.help.replace("\\", "\\\\").replace("\n", "\\n")  # no quotes here
        lines += [f"# HELP {family.name} {help_text}", f"# TYPE {family.name} {family.type}"]
        lines += [_sample_line(s) for s in sorted(found, key=lambda s: s.labels)]
    return "".join(line + "\n" for line in lines)


_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
_SAMPLE = re.compile(
    rf"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{{(?P<labels>(?:{_LABEL})(?:,{_LABEL})*)?\}})?"
    r" (?P<value>\S+)$"
)
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"')


def parse(text: str, known: Iterable[str]) -> list[Sample]:
    """The samples of the families named in `known` found in `text`; anything
    else (comments, other names, a line that does not parse) is skipped."""
    names = set(known)
    found = []
    for line in text.split("\n"):  # the format ends lines at \n only
        m = _SAMPLE.match(line)
        if m is None or m.group("name") not in names:
            continue
        try:
            value = float(m.group("value"))
        except ValueError:
            continue
        labels = tuple(sorted((k, _unescape(v)) for k, v in _PAIR.findall(m.group("labels") or "")))
        found.append(Sample(m.group("name"), labels, value))
    return found
