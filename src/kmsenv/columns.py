"""Column encryption: many values under one data key, in Arrow's memory layout.

The engine-neutral core under :mod:`kmsenv.arrow` and the Spark, Dask and Ray
adapters. A column is Arrow's variable-size binary layout (offsets + data +
validity bitmap); the native core reads and writes those buffers directly, so
no Python object is made per value. Two output formats:

* ``"alibaba"``: every value becomes a complete standalone Alibaba message
  (readable by the official SDKs and :func:`kmsenv.decrypt`); the values of
  one batch share their header.
* ``"compact"``: ``docs/format.md`` §4 "Compact column values": 45 bytes of
  overhead per value, the key header (with its key commitment) stored once in
  a :class:`~kmsenv.keyheader.KeyHeaderStore`, each value bound to its column
  name (``column=``) and optionally to a row id.

Null values stay null. Without pyarrow, :func:`encrypt_values` /
:func:`decrypt_values` take and return Python lists.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Mapping, Protocol, Sequence, cast

from . import _process
from ._envelope import (
    BackendKey,
    build_header,
    check_expected_context,
    check_new_algorithm,
    choose_algorithm,
    context_argument,
    generate,
    unwrap,
    verify_header,
)
from ._wipe import wipe
from .algorithms import Algorithm
from .crypto import get_backend
from .crypto import interface as _spec
from .exceptions import (
    AuthenticationError,
    ConfigurationError,
    KmsEnvError,
    MessageFormatError,
)
from .keyheader import REF_LEN, KeyHeader, KeyHeaderStore
from .message.codec import context_bytes, decode_message

__all__ = ["FORMATS", "Column", "SealedColumn", "check_format", "encrypt_values", "decrypt_values", "stats"]

FORMATS = ("alibaba", "compact")

# The compact format's constants are the backends' (crypto.interface), named here as before.
#: Format byte of a version 2 value (| COMPACT_ROW_BOUND when row-bound): its
#: key header commits to the data key and its AAD names its column.
COMPACT_FORMAT = _spec.COMPACT_FORMAT
#: Version 1 (read only, with allow_uncommitted=True): no commitment, no column.
COMPACT_FORMAT_V1 = _spec.COMPACT_FORMAT_V1
COMPACT_ROW_BOUND = _spec.COMPACT_ROW_BOUND
_VERSIONS = _spec.COMPACT_VERSIONS
SEGMENT_LEN = _spec.COMPACT_SEGMENT_LEN
PREFIX_LEN = _spec.COMPACT_PREFIX_LEN
OVERHEAD = _spec.COMPACT_OVERHEAD
#: Values per segment (one fresh subkey each); one backend call seals one segment.
MAX_SEGMENT = _spec.COMPACT_MAX_SEGMENT
SUBKEY_INFO = _spec.COMPACT_SUBKEY_INFO
SUBKEY_INFO_V1 = _spec.COMPACT_SUBKEY_INFO_V1
#: The column name's length field in the AAD is 4 bytes.
MAX_COLUMN_NAME = 2**32 - 1
_INT32_MAX = 2**31 - 1


def _backend() -> _spec.FullBackend:
    """The backend with its column calls (both backends implement them)."""
    return cast(_spec.FullBackend, get_backend())


# Statuses of the backends' column calls.
_OK, _AUTH, _FORMAT, _OTHER_KEY = _spec.STATUS_OK, _spec.STATUS_AUTH, _spec.STATUS_FORMAT, _spec.STATUS_OTHER_KEY


_STATS_LOCK = threading.Lock()
_STATS = {"commitment_checks": 0, "uncommitted_keys": 0}


def _count(name: str) -> None:
    with _STATS_LOCK:
        _STATS[name] += 1


def _reset_stats_after_fork() -> None:
    global _STATS_LOCK
    _STATS_LOCK = _process.new_lock()
    for name in _STATS:
        _STATS[name] = 0


_process.register(__name__, ("_STATS_LOCK", "_STATS"), _reset_stats_after_fork)


def stats() -> dict[str, int]:
    """This process's compact-read figures: ``commitment_checks`` (key
    commitments compared: one per data key obtained by a read, never one per
    value) and ``uncommitted_keys`` (version 1 key headers opened with
    ``allow_uncommitted=True``)."""
    with _STATS_LOCK:
        return dict(_STATS)


V1_REFUSED = (
    "a compact format v1 value: its key header has no key commitment, so a writer holding CMKs in two regions "
    "could make it decrypt to different plaintexts in each; v1 is refused by default. To read data written "
    "before format v2 that you trust, pass allow_uncommitted=True (then re-encrypt it)"
)


def value_version(value: bytes | memoryview) -> int | None:
    """The compact format version of a value (2 or 1), or None if it is not one."""
    if len(value) < OVERHEAD:
        return None
    return _VERSIONS.get(value[0] & ~COMPACT_ROW_BOUND & 0xFF)


def column_name(column: str | None) -> bytes:
    """The column name bound into each version 2 value's AAD, as UTF-8 (None: empty)."""
    if column is None:
        return b""
    if not isinstance(column, str):
        raise ConfigurationError(f"a column name must be a str, not {type(column).__name__}")
    raw = column.encode("utf-8")
    if len(raw) > MAX_COLUMN_NAME:
        raise ConfigurationError(f"a column name is at most {MAX_COLUMN_NAME} bytes of UTF-8")
    return raw


