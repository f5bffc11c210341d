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

Restore replaces the snapshot's own tables and no other: what was added
since (by docker, fail2ban, firewalld...) stays. The nft part is one `nft -f`
transaction that deletes and re-creates each of its tables; iptables-restore
replaces the tables it names, table by table. All parts are checked before
any is loaded, and if a load fails nonetheless, the iptables tables it and
the parts before it replaced are put back: a failure never leaves the host
with a table emptied. After a module reload only the nft tables that bind
the re-created interfaces by index or as a device need loading again; the
caller says which interfaces (`restore_firewall(..., interfaces=...)`).
Counters are kept.

iptables-nft creates a built-in chain only once a rule needs it, but
iptables-save lists them all and iptables-restore creates them all; the
chains each left-out table had are therefore recorded, and the empty ones
iptables-restore added are deleted again, so `nft list ruleset` matches too.

The cutting of the tools' texts into tables is `stages.firewall_rulesets`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from ovs_service import codec
from ovs_service.errors import (
    CommandFailed,
    CommandNotFound,
    FirewallError,
    OvsServiceError,
    RestorePartsFailed,
    SnapshotInvalid,
)
from ovs_service.run import run
from ovs_service.stages.base import RestoreScope, SaveResult, SaveScope, Stage
from ovs_service.stages.firewall_rulesets import (
    Backend,
    binds_interfaces,
    empty_section,
    nft_chains,
    nft_replacing,
    nft_table_blocks,
    xtables_sections,
)

# Importable from here too, as before the text handling had a module of its own.
from ovs_service.stages.firewall_rulesets import XtablesRuleset as XtablesRuleset
from ovs_service.stages.firewall_rulesets import nft_without as nft_without
from ovs_service.stages.firewall_rulesets import parse_xtables_save as parse_xtables_save
from ovs_service.stages.firewall_rulesets import split_nft_tables as split_nft_tables
from ovs_service.store import Snapshot, SnapshotWriter

SCHEMA = 1

# unchanged: as it was (not needed; or another part failed, and this one was
# left as it was, or loaded and put back as it was)
Status = Literal["restored", "absent", "failed", "unchanged"]

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# Table names go into nft commands: nothing but a name (a snapshot is data).
_XTABLES_TABLE = re.compile(r"[a-z][a-z0-9_]*")
_NFT_TABLE = re.compile(r"(?:ip|ip6) [a-z][a-z0-9_]*")


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
    boot_id: str | None = None  # the boot it was saved in; None: unknown
    schema: int = SCHEMA

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = codec.to_doc(self)
        return doc

    @classmethod
    def from_doc(cls, doc: object, *, where: codec.Where) -> FirewallSnapshot:
        """The snapshot in `doc`; table names, which go into nft commands, must
        be names and nothing else."""
        codec.check_schema(doc, SCHEMA, where)
        snapshot = codec.from_doc(cls, doc, where=where)
        for part, saved in (("iptables", snapshot.iptables), ("ip6tables", snapshot.ip6tables)):
            for i, table in enumerate(saved.tables if saved else ()):
                if not _XTABLES_TABLE.fullmatch(table):
                    raise where.invalid(f"{part}.tables[{i}]", f"not a table name: {table!r}")
        for i, left_out in enumerate(snapshot.nft_left_out):
            if not _NFT_TABLE.fullmatch(left_out.table):
                raise where.invalid(f"nft_left_out[{i}].table",
                                    f"not an ip or ip6 table: {left_out.table!r}")
        return snapshot


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
        return FirewallSnapshot(iptables, ip6tables, None, boot_id=boot_id())
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
        boot_id=boot_id(),
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


# -- restore --------------------------------------------------------------------


def boot_id() -> str | None:
    """This boot's random id, which the kernel draws afresh at every boot."""
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def saved_this_boot(snapshot: FirewallSnapshot) -> bool:
    """Whether the rulesets were saved since the host last booted: only then
    are they a copy of this boot's firewall rather than an old one."""
    return snapshot.boot_id is not None and snapshot.boot_id == boot_id()


@dataclass(frozen=True)
class _Load:
    """One restore tool's input: the nft transaction, or an iptables-save text."""

    part: str  # "nft", "iptables", "ip6tables"
    text: str
    tables: tuple[str, ...] = ()  # iptables: the tables the text replaces
    backend: Backend = "legacy"


