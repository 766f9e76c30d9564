"""Encode and decode Alibaba Encryption SDK messages (spec sections 3-6).

The decoder is strict where the official SDKs are lax (trailing bytes,
non-minimal DER, unknown algorithms, too many EDKs, duplicate ARNs or context
keys) and bounds every length against what is left of the input before slicing.
It never decrypts anything: it returns records.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Sequence

from ..algorithms import Algorithm, algorithm_from_id
from ..exceptions import ConfigurationError, MessageFormatError
from ..model import EncryptedDataKey
from . import der

__all__ = [
    "MessageHeader",
    "MessageBody",
    "DEFAULT_MAX_ENCRYPTED_DATA_KEYS",
    "MAX_CONTEXT_BYTES",
    "context_bytes",
    "auth_fields",
    "encode_header",
    "encode_body",
    "encode_message",
    "decode_message",
    "decode_header",
]

DEFAULT_MAX_ENCRYPTED_DATA_KEYS = 16
# Java readers serialise the context into a 32,767-byte buffer and fail past it.
MAX_CONTEXT_BYTES = 32767
MESSAGE_VERSION = 1
MAX_ARN_BYTES = 2048
MAX_EDK_BYTES = 65536

_u32 = struct.Struct(">I").pack


@dataclass(frozen=True)
class MessageHeader:
    """A parsed or built message header. ``encryption_context`` is read-only."""

    version: int
    algorithm: Algorithm
    encrypted_data_keys: tuple[EncryptedDataKey, ...]
    encryption_context: Mapping[str, str]
    header_iv: bytes
    header_auth_tag: bytes
    # The header's DER bytes exactly as read or written (the TLV).
    encoded: bytes = field(default=b"", repr=False, compare=False)

    def auth_fields(self) -> bytes:
        return auth_fields(self.version, self.algorithm, self.encryption_context, self.encrypted_data_keys)


@dataclass(frozen=True)
class MessageBody:
    iv: bytes
    ciphertext: bytes
    auth_tag: bytes

    def __repr__(self) -> str:
        return f"MessageBody(iv=<{len(self.iv)}>, ciphertext=<{len(self.ciphertext)} bytes>, auth_tag=<{len(self.auth_tag)}>)"


def _utf8(text: str, what: str) -> bytes:
    if not isinstance(text, str):
        raise ConfigurationError(f"{what} must be str, not {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(f"{what} is not encodable as UTF-8") from None


def context_items(context: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """The context as UTF-8 pairs sorted by unsigned key bytes (spec section 4)."""
    return sorted((_utf8(k, "context key"), _utf8(v, "context value")) for k, v in context.items())


def context_bytes(context: Mapping[str, str]) -> bytes:
    """Context serialisation used for the header tag and as GCM body AAD."""
    if not context:
        return b""
    parts = [_u32(len(context))]
    for k, v in context_items(context):
        parts += (_u32(len(k)), k, _u32(len(v)), v)
    return b"".join(parts)


def _edk_b64(edk: EncryptedDataKey) -> bytes:
    return base64.b64encode(edk.ciphertext_blob)


def auth_fields(
    version: int,
    algorithm: int,
    context: Mapping[str, str],
    edks: Sequence[EncryptedDataKey],
    ctx_bytes: bytes | None = None,
) -> bytes:
    """The bytes the header tag authenticates (spec section 5.1)."""
    if ctx_bytes is None:
        ctx_bytes = context_bytes(context)
    parts = [_u32(version), _u32(int(algorithm)), _u32(len(context)), ctx_bytes, _u32(len(edks))]
    for arn, text in sorted((_utf8(e.key_arn, "key ARN"), _edk_b64(e)) for e in edks):
        parts += (_u32(len(arn)), arn, _u32(len(text)), text)
    return b"".join(parts)


def check_edks(edks: Sequence[EncryptedDataKey]) -> None:
    if not edks:
        raise ConfigurationError("a message needs at least one encrypted data key")
    arns = [e.key_arn for e in edks]
    if len(set(arns)) != len(arns):
        raise ConfigurationError("the encrypted data keys name the same CMK twice")


def encode_header_fields(
    version: int,
    algorithm: int,
    edks: Sequence[EncryptedDataKey],
    context: Mapping[str, str],
) -> bytes:
    """The header SEQUENCE's content before ``headerIv`` (version .. context SET)."""
    edk_set = der.der_set(
        [
            der.tlv(der.SEQUENCE, der.octet_string(_utf8(e.key_arn, "key ARN")) + der.octet_string(e.ciphertext_blob))
            for e in edks
        ]
    )
    ctx_set = der.der_set(
        [der.tlv(der.SEQUENCE, der.octet_string(k) + der.octet_string(v)) for k, v in context_items(context)]
    )
    return der.integer(version) + der.integer(int(algorithm)) + edk_set + ctx_set


