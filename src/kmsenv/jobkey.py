"""Job keys: KMS calls that scale with processes, not rows.

The driver of a Spark/Dask/Ray job calls :meth:`JobKey.create`: one
GenerateDataKey in the primary region and one Encrypt per other region, for
each of the job's data keys. The :class:`JobKey` keeps only the encrypted data
keys (key headers), so it is small, picklable and safe to ship in task
closures, task graphs and actor arguments. Each worker process turns a key
header back into its data key once, through KMS Decrypt in the nearest region
that answers, and keeps it in a process-wide cache (:func:`stats`,
:func:`clear_cache`); the cache is emptied in a forked child and at exit.
KMS calls per job: ``keys * regions + worker processes * keys used``.

A plaintext data key is never pickled: ``JobKey`` and :class:`WorkerSpec`
hold no secret, and neither holds credentials (workers take theirs from their
own environment or RAM role; see :mod:`kmsenv.kmsspec`).
"""

from __future__ import annotations

import atexit
import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

from . import _process
from ._secret import KeyCell
from ._wipe import wipe
from .algorithms import Algorithm
from .arn import Arn
from .exceptions import ConfigurationError
from .keyheader import KeyHeader, KeyHeaderStore
from .kmsspec import KmsSpec

__all__ = [
    "JobKey",
    "WorkerSpec",
    "job_key_for",
    "reader_key",
    "reader",
    "Reader",
    "stats",
    "clear_cache",
    "DEFAULT_MAX_MESSAGES_PER_KEY",
]

#: Messages one data key may seal in the Alibaba (DER) format, where every
#: message uses the data key directly with two random 96-bit IVs: 2^28 messages
#: keep the IV-collision probability near 2^-39 (NIST SP 800-38D allows 2^32
#: invocations). The compact format derives subkeys and has no such limit.
DEFAULT_MAX_MESSAGES_PER_KEY = 2**28
MAX_KEYS_PER_JOB = 4096


