"""The independent view of a bridge's OpenFlow state, and a way to lose it.

`canonical_state` asks the switch itself (`ovs-ofctl dump-*`, `ovs-ofctl show`,
`ovs-vsctl`) and returns sorted lines, each prefixed with its kind, so two
states compare with `==` and differ in a readable diff. Statistics (packet
counts, durations) are left out: they are not state a restore can give back.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence

from tests.harness.ovsbed import OvsBed, Switch, sh, wait_for

VERSIONS = tuple(f"OpenFlow1{minor}" for minor in range(6))
# A bridge whose `protocols` column is empty speaks these (Open vSwitch 3.1).
DEFAULT_VERSIONS = VERSIONS

_PORT = re.compile(r"^ (\S+)\((.*)\): addr:")
_TLV_ROW = re.compile(r"^\s*(0x[0-9a-f]+)\s+(\S+)\s+(\d+)\s+(tun_metadata\d+)\s*$")


def protocols(bed: Switch, bridge: str) -> tuple[str, ...]:
    """The OpenFlow versions `bridge` accepts, oldest first."""
    table = json.loads(
        bed.vsctl("--format=json", "--columns=protocols", "list", "Bridge", bridge)
    )
    raw = table["data"][0][0]
    # ovs-vsctl's JSON: ["set", [...]] for several values, a bare string for one.
    if isinstance(raw, str):
        names = [raw]
    elif raw and raw[0] == "set":
        names = list(raw[1])
    else:
        names = []
    allowed = names or list(DEFAULT_VERSIONS)
    return tuple(v for v in VERSIONS if v in allowed)


def newest(bed: Switch, bridge: str) -> str:
    return protocols(bed, bridge)[-1]


def has_meters(version: str) -> bool:
    return VERSIONS.index(version) >= VERSIONS.index("OpenFlow13")


def _body(text: str) -> list[str]:
    """Reply lines without the `XXX reply (OF1.5) (xid=0x2):` headers and blanks."""
    return [
        line
        for line in text.splitlines()
        if line.strip() and not (not line.startswith(" ") and "(xid=" in line)
    ]


def flows(bed: Switch, bridge: str, version: str) -> list[str]:
    out = bed.ofctl("-O", version, "dump-flows", "--no-stats", "--no-names", bridge)
    return [f"flow: {line.strip()}" for line in _body(out)]


def groups(bed: Switch, bridge: str, version: str) -> list[str]:
    # Open vSwitch offers groups at OpenFlow 1.0 too, through its own extension.
    out = bed.ofctl("-O", version, "dump-groups", bridge)
    return [f"group: {line.strip()}" for line in _body(out)]


def meters(bed: Switch, bridge: str, version: str) -> list[str]:
    if not has_meters(version):
        return []
    out = bed.ofctl("-O", version, "dump-meters", bridge)
    # A meter prints as `meter=N ... bands=` followed by one line per band.
    records: list[str] = []
    for line in _body(out):
        if line.startswith("meter=") or not records:
            records.append(line.strip())
        else:
            records[-1] += " " + line.strip()
    return [f"meter: {record}" for record in records]


def tlv_map(bed: Switch, bridge: str, version: str) -> list[str]:
    out = bed.ofctl("-O", version, "dump-tlv-map", bridge)
    rows = []
    for line in out.splitlines():
        if m := _TLV_ROW.match(line):
            cls, typ, length, field = m.groups()
            rows.append(f"tlv: class={cls},type={int(typ, 0):#x},len={length}->{field}")
    return rows


def port_config(bed: Switch, bridge: str, version: str) -> list[str]:
    # NO_FLOOD exists only in OpenFlow 1.0's port config: read it there when allowed.
    if "OpenFlow10" in protocols(bed, bridge):
        version = "OpenFlow10"
    out = bed.ofctl("-O", version, "show", bridge)
    rows = []
    port = None
    for line in out.splitlines():
        if m := _PORT.match(line):
            port = f"{m.group(1)}({m.group(2)})"
        elif port and line.strip().startswith("config:"):
            flags = sorted(line.split(":", 1)[1].split())
            rows.append(f"port: {port} config: {' '.join(flags) or '0'}")
            port = None
    return rows


def ofports(bed: Switch, bridge: str) -> list[str]:
    mine = {bridge, *bed.vsctl("list-ifaces", bridge).split()}
    table = json.loads(bed.vsctl("--format=json", "--columns=name,ofport", "list", "Interface"))
    return [f"ofport: {name}={ofport}" for name, ofport in table["data"] if name in mine]


def canonical_state(bed: Switch, bridge: str, version: str | None = None) -> list[str]:
    """Sorted `kind: text` lines for everything a restore should give back."""
    version = version or newest(bed, bridge)
    return sorted(
        [
            *flows(bed, bridge, version),
            *groups(bed, bridge, version),
            *meters(bed, bridge, version),
            *tlv_map(bed, bridge, version),
            *port_config(bed, bridge, version),
            *ofports(bed, bridge),
        ]
    )


def all_states(bed: Switch, bridges: Iterable[str] | None = None) -> dict[str, list[str]]:
    """The canonical state of every bridge (or of `bridges`)."""
    return {b: canonical_state(bed, b) for b in (bridges if bridges is not None else bed.bridges())}


def diff(before: Sequence[str], after: Sequence[str], limit: int = 200) -> str:
    """A unified diff of two canonical states, for assertion messages."""
    lines = list(difflib.unified_diff(before, after, "before", "after", lineterm="", n=0))
    more = f"\n... {len(lines) - limit} more lines" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


_PORT_RESETS = ("receive", "forward", "packet-in")


def wipe(bed: OvsBed, bridge: str) -> None:
    """Remove every flow, group, meter and TLV mapping; undo port config flags."""
    allowed = protocols(bed, bridge)
    version = allowed[-1]
    bed.ofctl("-O", version, "del-flows", bridge)
    bed.ofctl("-O", version, "del-groups", bridge)
    if has_meters(version):
        bed.ofctl("-O", version, "del-meters", bridge)
    # Deleted flows release their TLV mappings only after an RCU grace period
    # inside ovs-vswitchd: until then the switch refuses to clear the map.
    wait_for(
        f"{bridge}'s TLV map to clear",
        lambda: sh(["ovs-ofctl", "-O", version, "del-tlv-map", bridge],
                   env=bed.env, check=False).returncode == 0,
        timeout=10,
    )
    for line in port_config(bed, bridge, version):
        name = line.split()[1].split("(", 1)[1][:-1]
        for action in _PORT_RESETS:
            bed.ofctl("-O", version, "mod-port", bridge, name, action)
        if "OpenFlow10" in allowed:
            bed.ofctl("-O", "OpenFlow10", "mod-port", bridge, name, "flood")
