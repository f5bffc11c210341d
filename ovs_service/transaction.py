"""The `restart` transaction, driven through systemd's D-Bus API, the steps
it shares with `force-reload-kmod` (`ovs_service.reload`), and `recover`,
which finishes either.

restart: save → stop ovs-vswitchd → restart ovsdb-server (as ovs-vswitchd
exits; only if something it starts from changed, see `ovs_service.database`)
→ start ovs-vswitchd with flow-restore-wait → restore (as soon as it has
configured its bridges) →
clear flow-restore-wait. Each step is written to the journal before
and after it runs; flow-restore-wait is cleared on every way out once it has
been set.

Whatever can be checked is checked before anything stops (`precheck`),
and a refusal there leaves no journal and no pending snapshot
(`before_stop`); once ovs-vswitchd has stopped, a failure rolls forward
(`rolling_forward`) the way recover does, and only then is reported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ovs_service import database, journal, metrics, operations, ovs, store
from ovs_service.errors import (
    Busy,
    OvsdbRefused,
    OvsServiceError,
    OvsUnreachable,
    PrecheckFailed,
    RestoreFailed,
    RolledForward,
    SnapshotInvalid,
    SystemdError,
)
from ovs_service.log import StepLog, StepRecord
from ovs_service.openflow.messages import PreparedBundle
from ovs_service.stages import datapaths, flows

if TYPE_CHECKING:
    from ovs_service.systemd import Job, Systemd

log = logging.getLogger(__name__)


RESTART = "restart"
KMOD = "force-reload-kmod"
OVSDB_UNIT = "ovsdb-server.service"
VSWITCHD_UNIT = "ovs-vswitchd.service"
START_TIMEOUT = 300.0  # seconds: the units' TimeoutStartSec=

DATABASE_STEP = (
    "restart-ovsdb-server",
    f"restart {OVSDB_UNIT} alone while ovs-vswitchd exits, if its binary or a library, "
    "the schema, its unit or options changed since it started (always with "
    "--restart-database); otherwise wait for the exit")

RESTART_PLAN: list[tuple[str, str]] = [
    ("save", "save every bridge's OpenFlow state to a new snapshot and verify it"),
    ("stop-ovs-vswitchd", f"stop {VSWITCHD_UNIT} alone (job mode ignore-dependencies)"),
    DATABASE_STEP,
    ("start-ovs-vswitchd", f"start {VSWITCHD_UNIT} with other_config:flow-restore-wait=true"),
    ("restore", "pin moved OpenFlow port numbers; restore every bridge, in parallel"),
    ("clear-flow-restore-wait", "clear flow-restore-wait: the switch runs its flows again"),
]


@dataclass
class Outcome:
    op: str
    snapshot: str | None = None
    steps: list[StepRecord] = field(default_factory=list)
    bridges: list[flows.BridgeRestore] = field(default_factory=list)
    ok: bool = False


class Run:
    """One transaction's steps: each journalled on disk and timed for the caller."""

    def __init__(self, root: Path, op: str, steps: StepLog) -> None:
        self.root = root
        self.op = op
        self.tx = journal.Journal(root, op)
        self.steps = steps

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.tx.close()  # on every way out: the hooks stop leaving work to us

    @contextmanager
    def step(self, name: str) -> Iterator[StepRecord]:
        with self.tx.step(name), self.steps.step(name) as record:
            yield record


Prepared = tuple[store.Snapshot, list[flows.BridgeRecord], dict[str, PreparedBundle]]


# The steps before the stop: a transaction refused or killed in them left
# the switch running as it was.
BEFORE_STOP = ("save",)


def save(run: Run, outcome: Outcome, stage_names: Sequence[str] = ()) -> Prepared:
    """Save and verify everything before anything stops. The snapshot is not
    pending yet (`before_stop` marks it): a refusal leaves nothing to restore.

    A bridge that cannot be saved stops the transaction here (SaveIncomplete):
    restarting would lose its table.
    """
    with run.step("save"):
        snapshot = operations.take_snapshot(stage_names=stage_names, store_dir=run.root)
        run.tx.set_snapshot(snapshot.path)
        outcome.snapshot = str(snapshot.path)
        loaded, records = operations.prepare_pinned(snapshot.path)
        # The bundles the empty bridges will need, encoded now, not in the outage.
        return loaded, records, operations.prepare_bundles(loaded, records)


