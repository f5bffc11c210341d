"""OpenFlow messages: framing, encoding, bundles prepared ahead, and their text.

Messages travel as bytes, whole (header included). This module frames them
(`encode`, `with_xid`, `Message`), builds the few that every connection
needs (hello, bundle control and add), and prints them as Open vSwitch
would (`describe`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ovs_service.openflow.ofproto import (
    OF13,
    OF14,
    OFP_ALIGN,
    OFP_BUNDLE_ADD_BODY_PACK_STR,
    OFP_EXPERIMENTER_BODY_PACK_STR,
    OFP_HEADER_PACK_STR,
    OFP_HEADER_SIZE,
    OFP_HEADER_XID_OFFSET,
    OFP_HELLO_ELEM_VERSIONBITMAP_PACK_STR,
    OFP_HELLO_ELEM_VERSIONBITMAP_SIZE,
    OFP_XID_PACK_STR,
    OFPBF_ATOMIC,
    OFPBF_ORDERED,
    OFPHET_VERSIONBITMAP,
    OFPT_BUNDLE_ADD_MESSAGE,
    OFPT_BUNDLE_CONTROL,
    OFPT_EXPERIMENTER,
    OFPT_HELLO,
    ONF_EXPERIMENTER_ID,
    ONFT_BUNDLE_ADD_MESSAGE,
    ONFT_BUNDLE_CONTROL,
)

HEADER = struct.Struct(OFP_HEADER_PACK_STR)
assert HEADER.size == OFP_HEADER_SIZE
_XID = struct.Struct(OFP_XID_PACK_STR)
_EXPERIMENTER = struct.Struct(OFP_EXPERIMENTER_BODY_PACK_STR)
BUNDLE_ADD = struct.Struct(OFP_BUNDLE_ADD_BODY_PACK_STR)

# Every bundle here: all or nothing, applied in the order sent.
BUNDLE_FLAGS = OFPBF_ATOMIC | OFPBF_ORDERED


@dataclass(frozen=True)
class Message:
    version: int
    type: int
    xid: int
    data: bytes  # the whole message, header included

    @property
    def body(self) -> bytes:
        return self.data[OFP_HEADER_SIZE:]


def padded(length: int) -> int:
    """`length` rounded up to OpenFlow's alignment (of matches, stats, hello elements)."""
    return (length + OFP_ALIGN - 1) // OFP_ALIGN * OFP_ALIGN


def encode(version: int, type_: int, body: bytes = b"", xid: int = 0) -> bytes:
    return HEADER.pack(version, type_, OFP_HEADER_SIZE + len(body), xid) + body


def with_xid(message: bytes, xid: int) -> bytes:
    return message[:OFP_HEADER_XID_OFFSET] + _XID.pack(xid) + message[OFP_HEADER_SIZE:]


def experimenter(version: int, experimenter_id: int, exp_type: int, body: bytes = b"",
                 xid: int = 0) -> bytes:
    """An experimenter (1.0: vendor) message: Nicira's or ONF's extensions."""
    return encode(version, OFPT_EXPERIMENTER, _EXPERIMENTER.pack(experimenter_id, exp_type) + body,
                  xid)


def hello(version: int) -> bytes:
    if version < OF13:
        return encode(version, OFPT_HELLO)
    # A version bitmap element naming only the version we want.
    element = struct.pack(OFP_HELLO_ELEM_VERSIONBITMAP_PACK_STR, OFPHET_VERSIONBITMAP,
                          OFP_HELLO_ELEM_VERSIONBITMAP_SIZE, 1 << version)
    return encode(version, OFPT_HELLO, element)


def hello_allows(hello: Message, version: int) -> bool:
    """Whether the peer's hello accepts `version`: its version bitmap says so,
    or, without one, its own version is as high."""
    if hello.type != OFPT_HELLO:
        return False
    body = hello.body
    while len(body) >= OFP_HELLO_ELEM_VERSIONBITMAP_SIZE:
        kind, length, bitmap = struct.unpack_from(OFP_HELLO_ELEM_VERSIONBITMAP_PACK_STR, body)
        if kind == OFPHET_VERSIONBITMAP and length >= OFP_HELLO_ELEM_VERSIONBITMAP_SIZE:
            return bool(bitmap & (1 << version))
        body = body[padded(length) or OFP_ALIGN:]
    return hello.version >= version


def bundle_message(version: int, kind: int, body: bytes, xid: int) -> bytes:
    """A bundle control or add message: standard from 1.4, ONF's extension at 1.3."""
    if version >= OF14:
        return encode(version, kind, body, xid)
    exp_type = ONFT_BUNDLE_CONTROL if kind == OFPT_BUNDLE_CONTROL else ONFT_BUNDLE_ADD_MESSAGE
    return experimenter(version, ONF_EXPERIMENTER_ID, exp_type, body, xid)


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
        out += bundle_message(version, OFPT_BUNDLE_ADD_MESSAGE, prefix + with_xid(message, xid),
                              xid)
        xid += 1
    return PreparedBundle(version, out, xid - PREPARED_XID_BASE)  # no copy: it may be big


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
