"""OVSDB transactions over ovsdb-server's unix socket (RFC 7047 JSON-RPC).

For the writes that happen while a switch is not forwarding (setting and
clearing flow-restore-wait): in this process they cost a round trip to
ovsdb-server, where `ovs-vsctl` costs the start of a process. Like
`ovs-vsctl` without `--no-wait`, a write can also wait until ovs-vswitchd
has applied it: the transaction bumps `next_cfg`, and the answer is awaited
until ovs-vswitchd reports the same `cur_cfg` (through a monitor, no
polling).
"""

from __future__ import annotations

import codecs
import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ovs_service.errors import NotApplied, OvsdbRefused, OvsUnreachable

DATABASE = "Open_vSwitch"
TIMEOUT = 10.0  # seconds, as ovs-vsctl --timeout=10
ALIVE_INTERVAL = 0.2  # seconds between two looks at whether ovs-vswitchd still runs


class _Session:
    """One connection: requests answered in order, the server's updates kept,
    its echo probes answered, the whole exchange within one deadline."""

    def __init__(self, sock: socket.socket, deadline: float, where: Path) -> None:
        self._sock, self._deadline, self.where = sock, deadline, where
        self._decoder, self._buffer = json.JSONDecoder(), ""
        # A character may be split between two reads.
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._next_id = 0
        self.updates: list[Any] = []

    def call(self, method: str, params: list[Any]) -> dict[str, Any]:
        """The answer to one request (its `error` member unchecked)."""
        request_id, self._next_id = self._next_id, self._next_id + 1
        self._send({"method": method, "params": params, "id": request_id})
        while True:
            message = self._message(self._deadline)
            if message is not None and message.get("id") == request_id and (
                    "method" not in message):
                return message

    def wait_update(self, within: float) -> Any:
        """The next `update` notification's table updates; None if none came
        within `within` seconds (TimeoutError at the session's deadline)."""
        until = min(self._deadline, time.monotonic() + within)
        while not self.updates:
            if self._message(until) is None:
                return None
        return self.updates.pop(0)

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self._sock.sendall(json.dumps(message).encode())
        except OSError as e:
            raise _unreachable(self.where, e) from None

    def _message(self, until: float) -> dict[str, Any] | None:
        """The next message (None if none came by `until`); notifications are
        kept, echo probes answered."""
        while True:
            message = self._decoded()
            if message is None:
                if not self._read(until):
                    return None
                continue
            if not isinstance(message, dict):
                continue
            if message.get("method") == "echo":
                self._send({"result": message.get("params"), "error": None,
                            "id": message.get("id")})
            elif message.get("method") == "update":
                params = message.get("params")
                self.updates.append(params[1] if isinstance(params, list) and len(params) > 1
                                    else None)
            return message

    def _decoded(self) -> Any:
        """One whole message from the buffer, or None."""
        text = self._buffer.lstrip()
        if not text:
            return None
        try:
            message, end = self._decoder.raw_decode(text)
        except json.JSONDecodeError:
            return None  # incomplete
        self._buffer = text[end:]
        return message

    def _read(self, until: float) -> bool:
        """Read what came by `until`: whether anything did. At the session's
        deadline, _SessionExpired (a TimeoutError) instead; OvsUnreachable if
        the connection breaks."""
        remaining = until - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError("no answer in time")
            self._sock.settimeout(remaining)
            chunk = self._sock.recv(1 << 16)
        except TimeoutError:
            if until >= self._deadline:
                raise _SessionExpired("no answer in time") from None
            return False
        except OSError as e:
            raise _unreachable(self.where, e) from None
        if not chunk:
            raise _unreachable(self.where, ConnectionResetError("connection closed"))
        self._buffer += self._text.decode(chunk)
        return True


class _SessionExpired(TimeoutError):
    """A session's whole exchange did not end within its time."""


def _unreachable(db_socket: Path, e: OSError) -> OvsUnreachable:
    reason = e.strerror or str(e) or type(e).__name__
    return OvsUnreachable(what="ovsdb-server", reason=f"{db_socket}: {reason}")


@contextmanager
def _session(db_socket: Path, timeout: float) -> Iterator[_Session]:
    """A connection for `timeout` seconds. Only its own failures become
    OvsUnreachable: what the caller's code raises meanwhile passes as it is."""
    deadline = time.monotonic() + timeout
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as e:
        raise _unreachable(db_socket, e) from None
    with sock:
        try:
            sock.settimeout(timeout)
            sock.connect(str(db_socket))
        except OSError as e:
            raise _unreachable(db_socket, e) from None
        try:
            yield _Session(sock, deadline, db_socket)
        except _SessionExpired as e:
            raise _unreachable(db_socket, e) from None


def transact(db_socket: Path, operations: list[dict[str, Any]], what: str,
             timeout: float = TIMEOUT) -> list[dict[str, Any]]:
    """Run `operations` as one transaction; their results. `what` names it in errors."""
    with _session(db_socket, timeout) as session:
        return _transact(session, operations, what)


def _transact(session: _Session, operations: list[dict[str, Any]],
              what: str) -> list[dict[str, Any]]:
    reply = session.call("transact", [DATABASE, *operations])
    if reply.get("error") is not None:
        raise OvsdbRefused(what=what, reason=_line(json.dumps(reply["error"])))
    results = reply.get("result")
    if not isinstance(results, list) or len(results) < len(operations) or not all(
            isinstance(result, dict) for result in results):
        raise OvsdbRefused(what=what, reason=_line(f"an answer not understood: {reply}"))
    for result in results:
        if "error" in result:
            raise OvsdbRefused(what=what,
                               reason=_line(f"{result['error']}: {result.get('details', '')}"))
    return results


