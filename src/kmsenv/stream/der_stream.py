"""The official SDKs' one-shot message (one DER SEQUENCE, spec sections 3-6)
written and read through the stream API with bounded memory.

DER puts every length before its content, so the writer must know the
plaintext length before the first byte goes out (GCM: ciphertext length =
plaintext length). It knows it for a regular file opened with ``open()``
(its size minus the current position) and for an ``io.BytesIO``; it checks
that exactly that many bytes were read and raises :class:`InputChangedError`
otherwise, before the body tag (the message's last bytes) is written, so
the partial output is an unreadable, truncated message. For any other input
(a pipe, a socket, a wrapper object, ``kmsenv.open(..., "wb")``) it logs one
INFO line (:data:`UNKNOWN_LENGTH_NOTE`, logger ``"kmsenv"``) and encrypts
into a private spool of *ciphertext* (the alibaba-stream decryption's spool:
memory up to 4 MiB, then an anonymous 0600 file), then writes the header,
the spooled ciphertext and the tag. No plaintext ever reaches a file.

The reader parses the header TLV from the stream with every length bounded,
authenticates the header before anything else, then, as the alibaba-stream
reader does, makes two passes over the body: pass 1 reads the input once,
GHASHes the ciphertext into a private spool and verifies the tag (and checks
for truncation and trailing bytes); pass 2 decrypts from the spool, never
from the input again. Legacy CBC/CTR messages (nothing to verify) are read
whole, as before, and decrypted by :func:`kmsenv.decrypt`.
"""

from __future__ import annotations

import io
import logging
import os
import stat
from types import MappingProxyType
from typing import Any, Mapping

from .._wipe import wipe
from ..algorithms import Algorithm
from ..crypto import get_backend
from .._envelope import (
    BackendKey,
    build_header,
    check_expected_context,
    check_new_algorithm,
    context_bytes_for_encrypt,
    generate,
    unwrap,
    verify_header,
)
from ..engine import decrypt as _decrypt_message
from ..exceptions import ConfigurationError, InputChangedError, KmsEnvError, MessageFormatError
from ..message import der
from ..message.codec import MAX_ARN_BYTES, MAX_EDK_BYTES, MESSAGE_VERSION, MessageHeader, _read_header
from ..model import DataKeyProvider
from . import _rand, alibaba_stream
from ._io import Source, pump, write_all
from .alibaba_stream import VerifiedRelease, _Spool

__all__ = ["UNKNOWN_LENGTH_NOTE", "DerEncryptor", "InputChangedError", "encrypt", "input_length", "open_message"]

logger = logging.getLogger("kmsenv")

UNKNOWN_LENGTH_NOTE = (
    "the input's length is not known in advance (not a regular file), so the alibaba format's DER lengths "
    "cannot be written first: spooling the ciphertext to a private temporary file"
)

CHUNK = alibaba_stream.CHUNK
IV_LEN = 12
TAG_LEN = 16
# der.Reader (and so every kmsenv reader) takes lengths of at most 4 octets.
MAX_DER_LENGTH = 2**32 - 1
# The tag TLV that ends a GCM body: 04 10 <16 bytes>.
_TAG_TLV_LEN = 2 + TAG_LEN
# A header's DER can hold max_edks EDKs of at most an ARN and a blob each
# (plus their TLV framing) and a context; the context's DER is ~1.5x its
# 32 KiB serialisation at most for what Java can read, 1 MiB leaves room
# for what the Python SDK may write.
_EDK_ENTRY_MAX = MAX_ARN_BYTES + MAX_EDK_BYTES + 32
_CONTEXT_DER_MAX = 1 << 20


# ------------------------------------------------------------------ encrypt