@contextmanager
def before_stop(run: Run) -> Iterator[None]:
    """Save and check, then mark the snapshot pending, last: the stop follows.

    A refusal (or an interrupt) in here leaves what it found: no journal for
    recover, and no pending snapshot for the next start of ovs-vswitchd,
    which would roll the running switch back to it.
    """
    try:
        yield
    except BaseException:
        _withdraw(run.root, run.tx.record)
        run.tx.finish()
        raise
    # If this process dies from here on, the metrics show the snapshot
    # pending since now. In the background: the stop does not wait for it.
    metrics.refresh_in_background(ask_switch=False)


def _withdraw(root: Path, record: journal.Record) -> bool:
    """Unmark the snapshot the transaction of `record` marked pending, and only
    that one; whether there was one."""
    pending = store.pending_snapshot(root)
    if record.snapshot and pending is not None and pending.name == record.snapshot:
        store.clear_pending(root)
        return True
    return False


def never_stopped(record: journal.Record) -> bool:
    """Whether the journal is of a transaction that ended before its stop."""
    return (record.op in (RESTART, KMOD)
            and not record.datapaths_deleted
            and (record.step is None or record.step in BEFORE_STOP))


def database_decision(sd: Systemd, forced: bool) -> database.Decision:
    """Whether the transaction restarts ovsdb-server, decided before the stop."""
    if forced:
        return database.FORCED
    try:
        return database.decide(sd.service_start(OVSDB_UNIT))
    except SystemdError as e:
        return database.Decision(True, f"restarted: cannot read its unit ({e})")
    except Exception as e:  # a decision that fails must not stop the restart: restart it
        return database.Decision(True, f"restarted: cannot tell whether it changed ({e!r})")


def stop(run: Run, sd: Systemd, db: database.Decision) -> None:
    """Stop ovs-vswitchd, and restart ovsdb-server while it exits if `db` says so.

    Both alone (job mode ignore-dependencies): with Debian's units,
    openvswitch-switch Requires= ovs-vswitchd and ovsdb-server is PartOf= it,
    so a plain stop takes the database down too, and the rest of the
    transaction with it. The database restarts once ovs-vswitchd has agreed
    to exit or been sent SIGTERM (past the unit's ExecStop=), not before (the
    stock ovs-ctl's order): a running ovs-vswitchd
    whose database goes away stalls while it reconnects, which on the netdev
    datapath stops forwarding for about a second. Nor once it is gone: its
    exit and the unit's ExecStopPost= overlap the database's restart
    (measured: the profile of `python3 -m bench.gap`).
    """
    with run.step("stop-ovs-vswitchd"):
        stop = sd.submit("stop", VSWITCHD_UNIT, "ignore-dependencies")
        if db.restart:
            sd.wait_stopping(stop)
        else:  # nothing to start alongside: no polling while the daemon exits
            sd.wait(stop)
    with run.step("restart-ovsdb-server") as step:
        step.detail = db.why
        if db is database.FORCED:
            database.forget_start()
        restart = sd.submit("restart", OVSDB_UNIT, "ignore-dependencies") if db.restart else None
        sd.wait(stop)
        if restart is not None:
            sd.wait(restart)


def start_and_restore(run: Run, sd: Systemd, outcome: Outcome, prepared: Prepared) -> None:
    """Start with flow-restore-wait, restore, and clear it on every way out.

    The restore begins as soon as the daemon has configured its bridges,
    not when the start job ends, nor when systemd learns that the daemon
    runs: that is after it detached (and, with Debian's units, after ovs-ctl
    exited), tens of milliseconds later. The unit's ExecStartPost= commands
    wait meanwhile: its poststart hook, which leaves this start's restore to
    us, waits for the outage lock (`Journal.outage`; when it is taken: see
    `start_configured`), and enabling remote managers comes after it, once
    the switch forwards again.
    """
    with ExitStack() as held:
        try:
            with run.step("start-ovs-vswitchd"):
                job = start_configured(run, sd, ovs.set_flow_restore_wait(True), held)
            with run.step("restore"):
                outcome.bridges = operations.restore_pinned(*prepared)
        finally:
            with run.step("clear-flow-restore-wait"):
                ovs.set_flow_restore_wait(False)
    sd.wait(job)


