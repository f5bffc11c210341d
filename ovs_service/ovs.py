"""Open vSwitch's own tools, and the facts ovs-service reads from them.

Every tool runs through `ovs_service.run.run`. The tools find their daemons
through OVS_RUNDIR, OVS_DBDIR, OVS_LOGDIR and OVS_SYSCONFDIR, which they
inherit from our environment, so a private instance works as a system one does.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovs_service import ovsdb
from ovs_service.errors import (
    BridgeNotFound,
    CommandFailed,
    NotApplied,
    OvsServiceError,
    OvsUnreachable,
)
from ovs_service.run import Completed, run

log = logging.getLogger(__name__)

VSCTL_TIMEOUT = "--timeout=10"


def rundir() -> Path:
    return Path(os.environ.get("OVS_RUNDIR", "/var/run/openvswitch"))


def mgmt_socket(bridge: str) -> Path:
    """The unix socket on which ovs-vswitchd serves OpenFlow for `bridge`."""
    return rundir() / f"{bridge}.mgmt"


def unserved(bridge: str, why: str) -> str:
    """Why OpenFlow cannot reach `bridge`, naming its management socket: the
    bare errno text ("No such file or directory") does not say of what."""
    return f"ovs-vswitchd does not serve {mgmt_socket(bridge)} ({why})"


def failure_reason(bridge: str, e: OvsServiceError) -> str:
    """What went wrong with a bridge, for a line that already names it."""
    reason = str(e.fields.get("reason") or e.fields.get("message") or e)
    # The connection to its management socket failed: say which socket.
    return unserved(bridge, reason) if isinstance(e, OvsUnreachable) else reason


def wait_for_bridges(names: Sequence[str], timeout: float) -> None:
    """Wait until ovs-vswitchd serves OpenFlow on each bridge's management socket
    (it creates them as it configures its bridges, before it detaches)."""
    deadline = time.monotonic() + timeout
    for name in names:
        while not _listening(mgmt_socket(name)):
            if time.monotonic() > deadline:
                raise OvsUnreachable(what=f"bridge {name!r}", reason=f"no ovs-vswitchd serves "
                                     f"{mgmt_socket(name)} after {timeout:.0f}s")
            time.sleep(0.002)


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


# The command name the kernel keeps for a process (/proc/PID/comm) is cut to 15 bytes.
TASK_COMM_LEN = 15


def daemon_pid(name: str, proc: Path = Path("/proc")) -> int | None:
    """The PID of the daemon named in its pidfile under the run directory, if alive.

    A pidfile left by a daemon that died may name a PID that another process
    has since been given: the process must also be that daemon."""
    try:
        pid = int((rundir() / f"{name}.pid").read_text().strip())
        comm = (proc / str(pid) / "comm").read_text().rstrip("\n")
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and comm == name[:TASK_COMM_LEN] else None


def daemon_invocation(name: str, proc: Path = Path("/proc")) -> str | None:
    """The systemd invocation ID the running daemon was started with
    ($INVOCATION_ID in its environment); None if it has none or cannot be read."""
    pid = daemon_pid(name, proc)
    if pid is None:
        return None
    try:
        environ = (proc / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(b"INVOCATION_ID="):
            value = entry.removeprefix(b"INVOCATION_ID=").decode("ascii", "replace")
            return value if len(value) == 32 and value.isalnum() else None
    return None


def daemon_running(name: str, proc: Path = Path("/proc")) -> bool:
    return daemon_pid(name, proc) is not None


def vsctl(*args: str) -> Completed:
    try:
        return run(["ovs-vsctl", VSCTL_TIMEOUT, *args])
    except CommandFailed as e:
        if unreachable(e):
            raise OvsUnreachable(what="ovsdb-server", reason=e.fields["stderr"]) from None
        raise


def unreachable(error: CommandFailed) -> bool:
    """Whether ovs-vsctl failed for want of ovsdb-server, not for what it was asked.

    Decided by what happened, never by the command line (which holds
    `--timeout`): its own alarm (VSCTL_TIMEOUT) killed it, or it said that the
    connection failed (under LC_ALL=C, as `run` runs everything).
    """
    return error.fields["returncode"] in (-signal.SIGALRM, "timeout") or (
        ": database connection failed (" in error.fields["stderr"]
    )


def ofctl(*args: str) -> Completed:
    return run(["ovs-ofctl", *args])


def appctl(*args: str) -> Completed:
    return run(["ovs-appctl", *args])


def dpctl(*args: str) -> Completed:
    return run(["ovs-dpctl", *args])


def _ovsdb_value(value: Any) -> Any:
    """Turn OVSDB's JSON encoding (["set", …], ["map", …], ["uuid", …]) into Python."""
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
        kind, data = value
        if kind == "set":
            return [_ovsdb_value(v) for v in data]
        if kind == "map":
            return {_ovsdb_value(k): _ovsdb_value(v) for k, v in data}
        if kind in ("uuid", "named-uuid"):
            return data
    return value


def vsctl_list(table: str, columns: Sequence[str], *records: str) -> list[dict[str, Any]]:
    """Rows of an OVSDB table as dicts, from `ovs-vsctl --format=json`."""
    out = vsctl(
        "--format=json", "--data=json", f"--columns={','.join(columns)}", "list", table, *records
    ).stdout
    doc = json.loads(out)
    return [
        {h: _ovsdb_value(v) for h, v in zip(doc["headings"], row, strict=True)}
        for row in doc["data"]
    ]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


