"""The Java Encryption SDK's stream layout (spec section 7), read and written.

The body is one GCM message whose single tag sits at the very end, so a
reader cannot know a byte is genuine before it has seen them all. Decryption
therefore makes two passes: the first only verifies the tag (re-reading a
seekable input, else spooling the ciphertext to a temporary file), the second
decrypts and releases plaintext, and re-checks the tag at its end.
"""

from __future__ import annotations

import base64
import binascii
import struct
import tempfile
from types import MappingProxyType
from typing import Any, Mapping

from .._wipe import wipe
from ..algorithms import Algorithm, algorithm_from_id
from ..crypto import get_backend
from ..engine import _context_bytes_for_encrypt, _generate, _Key, _unwrap
from ..exceptions import AuthenticationError, MessageFormatError, UnsupportedAlgorithmError
from ..message.codec import (
    MAX_ARN_BYTES,
    MAX_CONTEXT_BYTES,
    MAX_EDK_BYTES,
    MessageHeader,
    auth_fields,
    check_edks,
    context_bytes,
)
from ..model import DataKeyProvider, EncryptedDataKey
from . import _rand
from ._io import Source, check_edk_count, decode_arn, parse_context_bytes, write_all

VERSION = 1
TAG_LEN = 16
IV_LEN = 12
CHUNK = 1024 * 1024
# Spooled copies of non-seekable input stay in memory up to this size.
SPOOL_MEMORY = 4 * 1024 * 1024
_MAX_EDK_TEXT = (MAX_EDK_BYTES + 2) // 3 * 4

_u32 = struct.Struct(">I")
_u32le = struct.Struct("<I")


def encode_header(header: MessageHeader, body_iv: bytes) -> bytes:
    ctx = context_bytes(header.encryption_context)
    parts = [_u32.pack(VERSION), _u32.pack(int(header.algorithm)), _u32.pack(len(ctx)), ctx]
    parts.append(_u32.pack(len(header.encrypted_data_keys)))
    # Java writes them in ascending key-id byte order (a TreeSet).
    for arn, text in sorted(
        (e.key_arn.encode("utf-8"), base64.b64encode(e.ciphertext_blob)) for e in header.encrypted_data_keys
    ):
        parts += [_u32.pack(len(arn)), arn, _u32.pack(len(text)), text]
    parts += [_u32.pack(len(header.header_iv)), header.header_iv, _u32.pack(len(header.header_auth_tag))]
    parts += [header.header_auth_tag, _u32le.pack(len(body_iv)), body_iv]
    return b"".join(parts)


def read_header(src: Source, max_encrypted_data_keys: int) -> tuple[MessageHeader, bytes]:
    """(header, body IV); every length field is bounded before it is used."""
    version = src.u32("version")
    if version != VERSION:
        raise MessageFormatError(f"unsupported stream version {version}")
    alg = algorithm_from_id(src.u32("algorithm id"))
    ctx_len = src.u32("context length")
    if ctx_len > MAX_CONTEXT_BYTES:
        raise MessageFormatError(f"encryption context of {ctx_len} bytes exceeds {MAX_CONTEXT_BYTES}")
    ctx = parse_context_bytes(src.read_exact(ctx_len, "encryption context"))
    count = src.u32("EDK count")
    check_edk_count(count, max_encrypted_data_keys)
    edks: list[EncryptedDataKey] = []
    for _ in range(count):
        arn_len = src.u32("key ARN length")
        if not 0 < arn_len <= MAX_ARN_BYTES:
            raise MessageFormatError(f"key ARN length {arn_len} is outside 1..{MAX_ARN_BYTES}")
        arn = decode_arn(src.read_exact(arn_len, "key ARN"))
        text_len = src.u32("EDK length")
        if not 0 < text_len <= _MAX_EDK_TEXT:
            raise MessageFormatError(f"encrypted data key text of {text_len} bytes is out of range")
        text = src.read_exact(text_len, "encrypted data key")
        try:
            blob = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise MessageFormatError("an encrypted data key is not valid base64") from None
        # The header tag covers the text; only the canonical spelling round-trips.
        if base64.b64encode(blob) != text:
            raise MessageFormatError("an encrypted data key is not canonical base64")
        edks.append(EncryptedDataKey(arn, blob))
    arns = [e.key_arn for e in edks]
    if arns != sorted(arns, key=lambda a: a.encode("utf-8")) or len(set(arns)) != len(arns):
        raise MessageFormatError("encrypted data keys are not in ascending, distinct key-id order")
    if src.u32("header IV length") != IV_LEN:
        raise MessageFormatError("header IV must be 12 bytes")
    header_iv = src.read_exact(IV_LEN, "header IV")
    if src.u32("header tag length") != TAG_LEN:
        raise MessageFormatError("header auth tag must be 16 bytes")
    tag = src.read_exact(TAG_LEN, "header auth tag")
    iv_len = _u32le.unpack(src.read_exact(4, "body IV length"))[0]
    if iv_len != alg.info.iv_len:
        raise MessageFormatError(f"body IV is {iv_len} bytes, expected {alg.info.iv_len}")
    body_iv = src.read_exact(iv_len, "body IV")
    header = MessageHeader(version, alg, tuple(edks), ctx, header_iv, tag, b"")
    return header, body_iv