def select(db_socket: Path, table: str, columns: list[str], what: str,
           timeout: float = TIMEOUT) -> list[dict[str, Any]]:
    """Every row of `table`, with `columns` only, in OVSDB's JSON encoding."""
    [result] = transact(db_socket, [{"op": "select", "table": table, "where": [],
                                     "columns": columns}], what, timeout)
    rows = result.get("rows")
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise OvsdbRefused(what=what, reason=_line(f"rows not understood: {result}"))
    return rows


def _line(text: str) -> str:
    """The server's words on one line."""
    return " ".join(str(text).split())


def set_other_config(db_socket: Path, key: str, value: str | None, *,
                     applied: bool = False, alive: Callable[[], bool] | None = None,
                     timeout: float = TIMEOUT, bump: bool = False) -> int | None:
    """Set (or with None remove) one key of the Open_vSwitch row's other_config.

    applied: return only once ovs-vswitchd has applied the change; NotApplied
    (the write made all the same) if it has not by the timeout, or as soon as
    `alive()` says it no longer runs (asked every ALIVE_INTERVAL seconds).
    bump: bump next_cfg all the same, without waiting (see `applied_watch`).
    Returns next_cfg as this write left it when bumped, else None.
    """
    mutations: list[list[Any]] = [["other_config", "delete", ["set", [key]]]]
    if value is not None:
        mutations.append(["other_config", "insert", ["map", [[key, value]]]])
    what = f"other_config:{key}" + ("" if value is None else f"={value}")
    operations: list[dict[str, Any]] = [
        {"op": "mutate", "table": DATABASE, "where": [], "mutations": mutations}]
    if applied or bump:
        operations += [
            {"op": "mutate", "table": DATABASE, "where": [],
             "mutations": [["next_cfg", "+=", 1]]},
            {"op": "select", "table": DATABASE, "where": [], "columns": ["next_cfg"]},
        ]
    with _session(db_socket, timeout) as session:
        results = _transact(session, operations, what)
        if (count := results[0].get("count")) != 1:
            raise OvsdbRefused(what=what, reason=f"{count} {DATABASE} rows, not 1")
        if not (applied or bump):
            return None
        next_cfg = _next_cfg(results[2], what)
        if applied:
            _wait_applied(session, next_cfg, what, alive, timeout)
        return next_cfg


class AppliedWatch:
    """Looks, as often as asked, at whether ovs-vswitchd has applied
    configuration `next_cfg` (its cur_cfg has reached it), through a monitor
    on cur_cfg: each look waits on the socket, nothing is polled."""

    def __init__(self, session: _Session, next_cfg: int, updates: Any) -> None:
        self._session, self._next_cfg, self._updates = session, next_cfg, updates

    def reached(self, within: float) -> bool:
        """Whether it has, waiting up to `within` seconds for it."""
        until = time.monotonic() + within
        while _cur_cfg(self._updates) < self._next_cfg:
            left = until - time.monotonic()
            if left <= 0:
                return False
            try:
                update = self._session.wait_update(left)
            except _SessionExpired as e:  # as a broken watch, whoever holds it
                raise _unreachable(self._session.where, e) from None
            if update is None:
                return False
            self._updates = update
        return True


@contextmanager
def applied_watch(db_socket: Path, next_cfg: int,
                  timeout: float = 300.0) -> Iterator[AppliedWatch]:
    """A watch on ovs-vswitchd's cur_cfg reaching `next_cfg`, for up to
    `timeout` seconds. OvsUnreachable if the server cannot be reached, goes
    away, or the time is up; OvsdbRefused if it refuses the monitor."""
    what = f"a watch on cur_cfg {next_cfg}"
    with _session(db_socket, timeout) as session:
        reply = session.call("monitor", [DATABASE, None, {DATABASE: {"columns": ["cur_cfg"]}}])
        if reply.get("error") is not None:
            raise OvsdbRefused(what=what, reason=_line(json.dumps(reply["error"])))
        yield AppliedWatch(session, next_cfg, reply.get("result"))


def _next_cfg(result: dict[str, Any], what: str) -> int:
    rows = result.get("rows")
    if not isinstance(rows, list) or len(rows) != 1 or not isinstance(
            rows[0].get("next_cfg"), int):
        raise OvsdbRefused(what=what, reason=_line(f"next_cfg not understood: {result}"))
    return int(rows[0]["next_cfg"])


def _wait_applied(session: _Session, next_cfg: int, what: str,
                  alive: Callable[[], bool] | None = None, timeout: float = TIMEOUT) -> None:
    """Until ovs-vswitchd's cur_cfg reaches `next_cfg` (NotApplied otherwise)."""
    reply = session.call("monitor", [DATABASE, None, {DATABASE: {"columns": ["cur_cfg"]}}])
    if reply.get("error") is not None:
        raise NotApplied(what=what, reason=_line(json.dumps(reply["error"])))
    updates = reply.get("result")
    try:
        while _cur_cfg(updates) < next_cfg:
            update = session.wait_update(ALIVE_INTERVAL)
            if update is not None:
                updates = update
            elif alive is not None and not alive():
                raise NotApplied(what=what, reason="it is not running")
    except TimeoutError:
        raise NotApplied(what=what, reason=f"not in {timeout:g} s (next_cfg {next_cfg})"
                         ) from None


def _cur_cfg(updates: Any) -> int:
    """The highest cur_cfg in a monitor's table updates (-1 when none is there)."""
    rows = updates.get(DATABASE, {}) if isinstance(updates, dict) else {}
    values = [row.get("new", {}).get("cur_cfg") for row in rows.values()
              if isinstance(row, dict) and isinstance(row.get("new"), dict)]
    return max((value for value in values if isinstance(value, int)), default=-1)
