"""The firewall stage in a private network namespace, checked with the tools' own listings."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ovs_service import codec
from ovs_service.errors import SnapshotInvalid
from ovs_service.stages.firewall import (
    FirewallSnapshot,
    NftTableChains,
    XtablesRuleset,
    nft_without,
    parse_xtables_save,
    split_nft_tables,
)
from tests.harness.ovsbed import OvsBed

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("iptables", "iptables-save", "ip6tables", "ip6tables-save", "nft")

STAGE = r"""
import json, sys
from pathlib import Path
from ovs_service import codec
from ovs_service.stages import firewall
op, path = sys.argv[1], Path(sys.argv[2])
if op == "save":
    path.write_text(json.dumps(firewall.save_firewall().to_doc(), indent=1, sort_keys=True) + "\n")
else:
    where = codec.Where(path.parent, path.name)
    snapshot = firewall.FirewallSnapshot.from_doc(json.loads(path.read_text()), where=where)
    only = {"interfaces": json.loads(sys.argv[3])} if len(sys.argv) > 3 else {}
    print(json.dumps(firewall.restore_firewall(snapshot, **only).to_dict()))
"""

# The interfaces stage of a module reload, run on a snapshot of the store.
RELOAD_STAGE = r"""
import json, sys
from pathlib import Path
from ovs_service import operations, store
from ovs_service.stages import firewall, interfaces
firewall_file, target = Path(sys.argv[1]), Path(sys.argv[2])
writer = store.SnapshotWriter(target)
writer.write_json(interfaces.FILE,
                  interfaces.InterfacesSnapshot((), (), ("tap-fw0",)).to_doc())
with writer.open(firewall.FILE) as f:
    f.write(firewall_file.read_bytes())
snapshot = writer.commit(ovs_version="test", stages=["interfaces"], bridges=[])
report = operations.restore_interfaces(store.load(target), module_reloaded=True)
print(json.dumps(report.to_doc()))
"""

NFT_RULESET = """
table inet mine {
    set allowed { type ipv4_addr; elements = { 192.0.2.1, 192.0.2.2 } }
    map ports { type inet_service : verdict; elements = { 22 : accept, 80 : drop } }
    counter hits { }
    chain input {
        type filter hook input priority 10; policy accept;
        iifname "lo" accept
        iif "tap-fw0" counter accept
        ip saddr @allowed counter name "hits" accept
        tcp dport vmap @ports
    }
}
table ip6 native6 {
    chain out {
        type filter hook output priority 0; policy accept;
        meta l4proto ipv6-icmp counter accept
    }
}
table bridge br {
    chain forwarding { type filter hook forward priority 0; policy accept; }
}
"""

IPTABLES = [
    ["iptables", "-P", "FORWARD", "DROP"],
    ["iptables", "-N", "custom-chain"],
    ["iptables", "-A", "custom-chain", "-s", "192.0.2.0/24", "-j", "RETURN"],
    ["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-m", "comment",
     "--comment", "ssh in", "-j", "ACCEPT"],
    ["iptables", "-A", "INPUT", "-m", "recent", "--name", "seen", "--set"],  # xt only
    ["iptables", "-A", "INPUT", "-j", "custom-chain"],
    ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "uplink", "-j", "MASQUERADE"],
    ["iptables", "-t", "mangle", "-A", "PREROUTING", "-i", "a$b;c", "-j", "MARK",
     "--set-mark", "7"],
    ["ip6tables", "-A", "FORWARD", "-s", "2001:db8::/32", "-j", "DROP"],
    ["ip6tables", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport", "53",
     "-j", "CT", "--notrack"],
]


def sh(argv: Sequence[str], *, input: str | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, check=False,
                          env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{argv!r} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


class Namespace:
    def __init__(self, existing: str | None = None) -> None:
        self.name = existing or f"ovssvc-fw-{os.getpid()}-{secrets.token_hex(3)}"
        if existing is None:
            sh(["ip", "netns", "add", self.name])

    def run(self, *argv: str, input: str | None = None) -> str:
        return sh(["ip", "netns", "exec", self.name, *argv], input=input)

    def stage(self, op: str, path: Path, *args: str, path_env: str | None = None,
              script: str = STAGE) -> str:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        if path_env is not None:
            env["PATH"] = path_env
        ip = shutil.which("ip") or "ip"  # found here: PATH may be cut down for the stage
        return sh([ip, "netns", "exec", self.name, sys.executable, "-c", script, op, str(path),
                   *args], env=env)

    def save(self, path: Path, *, path_env: str | None = None) -> dict[str, Any]:
        self.stage("save", path, path_env=path_env)
        doc: dict[str, Any] = json.loads(path.read_text())
        return doc

    def restore(self, path: Path, *, path_env: str | None = None,
                interfaces: Sequence[str] | None = None) -> dict[str, Any]:
        args = () if interfaces is None else (json.dumps(list(interfaces)),)
        report: dict[str, Any] = json.loads(
            self.stage("restore", path, *args, path_env=path_env))
        return report


@pytest.fixture
def netns() -> Iterator[Namespace]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    missing = [t for t in ("ip", *TOOLS) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (apt-get install iptables nftables)")
    ns = Namespace()
    try:
        yield ns
    finally:
        sh(["ip", "netns", "del", ns.name])


def listings(ns: Namespace) -> dict[str, Any]:
    """The three tools' own views, without dates and counters. nft lists tables,
    and chains within a table, in the order they were created, which does not
    change what they do: compare them in any order."""
    def xtables(tool: str) -> list[str]:
        return [re.sub(r"\[\d+:\d+\]", "[0:0]", line)
                for line in ns.run(tool).splitlines() if not line.startswith("#")]
    nft = re.sub(r"counter packets \d+ bytes \d+", "counter", ns.run("nft", "list", "ruleset"))
    return {
        "iptables": xtables("iptables-save"),
        "ip6tables": xtables("ip6tables-save"),
        "nft": sorted(_members_sorted(text) for _, text in split_nft_tables(nft)),
    }


def _members_sorted(table_block: str) -> str:
    """A table block with its chains, sets and maps (blocks separated by an empty line) sorted."""
    head, _, rest = table_block.partition("\n")
    body = rest.rstrip("\n").removesuffix("}").rstrip("\n")
    return "\n".join([head, *sorted(body.split("\n\n")), "}"])


def tool_dir(tmp_path: Path, tools: Sequence[str]) -> str:
    """A PATH holding only these tools: the others are "not installed"."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


