"""A small OpenFlow client for ovs-vswitchd's management socket.

ovs-service saves a bridge's state as the OpenFlow messages that would
re-create it, built from the switch's own binary replies, so nothing passes
through a text printer and parser that may disagree with each other. A
`Connection` speaks just enough OpenFlow for that: hello, echo, errors,
multipart requests, barriers and bundles, at OpenFlow 1.0 (with Nicira
extensions), 1.2, 1.3, 1.4 and 1.5.
"""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from ovs_service.errors import OpenFlowError, OvsUnreachable, SwitchGone
from ovs_service.log import timed
from ovs_service.openflow.messages import (
    BUNDLE_ADD,
    BUNDLE_FLAGS,
    HEADER,
    Message,
    PreparedBundle,
    bundle_message,
    describe,
    encode,
    hello,
    hello_allows,
    with_xid,
)
from ovs_service.openflow.ofproto import (
    OF10,
    OF13,
    OFP10_STATS_BODY_PACK_STR,
    OFP_BUNDLE_CTRL_BODY_PACK_STR,
    OFP_HEADER_SIZE,
    OFP_MULTIPART_BODY_PACK_STR,
    OFP_MULTIPART_TYPE_PACK_STR,
    OFPBCT_COMMIT_REQUEST,
    OFPBCT_DISCARD_REQUEST,
    OFPBCT_OPEN_REQUEST,
    OFPMPF_REPLY_MORE,
    OFPT10_BARRIER_REPLY,
    OFPT10_BARRIER_REQUEST,
    OFPT10_STATS_REPLY,
    OFPT10_STATS_REQUEST,
    OFPT_BARRIER_REPLY,
    OFPT_BARRIER_REQUEST,
    OFPT_BUNDLE_ADD_MESSAGE,
    OFPT_BUNDLE_CONTROL,
    OFPT_ECHO_REPLY,
    OFPT_ECHO_REQUEST,
    OFPT_ERROR,
    OFPT_MULTIPART_REPLY,
    OFPT_MULTIPART_REQUEST,
    VERSION_NAME,
)

BUNDLE_CTRL = struct.Struct(OFP_BUNDLE_CTRL_BODY_PACK_STR)
_MULTIPART = struct.Struct(OFP_MULTIPART_BODY_PACK_STR)
_STATS10 = struct.Struct(OFP10_STATS_BODY_PACK_STR)
_MULTIPART_TYPE = struct.Struct(OFP_MULTIPART_TYPE_PACK_STR)

# What a bundle control request is timed as (see log.timed).
BUNDLE_CONTROL_STEP = {OFPBCT_OPEN_REQUEST: "bundle-open", OFPBCT_COMMIT_REQUEST: "bundle-commit",
                       OFPBCT_DISCARD_REQUEST: "bundle-discard"}

