"""The text of firewall rulesets, as iptables-save and `nft list ruleset` print them.

Cutting it into tables and back: the sections of an iptables-save text,
the table blocks of an nft listing and their chains, whether a table binds
interfaces by index, and the nft transaction that replaces tables. The
firewall stage (`stages.firewall`) saves and loads these texts; why it
leaves some tables out of the nft part is told there.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Literal

from ovs_service.errors import FirewallError

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


def xtables_sections(text: str) -> dict[str, str]:
    """The tables of an iptables-save text, each from its "*table" line to its COMMIT."""
    sections: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("*"):
            name, lines = line[1:].strip(), [line]
        elif name is not None:
            lines.append(line)
            if line.strip() == "COMMIT":
                sections[name] = "".join(lines)
                name = None
    return sections


def empty_section(table: str, section: str) -> str:
    """A table's built-in chains (those with a policy), empty and accepting."""
    builtin = [line.split()[0] for line in section.splitlines()
               if line.startswith(":") and len(line.split()) > 1 and line.split()[1] != "-"]
    return "".join([f"*{table}\n", *(f"{chain} ACCEPT [0:0]\n" for chain in builtin), "COMMIT\n"])


def nft_table_blocks(ruleset: str) -> list[tuple[str, str]]:
    """The table blocks of an nft listing as ("family name" as written, text);
    whatever is outside a table block is not loaded."""
    return [(block.split("{", 1)[0].split(None, 1)[1].strip(), block)
            for key, block in split_nft_tables(ruleset) if key is not None]


# nft's ways of naming an interface by index or as a hook's device: they do
# not follow a re-created interface, while iifname/oifname compare names.
_BINDING = re.compile(r"\b(?:iif|oif|iface_index|devices?)\b")


def binds_interfaces(table_block: str, interfaces: Collection[str]) -> bool:
    """Whether an nft table may bind one of these interfaces by index or as a
    device (a table that names one and binds anything, to be safe)."""
    if not _BINDING.search(table_block):
        return False
    words = set(re.findall(r'"([^"]*)"', table_block)) | set(re.split(r"[\s{},;]+", table_block))
    return any(name in words for name in interfaces)


def nft_replacing(blocks: Iterable[tuple[str, str]]) -> str:
    """One nft transaction replacing these tables and no other: each is
    created if missing (so that deleting it cannot fail), deleted, defined."""
    return "".join(f"table {head}\ndelete table {head}\n{block}" for head, block in blocks)