class AlibabaStreamEncryptor:
    """Push-style writer of the Java stream layout (GCM algorithms only)."""

    def __init__(
        self,
        dst: Any,
        provider: DataKeyProvider,
        *,
        encryption_context: Mapping[str, str],
        algorithm: Algorithm,
    ):
        if not algorithm.authenticated:
            raise UnsupportedAlgorithmError(
                f"the alibaba-stream format is written with GCM algorithms only, not {algorithm.name}"
            )
        ctx_bytes = _context_bytes_for_encrypt(encryption_context)
        self._dst = dst
        data_key = _generate(provider, algorithm, dict(encryption_context))
        try:
            check_edks(data_key.encrypted_data_keys)
            header_iv = _rand.random_bytes(IV_LEN)
            body_iv = _rand.random_bytes(IV_LEN)
            edks = tuple(data_key.encrypted_data_keys)
            ctx = MappingProxyType(dict(encryption_context))
            with _Key(algorithm, data_key.plaintext) as key:
                _, tag = key.gcm_seal(header_iv, auth_fields(VERSION, algorithm, ctx, edks), b"")
            self.header = MessageHeader(VERSION, algorithm, edks, ctx, header_iv, tag, b"")
            backend: Any = get_backend()
            self._gcm = backend.gcm_stream(algorithm.info.cipher, data_key.plaintext, body_iv, False)
        finally:
            data_key.wipe()
        self._gcm.aad(ctx_bytes)
        self._buf = bytearray(CHUNK)
        self.bytes_in = 0
        self.bytes_out = 0
        self._closed = False
        self._emit(encode_header(self.header, body_iv))

    def _emit(self, data: Any) -> None:
        write_all(self._dst, data)
        self.bytes_out += len(data)

    def write(self, data: Any) -> int:
        if self._closed:
            raise ValueError("write to a closed kmsenv stream")
        view = memoryview(data).cast("B")
        for pos in range(0, len(view), CHUNK):
            piece = view[pos : pos + CHUNK]
            out = memoryview(self._buf)[: len(piece)]
            self._gcm.update_into(piece, out)
            self.bytes_in += len(piece)
            self._emit(out)
        return len(view)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._emit(self._gcm.final())
        finally:
            self.abort()

    def abort(self) -> None:
        self._closed = True
        self._gcm.close()


def _seekable_at(f: Any) -> int | None:
    """The current offset of ``f`` if it can be re-read from there, else None."""
    try:
        if f.seekable():
            return int(f.tell())
    except (AttributeError, OSError, ValueError):
        pass
    return None


