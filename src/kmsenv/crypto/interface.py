"""What a crypto backend offers; the engine sees nothing else.

A *key* object holds one data key with its schedule prepared. It is not
thread-safe (the engine never shares one across threads at once) and must be
``close()``d, which wipes it.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

GCM_IV_LEN = 12
GCM_TAG_LEN = 16
BLOCK_IV_LEN = 16

# Legacy mode names, as in AlgorithmInfo.mode.
CBC = "CBC"
CBC_PKCS7 = "CBC_PKCS7"
CTR = "CTR"

#: What the sealing calls take as plaintext (a memoryview of bytes, as its nbytes).
BytesLike = bytes | bytearray | memoryview


class CipherKey(Protocol):
    def gcm_seal(self, iv: bytes, aad: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
        """Return (ciphertext, 16-byte tag)."""

    def gcm_open(self, iv: bytes, aad: bytes, ciphertext: bytes, tag: bytes) -> bytes:
        """Return the plaintext or raise AuthenticationError (nothing released)."""

    def legacy_encrypt(self, mode: str, iv: bytes, plaintext: bytes) -> bytes: ...

    def legacy_decrypt(self, mode: str, iv: bytes, ciphertext: bytes) -> bytes: ...

    def seal_one(self, header: bytes, aad: bytes, plaintext: bytes, iv: bytes) -> bytes:
        """One complete DER GCM message with an already-encoded header."""

    def open_one(self, header: bytes, aad: bytes, message: bytes) -> bytes:
        """Open one complete DER GCM message whose header TLV must equal ``header``;
        AuthenticationError / MessageFormatError, nothing released on failure."""

    def seal_messages(self, header: bytes, aad: bytes, plaintexts: Sequence[BytesLike]) -> list[bytes]:
        """Complete DER messages sharing ``header`` (see kmsenv_core.h)."""

    def open_messages(
        self, header: bytes, aad: bytes, messages: Sequence[bytes]
    ) -> tuple[list[bytes | None], list[int]]:
        """Plaintexts (None where failed) and per-message status (0, AUTH, FORMAT)."""

    def close(self) -> None: ...


class MessageParts(Protocol):
    """Where the parts of one complete DER message lie, as the caller's one
    parse found them (kmsenv.message.der.MessageLayout): offsets into the
    message and lengths. The caller has checked the whole outer layout, the
    header (which ends with its IV and tag TLVs: ``04 0c`` IV ``04 10`` tag)
    and the body IV and tag lengths; a backend uses these offsets instead of
    parsing the message again (the C core still bounds-checks what it gets)."""

    @property
    def header_start(self) -> int: ...

    @property
    def header_end(self) -> int: ...

    @property
    def iv_start(self) -> int: ...

    @property
    def iv_len(self) -> int: ...

    @property
    def ct_start(self) -> int: ...

    @property
    def ct_len(self) -> int: ...

    @property
    def tag_start(self) -> int: ...

    @property
    def tag_len(self) -> int: ...


#: A parsed header ends with 04 0c IV(12) 04 10 tag(16): its IV starts 30
#: bytes and its tag 16 bytes before the header's end.
HEADER_IV_FROM_END = GCM_IV_LEN + 2 + GCM_TAG_LEN
HEADER_TAG_FROM_END = GCM_TAG_LEN


class Backend(Protocol):
    name: str

    def seal_message(
        self,
        cipher: str,
        key: bytearray,
        fields: bytes,
        auth: bytes,
        aad: bytes,
        plaintext: BytesLike,
        ivs: bytes,
        wipe_key: bool = False,
    ) -> bytes:
        """One complete GCM message: header tag over ``auth``, header = fields +
        IV + tag, body under ``ivs[12:24]``. The key schedule is set up and
        wiped inside; with ``wipe_key`` the caller's ``key`` buffer is zeroed
        too before this returns or raises."""

    def open_message(
        self,
        cipher: str,
        key: bytearray,
        auth: bytes,
        aad: bytes,
        message: bytes,
        wipe_key: bool = False,
        parts: MessageParts | None = None,
    ) -> bytes:
        """Verify the header tag over ``auth`` then open the body (strict framing).
        ``wipe_key``: as for seal_message. ``parts``: the caller's parse of
        ``message`` (the engine always passes it); without it the backend
        walks the message's layout itself."""

    def new_key(self, cipher: str, key: bytes | bytearray) -> CipherKey: ...

    def random(self, n: int) -> bytes: ...

    def random_into(self, buf: bytearray) -> None:
        """Fill ``buf`` from the CSPRNG in place (for key material: no
        immutable copy is left behind for the caller to be unable to wipe)."""


