"""What `restore --firewall` says of each part when a load fails: a part that
was loaded and then put back says so, one never loaded is left as it was, and
nft (one transaction) is never said to have been put back, nor to have failed
to be. The tools are stood in for: only the report's words are under test
here (tests/ovs/test_firewall.py loads real rulesets)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from ovs_service.errors import CommandFailed
from ovs_service.run import Completed
from ovs_service.stages import firewall

FILTER = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 192.0.2.1 -j DROP\nCOMMIT\n"
NFT = "table inet mine {\n\tchain input {\n\t}\n}\n"


def _snapshot() -> firewall.FirewallSnapshot:
    ruleset = firewall.XtablesRuleset(FILTER, "legacy", ("filter",))
    return firewall.FirewallSnapshot(ruleset, ruleset, NFT)


def _tools(monkeypatch: pytest.MonkeyPatch, failing: str) -> list[list[str]]:
    """Every tool succeeds (the *-save ones print FILTER), except the command
    line `failing`, once (putting back works)."""
    ran: list[list[str]] = []
    left = [failing]

    def run(argv: Sequence[str], **kwargs: Any) -> Completed:
        ran.append(list(argv))
        if " ".join(argv) in left:
            left.clear()
            raise CommandFailed(command=argv[0], returncode=1, stderr="injected failure")
        return Completed(tuple(argv), 0, FILTER if argv[0].endswith("-save") else "", "")

    monkeypatch.setattr(firewall, "run", run)
    return ran


def _parts(report: firewall.FirewallRestoreReport) -> dict[str, tuple[str, str]]:
    return {p.part: (p.status, p.detail) for p in report.parts}


def test_a_part_loaded_then_put_back_says_put_back(monkeypatch: pytest.MonkeyPatch) -> None:
    _tools(monkeypatch, "ip6tables-restore --counters")
    parts = _parts(firewall.restore_firewall(_snapshot()))
    assert parts["iptables"] == ("unchanged", "put back as it was: ip6tables failed")
    assert parts["nft"] == ("unchanged", "left as it was: ip6tables failed")
    status, detail = parts["ip6tables"]
    assert status == "failed" and detail.endswith("; put back as it was"), detail


def test_a_failed_nft_transaction_is_not_put_back(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = _tools(monkeypatch, "nft -f -")
    parts = _parts(firewall.restore_firewall(_snapshot()))
    status, detail = parts["nft"]
    assert status == "failed" and detail.endswith("; nothing changed"), detail
    assert "failed too" not in detail
    assert ["nft-restore", "--counters"] not in ran
    for part in ("iptables", "ip6tables"):
        assert parts[part] == ("unchanged", "put back as it was: nft failed")
