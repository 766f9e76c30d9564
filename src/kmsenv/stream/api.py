"""encrypt_stream / decrypt_stream / open: file-object front ends over the
three on-the-wire formats.

=================  ==========================================  ================
format             what                                        memory
=================  ==========================================  ================
``framed``         kmsenv's committing framed format           a few frames
``alibaba-stream`` the Java SDK's stream layout (single tag)   ~6 MiB; spools
                                                               the body to an
                                                               anonymous 0600
                                                               temp file
``alibaba``        one DER message (official SDKs' one-shot)   ~6 MiB; spools
                                                               as above to
                                                               decrypt, and to
                                                               encrypt an input
                                                               of unknown
                                                               length (pipe)
=================  ==========================================  ================

``decrypt_stream`` tells them apart from the first bytes: 0x30 (DER), the
framed magic ``KMSF``, or a big-endian version 1 (``00 00 00 01``).
"""

from __future__ import annotations

import builtins
import io
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

from ..algorithms import Algorithm
from .._envelope import choose_algorithm, context_argument
from ..exceptions import ConfigurationError, MessageFormatError
from ..message.codec import DEFAULT_MAX_ENCRYPTED_DATA_KEYS, MessageHeader
from ..model import DataKeyProvider
from . import der_stream, framed
from ._io import Source, check_threads, pump
from ._writer import BatchWriter, writes_release_gil
from .alibaba_stream import AlibabaStreamDecryptor, AlibabaStreamEncryptor
from .framed import FramedDecryptor, FramedEncryptor, FramedHeader

__all__ = ["StreamResult", "encrypt_stream", "decrypt_stream", "open", "FORMATS"]

FORMATS = ("framed", "alibaba-stream", "alibaba")
_ALIBABA_STREAM_MAGIC = b"\x00\x00\x00\x01"

PathOrFile = Union[str, "os.PathLike[str]", Any]


@dataclass(frozen=True)
class StreamResult:
    """What a stream call did. ``header`` is a :class:`MessageHeader` for the
    alibaba formats and a :class:`FramedHeader` for ``framed``."""

    format: str
    header: MessageHeader | FramedHeader
    bytes_in: int
    bytes_out: int


def _check_format(fmt: Any) -> str:
    if fmt not in FORMATS:
        raise ConfigurationError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return str(fmt)


def detect_format(first: bytes) -> str:
    """The format of a message from its first (up to 4) bytes."""
    if first[:1] == b"\x30":
        return "alibaba"
    if first == framed.MAGIC:
        return "framed"
    if first == _ALIBABA_STREAM_MAGIC:
        return "alibaba-stream"
    if len(first) < 4 and (framed.MAGIC.startswith(first) or _ALIBABA_STREAM_MAGIC.startswith(first)):
        raise MessageFormatError("truncated message: too short to be any kmsenv format")
    raise MessageFormatError("unknown message format: not DER (0x30), framed (KMSF) nor a Java stream (00000001)")


# ------------------------------------------------------------------ encrypt


def _make_encryptor(
    dst: Any,
    provider: DataKeyProvider,
    fmt: str,
    ctx: dict[str, str],
    alg: Algorithm,
    frame_size: int,
    threads: int,
    background_writes: bool = False,
) -> Any:
    if fmt == "framed":
        return FramedEncryptor(
            dst,
            provider,
            encryption_context=ctx,
            algorithm=alg,
            frame_size=frame_size,
            threads=threads,
            background_writes=background_writes,
        )
    if fmt == "alibaba-stream":
        return AlibabaStreamEncryptor(dst, provider, encryption_context=ctx, algorithm=alg)
    # A push-style writer cannot know the length: the ciphertext is spooled (der_stream).
    return der_stream.DerEncryptor(
        dst, provider, encryption_context=ctx, algorithm=alg, length=None, spool_dir=_dir_of(dst)
    )


