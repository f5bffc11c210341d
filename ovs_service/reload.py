"""The `force-reload-kmod` transaction: the restart's steps around a reload
of the openvswitch kernel module, with the kernel datapaths deleted and made
again at their port numbers, and the internal interfaces put back.

Checked before the journal is written (a refusal leaves nothing to
recover): that the module can be unloaded at all. Datapaths are deleted
and made again over netlink, in this process (`dpnetlink`). From the stop
on, a failure rolls forward as in `transaction`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ovs_service import deadifs, operations, stages, store
from ovs_service.log import StepLog, StepRecord
from ovs_service.stages import datapaths
from ovs_service.transaction import (
    DATABASE_STEP,
    KMOD,
    VSWITCHD_UNIT,
    Outcome,
    Run,
    before_stop,
    database_decision,
    dpkg_guarded,
    finish_restore,
    interrupted,
    precheck,
    rolling_forward,
    room_for_journal,
    save,
    start_and_restore,
    stop,
)

if TYPE_CHECKING:
    from ovs_service.systemd import Systemd


KMOD_PLAN: list[tuple[str, str]] = [
    ("save", "find internal interfaces; save flows, datapaths, interfaces and firewall "
             "to a new snapshot and verify it (before anything stops)"),
    ("stop-ovs-vswitchd", f"stop {VSWITCHD_UNIT} alone (job mode ignore-dependencies)"),
    DATABASE_STEP,
    ("delete-datapaths", "delete the kernel datapaths"),
    ("reload-module", "unload openvswitch and its vport modules (not their dependencies), "
                      "load openvswitch again"),
    ("restore-datapaths", "re-create kernel datapaths with their ports at the old numbers"),
    ("start-ovs-vswitchd", f"start {VSWITCHD_UNIT} with other_config:flow-restore-wait=true"),
    ("restore", "pin moved OpenFlow port numbers; restore every bridge, in parallel"),
    ("clear-flow-restore-wait", "clear flow-restore-wait: the switch runs its flows again"),
    ("restore-interfaces", "put back internal interfaces' addresses, routes, link settings "
                           "and the firewall"),
    ("check-dead-ifs", "report processes bound to interfaces that no longer exist"),
]


@dataclass
class KmodOutcome(Outcome):
    module_reloaded: bool = False
    notes: list[str] = field(default_factory=list)
    interfaces: dict[str, object] | None = None
    port_mismatches: list[datapaths.Mismatch] = field(default_factory=list)
    dead_sockets: list[deadifs.DeadSocket] = field(default_factory=list)


def force_reload_kmod(
    on_step: Callable[[StepRecord], None] | None = None,
    wait: float = 0.0,
    on_wait: Callable[[], None] | None = None,
    restart_database: bool = False,
) -> KmodOutcome:
    from ovs_service import kmod
    from ovs_service.systemd import Systemd

    root = store.state_dir()
    steps = StepLog(on_step=on_step)
    outcome = KmodOutcome(op=KMOD, steps=steps.steps)
    with store.lock(root, wait, on_wait):
        precheck(KMOD, interrupted(root) + dpkg_guarded())
        has_modules = kmod.module_support()
        if has_modules:
            # Before the journal: a refusal leaves nothing to recover.
            precheck(KMOD, kmod.unload_blockers(_own_kernel_ports))
        else:
            outcome.notes.append("this kernel has no loadable module support: "
                                 "module steps skipped, the rest done")
        with Systemd() as sd, Run(root, KMOD, steps) as run:
            _reload_kmod(root, sd, run, outcome, has_modules, restart_database)
    outcome.ok = bool(outcome.interfaces and outcome.interfaces.get("ok"))
    return outcome


def _own_kernel_ports() -> int:
    """Kernel datapath ports of the types the openvswitch module provides itself
    (each holds a reference to it), tunnel devices made with rtnetlink included."""
    return datapaths.own_kernel_ports()


def _reload_kmod(root: Path, sd: Systemd, run: Run, outcome: KmodOutcome,
                 has_modules: bool, restart_database: bool) -> None:
    from ovs_service import kmod

    with before_stop(run):
        prepared = save(run, outcome, stages.save_names())
        saved_dps = datapaths.load(prepared[0])
        db = database_decision(sd, restart_database)
        precheck(run.op, room_for_journal(root))
        store.mark_pending(root, prepared[0].path)
    with rolling_forward(run, sd):
        stop(run, sd, db)
        with run.step("delete-datapaths") as s:
            run.tx.set_datapaths_deleted()  # from here on, recover re-creates them
            s.detail = ", ".join(datapaths.delete_kernel_datapaths()) or "none"
        with run.step("reload-module") as s:
            if has_modules:
                s.detail = "reloaded " + ", ".join(kmod.reload_openvswitch())
                outcome.module_reloaded = True
        with run.step("restore-datapaths") as s:
            made = (datapaths.recreate_kernel_datapaths(saved_dps) if saved_dps
                    else datapaths.Recreated())
            outcome.notes += made.problems
            s.detail = f"{len(made.ports)} ports, {len(made.problems)} problems"
        start_and_restore(run, sd, outcome, prepared)
        with run.step("restore-interfaces"):
            outcome.interfaces = operations.restore_interfaces(
                prepared[0], module_reloaded=True).to_doc()
            if saved_dps is not None:
                outcome.port_mismatches = list(datapaths.verify(saved_dps))
        with run.step("check-dead-ifs"):
            outcome.dead_sockets = list(deadifs.check_dead_ifs())
    finish_restore(root, prepared[0].path, outcome.bridges)
    run.tx.finish()

