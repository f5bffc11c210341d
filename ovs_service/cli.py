"""The `ovs-service` command: a thin layer over `operations` and friends.

Every command prints for people by default and exactly one JSON document
with `--json`. Errors are one line on stderr and a non-zero exit status (see
`errors.EXIT_CODES`); `--debug` adds the traceback.
"""

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, List, NoReturn, Optional  # typer 0.7 (Debian 12) reads these

import typer

from ovs_service import __version__, metrics, operations, ovs, stages, store
from ovs_service import log as logsetup
from ovs_service.errors import EXIT_CODES, INTERRUPTED, OvsServiceError, SaveIncomplete
from ovs_service.openflow import snapshotdiff
from ovs_service.openflow.messages import describe
from ovs_service.openflow.ofproto import VERSION_NAME
from ovs_service.stages import flows

app = typer.Typer(
    name="ovs-service",
    help="Keep Open vSwitch's OpenFlow state across restarts, upgrades and module reloads.",
    epilog="Exit status: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items())
    + ".",
    no_args_is_help=True,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
snapshot_app = typer.Typer(help="Inspect saved snapshots.", no_args_is_help=True)
app.add_typer(snapshot_app, name="snapshot")

log = logging.getLogger("ovs_service")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ovs-service {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Log every command run; show tracebacks."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    metrics_dir: Optional[Path] = typer.Option(
        None, "--metrics-dir",
        help="Write Prometheus metrics (ovs_service.prom) into this directory "
        "[default: $OVS_SERVICE_METRICS_DIR, else /var/lib/prometheus/node-exporter; "
        "skipped if missing]."),
) -> None:
    logsetup.setup(debug)
    metrics.configure(metrics_dir)


JSON_OPT = typer.Option(False, "--json", help="Print a JSON document instead of text.")
BRIDGE_OPT = typer.Option(
    [], "--bridge", "-b", help="Only this bridge (repeat for more). Default: every bridge."
)
STAGE_OPT = typer.Option(
    [], "--stage",
    help=f"Only this stage (repeat): {', '.join(stages.names())}. Default: "
    f"{' and '.join(stages.default_save())} to save (the firewall goes with the interfaces); "
    "what the snapshot holds to restore (the firewall only when named, or --firewall).")


def _seconds(value: float) -> float:
    """`--wait`: a finite number of seconds, not negative (nan would wait for ever)."""
    if not math.isfinite(value) or value < 0:
        raise typer.BadParameter(f"{value} is not a number of seconds (0 or more)",
                                 param_hint="'--wait'")
    return value


WAIT_OPT = typer.Option(0.0, "--wait", callback=_seconds, help="Wait up to this many seconds "
                        "for another transaction to finish (default: fail at once).")


def _on_wait() -> None:
    typer.echo("waiting for another transaction to finish...", err=True)


def _locked(wait: float) -> Any:
    """The transactions' lock, for a save or a restore from the command line:
    two restores at once would delete each other's meters, and with them the
    flows that use them. The unit hooks run inside a transaction that holds
    it; they never come through here."""
    return store.lock(store.state_dir(), wait, _on_wait)


def _emit(as_json: bool, doc: Any, text: str) -> None:
    if as_json:
        typer.echo(json.dumps(doc, indent=2, sort_keys=True))
    elif text:
        typer.echo(text)