def encrypt_stream(
    src: Any,
    dst: Any,
    provider: DataKeyProvider,
    *,
    encryption_context: Mapping[str, str] | None = None,
    algorithm: Algorithm | int | None = None,
    format: str = "framed",
    frame_size: int = framed.DEFAULT_FRAME_SIZE,
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
) -> StreamResult:
    """Encrypt everything ``src`` yields into one message written to ``dst``.

    ``src``/``dst`` are binary file objects; neither needs to be seekable.
    Every format uses bounded memory whatever the input size. ``alibaba``
    (one DER message, readable by the official one-shot APIs) writes its
    lengths first: from the size of a regular file opened with ``open()``
    (exactly that many bytes must then be read, else
    :class:`~kmsenv.InputChangedError` before the message's
    last bytes) or of an ``io.BytesIO``; any other input (a pipe) is
    encrypted into a private spool of ciphertext first (next to ``dst`` when
    it is a named regular file, else in the temp dir), as one INFO line on
    the ``kmsenv`` logger says. ``progress`` is called
    with the cumulative number of bytes read from ``src``. ``threads`` (framed
    only) caps the native worker threads; default: all usable cores.

    Framed fast paths: an ``io.BytesIO`` source is sealed where it lies (no
    copy; it is left positioned at its end, as a read would leave it), and
    with more than one thread and an OS-level ``dst`` (a file, pipe or
    socket: it has a ``fileno()``) each sealed batch is written on a helper
    thread while the next is sealed (``dst`` still sees one write at a time,
    in order). ``threads=1`` does everything on the calling thread."""
    fmt = _check_format(format)
    ctx = context_argument(encryption_context)
    alg = choose_algorithm(provider, algorithm)
    nthreads = check_threads(threads)
    source = Source(src, progress)
    if fmt == "alibaba":
        header, written = der_stream.encrypt(
            source, dst, provider, encryption_context=ctx, algorithm=alg, spool_dir=_dir_of(dst)
        )
        return StreamResult(fmt, header, source.consumed, written)
    if fmt == "framed":
        framed.check_algorithm(alg)
        framed.check_frame_size(frame_size)
    enc = _make_encryptor(
        dst, provider, fmt, ctx, alg, frame_size, nthreads, background_writes=nthreads > 1 and writes_release_gil(dst)
    )
    try:
        memory = source.memory() if isinstance(enc, FramedEncryptor) else None
        if memory is not None:  # in-memory input: sealed where it lies
            with memory:
                enc.encrypt_all(memory, source.advance)
        elif isinstance(enc, FramedEncryptor):
            while True:  # fill the batch buffer in place: no extra copy
                room = enc.buffer()
                n = source.readinto(room)
                enc.commit(n)
                if n < len(room):
                    break
        else:
            pump(source, enc.write)
        enc.close()
    except BaseException:
        enc.abort()
        raise
    return StreamResult(fmt, enc.header, source.consumed, enc.bytes_out)


# ------------------------------------------------------------------ decrypt


def _make_decryptor(
    source: Source,
    provider: DataKeyProvider,
    *,
    expected_encryption_context: Mapping[str, str] | None,
    allow_unauthenticated: bool,
    max_encrypted_data_keys: int,
    threads: int,
    spool_dir: str | None,
    in_place: bool = False,
    double_buffer: bool = False,
) -> tuple[str, Any]:
    fmt = detect_format(source.peek(4))
    if fmt == "framed":
        return fmt, FramedDecryptor(
            source,
            provider,
            expected_encryption_context=expected_encryption_context,
            max_encrypted_data_keys=max_encrypted_data_keys,
            threads=threads,
            in_place=in_place,
            double_buffer=double_buffer,
        )
    if fmt == "alibaba-stream":
        return fmt, AlibabaStreamDecryptor(
            source,
            provider,
            expected_encryption_context=expected_encryption_context,
            allow_unauthenticated=allow_unauthenticated,
            max_encrypted_data_keys=max_encrypted_data_keys,
            spool_dir=spool_dir,
        )
    return fmt, der_stream.open_message(
        source,
        provider,
        expected_encryption_context=expected_encryption_context,
        allow_unauthenticated=allow_unauthenticated,
        max_encrypted_data_keys=max_encrypted_data_keys,
        spool_dir=spool_dir,
    )


def _dir_of(f: Any) -> str | None:
    """The directory of a destination that is a named regular file (where the
    caller has room for the output); None for /dev/null, <stdout>, pipes."""
    name = getattr(f, "name", None)
    if isinstance(name, str) and name and os.path.isfile(name):
        directory = os.path.dirname(os.path.abspath(name))
        return directory if os.path.isdir(directory) else None
    return None


def decrypt_stream(
    src: Any,
    dst: Any,
    provider: DataKeyProvider,
    *,
    expected_encryption_context: Mapping[str, str] | None = None,
    allow_unauthenticated: bool = False,
    max_encrypted_data_keys: int = DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
) -> StreamResult:
    """Decrypt one message of any format (detected from its first bytes) from
    ``src`` to ``dst``. Only verified plaintext is ever written: framed
    messages a batch of frames at a time, Java streams after the whole body's
    tag verified. On an error ``dst`` holds at most the verified frames that
    preceded the damage (never any of a damaged frame), and the call raises a
    :class:`KmsEnvError`. A Java-stream body, or a GCM DER message's body
    (after its header tag), is decrypted from the private copy its
    verification made (over 4 MiB: an anonymous 0600 temporary file next to
    ``dst`` when ``dst`` is a named regular file, else in the temp dir), never
    read from ``src`` twice; a legacy CBC/CTR DER message is read whole. Framed
    messages take the same fast paths as :func:`encrypt_stream` (an
    ``io.BytesIO`` source read in place; with more than one thread and an
    OS-level ``dst``, verified batches written on a helper thread)."""
    nthreads = check_threads(threads)
    background = nthreads > 1 and writes_release_gil(dst)
    source = Source(src, progress)
    fmt, dec = _make_decryptor(
        source,
        provider,
        expected_encryption_context=expected_encryption_context,
        allow_unauthenticated=allow_unauthenticated,
        max_encrypted_data_keys=max_encrypted_data_keys,
        threads=nthreads,
        spool_dir=_dir_of(dst),
        in_place=True,
        double_buffer=background,
    )
    # Framed chunks are double-buffered (above), so each can be written on a
    # helper thread while the next batch is opened; the other formats hand
    # out a chunk that the next read may overwrite, so they write in line.
    writer = BatchWriter(dst, background=background and fmt == "framed")
    try:
        while True:
            chunk = dec.read_chunk()
            if chunk is None:
                break
            writer.write(chunk)
        writer.finish()
    except BaseException:
        writer.finish(raise_errors=False)  # verified chunks in flight land before the buffers are wiped
        raise
    finally:
        dec.close()
    return StreamResult(fmt, dec.header, source.consumed, dec.bytes_out)