OPENFLOW_NAMES = {
    "OpenFlow10": 1,
    "OpenFlow11": 2,
    "OpenFlow12": 3,
    "OpenFlow13": 4,
    "OpenFlow14": 5,
    "OpenFlow15": 6,
}
# What ovs-vswitchd enables when a bridge's `protocols` column is empty.
DEFAULT_PROTOCOLS = tuple(OPENFLOW_NAMES)


@dataclass(frozen=True)
class Bridge:
    name: str
    protocols: tuple[str, ...]
    datapath_type: str

    @property
    def versions(self) -> frozenset[int]:
        return frozenset(OPENFLOW_NAMES[p] for p in self.protocols if p in OPENFLOW_NAMES)


@dataclass(frozen=True)
class Interface:
    name: str
    type: str
    ofport: int | None
    ofport_request: int | None


def bridges(names: Sequence[str] = ()) -> list[Bridge]:
    """Every bridge, or the named ones (in that order); unknown names raise."""
    rows = vsctl_list("Bridge", ["name", "protocols", "datapath_type"])
    found = {
        r["name"]: Bridge(
            name=r["name"],
            protocols=tuple(_as_list(r["protocols"])) or DEFAULT_PROTOCOLS,
            datapath_type=r["datapath_type"] or "system",
        )
        for r in rows
    }
    if not names:
        return [found[n] for n in sorted(found)]
    missing = [n for n in names if n not in found]
    if missing:
        raise BridgeNotFound(bridge=missing[0])
    return [found[n] for n in names]


def db_rows(table: str, columns: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of an OVSDB table as dicts, as `vsctl_list` gives them, read in
    this process (no ovs-vsctl to start: for what a restart's outage reads)."""
    rows = ovsdb.select(db_socket(), table, list(columns), f"the {table} table")
    return [{column: _ovsdb_value(row.get(column)) for column in columns} for row in rows]


def interfaces() -> list[Interface]:
    rows = db_rows("Interface", ["name", "type", "ofport", "ofport_request"])
    return [
        Interface(
            name=r["name"],
            type=r["type"],
            ofport=_first_int(r["ofport"]),
            ofport_request=_first_int(r["ofport_request"]),
        )
        for r in rows
    ]


def _first_int(value: Any) -> int | None:
    values = _as_list(value)
    return int(values[0]) if values else None


def ovs_version() -> str:
    """The version of the running switch as recorded in its database."""
    rows = vsctl_list("Open_vSwitch", ["ovs_version"])
    version = _as_list(rows[0]["ovs_version"]) if rows else []
    if version:
        return str(version[0])
    # Started without ovs-ctl, nothing recorded it: ask the daemon itself.
    try:
        return appctl("-t", "ovs-vswitchd", "version").stdout.split()[-1]
    except (CommandFailed, IndexError):
        return "unknown"


def flow_restore_wait() -> bool:
    rows = vsctl_list("Open_vSwitch", ["other_config"])
    return bool(rows) and rows[0]["other_config"].get("flow-restore-wait") == "true"


def _wait_flag() -> list[str]:
    """Without ovs-vswitchd, a write must not wait for it to apply the change."""
    return [] if daemon_running("ovs-vswitchd") else ["--no-wait"]


def db_socket() -> Path:
    """ovsdb-server's socket, where ovs-vsctl finds it by default."""
    return rundir() / "db.sock"


def set_flow_restore_wait(on: bool) -> int | None:
    """Straight to ovsdb-server: a restart's outage waits for this write, and
    ovs-vswitchd acts on the flag as soon as it reads it.

    A clear, while ovs-vswitchd runs, returns once it has applied it (as
    ovs-vsctl without --no-wait): the switch runs its flows again. If it has
    not by the timeout, that is a warning (the write is made, and the daemon
    acts on it when it reads it); if it stopped meanwhile, nothing to say. A set does not wait:
    it is made before ovs-vswitchd starts. It bumps next_cfg, and returns it:
    the ovs-vswitchd started next reports that number as its cur_cfg once it
    has configured its bridges (`started_watch`).
    """
    def running() -> bool:
        return daemon_running("ovs-vswitchd")

    try:
        return ovsdb.set_other_config(db_socket(), "flow-restore-wait", "true" if on else None,
                                      applied=not on and running(), alive=running,
                                      timeout=ovsdb.TIMEOUT, bump=on)
    except NotApplied as e:
        # Gone meanwhile: its next start reads the database as it is now.
        log.log(logging.DEBUG if not running() else logging.WARNING, "%s", e)
        return None


def started_watch(next_cfg: int, timeout: float) -> AbstractContextManager[ovsdb.AppliedWatch]:
    """A watch for the moment a starting ovs-vswitchd has configured its
    bridges: its first configuration (cur_cfg = `next_cfg`, with each
    interface's OpenFlow port number) is committed before it detaches, so
    before systemd even learns that it runs; its bridges' management sockets
    listen by then."""
    return ovsdb.applied_watch(db_socket(), next_cfg, timeout)


def pin_ofports(wanted: dict[str, int]) -> list[str]:
    """Request the OpenFlow port number each named interface had; return those moved."""
    moved = [
        i for i in interfaces()
        if i.name in wanted and i.ofport is not None and i.ofport != wanted[i.name]
    ]
    if moved:
        args: list[str] = []
        for i in moved:
            args += ["--", "set", "Interface", i.name, f"ofport_request={wanted[i.name]}"]
        vsctl(*_wait_flag(), *args)
    return [i.name for i in moved]
