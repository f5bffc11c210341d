"""A strict reader of Prometheus' text exposition format (version 0.0.4), for tests.

Independent of ovs-service's writer: it refuses what a scraper would
refuse or misread (a sample before its TYPE, a family split in two, a
duplicate series, a bad name, label or escape, no newline at the end), so
a test that reads a metrics file with it also checks the file's format.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")
ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


class FormatError(ValueError):
    pass


@dataclass
class MetricFamily:
    name: str
    type: str = "untyped"
    help: str | None = None
    samples: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)

    def value(self, **labels: str) -> float:
        return self.samples[tuple(sorted(labels.items()))]


def _labels(text: str, lineno: int) -> tuple[tuple[tuple[str, str], ...], str]:
    """The label pairs at the start of `text` (after `{`) and what follows `}`."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while True:
        if text[i:i + 1] == "}":
            return tuple(sorted(pairs)), text[i + 1:]
        m = re.match(r"([^=]*)=\"", text[i:])
        if m is None or not LABEL_NAME.match(m.group(1)) or m.group(1).startswith("__"):
            raise FormatError(f"line {lineno}: bad label at {text[i:]!r}")
        name, i = m.group(1), i + m.end()
        value = []
        while True:
            if i >= len(text):
                raise FormatError(f"line {lineno}: unterminated label value")
            c = text[i]
            if c == "\\":
                nxt = text[i + 1:i + 2]
                if nxt not in ESCAPES:
                    raise FormatError(f"line {lineno}: bad escape \\{nxt}")
                value.append(ESCAPES[nxt])
                i += 2
            elif c == '"':
                i += 1
                break
            else:
                value.append(c)
                i += 1
        if any(n == name for n, _ in pairs):
            raise FormatError(f"line {lineno}: label {name} twice")
        pairs.append((name, "".join(value)))
        if text[i:i + 1] == ",":
            i += 1
        elif text[i:i + 1] != "}":
            raise FormatError(f"line {lineno}: expected , or }} after a label")


def _float(text: str, lineno: int) -> float:
    if text in ("+Inf", "-Inf", "NaN"):
        return {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}[text]
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        raise FormatError(f"line {lineno}: bad value {text!r}")
    return float(text)


def parse(text: str) -> dict[str, MetricFamily]:
    """Every family in `text`, strictly; FormatError at the first fault."""
    if text and not text.endswith("\n"):
        raise FormatError("the last line has no newline")
    families: dict[str, MetricFamily] = {}
    current: str | None = None
    closed: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not METRIC_NAME.match(name):
                    raise FormatError(f"line {lineno}: bad metric name {name!r}")
                fam = families.get(name)
                if fam is None:
                    if name in closed:
                        raise FormatError(f"line {lineno}: family {name} split")
                    fam = families[name] = MetricFamily(name)
                elif fam.samples:
                    raise FormatError(f"line {lineno}: {parts[1]} of {name} after its samples")
                if current is not None and current != name:
                    closed.add(current)
                current = name
                rest = parts[3] if len(parts) > 3 else ""
                if parts[1] == "HELP":
                    if fam.help is not None:
                        raise FormatError(f"line {lineno}: second HELP for {name}")
                    fam.help = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1),
                                      rest)
                else:
                    if rest not in TYPES or fam.type != "untyped":
                        raise FormatError(f"line {lineno}: bad or second TYPE for {name}")
                    fam.type = rest
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)", line)
        if m is None:
            raise FormatError(f"line {lineno}: no metric name in {line!r}")
        name, rest = m.group(1), line[m.end():]
        labels: tuple[tuple[str, str], ...] = ()
        if rest.startswith("{"):
            labels, rest = _labels(rest[1:], lineno)
        fields = rest.split(" ")
        if fields[0] != "" or len(fields) not in (2, 3):
            raise FormatError(f"line {lineno}: expected ' value [timestamp]' in {line!r}")
        value = _float(fields[1], lineno)
        if len(fields) == 3 and not re.fullmatch(r"-?\d+", fields[2]):
            raise FormatError(f"line {lineno}: bad timestamp")
        if name in closed or (current is not None and current != name and name in families):
            raise FormatError(f"line {lineno}: family {name} split")
        fam = families.get(name)
        if fam is None:
            fam = families[name] = MetricFamily(name)
        if current is not None and current != name:
            closed.add(current)
        current = name
        if labels in fam.samples:
            raise FormatError(f"line {lineno}: duplicate series {name}{dict(labels)}")
        fam.samples[labels] = value
    return families