# ------------------------------------------------------------------ file objects


class EncryptingWriter(io.RawIOBase):
    """``kmsenv.open(..., "wb")``: plaintext written here leaves encrypted.
    ``close()`` completes the message; leaving a ``with`` block on an
    exception does not (the output stays an unreadable, incomplete message)."""

    def __init__(self, raw: Any, owns: bool, enc: Any, fmt: str):
        super().__init__()
        self._raw, self._owns, self._enc, self._fmt = raw, owns, enc, fmt
        self.result: StreamResult | None = None

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed kmsenv stream")
        written: int = self._enc.write(b)
        return written

    @property
    def header(self) -> Any:
        return self._enc.header

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._enc.close()
            self.result = StreamResult(self._fmt, self._enc.header, self._enc.bytes_in, self._enc.bytes_out)
            if hasattr(self._raw, "flush"):
                self._raw.flush()
        finally:
            self._release()

    def _release(self) -> None:
        try:
            if self._owns:
                self._raw.close()
        finally:
            super().close()

    def abort(self) -> None:
        """Stop without completing the message."""
        if not self.closed:
            try:
                self._enc.abort()
            finally:
                self._release()

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:
        # Never complete a message nobody closed: a prefix must not pass as whole.
        try:
            self.abort()
        except Exception:
            pass


class DecryptingReader(io.RawIOBase):
    """``kmsenv.open(..., "rb")``: reads verified plaintext. The header (and,
    for Java streams, the whole body's tag) is checked when it is opened."""

    def __init__(self, raw: Any, owns: bool, source: Source, fmt: str, dec: Any):
        super().__init__()
        self._raw, self._owns, self._source, self.format, self._dec = raw, owns, source, fmt, dec
        self._chunk = memoryview(b"")
        self._eof = False

    @property
    def header(self) -> Any:
        return self._dec.header

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.closed:
            raise ValueError("read from a closed kmsenv stream")
        view = memoryview(b).cast("B")
        while not self._chunk and not self._eof:
            chunk = self._dec.read_chunk()
            if chunk is None:
                self._eof = True
            else:
                self._chunk = chunk
        n = min(len(view), len(self._chunk))
        view[:n] = self._chunk[:n]
        self._chunk = self._chunk[n:]
        return n

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._dec.close()
            if self._owns:
                self._raw.close()
        finally:
            super().close()


def open(  # noqa: A001 - mirrors builtins.open / gzip.open
    path_or_file: PathOrFile,
    mode: str = "rb",
    *,
    provider: DataKeyProvider,
    encryption_context: Mapping[str, str] | None = None,
    expected_encryption_context: Mapping[str, str] | None = None,
    algorithm: Algorithm | int | None = None,
    format: str = "framed",
    frame_size: int = framed.DEFAULT_FRAME_SIZE,
    allow_unauthenticated: bool = False,
    max_encrypted_data_keys: int = DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
    threads: int | None = None,
) -> EncryptingWriter | DecryptingReader:
    """A file object that encrypts what is written to it (``"wb"``) or
    decrypts what is read from it (``"rb"``, format detected). ``path_or_file``
    is a path (opened and closed here) or a binary file object (left open)."""
    if mode not in ("rb", "wb"):
        raise ConfigurationError('mode must be "rb" or "wb"')
    nthreads = check_threads(threads)
    if isinstance(path_or_file, (str, bytes, os.PathLike)):
        raw, owns = builtins.open(path_or_file, mode), True
    else:
        raw, owns = path_or_file, False
    try:
        if mode == "wb":
            fmt = _check_format(format)
            ctx = context_argument(encryption_context)
            alg = choose_algorithm(provider, algorithm)
            if fmt == "framed":
                framed.check_algorithm(alg)
            enc = _make_encryptor(raw, provider, fmt, ctx, alg, frame_size, nthreads)
            return EncryptingWriter(raw, owns, enc, fmt)
        source = Source(raw)
        fmt, dec = _make_decryptor(
            source,
            provider,
            expected_encryption_context=expected_encryption_context,
            allow_unauthenticated=allow_unauthenticated,
            max_encrypted_data_keys=max_encrypted_data_keys,
            threads=nthreads,
            spool_dir=None,
        )
        return DecryptingReader(raw, owns, source, fmt, dec)
    except BaseException:
        if owns:
            raw.close()
        raise