def encode_header(header: MessageHeader) -> bytes:
    fields = encode_header_fields(
        header.version, header.algorithm, header.encrypted_data_keys, header.encryption_context
    )
    return der.tlv(der.SEQUENCE, fields + der.octet_string(header.header_iv) + der.octet_string(header.header_auth_tag))


def encode_body(iv: bytes, ciphertext: bytes, tag: bytes) -> bytes:
    return der.tlv(der.SEQUENCE, der.octet_string(iv) + der.octet_string(ciphertext) + der.octet_string(tag))


def encode_message(header: bytes, body: bytes) -> bytes:
    return der.tlv(der.SEQUENCE, header + body)


def _decode_utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MessageFormatError(f"{what} is not valid UTF-8") from None


def _read_header(r: der.Reader, max_edks: int) -> MessageHeader:
    start = r.pos
    h = r.enter(der.SEQUENCE, "header")
    version = h.small_uint("version")
    algorithm = algorithm_from_id(h.small_uint("algorithm id"))

    edks: list[EncryptedDataKey] = []
    seen_arns: set[str] = set()
    edk_set = h.enter(der.SET, "encrypted data keys")
    while not edk_set.at_end():
        if len(edks) >= max_edks:
            raise MessageFormatError(
                f"the message has more than {max_edks} encrypted data keys "
                "(raise max_encrypted_data_keys if this is expected)"
            )
        entry = edk_set.enter(der.SEQUENCE, "encrypted data key")
        arn = _decode_utf8(entry.octets("key ARN", MAX_ARN_BYTES), "key ARN")
        blob = entry.octets("encrypted data key", MAX_EDK_BYTES)
        entry.expect_end("encrypted data key")
        if not arn:
            raise MessageFormatError("an encrypted data key has an empty key ARN")
        if arn in seen_arns:
            raise MessageFormatError("two encrypted data keys name the same CMK")
        seen_arns.add(arn)
        edks.append(EncryptedDataKey(arn, blob))
    if not edks:
        raise MessageFormatError("the message has no encrypted data key")

    context: dict[str, str] = {}
    ctx_set = h.enter(der.SET, "encryption context")
    while not ctx_set.at_end():
        entry = ctx_set.enter(der.SEQUENCE, "context entry")
        key = _decode_utf8(entry.octets("context key"), "context key")
        value = _decode_utf8(entry.octets("context value"), "context value")
        entry.expect_end("context entry")
        if key in context:
            raise MessageFormatError("the encryption context repeats a key")
        context[key] = value

    header_iv = h.octets("header IV", 64)
    tag = h.octets("header auth tag", 64)
    h.expect_end("header")
    if len(header_iv) != 12:
        raise MessageFormatError(f"header IV is {len(header_iv)} bytes, expected 12")
    if len(tag) != 16:
        raise MessageFormatError(f"header auth tag is {len(tag)} bytes, expected 16")
    return MessageHeader(
        version,
        algorithm,
        tuple(edks),
        MappingProxyType(context),
        header_iv,
        tag,
        bytes(r.buf[start : r.pos]),
    )


def decode_message(
    data: bytes | bytearray | memoryview,
    max_encrypted_data_keys: int = DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
) -> tuple[MessageHeader, MessageBody]:
    """Parse a complete message; raises MessageFormatError on any deviation."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ConfigurationError(f"ciphertext must be bytes-like, not {type(data).__name__}")
    top = der.Reader(memoryview(data))
    msg = top.enter(der.SEQUENCE, "message")
    top.expect_end("the message")
    header = _read_header(msg, max_encrypted_data_keys)
    body = msg.enter(der.SEQUENCE, "body")
    msg.expect_end("the body")
    info = header.algorithm.info
    iv = body.octets("body IV", 64)
    ciphertext = body.octets("body ciphertext")
    tag = body.octets("body auth tag", 64)
    body.expect_end("the body auth tag")
    if len(iv) != info.iv_len:
        raise MessageFormatError(f"body IV is {len(iv)} bytes, expected {info.iv_len}")
    if len(tag) != info.tag_len:
        raise MessageFormatError(f"body auth tag is {len(tag)} bytes, expected {info.tag_len}")
    return header, MessageBody(iv, ciphertext, tag)


def decode_header(
    data: bytes | bytearray | memoryview,
    max_encrypted_data_keys: int = DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
) -> MessageHeader:
    """Parse only the header (the body must still be well formed)."""
    return decode_message(data, max_encrypted_data_keys)[0]