def input_length(f: Any) -> int | None:
    """The bytes left to read in ``f`` when they can be known before reading:
    a regular file opened with ``open()`` (an ``io.FileIO``, or a buffered
    reader over one): its size minus its position. None for anything else,
    including subclasses and wrappers (``gzip.GzipFile`` also has a
    ``fileno()``, of the compressed file) and files reporting size 0 (procfs
    and sysfs files are regular files of size 0 with content)."""
    raw = f.raw if type(f) in (io.BufferedReader, io.BufferedRandom) else f
    if type(raw) is not io.FileIO:
        return None
    try:
        st = os.fstat(raw.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return None
        position: int = f.tell()
    except (OSError, ValueError):  # closed, or not seekable after all
        return None
    return max(0, st.st_size - position)


def _body_prefix(header_tlv: bytes, body_iv: bytes, ct_len: int) -> bytes:
    """Everything before the ciphertext (der.message_prefix), refused when the
    message's lengths would not fit DER's 4 length octets."""
    if der.outer_length(len(header_tlv), len(body_iv), ct_len, TAG_LEN) > MAX_DER_LENGTH:
        raise ConfigurationError(
            f"an input of {ct_len} bytes is too large for one alibaba (DER) message, whose lengths stop at 4 GiB: "
            "use the framed or alibaba-stream format"
        )
    return der.message_prefix(header_tlv, body_iv, ct_len, TAG_LEN)


class DerEncryptor:
    """Push-style writer of one DER message (GCM algorithms only).

    With ``length`` known, the header and the body's lengths are written at
    once and the ciphertext follows as it is made; exactly ``length`` bytes
    must then be written (else :class:`InputChangedError`). With ``length``
    None, the ciphertext goes to a private spool (in ``spool_dir`` if it can,
    else the temp dir) and everything is written at :meth:`close`."""

    def __init__(
        self,
        dst: Any,
        provider: DataKeyProvider,
        *,
        encryption_context: Mapping[str, str],
        algorithm: Algorithm,
        length: int | None,
        spool_dir: str | None = None,
    ):
        check_new_algorithm(algorithm, what="the alibaba format through encrypt_stream", error=ConfigurationError)
        ctx_bytes = context_bytes_for_encrypt(encryption_context)
        if length is not None and length > MAX_DER_LENGTH:
            _body_prefix(b"", b"", length)  # raises, saying why (before any KMS call)
        self._dst = dst
        self._length = length
        self._spool: _Spool | None = None
        self._gcm: Any = None
        self._closed = False
        self._out = bytearray(CHUNK)
        self.bytes_in = 0
        self.bytes_out = 0
        data_key = generate(provider, algorithm, encryption_context, length or 0)
        try:
            # One draw of 24 bytes split as the one-shot encrypt splits its
            # pair (header IV, body IV): a test substituting _rand.random_bytes
            # and engine._iv_pair alike gets the very bytes kmsenv.encrypt makes.
            ivs = _rand.random_bytes(2 * IV_LEN)
            header_iv, self._body_iv = ivs[:IV_LEN], ivs[IV_LEN:]
            edks = tuple(data_key.encrypted_data_keys)
            with BackendKey(algorithm, data_key.plaintext) as key:
                self._header_tlv = build_header(key, algorithm, edks, encryption_context, header_iv)
            ctx = MappingProxyType(dict(encryption_context))
            tag = self._header_tlv[-TAG_LEN:]
            self.header = MessageHeader(MESSAGE_VERSION, algorithm, edks, ctx, header_iv, tag, self._header_tlv)
            backend: Any = get_backend()
            self._gcm = backend.gcm_stream(algorithm.info.cipher, data_key.plaintext, self._body_iv, False)
        finally:
            data_key.wipe()
        try:
            self._gcm.aad(ctx_bytes)
            if length is None:
                logger.info(UNKNOWN_LENGTH_NOTE)
                self._spool = _Spool(spool_dir, alibaba_stream.SPOOL_MEMORY)
            else:
                self._emit(_body_prefix(self._header_tlv, self._body_iv, length))
        except BaseException:
            self.abort()
            raise

    def _emit(self, data: Any) -> None:
        write_all(self._dst, data)
        self.bytes_out += len(data)

    def _take(self, n: int) -> None:
        """Count ``n`` more input bytes, refusing more than the message can hold."""
        total = self.bytes_in + n
        if self._length is not None and total > self._length:
            raise InputChangedError(
                f"the input yielded more than the {self._length} bytes its size announced (it grew while it was "
                "being encrypted); the output is incomplete and unreadable"
            )
        if total > MAX_DER_LENGTH:
            _body_prefix(b"", b"", total)  # raises: no DER message can hold it
        self.bytes_in = total

    def write(self, data: Any) -> int:
        if self._closed:
            raise ValueError("write to a closed kmsenv stream")
        view = memoryview(data).cast("B")
        self._take(len(view))
        for pos in range(0, len(view), CHUNK):
            piece = view[pos : pos + CHUNK]
            out = memoryview(self._out)[: len(piece)]
            self._gcm.update_into(piece, out)
            if self._spool is not None:
                self._spool.write(out)  # ciphertext only: nothing secret touches the file
            else:
                self._emit(out)
        return len(view)

    def close(self) -> None:
        """Finish the message: check the length, then write the tag (and, for
        an unknown length, everything before it)."""
        if self._closed:
            return
        try:
            if self._length is not None and self.bytes_in != self._length:
                raise InputChangedError(
                    f"the input ended after {self.bytes_in} of the {self._length} bytes its size announced (it "
                    "shrank while it was being encrypted); the output is incomplete and unreadable"
                )
            tag = self._gcm.final()
            if self._spool is not None:
                self._emit(_body_prefix(self._header_tlv, self._body_iv, self.bytes_in))
                self._copy_spool(self._spool)
            self._emit(der.octet_string(tag))
        finally:
            self.abort()

    def _copy_spool(self, spool: _Spool) -> None:
        spool.rewind()
        view = memoryview(self._out)
        left = self.bytes_in
        while left:
            n = spool.readinto(view[: min(CHUNK, left)])
            if n == 0:  # our own file lost bytes: the message would be short
                raise KmsEnvError("the ciphertext spool ended early")
            self._emit(view[:n])
            left -= n

    def abort(self) -> None:
        """Stop without completing the message (the output stays truncated)."""
        self._closed = True
        gcm, self._gcm = self._gcm, None
        spool, self._spool = self._spool, None
        try:
            if gcm is not None:
                gcm.close()
        finally:
            if spool is not None:
                spool.close()


def encrypt(
    source: Source,
    dst: Any,
    provider: DataKeyProvider,
    *,
    encryption_context: Mapping[str, str],
    algorithm: Algorithm,
    spool_dir: str | None,
) -> tuple[MessageHeader, int]:
    """``encrypt_stream(format="alibaba")``: (header, bytes written)."""
    memory = source.memory()  # an io.BytesIO: sealed where it lies
    length = len(memory) if memory is not None else input_length(source.f)
    enc = DerEncryptor(
        dst,
        provider,
        encryption_context=encryption_context,
        algorithm=algorithm,
        length=length,
        spool_dir=spool_dir,
    )
    try:
        if memory is not None:
            with memory:
                for pos in range(0, len(memory), CHUNK):
                    piece = memory[pos : pos + CHUNK]
                    enc.write(piece)
                    source.advance(len(piece))
        else:
            pump(source, enc.write)
        enc.close()
    except BaseException:
        enc.abort()
        raise
    return enc.header, enc.bytes_out


# ------------------------------------------------------------------ decrypt


def _read_tl(src: Source, tag: int, what: str) -> tuple[int, bytes]:
    """(content length, the tag and length bytes) of a DER TLV read from the
    stream, with der.Reader's rules (der.read_tl)."""
    return der.read_tl(src.read_exact, tag, what)


def _fits(length: int, room: int, what: str) -> None:
    """A TLV's content must fit in what is left of its container (as der.Reader checks)."""
    if length > room:
        raise MessageFormatError(f"truncated message: {what} claims {length} bytes but only {max(0, room)} remain")


def _room_for_tl(room: int, what: str) -> None:
    """A container with less than 2 bytes left holds no further TLV: say so
    before reading one from the stream (the bytes after it are not its own)."""
    if room < 2:
        raise MessageFormatError(f"truncated message: {what} is missing")


class _Layout:
    """The body's lengths, read before any KMS call: the ciphertext length and
    the IV; the tag TLV's place is then fixed by the body's own length."""

    def __init__(self, src: Source, header: MessageHeader, room: int):
        _room_for_tl(room, "body")
        body_len, head = _read_tl(src, der.SEQUENCE, "body")
        _fits(body_len, room - len(head), "body")
        if len(head) + body_len != room:
            raise MessageFormatError(f"{room - len(head) - body_len} unexpected bytes after the body")
        info = header.algorithm.info
        _room_for_tl(body_len, "body IV")
        iv_len, iv_head = _read_tl(src, der.OCTET_STRING, "body IV")
        _fits(iv_len, body_len - len(iv_head), "body IV")
        if iv_len != info.iv_len:
            raise MessageFormatError(f"body IV is {iv_len} bytes, expected {info.iv_len}")
        self.iv = src.read_exact(iv_len, "body IV")
        left = body_len - len(iv_head) - iv_len
        _room_for_tl(left, "body ciphertext")
        ct_len, ct_head = _read_tl(src, der.OCTET_STRING, "body ciphertext")
        _fits(ct_len, left - len(ct_head), "body ciphertext")
        left -= len(ct_head) + ct_len
        # The one thing the body still holds is the tag: 04 10 and 16 bytes.
        if left < 2:
            raise MessageFormatError("truncated message: body auth tag is missing")
        if left != 2 + info.tag_len:
            raise MessageFormatError(f"body auth tag is {left - 2} bytes, expected {info.tag_len}")
        self.ct_len = ct_len


def _check_tag_tlv(tlv: bytes) -> bytes:
    if tlv[0] != der.OCTET_STRING:
        raise MessageFormatError(f"body auth tag: expected tag 0x04, found 0x{tlv[0]:02x}")
    if tlv[1] != TAG_LEN:
        raise MessageFormatError("body auth tag: its length does not match the body's")
    return tlv[2:]


class DerDecryptor(VerifiedRelease):
    """Pull-style reader of one GCM DER message: the header tag, then the
    whole body's tag, verify before the first byte of plaintext is returned."""

    def __init__(
        self,
        src: Source,
        provider: DataKeyProvider,
        header: MessageHeader,
        room: int,
        *,
        expected_encryption_context: Mapping[str, str] | None,
        spool_dir: str | None,
    ):
        layout = _Layout(src, header, room)
        check_expected_context(header.encryption_context, expected_encryption_context)
        self.header = header
        self._src = src
        self._iv = layout.iv
        self._ct_len = self._left = layout.ct_len
        self._spool: _Spool | None = None
        self._snapshot: memoryview | None = None
        self._gcm: Any = None
        self._buf = bytearray(CHUNK)
        self._out = bytearray(CHUNK)
        self.bytes_out = 0
        self._key = unwrap(provider, header)
        try:
            with BackendKey(header.algorithm, self._key) as key:
                verify_header(key, header)
            self._verify_pass(spool_dir)
        except BaseException:
            self.close()
            raise

    def _hash_snapshot(self, gcm: Any, memory: memoryview) -> bytes:
        """An exact io.BytesIO: its bytes object is immutable (a later write
        copies it first), so pass 2 reads the same view; nothing is spooled."""
        need = self._ct_len + _TAG_TLV_LEN
        if len(memory) < need:
            raise MessageFormatError(
                f"truncated message: the body claims {need} more bytes but only {len(memory)} remain"
            )
        if len(memory) > need:
            raise MessageFormatError("trailing data after the message")
        tag = _check_tag_tlv(bytes(memory[self._ct_len :]))
        self._src.advance(need)
        self._snapshot = memory[: self._ct_len]
        for pos in range(0, self._ct_len, CHUNK):
            gcm.update_into(self._snapshot[pos : pos + CHUNK], self._out)
        return tag

    def _hash_and_spool(self, gcm: Any, spool: _Spool) -> bytes:
        """Read the ciphertext once, into the spool, hashing it; then the tag."""
        view = memoryview(self._buf)
        left = self._ct_len
        while left:
            piece = view[: min(CHUNK, left)]
            n = self._src.readinto(piece)
            if n != len(piece):
                raise MessageFormatError("truncated message: body ciphertext is cut off")
            spool.write(piece)
            gcm.update_into(piece, self._out)
            left -= n
        tag = _check_tag_tlv(self._src.read_exact(_TAG_TLV_LEN, "body auth tag"))
        if not self._src.at_eof():
            raise MessageFormatError("trailing data after the message")
        return tag

    def close(self) -> None:
        gcm, self._gcm = self._gcm, None
        spool, self._spool = self._spool, None
        self._snapshot = None
        try:
            if gcm is not None:
                gcm.close()
            if spool is not None:
                spool.close()
        finally:
            wipe(self._key)
            wipe(self._out)


class _WholeLegacyMessage:
    """A legacy CBC/CTR message (nothing authenticates its body, so nothing
    to verify first): read whole and opened by kmsenv.decrypt, as before."""

    def __init__(self, data: bytes, provider: DataKeyProvider, **kw: Any):
        result = _decrypt_message(data, provider, **kw)
        self.header = result.header
        self._pt: bytes | None = result.plaintext
        self.bytes_out = len(result.plaintext)

    def read_chunk(self) -> memoryview | None:
        pt, self._pt = self._pt, None
        return memoryview(pt) if pt is not None else None

    def close(self) -> None:
        self._pt = None


def _header_limit(max_encrypted_data_keys: int) -> int:
    return max_encrypted_data_keys * _EDK_ENTRY_MAX + _CONTEXT_DER_MAX


def read_header(src: Source, max_encrypted_data_keys: int, limit: int) -> tuple[int, bytes, bytes, MessageHeader]:
    """(outer content length, the outer tag and length bytes, the header TLV,
    the header) of a DER message read from ``src``: every length checked
    against its container, and the header's against ``limit``, before it is
    read."""
    outer_len, outer_head = _read_tl(src, der.SEQUENCE, "message")
    _room_for_tl(outer_len, "header")
    header_len, header_head = _read_tl(src, der.SEQUENCE, "header")
    _fits(header_len, outer_len - len(header_head), "header")
    if header_len > limit:
        raise MessageFormatError(
            f"the header is {header_len} bytes, more than {max_encrypted_data_keys} encrypted data keys and a "
            "context can fill (raise max_encrypted_data_keys if this is expected)"
        )
    header_tlv = header_head + src.read_exact(header_len, "header")
    return outer_len, outer_head, header_tlv, _read_header(der.Reader(header_tlv), max_encrypted_data_keys)


def open_message(
    src: Source,
    provider: DataKeyProvider,
    *,
    expected_encryption_context: Mapping[str, str] | None,
    allow_unauthenticated: bool,
    max_encrypted_data_keys: int,
    spool_dir: str | None,
) -> DerDecryptor | _WholeLegacyMessage:
    """Read a DER message's header from ``src`` (every length checked against
    its container and a bound before anything is allocated) and return its
    decryptor: bounded for GCM, whole for legacy CBC/CTR."""
    outer_len, outer_head, header_tlv, header = read_header(
        src, max_encrypted_data_keys, _header_limit(max_encrypted_data_keys)
    )
    room = outer_len - len(header_tlv)  # what the body must fill exactly
    if header.algorithm.authenticated:
        return DerDecryptor(
            src,
            provider,
            header,
            room,
            expected_encryption_context=expected_encryption_context,
            spool_dir=spool_dir,
        )
    # Legacy: read whole, then kmsenv.decrypt decides in its own order (the
    # whole message's framing, the context, allow_unauthenticated, the key).
    data = outer_head + header_tlv + src.read_exact(room, "message")
    if not src.at_eof():
        raise MessageFormatError("trailing data after the message")
    return _WholeLegacyMessage(
        data,
        provider,
        expected_encryption_context=expected_encryption_context,
        allow_unauthenticated=allow_unauthenticated,
        max_encrypted_data_keys=max_encrypted_data_keys,
    )
