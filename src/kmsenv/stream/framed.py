"""kmsenv's framed, key-committing stream format (docs/format.md is the spec).

Writing: one data key per message; per-message keys come from HKDF(data key,
message id); the header carries a key commitment and a GCM tag; the body is a
run of fixed-size frames sealed in batches (native: on several threads, GIL
released) and closed by an explicit final frame.

Reading: header parsed with every length bounded before it is read, data key
unwrapped, commitment compared in constant time, header tag verified, then
frames opened a batch at a time; a batch's plaintext is released only when
every frame in it verified.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from .._wipe import wipe
from ..algorithms import Algorithm, algorithm_from_id
from ..crypto import get_backend
from ..crypto import interface as I
from .._envelope import (
    BackendKey,
    check_expected_context,
    check_new_algorithm,
    context_bytes_for_encrypt,
    generate,
    unwrap,
)
from ..exceptions import (
    AuthenticationError,
    ConfigurationError,
    HeaderAuthenticationError,
    KmsEnvError,
    MessageFormatError,
    UnsupportedAlgorithmError,
)
from ..message.codec import DEFAULT_MAX_ENCRYPTED_DATA_KEYS, MAX_ARN_BYTES, MAX_EDK_BYTES, check_edks
from ..model import DataKeyProvider, EncryptedDataKey
from . import _buffers, _rand
from ._io import Source, check_edk_count, decode_arn, parse_context_bytes
from ._writer import BatchWriter

MAGIC = b"KMSF"
VERSION = 1
DEFAULT_FRAME_SIZE = 65536
MIN_FRAME_SIZE = I.FRAME_MIN_SIZE
MAX_FRAME_SIZE = I.FRAME_MAX_SIZE
MAX_FRAMES = I.FRAME_MAX_SEQ
MSGID_LEN = 32
COMMIT_LEN = 32
TAG_LEN = 16
BASE_IV = bytes(12)  # the per-message key makes a fixed base safe; seq 0 is the header
GCM_ALGORITHMS = (Algorithm.AES_GCM_NOPADDING_128, Algorithm.AES_GCM_NOPADDING_256, Algorithm.SM4_GCM_NOPADDING_128)
# Plaintext per batch handed to the native core: large enough that thread
# start-up is noise, small enough that memory stays a few MiB.
BATCH_BYTES = 8 * 1024 * 1024

_INFO_KEY = b"kmsenv framed v1 data key"
_INFO_COMMIT = b"kmsenv framed v1 commitment"

_u16 = struct.Struct(">H")
_u32 = struct.Struct(">I")


@dataclass(frozen=True)
class FramedHeader:
    """A framed message's header. Nothing in it is trusted until decryption
    has checked the commitment and the header tag."""

    version: int
    algorithm: Algorithm
    frame_size: int
    message_id: bytes
    encrypted_data_keys: tuple[EncryptedDataKey, ...]
    encryption_context: Mapping[str, str]
    commitment: bytes = field(repr=False)
    header_auth_tag: bytes = field(repr=False)
    encoded: bytes = field(default=b"", repr=False, compare=False)

    @property
    def format(self) -> str:
        return "framed"


def check_algorithm(alg: Algorithm) -> None:
    check_new_algorithm(alg, what="the framed format", error=UnsupportedAlgorithmError)


def check_frame_size(frame_size: Any) -> int:
    if not isinstance(frame_size, int) or isinstance(frame_size, bool):
        raise ConfigurationError("frame_size must be an int")
    if not MIN_FRAME_SIZE <= frame_size <= MAX_FRAME_SIZE:
        raise ConfigurationError(f"frame_size must be from {MIN_FRAME_SIZE} to {MAX_FRAME_SIZE} bytes")
    return frame_size


def _hash_for(alg: Algorithm) -> str:
    return "SM3" if alg.info.cipher == "SM4" else "SHA256"


def derive(alg: Algorithm, data_key: Any, message_id: bytes) -> tuple[bytearray, bytearray]:
    """(content key, commitment): HKDF from the data key, salted with the message id."""
    backend: Any = get_backend()
    suite = _u16.pack(int(alg))
    key = backend.hkdf(_hash_for(alg), data_key, message_id, _INFO_KEY + suite, alg.key_len)
    try:
        commit = backend.hkdf(_hash_for(alg), data_key, message_id, _INFO_COMMIT + suite, COMMIT_LEN)
    except BaseException:
        wipe(key)
        raise
    return key, commit


def _header_body(
    alg: Algorithm,
    frame_size: int,
    message_id: bytes,
    ctx_bytes: bytes,
    edks: tuple[EncryptedDataKey, ...],
    commitment: bytes,
) -> bytes:
    parts = [MAGIC, bytes((VERSION,)), _u16.pack(int(alg)), _u32.pack(frame_size), message_id]
    parts += [_u32.pack(len(ctx_bytes)), ctx_bytes, _u16.pack(len(edks))]
    for edk in edks:
        arn = edk.key_arn.encode("utf-8")
        if len(arn) > MAX_ARN_BYTES or len(edk.ciphertext_blob) > MAX_EDK_BYTES:
            raise ConfigurationError("an encrypted data key is larger than the format allows")
        parts += [_u16.pack(len(arn)), arn, _u32.pack(len(edk.ciphertext_blob)), edk.ciphertext_blob]
    parts.append(commitment)
    return b"".join(parts)


def _header_tag(alg: Algorithm, content_key: Any, body: bytes) -> bytes:
    with BackendKey(alg, content_key) as key:
        return key.gcm_seal(BASE_IV, body, b"")[1]


def read_header(src: Source, max_encrypted_data_keys: int = DEFAULT_MAX_ENCRYPTED_DATA_KEYS) -> FramedHeader:
    """Parse a framed header from ``src``; every length is bounded before reading."""
    raw = bytearray()

    def take(n: int, what: str) -> bytes:
        data = src.read_exact(n, what)
        raw.extend(data)
        return data

    if take(4, "magic") != MAGIC:
        raise MessageFormatError("not a kmsenv framed message")
    version = take(1, "version")[0]
    if version != VERSION:
        raise MessageFormatError(f"unsupported framed format version {version}")
    alg = algorithm_from_id(_u16.unpack(take(2, "algorithm"))[0])
    if alg not in GCM_ALGORITHMS:
        raise MessageFormatError(f"algorithm {alg.name} is not allowed in the framed format")
    frame_size = _u32.unpack(take(4, "frame size"))[0]
    if not MIN_FRAME_SIZE <= frame_size <= MAX_FRAME_SIZE:
        raise MessageFormatError(f"frame size {frame_size} is outside {MIN_FRAME_SIZE}..{MAX_FRAME_SIZE}")
    message_id = take(MSGID_LEN, "message id")
    ctx_len = _u32.unpack(take(4, "context length"))[0]
    if ctx_len > 32767:
        raise MessageFormatError(f"encryption context of {ctx_len} bytes exceeds 32767")
    ctx = parse_context_bytes(take(ctx_len, "encryption context"))
    count = _u16.unpack(take(2, "EDK count"))[0]
    check_edk_count(count, max_encrypted_data_keys)
    edks: list[EncryptedDataKey] = []
    seen: set[str] = set()
    for _ in range(count):
        arn_len = _u16.unpack(take(2, "key ARN length"))[0]
        if not 0 < arn_len <= MAX_ARN_BYTES:
            raise MessageFormatError(f"key ARN length {arn_len} is outside 1..{MAX_ARN_BYTES}")
        arn = decode_arn(take(arn_len, "key ARN"))
        blob_len = _u32.unpack(take(4, "EDK length"))[0]
        if not 0 < blob_len <= MAX_EDK_BYTES:
            raise MessageFormatError(f"encrypted data key length {blob_len} is outside 1..{MAX_EDK_BYTES}")
        blob = take(blob_len, "encrypted data key")
        if arn in seen:
            raise MessageFormatError("two encrypted data keys name the same CMK")
        seen.add(arn)
        edks.append(EncryptedDataKey(arn, blob))
    commitment = take(COMMIT_LEN, "key commitment")
    tag = take(TAG_LEN, "header auth tag")
    return FramedHeader(version, alg, frame_size, message_id, tuple(edks), ctx, commitment, tag, bytes(raw))


def _batch_frames(frame_size: int) -> int:
    return max(1, BATCH_BYTES // frame_size)


def _frame_error(exc: I.FrameBatchError, first_seq: int) -> KmsEnvError:
    seq = first_seq + exc.index
    if exc.status == I.STATUS_AUTH:
        return AuthenticationError(f"frame {seq} failed authentication: the message was altered")
    return MessageFormatError(
        f"frame {seq} is malformed, out of order, cut off, or followed by data after the final frame"
    )


class FramedEncryptor:
    """Push-style writer: ``write`` plaintext, ``close`` to emit the final frame.

    Holds at most one batch of plaintext and its ciphertext."""

    def __init__(
        self,
        dst: Any,
        provider: DataKeyProvider,
        *,
        encryption_context: Mapping[str, str],
        algorithm: Algorithm,
        frame_size: int,
        threads: int,
        background_writes: bool = False,
    ):
        check_algorithm(algorithm)
        self._fs = check_frame_size(frame_size)
        ctx_bytes = context_bytes_for_encrypt(encryption_context)
        self._alg = algorithm
        self._threads = threads
        message_id = _rand.random_bytes(MSGID_LEN)
        data_key = generate(provider, algorithm, encryption_context)
        try:
            edks = tuple(data_key.encrypted_data_keys)
            check_edks(edks)
            self._key, commitment = derive(algorithm, data_key.plaintext, message_id)
        finally:
            data_key.wipe()
        try:
            body = _header_body(algorithm, self._fs, message_id, ctx_bytes, edks, bytes(commitment))
            tag = _header_tag(algorithm, self._key, body)
        except BaseException:
            wipe(self._key)
            raise
        finally:
            wipe(commitment)
        encoded = body + tag
        self.header = FramedHeader(
            VERSION,
            algorithm,
            self._fs,
            message_id,
            edks,
            MappingProxyType(dict(encryption_context)),
            body[-COMMIT_LEN:],
            tag,
            encoded,
        )
        self._msgid = message_id
        self._seq = 1
        self._cap = _batch_frames(self._fs) * self._fs
        self._in = _buffers.take(self._cap)
        self._in_used = 0  # high-water mark of plaintext placed in _in: what abort wipes
        self._fill = 0
        # Two output buffers when batches are written behind on a helper
        # thread: one being written, one being filled.
        self._writer = BatchWriter(dst, background_writes)
        self._outs = [_buffers.take(I.frames_sealed_size(self._fs, self._cap, True))]
        self._turn = 0
        self.bytes_in = 0
        self._closed = False
        try:
            self._writer.write(memoryview(encoded))
        except BaseException:
            self.abort()
            raise

    @property
    def bytes_out(self) -> int:
        return self._writer.bytes_out

    def _next_out(self) -> bytearray:
        if not self._writer.background:
            return self._outs[0]
        if len(self._outs) == 1:
            self._outs.append(_buffers.take(len(self._outs[0])))
        out = self._outs[self._turn]
        self._turn ^= 1
        return out

    def _seal(self, data: Any, final: bool) -> None:
        """Seal one batch (at most ``_cap`` bytes) and emit it."""
        frames = len(data) // self._fs + (1 if final else 0)
        if self._seq + frames - 1 > MAX_FRAMES:
            raise ConfigurationError(
                f"the input needs more than {MAX_FRAMES} frames of {self._fs} bytes; use a larger frame_size"
            )
        backend: Any = get_backend()
        out = self._next_out()
        written = backend.frames_seal(
            self._alg.info.cipher,
            self._key,
            BASE_IV,
            self._msgid,
            self._seq,
            self._fs,
            final,
            data,
            out,
            self._threads,
        )
        self._seq += frames
        self._writer.write(memoryview(out)[:written])

    def buffer(self) -> memoryview:
        """The free part of the batch buffer, for readers that fill it in place."""
        return memoryview(self._in)[self._fill :]

    def commit(self, n: int) -> None:
        """``n`` bytes were placed at the start of :meth:`buffer`."""
        self._fill += n
        self._in_used = max(self._in_used, self._fill)
        self.bytes_in += n
        if self._fill == self._cap:
            with memoryview(self._in)[: self._cap] as batch:
                self._seal(batch, False)
            self._fill = 0

    def encrypt_all(self, data: memoryview, consumed: Callable[[int], None]) -> None:
        """Encrypt ``data`` as the whole rest of the input and close: batches
        are sealed where they lie, with no copy into the batch buffer. The
        frames are the same as :meth:`write` + :meth:`close` would make.
        ``consumed(n)`` is told after each batch."""
        if self._closed or self._fill:
            raise ValueError("encrypt_all needs a fresh encryptor")
        pos, end = 0, len(data)
        try:
            while end - pos > self._cap:
                self._seal(data[pos : pos + self._cap], False)
                self.bytes_in += self._cap
                pos += self._cap
                consumed(self._cap)
            self._seal(data[pos:end], True)
            self.bytes_in += end - pos
            consumed(end - pos)
            self._writer.finish()
        finally:
            self.abort()

    def write(self, data: Any) -> int:
        if self._closed:
            raise ValueError("write to a closed kmsenv stream")
        view = memoryview(data).cast("B")
        pos = 0
        while pos < len(view):
            room = self._cap - self._fill
            step = min(room, len(view) - pos)
            self._in[self._fill : self._fill + step] = view[pos : pos + step]
            pos += step
            self.commit(step)
        return len(view)

    def close(self) -> None:
        """Seal what is buffered with the final frame, then wipe the keys."""
        if self._closed:
            return
        try:
            with memoryview(self._in)[: self._fill] as batch:
                self._seal(batch, True)
            self._writer.finish()
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop without a final frame (the output stays an incomplete message)."""
        self._closed = True
        self._writer.finish(raise_errors=False)  # no buffer goes back while a write still reads it
        wipe(self._key)
        if self._in_used:
            with memoryview(self._in)[: self._in_used] as used:
                wipe(used)
            self._in_used = 0
        _buffers.give_back(self._in)
        for out in self._outs:
            _buffers.give_back(out)  # ciphertext only: public
        self._in, self._outs = bytearray(), []