# Per-message statuses of open_messages, equal to the C core's codes.
STATUS_OK = 0
STATUS_AUTH = -2
STATUS_FORMAT = -7


# ---------------------------------------------------------------- streaming
# Added for kmsenv.stream: framed batches, incremental GCM and HKDF. Both
# backends implement them with identical bytes.

FRAME_MSGID_LEN = 32
FRAME_MIN_SIZE = 1024
FRAME_MAX_SIZE = 16 * 1024 * 1024
FRAME_MAX_SEQ = 0xFFFFFFFE
FRAME_FINAL_MARKER = 0xFFFFFFFF
FRAME_REGULAR_OVERHEAD = 20  # u32 seq + tag
FRAME_FINAL_OVERHEAD = 28  # u32 marker + u32 seq + u32 len + tag


def frames_sealed_size(frame_size: int, inlen: int, final: bool) -> int:
    """Wire size of the frames sealed from ``inlen`` bytes (see kmsenv_core.h)."""
    full, rest = divmod(inlen, frame_size)
    if not final and rest:
        raise ValueError("without a final frame the input must be whole frames")
    return full * (frame_size + FRAME_REGULAR_OVERHEAD) + (rest + FRAME_FINAL_OVERHEAD if final else 0)


class GcmStream(Protocol):
    """Incremental GCM over one long message (see kmsenv_gcm_stream_* in kmsenv_core.h).

    In decrypt mode ``update_into`` writes UNVERIFIED plaintext: hold it back
    until ``verify`` returns."""

    def aad(self, data: bytes) -> None: ...

    def update_into(self, data: Any, out: Any) -> None:
        """Process ``data`` into ``out[:len(data)]`` (writable buffer)."""

    def final(self) -> bytes:
        """Encrypt mode: the 16-byte tag."""

    def verify(self, tag: bytes) -> None:
        """Decrypt mode: raise AuthenticationError unless ``tag`` matches."""

    def close(self) -> None: ...


class StreamBackend(Protocol):
    """What kmsenv.stream needs on top of :class:`Backend`."""

    def hkdf(self, hash_name: str, ikm: Any, salt: bytes, info: bytes, length: int) -> bytearray:
        """RFC 5869 HKDF with "SHA256" or "SM3"; the result is the caller's to wipe."""

    def frames_seal(
        self,
        cipher: str,
        key: Any,
        base_iv: bytes,
        msgid: bytes,
        first_seq: int,
        frame_size: int,
        final: bool,
        data: Any,
        out: bytearray,
        nthreads: int,
    ) -> int:
        """Seal ``data`` as frames into ``out`` (sized by frames_sealed_size); return bytes written."""

    def frames_open(
        self,
        cipher: str,
        key: Any,
        base_iv: bytes,
        msgid: bytes,
        first_seq: int,
        frame_size: int,
        data: Any,
        out: bytearray,
        nthreads: int,
    ) -> tuple[int, int, bool]:
        """Open whole frames into ``out``: (plaintext bytes, frames, final seen).

        All or nothing: on failure ``out`` is wiped and :class:`FrameBatchError`
        names the first failing frame."""

    def gcm_stream(self, cipher: str, key: Any, iv: bytes, decrypt: bool) -> GcmStream: ...


class FrameBatchError(Exception):
    """A frame batch failed; ``index`` is the first failing frame of the batch and
    ``status`` is STATUS_AUTH or STATUS_FORMAT. Internal: the stream layer turns
    it into AuthenticationError / MessageFormatError."""

    def __init__(self, status: int, index: int):
        super().__init__(f"frame batch failed at index {index} (status {status})")
        self.status = status
        self.index = index


# ---------------------------------------------------------------- columns
# Added for kmsenv.columns: whole columns in Arrow's variable-size binary
# layout, one backend call per batch (the native core reads and writes the
# buffers directly, so no Python object is made per value). The compact
# format is docs/format.md §4; both backends write identical bytes.

