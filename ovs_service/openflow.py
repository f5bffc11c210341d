"""A small OpenFlow client for ovs-vswitchd's management socket.

ovs-service saves a bridge's state as the OpenFlow messages that would
re-create it, built from the switch's own binary replies, so nothing passes
through a text printer and parser that may disagree with each other. This
module speaks just enough OpenFlow for that: hello, echo, errors, multipart
requests, barriers and bundles, at OpenFlow 1.0 (with Nicira extensions),
1.2, 1.3, 1.4 and 1.5.
"""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ovs_service.errors import OpenFlowError, OvsUnreachable, SwitchGone
from ovs_service.log import timed

OF10, OF11, OF12, OF13, OF14, OF15 = 1, 2, 3, 4, 5, 6
VERSIONS_SPOKEN = frozenset({OF10, OF12, OF13, OF14, OF15})
VERSION_NAME = {1: "OpenFlow10", 2: "OpenFlow11", 3: "OpenFlow12",
                4: "OpenFlow13", 5: "OpenFlow14", 6: "OpenFlow15"}

HEADER = struct.Struct("!BBHI")

# Message types. OpenFlow 1.0 numbers some of them differently.
HELLO, ERROR, ECHO_REQUEST, ECHO_REPLY, EXPERIMENTER = 0, 1, 2, 3, 4
FEATURES_REQUEST, FEATURES_REPLY = 5, 6
FLOW_MOD, GROUP_MOD, METER_MOD = 14, 15, 29
OF10_PORT_MOD, OF10_STATS_REQUEST, OF10_STATS_REPLY = 15, 16, 17
OF10_BARRIER_REQUEST, OF10_BARRIER_REPLY = 18, 19
PORT_MOD, MULTIPART_REQUEST, MULTIPART_REPLY = 16, 18, 19
BARRIER_REQUEST, BARRIER_REPLY = 20, 21
BUNDLE_CONTROL, BUNDLE_ADD_MESSAGE = 33, 34

NX_VENDOR = 0x00002320
ONF_VENDOR = 0x4F4E4600
ONFT_BUNDLE_CONTROL, ONFT_BUNDLE_ADD_MESSAGE = 2300, 2301

# enum ofp_bundle_ctrl_type (OpenFlow 1.4; ONF's extension at 1.3 uses the same)
OFPBCT_OPEN_REQUEST = 0
OFPBCT_OPEN_REPLY = 1
OFPBCT_CLOSE_REQUEST = 2
OFPBCT_CLOSE_REPLY = 3
OFPBCT_COMMIT_REQUEST = 4
OFPBCT_COMMIT_REPLY = 5
OFPBCT_DISCARD_REQUEST = 6
OFPBCT_DISCARD_REPLY = 7
# enum ofp_bundle_flags
OFPBF_ATOMIC = 1 << 0
OFPBF_ORDERED = 1 << 1
# struct ofp_bundle_ctrl_msg's body: bundle_id, type, flags (then properties);
# struct ofp_bundle_add_msg's, before the message it carries: bundle_id, pad, flags.
BUNDLE_CTRL = struct.Struct("!IHH")
BUNDLE_ADD = struct.Struct("!I2xH")
assert BUNDLE_CTRL.size == BUNDLE_ADD.size == 8
# Every bundle here: all or nothing, applied in the order sent.
BUNDLE_FLAGS = OFPBF_ATOMIC | OFPBF_ORDERED
# What a bundle control request is timed as (see log.timed).
BUNDLE_CONTROL_STEP = {OFPBCT_OPEN_REQUEST: "bundle-open", OFPBCT_COMMIT_REQUEST: "bundle-commit",
                       OFPBCT_DISCARD_REQUEST: "bundle-discard"}

MULTIPART_MORE = 1


@dataclass(frozen=True)
class Message:
    version: int
    type: int
    xid: int
    data: bytes  # the whole message, header included

    @property
    def body(self) -> bytes:
        return self.data[HEADER.size:]


def encode(version: int, type_: int, body: bytes = b"", xid: int = 0) -> bytes:
    return HEADER.pack(version, type_, HEADER.size + len(body), xid) + body


def with_xid(message: bytes, xid: int) -> bytes:
    return message[:4] + xid.to_bytes(4, "big") + message[8:]