def restore_firewall(
    snapshot: FirewallSnapshot, interfaces: Collection[str] | None = None
) -> FirewallRestoreReport:
    """Replace the snapshot's own tables with their saved copies, all or nothing.

    Tables the snapshot does not hold (added since by someone else) are left
    alone. With `interfaces`, only the nft tables that bind one of them by
    index or as a hook device are replaced: what re-creating those interfaces
    breaks; iptables matches interfaces by name and is left alone.

    The nft part is one transaction that deletes and re-creates its tables;
    iptables-restore replaces the tables it names, each atomically. Every
    part is checked first, and nothing is loaded unless all pass; if a load
    fails nonetheless, the iptables tables replaced so far are put back as
    they were, so a failure never leaves a table empty.
    """
    outcomes: dict[str, FirewallPartOutcome] = {}
    loads: list[_Load] = []
    for part, saved in (("iptables", snapshot.iptables), ("ip6tables", snapshot.ip6tables)):
        if saved is None:
            outcomes[part] = FirewallPartOutcome(part, "absent", "not installed when saved")
        elif interfaces is not None:
            outcomes[part] = FirewallPartOutcome(
                part, "unchanged", "matches interfaces by name: nothing to redo")
        else:
            loads.append(_Load(part, saved.text, saved.tables, saved.backend))
    if snapshot.nft is None:
        outcomes["nft"] = FirewallPartOutcome("nft", "absent", "not installed when saved")
    else:
        blocks = [(head, block) for head, block in nft_table_blocks(snapshot.nft)
                  if interfaces is None or binds_interfaces(block, interfaces)]
        if blocks:
            loads.append(_Load("nft", nft_replacing(blocks)))  # last: it needs no undoing
        else:
            outcomes["nft"] = FirewallPartOutcome("nft", "unchanged", "no table to replace")
    outcomes.update(_load_all(loads))
    if all(outcomes[load.part].status == "restored" for load in loads):
        for load in loads:
            if load.part != "nft" and snapshot.nft is not None:
                family = "ip" if load.part == "iptables" else "ip6"
                tables = [t for t in snapshot.nft_left_out if t.table.split()[0] == family]
                outcomes[load.part] = FirewallPartOutcome(
                    load.part, "restored", _drop_added_chains(tables))
    return FirewallRestoreReport(tuple(outcomes[p] for p in ("nft", "iptables", "ip6tables")))


def _load_all(loads: list[_Load]) -> dict[str, FirewallPartOutcome]:
    """Check every load, then load them in order; on a failure, undo."""
    for load in loads:
        check = (["nft", "-c", "-f", "-"] if load.part == "nft"
                 else [f"{load.part}-restore", "--test", "--counters"])
        try:
            run(check, input=load.text)
        except (CommandFailed, CommandNotFound) as e:
            return _failed(load.part, f"refused before anything changed: {e}", loads, [])
    done: list[tuple[_Load, _Before]] = []
    for load in loads:
        try:
            before = _Before() if load.part == "nft" else _before(load)
        except (CommandFailed, CommandNotFound) as e:
            return _failed(load.part, f"could not save the rules it replaces: {e}", loads, done)
        try:
            run(_loader(load.part), input=load.text)
        except (CommandFailed, CommandNotFound) as e:
            # iptables-restore commits table by table: the first may be in;
            # nft's is one transaction: nothing of it is.
            loaded = [(load, before)] if load.part != "nft" else []
            return _failed(load.part, str(e), loads, [*done, *loaded])
        done.append((load, before))
    return {load.part: FirewallPartOutcome(load.part, "restored") for load in loads}


def _loader(part: str) -> list[str]:
    return ["nft", "-f", "-"] if part == "nft" else [f"{part}-restore", "--counters"]


@dataclass(frozen=True)
class _Before:
    """What an iptables part's tables were before it was loaded."""

    text: str = ""  # iptables-save's
    chains: tuple[NftTableChains, ...] = ()  # nf_tables backend: the chains each table had


def _before(load: _Load) -> _Before:
    text = run([f"{load.part}-save", "--counters"]).stdout
    if load.backend != "nf_tables":
        return _Before(text)
    family = "ip" if load.part == "iptables" else "ip6"
    chains = []
    for table in xtables_sections(text).keys() & set(load.tables):
        try:
            listing = run(["nft", "list", "table", family, table]).stdout
        except CommandNotFound:
            break
        chains.append(NftTableChains(f"{family} {table}", nft_chains(listing)))
    return _Before(text, tuple(chains))


