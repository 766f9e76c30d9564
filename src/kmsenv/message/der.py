"""Minimal strict DER: just the TLVs the Alibaba message format uses.

Encoding emits definite minimal lengths. Decoding rejects indefinite and
non-minimal lengths and any length that runs past its container, before it
slices anything, so hostile lengths cannot cause large allocations.
"""

from __future__ import annotations

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


def message_size(header_len: int, iv_len: int, ct_len: int, tag_len: int) -> int:
    body = 2 + iv_len + 1 + len(encode_length(ct_len)) + ct_len + 2 + tag_len
    inner = header_len + 1 + len(encode_length(body)) + body
    return 1 + len(encode_length(inner)) + inner


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
            raise MessageFormatError(
                f"truncated message: {what} claims {length} bytes but only {end - pos} remain"
            )
        self.pos = pos
        return length

    def enter(self, tag: int, what: str) -> Reader:
        length = self.header(tag, what)
        sub = Reader(self.buf, self.pos, self.pos + length)
        self.pos += length
        return sub

    def octets(self, what: str, max_len: int | None = None) -> bytes:
        length = self.header(OCTET_STRING, what)
        if max_len is not None and length > max_len:
            raise MessageFormatError(f"{what} is {length} bytes, more than the limit of {max_len}")
        start = self.pos
        self.pos = start + length
        return bytes(self.buf[start : self.pos])

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