@pytest.mark.root
def test_flush_and_restore_gives_the_same_listings(netns: Namespace, tmp_path: Path) -> None:
    netns.run("ip", "tuntap", "add", "dev", "tap-fw0", "mode", "tap")
    for argv in IPTABLES:
        netns.run(*argv)
    netns.run("nft", "-f", "-", input=NFT_RULESET)
    before = listings(netns)
    assert any("recent" in line for line in before["iptables"])
    assert len(before["nft"]) == 8  # ip filter/nat/mangle, ip6 filter/raw, 3 native

    snapshot_file = tmp_path / "firewall.json"
    doc = netns.save(snapshot_file)
    assert doc["iptables"]["backend"] == "nf_tables"
    left_out = {t["table"]: t["chains"] for t in doc["nft_left_out"]}
    assert list(left_out) == ["ip filter", "ip mangle", "ip nat", "ip6 filter", "ip6 raw"]
    assert left_out["ip filter"] == ["FORWARD", "custom-chain", "INPUT"]  # no OUTPUT yet
    assert "xt " not in doc["nft"] and "table ip filter" not in doc["nft"]
    where = codec.Where(tmp_path, snapshot_file.name)
    assert FirewallSnapshot.from_doc(doc, where=where).to_doc() == doc

    # Everything gone; the tap comes back with a new index, as after a module reload.
    netns.run("nft", "flush", "ruleset")
    netns.run("ip", "link", "del", "dev", "tap-fw0")
    netns.run("ip", "tuntap", "add", "dev", "tap-fw0", "mode", "tap")
    assert listings(netns) == {"iptables": [], "ip6tables": [], "nft": []}

    report = netns.restore(snapshot_file)
    assert report["ok"], report
    assert [p["status"] for p in report["parts"]] == ["restored"] * 3
    assert listings(netns) == before

    # Restoring over the restored state does not duplicate anything.
    assert netns.restore(snapshot_file)["ok"]
    assert listings(netns) == before


