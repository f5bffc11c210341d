"""One OVSDB transaction over ovsdb-server's unix socket (RFC 7047 JSON-RPC).

For the writes that happen while a switch is not forwarding (setting and
clearing flow-restore-wait): in this process they cost a round trip to
ovsdb-server, where `ovs-vsctl` costs the start of a process and, while
ovs-vswitchd runs, a wait for it to apply the change. ovs-vswitchd reads
the database as it changes either way.
"""

from __future__ import annotations

import codecs
import json
import socket
import time
from pathlib import Path
from typing import Any

from ovs_service.errors import OvsdbRefused, OvsUnreachable

DATABASE = "Open_vSwitch"
TIMEOUT = 10.0  # seconds, as ovs-vsctl --timeout=10


def transact(db_socket: Path, operations: list[dict[str, Any]], what: str,
             timeout: float = TIMEOUT) -> list[dict[str, Any]]:
    """Run `operations` as one transaction; their results. `what` names it in errors."""
    request = {"method": "transact", "params": [DATABASE, *operations], "id": 0}
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(db_socket))
            sock.sendall(json.dumps(request).encode())
            reply = _reply(sock, deadline)
    except OSError as e:
        raise OvsUnreachable(what="ovsdb-server", reason=f"{db_socket}: {e.strerror or e}"
                             ) from None
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


def _line(text: str) -> str:
    """The server's words on one line."""
    return " ".join(str(text).split())


def _reply(sock: socket.socket, deadline: float) -> dict[str, Any]:
    """The answer to request 0 (the server's own requests, such as echo, are skipped)."""
    decoder, buffer = json.JSONDecoder(), ""
    # A character may be split between two reads.
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("no answer in time")
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionResetError("connection closed")
        buffer += text.decode(chunk)
        while buffer.strip():
            try:
                message, end = decoder.raw_decode(buffer.lstrip())
            except json.JSONDecodeError:
                break  # incomplete
            buffer = buffer.lstrip()[end:]
            if isinstance(message, dict) and message.get("id") == 0 and "method" not in message:
                return message


def set_other_config(db_socket: Path, key: str, value: str | None) -> None:
    """Set (or with None remove) one key of the Open_vSwitch row's other_config."""
    mutations: list[list[Any]] = [["other_config", "delete", ["set", [key]]]]
    if value is not None:
        mutations.append(["other_config", "insert", ["map", [[key, value]]]])
    what = f"other_config:{key}" + ("" if value is None else f"={value}")
    [result] = transact(db_socket, [{"op": "mutate", "table": DATABASE, "where": [],
                                     "mutations": mutations}], what)
    if result.get("count") != 1:
        raise OvsdbRefused(what=what, reason=f"{result.get('count')} {DATABASE} rows, not 1")