def check_format(format: str | None, bound: bool = False, *, detect: bool = False) -> None:
    """``format`` is one of :data:`FORMATS` (or None, to detect it, when
    ``detect``); row binding (``bound``) needs the compact format."""
    if not (format in FORMATS or (detect and format is None)):
        raise ConfigurationError(f"format must be one of {FORMATS}{' or None' if detect else ''}, not {format!r}")
    if bound and format != "compact":
        raise ConfigurationError("row binding (aad_column= / rows=) needs format='compact'")


# ---------------------------------------------------------------- column views


@dataclass
class Column:
    """A read-only view of an Arrow variable-size binary column.

    ``offsets`` holds ``length + 1`` little-endian integers of ``width`` bytes
    (4 or 8), already advanced to the first value; ``validity`` is Arrow's
    bitmap (bit ``validity_offset + i``) or ``None`` when nothing is null.
    ``keepalive`` holds whatever owns the buffers."""

    length: int
    data: Any
    offsets: Any
    width: int
    validity: Any = None
    validity_offset: int = 0
    keepalive: Any = None

    @classmethod
    def from_values(cls, values: Sequence[bytes | bytearray | memoryview | None], what: str = "values") -> Column:
        n = len(values)
        lengths = []
        bits = bytearray((n + 7) // 8)
        nulls = 0
        for i, v in enumerate(values):
            if v is None:
                nulls += 1
                lengths.append(0)
                continue
            if isinstance(v, str):
                raise ConfigurationError(f"{what}[{i}] is a str: encode it (e.g. .encode('utf-8')) first")
            if not isinstance(v, (bytes, bytearray, memoryview)):
                raise ConfigurationError(f"{what}[{i}] must be bytes-like or None, not {type(v).__name__}")
            bits[i >> 3] |= 1 << (i & 7)
            lengths.append(memoryview(v).nbytes)
        data = b"".join(v for v in values if v is not None)
        offsets = [0]
        total = 0
        for size in lengths:
            total += size
            offsets.append(total)
        width = 4 if total <= _INT32_MAX else 8
        packed = struct.pack(f"<{n + 1}{'i' if width == 4 else 'q'}", *offsets)
        return cls(n, data, packed, width, bytes(bits) if nulls else None, 0)

    def is_valid(self, i: int) -> bool:
        if self.validity is None:
            return True
        bit = self.validity_offset + i
        return bool(memoryview(self.validity)[bit >> 3] >> (bit & 7) & 1)

    def _off(self, i: int) -> int:
        fmt = "<i" if self.width == 4 else "<q"
        offset: int = struct.unpack_from(fmt, self.offsets, i * self.width)[0]
        return offset

    def value(self, i: int) -> memoryview | None:
        if not self.is_valid(i):
            return None
        return memoryview(self.data)[self._off(i) : self._off(i + 1)]

    def span(self) -> int:
        return self._off(self.length) - self._off(0) if self.length else 0

    def present(self) -> int:
        if self.validity is None:
            return self.length
        return sum(1 for i in range(self.length) if self.is_valid(i))


@dataclass
class SealedColumn:
    """Output buffers: ``offsets`` (``length + 1`` entries of ``width``) and
    ``data`` (the first ``size`` bytes used). Validity is the input's."""

    length: int
    data: bytearray
    size: int
    offsets: bytearray
    width: int

    def values(self, like: Column) -> list[bytes | None]:
        fmt = f"<{self.length + 1}{'i' if self.width == 4 else 'q'}"
        offs = struct.unpack_from(fmt, self.offsets)
        view = memoryview(self.data)
        return [bytes(view[offs[i] : offs[i + 1]]) if like.is_valid(i) else None for i in range(self.length)]

    def wipe(self) -> None:
        wipe(self.data)


def _new_output(length: int, capacity: int) -> SealedColumn:
    width = 4 if capacity <= _INT32_MAX else 8
    return SealedColumn(length, bytearray(max(capacity, 1)), 0, bytearray((length + 1) * width), width)


def _cipher(algorithm: Algorithm) -> str:
    return algorithm.info.cipher


def _finish(out: SealedColumn) -> SealedColumn:
    fmt = "<i" if out.width == 4 else "<q"
    out.size = struct.unpack_from(fmt, out.offsets, out.length * out.width)[0]
    return out


# ---------------------------------------------------------------- compact: seal


def subkey(algorithm: Algorithm, data_key: Any, header: KeyHeader, segment: bytes) -> bytearray:
    """The compact format's per-segment key for the header's version (the
    caller wipes it)."""
    if len(data_key) != algorithm.key_len:
        raise ConfigurationError(f"the data key does not fit {algorithm.name}")
    return _backend().compact_subkey(header.version, _cipher(algorithm), data_key, header.digest, segment)


def _check_rows(col: Column, rows: Column | None) -> None:
    if rows is None:
        return
    if rows.length != col.length:
        raise ConfigurationError(f"the row ids have {rows.length} values for {col.length} values to encrypt")
    for i in range(col.length) if rows.validity is not None else ():
        if col.is_valid(i) and not rows.is_valid(i):
            raise ConfigurationError(f"value {i} has no row id (the row id column is null there)")


def seal_compact(
    algorithm: Algorithm,
    data_key: Any,
    header: KeyHeader,
    col: Column,
    rows: Column | None = None,
    *,
    segments: Sequence[bytes] | None = None,
    ivs: bytes | None = None,
    column: str | None = None,
) -> SealedColumn:
    """Seal a column as version 2 compact values bound to ``column`` (the
    name of the column they will be stored in): one fresh random segment
    (subkey) per :data:`MAX_SEGMENT` values. The header must carry a key
    commitment (:meth:`KeyHeader.for_data_key`). ``segments``/``ivs`` are for
    known-answer tests."""
    if header.version != 2:
        raise ConfigurationError(
            "new compact values need a version 2 key header (KeyHeader.for_data_key: it commits to the data key)"
        )
    name = column_name(column)
    _check_rows(col, rows)
    out = _new_output(col.length, col.span() + OVERHEAD * col.length)
    backend = _backend()
    cipher = _cipher(algorithm)
    try:
        for part, start in enumerate(range(0, col.length, MAX_SEGMENT)):
            stop = min(col.length, start + MAX_SEGMENT)
            segment = segments[part] if segments is not None else backend.random(SEGMENT_LEN)
            part_ivs = ivs[start * 12 : stop * 12] if ivs is not None else None
            backend.compact_seal(cipher, data_key, header.digest, segment, name, col, rows, start, stop, part_ivs, out)
    except BaseException:
        out.wipe()
        raise
    return _finish(out)


# ---------------------------------------------------------------- compact: open


def compact_ref(value: bytes | memoryview) -> bytes | None:
    """The key reference of a compact value (version 2 or 1), or None if it is not one."""
    if value_version(value) is None:
        return None
    return bytes(value[1 : 1 + REF_LEN])


def _compact_problem(value: memoryview, rows_given: bool, header_version: int | None = None) -> str:
    if len(value) < OVERHEAD:
        return f"too short for a compact value ({len(value)} bytes, at least {OVERHEAD})"
    version = value_version(value)
    if version is None:
        if value[0] == 0x30:
            return "an Alibaba-format message, not a compact value (use format='alibaba')"
        return f"unknown compact format byte 0x{value[0]:02x}"
    if header_version is not None and version != header_version:
        return f"a compact format v{version} value refers to a version {header_version} key header (never valid)"
    bound = bool(value[0] & COMPACT_ROW_BOUND)
    if bound and not rows_given:
        return "the value is bound to a row id: pass the row id column (rows= / aad_column=)"
    if not bound and rows_given:
        return "the value is not bound to a row id, but row ids were given (refusing an unbound value where bound ones are expected)"
    return "malformed compact value"


KeyFor = Callable[[KeyHeader], bytearray]


def open_compact(
    col: Column,
    headers: Callable[[bytes], KeyHeader | None],
    key_for: KeyFor,
    rows: Column | None = None,
    expected_context: Mapping[str, str] | None = None,
    *,
    column: str | None = None,
    allow_uncommitted: bool = False,
) -> SealedColumn:
    """Open compact values; ``headers(ref)`` finds a key header, ``key_for``
    returns its data key (a copy this function wipes). All or nothing.

    Each data key is checked against its header's commitment once, when it is
    obtained, before any value under it is opened. ``column``: the name the
    values were sealed for. Version 1 values (no commitment, no column name)
    are refused unless ``allow_uncommitted``."""
    name = column_name(column)
    _check_rows(col, rows)
    out = _new_output(col.length, col.span())
    backend = _backend()
    keys: dict[bytes, tuple[KeyHeader, bytearray]] = {}
    try:
        start = 0
        current: tuple[KeyHeader, bytearray] | None = None
        while start < col.length:
            if current is None:
                start = _next_present(col, start)
                if start >= col.length:
                    _fill_offsets(out, col.length)
                    break
                current = _compact_key(
                    col, start, headers, key_for, keys, expected_context, rows is not None, allow_uncommitted
                )
            header, data_key = current
            status, stopped = backend.compact_open(
                header.version, _cipher(header.algorithm), data_key, header.digest, name, col, rows, start, out
            )
            if status == _OK:
                break
            if status == _OTHER_KEY:
                current = None
                start = stopped
                continue
            value = col.value(stopped)
            assert value is not None
            if status == _AUTH:
                hint = "" if header.version == 1 else "; a renamed column is read with the name it was written under"
                raise AuthenticationError(
                    f"value {stopped}: authentication failed (altered, moved to another row or column, or not sealed "
                    f"under this key header{hint})"
                )
            raise MessageFormatError(f"value {stopped}: {_compact_problem(value, rows is not None, header.version)}")
    except BaseException:
        out.wipe()
        raise
    finally:
        for _, k in keys.values():
            wipe(k)
    return _finish(out)


def _next_present(col: Column, start: int) -> int:
    while start < col.length and not col.is_valid(start):
        start += 1
    return start


def _fill_offsets(out: SealedColumn, upto: int) -> None:
    """Null values from the last written offset up to ``upto`` keep zero length."""
    fmt = "<i" if out.width == 4 else "<q"
    # Find the last written position: offsets after it are still 0 only if
    # nothing was written, so carry the maximum forward.
    last = 0
    for i in range(upto + 1):
        cur = struct.unpack_from(fmt, out.offsets, i * out.width)[0]
        if cur < last:
            struct.pack_into(fmt, out.offsets, i * out.width, last)
        else:
            last = cur


def _compact_key(
    col: Column,
    i: int,
    headers: Callable[[bytes], KeyHeader | None],
    key_for: KeyFor,
    keys: dict[bytes, tuple[KeyHeader, bytearray]],
    expected_context: Mapping[str, str] | None,
    rows_given: bool,
    allow_uncommitted: bool = False,
) -> tuple[KeyHeader, bytearray]:
    value = col.value(i)
    assert value is not None
    ref = compact_ref(value)
    if ref is None:
        raise MessageFormatError(f"value {i}: {_compact_problem(value, rows_given)}")
    version = value_version(value)
    # Refused before any lookup or KMS call: accepting v1 silently would let an
    # attacker simply write v1 to get around the commitment.
    if version == 1 and not allow_uncommitted:
        raise MessageFormatError(f"value {i}: {V1_REFUSED}")
    if ref not in keys:
        header = headers(ref)
        if header is None:
            raise KmsEnvError(
                f"value {i}: key header {ref.hex()} was not found (pass the key_store the values were written with)"
            )
        if header.ref != ref:
            raise MessageFormatError(f"value {i}: the key header found for {ref.hex()} does not match it")
        if header.version != version:
            raise MessageFormatError(f"value {i}: {_compact_problem(value, rows_given, header.version)}")
        _check_context(header.encryption_context, expected_context, i)
        data_key = _sized(key_for(header), header.algorithm)
        try:
            _check_commitment(header, data_key, i)
        except BaseException:
            wipe(data_key)
            raise
        keys[ref] = (header, data_key)
    return keys[ref]


def _check_commitment(header: KeyHeader, data_key: bytearray, i: int) -> None:
    """Once per data key obtained, before any value under it is opened."""
    if header.version == 1:
        _count("uncommitted_keys")
        return
    _count("commitment_checks")
    try:
        header.check_data_key(data_key)
    except AuthenticationError as exc:
        raise AuthenticationError(f"value {i}: {exc}") from None


def _sized(key: bytearray, algorithm: Algorithm) -> bytearray:
    if len(key) != algorithm.key_len:
        wipe(key)
        raise AuthenticationError(f"the data key does not fit {algorithm.name}")
    return key


def _check_context(context: Mapping[str, str], expected: Mapping[str, str] | None, i: int) -> None:
    try:
        check_expected_context(context, expected)
    except KmsEnvError as exc:
        raise type(exc)(f"value {i}: {exc}") from None


# ---------------------------------------------------------------- alibaba (DER) format


def seal_alibaba(algorithm: Algorithm, data_key: Any, header: KeyHeader, col: Column) -> SealedColumn:
    """Seal every present value as a complete Alibaba message sharing one header."""
    ctx = dict(header.encryption_context)
    ctx_bytes = context_bytes(ctx)
    made: list[SealedColumn] = []

    def new_output(size: int) -> SealedColumn:
        made.append(_new_output(col.length, size))
        return made[-1]

    with BackendKey(algorithm, data_key) as key:
        encoded = build_header(key, algorithm, header.encrypted_data_keys, ctx)
        _backend().alibaba_column_seal(key, encoded, ctx_bytes, col, new_output)
    return _finish(made[-1])


def open_alibaba(
    col: Column,
    key_for: KeyFor,
    expected_context: Mapping[str, str] | None = None,
    max_encrypted_data_keys: int = 16,
) -> SealedColumn:
    """Open a column of Alibaba messages; one key lookup and header check per
    distinct header. All or nothing."""
    out = _new_output(col.length, col.span())
    backend = _backend()
    keys: dict[bytes, bytearray] = {}
    try:
        start = 0
        while True:
            start = _next_present(col, start)
            if start >= col.length:
                _fill_offsets(out, col.length)
                break
            value = col.value(start)
            assert value is not None  # start is a present value
            try:
                header, _ = decode_message(value, max_encrypted_data_keys)
                check_expected_context(header.encryption_context, expected_context)
                if not header.algorithm.authenticated:
                    raise MessageFormatError(f"{header.algorithm.name} values are not supported in columns")
            except KmsEnvError as exc:
                raise type(exc)(f"value {start}: {exc}") from None
            kh = KeyHeader(header.algorithm, header.encryption_context, header.encrypted_data_keys)
            data_key = keys.get(kh.digest)
            if data_key is None:
                data_key = keys[kh.digest] = _sized(key_for(kh), header.algorithm)
            ctx_bytes = context_bytes(header.encryption_context)
            with BackendKey(header.algorithm, data_key) as key:
                try:
                    verify_header(key, header)
                except AuthenticationError as exc:
                    raise AuthenticationError(f"value {start}: {exc}") from None
                status, stopped = backend.alibaba_column_open(key, header.encoded, ctx_bytes, col, start, out)
            if status == _OK:
                break
            if status == _AUTH:
                raise AuthenticationError(f"value {stopped}: message body authentication failed")
            if stopped == start:  # its own header, yet the C parser refused it
                raise MessageFormatError(f"value {stopped}: malformed message")
            start = stopped
    except BaseException:
        out.wipe()
        raise
    finally:
        for k in keys.values():
            wipe(k)
    return _finish(out)


# ---------------------------------------------------------------- key sources


class WorkerKeys(Protocol):
    """What a `kmsenv.WorkerSpec` offers a key source: data keys back from headers."""

    key_source_role: ClassVar[str]  # "worker"

    def data_key(self, header: KeyHeader) -> bytearray: ...


class JobKeys(Protocol):
    """What a `kmsenv.JobKey` offers a key source. Protocols, not the classes:
    job keys sit a floor above the column model (jobkey imports columns)."""

    key_source_role: ClassVar[str]  # "job"
    headers: tuple[KeyHeader, ...]

    @property
    def spec(self) -> WorkerKeys: ...

    def data_key(self, header: KeyHeader) -> bytearray: ...

    def header_for(self, partition: int | None = None, partitions: int | None = None) -> KeyHeader: ...

    def reserve_alibaba(self, header: KeyHeader, messages: int, partitions: int | None) -> None: ...


class KeySource:
    """Where data keys come from: a JobKey, a WorkerSpec or a provider."""

    def __init__(self, key: Any) -> None:
        role = getattr(type(key), "key_source_role", None)
        self.job: JobKeys | None = key if role == "job" else None
        self.spec: WorkerKeys | None = key.spec if role == "job" else key if role == "worker" else None
        self.provider: Any = None
        if self.spec is None:
            if not hasattr(key, "decrypt_data_key"):
                raise ConfigurationError(
                    "key must be a kmsenv.JobKey, a kmsenv.WorkerSpec or a data key provider (e.g. kmsenv.KmsKeyProvider)"
                )
            self.provider = key

    def headers(self, ref: bytes, store: KeyHeaderStore | None, extra: Mapping[bytes, KeyHeader]) -> KeyHeader | None:
        if self.job is not None:
            for header in self.job.headers:
                if header.ref == ref:
                    return header
        if ref in extra:
            return extra[ref]
        return store.get(ref) if store is not None else None

    def key_for(self, header: KeyHeader) -> bytearray:
        if self.job is not None:
            return self.job.data_key(self._job_header(header))
        if self.spec is not None:
            return self.spec.data_key(header)
        return unwrap(self.provider, header)

    def _job_header(self, header: KeyHeader) -> KeyHeader:
        """An Alibaba message's header (no commitment) that has the same
        algorithm, context and EDKs as one of the job's headers is looked up
        as that header, so both formats share one cached data key."""
        if header.commitment is None and self.job is not None:
            for own in self.job.headers:
                if own.legacy_form() == header:
                    return own
        return header


def encrypt_with(
    source: KeySource,
    col: Column,
    *,
    format: str,
    encryption_context: Mapping[str, str] | None,
    algorithm: Algorithm | int | None,
    rows: Column | None,
    key_store: KeyHeaderStore | None,
    partition: tuple[int, int] | None = None,
    column: str | None = None,
) -> tuple[SealedColumn, KeyHeader]:
    """Encrypt a column with a key source; returns the output and the key
    header used. ``column`` (compact only; ignored by the Alibaba format, which
    has no place for it) is bound into each value."""
    check_format(format, rows is not None)
    column_name(column)  # a bad name fails before any KMS call
    if source.job is not None:
        job = source.job
        if encryption_context is not None and dict(encryption_context) != dict(job.headers[0].encryption_context):
            raise ConfigurationError("a JobKey carries its own encryption context: set it in JobKey.create()")
        if algorithm is not None:
            raise ConfigurationError("a JobKey carries its own algorithm: set it in JobKey.create()")
        p, n = partition if partition is not None else (None, None)
        header = job.header_for(p, n)
        if format == "alibaba":
            job.reserve_alibaba(header, col.present(), n)
        data_key = source.key_for(header)
        try:
            if format == "compact":
                if key_store is not None:
                    key_store.put(header)
                return seal_compact(header.algorithm, data_key, header, col, rows, column=column), header
            return seal_alibaba(header.algorithm, data_key, header, col), header
        finally:
            wipe(data_key)
    if source.provider is None:
        raise ConfigurationError("a WorkerSpec can only decrypt: encrypt with a JobKey or a provider")
    if format == "compact" and key_store is None:
        raise ConfigurationError(
            "compact values need their key header stored: pass key_store= (encrypt_column keeps it in the "
            "column's metadata), or encrypt with a JobKey whose headers you saved"
        )
    ctx = context_argument(encryption_context)
    alg = choose_algorithm(source.provider, algorithm)
    check_new_algorithm(alg)
    present = col.present()
    if format == "alibaba" and present > 2**28:
        raise ConfigurationError(
            "more than 2^28 values under one data key: split the column, or use the compact format"
        )
    fresh = generate(source.provider, alg, ctx, col.span(), max(1, present))
    try:
        header = KeyHeader.for_data_key(alg, ctx, tuple(fresh.encrypted_data_keys), fresh.plaintext)
        if format == "compact":
            key_store.put(header)  # type: ignore[union-attr]  # not None: compact without a key_store raised above
            return seal_compact(alg, fresh.plaintext, header, col, rows, column=column), header
        return seal_alibaba(alg, fresh.plaintext, header, col), header
    finally:
        fresh.wipe()


def detect_format(col: Column) -> str:
    i = _next_present(col, 0)
    if i >= col.length:
        return "compact"
    value = col.value(i)
    assert value is not None
    if len(value) and value[0] == 0x30:
        return "alibaba"
    return "compact"


def decrypt_with(
    source: KeySource,
    col: Column,
    *,
    format: str | None,
    rows: Column | None,
    key_store: KeyHeaderStore | None,
    headers: Iterable[KeyHeader] = (),
    expected_context: Mapping[str, str] | None = None,
    column: str | None = None,
    allow_uncommitted: bool = False,
) -> SealedColumn:
    """Decrypt a column; ``column`` and ``allow_uncommitted`` apply to compact values."""
    check_format(format, detect=True)
    fmt = format or detect_format(col)
    if fmt == "alibaba":
        if rows is not None:
            raise ConfigurationError("row ids apply to the compact format only")
        return open_alibaba(col, source.key_for, expected_context)
    extra = {h.ref: h for h in headers}
    return open_compact(
        col,
        lambda ref: source.headers(ref, key_store, extra),
        source.key_for,
        rows,
        expected_context,
        column=column,
        allow_uncommitted=allow_uncommitted,
    )


# ---------------------------------------------------------------- lists


def encrypt_values(
    values: Sequence[bytes | bytearray | memoryview | None],
    key: Any,
    *,
    format: str = "compact",
    encryption_context: Mapping[str, str] | None = None,
    algorithm: Algorithm | int | None = None,
    rows: Sequence[bytes | None] | None = None,
    key_store: KeyHeaderStore | None = None,
    column: str | None = None,
) -> list[bytes | None]:
    """Encrypt a list of values (``None`` stays ``None``) for a database column.

    ``key``: a :class:`~kmsenv.JobKey` or a data key provider. ``column``: the
    name of the column the values will be stored in, bound into each compact
    value so that it does not open as another column's (pass the same name to
    :func:`decrypt_values`; without it the empty name is bound, which every
    other column written without one shares). ``rows``: row ids (bytes) to bind
    each value to (compact format only)."""
    if column is not None and format != "compact":
        raise ConfigurationError("column= binds the column name into compact values: it needs format='compact'")
    col = Column.from_values(list(values))
    row_col = Column.from_values(list(rows), "rows") if rows is not None else None
    sealed, _ = encrypt_with(
        KeySource(key),
        col,
        format=format,
        encryption_context=encryption_context,
        algorithm=algorithm,
        rows=row_col,
        key_store=key_store,
        column=column,
    )
    return sealed.values(col)


def decrypt_values(
    values: Sequence[bytes | bytearray | memoryview | None],
    key: Any,
    *,
    format: str | None = None,
    rows: Sequence[bytes | None] | None = None,
    key_store: KeyHeaderStore | None = None,
    expected_encryption_context: Mapping[str, str] | None = None,
    column: str | None = None,
    allow_uncommitted: bool = False,
) -> list[bytes | None]:
    """Decrypt what :func:`encrypt_values` made; all or nothing.

    ``column``: the name given to :func:`encrypt_values` (the values' original
    column name, even if the column was renamed since). ``allow_uncommitted``:
    also open compact format v1 values, written before key commitment
    (refused by default: see ``docs/format.md`` §4)."""
    col = Column.from_values(list(values))
    row_col = Column.from_values(list(rows), "rows") if rows is not None else None
    opened = decrypt_with(
        KeySource(key),
        col,
        format=format,
        rows=row_col,
        key_store=key_store,
        expected_context=expected_encryption_context,
        column=column,
        allow_uncommitted=allow_uncommitted,
    )
    try:
        return opened.values(col)
    finally:
        opened.wipe()
