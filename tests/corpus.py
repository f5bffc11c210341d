"""The corpus bridge: a varied OpenFlow table from Open vSwitch's own test suite.

Built as the corpus README says (protocols OpenFlow 1.0-1.5, internal ports
1..8, a TLV map, groups then flows at OpenFlow 1.5, refused specs skipped),
plus two meters, two flows that use them, and port config flags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ovsbed import BedError, OvsBed

# The corpus is part of the repository (tests/data, with its provenance).
CORPUS_DIR = Path(__file__).resolve().parent / "data"
SPECS = CORPUS_DIR / "ovs-testsuite-specs.tsv"
EXTRAS = CORPUS_DIR / "corpus-extras.tsv"

PROTOCOLS = tuple(f"OpenFlow1{minor}" for minor in range(6))
PORTS = {f"p{n}": n for n in range(1, 9)}


def _extras(kind: str) -> tuple[tuple[str, str], ...]:
    """(OpenFlow version, text) of each `kind` line of corpus-extras.tsv, in order."""
    rows = []
    for line in EXTRAS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            row_kind, version, text = line.split("\t", 2)
            if row_kind == kind:
                rows.append((version, text))
    return tuple(rows)


TLV_MAP = _extras("tlv")[0][1]
METERS = tuple(text for _, text in _extras("meter"))
# The userspace datapath implements only drop bands; used when it refuses the one above.
METER_FALLBACK = {text.split()[0]: text for _, text in _extras("meter-fallback")}
METERED_FLOWS = tuple(text for _, text in _extras("metered-flow"))
# (port, mod-port action, version): NO_FLOOD exists only in OpenFlow 1.0.
PORT_MODS = tuple(
    (*text.split(None, 1), version) for version, text in _extras("port-mod")
)


@dataclass(frozen=True)
class Spec:
    source: str
    kind: str  # "flow" or "group"
    text: str


@dataclass
class CorpusReport:
    """What the switch took and what it refused, spec by spec."""

    accepted: dict[str, int] = field(default_factory=lambda: {"flow": 0, "group": 0})
    refused: list[Spec] = field(default_factory=list)
    meters: list[str] = field(default_factory=list)


def load_specs(path: Path = SPECS) -> list[Spec]:
    specs = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        source, kind, text = line.split("\t", 2)
        specs.append(Spec(source, kind, text))
    return specs


def _install(
    bed: OvsBed, bridge: str, kind: str, specs: Sequence[Spec], report: CorpusReport
) -> None:
    """Add specs in order, through a file; a batch that fails is split in halves and retried.

    Replaying specs in order gives the same table as adding them one by one:
    each add replaces the flow (or group) with the same match (or id), so the
    last spec for a match wins either way.
    """
    if not specs:
        return
    batch_file = bed.dir / f"corpus-{bridge}-{kind}s.txt"
    batch_file.write_text("".join(spec.text + "\n" for spec in specs))
    command = ["-O", "OpenFlow15", f"add-{kind}s", bridge, str(batch_file)]
    if len(specs) == 1:
        command = ["-O", "OpenFlow15", f"add-{kind}", bridge, specs[0].text]
    try:
        bed.ofctl(*command)
        report.accepted[kind] += len(specs)
        return
    except BedError:
        if len(specs) == 1:
            report.refused.append(specs[0])
            return
    half = len(specs) // 2
    _install(bed, bridge, kind, specs[:half], report)
    _install(bed, bridge, kind, specs[half:], report)


def build_corpus(bed: OvsBed, bridge: str = "br0") -> CorpusReport:
    """Create `bridge` holding the whole corpus; say what was refused."""
    report = CorpusReport()
    bed.add_bridge(bridge, protocols=PROTOCOLS, ports=PORTS)
    bed.ofctl("-O", "OpenFlow15", "add-tlv-map", bridge, TLV_MAP)
    specs = load_specs()
    _install(bed, bridge, "group", [s for s in specs if s.kind == "group"], report)
    _install(bed, bridge, "flow", [s for s in specs if s.kind == "flow"], report)
    for meter in METERS:
        try:
            bed.ofctl("-O", "OpenFlow15", "add-meter", bridge, meter)
        except BedError:
            meter = METER_FALLBACK[meter.split()[0]]
            bed.ofctl("-O", "OpenFlow15", "add-meter", bridge, meter)
        report.meters.append(meter)
    for flow in METERED_FLOWS:
        bed.ofctl("-O", "OpenFlow15", "add-flow", bridge, flow)
    for port, action, version in PORT_MODS:
        bed.ofctl("-O", version, "mod-port", bridge, port, action)
    return report