def _failed(part: str, reason: str, loads: list[_Load],
            done: list[tuple[_Load, _Before]]) -> dict[str, FirewallPartOutcome]:
    """The outcome of a restore that `part` failed: what was loaded is put back."""
    undone = {load.part: _put_back(load, before) for load, before in reversed(done)}
    outcomes = {}
    for load in loads:
        # Not in `undone`: never loaded; "": loaded, then put back; else what went wrong.
        problem = undone.get(load.part)
        after = "left as it was" if problem is None else "put back as it was"
        if problem:
            outcomes[load.part] = FirewallPartOutcome(
                load.part, "failed",
                (reason + "; " if load.part == part else f"{part} failed; ") + problem)
        elif load.part == part:
            outcomes[part] = FirewallPartOutcome(
                part, "failed", reason + ("; nothing changed" if problem is None else f"; {after}"))
        else:
            outcomes[load.part] = FirewallPartOutcome(load.part, "unchanged",
                                                      f"{after}: {part} failed")
    return outcomes


def _put_back(load: _Load, before: _Before) -> str:
    """Put an iptables part's tables back as they were; a table that did not
    exist gets empty built-in chains that accept, and, with the nf_tables
    backend, is deleted, as are the built-in chains iptables-restore adds.
    Returns what went wrong, or ""."""
    had = xtables_sections(before.text)
    saved = xtables_sections(load.text)
    text = "".join(had.get(table) or empty_section(table, saved.get(table, ""))
                   for table in load.tables)
    new = [table for table in load.tables if table not in had]
    family = "ip" if load.part == "iptables" else "ip6"
    try:
        run([f"{load.part}-restore", "--counters"], input=text)
        if new and load.backend == "nf_tables":
            run(["nft", "-f", "-"], input="".join(f"delete table {family} {t}\n" for t in new))
    except (CommandFailed, CommandNotFound) as e:
        return f"putting back the {load.part} rules it replaced failed too: {e}"
    return _drop_added_chains(before.chains)



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


# -- the stage --------------------------------------------------------------------

FILE = "interfaces/firewall.json"  # saved beside the interfaces, whose stage it follows


def load(snapshot: Snapshot) -> FirewallSnapshot:
    if FILE not in snapshot.manifest.files:
        raise SnapshotInvalid(path=snapshot.path, reason="has no firewall rules")
    doc, where = codec.read(snapshot.file(FILE))
    return FirewallSnapshot.from_doc(doc, where=where)


@dataclass(frozen=True)
class FirewallReport:
    """The firewall's parts: loaded, unchanged, or failed (and then nothing was)."""

    report: dict[str, Any]
    key: ClassVar[str] = "firewall"

    @property
    def ok(self) -> bool:
        return bool(self.report.get("ok"))

    def __str__(self) -> str:
        if "skipped" in self.report:
            return f"firewall: not restored ({self.report['skipped']})"
        return f"firewall: {'restored' if self.ok else 'FAILED'}" + "".join(
            f"\n  {p['part']}: {p['status']}{': ' + p['detail'] if p['detail'] else ''}"
            for p in self.report.get("parts", []))

    def to_doc(self) -> dict[str, Any]:
        return self.report

    def first_problem(self) -> str:
        failed = [p for p in self.report.get("parts", []) if p.get("status") == "failed"]
        return f"{failed[0]['part']}: {failed[0]['detail']}" if failed else "see the report"

    def error(self) -> OvsServiceError | None:
        return None if self.ok else RestorePartsFailed(parts="firewall",
                                                        reason=self.first_problem())


class FirewallStage(Stage):
    """The host's iptables, ip6tables and nft rules.

    Saved whenever the interfaces are; restored only when asked for
    (`restore --firewall`): the host's firewall is not ovs-service's to
    replace otherwise. (A module reload puts back the tables that bind the
    re-created interfaces: see the interfaces stage.)
    """

    name = "firewall"

    def save(self, writer: SnapshotWriter, scope: SaveScope) -> SaveResult:
        writer.write_json(FILE, save_firewall().to_doc())
        return SaveResult({}, {})

    def check(self, snapshot: Snapshot, scope: RestoreScope) -> None:
        load(snapshot)

    def restore(self, snapshot: Snapshot, scope: RestoreScope) -> FirewallReport:
        return FirewallReport(restore_firewall(load(snapshot)).to_dict())
