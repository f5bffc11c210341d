"""Reading ovsdb-server's answer: split anywhere, after requests of its own."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from ovs_service import ovsdb
from ovs_service.errors import OvsdbRefused


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
        reply = ovsdb._reply(client, time.monotonic() + 5)
        rest.join()
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