def start_configured(run: Run, sd: Systemd, next_cfg: int | None, held: ExitStack) -> Job:
    """Start ovs-vswitchd; return once it has configured its bridges, with
    the outage lock held (in `held`) and the start's invocation ID in the
    journal.

    Configured: its cur_cfg reaches `next_cfg`, through a watch opened
    before the start. The lock is taken then, not before: a daemon that
    never reports its configuration must not keep its start job, and so
    this wait, from ending. Without a watch (no number, or ovsdb-server
    refuses or drops it), until systemd says the unit runs, with the lock
    taken before the start: systemd says so as it spawns the poststart hook.
    """
    with ExitStack() as watching:
        watch = None
        if next_cfg is not None:
            try:
                watch = watching.enter_context(ovs.started_watch(next_cfg, START_TIMEOUT))
            except (OvsUnreachable, OvsdbRefused) as e:
                log.debug("no watch on ovs-vswitchd's configuration (%s)", e)
        if watch is None:
            held.enter_context(run.tx.outage())
        job = sd.submit("start", VSWITCHD_UNIT)
        invocation = None
        if watch is not None:
            try:
                invocation = sd.wait_ready(job, watch.reached, START_TIMEOUT)
            except (OvsUnreachable, OvsdbRefused) as e:
                log.debug("the watch on ovs-vswitchd's configuration broke (%s)", e)
            else:
                held.enter_context(run.tx.outage())
    if invocation is None:
        invocation = sd.wait_started(job, START_TIMEOUT)
        if watch is not None:
            held.enter_context(run.tx.outage())
    # The daemon's own, where it can be read: the start that is running.
    run.tx.set_invocation(ovs.daemon_invocation("ovs-vswitchd") or invocation)
    return job


def restart(
    on_step: Callable[[StepRecord], None] | None = None,
    wait: float = 0.0,
    on_wait: Callable[[], None] | None = None,
    restart_database: bool = False,
) -> Outcome:
    from ovs_service.systemd import Systemd

    root = store.state_dir()
    steps = StepLog(on_step=on_step)
    outcome = Outcome(op=RESTART, steps=steps.steps)
    with store.lock(root, wait, on_wait):
        precheck(RESTART, interrupted(root) + dpkg_guarded())
        with Systemd() as sd, Run(root, RESTART, steps) as run:
            with before_stop(run):
                prepared = save(run, outcome)
                db = database_decision(sd, restart_database)
                precheck(run.op, room_for_journal(root))
                store.mark_pending(root, prepared[0].path)
            with rolling_forward(run, sd):
                stop(run, sd, db)
                start_and_restore(run, sd, outcome, prepared)
            finish_restore(root, prepared[0].path, outcome.bridges)
            run.tx.finish()
    outcome.ok = True
    return outcome


# What the journal needs after the stop: it is rewritten (a new file, then a
# rename) before and after every step.
JOURNAL_ROOM = 1 << 20
JOURNAL_INODES = 64


def room_for_journal(root: Path) -> list[str]:
    """Why the journal might not be writable after the stop (the snapshot is
    written before it, so a full disk stops the save, which changes nothing)."""
    fs = os.statvfs(root)
    if fs.f_bavail * fs.f_frsize < JOURNAL_ROOM:
        return [f"{root}: less than {JOURNAL_ROOM >> 20} MiB free for the transaction journal"]
    if fs.f_files and fs.f_favail < JOURNAL_INODES:
        return [f"{root}: fewer than {JOURNAL_INODES} inodes free for the transaction journal"]
    return []


def interrupted(root: Path) -> list[str]:
    """A dead transaction that had stopped the switch: its journal holds what
    recover needs (the snapshot, whether the kernel datapaths were deleted),
    which a new transaction's journal would overwrite."""
    record = journal.read(root)
    if record is None or record.alive or never_stopped(record):
        return []
    return [f"an interrupted {record.op} (at {record.step or 'its start'}) left its journal: "
            "run ovs-service recover first"]


def dpkg_guarded() -> list[str]:
    """The dpkg hook's guard (ovs_service.dpkg_guard) refuses the stop of
    ovs-vswitchd: a transaction would fail at its stop, after its save."""
    from ovs_service import dpkg_guard

    found = dpkg_guard.guards()
    if not found:
        return []
    if dpkg_guard.dpkg_running():
        return ["a dpkg run that unpacks openvswitch-switch is under way, and the units "
                "refuse a stop until it ends (ovs-service(8), UPGRADES): try again after it"]
    return [f"{found[0]} (and the like) was left by a dpkg run that did not finish, and the "
            "units refuse a stop: run ovs-service recover first"]


def precheck(op: str, blockers: list[str]) -> None:
    if blockers:
        raise PrecheckFailed(op=op, reason="; ".join(blockers))


