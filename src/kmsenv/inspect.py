"""Read a message's header from a file without reading its body or calling KMS.

Nothing returned here is authenticated: only decryption verifies a header.
"""

from __future__ import annotations

from typing import Any

from .exceptions import MessageFormatError
from .message import der
from .message.codec import DEFAULT_MAX_ENCRYPTED_DATA_KEYS, MessageHeader, _read_header

# A DER header this large is not one kmsenv or the official SDKs write.
MAX_HEADER_BYTES = 16 * 1024 * 1024


def _der_length(src: Any, what: str) -> tuple[bytes, int]:
    """Read a tag's length octets from ``src``; returns (raw octets, length)."""
    first = src.read_exact(1, what)
    if first[0] < 0x80:
        return first, first[0]
    count = first[0] & 0x7F
    if count == 0 or count > 4:
        raise MessageFormatError(f"{what}: invalid DER length")
    rest = src.read_exact(count, what)
    length = int.from_bytes(rest, "big")
    if length < 0x80 or rest[0] == 0:
        raise MessageFormatError(f"{what}: non-minimal DER length")
    return first + rest, length


def _der_header(src: Any, max_edks: int) -> MessageHeader:
    if src.read_exact(1, "message") != b"\x30":
        raise MessageFormatError("not a DER message")
    _, outer = _der_length(src, "message")
    tag = src.read_exact(1, "header")
    if tag != b"\x30":
        raise MessageFormatError("header: expected a SEQUENCE")
    raw_len, length = _der_length(src, "header")
    if length > min(outer, MAX_HEADER_BYTES):
        raise MessageFormatError(f"header claims {length} bytes, more than the message or the limit")
    raw = tag + raw_len + src.read_exact(length, "header")
    return _read_header(der.Reader(raw), max_edks)


def inspect_stream(f: Any, max_encrypted_data_keys: int = DEFAULT_MAX_ENCRYPTED_DATA_KEYS) -> tuple[str, Any]:
    """(format, header) of the message at the start of binary file ``f``."""
    from .stream import alibaba_stream, framed
    from .stream._io import Source
    from .stream.api import detect_format

    src = Source(f)
    fmt = detect_format(src.peek(4))
    if fmt == "framed":
        return fmt, framed.read_header(src, max_encrypted_data_keys)
    if fmt == "alibaba-stream":
        return fmt, alibaba_stream.read_header(src, max_encrypted_data_keys)[0]
    return fmt, _der_header(src, max_encrypted_data_keys)