def _hello(version: int) -> bytes:
    if version < OF13:
        return encode(version, HELLO)
    # A version bitmap element naming only the version we want.
    element = struct.pack("!HHI", 1, 8, 1 << version)
    return encode(version, HELLO, element)


class Connection:
    """One OpenFlow connection to one bridge, at one version."""

    def __init__(self, path: Path, version: int, bridge: str, timeout: float = 30.0) -> None:
        self.bridge = bridge
        self.version = version
        self._xid = 0
        self._buf = bytearray()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._timeout_ms = int(timeout * 1000)
        self._poll = select.poll()
        self._poll.register(self._sock, select.POLLIN | select.POLLOUT)
        with timed("openflow-connect", bridge):
            try:
                self._sock.connect(str(path))
            except OSError as e:
                self._sock.close()
                raise OvsUnreachable(what=f"bridge {bridge!r} at {path}",
                                     reason=e.strerror) from None
            self._send(_hello(version))
            hello = self._recv()
        if hello.type == ERROR or not self._peer_speaks(hello):
            self.close()
            raise OpenFlowError(
                bridge=bridge,
                message=f"the switch refused {VERSION_NAME[version]} on this bridge",
            )

    def _peer_speaks(self, hello: Message) -> bool:
        if hello.type != HELLO:
            return False
        body = hello.body
        while len(body) >= 8:
            kind, length = struct.unpack_from("!HH", body)
            if kind == 1 and length >= 8:
                bitmap = int.from_bytes(body[4:8], "big")
                return bool(bitmap & (1 << self.version))
            body = body[(length + 7) // 8 * 8 or 8:]
        return hello.version >= self.version

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_xid(self) -> int:
        self._xid += 1  # never wraps: a bridge's state is far from 2**32 messages
        return self._xid

    # -- receiving -----------------------------------------------------------

    def _lost(self, e: OSError) -> OpenFlowError:
        return SwitchGone(
            bridge=self.bridge, message=f"lost the connection to the switch ({e.strerror or e})"
        )

    def _send(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of `data`, reading whatever the switch sends meanwhile.

        ovs-vswitchd stops reading a connection while about a hundred of its
        replies wait to be read: a writer that only writes would then wait
        for good when many messages fail. What is read waits in the buffer
        for `_recv` and `_pending_errors`.
        """
        view = memoryview(data).cast("B")
        while view:
            # Written only once the socket says it takes bytes: in timeout
            # mode, a send would otherwise wait without reading.
            ready = 0
            with timed("openflow-send-wait", self.bridge):
                for _, event in self._poll.poll(self._timeout_ms):
                    ready |= event
            if not ready:
                raise SwitchGone(bridge=self.bridge, message="the switch has read nothing "
                                 f"for {self._timeout_ms / 1000:.0f}s")
            if ready & (select.POLLIN | select.POLLHUP | select.POLLERR):
                self._fill()
            if ready & select.POLLOUT:
                try:
                    sent = self._sock.send(view)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    raise self._lost(e) from None
                view = view[sent:]

    def _fill(self) -> None:
        try:
            with timed("openflow-recv", self.bridge):
                chunk = self._sock.recv(1 << 20)
        except OSError as e:
            raise self._lost(e) from None
        if not chunk:
            raise SwitchGone(bridge=self.bridge, message="the switch closed the connection")
        self._buf += chunk

    def _take(self) -> Message | None:
        if len(self._buf) < HEADER.size:
            return None
        version, type_, length, xid = HEADER.unpack_from(self._buf)
        if len(self._buf) < length:
            return None
        data = bytes(self._buf[:length])
        del self._buf[:length]
        return Message(version, type_, xid, data)

    def _recv(self) -> Message:
        while True:
            msg = self._take()
            if msg is None:
                self._fill()
                continue
            if msg.type == ECHO_REQUEST:
                self._send(encode(msg.version, ECHO_REPLY, msg.body, msg.xid))
                continue
            return msg

    def _pending_errors(self) -> list[Message]:
        """Errors the switch sent while we were writing, without blocking."""
        errors = []
        while True:
            while (msg := self._take()) is not None:
                if msg.type == ERROR:
                    errors.append(msg)
            if not select.select([self._sock], [], [], 0)[0]:
                return errors
            self._fill()

    # -- requests --------------------------------------------------------------

    def request(self, message: bytes, reply_type: int) -> Message:
        """Send one message and wait for its reply (or its error)."""
        xid = self.next_xid()
        self._send(with_xid(message, xid))
        while True:
            msg = self._recv()
            if msg.xid != xid:
                continue
            if msg.type == ERROR:
                raise self.error(msg)
            if msg.type == reply_type:
                return msg

    def multipart(self, body: bytes) -> Iterator[bytes]:
        """Yield the body of each reply to a multipart (stats) request.

        `body` starts with the multipart type; the flags and padding that
        follow it are added here. What is yielded starts after the reply's
        own type, flags and padding.
        """
        if self.version == OF10:
            req_type, rep_type, pad = OF10_STATS_REQUEST, OF10_STATS_REPLY, b""
        else:
            req_type, rep_type, pad = MULTIPART_REQUEST, MULTIPART_REPLY, bytes(4)
        xid = self.next_xid()
        self._send(encode(self.version, req_type, body[:2] + b"\0\0" + pad + body[2:], xid))
        skip = HEADER.size + 4 + len(pad)
        while True:
            msg = self._recv()
            if msg.xid != xid:
                continue
            if msg.type == ERROR:
                raise self.error(msg)
            if msg.type != rep_type:
                continue
            yield msg.data[skip:]
            (flags,) = struct.unpack_from("!H", msg.data, HEADER.size + 2)
            if not flags & MULTIPART_MORE:
                return

    def barrier(self) -> None:
        if self.version == OF10:
            self.request(encode(OF10, OF10_BARRIER_REQUEST), OF10_BARRIER_REPLY)
        else:
            self.request(encode(self.version, BARRIER_REQUEST), BARRIER_REPLY)

    def send_all(self, messages: Iterable[bytes]) -> list[tuple[int, bytes]]:
        """Send messages (each gets its own xid), then a barrier.

        Returns (index, error message) for every message the switch refused.
        """
        first = self._xid + 1
        errors: list[Message] = []
        out = bytearray()
        for message in messages:
            out += with_xid(message, self.next_xid())
            if len(out) >= 1 << 18:
                self._send(out)
                out.clear()
                errors += self._pending_errors()
        self._send(out)
        last = self._xid
        errors += self._drain_until_barrier()
        return [(_index(e.xid, first, last), e.data) for e in errors]

    def _drain_until_barrier(self) -> list[Message]:
        barrier_type, reply_type = (
            (OF10_BARRIER_REQUEST, OF10_BARRIER_REPLY) if self.version == OF10
            else (BARRIER_REQUEST, BARRIER_REPLY)
        )
        xid = self.next_xid()
        self._send(encode(self.version, barrier_type, b"", xid))
        errors = []
        while True:
            msg = self._recv()
            if msg.type == ERROR:
                errors.append(msg)
            elif msg.type == reply_type and msg.xid == xid:
                return errors

    # -- bundles ---------------------------------------------------------------

    @property
    def has_bundles(self) -> bool:
        return self.version >= OF13

    def _bundle_message(self, kind: int, body: bytes, xid: int) -> bytes:
        return bundle_message(self.version, kind, body, xid)

    def _bundle_control(self, bundle_id: int, ctrl: int, flags: int) -> list[Message]:
        """Send a bundle control request; return the errors that came before its reply."""
        xid = self.next_xid()
        body = BUNDLE_CTRL.pack(bundle_id, ctrl, flags)
        with timed(BUNDLE_CONTROL_STEP.get(ctrl, "bundle-control"), self.bridge):
            self._send(self._bundle_message(BUNDLE_CONTROL, body, xid))
            errors = []
            while True:
                msg = self._recv()
                if msg.type == ERROR:
                    errors.append(msg)
                    if msg.xid == xid:
                        return errors
                elif msg.xid == xid:
                    return errors

    def bundle(self, messages: Iterable[bytes]) -> list[tuple[int, bytes]]:
        """Apply `messages` as one atomic, ordered bundle.

        Returns (index, error) for each refused message; when there is any,
        nothing of the bundle took effect.
        """
        bundle_id = self.next_xid()
        flags = BUNDLE_FLAGS
        errors = self._bundle_control(bundle_id, OFPBCT_OPEN_REQUEST, flags)
        if errors:
            return [(-1, e.data) for e in errors]
        first = self._xid + 1
        out = bytearray()
        prefix = BUNDLE_ADD.pack(bundle_id, flags)
        for message in messages:
            xid = self.next_xid()
            out += self._bundle_message(BUNDLE_ADD_MESSAGE, prefix + with_xid(message, xid), xid)
            if len(out) >= 1 << 18:
                self._send(out)
                out.clear()
                errors += self._pending_errors()
        self._send(out)
        last = self._xid
        if errors:
            self._bundle_control(bundle_id, OFPBCT_DISCARD_REQUEST, flags)
        else:
            errors = self._bundle_control(bundle_id, OFPBCT_COMMIT_REQUEST, flags)
        return [(_index(e.xid, first, last), e.data) for e in errors]

    def bundle_prepared(self, prepared: PreparedBundle) -> list[tuple[int, bytes]]:
        """Apply a bundle whose add messages were encoded in advance (before the
        switch stopped): in the outage only the bytes are written."""
        flags = BUNDLE_FLAGS
        errors = self._bundle_control(prepared.bundle_id, OFPBCT_OPEN_REQUEST, flags)
        if errors:
            return [(-1, e.data) for e in errors]
        view = memoryview(prepared.data)
        for offset in range(0, len(view), 1 << 18):
            self._send(view[offset:offset + (1 << 18)])
            errors += self._pending_errors()
        if errors:
            self._bundle_control(prepared.bundle_id, OFPBCT_DISCARD_REQUEST, flags)
        else:
            errors = self._bundle_control(prepared.bundle_id, OFPBCT_COMMIT_REQUEST, flags)
        last = prepared.first_xid + prepared.count - 1
        return [(_index(e.xid, prepared.first_xid, last), e.data) for e in errors]

    def error(self, msg: Message) -> OpenFlowError:
        return OpenFlowError(bridge=self.bridge, message=describe(msg.data))


def bundle_message(version: int, kind: int, body: bytes, xid: int) -> bytes:
    """A bundle control or add message: standard from 1.4, ONF's extension at 1.3."""
    if version >= OF14:
        return encode(version, kind, body, xid)
    exp_type = ONFT_BUNDLE_CONTROL if kind == BUNDLE_CONTROL else ONFT_BUNDLE_ADD_MESSAGE
    return encode(version, EXPERIMENTER, struct.pack("!II", ONF_VENDOR, exp_type) + body, xid)


# Prepared bundles number their messages from here, far above the xids a
# connection hands out itself, and use their own bundle id.
PREPARED_XID_BASE = 1 << 28
PREPARED_BUNDLE_ID = 0x0F5E0001


@dataclass(frozen=True)
class PreparedBundle:
    version: int
    data: bytes | bytearray
    count: int
    bundle_id: int = PREPARED_BUNDLE_ID
    first_xid: int = PREPARED_XID_BASE


def prepare_bundle(version: int, messages: Iterable[bytes]) -> PreparedBundle:
    """Encode the add messages of an atomic, ordered bundle ahead of time."""
    out = bytearray()
    prefix = BUNDLE_ADD.pack(PREPARED_BUNDLE_ID, BUNDLE_FLAGS)
    xid = PREPARED_XID_BASE
    for message in messages:
        out += bundle_message(version, BUNDLE_ADD_MESSAGE, prefix + with_xid(message, xid), xid)
        xid += 1
    return PreparedBundle(version, out, xid - PREPARED_XID_BASE)  # no copy: it may be big


def _index(xid: int, first: int, last: int) -> int:
    """Which of the messages sent with xids first..last an error answers; -1 if none."""
    return xid - first if first <= xid <= last else -1


def describe(message: bytes, brief: bool = False) -> str:
    """A one-line text for an OpenFlow message, as Open vSwitch would print it.

    `brief` keeps only what follows the message's name on its first line:
    for an error, its name (OFPBAC_BAD_OUT_GROUP); for a flow_mod, the flow.
    """
    from ovs_service.errors import OvsServiceError
    from ovs_service.run import run

    try:
        text = run(["ovs-ofctl", "ofp-print", message.hex()]).stdout
    except OvsServiceError:
        version, type_, length, _ = HEADER.unpack_from(message)
        return f"OpenFlow message type {type_} (version {version}, {length} bytes)"
    if brief:
        text = text.splitlines()[0].split("): ", 1)[-1] if text.strip() else text
    return " ".join(text.split())
