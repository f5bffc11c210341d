"""Reading ovsdb-server's answer: split anywhere, after requests of its own."""

from __future__ import annotations

import socket
import threading
import time

from ovs_service import ovsdb


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