@dataclass(frozen=True)
class WorkerSpec:
    """How a worker process gets data keys back: which CMKs it may use, in
    which order, and how it reaches KMS. Picklable; holds no secret.

    ``cmks``: ARNs the worker may decrypt under (``None``: any EDK of the key
    header, as a discovery provider would). ``kms``: a :class:`KmsSpec`.
    ``cache_ttl`` (seconds) and ``cache_max_keys`` bound the process cache.
    ``replica_regions``: as for :class:`~kmsenv.KmsKeyProvider` (regions where
    each CMK also exists with the same key ID, tried after its own).
    ``hedge``/``hedge_after``: the workers' Decrypts are hedged as a
    :class:`~kmsenv.KmsKeyProvider` with these options hedges (off by default).
    """

    key_source_role: ClassVar[str] = "worker"  # columns.KeySource (no import of this module there)

    cmks: tuple[str, ...] | None = None
    kms: KmsSpec = field(default_factory=KmsSpec)
    cache_ttl: float = 3600.0
    cache_max_keys: int = 64
    replica_regions: tuple[str, ...] = ()
    hedge: bool | None = None
    hedge_after: float | None = None

    def __post_init__(self) -> None:
        if self.cmks is not None:
            if isinstance(self.cmks, str):
                raise ConfigurationError("cmks must be a list of ARNs, not one string")
            cmks = tuple(str(Arn.parse(a)) for a in self.cmks)
            if not cmks:
                raise ConfigurationError("cmks must name at least one CMK (or be None for any)")
            object.__setattr__(self, "cmks", cmks)
        if not isinstance(self.kms, KmsSpec):
            raise ConfigurationError("kms must be a kmsenv.kmsspec.KmsSpec")
        if not (isinstance(self.cache_ttl, (int, float)) and self.cache_ttl > 0):
            raise ConfigurationError("cache_ttl must be a positive number of seconds")
        if isinstance(self.cache_max_keys, bool) or not isinstance(self.cache_max_keys, int) or self.cache_max_keys < 1:
            raise ConfigurationError("cache_max_keys must be an int >= 1")
        if isinstance(self.replica_regions, str) or not all(isinstance(r, str) for r in self.replica_regions):
            raise ConfigurationError("replica_regions must be a list of region names")
        object.__setattr__(self, "replica_regions", tuple(self.replica_regions))
        if self.replica_regions and self.cmks is None:
            raise ConfigurationError("replica_regions goes with cmks (the CMKs whose replicas to try)")
        from .providers import hedge_options

        hedge, after = hedge_options(self.hedge, self.hedge_after)  # the provider's own checks
        object.__setattr__(self, "hedge", hedge)
        object.__setattr__(self, "hedge_after", after)

    @classmethod
    def from_provider(cls, provider: Any, **overrides: Any) -> WorkerSpec:
        """The CMKs and public KMS settings of a :class:`~kmsenv.KmsKeyProvider`."""
        arns = getattr(provider, "key_arns", None)
        kms = getattr(provider, "kms", None)
        inner = getattr(provider, "provider", None)  # a CachingProvider wraps one
        if arns is None and inner is not None:
            arns, kms = getattr(inner, "key_arns", None), getattr(inner, "kms", None)
        if kms is None:
            raise ConfigurationError(
                "a WorkerSpec can be derived from a kmsenv.KmsKeyProvider only; build WorkerSpec(cmks=..., kms=KmsSpec(...))"
            )
        source = provider if getattr(provider, "key_arns", None) is not None or inner is None else inner
        values: dict[str, Any] = {
            "cmks": tuple(arns) if arns else None,
            "kms": KmsSpec.from_kms(kms),
            "replica_regions": tuple(getattr(source, "replica_regions", None) or ()),
            "hedge": bool(getattr(source, "hedge", False)),
            "hedge_after": getattr(source, "hedge_after", None),
        }
        values.update(overrides)
        return cls(**values)

    def _provider(self) -> Any:
        """This process's KmsKeyProvider for the spec, CMKs in preference order."""
        key = (self.cmks, self.kms, self.replica_regions, self.hedge, self.hedge_after)
        with _LOCK:
            provider = _PROVIDERS.get(key)
        if provider is not None:
            return provider
        from .providers import KmsKeyProvider

        kms = self.kms.kms()
        hedging: dict[str, Any] = {"hedge": self.hedge, "hedge_after": self.hedge_after}
        if self.cmks is None:
            provider = _PreferringProvider(KmsKeyProvider.discovery(kms=kms, **hedging), self.kms.preferred_regions())
        else:
            provider = KmsKeyProvider(
                *_by_preference(self.cmks, self.kms.preferred_regions()),
                kms=kms,
                replica_regions=self.replica_regions or None,
                **hedging,
            )
        with _LOCK:
            return _PROVIDERS.setdefault(key, provider)

    def data_key(self, header: KeyHeader) -> bytearray:
        """The plaintext data key of ``header`` (a copy the caller wipes)."""
        return _cached_key(self, header)


def _by_preference(arns: Sequence[str], preferred: Sequence[str]) -> list[str]:
    rank = {region: i for i, region in enumerate(preferred)}
    return sorted(arns, key=lambda a: rank.get(Arn.parse(a).region, len(rank)))


class _PreferringProvider:
    """A discovery provider that tries the EDKs of preferred regions first."""

    def __init__(self, inner: Any, preferred: Sequence[str]) -> None:
        self._inner = inner
        self._preferred = tuple(preferred)

    def decrypt_data_key(self, edks: Sequence[Any], algorithm: Algorithm, context: dict[str, str]) -> bytearray:
        order = _by_preference([e.key_arn for e in edks], self._preferred)
        by_arn = {e.key_arn: e for e in edks}
        key: bytearray = self._inner.decrypt_data_key([by_arn[a] for a in order], algorithm, context)
        return key


