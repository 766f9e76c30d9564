"""Minimal strict DER: just the TLVs the Alibaba message format uses, and
the message's outer layout (header, body IV, ciphertext, tag), built and
walked here only.

Encoding emits definite minimal lengths. Decoding rejects indefinite and
non-minimal lengths and any length that runs past its container, before it
slices anything, so hostile lengths cannot cause large allocations. This
module imports nothing of kmsenv but its exceptions: the crypto backends
use it without the codec above it.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from ..exceptions import MessageFormatError

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
OCTET_STRING = 0x04

_MAX_LEN_OCTETS = 4  # 4 GiB - 1: more than any message this library will read


def encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + encode_length(len(content)) + content


def octet_string(content: bytes) -> bytes:
    return tlv(OCTET_STRING, content)


def integer(value: int) -> bytes:
    if value < 0:
        raise ValueError("negative INTEGERs are not used by the format")
    # Minimal two's complement: a leading 0x00 only when the high bit is set.
    return tlv(INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def der_set(elements: list[bytes]) -> bytes:
    # DER canonical SET OF order: sort the complete element encodings.
    return tlv(SET, b"".join(sorted(elements)))


# ---------------------------------------------------------------- the outer layout
# A message is  30 L { header: 30 L {...} , body: 30 L { 04 L iv , 04 L ct , 04 L tag } }.
# This section is the one place that builds and walks that outer layout; what
# the header holds is the codec's (message/codec.py).

#: Longest body IV and body tag a reader accepts (before the algorithm's own check).
MAX_IV_TAG_LEN = 64


def message_size(header_len: int, iv_len: int, ct_len: int, tag_len: int) -> int:
    body = 2 + iv_len + 1 + len(encode_length(ct_len)) + ct_len + 2 + tag_len
    inner = header_len + 1 + len(encode_length(body)) + body
    return 1 + len(encode_length(inner)) + inner


def header_tlv(fields: bytes, iv: bytes, tag: bytes) -> bytes:
    """The header SEQUENCE: its fields (version .. context SET), then its IV and tag."""
    return tlv(SEQUENCE, fields + octet_string(iv) + octet_string(tag))


def body_tlv(iv: bytes, ciphertext: bytes, tag: bytes) -> bytes:
    return tlv(SEQUENCE, octet_string(iv) + octet_string(ciphertext) + octet_string(tag))


def message_tlv(header: bytes, body: bytes) -> bytes:
    return tlv(SEQUENCE, header + body)


def message_prefix(header: bytes, iv: bytes, ct_len: int, tag_len: int) -> bytes:
    """Everything of a message before its body ciphertext (a stream writer's
    first bytes): the outer SEQUENCE's tag and length, the header, the body
    SEQUENCE's tag and length, the IV and the ciphertext's tag and length;
    exactly what ``message_tlv(header, body_tlv(iv, ct, tag))`` puts there."""
    ct_head = bytes((OCTET_STRING,)) + encode_length(ct_len)
    body_len = 2 + len(iv) + len(ct_head) + ct_len + 2 + tag_len
    body_head = bytes((SEQUENCE,)) + encode_length(body_len)
    outer_len = len(header) + len(body_head) + body_len
    return bytes((SEQUENCE,)) + encode_length(outer_len) + header + body_head + octet_string(iv) + ct_head


def outer_length(header_len: int, iv_len: int, ct_len: int, tag_len: int) -> int:
    """The outer SEQUENCE's content length of such a message (what must fit
    the 4 length octets a reader takes)."""
    body_len = 2 + iv_len + 1 + len(encode_length(ct_len)) + ct_len + 2 + tag_len
    return header_len + 1 + len(encode_length(body_len)) + body_len


class MessageLayout(NamedTuple):
    """Where the parts of one complete message lie: offsets into it and lengths.
    The header TLV is ``[header_start, header_end)``; its content is the codec's
    to parse (a strict parse ends it with the header IV and tag TLVs)."""

    header_start: int
    header_end: int
    iv_start: int
    iv_len: int
    ct_start: int
    ct_len: int
    tag_start: int
    tag_len: int


# A NamedTuple's own constructor costs four times tuple.__new__ (per message).
_new_layout = tuple.__new__


def message_layout(
    buf: bytes | bytearray | memoryview, check_header: Callable[[Reader], Any] | None = None
) -> MessageLayout:
    """Walk the outer layout of one complete message, strictly: one SEQUENCE
    spanning exactly ``buf``, holding exactly a header SEQUENCE and a body
    SEQUENCE, the body exactly three OCTET STRINGs (IV and tag of at most
    MAX_IV_TAG_LEN bytes). Raises MessageFormatError saying what is wrong;
    reads no header field. ``check_header(reader over the header TLV)``:
    when the body is what is wrong, called first, so that a malformed header
    is reported as such (the order of a reader that parses the header first)."""
    if type(buf) is bytes:
        layout = _fast_layout(buf)
        if layout is not None:
            return layout
    return _strict_layout(buf, check_header)


def _fast_layout(buf: bytes) -> MessageLayout | None:
    """message_layout for a well-formed message of less than 16 MiB, in
    straight-line byte arithmetic: this runs per message, and a function
    call or a slice here costs a few percent of opening a small one. None
    for anything else (4-octet lengths too), which the strict reader then
    walks or explains. It accepts exactly what _strict_layout accepts, with
    the same result (tests/test_envelope.py): every length minimal and
    definite, every TLV inside its container, nothing after the tag."""
    end = len(buf)
    try:
        # Each block reads one TLV at p: its content start s and length n.
        # The outer SEQUENCE, ending exactly at the end.
        p = 0
        if buf[p] != SEQUENCE:
            return None
        f = buf[p + 1]
        if f < 0x80:
            s, n = p + 2, f
        elif f == 0x82 and buf[p + 2]:
            s, n = p + 4, buf[p + 2] << 8 | buf[p + 3]
        elif f == 0x81 and buf[p + 2] >= 0x80:
            s, n = p + 3, buf[p + 2]
        elif f == 0x83 and buf[p + 2]:
            s, n = p + 5, buf[p + 2] << 16 | buf[p + 3] << 8 | buf[p + 4]
        else:
            return None
        if s + n != end:
            return None
        # The header SEQUENCE (what it holds is the codec's).
        header_start = p = s
        if buf[p] != SEQUENCE:
            return None
        f = buf[p + 1]
        if f < 0x80:
            s, n = p + 2, f
        elif f == 0x81 and buf[p + 2] >= 0x80:
            s, n = p + 3, buf[p + 2]
        elif f == 0x82 and buf[p + 2]:
            s, n = p + 4, buf[p + 2] << 8 | buf[p + 3]
        else:
            return None
        # The body SEQUENCE, right after it and ending exactly at the end
        # (a header claiming more than there is leaves no room for it).
        header_end = p = s + n
        if buf[p] != SEQUENCE:
            return None
        f = buf[p + 1]
        if f < 0x80:
            s, n = p + 2, f
        elif f == 0x82 and buf[p + 2]:
            s, n = p + 4, buf[p + 2] << 8 | buf[p + 3]
        elif f == 0x81 and buf[p + 2] >= 0x80:
            s, n = p + 3, buf[p + 2]
        elif f == 0x83 and buf[p + 2]:
            s, n = p + 5, buf[p + 2] << 16 | buf[p + 3] << 8 | buf[p + 4]
        else:
            return None
        if s + n != end:
            return None
        # The IV: short form, at most MAX_IV_TAG_LEN (< 0x80) bytes.
        iv_len = buf[s + 1]
        if buf[s] != OCTET_STRING or iv_len > MAX_IV_TAG_LEN:
            return None
        iv_start = s + 2
        # The ciphertext.
        p = iv_start + iv_len
        if buf[p] != OCTET_STRING:
            return None
        f = buf[p + 1]
        if f < 0x80:
            s, n = p + 2, f
        elif f == 0x82 and buf[p + 2]:
            s, n = p + 4, buf[p + 2] << 8 | buf[p + 3]
        elif f == 0x81 and buf[p + 2] >= 0x80:
            s, n = p + 3, buf[p + 2]
        elif f == 0x83 and buf[p + 2]:
            s, n = p + 5, buf[p + 2] << 16 | buf[p + 3] << 8 | buf[p + 4]
        else:
            return None
        ct_start, ct_len = s, n
        # The tag: short form, the message's last bytes.
        p = s + n
        tag_len = buf[p + 1]
        if buf[p] != OCTET_STRING or tag_len > MAX_IV_TAG_LEN or p + 2 + tag_len != end:
            return None
    except IndexError:  # cut short: the strict reader says where
        return None
    return _new_layout(MessageLayout, (header_start, header_end, iv_start, iv_len, ct_start, ct_len, p + 2, tag_len))


def _strict_layout(
    buf: bytes | bytearray | memoryview, check_header: Callable[[Reader], Any] | None = None
) -> MessageLayout:
    view = buf if type(buf) is bytes else memoryview(buf)
    top = Reader(view)
    msg = top.enter(SEQUENCE, "message")
    top.expect_end("the message")
    header_start = msg.pos
    msg.enter(SEQUENCE, "header")
    header_end = msg.pos
    try:
        body = msg.enter(SEQUENCE, "body")
        msg.expect_end("the body")
        iv_start, iv_len = body.skip("body IV", MAX_IV_TAG_LEN)
        ct_start, ct_len = body.skip("body ciphertext")
        tag_start, tag_len = body.skip("body auth tag", MAX_IV_TAG_LEN)
        body.expect_end("the body auth tag")
    except MessageFormatError:
        if check_header is not None:
            check_header(Reader(view, header_start, header_end))
        raise
    return MessageLayout(header_start, header_end, iv_start, iv_len, ct_start, ct_len, tag_start, tag_len)


def read_tl(read_exact: Callable[[int, str], Any], tag: int, what: str) -> tuple[int, bytes]:
    """(content length, the tag and length bytes) of a TLV read from a stream
    (``read_exact(n, what)`` returns exactly n bytes or raises), with the
    Reader's rules: definite, minimal, at most 4 length octets. The caller
    checks the length against its container."""
    head = bytes(read_exact(2, what))
    if head[0] != tag:
        raise MessageFormatError(f"{what}: expected tag 0x{tag:02x}, found 0x{head[0]:02x}")
    first = head[1]
    if first < 0x80:
        return first, head
    count = first & 0x7F
    if count == 0:
        raise MessageFormatError(f"{what}: indefinite length is not DER")
    if count > _MAX_LEN_OCTETS:
        raise MessageFormatError(f"{what}: length field of {count} octets is too large")
    octets = bytes(read_exact(count, f"{what} length"))
    length = int.from_bytes(octets, "big")
    if length < 0x80 or octets[0] == 0:
        raise MessageFormatError(f"{what}: non-minimal DER length")
    return length, head + octets


class Reader:
    """Cursor over a bytes-like object between ``pos`` and ``end``."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes | memoryview, pos: int = 0, end: int | None = None):
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def at_end(self) -> bool:
        return self.pos == self.end

    def expect_end(self, what: str) -> None:
        if self.pos != self.end:
            raise MessageFormatError(f"{self.end - self.pos} unexpected bytes after {what}")

    def header(self, tag: int, what: str) -> int:
        """Read a tag and length; return the content length (checked to fit)."""
        buf, pos, end = self.buf, self.pos, self.end
        if end - pos < 2:
            raise MessageFormatError(f"truncated message: {what} is missing")
        if buf[pos] != tag:
            raise MessageFormatError(f"{what}: expected tag 0x{tag:02x}, found 0x{buf[pos]:02x}")
        first = buf[pos + 1]
        pos += 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count == 0:
                raise MessageFormatError(f"{what}: indefinite length is not DER")
            if count > _MAX_LEN_OCTETS:
                raise MessageFormatError(f"{what}: length field of {count} octets is too large")
            if end - pos < count:
                raise MessageFormatError(f"truncated message: {what} length is cut off")
            length = int.from_bytes(buf[pos : pos + count], "big")
            pos += count
            if length < 0x80 or buf[pos - count] == 0:
                raise MessageFormatError(f"{what}: non-minimal DER length")
        if length > end - pos:
            raise MessageFormatError(f"truncated message: {what} claims {length} bytes but only {end - pos} remain")
        self.pos = pos
        return length

    def enter(self, tag: int, what: str) -> Reader:
        length = self.header(tag, what)
        sub = Reader(self.buf, self.pos, self.pos + length)
        self.pos += length
        return sub

    def skip(self, what: str, max_len: int | None = None) -> tuple[int, int]:
        """Step over an OCTET STRING: (content start, content length)."""
        length = self.header(OCTET_STRING, what)
        if max_len is not None and length > max_len:
            raise MessageFormatError(f"{what} is {length} bytes, more than the limit of {max_len}")
        start = self.pos
        self.pos = start + length
        return start, length

    def octets(self, what: str, max_len: int | None = None) -> bytes:
        start, length = self.skip(what, max_len)
        return bytes(self.buf[start : start + length])

    def small_uint(self, what: str) -> int:
        """A non-negative INTEGER that fits in 32 bits, minimally encoded."""
        length = self.header(INTEGER, what)
        buf, pos = self.buf, self.pos
        if length == 0 or length > 5:
            raise MessageFormatError(f"{what}: INTEGER of {length} bytes is out of range")
        if buf[pos] & 0x80:
            raise MessageFormatError(f"{what}: negative INTEGER")
        if length > 1 and buf[pos] == 0 and not buf[pos + 1] & 0x80:
            raise MessageFormatError(f"{what}: non-minimal INTEGER")
        value = int.from_bytes(buf[pos : pos + length], "big")
        if value > 0xFFFFFFFF:
            raise MessageFormatError(f"{what}: INTEGER out of range")
        self.pos = pos + length
        return value