@pytest.mark.root
def test_missing_tools_are_recorded_as_absent(netns: Namespace, tmp_path: Path) -> None:
    netns.run("nft", "-f", "-", input=NFT_RULESET.replace('iif "tap-fw0"', 'iifname "x"'))
    before = listings(netns)
    only_nft = tool_dir(tmp_path, ["nft"])
    snapshot_file = tmp_path / "firewall.json"
    doc = netns.save(snapshot_file, path_env=only_nft)
    assert doc["iptables"] is None and doc["ip6tables"] is None
    assert doc["nft_left_out"] == []

    netns.run("nft", "flush", "ruleset")
    report = netns.restore(snapshot_file, path_env=only_nft)
    assert [(p["part"], p["status"]) for p in report["parts"]] == [
        ("nft", "restored"), ("iptables", "absent"), ("ip6tables", "absent")]
    assert report["ok"]
    assert listings(netns) == before


@pytest.mark.root
def test_a_part_refused_by_its_check_changes_nothing(netns: Namespace, tmp_path: Path) -> None:
    for argv in IPTABLES:
        netns.run(*argv)
    snapshot_file = tmp_path / "firewall.json"
    doc = netns.save(snapshot_file)
    doc["nft"] += "table inet broken {\n\tchain c {\n\t\tnot a rule\n\t}\n}\n"
    snapshot_file.write_text(json.dumps(doc))

    netns.run("iptables", "-F", "INPUT")
    netns.run("ip6tables", "-t", "raw", "-F")
    before = listings(netns)
    report = netns.restore(snapshot_file)
    assert not report["ok"]
    assert [p["status"] for p in report["parts"]] == ["failed", "unchanged", "unchanged"]
    assert "nft" in report["parts"][0]["detail"]
    assert listings(netns) == before


def _fail_at_commit(text: str) -> str:
    """An iptables-save text whose last table passes `--test` but fails to
    commit (a jump to a chain that does not exist): the tables before it in
    the text are already in when it fails."""
    *head, last = text.rstrip("\n").split("\n*")
    chain = next(line.split()[0][1:] for line in last.splitlines() if line.startswith(":"))
    last = last.replace("\nCOMMIT", f"\n-A {chain} -j NO-SUCH-CHAIN\nCOMMIT", 1)
    return "\n*".join([*head, last]) + "\n"


def _set_up(netns: Namespace) -> None:
    netns.run("ip", "tuntap", "add", "dev", "tap-fw0", "mode", "tap")
    for argv in IPTABLES:
        netns.run(*argv)
    netns.run("nft", "-f", "-", input=NFT_RULESET)


def _changed_since_the_save(netns: Namespace) -> None:
    """Someone else's changes: a rule in a saved table, a rule in a table the
    snapshot does not hold, and tables and chains of their own."""
    netns.run("iptables", "-I", "INPUT", "-s", "198.51.100.7", "-j", "DROP")
    netns.run("iptables", "-t", "raw", "-A", "PREROUTING", "-s", "198.51.100.8", "-j", "DROP")
    netns.run("iptables", "-N", "someone-else")
    netns.run("nft", "add", "rule", "inet", "mine", "input", "ip", "saddr", "198.51.100.9",
              "drop")
    netns.run("nft", "-f", "-", input=OTHER_TABLE)


OTHER_TABLE = """
table inet someone-else {
    chain input {
        type filter hook input priority 20; policy accept;
        ip saddr 203.0.113.0/24 drop
    }
}
"""


@pytest.mark.root
def test_an_iptables_part_that_fails_to_commit_leaves_every_rule_as_it_was(
    netns: Namespace, tmp_path: Path
) -> None:
    _set_up(netns)
    snapshot_file = tmp_path / "firewall.json"
    doc = netns.save(snapshot_file)
    doc["iptables"]["text"] = _fail_at_commit(doc["iptables"]["text"])
    snapshot_file.write_text(json.dumps(doc))
    _changed_since_the_save(netns)
    before = listings(netns)

    report = netns.restore(snapshot_file)
    assert not report["ok"]
    statuses = {p["part"]: p["status"] for p in report["parts"]}
    assert statuses == {"nft": "unchanged", "iptables": "failed", "ip6tables": "unchanged"}
    assert listings(netns) == before  # nothing opened, nothing replaced


