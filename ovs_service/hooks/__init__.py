"""Hooks that ovs-vswitchd's unit runs: `ovs-service-hook save|prestart|poststart`.

They import little (no typer, no pystemd) so they start fast, log to the
journal with priorities, report progress with sdnotify's STATUS=, and never
leave flow-restore-wait set when they end.

- save (ExecStop=, before the daemon stops): snapshot every bridge and mark
  the snapshot pending.
- prestart (ExecStartPre=): if a snapshot is pending, set flow-restore-wait
  so the new daemon keeps its datapath flows and installs none of its own.
- poststart (ExecStartPost=): put OpenFlow port numbers back where they moved,
  restore the pending snapshot, clear flow-restore-wait.
- stoppost (ExecStopPost=): clear flow-restore-wait if a start failed midway;
  the pending snapshot stays for the next successful start.

While an `ovs-service` transaction runs (its journal names a live process),
the hooks leave the saving and restoring to it.
"""

from __future__ import annotations

import sys

USAGE = "usage: ovs-service-hook save|prestart|poststart|stoppost"


# The steps in which a transaction starts ovs-vswitchd and restores itself.
TRANSACTION_STARTS = ("start-ovs-vswitchd", "start-units")


def _running_transaction() -> dict[str, object] | None:
    """The journal of the ovs-service transaction running now, if any.

    Read with the standard library only: while a transaction runs, the hooks
    sit in the switch's outage window and must cost nothing.
    """
    import json
    import os

    root = os.environ.get("OVS_SERVICE_STATE_DIR") or "/var/lib/ovs-service"
    try:
        with open(os.path.join(root, "transaction.json")) as f:
            record = json.load(f)
        os.kill(int(record["pid"]), 0)
    except PermissionError:
        return dict(record)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return dict(record) if int(record["pid"]) > 0 else None


def _left_to_transaction(hook: str) -> bool:
    """Whether the running transaction does this hook's work itself: it saved
    before stopping the daemon, it manages flow-restore-wait, and it restores
    after starting the daemon. An operator's concurrent `systemctl restart`
    runs the hooks at other steps: then they do their work."""
    import os

    tx = _running_transaction()
    if tx is None:
        return False
    if hook == "save":
        return bool(tx.get("snapshot"))
    if hook == "stoppost" or tx.get("step") in TRANSACTION_STARTS:
        return True
    # Past its start step, the transaction restores while its own start's
    # ExecStartPost= commands run: that start's poststart is left to it.
    invocation = tx.get("invocation")
    return hook == "poststart" and bool(invocation) and invocation == os.environ.get(
        "INVOCATION_ID")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if len(args) != 1 or args[0] not in ("save", "prestart", "poststart", "stoppost"):
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    if _left_to_transaction(args[0]):
        # The outage's fast path: nothing imported beyond the standard library.
        print(f"ovs-service-hook {args[0]}: a transaction is running and does this itself",
              file=sys.stderr)
        sys.exit(0)
    import logging

    from ovs_service import log as logsetup
    from ovs_service.errors import OvsServiceError

    logsetup.setup(debug=debug)
    log = logging.getLogger("ovs_service.hooks")
    from ovs_service.hooks import unit_hooks

    try:
        code = getattr(unit_hooks, args[0])()
    except OvsServiceError as e:
        log.error("ovs-service-hook %s: %s", args[0], e)
        code = e.exit_code
    sys.exit(code)
