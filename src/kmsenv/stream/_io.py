"""Byte plumbing shared by the stream formats: a counting source with
look-ahead, full writes, and the context-bytes parser."""

from __future__ import annotations

import io
import os
import struct
from types import MappingProxyType
from typing import Any, Callable, Mapping

from .._wipe import wipe
from ..exceptions import ConfigurationError, MessageFormatError
from ..message.codec import MAX_CONTEXT_BYTES, context_bytes

_u32 = struct.Struct(">I")

Progress = Callable[[int], None]


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def check_threads(threads: int | None) -> int:
    if threads is None:
        return default_threads()
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 64:
        raise ConfigurationError("threads must be an int from 1 to 64")
    return threads


_READ_CHUNK = 1 << 20


class Source:
    """Reads a binary file object exactly, with a look-ahead buffer, counting
    the bytes taken from it and reporting them to ``progress``."""

    __slots__ = ("f", "_pending", "consumed", "_progress", "_eof")

    def __init__(self, f: Any, progress: Progress | None = None):
        if not hasattr(f, "read"):
            raise ConfigurationError(f"src must be a binary file object, not {type(f).__name__}")
        if progress is not None and not callable(progress):
            raise ConfigurationError("progress must be callable")
        self.f = f
        self._pending = bytearray()
        self.consumed = 0
        self._progress = progress
        self._eof = False

    def _raw_read(self, n: int) -> bytes | bytearray | memoryview:
        data = self.f.read(n)
        if data is None:
            raise ConfigurationError("src is non-blocking and has no data ready; pass a blocking stream")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ConfigurationError("src must be opened in binary mode")
        if data:
            self.consumed += len(data)
            if self._progress is not None:
                self._progress(self.consumed)
        else:
            self._eof = True
        return data

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at end of input) without consuming them."""
        while len(self._pending) < n and not self._eof:
            self._pending += self._raw_read(n - len(self._pending))
        return bytes(self._pending[:n])

    def readinto(self, buf: memoryview) -> int:
        """Fill ``buf`` completely unless the input ends first; return the count."""
        got = 0
        if self._pending:
            got = min(len(self._pending), len(buf))
            buf[:got] = self._pending[:got]
            del self._pending[:got]
        rinto = getattr(self.f, "readinto", None)
        while got < len(buf) and not self._eof:
            if rinto is not None:
                n = rinto(buf[got:])
                if n is None:
                    raise ConfigurationError("src is non-blocking and has no data ready; pass a blocking stream")
                if n == 0:
                    self._eof = True
                    break
                self.consumed += n
                if self._progress is not None:
                    self._progress(self.consumed)
                got += n
            else:
                data = self._raw_read(len(buf) - got)
                buf[got : got + len(data)] = data
                got += len(data)
        return got

    def memory(self) -> memoryview | None:
        """The unread rest of an in-memory source (``io.BytesIO``) as a view,
        so batches can be sealed or opened where they lie; None for anything
        else. The view is read-only and the source stays writable. Pair with
        :meth:`advance`."""
        # Exactly BytesIO: a subclass may override read() to hand out other bytes.
        if self._pending or self._eof or type(self.f) is not io.BytesIO:
            return None
        try:
            # getvalue(), not getbuffer(): CPython hands back the BytesIO's
            # own bytes object without copying, where getbuffer() copies a
            # BytesIO made from bytes (it must be writable).
            whole = self.f.getvalue()
            pos = self.f.tell()
        except ValueError:  # closed: let the ordinary read path report it
            return None
        return memoryview(whole)[pos:]

    def advance(self, n: int) -> None:
        """``n`` bytes of :meth:`memory` were used: move the source past them."""
        if n:
            self.f.seek(n, io.SEEK_CUR)
            self.consumed += n
            if self._progress is not None:
                self._progress(self.consumed)

    def read_exact(self, n: int, what: str) -> bytes:
        # A length read from the input may be a lie: allocate as data arrives
        # (in chunks of at most 1 MiB), never the claimed size up front.
        if n <= _READ_CHUNK:
            out = bytearray(n)
            if self.readinto(memoryview(out)) != n:
                raise MessageFormatError(f"truncated message: {what} is cut off")
            return bytes(out)
        parts = bytearray()
        while len(parts) < n:
            chunk = bytearray(min(_READ_CHUNK, n - len(parts)))
            got = self.readinto(memoryview(chunk))
            parts += memoryview(chunk)[:got]
            if got < len(chunk):
                raise MessageFormatError(f"truncated message: {what} is cut off")
        return bytes(parts)

    def u32(self, what: str) -> int:
        value: int = _u32.unpack(self.read_exact(4, what))[0]
        return value

    def at_eof(self) -> bool:
        return not self.peek(1)

    @property
    def pending(self) -> int:
        return len(self._pending)


def write_all(dst: Any, data: Any) -> int:
    """Write every byte of ``data``: raw streams may take fewer per call. A
    writer returning None (duck-typed sinks) is taken to have consumed it all."""
    view = memoryview(data).cast("B")
    total = len(view)
    done = 0
    while done < total:
        n = dst.write(view[done:])
        if n is None:
            break
        if not isinstance(n, int) or n <= 0:
            raise ConfigurationError("dst accepted no bytes")
        done += n
    return total


PUMP_CHUNK = 1024 * 1024


def pump(source: Source, write: Callable[[memoryview], Any]) -> None:
    """Hand everything ``source`` yields to ``write`` in chunks of one reused
    buffer, wiped at the end (it held plaintext)."""
    chunk = bytearray(PUMP_CHUNK)
    view = memoryview(chunk)
    try:
        while True:
            n = source.readinto(view)
            if n:
                write(view[:n])
            if n < len(view):
                break
    finally:
        wipe(chunk)


def parse_context_bytes(raw: bytes) -> Mapping[str, str]:
    """Inverse of codec.context_bytes, strict: canonical order, no duplicates,
    nothing trailing (re-encoding must give the same bytes)."""
    if not raw:
        return MappingProxyType({})
    if len(raw) > MAX_CONTEXT_BYTES:
        raise MessageFormatError(f"encryption context of {len(raw)} bytes exceeds {MAX_CONTEXT_BYTES}")
    view = memoryview(raw)
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if n > len(view) - pos:
            raise MessageFormatError("truncated encryption context")
        out = bytes(view[pos : pos + n])
        pos += n
        return out

    count = _u32.unpack(take(4))[0]
    if count == 0 or count > len(raw) // 8:
        raise MessageFormatError("encryption context: bad entry count")
    ctx: dict[str, str] = {}
    for _ in range(count):
        key = take(_u32.unpack(take(4))[0])
        value = take(_u32.unpack(take(4))[0])
        try:
            k, v = key.decode("utf-8"), value.decode("utf-8")
        except UnicodeDecodeError:
            raise MessageFormatError("encryption context is not valid UTF-8") from None
        if k in ctx:
            raise MessageFormatError("the encryption context repeats a key")
        ctx[k] = v
    if pos != len(raw) or context_bytes(ctx) != bytes(raw):
        raise MessageFormatError("encryption context is not in canonical form")
    return MappingProxyType(ctx)


def check_edk_count(count: int, limit: int) -> None:
    """An EDK count read from a stream header: at least one, at most ``limit``."""
    if count == 0:
        raise MessageFormatError("the message has no encrypted data key")
    if count > limit:
        raise MessageFormatError(
            f"the message has more than {limit} encrypted data keys (raise max_encrypted_data_keys if this is expected)"
        )


def decode_arn(raw: bytes) -> str:
    """A key ARN read from a stream header (UTF-8, no control characters: no real
    ARN has one, and an ESC or bidi override in a crafted one would reach the
    terminal of whoever inspects the message)."""
    from kmsenv.arn import control_character

    try:
        arn = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MessageFormatError("key ARN is not valid UTF-8") from None
    bad = control_character(arn)
    if bad:
        raise MessageFormatError(f"a key ARN contains the control character {bad}")
    return arn