class FramedDecryptor:
    """Pull-style reader: ``read_chunk`` returns verified plaintext a batch at a time."""

    def __init__(
        self,
        src: Source,
        provider: DataKeyProvider,
        *,
        expected_encryption_context: Mapping[str, str] | None,
        max_encrypted_data_keys: int,
        threads: int,
        in_place: bool = False,
        double_buffer: bool = False,
    ):
        self.header = read_header(src, max_encrypted_data_keys)
        h = self.header
        check_expected_context(h.encryption_context, expected_encryption_context)
        data_key = unwrap(provider, h)
        try:
            self._key, commitment = derive(h.algorithm, data_key, h.message_id)
        finally:
            wipe(data_key)
        try:
            # Before any decryption: the message must commit to this very key.
            if not hmac.compare_digest(bytes(commitment), h.commitment):
                raise HeaderAuthenticationError(
                    "key commitment mismatch: the data key is not the one this message was written with"
                )
            with BackendKey(h.algorithm, self._key) as key:
                try:
                    key.gcm_open(BASE_IV, h.encoded[:-TAG_LEN], b"", h.header_auth_tag)
                except AuthenticationError:
                    raise HeaderAuthenticationError("header authentication failed: the header was altered") from None
        except BaseException:
            wipe(self._key)
            raise
        finally:
            wipe(commitment)
        self._src = src
        self._fs = h.frame_size
        self._threads = threads
        self._seq = 1
        k = _batch_frames(self._fs)
        # Room for k regular frames, or k-1 and a final one (8 bytes longer).
        size = k * (self._fs + I.FRAME_REGULAR_OVERHEAD) + 8
        self._k = k
        self._window = size
        # An in-memory source is opened where it lies (in_place); anything
        # else is read into _in a batch at a time.
        self._mem = src.memory() if in_place else None
        self._mpos = 0
        self._in = _buffers.take(size) if self._mem is None else bytearray()
        # double_buffer: a returned chunk stays intact through the next
        # read_chunk call too, so it can be written on another thread meanwhile.
        self._outs = [_buffers.take(size)] + ([_buffers.take(size)] if double_buffer else [])
        self._out_used = [0] * len(self._outs)  # plaintext high-water marks: what close wipes
        self._turn = 0
        self._fill = 0
        self._done = False
        self.bytes_out = 0

    def _scan(self, buf: Any, filled: int) -> tuple[int, bool]:
        """End offset of the whole frames at the start of ``buf`` (at most
        k of them) and whether the last of them is the final frame."""
        fs = self._fs
        pos = 0
        for _ in range(self._k + 1):
            left = filled - pos
            if left < 4:
                break
            if buf[pos : pos + 4] == b"\xff\xff\xff\xff":
                if left < 12:
                    break
                n = _u32.unpack_from(buf, pos + 8)[0]
                if n >= fs:
                    raise MessageFormatError(f"frame {self._seq}: final frame length exceeds the frame size")
                if left < n + I.FRAME_FINAL_OVERHEAD:
                    break
                return pos + n + I.FRAME_FINAL_OVERHEAD, True
            if left < fs + I.FRAME_REGULAR_OVERHEAD:
                break
            pos += fs + I.FRAME_REGULAR_OVERHEAD
        return pos, False

    def read_chunk(self) -> memoryview | None:
        """The next batch of verified plaintext (a view valid until the next
        call), or None after the final frame. Raises on any damage; nothing of
        a damaged batch is returned."""
        while not self._done:
            if self._mem is not None:
                window = self._mem[self._mpos : self._mpos + self._window]
                filled = len(window)
                eof = len(self._mem) - self._mpos < self._window
            else:
                filled = self._fill + self._src.readinto(memoryview(self._in)[self._fill :])
                window = memoryview(self._in)
                eof = filled < len(self._in)
            with window:
                n, frames, final_seen, end = self._open_batch(window, filled, eof)
            self._seq += frames
            if self._mem is not None:
                self._mpos += end
                self._src.advance(end)
                rest = len(self._mem) - self._mpos
            else:
                rest = filled - end
                self._in[:rest] = self._in[end:filled]
                self._fill = rest
            if final_seen:
                self._done = True
                self._close_keys()
            elif eof and rest == 0:
                raise MessageFormatError("truncated message: the final frame is missing")
            if n:
                self.bytes_out += n
                return memoryview(self._outs[self._turn])[:n]
        return None

    def _input_ends_at(self, end: int) -> bool:
        if self._mem is not None:
            return self._mpos + end == len(self._mem)
        return self._src.at_eof()

    def _open_batch(self, window: memoryview, filled: int, eof: bool) -> tuple[int, int, bool, int]:
        """Open the whole frames at the start of ``window``: (plaintext bytes,
        frames, final frame seen, input bytes used)."""
        end, final = self._scan(window, filled)
        if final:
            if end != filled or not self._input_ends_at(end):
                raise MessageFormatError("trailing data after the final frame")
        elif eof:
            end = filled  # let the batch check name the cut-off frame
        if end == 0:
            if eof:
                raise MessageFormatError("truncated message: the final frame is missing")
            raise MessageFormatError(f"frame {self._seq} is malformed")
        backend: Any = get_backend()
        self._turn = (self._turn + 1) % len(self._outs)
        out = self._outs[self._turn]
        try:
            with window[:end] as batch:
                n, frames, final_seen = backend.frames_open(
                    self.header.algorithm.info.cipher,
                    self._key,
                    BASE_IV,
                    self.header.message_id,
                    self._seq,
                    self._fs,
                    batch,
                    out,
                    self._threads,
                )
        except BaseException as exc:
            self._out_used[self._turn] = len(out)  # whatever the failed batch wrote gets wiped at close
            if isinstance(exc, I.FrameBatchError):
                raise _frame_error(exc, self._seq) from None
            raise
        self._out_used[self._turn] = max(self._out_used[self._turn], n)
        return n, frames, final_seen, end

    def _close_keys(self) -> None:
        wipe(self._key)

    def close(self) -> None:
        self._done = True
        self._close_keys()
        if self._mem is not None:
            self._mem.release()
            self._mem = None
        for i, out in enumerate(self._outs):
            if self._out_used[i]:
                with memoryview(out)[: self._out_used[i]] as used:
                    wipe(used)
                self._out_used[i] = 0
            _buffers.give_back(out)
        _buffers.give_back(self._in)  # ciphertext only
        self._in, self._outs = bytearray(), []