@app.command()
def save(
    bridge: List[str] = BRIDGE_OPT,
    stage: List[str] = STAGE_OPT,
    to: Optional[Path] = typer.Option(
        None, "--to", help="Write the snapshot to this new directory."
    ),
    wait: float = WAIT_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Save the OpenFlow state of every bridge (or those named) and print the snapshot's path.

    Example: ovs-service save --bridge br-int
    """
    # The metrics are written before the lock is released: in the order the lock gave.
    with _locked(wait), metrics.operation("save"):
        try:
            snap = operations.take_snapshot(bridge, stage, to)
        except SaveIncomplete as e:
            _emit_saved(as_json, e.snapshot)  # the others' snapshot is written and usable
            raise
    _emit_saved(as_json, snap)


def _emit_saved(as_json: bool, snap: store.Snapshot) -> None:
    _emit(as_json, {"path": str(snap.path), "bridges": snap.manifest.bridges,
                    "flows": snap.manifest.extra.get("flows", {}),
                    "failed": snap.manifest.extra.get("flows_failed", {})}, str(snap.path))


@app.command()
def restore(
    source: Optional[str] = typer.Option(
        None, "--from", help="Snapshot directory or name. Default: the newest."
    ),
    bridge: List[str] = BRIDGE_OPT,
    stage: List[str] = STAGE_OPT,
    allow_foreign: bool = typer.Option(
        False, "--allow-foreign", help="Accept a snapshot taken on another host."
    ),
    firewall: bool = typer.Option(
        False, "--firewall",
        help="Also replace the firewall tables the snapshot holds with its copies "
        "(others stay). Without it the firewall is left alone."),
    wait: float = WAIT_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Restore a snapshot onto the running switch, each bridge atomically.

    Every file is checked against the manifest before the switch is touched.
    Example: ovs-service restore --from /var/lib/ovs-service/20261125T101500.123456789
    """
    path = store.resolve(store.state_dir(), source)
    # The metrics are written before the lock is released: in the order the lock gave.
    with _locked(wait), metrics.operation("restore", restores=True) as recorded:
        outcome = operations.restore_snapshot(path, bridge, stage, allow_foreign,
                                              firewall=firewall)
        if not bridge and not stage:
            operations.end_failure(store.state_dir(), outcome)
        recorded.restore(outcome.bridges)
        recorded.ok = outcome.ok
    # One report, whatever failed; then the failure's line and exit status.
    _emit(as_json, outcome.to_doc(), str(outcome))
    operations.raise_for(outcome)


@snapshot_app.command("list")
def snapshot_list(as_json: bool = JSON_OPT) -> None:
    """List the snapshots in the store, oldest first. Example: ovs-service snapshot list"""
    root = store.state_dir()
    pending = store.pending_snapshot(root)
    rows: list[dict[str, Any]] = []
    for path in store.snapshots(root):
        try:
            m = store.load(path, verify=False, allow_foreign=True).manifest
            rows.append({"name": path.name, "path": str(path), "created": m.created,
                         "host": m.host, "bridges": m.bridges, "stages": m.stages,
                         "pending": path == pending})
        except OvsServiceError as e:
            rows.append({"name": path.name, "path": str(path), "error": str(e)})
    text = "\n".join(
        f"{r['name']}  {r.get('created', '?')}  {','.join(r.get('bridges', [])) or '-'}"
        f"{'  (pending restore)' if r.get('pending') else ''}"
        f"{'  ' + r['error'] if 'error' in r else ''}"
        for r in rows
    ) or f"no snapshots in {root}"
    _emit(as_json, rows, text)


@snapshot_app.command("show")
def snapshot_show(
    name: Optional[str] = typer.Argument(None, help="Snapshot path or name. Default: the newest."),
    as_json: bool = JSON_OPT,
) -> None:
    """Show a snapshot's manifest and what it holds per bridge (after verifying it).

    Example: ovs-service snapshot show --json
    """
    snap = store.load(store.resolve(store.state_dir(), name), allow_foreign=True)
    recs = flows.records(snap)
    m = snap.manifest
    doc = {"path": str(snap.path), "schema": m.schema, "created": m.created, "host": m.host,
           "ovs_version": m.ovs_version, "tool_version": m.tool_version, "stages": m.stages,
           "bridges": [{"name": r.name, "openflow": VERSION_NAME[r.version], **r.counts}
                       for r in recs]}
    text = "\n".join(
        [f"snapshot {snap.path}", f"created {m.created} on {m.host}, Open vSwitch {m.ovs_version}"]
        + [f"  {r.name}: {VERSION_NAME[r.version]}, {r.counts['flows']} flows, "
           f"{r.counts['groups']} groups, {r.counts['meters']} meters, "
           f"{'a' if r.counts['tlv'] else 'no'} TLV map" for r in recs]
    )
    _emit(as_json, doc, text)


@snapshot_app.command("diff")
def snapshot_diff(
    old: str = typer.Argument(..., help="The older snapshot (path or name)."),
    new: str = typer.Argument(..., help="The newer snapshot (path or name)."),
    limit: int = typer.Option(10, "--limit", help="Differing messages to print per bridge."),
    as_json: bool = JSON_OPT,
) -> None:
    """Show what differs between two snapshots, bridge by bridge, decoded.

    Example: ovs-service snapshot diff 20261125T101500.1 20261125T121500.2
    """
    root = store.state_dir()
    a = store.load(store.resolve(root, old), allow_foreign=True)
    b = store.load(store.resolve(root, new), allow_foreign=True)
    diff = snapshotdiff.diff_snapshots(a, b)
    doc: dict[str, Any] = {"only_in_old": list(diff.only_in_old),
                           "only_in_new": list(diff.only_in_new), "bridges": {}}
    lines = [f"bridge {n}: only in {old}" for n in diff.only_in_old]
    lines += [f"bridge {n}: only in {new}" for n in diff.only_in_new]
    for bridge in diff.bridges:
        shown = [f"- {describe(m)}" for m in bridge.removed[:limit]]
        shown += [f"+ {describe(m)}" for m in bridge.added[:limit]]
        doc["bridges"][bridge.name] = {"removed": len(bridge.removed),
                                       "added": len(bridge.added), "messages": shown}
        lines.append(f"bridge {bridge.name}: -{len(bridge.removed)} +{len(bridge.added)}")
        lines += [f"  {s}" for s in shown]
    _emit(as_json, doc, "\n".join(lines) or "no differences")


@app.command()
def status(as_json: bool = JSON_OPT) -> None:
    """Show the units, the newest snapshot, pending or failed restores, flow-restore-wait.

    Example: ovs-service status --json
    """
    from ovs_service import journal

    root = store.state_dir()
    found = store.snapshots(root)
    pending, failed = store.pending_snapshot(root), store.failed_snapshot(root)
    try:
        frw: Optional[bool] = ovs.flow_restore_wait()
    except OvsServiceError:
        frw = None
    tx = journal.read(root)
    units = _unit_states()
    doc: dict[str, Any] = {"state_dir": str(root), "newest": str(found[-1]) if found else None,
           "snapshots": len(found), "pending": str(pending) if pending else None,
           "failed": str(failed) if failed else None, "flow_restore_wait": frw,
           "units": units,
           "transaction": None if tx is None else {
               "op": tx.op, "pid": tx.pid, "step": tx.step, "state": tx.state,
               "running": tx.alive}}
    lines = [f"{u['name']}: {u['active_state']} ({u['sub_state']})" for u in units or []]
    lines += [
        f"store: {root} ({len(found)} snapshots)",
        f"newest: {found[-1].name if found else '-'}",
        f"pending restore: {pending.name if pending else 'no'}",
        f"flow-restore-wait: {'unknown (ovsdb unreachable)' if frw is None else frw}",
    ]
    if failed:
        lines.append(f"LAST RESTORE FAILED: snapshot {failed} kept; "
                     f"fix, then: ovs-service restore --from {failed}")
    if tx is not None:
        lines.append(f"transaction {tx.op} at step {tx.step} ({tx.state}), "
                     f"{'running' if tx.alive else 'INTERRUPTED: run ovs-service recover'}")
    _emit(as_json, doc, "\n".join(lines))


def _unit_states() -> Optional[List[dict[str, Any]]]:
    from ovs_service.systemd import Systemd

    try:
        with Systemd() as sd:
            return [sd.unit(u).__dict__ for u in
                    ("openvswitch.service", "ovsdb-server.service", "ovs-vswitchd.service")]
    except OvsServiceError:
        return None


def _progress(as_json: bool) -> Any:
    """Each step with its time, on a terminal; the journal gets the log lines."""
    def show(step: Any) -> None:
        log.debug("step %s: %.1f ms %s %s", step.name, step.seconds * 1000, step.ok, step.detail)
        if not as_json and sys.stderr.isatty():
            mark = "ok" if step.ok else "FAILED"
            detail = f"  ({step.detail})" if step.detail else ""
            typer.echo(f"  {step.name:<26} {step.seconds * 1000:8.1f} ms  {mark}{detail}", err=True)
    return show


DRY_RUN_OPT = typer.Option(False, "--dry-run", help="Print the plan and change nothing.")
RESTART_DATABASE_OPT = typer.Option(
    False, "--restart-database", help="Restart ovsdb-server too, even when its binary, "
    "libraries, schema, unit and options are those it started with (default: only when "
    "one changed).")


def _plan(op: str, as_json: bool) -> None:
    from ovs_service import transaction

    steps = transaction.plan(op)
    _emit(as_json, {"op": op, "dry_run": True, "steps": [{"name": n, "description": d}
                                                         for n, d in steps]},
          "\n".join(f"{i}. {n}: {d}" for i, (n, d) in enumerate(steps, 1)))


@app.command()
def restart(
    dry_run: bool = DRY_RUN_OPT,
    wait: float = WAIT_OPT,
    restart_database: bool = RESTART_DATABASE_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Restart Open vSwitch through systemd and keep every flow.

    Saves, stops ovs-vswitchd, restarts ovsdb-server if what it starts from
    changed, starts ovs-vswitchd with flow-restore-wait, restores every
    bridge, clears flow-restore-wait.
    Example: ovs-service restart --dry-run
    """
    from ovs_service import transaction

    if dry_run:
        _plan("restart", as_json)
        return
    with metrics.operation("restart", restores=True) as recorded:
        outcome = transaction.restart(on_step=recorded.on_step(_progress(as_json)), wait=wait,
                                      on_wait=_on_wait, restart_database=restart_database)
        recorded.restore(outcome.bridges)
    total = sum(s.seconds for s in outcome.steps)
    _emit(as_json, {"op": "restart", "ok": outcome.ok, "snapshot": outcome.snapshot,
                    "seconds": total,
                    "steps": [{"name": s.name, "seconds": s.seconds, "ok": s.ok,
                               "detail": s.detail} for s in outcome.steps],
                    "bridges": [b.__dict__ for b in outcome.bridges]},
          f"restarted in {total:.3f}s; {len(outcome.bridges)} bridges restored "
          f"from {outcome.snapshot}")


@app.command("force-reload-kmod")
def force_reload_kmod(
    dry_run: bool = DRY_RUN_OPT,
    wait: float = WAIT_OPT,
    restart_database: bool = RESTART_DATABASE_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Reload the openvswitch kernel module and put everything back.

    Saves flows, datapaths, internal interfaces and the firewall, stops the
    switch, reloads the module, re-creates the datapaths at their port
    numbers, restores flows and interfaces, and reports processes bound to
    interfaces that vanished. Example: ovs-service force-reload-kmod --dry-run
    """
    from ovs_service import reload

    if dry_run:
        _plan("force-reload-kmod", as_json)
        return
    with metrics.operation("force-reload-kmod", restores=True) as recorded:
        outcome = reload.force_reload_kmod(on_step=recorded.on_step(_progress(as_json)),
                                           wait=wait, on_wait=_on_wait,
                                           restart_database=restart_database)
        recorded.restore(outcome.bridges)
        recorded.ok = outcome.ok
    total = sum(s.seconds for s in outcome.steps)
    lines = [f"force-reload-kmod done in {total:.3f}s; module "
             f"{'reloaded' if outcome.module_reloaded else 'not reloaded'}; "
             f"{len(outcome.bridges)} bridges restored from {outcome.snapshot}"]
    lines += [f"note: {n}" for n in outcome.notes]
    lines += [f"port number moved: {m.interface} {m.what} {m.saved} -> {m.now}"
              for m in outcome.port_mismatches]
    lines += [f"dead interface: pid {d.pid} ({d.command}) bound to ifindex {d.ifindex}"
              for d in outcome.dead_sockets]
    _emit(as_json, {"op": "force-reload-kmod", "ok": outcome.ok, "snapshot": outcome.snapshot,
                    "module_reloaded": outcome.module_reloaded, "notes": outcome.notes,
                    "seconds": total,
                    "steps": [{"name": s.name, "seconds": s.seconds, "ok": s.ok,
                               "detail": s.detail} for s in outcome.steps],
                    "bridges": [b.__dict__ for b in outcome.bridges],
                    "interfaces": outcome.interfaces,
                    "port_mismatches": [m.__dict__ for m in outcome.port_mismatches],
                    "dead_sockets": [d.__dict__ for d in outcome.dead_sockets]},
          "\n".join(lines))
    if not outcome.ok:
        raise typer.Exit(1)


@app.command("check-dead-ifs")
def check_dead_ifs(as_json: bool = JSON_OPT) -> None:
    """List processes whose packet sockets are bound to interfaces that no longer exist.

    Exits 1 if there are any. Example: ovs-service check-dead-ifs --json
    """
    from ovs_service import deadifs

    dead = deadifs.check_dead_ifs()
    _emit(as_json, [d.__dict__ for d in dead],
          "\n".join(f"pid {d.pid} ({d.command}) is bound to vanished ifindex {d.ifindex}"
                    for d in dead) or "no process is bound to a vanished interface")
    if dead:
        raise typer.Exit(1)


@app.command()
def recover(wait: float = WAIT_OPT, as_json: bool = JSON_OPT) -> None:
    """Finish a transaction that was interrupted (killed, power loss): roll it forward.

    Starts the daemons if they are down, restores the pending snapshot,
    clears flow-restore-wait. Safe to run at any time.
    Example: ovs-service recover --wait 60
    """
    from ovs_service import transaction

    with metrics.operation("recover") as recorded:
        result = transaction.recover(wait)
        if result.bridges:
            recorded.restore(result.bridges)
    found = result.found
    _emit(as_json, {"interrupted": None if found is None else
                    {"op": found.op, "step": found.step, "state": found.state},
                    "actions": result.actions,
                    "bridges": [b.__dict__ for b in result.bridges]},
          (f"interrupted {found.op} at step {found.step}\n" if found else "")
          + "\n".join(result.actions))


def _fail(error: BaseException, code: int, debug: bool) -> NoReturn:
    if debug:
        import traceback

        traceback.print_exception(error)
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"ovs-service: error: {message}", file=sys.stderr)
    sys.exit(code)


def main() -> None:
    debug = "--debug" in sys.argv[1:] or bool(os.environ.get("OVS_SERVICE_DEBUG"))
    command = typer.main.get_command(app)
    try:
        result = command.main(args=sys.argv[1:], prog_name="ovs-service", standalone_mode=False)
    except OvsServiceError as e:
        _fail(e, e.exit_code, debug)
    except typer.Abort:
        _fail(RuntimeError("aborted"), INTERRUPTED, debug)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except OSError as e:
        _fail(e, 1, debug)
    except KeyboardInterrupt:
        _fail(RuntimeError("interrupted"), INTERRUPTED, debug)
    except Exception as e:
        # The command-line parser's own errors (bad option, missing
        # argument) come from the library typer builds on, whichever it is.
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            _fail(RuntimeError(e.format_message()), 2, debug)
        raise
    sys.exit(result if isinstance(result, int) else 0)