#: Format byte of a version 2 compact value (| COMPACT_ROW_BOUND when row-bound).
COMPACT_FORMAT = 0xC5
#: Version 1 (read only): no key commitment, no column name in the AAD.
COMPACT_FORMAT_V1 = 0xC1
COMPACT_ROW_BOUND = 0x02
COMPACT_VERSIONS = {COMPACT_FORMAT: 2, COMPACT_FORMAT_V1: 1}
COMPACT_REF_LEN = 8  # = kmsenv.keyheader.REF_LEN: the first bytes of the key header's digest
COMPACT_SEGMENT_LEN = 8
COMPACT_PREFIX_LEN = 1 + COMPACT_REF_LEN + COMPACT_SEGMENT_LEN
COMPACT_OVERHEAD = COMPACT_PREFIX_LEN + GCM_IV_LEN + GCM_TAG_LEN
COMPACT_MAX_SEGMENT = 1 << 20
COMPACT_SUBKEY_INFO = b"kmsenv/compact/v2/key"
COMPACT_SUBKEY_INFO_V1 = b"kmsenv/compact/v1/key"

#: Another status of the column calls (kmsenv_core.h): the value at `stopped`
#: is under another key header (or, for Alibaba messages, has another header).
STATUS_OTHER_KEY = -9


class ColumnView(Protocol):
    """A read-only Arrow variable-size binary column (kmsenv.columns.Column)."""

    length: int
    data: Any
    offsets: Any  # length + 1 little-endian integers of `width` bytes
    width: int  # 4 or 8
    validity: Any  # Arrow's bitmap, or None when nothing is null
    validity_offset: int

    def is_valid(self, i: int) -> bool: ...

    def value(self, i: int) -> memoryview | None: ...

    def present(self) -> int:
        """How many values are not null."""


class ColumnOutput(Protocol):
    """Output buffers of a column call (kmsenv.columns.SealedColumn): ``offsets``
    holds ``length + 1`` entries of ``width`` bytes; a call continuing at value
    ``start`` writes from the position in ``offsets[start]``."""

    length: int
    data: bytearray
    offsets: bytearray
    width: int


class ColumnBackend(Protocol):
    """What kmsenv.columns needs on top of :class:`Backend`. Statuses are
    STATUS_OK / STATUS_AUTH / STATUS_FORMAT / STATUS_OTHER_KEY; other failures raise."""

    def compact_subkey(self, version: int, cipher: str, key: Any, header_hash: bytes, segment: bytes) -> bytearray:
        """The per-segment key of a compact value (len(key) bytes); the caller wipes it."""

    def compact_seal(
        self,
        cipher: str,
        key: Any,
        header_hash: bytes,
        segment: bytes,
        name: bytes,
        col: ColumnView,
        rows: ColumnView | None,
        start: int,
        stop: int,
        ivs: bytes | None,
        out: ColumnOutput,
    ) -> None:
        """Seal values start..stop-1 of ``col`` (at most COMPACT_MAX_SEGMENT) as
        version 2 values of one segment bound to the column ``name`` (and to
        ``rows`` when given); ``ivs``: 12 bytes per value, for known answers."""

    def compact_open(
        self,
        version: int,
        cipher: str,
        key: Any,
        header_hash: bytes,
        name: bytes,
        col: ColumnView,
        rows: ColumnView | None,
        start: int,
        out: ColumnOutput,
    ) -> tuple[int, int]:
        """Open values start.. under one key header (its commitment already
        checked): (status, index it stopped at). On AUTH or FORMAT the output
        this call wrote is wiped."""

    def alibaba_column_seal(
        self,
        key: CipherKey,
        header: bytes,
        aad: bytes,
        col: ColumnView,
        new_output: Callable[[int], ColumnOutput],
    ) -> ColumnOutput:
        """Every present value as a complete message sharing the encoded
        ``header``; ``new_output(capacity)`` makes the output buffers."""

    def alibaba_column_open(
        self, key: CipherKey, header: bytes, aad: bytes, col: ColumnView, start: int, out: ColumnOutput
    ) -> tuple[int, int]:
        """Open messages start.. whose header TLV equals ``header`` (its tag
        already checked): (status, index it stopped at); OTHER_KEY for another
        header or a malformed message. On AUTH the output this call wrote is wiped."""


class FullBackend(Backend, StreamBackend, ColumnBackend, Protocol):
    """What both backends implement: messages, streams and columns."""
