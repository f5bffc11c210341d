"""Reading ovsdb-server's answer: split anywhere, after requests of its own;
waiting for ovs-vswitchd to apply a change."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from ovs_service import ovsdb
from ovs_service.errors import NotApplied, OvsdbRefused, OvsUnreachable


def test_an_answer_split_inside_a_character_and_after_an_echo_is_read_whole() -> None:
    echo = b'{"method":"echo","params":[],"id":"echo"}'
    answer = '{"id":0,"result":[{"count":1,"details":"caf\u00e9"}],"error":null}'.encode()
    cut = answer.index(b"\xc3") + 1  # between the two bytes of the é
    server, client = socket.socketpair()
    with server, client:
        server.sendall(echo + answer[:cut])
        # The rest only once the first part has been read.
        rest = threading.Timer(0.3, server.sendall, args=(answer[cut:],))
        rest.start()
        reply = ovsdb._Session(client, time.monotonic() + 5, Path("db.sock")).call("transact", [])
        rest.join()
        # The server's echo was answered.
        assert b'"id": "echo"' in server.recv(1 << 16)
    assert reply["result"] == [{"count": 1, "details": "caf\u00e9"}]


def _serve_once(path: Path, answer: bytes) -> threading.Thread:
    """A server at `path` that reads one request and sends `answer`."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.recv(1 << 16)
                conn.sendall(answer)

    thread = threading.Thread(target=serve)
    thread.start()
    return thread


@pytest.mark.parametrize("answer", [
    b'{"id":0,"result":[],"error":null}',
    b'{"id":0,"result":[null],"error":null}',
    b'{"id":0,"result":[{"error":"constraint violation","details":"one\\ntwo"}],"error":null}',
])
def test_an_answer_that_is_no_success_is_refused_in_one_line(tmp_path: Path, answer: bytes) -> None:
    thread = _serve_once(tmp_path / "db.sock", answer)
    with pytest.raises(OvsdbRefused) as e:
        ovsdb.set_other_config(tmp_path / "db.sock", "flow-restore-wait", None)
    thread.join()
    assert "flow-restore-wait" in str(e.value) and "\n" not in str(e.value)


def test_the_wait_for_cur_cfg_reads_the_monitor_and_its_updates() -> None:
    """cur_cfg 4 in the monitor's first answer, then 5 (an unrelated row's
    update in between): the wait for next_cfg 5 ends at the second update."""
    row = "11111111-2222-3333-4444-555555555555"
    messages = [
        {"id": 0, "result": {"Open_vSwitch": {row: {"new": {"cur_cfg": 4}}}}, "error": None},
        {"method": "update", "params": [None, {"Open_vSwitch": {row: {"old": {}}}}], "id": None},
        {"method": "update", "params": [None, {"Open_vSwitch": {
            row: {"old": {"cur_cfg": 4}, "new": {"cur_cfg": 5}}}}], "id": None},
    ]
    server, client = socket.socketpair()
    with server, client:
        server.sendall(b"".join(json.dumps(m).encode() for m in messages))
        session = ovsdb._Session(client, time.monotonic() + 5, Path("db.sock"))
        ovsdb._wait_applied(session, 5, "a test")
        assert session.updates == []


def test_a_change_never_applied_is_a_one_line_refusal_at_the_timeout() -> None:
    row = "11111111-2222-3333-4444-555555555555"
    first = {"id": 0, "result": {"Open_vSwitch": {row: {"new": {"cur_cfg": 4}}}}, "error": None}
    server, client = socket.socketpair()
    with server, client:
        server.sendall(json.dumps(first).encode())
        session = ovsdb._Session(client, time.monotonic() + 0.3, Path("db.sock"))
        with pytest.raises(NotApplied) as e:
            ovsdb._wait_applied(session, 5, "other_config:flow-restore-wait", timeout=0.3)
    assert str(e.value) == ("other_config:flow-restore-wait written, but ovs-vswitchd has not "
                            "applied it: not in 0.3 s (next_cfg 5)")


def test_the_wait_ends_as_soon_as_ovs_vswitchd_is_gone() -> None:
    row = "11111111-2222-3333-4444-555555555555"
    first = {"id": 0, "result": {"Open_vSwitch": {row: {"new": {"cur_cfg": 4}}}}, "error": None}
    server, client = socket.socketpair()
    with server, client:
        server.sendall(json.dumps(first).encode())
        session = ovsdb._Session(client, time.monotonic() + 10, Path("db.sock"))
        began = time.monotonic()
        with pytest.raises(NotApplied) as e:
            ovsdb._wait_applied(session, 5, "a test", alive=lambda: False)
    assert time.monotonic() - began < 2
    assert str(e.value).endswith("has not applied it: it is not running")


def test_only_the_sessions_own_failures_become_unreachable(tmp_path: Path) -> None:
    """An error raised by the caller's code inside a session (here a
    PermissionError, an OSError) passes as it is, not as "ovsdb-server
    unreachable"; the session's own broken connection is that."""
    path = tmp_path / "db.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(2)
    with server:
        with pytest.raises(PermissionError), ovsdb._session(path, 5.0):
            raise PermissionError("the caller's own")
        with pytest.raises(OvsUnreachable) as e, ovsdb._session(path, 5.0) as session:
            peer, _ = server.accept()
            peer.close()
            session.call("transact", [])
    assert "db.sock" in str(e.value) and "\n" not in str(e.value)


def test_a_watch_past_its_time_is_a_broken_watch(tmp_path: Path) -> None:
    """The start's watch on cur_cfg, never reached by its deadline: each look
    says not yet, then the watch breaks as OvsUnreachable (which the restart
    falls back from), not as a bare TimeoutError."""
    cur_cfg = b'{"id":0,"result":{"Open_vSwitch":{"u":{"new":{"cur_cfg":3}}}},"error":null}'
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "db.sock"))
    server.listen(1)
    done = threading.Event()

    def serve() -> None:  # answers the monitor, then sends nothing more
        with server:
            conn, _ = server.accept()
            with conn:
                conn.recv(1 << 16)
                conn.sendall(cur_cfg)
                done.wait(10)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        # OvsUnreachable from the look itself, inside the watch's `with`.
        with ovsdb.applied_watch(tmp_path / "db.sock", 4, 0.5) as watch, \
                pytest.raises(OvsUnreachable) as e:
            while not watch.reached(0.05):
                pass
    finally:
        done.set()
        thread.join()
    assert "no answer in time" in str(e.value) and "\n" not in str(e.value)