class AlibabaStreamDecryptor:
    """Pull-style reader: verifies the whole body's tag before the first byte
    of plaintext is returned."""

    def __init__(
        self,
        src: Source,
        provider: DataKeyProvider,
        *,
        expected_encryption_context: Mapping[str, str] | None,
        allow_unauthenticated: bool,
        max_encrypted_data_keys: int,
        check_context: Any,
        check_readable: Any,
        spool_dir: str | None = None,
    ):
        self.header, self._iv = read_header(src, max_encrypted_data_keys)
        h = self.header
        check_context(h, expected_encryption_context)
        check_readable(h, allow_unauthenticated)
        if not h.algorithm.authenticated:
            raise UnsupportedAlgorithmError(
                f"reading {h.algorithm.name} streams (unauthenticated CBC/CTR) is not supported"
            )
        self._src = src
        self._key = _unwrap(provider, h)
        self._spool: Any = None
        self._gcm: Any = None
        self._buf = bytearray(CHUNK + TAG_LEN)
        self._out = bytearray(CHUNK)
        self.bytes_out = 0
        try:
            with _Key(h.algorithm, self._key) as key:
                try:
                    key.gcm_open(
                        h.header_iv, auth_fields(h.version, h.algorithm, h.encryption_context, h.encrypted_data_keys),
                        b"", h.header_auth_tag,
                    )
                except AuthenticationError:
                    raise AuthenticationError(
                        "header authentication failed: the header was altered or the data key is not its own"
                    ) from None
            self._ctx = context_bytes(h.encryption_context)
            self._verify_pass(spool_dir)
        except BaseException:
            self.close()
            raise

    def _new_gcm(self) -> Any:
        backend: Any = get_backend()
        gcm = backend.gcm_stream(self.header.algorithm.info.cipher, self._key, self._iv, True)
        gcm.aad(self._ctx)
        return gcm

    def _verify_pass(self, spool_dir: str | None) -> None:
        """Pass 1: GHASH the whole body (its plaintext is thrown away), keeping
        back the last 16 bytes as the tag. Non-seekable input is spooled."""
        # Bytes already buffered in the Source sit before the file position.
        start = _seekable_at(self._src.f)
        if start is not None:
            start -= self._src.pending
        else:
            self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY, dir=spool_dir)
        gcm = self._new_gcm()
        held = bytearray()  # the last up-to-16 bytes seen: the tag, if the input ends here
        length = 0
        view = memoryview(self._buf)
        try:
            while True:
                n = self._src.readinto(view[:CHUNK])
                if n == 0:
                    break
                if self._spool is not None:
                    self._spool.write(view[:n])
                data = bytes(held) + bytes(view[:n])
                body, held = data[: len(data) - TAG_LEN], bytearray(data[len(data) - TAG_LEN :])
                if len(body) > 0:
                    gcm.update_into(body, self._out)
                length += n
            if length < TAG_LEN:
                raise MessageFormatError("truncated message: the body tag is missing")
            try:
                gcm.verify(bytes(held))
            except AuthenticationError:
                raise AuthenticationError("message body authentication failed: the body was altered") from None
        finally:
            gcm.close()
            wipe(self._out)
        self._ct_len = length - TAG_LEN
        self._tag = bytes(held)
        self._left = self._ct_len
        if self._spool is not None:
            self._spool.seek(0)
            self._reader: Any = self._spool
        else:
            self._src.f.seek(start)
            self._reader = self._src.f
        self._gcm = self._new_gcm()

    def read_chunk(self) -> memoryview | None:
        """Pass 2: decrypt the verified body a chunk at a time; at the end the
        tag is checked again (the input must not have changed in between)."""
        if self._gcm is None:
            return None
        if self._left == 0:
            try:
                self._gcm.verify(self._tag)
            except AuthenticationError:
                raise AuthenticationError("the input changed between the verification and decryption passes") from None
            finally:
                self.close()
            return None
        step = min(CHUNK, self._left)
        view = memoryview(self._buf)[:step]
        got = 0
        while got < step:
            data = self._reader.read(step - got)
            if not data:
                raise AuthenticationError("the input changed between the verification and decryption passes")
            view[got : got + len(data)] = data
            got += len(data)
        out = memoryview(self._out)[:step]
        self._gcm.update_into(view, out)
        self._left -= step
        self.bytes_out += step
        return out

    def close(self) -> None:
        if self._gcm is not None:
            self._gcm.close()
            self._gcm = None
        if self._spool is not None:
            self._spool.close()  # deletes it; it only ever held ciphertext
            self._spool = None
        wipe(self._key)
        wipe(self._out)
