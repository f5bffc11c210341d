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

from ovs_service.firewall import (
    FirewallSnapshot,
    FirewallSnapshotInvalid,
    NftTableChains,
    XtablesRuleset,
    nft_without,
    parse_xtables_save,
    split_nft_tables,
)

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("iptables", "iptables-save", "ip6tables", "ip6tables-save", "nft")

STAGE = r"""
import json, sys
from ovs_service import firewall
op, path = sys.argv[1], sys.argv[2]
if op == "save":
    with open(path, "w") as f:
        f.write(firewall.save_firewall().to_json())
else:
    with open(path) as f:
        snapshot = firewall.FirewallSnapshot.from_json(f.read())
    print(json.dumps(firewall.restore_firewall(snapshot).to_dict()))
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
    def __init__(self) -> None:
        self.name = f"ovssvc-fw-{os.getpid()}-{secrets.token_hex(3)}"
        sh(["ip", "netns", "add", self.name])

    def run(self, *argv: str, input: str | None = None) -> str:
        return sh(["ip", "netns", "exec", self.name, *argv], input=input)

    def stage(self, op: str, path: Path, *, path_env: str | None = None) -> str:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        if path_env is not None:
            env["PATH"] = path_env
        ip = shutil.which("ip") or "ip"  # found here: PATH may be cut down for the stage
        return sh([ip, "netns", "exec", self.name, sys.executable, "-c", STAGE, op, str(path)],
                  env=env)

    def save(self, path: Path, *, path_env: str | None = None) -> dict[str, Any]:
        self.stage("save", path, path_env=path_env)
        doc: dict[str, Any] = json.loads(path.read_text())
        return doc

    def restore(self, path: Path, *, path_env: str | None = None) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self.stage("restore", path, path_env=path_env))
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
    text = snapshot_file.read_text()
    assert FirewallSnapshot.from_json(text).to_json() == text

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
def test_a_failing_part_is_reported_and_the_others_restored(
    netns: Namespace, tmp_path: Path
) -> None:
    for argv in IPTABLES:
        netns.run(*argv)
    before = listings(netns)
    snapshot_file = tmp_path / "firewall.json"
    doc = netns.save(snapshot_file)
    doc["nft"] += "table inet broken {\n\tchain c {\n\t\tnot a rule\n\t}\n}\n"
    snapshot_file.write_text(json.dumps(doc))

    netns.run("nft", "flush", "ruleset")
    report = netns.restore(snapshot_file)
    assert not report["ok"]
    assert [p["status"] for p in report["parts"]] == ["failed", "restored", "restored"]
    assert "nft" in report["parts"][0]["detail"]
    assert listings(netns) == before


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
    text = snapshot.to_json()
    assert FirewallSnapshot.from_json(text) == snapshot
    assert FirewallSnapshot.from_json(text).to_json() == text
    for bad in ({**snapshot.to_dict(), "schema": 2},
                {**snapshot.to_dict(), "nft": 3},
                {**snapshot.to_dict(), "nft_left_out": ["ip filter"]},
                {**snapshot.to_dict(), "iptables": {"text": "", "backend": "x", "tables": []}}):
        with pytest.raises(FirewallSnapshotInvalid):
            FirewallSnapshot.from_json(json.dumps(bad))
