"""systemd's D-Bus API, through pystemd: start, stop and restart units and
wait for each job's result (the JobRemoved signal), no `systemctl` involved.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ovs_service.errors import JobFailed, SystemdError

log = logging.getLogger(__name__)

DESTINATION = b"org.freedesktop.systemd1"
MANAGER_PATH = b"/org/freedesktop/systemd1"
MANAGER_IFACE = b"org.freedesktop.systemd1.Manager"


# A unit's states past ExecStart= and past ExecStop=, and how often to look.
STARTED = ("start-post", "running", "exited")
STOPPING = ("stop-sigterm", "stop-sigkill", "stop-post", "final-sigterm", "final-sigkill",
            "dead", "failed")
STARTING = ("activating", "active", "reloading")
POLL = 0.002
# How long a wait_ready look blocks on its own readiness before it looks
# whether the job ended (a failed start is noticed that late, at most).
READY_LOOK = 0.02


@dataclass(frozen=True)
class Job:
    action: str
    unit: str
    path: bytes


@dataclass(frozen=True)
class UnitState:
    name: str
    load_state: str
    active_state: str
    sub_state: str
    main_pid: int


@dataclass(frozen=True)
class ServiceStart:
    """What a service unit starts from, as systemd reports it (unexpanded)."""

    active: bool
    main_pid: int
    exec_start: tuple[tuple[str, ...], ...]  # each ExecStart= command's argv
    environment_files: tuple[tuple[str, bool], ...]  # EnvironmentFile=: path, "-" prefix
    unit_files: tuple[str, ...] = ()  # the unit's file and its drop-ins
    needs_reload: bool = False  # its files changed on disk since systemd loaded them
    pass_environment: tuple[str, ...] = ()  # PassEnvironment=


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Systemd:
    """A connection to the system manager that can run jobs and wait for them."""

    def __init__(self) -> None:
        try:
            from pystemd.dbuslib import DBus
            from pystemd.systemd1 import Manager
        except ImportError as e:
            raise SystemdError(message=f"pystemd is not installed ({e})") from None
        self._removed: dict[bytes, str] = {}
        self._submitted: list[Job] = []
        try:
            self._bus = DBus()
            self._bus.open()
            self._manager = Manager(bus=self._bus, _autoload=True)
            removed = self._removed

            # pystemd keeps no reference to the callback: we must, for as long
            # as the bus lives, or the signal finds a freed object.
            def on_job_removed(msg: Any, error: Any = None, userdata: Any = None) -> None:
                msg.process_reply(False)
                _id, job, _unit, result = msg.body
                removed[job] = _text(result)

            self._callback = on_job_removed
            self._bus.match_signal(
                DESTINATION, MANAGER_PATH, MANAGER_IFACE, b"JobRemoved", self._callback, None
            )
            self._manager.Manager.Subscribe()
        except Exception as e:  # pystemd raises many kinds
            reason = f"cannot reach the system manager over D-Bus ({e})"
            raise SystemdError(message=reason) from None

    def close(self) -> None:
        self._bus.close()

    def __enter__(self) -> Systemd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pump(self, timeout: float) -> None:
        """Dispatch what the bus has; if nothing, wait up to `timeout` for more."""
        if self._dispatch():
            return
        self._bus.wait(int(timeout * 1_000_000))
        self._dispatch()

    def _dispatch(self) -> bool:
        handled = False
        while not self._bus.process().is_empty():
            handled = True
        return handled

    def job(self, action: str, unit: str, mode: str = "replace", timeout: float = 300.0) -> str:
        """Run StartUnit/StopUnit/RestartUnit and wait for the job to end.

        Raises JobFailed unless the job's result is "done".
        """
        return self.wait(self.submit(action, unit, mode), timeout)

    def reload(self) -> None:
        """Reload the manager's configuration (systemctl daemon-reload)."""
        try:
            self._manager.Manager.Reload()
        except Exception as e:
            raise SystemdError(message=f"daemon-reload: {e}") from None

    def submit(self, action: str, unit: str, mode: str = "replace") -> Job:
        """Queue StartUnit/StopUnit/RestartUnit; `wait` for it later."""
        method = getattr(self._manager.Manager, f"{action.capitalize()}Unit")
        try:
            path = method(unit.encode(), mode.encode())
        except Exception as e:
            raise SystemdError(message=f"{action} {unit}: {e}") from None
        job = Job(action, unit, path)
        self._submitted.append(job)
        return job

    def settle(self, timeout: float = 300.0) -> None:
        """Wait until every job queued here has ended, whatever its result."""
        deadline = time.monotonic() + timeout
        while any(j.path not in self._removed for j in self._submitted):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._pump(min(remaining, 1.0))

    def wait(self, job: Job, timeout: float = 300.0) -> str:
        deadline = time.monotonic() + timeout
        while job.path not in self._removed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobFailed(action=job.action, unit=job.unit, result="timeout")
            self._pump(min(remaining, 1.0))
        result = self._removed[job.path]
        if result != "done":
            raise JobFailed(action=job.action, unit=job.unit, result=result)
        return result

    def wait_sub_state(self, job: Job, states: tuple[str, ...], timeout: float = 300.0) -> Any:
        """Wait until the job's unit is in one of `states` (or the job ended:
        JobFailed unless it is done). Returns the unit's D-Bus object."""
        from pystemd.systemd1 import Unit

        unit = Unit(job.unit.encode(), bus=self._bus, _autoload=True)
        deadline = time.monotonic() + timeout
        while _text(unit.Unit.SubState) not in states:
            if job.path in self._removed:
                self.wait(job)
                break
            if time.monotonic() > deadline:
                raise JobFailed(action=job.action, unit=job.unit, result="timeout")
            self._pump(POLL)
        return unit

    def wait_started(self, job: Job, timeout: float = 300.0) -> str:
        """Wait until a start job's main process runs: the unit is past
        ExecStart= (running its ExecStartPost= commands, or running).
        Returns the unit's invocation ID (its processes' $INVOCATION_ID)."""
        unit = self.wait_sub_state(job, STARTED, timeout)
        return bytes(unit.Unit.InvocationID).hex()

    def wait_ready(self, job: Job, ready: Callable[[float], bool],
                   timeout: float = 300.0) -> str:
        """Wait until `ready(seconds)` (which may block that long) says the
        start job's service is ready, or the job ends (JobFailed unless it
        is done). For a readiness seen before systemd sees it: no D-Bus
        round trip per look, only the job's end is listened for.

        Returns the unit's invocation ID (its processes' $INVOCATION_ID),
        read while the service starts, not once it is ready: then systemd
        is busy with the daemon it has just seen run, and a question to it
        waits tens of milliseconds. systemd gives a unit its new invocation
        ID as it begins to start it (ActiveState=activating), before
        ExecStartPre=.
        """
        from pystemd.systemd1 import Unit

        unit = Unit(job.unit.encode(), bus=self._bus, _autoload=True)
        invocation = None
        deadline = time.monotonic() + timeout
        while not ready(READY_LOOK):
            if invocation is None and _text(unit.Unit.ActiveState) in STARTING:
                invocation = bytes(unit.Unit.InvocationID).hex()
            self._dispatch()
            if job.path in self._removed:
                self.wait(job)
                invocation = None  # it may have been started twice meanwhile
                break
            if time.monotonic() > deadline:
                raise JobFailed(action=job.action, unit=job.unit, result="timeout")
        return invocation or bytes(unit.Unit.InvocationID).hex()

    def wait_stopping(self, job: Job, timeout: float = 300.0) -> None:
        """Wait until a stop job is past ExecStop=: the daemon agreed to exit
        (`ovs-appctl exit`), or systemd has sent it SIGTERM."""
        self.wait_sub_state(job, STOPPING, timeout)

    def unit(self, name: str) -> UnitState:
        from pystemd.systemd1 import Unit

        unit = Unit(name.encode(), bus=self._bus, _autoload=True)
        pid = 0
        try:
            pid = int(unit.Service.MainPID)
        except Exception:  # not a service, or not loaded
            pid = 0
        return UnitState(
            name=name,
            load_state=_text(unit.Unit.LoadState),
            active_state=_text(unit.Unit.ActiveState),
            sub_state=_text(unit.Unit.SubState),
            main_pid=pid,
        )

    def service_start(self, name: str) -> ServiceStart:
        from pystemd.systemd1 import Unit

        try:
            unit = Unit(name.encode(), bus=self._bus, _autoload=True)
            service = unit.Service
            return ServiceStart(
                active=_text(unit.Unit.ActiveState) == "active",
                main_pid=int(service.MainPID),
                exec_start=tuple(tuple(_text(word) for word in command[1])
                                 for command in service.ExecStart),
                environment_files=tuple((_text(path), bool(optional))
                                        for path, optional in service.EnvironmentFiles),
                unit_files=tuple(_text(path) for path in (unit.Unit.FragmentPath,
                                                          *unit.Unit.DropInPaths) if path),
                needs_reload=bool(unit.Unit.NeedDaemonReload),
                pass_environment=tuple(_text(name) for name in service.PassEnvironment),
            )
        except Exception as e:  # not loaded, not a service, the bus gone: pystemd's errors vary
            raise SystemdError(message=f"{name}: {e}") from None
