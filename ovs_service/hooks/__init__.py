"""The Python half of `ovs-service-hook`, the commands ovs-vswitchd's unit runs.

`ovs-service-hook` (bin/ovs-service-hook) is a sh script: it leaves a
running transaction's work to it (the journal's transaction.defer), sets and
clears flow-restore-wait itself (prestart, stoppost, poststart with nothing
pending), and runs `python3 -P -m ovs_service.hooks HOOK` for the rest:

- save (ExecStop=, before the daemon stops): snapshot every bridge and mark
  the snapshot pending.
- prestart (ExecStartPre=, only when a journal is left, before the sh front
  sets flow-restore-wait): after an interrupted force-reload-kmod, load the
  module and re-create the kernel datapaths at their saved port numbers.
- restorer (started by prestart, ExecStartPre=, in the background as the
  transient unit ovs-service-restore): load and encode the pending snapshot
  while ovs-vswitchd starts; as soon as it serves its bridges, put OpenFlow
  port numbers back where they moved, restore, clear flow-restore-wait.
- poststart (ExecStartPost=, once the restorer is done): the same, if the
  restorer could not.
- ovsdb-stop, ovsdb-poststart (ExecStop=, ExecStartPost= of ovs-service's own
  ovsdb-server.service, whose ovs-vswitchd only wants the database): a stop of
  the database under a running ovs-vswitchd saves for it, as an upgrade stops
  the database first; if that ovs-vswitchd still runs once the database is
  back, the snapshot is not pending any more.

They import little (no typer, no pystemd), log to the journal with
priorities, report progress with sdnotify's STATUS=, and never leave
flow-restore-wait set when they end.
"""

from __future__ import annotations

import sys

HOOKS = ("save", "prestart", "poststart", "restorer", "ovsdb-stop", "ovsdb-poststart")
USAGE = f"usage: python3 -P -m ovs_service.hooks {'|'.join(HOOKS)} [--debug]"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if len(args) != 1 or args[0] not in HOOKS:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    import logging

    from ovs_service import log as logsetup
    from ovs_service.errors import OvsServiceError

    logsetup.setup(debug=debug)
    log = logging.getLogger("ovs_service.hooks")
    from ovs_service.hooks import unit_hooks

    try:
        code = getattr(unit_hooks, args[0].replace("-", "_"))()
    except OvsServiceError as e:
        log.error("ovs-service-hook %s: %s", args[0], e)
        code = e.exit_code
    sys.exit(code)
