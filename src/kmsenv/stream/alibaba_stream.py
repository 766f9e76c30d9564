"""The Java Encryption SDK's stream layout (spec section 7), read and written.

The body is one GCM message whose single tag sits at the very end, so a
reader cannot know a byte is genuine before it has seen them all. Decryption
therefore makes two passes. The first reads the input once, verifies the tag
and keeps what it read in a private spool (in memory up to SPOOL_MEMORY, then
an anonymous 0600 temporary file: O_TMPFILE or unlinked at once); an exact
``io.BytesIO`` input is not copied, its bytes object being immutable. The
second decrypts and releases plaintext from those verified bytes, never from
the input again (another writer may change a file between the passes), and
re-checks the tag at its end.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import struct
import tempfile
from types import MappingProxyType
from typing import Any, Mapping

from .._wipe import wipe
from ..algorithms import Algorithm, algorithm_from_id
from ..crypto import get_backend
from .._envelope import (
    BackendKey,
    check_expected_context,
    check_new_algorithm,
    check_readable,
    context_bytes_for_encrypt,
    generate,
    unwrap,
    verify_header,
)
from ..exceptions import AuthenticationError, ConfigurationError, MessageFormatError, UnsupportedAlgorithmError
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
# The spooled body stays in memory up to this size, then moves to a private file.
SPOOL_MEMORY = 4 * 1024 * 1024
_MAX_EDK_TEXT = (MAX_EDK_BYTES + 2) // 3 * 4
_CHANGED = "the ciphertext changed between the verification and decryption passes"

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
        check_new_algorithm(algorithm, what="the alibaba-stream format", error=UnsupportedAlgorithmError)
        ctx_bytes = context_bytes_for_encrypt(encryption_context)
        self._dst = dst
        data_key = generate(provider, algorithm, encryption_context)
        try:
            check_edks(data_key.encrypted_data_keys)
            header_iv = _rand.random_bytes(IV_LEN)
            body_iv = _rand.random_bytes(IV_LEN)
            edks = tuple(data_key.encrypted_data_keys)
            ctx = MappingProxyType(dict(encryption_context))
            with BackendKey(algorithm, data_key.plaintext) as key:
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


def _is_private(f: Any) -> bool:
    """True if no other user can reach ``f`` and it has no name to be found
    by: owned by us, mode 0600 or tighter, no links. Not checkable on
    Windows, where a temporary file keeps its name until it is closed."""
    if os.name != "posix":
        return True
    st = os.fstat(f.fileno())
    return st.st_nlink == 0 and st.st_uid == os.geteuid() and not stat.S_IMODE(st.st_mode) & 0o077


def _private_file(spool_dir: str | None) -> Any:
    """An anonymous 0600 temporary file: O_TMPFILE where the file system has
    it, else created 0600 and unlinked at once (tempfile.TemporaryFile).
    ``spool_dir`` is tried first; where it refuses a file (not writable, e.g.
    /dev for /dev/null) or keeps unlinked open files under a name (NFS's
    .nfsXXXX), the temp dir is used instead."""
    for directory in dict.fromkeys([spool_dir, None]):  # spool_dir, then the temp dir
        try:
            f = tempfile.TemporaryFile(dir=directory, buffering=0)  # noqa: SIM115 - the spool owns and closes it
        except OSError:
            if directory is None:
                raise
            continue
        try:
            if _is_private(f):
                return f
        except BaseException:
            f.close()
            raise
        f.close()
    raise ConfigurationError(
        "cannot make a private (0600, unlinked) temporary file to spool the stream: check the temp dir (TMPDIR)"
    )


class _Spool:
    """The private copy of the body that pass 1 writes and pass 2 decrypts:
    in memory up to ``memory_limit`` bytes, then an anonymous 0600 file. No
    other user can change what pass 1 verified, and no name leads to it (a
    process of the same user allowed to ptrace this one could still reach it
    through /proc, as it could this process's memory)."""

    def __init__(self, spool_dir: str | None, memory_limit: int):
        self._dir = spool_dir
        self._limit = memory_limit
        self._memory: bytearray | None = bytearray()
        self._file: Any = None
        self._pos = 0

    def write(self, data: memoryview) -> None:
        if self._memory is not None:
            if len(self._memory) + len(data) <= self._limit:
                self._memory += data
                return
            self._file = _private_file(self._dir)
            write_all(self._file, self._memory)
            self._memory = None
        write_all(self._file, data)

    def rewind(self) -> None:
        self._pos = 0
        if self._file is not None:
            self._file.seek(0)

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` unless the spool ends first; return the count."""
        if self._memory is not None:
            n = min(len(view), len(self._memory) - self._pos)
            view[:n] = memoryview(self._memory)[self._pos : self._pos + n]
            self._pos += n
            return n
        got = 0
        while got < len(view):
            n = self._file.readinto(view[got:])
            if not n:
                break
            got += n
        return got

    def close(self) -> None:
        """Release the memory or close (and so delete) the file; it only ever
        held ciphertext, so nothing is wiped."""
        self._memory = None
        f, self._file = self._file, None
        if f is not None:
            f.close()


class VerifiedRelease:
    """Both passes of the single-tag formats (this layout and the DER message
    read as a stream). Pass 1 reads the input once, GHASHes the ciphertext and
    keeps the bytes it verified (``_snapshot`` or ``_spool``); pass 2 decrypts
    only those bytes, a chunk at a time, never the input again. The decryptor
    sets ``header``, ``_key``, ``_iv``, ``_src``, ``_ct_len``, ``_left``,
    ``_snapshot``, ``_spool``, ``_buf``, ``_out`` and ``bytes_out``, and defines
    ``_hash_snapshot()``, ``_hash_and_spool()`` (how its layout ends: each
    returns the tag) and ``close()``."""

    _gcm: Any
    _tag: bytes
    _ct_len: int
    _left: int
    _snapshot: memoryview | None
    _spool: _Spool | None
    _buf: bytearray
    _out: bytearray
    bytes_out: int

    _src: Source
    header: MessageHeader
    _key: bytearray
    _iv: bytes

    def close(self) -> None:  # pragma: no cover - each decryptor has its own
        raise NotImplementedError

    def _new_gcm(self) -> Any:
        """A decrypting GCM stream over the body: the data key, the body IV,
        the context bytes as AAD (both single-tag layouts)."""
        backend: Any = get_backend()
        gcm = backend.gcm_stream(self.header.algorithm.info.cipher, self._key, self._iv, True)
        gcm.aad(self.header.context_bytes())
        return gcm

    def _hash_snapshot(self, gcm: Any, memory: memoryview) -> bytes:  # pragma: no cover
        raise NotImplementedError

    def _hash_and_spool(self, gcm: Any, spool: _Spool) -> bytes:  # pragma: no cover
        raise NotImplementedError

    def _verify_pass(self, spool_dir: str | None) -> None:
        """Pass 1: GHASH the whole body (its plaintext is thrown away) and keep
        the bytes it verified for pass 2: the input itself is never read twice,
        so a file changed by another writer in between cannot feed pass 2
        unverified bytes. Then get ready for pass 2."""
        gcm = self._new_gcm()
        try:
            memory = self._src.memory()
            if memory is not None:
                tag = self._hash_snapshot(gcm, memory)
            else:
                self._spool = _Spool(spool_dir, SPOOL_MEMORY)
                tag = self._hash_and_spool(gcm, self._spool)
            try:
                gcm.verify(tag)
            except AuthenticationError:
                raise AuthenticationError("message body authentication failed: the body was altered") from None
        finally:
            gcm.close()
            wipe(self._out)  # unverified plaintext
        self._tag = tag
        if self._spool is not None:
            self._spool.rewind()
        self._gcm = self._new_gcm()

    def read_chunk(self) -> memoryview | None:
        """Pass 2: decrypt the bytes pass 1 verified (its spool or snapshot) a
        chunk at a time. At the end the tag is checked again: defence in depth,
        since nothing outside this process can reach those bytes."""
        if self._gcm is None:
            return None
        if self._left == 0:
            try:
                self._gcm.verify(self._tag)
            except AuthenticationError:
                raise AuthenticationError(_CHANGED) from None
            finally:
                self.close()
            return None
        step = min(CHUNK, self._left)
        start = self._ct_len - self._left
        if self._snapshot is not None:
            piece = self._snapshot[start : start + step]
        else:
            piece = memoryview(self._buf)[:step]
            if self._spool is None or self._spool.readinto(piece) != step:
                raise AuthenticationError(_CHANGED)
        out = memoryview(self._out)[:step]
        self._gcm.update_into(piece, out)
        self._left -= step
        self.bytes_out += step
        return out


class AlibabaStreamDecryptor(VerifiedRelease):
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
        spool_dir: str | None = None,
    ):
        self.header, self._iv = read_header(src, max_encrypted_data_keys)
        h = self.header
        check_expected_context(h.encryption_context, expected_encryption_context)
        check_readable(h, allow_unauthenticated)
        if not h.algorithm.authenticated:
            raise UnsupportedAlgorithmError(
                f"reading {h.algorithm.name} streams (unauthenticated CBC/CTR) is not supported"
            )
        self._src = src
        self._key = unwrap(provider, h)
        self._spool: _Spool | None = None
        self._snapshot: memoryview | None = None
        self._gcm: Any = None
        self._buf = bytearray(CHUNK)
        self._out = bytearray(CHUNK)
        self.bytes_out = 0
        try:
            with BackendKey(h.algorithm, self._key) as key:
                verify_header(key, h)
            self._verify_pass(spool_dir)
        except BaseException:
            self.close()
            raise

    def _hash_snapshot(self, gcm: Any, memory: memoryview) -> bytes:
        """An exact io.BytesIO: its bytes object is already a private copy
        (immutable; a later write to the BytesIO copies it first), so pass 2
        reads the same view and nothing is spooled."""
        if len(memory) < TAG_LEN:
            raise MessageFormatError("truncated message: the body tag is missing")
        self._src.advance(len(memory))
        self._ct_len = self._left = len(memory) - TAG_LEN
        self._snapshot = memory[: self._ct_len]
        for pos in range(0, self._ct_len, CHUNK):
            piece = memory[pos : min(pos + CHUNK, self._ct_len)]
            gcm.update_into(piece, self._out)
        return bytes(memory[self._ct_len :])

    def _hash_and_spool(self, gcm: Any, spool: _Spool) -> bytes:
        """Read the input once, into the spool, hashing all but the last 16
        bytes seen so far (they are the tag if the input ends there)."""
        view = memoryview(self._buf)[:CHUNK]
        tail = b""
        length = 0
        while True:
            n = self._src.readinto(view)
            if n == 0:
                break
            spool.write(view[:n])
            length += n
            # Of tail + view[:n], all but the last 16 bytes are body.
            keep = min(TAG_LEN, len(tail) + n)
            release = len(tail) + n - keep
            from_tail = min(release, len(tail))
            if from_tail:
                gcm.update_into(tail[:from_tail], self._out)
            if release > from_tail:
                gcm.update_into(view[: release - from_tail], self._out)
            tail = tail[from_tail:] + bytes(view[release - from_tail : n])
        if length < TAG_LEN:
            raise MessageFormatError("truncated message: the body tag is missing")
        self._ct_len = self._left = length - TAG_LEN
        return tail

    def close(self) -> None:
        if self._gcm is not None:
            self._gcm.close()
            self._gcm = None
        spool, self._spool = self._spool, None
        self._snapshot = None
        try:
            if spool is not None:
                spool.close()
        finally:
            wipe(self._key)
            wipe(self._out)