@contextmanager
def rolling_forward(run: Run, sd: Systemd | None = None) -> Iterator[None]:
    """From the stop on, a failure puts the switch back before it is reported.

    The switch would otherwise stay stopped (and after force-reload-kmod's
    delete-datapaths, without its datapaths) until someone runs recover:
    this does what recover does, at once, with the journal as it stands
    (written on a best-effort basis from here: the disk may be what failed).
    The error names the step that failed and how the rolling forward went.
    """
    try:
        yield
    except Exception as error:
        if not isinstance(error, OvsServiceError | OSError):
            raise
        step = run.tx.failed or run.tx.record.step or "?"
        reason = " ".join(str(error).split()) or type(error).__name__
        run.tx.keep_going()
        result = Recovery(found=run.tx.record)
        try:
            if sd is not None:
                # ovs-vswitchd may be on its way down (the stop job is waited
                # for later): what it looks like now would mislead.
                sd.settle()
            _roll_forward(run.root, run.tx.record, run.tx, result, start=True)
        except (OvsServiceError, OSError) as again:
            raise RolledForward(op=run.op, step=step, reason=reason,
                                after=f"putting the switch back failed too ({again}); "
                                "the journal is kept: ovs-service recover") from error
        raise RolledForward(op=run.op, step=step, reason=reason,
                            after="the switch was put back: " + "; ".join(result.actions)
                            ) from error


def finish_restore(root: Path, snapshot: Path, results: list[flows.BridgeRestore]) -> None:
    """Settle the markers after a restore; raise if a bridge failed.

    If the switch went away mid-restore, the snapshot stays pending: the next
    start of ovs-vswitchd (its hooks) or `ovs-service recover` restores it.
    """
    failed = [r for r in results if not r.ok]
    gone = [r for r in failed if r.transient]
    if gone:
        raise RestoreFailed(bridge=gone[0].bridge, reason=gone[0].reason + "; the snapshot "
                            "stays pending for the next start, or: ovs-service recover")
    store.clear_pending(root)
    if not failed:
        store.clear_failed(root)
        return
    store.mark_failed(root, snapshot)
    raise RestoreFailed(bridge=failed[0].bridge, reason=failed[0].reason
                        + f"; snapshot kept: ovs-service restore --from {snapshot}")


def plan(op: str) -> list[tuple[str, str]]:
    if op == KMOD:
        from ovs_service.reload import KMOD_PLAN

        return KMOD_PLAN
    return RESTART_PLAN


@dataclass
class Recovery:
    found: journal.Record | None
    actions: list[str] = field(default_factory=list)
    bridges: list[flows.BridgeRestore] = field(default_factory=list)


def recover(wait: float = 0.0) -> Recovery:
    """Finish an interrupted transaction by rolling it forward.

    The journal says what was running. Whatever the step, the end state is
    the same: ovsdb-server and ovs-vswitchd running, the pending snapshot
    restored, flow-restore-wait cleared, the journal gone. A force-reload-kmod
    that got as far as deleting the datapaths also gets the module loaded, its
    kernel datapaths back at their port numbers before ovs-vswitchd starts (so
    that it adopts them), and the internal interfaces and the firewall back.
    Only what is missing is made again, so a recovery that is itself
    interrupted can simply run again. A transaction that died before its
    stop never took the switch down: its snapshot is not restored (the
    switch may have been given flows since), only its marks are cleared.
    """
    root = store.state_dir()
    with store.lock(root, wait):
        record = journal.read(root)
        if record is not None and record.alive and record.pid != os.getpid():
            raise Busy(holder=f"pid {record.pid}, {record.op} at {record.step}")
        result = Recovery(found=record)
        _remove_dpkg_guard(result)
        # Our own journal replaces the dead one: the unit hooks leave the
        # restore to us (they would wait for the lock we hold).
        with journal.Journal(root, "recover") as tx:
            if record is not None and never_stopped(record):
                _forget(root, record, result)
                record = None  # what is left is what recover does without a journal
            _roll_forward(root, record, tx, result)
        if not result.actions:
            result.actions.append("nothing to recover")
    return result


def _remove_dpkg_guard(result: Recovery) -> None:
    """The units' refusal to stop, left by a dpkg run that was killed
    (ovs_service.dpkg_guard), would refuse the restarts below."""
    from ovs_service import dpkg_guard

    removed = dpkg_guard.remove_stale()
    for path in removed:
        result.actions.append(f"removed {path}, left by a dpkg run that did not finish")
    if not removed and (kept := dpkg_guard.guards()):
        result.actions.append(f"kept {', '.join(map(str, kept))}: a dpkg run is under way "
                              "(its hook removes them as it ends); stops of the daemons "
                              "are refused until then")


