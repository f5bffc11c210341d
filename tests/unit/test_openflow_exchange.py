"""Connection.exchange and what is built on it, against a stand-in switch.

The stand-in listens on a Unix socket as a bridge's management socket does,
answers the hello, then answers each request with the messages a test
scripts for it: replies in parts, errors, and messages for other xids in
between. No root, no Open vSwitch.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ovs_service.errors import OpenFlowError
from ovs_service.openflow import ofproto as ofp
from ovs_service.openflow.connection import Connection
from ovs_service.openflow.messages import HEADER, Message, encode, hello

Script = Callable[[Message], list[bytes]]


def _read_message(sock: socket.socket, buf: bytearray) -> Message | None:
    while len(buf) < ofp.OFP_HEADER_SIZE or len(buf) < HEADER.unpack_from(buf)[2]:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return None
        buf += chunk
    version, type_, length, xid = HEADER.unpack_from(buf)
    data = bytes(buf[:length])
    del buf[:length]
    return Message(version, type_, xid, data)


class StandIn:
    """A switch that speaks one version and answers each message by `script`."""

    def __init__(self, path: Path, version: int, script: Script) -> None:
        self.received: list[Message] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(1)
        self._version = version
        self._script = script
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        buf = bytearray()
        with conn:
            if _read_message(conn, buf) is None:
                return
            conn.sendall(hello(self._version))
            while (msg := _read_message(conn, buf)) is not None:
                self.received.append(msg)
                answer = self._script(msg)
                if answer:
                    conn.sendall(b"".join(answer))

    def join(self) -> None:
        self._thread.join(timeout=10)
        self._listener.close()


Connect = Callable[[int, Script], tuple[Connection, StandIn]]


@pytest.fixture
def switch(tmp_path: Path) -> Iterator[Connect]:
    made: list[tuple[Connection, StandIn]] = []

    def connect(version: int, script: Script) -> tuple[Connection, StandIn]:
        path = tmp_path / f"br{len(made)}.mgmt"
        stand_in = StandIn(path, version, script)
        made.append((Connection(path, version, "br0", timeout=10), stand_in))
        return made[-1]

    yield connect
    for conn, stand_in in made:
        conn.close()
        stand_in.join()


def _error(version: int, xid: int, err_type: int = 1, code: int = 2) -> bytes:
    return encode(version, ofp.OFPT_ERROR, struct.pack("!HH", err_type, code), xid)


def _part(version: int, xid: int, body: bytes, more: bool) -> bytes:
    flags = ofp.OFPMPF_REPLY_MORE if more else 0
    if version == ofp.OF10:
        fields = struct.pack(ofp.OFP10_STATS_BODY_PACK_STR, ofp.OFPMP_FLOW, flags)
        return encode(version, ofp.OFPT10_STATS_REPLY, fields + body, xid)
    fields = struct.pack(ofp.OFP_MULTIPART_BODY_PACK_STR, ofp.OFPMP_FLOW, flags)
    return encode(version, ofp.OFPT_MULTIPART_REPLY, fields + body, xid)


def _barrier_reply(msg: Message) -> list[bytes]:
    if msg.version == ofp.OF10:
        request, reply = ofp.OFPT10_BARRIER_REQUEST, ofp.OFPT10_BARRIER_REPLY
    else:
        request, reply = ofp.OFPT_BARRIER_REQUEST, ofp.OFPT_BARRIER_REPLY
    return [encode(msg.version, reply, b"", msg.xid)] if msg.type == request else []


def _is_stats_request(msg: Message) -> bool:
    if msg.version == ofp.OF10:
        return msg.type == ofp.OFPT10_STATS_REQUEST
    return msg.type == ofp.OFPT_MULTIPART_REQUEST


FLOW_REQUEST = struct.pack(ofp.OFP_MULTIPART_TYPE_PACK_STR, ofp.OFPMP_FLOW) + b"12345678"


@pytest.mark.parametrize("version", [ofp.OF10, ofp.OF13, ofp.OF15])
def test_multipart_collects_every_part_of_its_own_xid(switch: Connect, version: int) -> None:
    def script(msg: Message) -> list[bytes]:
        if not _is_stats_request(msg):
            return _barrier_reply(msg)
        other = msg.xid + 100
        return [
            _part(version, msg.xid, b"first...", more=True),
            _part(version, other, b"not ours", more=False),  # another request's reply
            _error(version, other),  # another request's error: not this one's
            encode(version, ofp.OFPT_ECHO_REQUEST, b"ping", 7),  # answered in passing
            _part(version, msg.xid, b"second..", more=True),
            _part(version, msg.xid, b"last....", more=False),
            _part(version, msg.xid, b"too late", more=False),  # after the last part
        ]

    conn, stand_in = switch(version, script)
    assert list(conn.multipart(FLOW_REQUEST)) == [b"first...", b"second..", b"last...."]
    conn.barrier()  # the stand-in has read the echo reply before it answers this
    request, echo = stand_in.received[:2]
    # The request as the switch reads it: its type, no flags, padding, its body.
    head = ofp.OFP10_STATS_BODY_SIZE if version == ofp.OF10 else ofp.OFP_MULTIPART_BODY_SIZE
    assert request.body == (FLOW_REQUEST[:ofp.OFP_MULTIPART_TYPE_SIZE]
                            + bytes(head - ofp.OFP_MULTIPART_TYPE_SIZE)
                            + FLOW_REQUEST[ofp.OFP_MULTIPART_TYPE_SIZE:])
    assert (echo.type, echo.xid, echo.body) == (ofp.OFPT_ECHO_REPLY, 7, b"ping")


def test_an_error_reply_is_raised(switch: Connect) -> None:
    def script(msg: Message) -> list[bytes]:
        return [_part(ofp.OF13, msg.xid + 1, b"not ours", more=False),
                _error(ofp.OF13, msg.xid)]

    conn, _ = switch(ofp.OF13, script)
    with pytest.raises(OpenFlowError) as raised:
        list(conn.multipart(FLOW_REQUEST))
    assert raised.value.fields["bridge"] == "br0"


def test_an_error_between_parts_ends_the_reply_with_an_exception(switch: Connect) -> None:
    def script(msg: Message) -> list[bytes]:
        return [_part(ofp.OF13, msg.xid, b"first...", more=True), _error(ofp.OF13, msg.xid)]

    conn, _ = switch(ofp.OF13, script)
    parts = conn.multipart(FLOW_REQUEST)
    assert next(parts) == b"first..."
    with pytest.raises(OpenFlowError):
        next(parts)


def test_request_waits_for_the_reply_type_of_its_xid(switch: Connect) -> None:
    def script(msg: Message) -> list[bytes]:
        return [
            encode(ofp.OF13, ofp.OFPT_FEATURES_REPLY, b"other xid", msg.xid + 1),
            encode(ofp.OF13, ofp.OFPT_ECHO_REPLY, b"other type", msg.xid),
            encode(ofp.OF13, ofp.OFPT_FEATURES_REPLY, b"this one", msg.xid),
        ]

    conn, _ = switch(ofp.OF13, script)
    reply = conn.request(encode(ofp.OF13, ofp.OFPT_FEATURES_REQUEST), ofp.OFPT_FEATURES_REPLY)
    assert reply.body == b"this one"


def test_exchange_with_errors_collects_them_and_ends_at_its_own(switch: Connect) -> None:
    def script(msg: Message) -> list[bytes]:
        return [_error(ofp.OF13, msg.xid + 50, code=1), _error(ofp.OF13, msg.xid, code=2),
                encode(ofp.OF13, ofp.OFPT_BARRIER_REPLY, b"", msg.xid)]

    conn, _ = switch(ofp.OF13, script)
    errors: list[Message] = []
    replies = list(conn.exchange(encode(ofp.OF13, ofp.OFPT_BARRIER_REQUEST),
                                 ofp.OFPT_BARRIER_REPLY, errors=errors))
    assert replies == []
    assert [(e.xid, e.body) for e in errors] == [(conn._xid + 50, struct.pack("!HH", 1, 1)),
                                                 (conn._xid, struct.pack("!HH", 1, 2))]


@pytest.mark.parametrize("version", [ofp.OF10, ofp.OF13])
def test_send_all_names_the_refused_messages(switch: Connect, version: int) -> None:
    refused = {2, 4}

    def script(msg: Message) -> list[bytes]:
        if msg.type == ofp.OFPT_HELLO or msg.body[:1] == b"m":
            index = int(msg.body[1:])
            return [_error(version, msg.xid)] if index in refused else []
        return _barrier_reply(msg)

    conn, stand_in = switch(version, script)
    messages = [encode(version, ofp.OFPT_HELLO, b"m%d" % i) for i in range(6)]
    errors = conn.send_all(messages)
    assert [index for index, _ in errors] == sorted(refused)
    assert all(HEADER.unpack_from(data)[1] == ofp.OFPT_ERROR for _, data in errors)
    assert len(stand_in.received) == len(messages) + 1  # and the barrier


def test_bundle_control_waits_for_its_reply_and_keeps_earlier_errors(switch: Connect) -> None:
    """An add's error arrives after the last add was written: the commit's
    exchange collects it before the commit's reply."""
    def script(msg: Message) -> list[bytes]:
        if msg.type == ofp.OFPT_BUNDLE_CONTROL:
            bundle_id, ctrl, flags = struct.unpack_from(
                ofp.OFP_BUNDLE_CTRL_BODY_PACK_STR, msg.data, ofp.OFP_HEADER_SIZE)
            assert flags == ofp.OFPBF_ATOMIC | ofp.OFPBF_ORDERED
            reply = struct.pack(ofp.OFP_BUNDLE_CTRL_BODY_PACK_STR, bundle_id, ctrl + 1, flags)
            return [encode(ofp.OF14, ofp.OFPT_BUNDLE_CONTROL, reply, msg.xid)]
        if msg.type == ofp.OFPT_BUNDLE_ADD_MESSAGE:
            inner = msg.data[ofp.OFP_HEADER_SIZE + ofp.OFP_BUNDLE_ADD_BODY_SIZE:]
            return [_error(ofp.OF14, msg.xid)] if inner.endswith(b"bad") else []
        return []

    conn, stand_in = switch(ofp.OF14, script)
    messages = [encode(ofp.OF14, ofp.OFPT_FLOW_MOD, body) for body in (b"ok", b"bad", b"ok")]
    errors = conn.bundle(messages)
    assert [index for index, _ in errors] == [1]
    controls = [struct.unpack_from(ofp.OFP_BUNDLE_CTRL_BODY_PACK_STR, m.data,
                                   ofp.OFP_HEADER_SIZE)[1]
                for m in stand_in.received if m.type == ofp.OFPT_BUNDLE_CONTROL]
    assert controls == [ofp.OFPBCT_OPEN_REQUEST, ofp.OFPBCT_COMMIT_REQUEST]