# Messages are written in batches of about this many bytes, errors read in between.
WRITE_BATCH = 1 << 18
RECV_SIZE = 1 << 20


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
            self._send(hello(version))
            peer = self._recv()
        if peer.type == OFPT_ERROR or not hello_allows(peer, version):
            self.close()
            raise OpenFlowError(
                bridge=bridge,
                message=f"the switch refused {VERSION_NAME[version]} on this bridge",
            )

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
                chunk = self._sock.recv(RECV_SIZE)
        except OSError as e:
            raise self._lost(e) from None
        if not chunk:
            raise SwitchGone(bridge=self.bridge, message="the switch closed the connection")
        self._buf += chunk

    def _take(self) -> Message | None:
        if len(self._buf) < OFP_HEADER_SIZE:
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
            if msg.type == OFPT_ECHO_REQUEST:
                self._send(encode(msg.version, OFPT_ECHO_REPLY, msg.body, msg.xid))
                continue
            return msg

    def _pending_errors(self) -> list[Message]:
        """Errors the switch sent while we were writing, without blocking."""
        errors = []
        while True:
            while (msg := self._take()) is not None:
                if msg.type == OFPT_ERROR:
                    errors.append(msg)
            if not select.select([self._sock], [], [], 0)[0]:
                return errors
            self._fill()

    # -- requests --------------------------------------------------------------

    def exchange(self, message: bytes, reply_type: int | None = None, *,
                 multipart: bool = False, errors: list[Message] | None = None
                 ) -> Iterator[Message]:
        """Send `message` under a new xid; yield its replies, up to the last part.

        Only messages with the request's xid count, and of them only those
        of `reply_type` (any type when None). A multipart reply ends with
        the part without the "more" flag; any other request has one reply.
        An error answering the request raises OpenFlowError; when `errors`
        is given, it is appended there instead and ends the exchange.
        Errors answering earlier messages, read meanwhile, are appended to
        `errors` too (and dropped without it); anything else is skipped.
        """
        xid = self.next_xid()
        self._send(with_xid(message, xid))
        while True:
            msg = self._recv()
            if msg.type == OFPT_ERROR:
                if errors is not None:
                    errors.append(msg)
                    if msg.xid == xid:
                        return
                elif msg.xid == xid:
                    raise self.error(msg)
                continue
            if msg.xid != xid or (reply_type is not None and msg.type != reply_type):
                continue
            yield msg
            if not multipart or not self._more(msg):
                return

    def _more(self, reply: Message) -> bool:
        """Whether parts of a multipart reply follow this one."""
        fields = _STATS10 if self.version == OF10 else _MULTIPART
        _, flags = fields.unpack_from(reply.data, OFP_HEADER_SIZE)
        return bool(flags & OFPMPF_REPLY_MORE)

    def request(self, message: bytes, reply_type: int) -> Message:
        """Send one message and wait for its reply (or its error)."""
        return next(self.exchange(message, reply_type))

    def multipart(self, body: bytes) -> Iterator[bytes]:
        """Yield the body of each reply to a multipart (stats) request.

        `body` starts with the multipart type; the flags and padding that
        follow it are added here. What is yielded starts after the reply's
        own type, flags and padding.
        """
        if self.version == OF10:
            req_type, rep_type, fields = OFPT10_STATS_REQUEST, OFPT10_STATS_REPLY, _STATS10
        else:
            req_type, rep_type, fields = OFPT_MULTIPART_REQUEST, OFPT_MULTIPART_REPLY, _MULTIPART
        (mp_type,) = _MULTIPART_TYPE.unpack_from(body)
        request = encode(self.version, req_type,
                         fields.pack(mp_type, 0) + body[_MULTIPART_TYPE.size:])
        skip = OFP_HEADER_SIZE + fields.size
        for reply in self.exchange(request, rep_type, multipart=True):
            yield reply.data[skip:]

    def _barrier_message(self) -> tuple[bytes, int]:
        if self.version == OF10:
            return encode(OF10, OFPT10_BARRIER_REQUEST), OFPT10_BARRIER_REPLY
        return encode(self.version, OFPT_BARRIER_REQUEST), OFPT_BARRIER_REPLY

    def barrier(self) -> None:
        self.request(*self._barrier_message())

    def send_all(self, messages: Iterable[bytes]) -> list[tuple[int, bytes]]:
        """Send messages (each gets its own xid), then a barrier.

        Returns (index, error message) for every message the switch refused.
        """
        first = self._xid + 1
        errors: list[Message] = []
        out = bytearray()
        for message in messages:
            out += with_xid(message, self.next_xid())
            if len(out) >= WRITE_BATCH:
                self._send(out)
                out.clear()
                errors += self._pending_errors()
        self._send(out)
        last = self._xid
        barrier, reply_type = self._barrier_message()
        for _ in self.exchange(barrier, reply_type, errors=errors):
            pass
        return [(_index(e.xid, first, last), e.data) for e in errors]

    # -- bundles ---------------------------------------------------------------

    @property
    def has_bundles(self) -> bool:
        return self.version >= OF13

    def _bundle_control(self, bundle_id: int, ctrl: int, flags: int) -> list[Message]:
        """Send a bundle control request; return the errors that came before its reply."""
        body = BUNDLE_CTRL.pack(bundle_id, ctrl, flags)
        errors: list[Message] = []
        with timed(BUNDLE_CONTROL_STEP.get(ctrl, "bundle-control"), self.bridge):
            request = bundle_message(self.version, OFPT_BUNDLE_CONTROL, body, 0)
            for _ in self.exchange(request, errors=errors):
                pass
        return errors

    def bundle(self, messages: Iterable[bytes], commit: bool = True) -> list[tuple[int, bytes]]:
        """Apply `messages` as one atomic, ordered bundle.

        Returns (index, error) for each refused message; when there is any,
        nothing of the bundle took effect. Without `commit` the bundle is
        discarded once the switch has checked every message as it was added:
        nothing takes effect, and the errors are those of the adds.
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
            out += bundle_message(self.version, OFPT_BUNDLE_ADD_MESSAGE,
                                  prefix + with_xid(message, xid), xid)
            if len(out) >= WRITE_BATCH:
                self._send(out)
                out.clear()
                errors += self._pending_errors()
        self._send(out)
        last = self._xid
        if not commit:
            errors += self._bundle_control(bundle_id, OFPBCT_DISCARD_REQUEST, flags)
        elif errors:
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
        for offset in range(0, len(view), WRITE_BATCH):
            self._send(view[offset:offset + WRITE_BATCH])
            errors += self._pending_errors()
        if errors:
            self._bundle_control(prepared.bundle_id, OFPBCT_DISCARD_REQUEST, flags)
        else:
            errors = self._bundle_control(prepared.bundle_id, OFPBCT_COMMIT_REQUEST, flags)
        last = prepared.first_xid + prepared.count - 1
        return [(_index(e.xid, prepared.first_xid, last), e.data) for e in errors]

    def error(self, msg: Message) -> OpenFlowError:
        return OpenFlowError(bridge=self.bridge, message=describe(msg.data))


def _index(xid: int, first: int, last: int) -> int:
    """Which of the messages sent with xids first..last an error answers; -1 if none."""
    return xid - first if first <= xid <= last else -1
