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
from typing import Any, Mapping, Sequence

from .. import _process
from ..algorithms import Algorithm, algorithm_from_id
from ..arn import control_character
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
    "parse_message",
    "message_header",
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
    # Derived once per header object (parsed headers are memoized and reused).
    _derived: tuple[bytes, bytes] | None = field(default=None, init=False, repr=False, compare=False)

    def _parts(self) -> tuple[bytes, bytes]:
        derived = self._derived
        if derived is None:
            if self.version == MESSAGE_VERSION:
                _, auth, ctx_bytes = header_parts(self.algorithm, self.encrypted_data_keys, self.encryption_context)
            else:
                ctx_bytes = context_parts(self.encryption_context)[0]
                auth = auth_fields(self.version, self.algorithm, self.encryption_context, self.encrypted_data_keys)
            derived = (auth, ctx_bytes)
            object.__setattr__(self, "_derived", derived)
        return derived

    def auth_fields(self) -> bytes:
        """The bytes the header tag covers (spec section 5.1)."""
        return self._parts()[0]

    def context_bytes(self) -> bytes:
        """The context serialisation (spec section 4): the GCM body AAD."""
        return self._parts()[1]


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


class _Memo(dict[Any, Any]):
    """A small bounded memo. Headers repeat (same CMKs and context for many
    messages), so their encodings are worth keeping; the content is not secret
    (EDKs and context are stored in clear in every message)."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def put(self, key: object, value: object) -> None:
        if len(self) >= self.limit:
            self.clear()
        self[key] = value


_CTX_MEMO = _Memo(256)
_EDK_MEMO = _Memo(256)


# The last context context_parts served: a private copy and its parts.
# Consecutive messages usually carry an equal context, and comparing two
# small dicts is one C call, where the memo key (a tuple of the items) costs
# three tuple allocations and a hash: 0.8 us of a 1 KiB message. Equal dicts
# serialise alike (section 4 sorts the keys). Replaced as a whole tuple.
_LAST_CTX: tuple[dict[str, str] | None, tuple[bytes, bytes] | None] = (None, None)


def context_parts(context: Mapping[str, str]) -> tuple[bytes, bytes]:
    """(context bytes of section 4, the DER context SET) for ``context``."""
    global _LAST_CTX
    last, last_parts = _LAST_CTX
    if last_parts is not None and context == last:
        return last_parts
    key = tuple(context.items())
    parts = _CTX_MEMO.get(key)
    if parts is None:
        items = context_items(context)
        ctx_bytes = b""
        if items:
            chunks = [_u32(len(items))]
            for k, v in items:
                chunks += (_u32(len(k)), k, _u32(len(v)), v)
            ctx_bytes = b"".join(chunks)
        ctx_set = der.der_set([der.tlv(der.SEQUENCE, der.octet_string(k) + der.octet_string(v)) for k, v in items])
        parts = (ctx_bytes, ctx_set)
        _CTX_MEMO.put(key, parts)
    _LAST_CTX = (dict(key), parts)
    return parts


def context_bytes(context: Mapping[str, str]) -> bytes:
    """Context serialisation used for the header tag and as GCM body AAD."""
    return context_parts(context)[0]


def edk_parts(edks: Sequence[EncryptedDataKey]) -> tuple[bytes, bytes]:
    """(the DER EDK SET, the EDK tail of the auth fields: count + sorted entries)."""
    key = tuple(edks)
    parts = _EDK_MEMO.get(key)
    if parts is None:
        encoded = [(_utf8(e.key_arn, "key ARN"), e.ciphertext_blob) for e in edks]
        edk_set = der.der_set(
            [der.tlv(der.SEQUENCE, der.octet_string(arn) + der.octet_string(blob)) for arn, blob in encoded]
        )
        chunks = [_u32(len(encoded))]
        # The auth fields carry the base64 TEXT of each blob, sorted by ARN bytes.
        for arn, text in sorted((arn, base64.b64encode(blob)) for arn, blob in encoded):
            chunks += (_u32(len(arn)), arn, _u32(len(text)), text)
        parts = (edk_set, b"".join(chunks))
        _EDK_MEMO.put(key, parts)
    return parts


def auth_fields(
    version: int,
    algorithm: int,
    context: Mapping[str, str],
    edks: Sequence[EncryptedDataKey],
) -> bytes:
    """The bytes the header tag authenticates (spec section 5.1)."""
    return _u32(version) + _u32(int(algorithm)) + _u32(len(context)) + context_parts(context)[0] + edk_parts(edks)[1]


_PARTS_MEMO = _Memo(256)
# The last header's parts with private copies of the inputs they were made
# for. Consecutive messages usually repeat the header inputs (a cached or
# fixed data key: the very same EDK objects), and comparing a list of
# identical objects is a pointer check per element, and two small dicts one C
# call, where the memo lookup builds tuples and hashes every EDK in Python.
# Replaced as a whole tuple, so threads never see a torn entry.
_LAST_PARTS: tuple[object, list[object], dict[object, object], tuple[bytes, bytes, bytes] | None] = (
    None,
    [],
    {},
    None,
)


def header_parts(
    algorithm: int, edks: Sequence[EncryptedDataKey], context: Mapping[str, str]
) -> tuple[bytes, bytes, bytes]:
    """(header fields before the IV, auth fields, context bytes) for a version-1
    header: everything about a header that does not depend on the IV or key.
    Raises ConfigurationError for an empty or duplicate EDK list or a context
    that is not str to str (only valid parts are memoized)."""
    global _LAST_PARTS
    last_alg, last_edks, last_ctx, last_parts = _LAST_PARTS
    # A list equals only a list: EDKs given as a tuple take the memo below.
    if last_parts is not None and last_alg is algorithm and last_edks == edks and last_ctx == context:
        return last_parts
    edks_key = tuple(edks)
    ctx_key = tuple(context.items())
    key = (algorithm, edks_key, ctx_key)
    parts = _PARTS_MEMO.get(key)
    if parts is None:
        check_edks(edks)
        parts = (
            encode_header_fields(MESSAGE_VERSION, algorithm, edks, context),
            auth_fields(MESSAGE_VERSION, algorithm, context, edks),
            context_parts(context)[0],
        )
        _PARTS_MEMO.put(key, parts)
    _LAST_PARTS = (algorithm, list(edks_key), dict(ctx_key), parts)
    return parts


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
    return der.integer(version) + der.integer(int(algorithm)) + edk_parts(edks)[0] + context_parts(context)[1]


def encode_header(header: MessageHeader) -> bytes:
    fields = encode_header_fields(
        header.version, header.algorithm, header.encrypted_data_keys, header.encryption_context
    )
    return der.header_tlv(fields, header.header_iv, header.header_auth_tag)


def encode_body(iv: bytes, ciphertext: bytes, tag: bytes) -> bytes:
    return der.body_tlv(iv, ciphertext, tag)


def encode_message(header: bytes, body: bytes) -> bytes:
    return der.message_tlv(header, body)


def _decode_utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MessageFormatError(f"{what} is not valid UTF-8") from None


def read_header_fields(
    h: der.Reader, max_edks: int
) -> tuple[int, Algorithm, tuple[EncryptedDataKey, ...], Mapping[str, str]]:
    """(version, algorithm, EDKs, context): the header fields before its IV,
    read strictly (also the body of a compact-format key header)."""
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
        bad = control_character(arn)
        if bad:  # as the stream codecs: no real ARN has one, and it would reach a terminal
            raise MessageFormatError(f"a key ARN contains the control character {bad}")
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

    return version, algorithm, tuple(edks), MappingProxyType(context)


def _read_header(r: der.Reader, max_edks: int) -> MessageHeader:
    start = r.pos
    h = r.enter(der.SEQUENCE, "header")
    version, algorithm, edks, context = read_header_fields(h, max_edks)
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
        edks,
        context,
        header_iv,
        tag,
        bytes(r.buf[start : r.pos]),
    )


# (body IV length, body tag length) per algorithm: read per message.
_BODY_LENS = {a: (a.info.iv_len, a.info.tag_len) for a in Algorithm}


def _checked_body(header: MessageHeader, layout: der.MessageLayout) -> None:
    """The body IV and tag lengths the header's algorithm requires."""
    iv_len, tag_len = _BODY_LENS[header.algorithm]
    if layout.iv_len != iv_len:
        raise MessageFormatError(f"body IV is {layout.iv_len} bytes, expected {iv_len}")
    if layout.tag_len != tag_len:
        raise MessageFormatError(f"body auth tag is {layout.tag_len} bytes, expected {tag_len}")


