"""The snapshot codec: every snapshot type round-trips, and a wrong document is
refused in one line that names the file and the field.

The documents are also compared with `dataclasses.asdict`, the encoding the
snapshot types used before the codec: what goes to disk has not changed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from ovs_service import codec
from ovs_service.errors import SnapshotInvalid
from ovs_service.stages.datapaths import (
    Datapath,
    DatapathPort,
    DatapathsSnapshot,
    InterfaceNumbers,
)
from ovs_service.stages.firewall import FirewallSnapshot, NftTableChains, XtablesRuleset
from ovs_service.stages.flows import BridgeRecord, PortSetting
from ovs_service.stages.interfaces import (
    AddressState,
    InterfacesSnapshot,
    InterfaceState,
    NextHopState,
    RouteState,
)
from ovs_service.store import FileEntry, Manifest

SNAPSHOT = Path("/var/lib/ovs-service/00000007-20270101T000000Z")

MANIFEST = Manifest(
    schema=1,
    created="2027-01-01T00:00:00Z",
    host="host-1",
    ovs_version="3.1.0",
    tool_version="0.1.0",
    stages=["flows", "datapaths"],
    bridges=["br0", "br ü"],
    files={"flows/0000/flows.ofp": FileEntry("ab" * 32, 80),
           "flows/index.json": FileEntry("cd" * 32, 0)},
    extra={"flows": {"br0": {"flows": 3, "groups": 0}}, "flows_failed": {"br1": "why"}},
)

RECORDS = [
    BridgeRecord("br0", 4, "flows/0000", {"flows": 3, "groups": 0, "meters": 1, "tlv": 0},
                 [PortSetting("p0", 1, 0x40), PortSetting("br0", 0xFFFE, 0)], 1, True),
    BridgeRecord("br1", 1, "flows/0001", {"flows": 0}, [], 1, None),
]

DATAPATHS = DatapathsSnapshot(
    datapaths=[Datapath("ovs-system", "system", [
        DatapathPort(0, "ovs-system", "internal", {}),
        DatapathPort(7, "gre_sys", "gre", {"packet_type": "legacy_l2"}),
    ])],
    interfaces=[InterfaceNumbers("br0", "p0", "internal", 1, 2, {}),
                InterfaceNumbers("br0", "vx", "vxlan", 9, None, {"remote_ip": "192.0.2.9"})],
)

INTERFACES = InterfacesSnapshot(
    interfaces=(InterfaceState(
        name="a$b;c ü", flags=0x1003, mac="02:00:00:00:00:01", mtu=1400, txqlen=321,
        alias="uplink",
        addresses=(
            AddressState(4, "192.0.2.1", 24, 0, 0x80, 0x80, label="a$b;c:1",
                         broadcast="192.0.2.255"),
            AddressState(6, "2001:db8::1", 64, 0, 0x82, 0x282, valid_lft=300, preferred_lft=100),
        ),
    ),),
    routes=(
        RouteState(4, 100, "10.9.0.0", 16, gateway="192.0.2.254", interface="a$b;c ü",
                   priority=5, metrics=(("mtu", 1300), ("advmss", 1200))),
        RouteState(6, 254, None, 0, pref=1, src="2001:db8:1::", src_len=48,
                   nexthops=(NextHopState("x", "fe80::1", 2, 4), NextHopState("y"))),
    ),
    missing=("gone",),
    taken_at=1700000000.25,
    boottime=12345.5,
    boot_id="0f6b4a52-0000-4000-8000-000000000000",
)

FIREWALL = FirewallSnapshot(
    iptables=XtablesRuleset("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", "nf_tables", ("filter",)),
    ip6tables=None,
    nft="table inet mine {\n}\n",
    nft_left_out=(NftTableChains("ip filter", ("INPUT", "my chain")),),
    boot_id="0f6b4a52-0000-4000-8000-000000000000",
)

# (file, its type, a saved value, how it is decoded)
CASES: dict[str, tuple[str, Any]] = {
    "manifest": ("manifest.json", MANIFEST),
    "flows index": ("flows/index.json", RECORDS),
    "datapaths": ("datapaths/datapaths.json", DATAPATHS),
    "interfaces": ("interfaces/interfaces.json", INTERFACES),
    "firewall": ("interfaces/firewall.json", FIREWALL),
}


def _decode(value: Any, doc: object, file: str) -> Any:
    where = codec.Where(SNAPSHOT, file)
    if isinstance(value, list):
        return codec.from_doc(list[BridgeRecord], doc, where=where)
    return type(value).from_doc(doc, where=where)


def _encode(value: Any) -> Any:
    return [r.to_doc() for r in value] if isinstance(value, list) else value.to_doc()


def _json(doc: Any) -> Any:
    """`doc` as it comes back from disk."""
    return json.loads(json.dumps(doc))


def _refused(value: Any, doc: object, file: str) -> str:
    with pytest.raises(SnapshotInvalid) as caught:
        _decode(value, doc, file)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip(case: str) -> None:
    file, value = CASES[case]
    doc = _json(_encode(value))
    assert _decode(value, doc, file) == value
    assert _encode(_decode(value, doc, file)) == doc


@pytest.mark.parametrize("case", list(CASES))
def test_documents_are_those_asdict_wrote(case: str) -> None:
    """The on-disk form is unchanged: the same keys and values as `asdict` gave."""
    _, value = CASES[case]
    before = ([dataclasses.asdict(r) for r in value] if isinstance(value, list)
              else dataclasses.asdict(value))
    if isinstance(before, dict) and case == "manifest":
        # written only when set (readers up to 0.1.0 refuse the key)
        assert before.pop("compatible") is None
    assert json.dumps(_encode(value), sort_keys=True) == json.dumps(before, sort_keys=True)


def test_wrong_type_names_file_and_field() -> None:
    doc = _json(INTERFACES.to_doc())
    doc["interfaces"][0]["mtu"] = "x"
    assert _refused(INTERFACES, doc, "interfaces/interfaces.json") == (
        f"snapshot {SNAPSHOT}: interfaces/interfaces.json: interfaces[0].mtu: "
        "expected int, got 'x'")


# (case, how the document is damaged, the field named, what is said of it)
DAMAGES = [
    ("manifest", lambda d: d["files"]["flows/index.json"].pop("size"),
     'files["flows/index.json"].size', "missing"),
    ("manifest", lambda d: d.update(signature="x"), "signature", "unknown field"),
    ("manifest", lambda d: d["files"]["flows/index.json"].update(size="12"),
     'files["flows/index.json"].size', "expected int, got '12'"),
    ("manifest", lambda d: d.update(schema=0), "schema", "unknown schema 0"),
    ("manifest", lambda d: d.update(schema="1"), "schema", "unknown schema '1'"),
    ("flows index", lambda d: d[1].pop("port_version"), "[1].port_version", "missing"),
    ("flows index", lambda d: d[0]["ports"][1].update(speed=10), "[0].ports[1].speed",
     "unknown field"),
    ("flows index", lambda d: d[0].update(version=True), "[0].version",
     "expected int, got True"),
    ("flows index", lambda d: d[0]["counts"].update(flows=None), '[0].counts["flows"]',
     "expected int, got None"),
    ("datapaths", lambda d: d["interfaces"][1].pop("dp_port"), "interfaces[1].dp_port",
     "missing"),
    ("datapaths", lambda d: d["datapaths"][0]["ports"][1].update(secret="k"),
     "datapaths[0].ports[1].secret", "unknown field"),
    ("datapaths", lambda d: d["interfaces"][0]["options"].update(key=5),
     'interfaces[0].options["key"]', "expected str, got 5"),
    ("datapaths", lambda d: d["interfaces"][0].update(dp_port="2"), "interfaces[0].dp_port",
     "expected int or null, got '2'"),
    ("interfaces", lambda d: d["interfaces"][0]["addresses"][1].pop("prefixlen"),
     "interfaces[0].addresses[1].prefixlen", "missing"),
    ("interfaces", lambda d: d["routes"][1]["nexthops"][0].update(realm=3),
     "routes[1].nexthops[0].realm", "unknown field"),
    ("interfaces", lambda d: d["routes"][0].update(family=5), "routes[0].family",
     "expected one of 4, 6, got 5"),
    ("interfaces", lambda d: d["routes"][0]["metrics"].append(["mtu"]), "routes[0].metrics[2]",
     "expected a list of 2, got ['mtu']"),
    ("interfaces", lambda d: d.update(routes={}), "routes", "expected a list, got {}"),
    ("firewall", lambda d: d.pop("nft"), "nft", "missing"),
    ("firewall", lambda d: d["iptables"].update(counters=True), "iptables.counters",
     "unknown field"),
    ("firewall", lambda d: d["iptables"].update(backend="x"), "iptables.backend",
     'expected one of "nf_tables", "legacy", got \'x\''),
    ("firewall", lambda d: d["nft_left_out"][0].update(table="ip x\nflush ruleset"),
     "nft_left_out[0].table", "not an ip or ip6 table"),
    ("firewall", lambda d: d["iptables"].update(tables=["nat; drop"]), "iptables.tables[0]",
     "not a table name"),
]


@pytest.mark.parametrize(("case", "damage", "field", "said"), DAMAGES,
                         ids=[f"{case}-{field}" for case, _, field, _ in DAMAGES])
def test_damage_is_refused_naming_file_and_field(case: str, damage: Any, field: str,
                                                 said: str) -> None:
    file, value = CASES[case]
    doc = _json(_encode(value))
    damage(doc)
    message = _refused(value, doc, file)
    assert message.startswith(f"snapshot {SNAPSHOT}: {file}: {field}: {said}"), message


@pytest.mark.parametrize(("case", "field"), [("flows index", "catchall"),
                                             ("interfaces", "taken_at"),
                                             ("interfaces", "boottime"),
                                             ("interfaces", "boot_id"),
                                             ("interfaces", "missing"),
                                             ("firewall", "nft_left_out"),
                                             ("firewall", "boot_id"),
                                             ("manifest", "extra")])
def test_older_snapshots_without_a_defaulted_field_are_read(case: str, field: str) -> None:
    file, value = CASES[case]
    doc = _json(_encode(value))
    for item in doc if isinstance(doc, list) else [doc]:
        item.pop(field)
    decoded = _decode(value, doc, file)
    first = decoded[0] if isinstance(decoded, list) else decoded
    assert getattr(first, field) == _default(type(first), field)


def _default(cls: type, field: str) -> Any:
    found = next(f for f in dataclasses.fields(cls) if f.name == field)
    if found.default is not dataclasses.MISSING:
        return found.default
    factory: Any = found.default_factory
    return factory()


def test_a_float_field_takes_an_int() -> None:
    doc = _json(INTERFACES.to_doc())
    doc["taken_at"] = 1700000000
    decoded = InterfacesSnapshot.from_doc(doc, where=codec.Where(SNAPSHOT, "i.json"))
    assert decoded.taken_at == 1700000000.0 and isinstance(decoded.taken_at, float)


@pytest.mark.parametrize("text", ["[]", "{}", '{"schema": 1}', "not json", '"x"'])
def test_garbage_manifest_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(SnapshotInvalid) as caught:
        Manifest.parse(text, SNAPSHOT)
    assert re.match(rf"snapshot {re.escape(str(SNAPSHOT))}: manifest\.json: ", str(caught.value))
    assert "\n" not in str(caught.value)


def test_a_long_wrong_value_is_cut_short() -> None:
    doc = _json(FIREWALL.to_doc())
    doc["nft"] = ["x" * 500]
    message = _refused(FIREWALL, doc, "interfaces/firewall.json")
    assert message.endswith("...") and len(message) < 200, message


def test_an_unsupported_annotation_is_a_programming_error() -> None:
    @dataclasses.dataclass(frozen=True)
    class Odd:
        value: set[int]

    with pytest.raises(TypeError, match="cannot read"):
        codec.from_doc(Odd, {"value": []}, where=codec.Where(SNAPSHOT, "odd.json"))