@pytest.mark.root
def test_a_late_failure_puts_back_the_tables_loaded_before_it(
    netns: Namespace, tmp_path: Path
) -> None:
    _set_up(netns)
    snapshot_file = tmp_path / "firewall.json"
    doc = netns.save(snapshot_file)
    doc["ip6tables"]["text"] = _fail_at_commit(doc["ip6tables"]["text"])
    snapshot_file.write_text(json.dumps(doc))
    _changed_since_the_save(netns)
    before = listings(netns)

    report = netns.restore(snapshot_file)
    statuses = {p["part"]: p["status"] for p in report["parts"]}
    assert statuses == {"nft": "unchanged", "iptables": "unchanged", "ip6tables": "failed"}
    details = {p["part"]: p["detail"] for p in report["parts"]}
    assert details["iptables"] == "put back as it was: ip6tables failed", details
    assert details["nft"] == "left as it was: ip6tables failed", details
    assert listings(netns) == before


def _tables(listing: dict[str, Any]) -> dict[str, Any]:
    """Each table's own lines: ("iptables", "filter") -> [...], ("nft", "inet mine") -> text."""
    tables: dict[str, Any] = {}
    for tool in ("iptables", "ip6tables"):
        name = ""
        for line in listing[tool]:
            if line.startswith("*"):
                name = line[1:]
            tables.setdefault(f"{tool} {name}", []).append(line)
    for block in listing["nft"]:
        words = block.split()
        tables[f"nft {words[1]} {words[2]}"] = block
    return tables


@pytest.mark.root
def test_restore_replaces_the_snapshot_tables_and_no_other(
    netns: Namespace, tmp_path: Path
) -> None:
    _set_up(netns)
    saved = _tables(listings(netns))
    snapshot_file = tmp_path / "firewall.json"
    netns.save(snapshot_file)
    _changed_since_the_save(netns)
    changed = _tables(listings(netns))

    report = netns.restore(snapshot_file)
    assert report["ok"], report
    after = _tables(listings(netns))
    theirs = {"iptables raw", "nft ip raw", "nft inet someone-else"}
    assert theirs <= changed.keys() and not theirs & saved.keys()
    assert after == {**saved, **{t: changed[t] for t in theirs}}


@pytest.mark.root
def test_after_a_module_reload_only_the_tables_binding_the_interfaces_are_loaded(
    netns: Namespace, tmp_path: Path
) -> None:
    _set_up(netns)
    saved = _tables(listings(netns))
    snapshot_file = tmp_path / "firewall.json"
    netns.save(snapshot_file)
    _changed_since_the_save(netns)
    netns.run("ip", "link", "del", "dev", "tap-fw0")
    netns.run("ip", "tuntap", "add", "dev", "tap-fw0", "mode", "tap")
    changed = _tables(listings(netns))

    report = netns.restore(snapshot_file, interfaces=["tap-fw0"])
    assert report["ok"], report
    assert [p["status"] for p in report["parts"]] == ["restored", "unchanged", "unchanged"]
    after = _tables(listings(netns))
    # inet mine matches `iif "tap-fw0"`, by index: it alone is loaded again.
    assert after == {**changed, "nft inet mine": saved["nft inet mine"]}