@dataclass(frozen=True)
class JobKey:
    """The encrypted data keys of one job (no plaintext): see the module doc.

    ``headers``: one :class:`KeyHeader` per data key. ``spec``: how workers get
    the keys back. ``max_messages_per_key``: the Alibaba-format budget per data
    key (the compact format derives a subkey per segment and ignores it).
    """

    key_source_role: ClassVar[str] = "job"  # columns.KeySource (no import of this module there)

    headers: tuple[KeyHeader, ...]
    spec: WorkerSpec
    max_messages_per_key: int = DEFAULT_MAX_MESSAGES_PER_KEY
    rows: int | None = None

    def __post_init__(self) -> None:
        headers = tuple(self.headers)
        if not headers or not all(isinstance(h, KeyHeader) for h in headers):
            raise ConfigurationError("a JobKey needs at least one KeyHeader")
        object.__setattr__(self, "headers", headers)

    @classmethod
    def create(
        cls,
        provider: Any,
        *,
        encryption_context: Mapping[str, str] | None = None,
        rows: int | None = None,
        algorithm: Algorithm | int | None = None,
        max_messages_per_key: int = DEFAULT_MAX_MESSAGES_PER_KEY,
        spec: WorkerSpec | None = None,
        key_store: KeyHeaderStore | None = None,
    ) -> JobKey:
        """Make the job's data keys on the driver and keep only their EDKs.

        ``rows`` (an upper bound on the values the job seals) sets the number
        of data keys, ``ceil(rows / max_messages_per_key)``, so that the
        Alibaba format never exceeds its per-key budget; without it one key is
        made and each process enforces the budget on its own use. ``spec``
        defaults to ``WorkerSpec.from_provider(provider)``. ``key_store``, when
        given, receives every header (the compact format needs them to read)."""
        if (
            isinstance(max_messages_per_key, bool)
            or not isinstance(max_messages_per_key, int)
            or not (1 <= max_messages_per_key <= DEFAULT_MAX_MESSAGES_PER_KEY)
        ):
            raise ConfigurationError(f"max_messages_per_key must be an int in 1..{DEFAULT_MAX_MESSAGES_PER_KEY}")
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 0):
            raise ConfigurationError("rows must be a non-negative int")
        count = max(1, math.ceil((rows or 0) / max_messages_per_key))
        if count > MAX_KEYS_PER_JOB:
            raise ConfigurationError(
                f"{rows} rows at {max_messages_per_key} messages per key would need {count} data keys "
                f"(at most {MAX_KEYS_PER_JOB}); use the compact format, which has no per-key budget"
            )
        spec = spec if spec is not None else WorkerSpec.from_provider(provider)
        from ._envelope import check_new_algorithm, choose_algorithm, context_argument, generate

        ctx = context_argument(encryption_context)
        alg = choose_algorithm(provider, algorithm)
        check_new_algorithm(alg, what="a JobKey", error=ConfigurationError)
        headers = []
        for _ in range(count):
            data_key = generate(provider, alg, ctx)
            try:
                # The header commits to the key (compact format v2, docs/format.md §4).
                headers.append(
                    KeyHeader.for_data_key(alg, ctx, tuple(data_key.encrypted_data_keys), data_key.plaintext)
                )
            finally:
                data_key.wipe()  # the driver keeps EDKs only
        job = cls(tuple(headers), spec, max_messages_per_key, rows)
        if hasattr(provider, "decrypt_data_key"):
            object.__setattr__(job, "_local", (os.getpid(), provider))
        if key_store is not None:
            job.save(key_store)
        return job

    # In the process that created it, a JobKey decrypts with the provider it
    # came from (its credentials included); that provider is never pickled.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)

    def _local_provider(self) -> Any:
        local = self.__dict__.get("_local")
        return local[1] if local is not None and local[0] == os.getpid() else None

    def data_key(self, header: KeyHeader) -> bytearray:
        """The plaintext data key of ``header``, through this process's cache
        (a copy the caller wipes)."""
        return _cached_key(self.spec, header, self._local_provider())

    def reserve_alibaba(self, header: KeyHeader, messages: int, partitions: int | None) -> None:
        """Count ``messages`` Alibaba-format values under ``header`` against the
        key's budget in this process (refused when over it)."""
        _reserve(self, header, messages, partitions)

    def save(self, store: KeyHeaderStore) -> None:
        """Put every header of this job into ``store``."""
        for header in self.headers:
            store.put(header)

    def header_for(self, partition: int | None = None, partitions: int | None = None) -> KeyHeader:
        """The key header partition ``partition`` of ``partitions`` uses: key
        ``partition * K // partitions`` of K, so each key covers a contiguous
        share of at most ``ceil(partitions / K)`` partitions."""
        if partition is None:
            return self.headers[0]
        if partitions is None or not (0 <= partition < partitions):
            raise ConfigurationError("partition must be in range(partitions)")
        return self.headers[partition * len(self.headers) // partitions]

    def budget_for(self, partitions: int | None) -> int:
        """Most Alibaba-format messages one partition may seal (the per-key
        budget shared by the partitions that map to one key)."""
        if partitions is None:
            return self.max_messages_per_key
        share = math.ceil(partitions / len(self.headers))
        return max(1, self.max_messages_per_key // share)

    def __repr__(self) -> str:
        header = self.headers[0]
        return (
            f"JobKey(keys={len(self.headers)}, algorithm={header.algorithm.name}, "
            f"encryption_context={dict(header.encryption_context)!r}, "
            f"key_arns={[e.key_arn for e in header.encrypted_data_keys]!r}, "
            f"refs={[h.ref.hex() for h in self.headers]!r})"
        )


# ---------------------------------------------------------------- what the adapters take


def job_key_for(
    key: Any,
    *,
    format: str,
    encryption_context: Mapping[str, str] | None = None,
    rows: int | None = None,
    key_store: KeyHeaderStore | None = None,
) -> JobKey:
    """The JobKey an engine adapter encrypts with: ``key`` itself, or one made
    here (on the driver) from a data key provider. A compact-format job made
    here must leave its headers in ``key_store``: nobody else sees the JobKey."""
    if isinstance(key, JobKey):
        if encryption_context is not None or rows is not None:
            raise ConfigurationError(
                "a JobKey carries its own encryption context and key count: set them in JobKey.create()"
            )
        if key_store is not None:
            key.save(key_store)
        return key
    if isinstance(key, WorkerSpec):
        raise ConfigurationError("a WorkerSpec can only decrypt: encrypt with a kmsenv.JobKey or a data key provider")
    if not hasattr(key, "decrypt_data_key"):
        raise ConfigurationError("key must be a kmsenv.JobKey or a data key provider (e.g. kmsenv.KmsKeyProvider)")
    if format == "compact" and key_store is None:
        raise ConfigurationError(
            "compact values need their key header to read: pass key_store=, or create the JobKey yourself "
            "(JobKey.create(provider, key_store=store)) and keep it"
        )
    return JobKey.create(key, encryption_context=encryption_context, rows=rows, key_store=key_store)


def reader_key(key: Any) -> JobKey | WorkerSpec:
    """What an adapter ships to its workers to decrypt: a JobKey or WorkerSpec
    as given; a provider becomes its WorkerSpec, so the provider (its KMS
    client, possibly its credentials) never leaves the driver."""
    if isinstance(key, (JobKey, WorkerSpec)):
        return key
    if not hasattr(key, "decrypt_data_key"):
        raise ConfigurationError("key must be a kmsenv.JobKey, a kmsenv.WorkerSpec or a data key provider")
    return WorkerSpec.from_provider(key)


@dataclass(frozen=True)
class Reader:
    """A column reader's checked arguments, shared by every ``decrypt_column``
    front end (arrow, dask, spark, ray): what key to ship, the format (None:
    detect), the name compact values are bound to, and the v1 opt-in."""

    key: Any
    format: str | None
    aad_name: str
    allow_uncommitted: bool


def reader(
    key: Any, column: str, *, format: str | None, aad_name: str | None, allow_uncommitted: bool, ship: bool = True
) -> Reader:
    """Check a ``decrypt_column`` call's arguments once, for every engine.
    ``ship``: the key goes to other processes (a provider becomes its
    WorkerSpec, see :func:`reader_key`); in-process readers keep it as given."""
    from .columns import check_format

    check_format(format, detect=True)
    if not isinstance(column, str) or not column:
        raise ConfigurationError("column must be a non-empty column name")
    if aad_name is not None and not isinstance(aad_name, str):
        raise ConfigurationError("aad_name must be a column name (str)")
    return Reader(
        reader_key(key) if ship else key, format, aad_name if aad_name is not None else column, bool(allow_uncommitted)
    )


# ---------------------------------------------------------------- the process cache


class _Entry:
    __slots__ = ("key", "expires", "sealed")

    def __init__(self, key: bytearray, expires: float) -> None:
        self.key = KeyCell(key)
        self.expires = expires
        self.sealed = 0  # Alibaba-format messages sealed by this process


_LOCK = threading.Lock()
_CACHE: "OrderedDict[bytes, _Entry]" = OrderedDict()
_PROVIDERS: dict[tuple[Any, ...], Any] = {}
_FETCH_LOCKS: dict[bytes, threading.Lock] = {}
_STATS = {"kms_decrypts": 0, "hits": 0, "evictions": 0}


def _evict(digest: bytes) -> None:
    entry = _CACHE.pop(digest, None)
    if entry is not None:
        entry.key.wipe()
        _STATS["evictions"] += 1


def _lookup(header: KeyHeader) -> _Entry | None:
    now = time.monotonic()
    entry = _CACHE.get(header.digest)
    if entry is not None and entry.expires <= now:
        _evict(header.digest)
        entry = None
    if entry is not None:
        _CACHE.move_to_end(header.digest)
    return entry


def _hit(header: KeyHeader, messages: int, limit: int | None) -> bytearray | None:
    """A copy of the cached key, taken under the lock that guards its wiping
    (so an eviction by another thread can never leave us a zeroed copy), with
    ``messages`` counted against ``limit``; None on a miss. ``_LOCK`` is held."""
    entry = _lookup(header)
    if entry is None:
        return None
    _STATS["hits"] += 1
    _count(entry, messages, limit)
    return entry.key.copy()


def _count(entry: _Entry, messages: int, limit: int | None) -> None:
    if limit is not None and entry.sealed + messages > limit:
        raise ConfigurationError(
            f"the data key would seal more than {limit} messages in the Alibaba format; "
            "create the JobKey with rows= set to the row count (more keys), or use the compact format"
        )
    entry.sealed += messages


def _cached_key(
    spec: WorkerSpec, header: KeyHeader, provider: Any = None, *, messages: int = 0, limit: int | None = None
) -> bytearray:
    """The data key of ``header`` (a copy the caller wipes), from this process's
    cache or through one KMS Decrypt per key, however many threads miss at once."""
    with _LOCK:
        key = _hit(header, messages, limit)
        if key is not None:
            return key
        fetch_lock = _FETCH_LOCKS.setdefault(header.digest, threading.Lock())
    with fetch_lock:
        with _LOCK:
            key = _hit(header, messages, limit)
            if key is not None:
                return key
        from ._envelope import unwrap

        fetched = unwrap(provider if provider is not None else spec._provider(), header)
        try:
            with _LOCK:
                _STATS["kms_decrypts"] += 1
                entry = _Entry(fetched, time.monotonic() + spec.cache_ttl)
                _CACHE[header.digest] = entry
                _FETCH_LOCKS.pop(header.digest, None)
                while len(_CACHE) > spec.cache_max_keys:
                    _evict(next(iter(_CACHE)))
                _count(entry, messages, limit)
                return entry.key.copy()
        finally:
            wipe(fetched)


def _reserve(job: JobKey, header: KeyHeader, messages: int, partitions: int | None) -> None:
    """Count Alibaba-format messages against the key's budget in this process."""
    if partitions is not None:
        if messages > job.budget_for(partitions):
            raise ConfigurationError(
                f"this partition holds {messages} values, over its share of the data key's budget "
                f"({job.budget_for(partitions)} of {job.max_messages_per_key} messages per key for "
                f"{partitions} partitions over {len(job.headers)} keys); create the JobKey with rows= "
                "set to the row count (more keys), or use the compact format"
            )
        return
    wipe(_cached_key(job.spec, header, job._local_provider(), messages=messages, limit=job.max_messages_per_key))


def stats() -> dict[str, int]:
    """This process's job-key cache figures: KMS Decrypt calls made, hits,
    evictions and keys held (e.g. through Dask ``Client.run(kmsenv.jobkey.stats)``)."""
    with _LOCK:
        return dict(_STATS, keys=len(_CACHE), pid=os.getpid())


def clear_cache() -> None:
    """Wipe and drop every cached data key of this process (and reset the figures)."""
    with _LOCK:
        for digest in list(_CACHE):
            _evict(digest)
        _PROVIDERS.clear()
        _FETCH_LOCKS.clear()
        for k in _STATS:
            _STATS[k] = 0


def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = _process.new_lock()
    for entry in _CACHE.values():
        entry.key._after_fork_in_child()
        entry.key.wipe()
    _CACHE.clear()
    _PROVIDERS.clear()
    _FETCH_LOCKS.clear()
    for k in _STATS:
        _STATS[k] = 0


_process.register(__name__, ("_LOCK", "_CACHE", "_PROVIDERS", "_FETCH_LOCKS", "_STATS"), _after_fork_in_child)
atexit.register(clear_cache)
