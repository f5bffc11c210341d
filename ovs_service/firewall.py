"""The firewall stage: iptables, ip6tables and nftables rulesets, saved and restored.

A module reload destroys the internal interfaces; nftables rules that match
them by index (`iif`, `oif`) are left pointing at interfaces that no longer
exist, while loading the saved text again resolves the names afresh. So the
stage keeps the rulesets as their own tools print them and loads them back.

Each tool is optional: one that is not installed is recorded as absent.

Why the nft part leaves some tables out
---------------------------------------
With the nf_tables backend of iptables (Debian 12's default), iptables rules
live in nftables tables (`ip filter`, `ip nat`, ... and `ip6 ...` for
ip6tables) and so appear twice: in `iptables-save` and in `nft list ruleset`.
Restoring both would add them twice. Restoring only the nft listing does not
work: rules that use an xtables extension nft cannot express (`-m recent`,
`-m comment`, ...) print as `xt match "..."`, which `nft -f` refuses, and some
(comments) are dropped from the listing altogether. So those tables are left
to iptables: the nft part holds every table except the ones `iptables-save`
and `ip6tables-save` print; a table that iptables-save marks as incompatible
(a native nft table that merely has an iptables name) stays in the nft part
and its stand-in section is cut from the iptables text. With the legacy
backend nothing is shared and nothing is left out.

Restore runs `nft -f -` on `flush ruleset` plus the nft part (one atomic
transaction, which also clears iptables-nft's tables), then `iptables-restore`
and `ip6tables-restore`, which replace their own tables, each atomically.
Between the first and the others iptables-nft's tables are briefly empty;
during a module reload no packet crosses the datapath anyway. Counters are kept.
iptables-nft creates a built-in chain only once a rule needs it, but
iptables-save lists them all and iptables-restore creates them all; the
chains each left-out table had are therefore recorded, and the empty ones
iptables-restore added are deleted again, so `nft list ruleset` matches too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ovs_service.errors import (
    CommandFailed,
    CommandNotFound,
    FirewallError,
    FirewallSnapshotInvalid,
)
from ovs_service.run import run

SCHEMA = 1

Status = Literal["restored", "absent", "failed"]
Backend = Literal["nf_tables", "legacy"]

_CHAIN = re.compile(r"^\tchain (\S+) \{")
# iptables-save's note on a table it cannot represent, e.g.
# "# Table `filter' contains incompatible base-chains, use 'nft' tool to list them."
_INCOMPATIBLE = re.compile(r"^# Table `([^']+)' .*incompatible")


@dataclass(frozen=True)
class XtablesRuleset:
    """What one of iptables-save / ip6tables-save printed, fit for its restore tool."""

    text: str
    backend: Backend
    tables: tuple[str, ...]  # the tables in `text`, e.g. ("filter", "nat")


@dataclass(frozen=True)
class NftTableChains:
    """A table left to iptables ("ip filter") and the chains it had, as nft names them."""

    table: str
    chains: tuple[str, ...]


@dataclass(frozen=True)
class FirewallSnapshot:
    iptables: XtablesRuleset | None  # None: iptables-save not installed
    ip6tables: XtablesRuleset | None
    nft: str | None  # `nft list ruleset` without iptables' tables; None: nft not installed
    nft_left_out: tuple[NftTableChains, ...] = ()  # tables restored by iptables instead
    schema: int = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> FirewallSnapshot:
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise FirewallSnapshotInvalid(reason=f"not JSON: {e}") from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: object) -> FirewallSnapshot:
        if not isinstance(doc, dict):
            raise FirewallSnapshotInvalid(reason="expected an object")
        if doc.get("schema") != SCHEMA:
            raise FirewallSnapshotInvalid(
                reason=f"unknown schema {doc.get('schema')!r} (expected {SCHEMA})"
            )
        nft = doc.get("nft")
        left_out = doc.get("nft_left_out")
        if nft is not None and not isinstance(nft, str):
            raise FirewallSnapshotInvalid(reason="nft: expected a string or null")
        if not isinstance(left_out, list):
            raise FirewallSnapshotInvalid(reason="nft_left_out: expected a list")
        return cls(
            iptables=_xtables_from(doc.get("iptables"), "iptables"),
            ip6tables=_xtables_from(doc.get("ip6tables"), "ip6tables"),
            nft=nft,
            nft_left_out=tuple(_table_chains_from(t) for t in left_out),
        )


def _table_chains_from(doc: object) -> NftTableChains:
    table = doc.get("table") if isinstance(doc, dict) else None
    chains = doc.get("chains") if isinstance(doc, dict) else None
    if (not isinstance(table, str) or not isinstance(chains, list)
            or not all(isinstance(c, str) for c in chains)):
        raise FirewallSnapshotInvalid(reason=f"nft_left_out: bad entry {doc!r}")
    return NftTableChains(table, tuple(chains))


def _xtables_from(doc: object, where: str) -> XtablesRuleset | None:
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise FirewallSnapshotInvalid(reason=f"{where}: expected an object or null")
    text, backend, tables = doc.get("text"), doc.get("backend"), doc.get("tables")
    if not isinstance(text, str):
        raise FirewallSnapshotInvalid(reason=f"{where}.text: expected a string")
    if backend not in ("nf_tables", "legacy"):
        raise FirewallSnapshotInvalid(reason=f"{where}.backend: unknown {backend!r}")
    if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
        raise FirewallSnapshotInvalid(reason=f"{where}.tables: expected a list of strings")
    return XtablesRuleset(text, "nf_tables" if backend == "nf_tables" else "legacy", tuple(tables))


@dataclass(frozen=True)
class FirewallPartOutcome:
    part: str  # "nft", "iptables", "ip6tables"
    status: Status
    detail: str = ""


@dataclass(frozen=True)
class FirewallRestoreReport:
    parts: tuple[FirewallPartOutcome, ...]

    @property
    def ok(self) -> bool:
        return all(p.status != "failed" for p in self.parts)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# -- save -----------------------------------------------------------------------


def save_firewall() -> FirewallSnapshot:
    """The current rulesets; a tool that is not installed is recorded as absent.

    Raises FirewallError when an installed tool fails.
    """
    iptables = _save_xtables("iptables-save")
    ip6tables = _save_xtables("ip6tables-save")
    ruleset = _tool_output(["nft", "list", "ruleset"])
    if ruleset is None:
        return FirewallSnapshot(iptables, ip6tables, None)
    left_out = {
        f"{family} {table}"
        for family, saved in (("ip", iptables), ("ip6", ip6tables))
        if saved is not None and saved.backend == "nf_tables"
        for table in saved.tables
    }
    blocks = dict(split_nft_tables(ruleset))
    return FirewallSnapshot(
        iptables=iptables,
        ip6tables=ip6tables,
        nft=nft_without(ruleset, left_out),
        nft_left_out=tuple(
            NftTableChains(table, nft_chains(blocks.get(table, "")))
            for table in sorted(left_out)
        ),
    )


def _tool_output(argv: list[str]) -> str | None:
    try:
        return run(argv).stdout
    except CommandNotFound:
        return None
    except CommandFailed as e:
        raise FirewallError(reason=str(e)) from e


def _save_xtables(tool: str) -> XtablesRuleset | None:
    version = _tool_output([tool, "--version"])
    if version is None:
        return None
    backend: Backend = "nf_tables" if "nf_tables" in version else "legacy"
    text = _tool_output([tool, "--counters"]) or ""
    return parse_xtables_save(text, backend)


def parse_xtables_save(text: str, backend: Backend) -> XtablesRuleset:
    """The sections of iptables-save output, less those of tables it calls
    incompatible: for those it prints a stand-in with empty built-in chains,
    while the real table is native nftables and stays in the nft part."""
    incompatible = {m.group(1) for m in map(_INCOMPATIBLE.match, text.splitlines()) if m}
    kept: list[str] = []
    tables: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        if line.startswith("*"):
            name = line[1:].strip()
            skipping = name in incompatible
            if not skipping:
                tables.append(name)
        if not skipping:
            kept.append(line)
        if line.strip() == "COMMIT":
            skipping = False
    return XtablesRuleset("".join(kept), backend, tuple(tables))


def split_nft_tables(ruleset: str) -> list[tuple[str | None, str]]:
    """The top-level blocks of `nft list ruleset`, as ("family name", text);
    anything outside a table block comes through with None."""
    blocks: list[tuple[str | None, str]] = []
    current: list[str] = []
    key: str | None = None
    for line in ruleset.splitlines(keepends=True):
        if not current and line.startswith("table "):
            words = line.split()
            key = f"{words[1]} {words[2].strip(chr(34))}" if len(words) >= 3 else None
            current = [line]
            continue
        if current:
            current.append(line)
            if line.rstrip("\n") == "}":
                blocks.append((key, "".join(current)))
                current, key = [], None
        elif line.strip():
            blocks.append((None, line))
    if current:
        raise FirewallError(reason="nft ruleset listing ends inside a table block")
    return blocks


def nft_chains(table_block: str) -> tuple[str, ...]:
    """The chain names of one table block of an nft listing, as printed."""
    return tuple(m.group(1) for m in map(_CHAIN.match, table_block.splitlines()) if m)


def nft_without(ruleset: str, tables: Iterable[str]) -> str:
    """The nft listing without the given tables ("ip filter", ...)."""
    skip = set(tables)
    return "".join(text for key, text in split_nft_tables(ruleset) if key not in skip)


# -- restore --------------------------------------------------------------------


def restore_firewall(snapshot: FirewallSnapshot) -> FirewallRestoreReport:
    """Load the saved rulesets: nft first (flushing the whole ruleset), then
    iptables and ip6tables. A part that fails is reported; the others still run."""
    nft = _restore_part("nft", ["nft", "-f", "-"],
                        None if snapshot.nft is None else "flush ruleset\n" + snapshot.nft)
    parts = [nft]
    for part, family, saved in (("iptables", "ip", snapshot.iptables),
                                ("ip6tables", "ip6", snapshot.ip6tables)):
        outcome = _restore_part(part, [f"{part}-restore", "--counters"],
                                None if saved is None else saved.text)
        if outcome.status == "restored" and nft.status != "absent":
            tables = [t for t in snapshot.nft_left_out if t.table.split()[0] == family]
            outcome = FirewallPartOutcome(part, "restored", _drop_added_chains(tables))
        parts.append(outcome)
    return FirewallRestoreReport(tuple(parts))


def _restore_part(part: str, argv: list[str], text: str | None) -> FirewallPartOutcome:
    if text is None:
        return FirewallPartOutcome(part, "absent", "not installed when saved")
    try:
        run(argv, input=text)
    except (CommandFailed, CommandNotFound) as e:
        return FirewallPartOutcome(part, "failed", str(e))
    return FirewallPartOutcome(part, "restored")


def _drop_added_chains(tables: Iterable[NftTableChains]) -> str:
    """Delete the chains iptables-restore created that the table did not have
    (empty built-in chains); nft refuses to delete a chain that has rules or is
    jumped to. Returns what went wrong, or ""."""
    commands = []
    try:
        for saved in tables:
            listing = run(["nft", "list", "table", *saved.table.split()]).stdout
            commands += [f"delete chain {saved.table} {chain}\n"
                         for chain in nft_chains(listing) if chain not in saved.chains]
        if commands:
            run(["nft", "-f", "-"], input="".join(commands))
    except (CommandFailed, CommandNotFound) as e:
        return f"built-in chains added by the restore were kept: {e}"
    return ""