@pytest.mark.root
def test_a_module_reload_leaves_a_firewall_saved_in_another_boot_alone(
    netns: Namespace, tmp_path: Path
) -> None:
    _set_up(netns)
    snapshot_file = tmp_path / "firewall.json"
    doc = netns.save(snapshot_file)
    assert doc["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    doc["boot_id"] = "00000000-0000-0000-0000-000000000000"
    snapshot_file.write_text(json.dumps(doc))
    _changed_since_the_save(netns)
    netns.run("ip", "link", "del", "dev", "tap-fw0")
    netns.run("ip", "tuntap", "add", "dev", "tap-fw0", "mode", "tap")
    before = listings(netns)

    out = netns.stage(str(snapshot_file), tmp_path / "snapshot", script=RELOAD_STAGE)
    report = json.loads(out)
    assert report["firewall"]["skipped"] and report["firewall"]["parts"] == []
    assert listings(netns) == before


@pytest.mark.root
def test_restore_leaves_the_firewall_alone_unless_asked(ovs: OvsBed, tmp_path: Path) -> None:
    """`ovs-service restore` of a snapshot with the interfaces stage, run in
    the namespace of the test's own Open vSwitch."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    ovs.add_bridge("br-fw", ports={"p-fw": 5})
    netns = Namespace(existing=ovs.netns)
    env = {**os.environ, **ovs.env, "OVS_SERVICE_STATE_DIR": str(tmp_path / "state"),
           "PYTHONPATH": str(REPO)}

    def cli(*args: str) -> str:
        return sh(["ip", "netns", "exec", ovs.netns, sys.executable, "-m", "ovs_service", *args],
                  env=env)

    netns.run("iptables", "-A", "INPUT", "-s", "192.0.2.1", "-j", "DROP")
    netns.run("nft", "-f", "-", input=NFT_RULESET.replace("tap-fw0", "p-fw"))
    saved = listings(netns)
    snapshot = tmp_path / "snapshot"
    cli("save", "--stage", "flows", "--stage", "interfaces", "--to", str(snapshot))
    netns.run("iptables", "-F", "INPUT")
    netns.run("nft", "delete", "table", "inet", "mine")
    netns.run("nft", "-f", "-", input=OTHER_TABLE)
    changed = listings(netns)

    doc = json.loads(cli("restore", "--from", str(snapshot), "--json"))
    assert listings(netns) == changed
    assert doc["ok"] and doc["interfaces"]["ok"] and doc["firewall"] is None, doc

    doc = json.loads(cli("restore", "--from", str(snapshot), "--firewall", "--json"))
    assert doc["ok"] and doc["firewall"]["ok"], doc
    after = _tables(listings(netns))
    assert after == {**_tables(saved), "nft inet someone-else": _tables(changed)[
        "nft inet someone-else"]}


# -- no root needed -------------------------------------------------------------

SAVE_WITH_STAND_IN = """\
# Table `filter' contains incompatible base-chains, use 'nft' tool to list them.
# Generated by iptables-save v1.8.9 (nf_tables) on Wed Nov 25 08:39:12 2026
*filter
:INPUT ACCEPT [0:0]
COMMIT
# Completed on Wed Nov 25 08:39:12 2026
*nat
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -o eth0 -j MASQUERADE
COMMIT
"""

LISTING = """\
table ip filter {
\tchain weird {
\t\ttype filter hook input priority 5; policy accept;
\t}
}
table ip nat {
\tchain POSTROUTING {
\t\txt target "MASQUERADE"
\t}
}
table inet "mine" {
}
"""


def test_incompatible_table_stays_with_nft() -> None:
    saved = parse_xtables_save(SAVE_WITH_STAND_IN, "nf_tables")
    assert saved.tables == ("nat",)
    assert "*filter" not in saved.text and "-A POSTROUTING -o eth0 -j MASQUERADE" in saved.text
    assert [key for key, _ in split_nft_tables(LISTING)] == ["ip filter", "ip nat", "inet mine"]
    kept = nft_without(LISTING, ["ip nat"])
    assert "table ip filter" in kept and "table ip nat" not in kept and 'inet "mine"' in kept


def test_snapshot_json_round_trip_and_rejects() -> None:
    snapshot = FirewallSnapshot(
        iptables=XtablesRuleset("*filter\nCOMMIT\n", "nf_tables", ("filter",)),
        ip6tables=None,
        nft="table inet mine {\n}\n",
        nft_left_out=(NftTableChains("ip filter", ("INPUT", "my chain")),),
    )
    where = codec.Where(Path("/snapshots/s"), "interfaces/firewall.json")
    doc = json.loads(json.dumps(snapshot.to_doc()))
    assert FirewallSnapshot.from_doc(doc, where=where) == snapshot
    assert FirewallSnapshot.from_doc(doc, where=where).to_doc() == doc
    for bad, field in (
            ({**doc, "schema": 2}, "schema"),
            ({**doc, "nft": 3}, "nft"),
            ({**doc, "nft_left_out": ["ip filter"]}, "nft_left_out[0]"),
            ({**doc, "boot_id": 7}, "boot_id"),
            ({**doc, "nft_left_out": [{"table": "ip x\nflush ruleset", "chains": []}]},
             "nft_left_out[0].table"),
            ({**doc, "iptables": {"text": "", "backend": "nf_tables",
                                  "tables": ["nat\nflush ruleset"]}}, "iptables.tables[0]"),
            ({**doc, "iptables": {"text": "", "backend": "x", "tables": []}},
             "iptables.backend")):
        with pytest.raises(SnapshotInvalid, match=rf"firewall\.json: {re.escape(field)}: "):
            FirewallSnapshot.from_doc(bad, where=where)