def _layout(data: bytes | bytearray | memoryview, max_edks: int) -> der.MessageLayout:
    """der.message_layout, its errors in a header-first reader's order: a
    message whose header is malformed inside is refused for that, whatever
    its body (the walker checks the body's framing before anyone reads the
    header)."""
    try:
        return der.message_layout(data)
    except MessageFormatError:
        # Walked again (it raises again) only to put a header error first.
        return der.message_layout(data, lambda header: _read_header(header, max_edks))


def decode_message(
    data: bytes | bytearray | memoryview,
    max_encrypted_data_keys: int = DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
) -> tuple[MessageHeader, MessageBody]:
    """Parse a complete message; raises MessageFormatError on any deviation."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ConfigurationError(f"ciphertext must be bytes-like, not {type(data).__name__}")
    view = data if type(data) is bytes else memoryview(data)
    layout = _layout(view, max_encrypted_data_keys)
    header = _read_header(der.Reader(view, layout.header_start, layout.header_end), max_encrypted_data_keys)
    _checked_body(header, layout)
    iv, ct, tag = layout.iv_start, layout.ct_start, layout.tag_start
    return header, MessageBody(
        bytes(view[iv : iv + layout.iv_len]),
        bytes(view[ct : ct + layout.ct_len]),
        bytes(view[tag : tag + layout.tag_len]),
    )


_HEADER_MEMO = _Memo(256)
_MEMO_HEADER_MAX = 4096  # keep the memo small: only headers of ordinary size


# The most recently parsed header: (header TLV, max EDKs, header). Messages of
# one data key (encrypt_many, a repeated read) share their header TLV, and
# ``bytes.startswith`` at an offset compares it in place, without the slice
# and hash a memo lookup costs. Replaced as a whole tuple, so threads never
# see a torn entry.
_LAST_HEADER: tuple[bytes, int, MessageHeader | None] = (b"", -1, None)

# The shape of the most recently parsed message: (its length, max EDKs, its
# bytes up to the body IV (framing, header, body and IV heads), its
# ciphertext head, header, layout). The layout walk reads only the total
# length and the framing bytes, so a message of the same length whose bytes
# up to the IV, ciphertext head and tag head are the same has the same
# layout and header: in-place comparisons instead of a walk (messages of one
# data key and one size, a repeated read). Replaced as a whole tuple, as above.
_LastShape = tuple[int, int, bytes, bytes, MessageHeader, der.MessageLayout]
_LAST_SHAPE: _LastShape | None = None


def parse_message(
    data: bytes | bytearray | memoryview,
    max_encrypted_data_keys: int = DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
) -> tuple[MessageHeader, der.MessageLayout]:
    """The header of a complete message and where its body parts lie: the
    outer layout walked once (exact length, nothing trailing, the body's
    three fields, their lengths checked against the header's algorithm), the
    header parsed strictly. The body is not copied: a backend opens it where
    it lies, from the layout.

    Parsed headers are immutable records, memoized by their bytes (messages
    of one batch share them) and, through their fields, by everything before
    the header IV (every message under one data key shares that). This runs
    per message: its steps are inlined."""
    global _LAST_HEADER, _LAST_SHAPE
    shape = _LAST_SHAPE
    if shape is not None and type(data) is bytes:
        length, max_edks, prefix, ct_head, header, layout = shape
        tag_at = layout[6] - 2  # tag_start - 2: where the tag's 04 <len> is
        if (
            length == len(data)
            and max_edks == max_encrypted_data_keys
            and data.startswith(prefix)
            and data.startswith(ct_head, layout[2] + layout[3])
            and data[tag_at] == der.OCTET_STRING
            and data[tag_at + 1] == layout[7]
        ):
            return header, layout
    try:
        layout = der.message_layout(data)
    except MessageFormatError:
        layout = _layout(data, max_encrypted_data_keys)  # raises, a header error first
    hstart, hend, iv_start, iv_len, ct_start, _, _, tag_len = layout
    last_raw, last_max, last = _LAST_HEADER
    if (
        last is not None
        and last_max == max_encrypted_data_keys
        and len(last_raw) == hend - hstart
        and type(data) is bytes
        and data.startswith(last_raw, hstart)
    ):
        header = last
    else:
        raw = bytes(data[hstart:hend])
        key = (raw, max_encrypted_data_keys)
        found: MessageHeader | None = _HEADER_MEMO.get(key)
        header = found if found is not None else _header_from_fields(raw, max_encrypted_data_keys)
        if found is None and len(raw) <= _MEMO_HEADER_MAX:
            _HEADER_MEMO.put(key, header)
        if len(raw) <= _MEMO_HEADER_MAX:
            _LAST_HEADER = (raw, max_encrypted_data_keys, header)
    if _BODY_LENS[header.algorithm] != (iv_len, tag_len):
        _checked_body(header, layout)  # raises, saying which
    if type(data) is bytes and hend - hstart <= _MEMO_HEADER_MAX:
        _LAST_SHAPE = (
            len(data),
            max_encrypted_data_keys,
            data[:iv_start],
            data[iv_start + iv_len : ct_start],
            header,
            layout,
        )
    return header, layout


def message_header(
    data: bytes | bytearray | memoryview,
    max_encrypted_data_keys: int = DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
) -> MessageHeader:
    """Parse the header of a complete message (the whole outer layout checked,
    as :func:`parse_message` does)."""
    return parse_message(data, max_encrypted_data_keys)[0]


# Parsed header fields (version .. context SET) by their bytes. Every message
# has its own header IV and tag, so whole headers repeat only within a batch;
# the fields repeat for every message under one data key, and parsing them
# (EDKs, context, auth fields with base64) is most of a small message's cost.
_FIELDS_MEMO = _Memo(256)
_IV_TAG_LEN = 2 + 12 + 2 + 16  # 04 0c iv(12) 04 10 tag(16): the header's last 32 bytes


def _header_from_fields(raw: bytes, max_edks: int) -> MessageHeader:
    """Parse a header TLV, reusing the parsed fields of an earlier header with
    the same field bytes. Equivalent to the strict reader: the fields parse
    consumed exactly those bytes before, and the rest must be exactly a
    12-byte IV and a 16-byte tag, as the strict reader requires."""
    if len(raw) > _MEMO_HEADER_MAX or len(raw) < 2 + _IV_TAG_LEN:
        return _read_header(der.Reader(raw), max_edks)
    first = raw[1]
    content = 2 if first < 0x80 else 2 + (first & 0x7F)
    tail = len(raw) - _IV_TAG_LEN
    if tail < content or raw[tail] != 0x04 or raw[tail + 1] != 12 or raw[tail + 14] != 0x04 or raw[tail + 15] != 16:
        return _read_header(der.Reader(raw), max_edks)
    fields_key = (raw[content:tail], max_edks)
    proto = _FIELDS_MEMO.get(fields_key)
    if proto is None:
        header = _read_header(der.Reader(raw), max_edks)  # strict, raises on anything wrong
        _FIELDS_MEMO.put(fields_key, header)
        return header
    header = MessageHeader(
        proto.version,
        proto.algorithm,
        proto.encrypted_data_keys,
        proto.encryption_context,
        raw[tail + 2 : tail + 14],
        raw[tail + 16 :],
        raw,
    )
    # The auth fields and context bytes depend on the fields only.
    object.__setattr__(header, "_derived", proto._parts())
    return header


def decode_header(
    data: bytes | bytearray | memoryview,
    max_encrypted_data_keys: int = DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
) -> MessageHeader:
    """Parse only the header (the body must still be well formed)."""
    return decode_message(data, max_encrypted_data_keys)[0]


def _forget_after_fork() -> None:
    # Only public header bytes live here, but a child starts clean like every
    # other per-process memo (nothing it parses relies on its parent's).
    global _LAST_CTX, _LAST_PARTS, _LAST_HEADER, _LAST_SHAPE
    for memo in (_CTX_MEMO, _EDK_MEMO, _PARTS_MEMO, _HEADER_MEMO, _FIELDS_MEMO):
        memo.clear()
    _LAST_CTX = (None, None)
    _LAST_PARTS = (None, [], {}, None)
    _LAST_HEADER = (b"", -1, None)
    _LAST_SHAPE = None


_process.register(
    __name__,
    (
        "_CTX_MEMO",
        "_EDK_MEMO",
        "_PARTS_MEMO",
        "_HEADER_MEMO",
        "_FIELDS_MEMO",
        "_LAST_CTX",
        "_LAST_PARTS",
        "_LAST_HEADER",
        "_LAST_SHAPE",
    ),
    _forget_after_fork,
)