def _forget(root: Path, record: journal.Record, result: Recovery) -> None:
    """A transaction that died before its stop: the switch ran on, and may have
    been given flows since. Its snapshot is not restored; its pending mark
    and its journal go."""
    where = f"at {record.step}" if record.step else "before its first step"
    action = (f"{record.op} was interrupted {where}, before it stopped anything: "
              "the switch never stopped, nothing restored")
    if _withdraw(root, record):
        action += f"; its snapshot {record.snapshot} is no longer pending"
    result.actions.append(action)


def _roll_forward(
    root: Path, record: journal.Record | None, tx: journal.Journal, result: Recovery,
    start: bool = False,
) -> None:
    """Whatever a transaction left undone, done; `tx` is the journal of who does
    it. The units are started if ovs-vswitchd is not running, or if `start`."""
    reloaded = _interrupted_reload(root, record, tx, result)
    if start or not ovs.daemon_running("ovs-vswitchd"):
        if reloaded is not None:
            _recreate_datapaths(tx, result, reloaded)
        _start_units(root, tx, result)
    pending = store.pending_snapshot(root)
    if pending is not None:
        _restore_flows(tx, result, pending)
    if reloaded is not None:
        _restore_interfaces(tx, result, reloaded)
    if pending is not None:
        finish_restore(root, pending, result.bridges)
    if ovs.flow_restore_wait():
        ovs.set_flow_restore_wait(False)
        result.actions.append("cleared flow-restore-wait")
    tx.finish()


def _interrupted_reload(
    root: Path, record: journal.Record | None, tx: journal.Journal, result: Recovery
) -> store.Snapshot | None:
    """The snapshot of a force-reload-kmod that had begun deleting the kernel
    datapaths, verified; None if there was none (or it cannot be read)."""
    if record is None or not record.datapaths_deleted or not record.snapshot:
        return None
    tx.take_over(record)  # still to do if this recovery is interrupted too
    try:
        return store.load(root / record.snapshot)
    except SnapshotInvalid as e:
        result.actions.append(f"kernel datapaths and interfaces not restored: {e}")
        return None


def _recreate_datapaths(tx: journal.Journal, result: Recovery, snapshot: store.Snapshot) -> None:
    """Before ovs-vswitchd starts: the module, and the kernel datapaths at their port numbers."""
    with tx.step("restore-datapaths"):
        result.actions += operations.recreate_kernel_datapaths(snapshot) or []


def _start_units(root: Path, tx: journal.Journal, result: Recovery) -> None:
    from ovs_service.systemd import Systemd

    # The hooks leave everything to a running transaction, this one too.
    with tx.step("start-units"), Systemd() as sd:
        sd.job("start", OVSDB_UNIT)
        # Only for an ovs-vswitchd this start begins: on a running one the
        # flag would stop new flows and disconnect controllers until cleared.
        if store.pending_snapshot(root) and not ovs.daemon_running("ovs-vswitchd"):
            ovs.set_flow_restore_wait(True)
        sd.job("start", VSWITCHD_UNIT)
    result.actions.append(f"started {OVSDB_UNIT} and {VSWITCHD_UNIT}")


def _restore_flows(tx: journal.Journal, result: Recovery, pending: Path) -> None:
    try:
        with tx.step("restore"):
            snapshot, records = operations.prepare_pinned(pending)
            result.bridges = operations.restore_pinned(snapshot, records)
        result.actions.append(f"restored {pending}")
    finally:
        ovs.set_flow_restore_wait(False)


def _restore_interfaces(tx: journal.Journal, result: Recovery, snapshot: store.Snapshot) -> None:
    """The module reload took the internal interfaces' addresses, routes and
    link settings with it, and the nft tables that bind them by index stopped
    matching: those are loaded again, unless the host has booted since the
    save (the snapshot's firewall is then an old copy)."""
    if "interfaces" in snapshot.manifest.stages:
        with tx.step("restore-interfaces"):
            report = operations.restore_interfaces(snapshot, module_reloaded=True).to_doc()
        skipped = (report["firewall"] or {}).get("skipped")
        result.actions.append("restored interfaces and firewall (the tables bound to them)"
                              + (f" (firewall left alone: {skipped})" if skipped else "")
                              + ("" if report["ok"] else " (with problems)"))
    saved = datapaths.load(snapshot)
    for m in datapaths.verify(saved) if saved is not None else []:
        result.actions.append(f"port number moved: {m.interface} {m.what} {m.saved} -> {m.now}")
