"""Data-key caching: reuse one KMS data key for many messages, within limits.

:class:`DataKeyCache` holds plaintext data keys (in its own bytearrays, wiped on
eviction, :meth:`~DataKeyCache.clear` and garbage collection); :class:`CachingProvider`
puts it in front of any data-key provider.

Unlike the official SDK's cache (spec sections 10 and 15 item 9), every cache
key names the provider's identity (its CMK ARNs, or the provider object itself
when it has none, e.g. a discovery provider), the algorithm and the whole
context, each part length-prefixed so that no two different inputs share a key.
See docs/caching.md for the limits and why they are what they are.
"""

from __future__ import annotations

import itertools
import math
import struct
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from . import _process
from ._secret import KeyCell
from ._wipe import wipe
from .algorithms import Algorithm
from .exceptions import ConfigurationError
from .model import DataKey, DataKeyProvider, EncryptedDataKey, algorithm_argument, context_argument

__all__ = ["DataKeyCache", "CachingProvider", "CacheStats", "HARD_MAX_MESSAGES"]

#: No data key encrypts more messages than this, whatever the settings: each
#: message spends two random 96-bit GCM IVs (header and body), and NIST SP
#: 800-38D bounds random-IV invocations per key at 2**32; 2**28 keeps the
#: collision probability negligible (about 2**-35).
HARD_MAX_MESSAGES = 2**28

_u32 = struct.Struct(">I").pack
_u64 = struct.Struct(">Q").pack


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int  # entries dropped for capacity, age or exhausted usage limits
    entries: int


@dataclass(frozen=True)
class _Limits:
    max_age: float
    max_messages: int
    max_bytes: int


def _check_limits(max_age: object, max_messages: object, max_bytes: object) -> _Limits:
    if isinstance(max_age, bool) or not isinstance(max_age, (int, float)) or math.isnan(max_age) or max_age < 0:
        raise ConfigurationError("max_age must be a number of seconds >= 0")
    messages = _count("max_messages", max_messages)
    return _Limits(float(max_age), min(messages, HARD_MAX_MESSAGES), _count("max_bytes", max_bytes))


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{name} must be an int >= 0")
    return int(value)


class _Entry:
    """One cached plaintext key. ``edks`` is None for decrypt entries."""

    __slots__ = ("key", "edks", "created", "messages", "bytes")

    def __init__(
        self,
        key: bytes | bytearray,
        edks: tuple[EncryptedDataKey, ...] | None,
        created: float,
        messages: int = 0,
        nbytes: int = 0,
    ):
        self.key = KeyCell(key)
        self.edks = edks
        self.created = created
        self.messages = messages
        self.bytes = nbytes

    def __repr__(self) -> str:
        return f"_Entry(<{len(self.key)}-byte key redacted>, messages={self.messages}, bytes={self.bytes})"


class DataKeyCache:
    """A thread-safe LRU of data keys, shared by any number of :class:`CachingProvider`.

    ``capacity``: entries kept (encrypt and decrypt entries together); the least
    recently used one is evicted and wiped beyond it.  An encrypt entry serves
    while it is younger than ``max_age`` seconds and its key has protected at
    most ``max_messages`` messages (never more than :data:`HARD_MAX_MESSAGES`)
    and ``max_bytes`` plaintext bytes.  Decrypt entries expire by ``max_age``.
    ``clock`` (seconds, monotonic) is injectable for tests.
    """

    def __init__(
        self,
        capacity: int = 100,
        max_age: float = 300.0,
        max_messages: int = 2**20,
        max_bytes: int = 2**40,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigurationError("capacity must be an int >= 1")
        if not callable(clock):
            raise ConfigurationError("clock must be a callable returning seconds")
        self.capacity = capacity
        self.limits = _check_limits(max_age, max_messages, max_bytes)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._hits = self._misses = self._evictions = 0
        _process.track(self)

    @property
    def max_age(self) -> float:
        return self.limits.max_age

    @property
    def max_messages(self) -> int:
        return self.limits.max_messages

    @property
    def max_bytes(self) -> int:
        return self.limits.max_bytes

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._evictions, len(self._entries))

    def clear(self) -> None:
        """Drop and wipe every entry (statistics are kept)."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            entry.key.wipe()

    def _after_fork_in_child(self) -> None:
        """A forked child keeps the decrypt entries (reading needs no budget) and
        drops the encrypt entries: two processes sealing under one cached key
        would each spend its message and byte limits, and the child's copy of
        the parent's lock may be held by a thread that no longer exists."""
        self._lock = _process.new_lock()
        for cache_key, entry in list(self._entries.items()):
            entry.key._after_fork_in_child()
            if entry.edks is not None:
                del self._entries[cache_key]
                entry.key.wipe()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"DataKeyCache(capacity={self.capacity}, max_age={self.max_age}, max_messages={self.max_messages}, "
            f"max_bytes={self.max_bytes}, entries={s.entries}, hits={s.hits}, misses={s.misses})"
        )

    def __del__(self) -> None:
        try:
            self.clear()
        except Exception:  # interpreter shutdown
            pass

    def __reduce__(self) -> Any:
        raise TypeError("a DataKeyCache holds plaintext keys and must not be pickled")

    # -- internals used by CachingProvider (callers hold no lock) -------------

    def _drop(self, cache_key: bytes) -> None:
        """Remove and wipe one entry; the lock is held."""
        entry = self._entries.pop(cache_key)
        self._evictions += 1
        entry.key.wipe()

    def _expired(self, entry: _Entry, limits: _Limits, now: float) -> bool:
        return now - entry.created >= limits.max_age

    def _take_encrypt(self, cache_key: bytes, limits: _Limits, size: int, messages: int) -> DataKey | None:
        """A copy of the cached data key with this use counted, or None (a miss)."""
        with self._lock:
            entry = self._entries.get(cache_key)
            if entry is not None and entry.edks is not None:
                if self._expired(entry, limits, self._clock()):
                    self._drop(cache_key)
                elif entry.messages + messages > limits.max_messages or entry.bytes + size > limits.max_bytes:
                    self._drop(cache_key)  # exhausted: never serve it again
                else:
                    entry.messages += messages
                    entry.bytes += size
                    self._entries.move_to_end(cache_key)
                    self._hits += 1
                    return DataKey._adopt(entry.key.copy(), entry.edks)
            self._misses += 1
            return None

    def _take_decrypt(self, cache_key: bytes, limits: _Limits) -> bytearray | None:
        with self._lock:
            entry = self._entries.get(cache_key)
            if entry is not None and entry.edks is None:
                if self._expired(entry, limits, self._clock()):
                    self._drop(cache_key)
                else:
                    self._entries.move_to_end(cache_key)
                    self._hits += 1
                    return entry.key.copy()
            self._misses += 1
            return None

    def _put(self, cache_key: bytes, entry: _Entry) -> None:
        with self._lock:
            old = self._entries.pop(cache_key, None)
            if old is not None:  # a concurrent miss for the same key got there first
                old.key.wipe()
            self._entries[cache_key] = entry
            while len(self._entries) > self.capacity:
                self._drop(next(iter(self._entries)))

    def _now(self) -> float:
        return self._clock()

    def _count_miss(self) -> None:
        with self._lock:
            self._misses += 1


# ---------------------------------------------------------------- cache keys


from .message.codec import _Memo  # noqa: E402  (a bounded dict, shared with the codec)


def _lp(data: bytes) -> bytes:
    return _u32(len(data)) + data


def _utf8(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise ConfigurationError(f"{what} must be str")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(f"{what} is not encodable as UTF-8") from None


# Cache keys are rebuilt on every call; a warm message spent more time here
# than in its cipher. Only parts built from valid input are remembered.
_CONTEXT_MEMO = _Memo(256)
_EDKS_MEMO = _Memo(256)


def _context_part(ctx: Mapping[str, str]) -> bytes:
    memo_key = tuple(ctx.items())
    part: bytes | None = _CONTEXT_MEMO.get(memo_key)
    if part is None:
        items = sorted(
            (_utf8(k, "encryption context key"), _utf8(v, "encryption context value")) for k, v in ctx.items()
        )
        part = _u32(len(items)) + b"".join(_lp(k) + _lp(v) for k, v in items)
        _CONTEXT_MEMO.put(memo_key, part)
    return part


# The last EDK list's part: a reader of many messages under one data key asks
# for the same EDK objects again, and comparing tuples of identical objects is
# a pointer check, where the memo lookup calls each EDK's __hash__ in Python.
_LAST_EDKS: tuple[tuple[EncryptedDataKey, ...], bytes] = ((), b"")


def _edks_part(edks: Sequence[EncryptedDataKey]) -> bytes:
    global _LAST_EDKS
    given = tuple(edks)
    memo_key: tuple[EncryptedDataKey, ...] | None = given
    for e in given:
        if type(e) is not EncryptedDataKey:  # only real EDKs are remembered
            memo_key = None
            break
    if memo_key is not None:
        last_edks, last_part = _LAST_EDKS
        if last_edks and last_edks == memo_key:
            return last_part
        part: bytes | None = _EDKS_MEMO.get(memo_key)
        if part is not None:
            _LAST_EDKS = (memo_key, part)
            return part
    out = [_u32(len(edks))]
    for edk in edks:
        arn, blob = getattr(edk, "key_arn", None), getattr(edk, "ciphertext_blob", None)
        if not isinstance(blob, (bytes, bytearray)):
            raise ConfigurationError("encrypted_data_keys must be EncryptedDataKey objects")
        out.append(_lp(_utf8(arn, "an encrypted data key's ARN")) + _lp(bytes(blob)))
    part = b"".join(out)
    if memo_key is not None:
        _EDKS_MEMO.put(memo_key, part)
        _LAST_EDKS = (memo_key, part)
    return part


_tokens = itertools.count(1)
_object_tokens: dict[int, int] = {}
_object_tokens_lock = threading.Lock()


def _object_token(obj: object) -> int | None:
    """A process-unique number for ``obj`` while it lives (None if it cannot be
    weakly referenced: the caller then uses a token of its own)."""
    key = id(obj)
    with _object_tokens_lock:
        token = _object_tokens.get(key)
        if token is not None:
            return token
        try:
            weakref.finalize(obj, _forget_token, key)
        except TypeError:
            return None
        token = _object_tokens[key] = next(_tokens)
        return token


def _reset_after_fork() -> None:
    global _object_tokens_lock, _LAST_EDKS
    _object_tokens_lock = _process.new_lock()
    _CONTEXT_MEMO.clear()
    _EDKS_MEMO.clear()
    _LAST_EDKS = ((), b"")


# Object tokens stay: the objects (and their ids) are the same in the child.
_process.register(
    __name__,
    ("_CONTEXT_MEMO", "_EDKS_MEMO", "_LAST_EDKS", "_object_tokens_lock", "_tokens", "_object_tokens"),
    _reset_after_fork,
)


def _forget_token(key: int) -> None:
    with _object_tokens_lock:
        _object_tokens.pop(key, None)


def provider_identity(provider: object) -> bytes:
    """The part of every cache key that says whose keys these are.

    Providers naming CMKs (``key_arns``) are identified by those ARNs in order
    (two providers for the same CMKs share entries); any other provider,
    including a discovery provider whose ``key_arns`` is empty, by the object."""
    kind = type(provider)
    name = _lp(f"{kind.__module__}.{kind.__qualname__}".encode("utf-8", "replace"))
    arns = getattr(provider, "key_arns", None)
    if arns and not isinstance(arns, (str, bytes)):
        arn_list = list(arns)
        if all(isinstance(a, str) and a for a in arn_list):
            return b"A" + name + _u32(len(arn_list)) + b"".join(_lp(_utf8(a, "a CMK ARN")) for a in arn_list)
    token = _object_token(provider)
    if token is None:
        token = next(_tokens)
    return b"O" + name + _u64(token)


# ---------------------------------------------------------------- provider


class CachingProvider:
    """A data-key provider that serves data keys from a :class:`DataKeyCache`.

    ``CachingProvider(provider, cache)`` wraps any provider.  Keyword-only
    ``max_age``/``max_messages``/``max_bytes`` override the cache's limits for
    this wrapper only.

    The byte limit needs each message's plaintext size, which the provider
    protocol does not carry: :meth:`generate_data_key` takes it as the keyword
    ``plaintext_size`` (and ``message_count`` for a batch).  Without a size only
    messages are counted, and ``max_bytes`` is not enforced for that use.
    ``accepts_plaintext_size`` tells a caller it may pass them.
    """

    accepts_plaintext_size = True

    def __init__(
        self,
        provider: DataKeyProvider,
        cache: DataKeyCache,
        *,
        max_age: float | None = None,
        max_messages: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        if not isinstance(cache, DataKeyCache):
            raise ConfigurationError("cache must be a kmsenv.DataKeyCache")
        missing = [m for m in ("generate_data_key", "decrypt_data_key") if not callable(getattr(provider, m, None))]
        if missing:
            raise ConfigurationError(f"provider must be a data key provider (missing {', '.join(missing)})")
        if isinstance(provider, CachingProvider):
            raise ConfigurationError("the provider is already a CachingProvider")
        self.provider = provider
        self.cache = cache
        base = cache.limits
        self._limits = _check_limits(
            base.max_age if max_age is None else max_age,
            base.max_messages if max_messages is None else max_messages,
            base.max_bytes if max_bytes is None else max_bytes,
        )
        self._identity = provider_identity(provider)
        self._prefixes = _Memo(64)  # cache-key prefixes (see _key)
        # The last prefix with a private copy of its context: see _key.
        self._last_prefix: tuple[bytes, Algorithm | None, dict[str, str], bytes] = (b"", None, {}, b"")

    @property
    def algorithm(self) -> Algorithm | None:
        """The wrapped provider's default algorithm (what the engine uses when none is given)."""
        return getattr(self.provider, "algorithm", None)

    @property
    def key_arns(self) -> tuple[str, ...]:
        return tuple(getattr(self.provider, "key_arns", ()) or ())

    def __repr__(self) -> str:
        return f"CachingProvider({self.provider!r}, {self.cache!r})"

    def _key(self, kind: bytes, algorithm: Algorithm, ctx: Mapping[str, str], edks: bytes = b"") -> bytes:
        # Everything before the EDKs repeats per (kind, algorithm, context):
        # built once per wrapper (the identity is fixed at construction).
        # Consecutive calls usually repeat the last one's: comparing two small
        # dicts is one C call, where the memo key costs tuple allocations and
        # a hash (0.4 us). Equal contexts serialise alike (sorted entries).
        last_kind, last_alg, last_ctx, last = self._last_prefix
        if last_kind == kind and last_alg is algorithm and last_ctx == ctx:
            return last + edks
        memo_key = (kind, algorithm, tuple(ctx.items()))
        prefix: bytes | None = self._prefixes.get(memo_key)
        if prefix is None:
            prefix = kind + _lp(self._identity) + _u32(int(algorithm)) + _lp(_context_part(ctx))
            self._prefixes.put(memo_key, prefix)
        self._last_prefix = (kind, algorithm, dict(memo_key[2]), prefix)
        return prefix + edks

    def generate_data_key(
        self,
        algorithm: Algorithm,
        encryption_context: dict[str, str],
        *,
        plaintext_size: int | None = None,
        message_count: int = 1,
    ) -> DataKey:
        """A data key for ``message_count`` messages totalling ``plaintext_size``
        bytes: a fresh copy of a cached one within the limits, else a new one
        from the wrapped provider (then cached).  The caller owns and wipes it."""
        alg = algorithm_argument(algorithm)
        ctx = context_argument(encryption_context)
        # type() is int first: the engine's common case skips the bool checks.
        if (
            plaintext_size is not None
            and not (type(plaintext_size) is int and plaintext_size >= 0)
            and (isinstance(plaintext_size, bool) or not isinstance(plaintext_size, int) or plaintext_size < 0)
        ):
            raise ConfigurationError("plaintext_size must be an int >= 0 or None")
        if not (type(message_count) is int and message_count >= 1) and (
            isinstance(message_count, bool) or not isinstance(message_count, int) or message_count < 1
        ):
            raise ConfigurationError("message_count must be an int >= 1")
        size = plaintext_size or 0
        limits = self._limits
        if message_count > limits.max_messages or size > limits.max_bytes:
            # This use alone exceeds the limits: never cache its key.
            self.cache._count_miss()
            return self.provider.generate_data_key(alg, dict(ctx))
        cache_key = self._key(b"E", alg, ctx)
        hit = self.cache._take_encrypt(cache_key, limits, size, message_count)
        if hit is not None:
            return hit
        data_key = self.provider.generate_data_key(alg, dict(ctx))
        if not isinstance(data_key, DataKey):
            return data_key  # the engine reports the provider's mistake
        if limits.max_age > 0 and len(data_key.plaintext) == alg.key_len:
            entry = _Entry(
                data_key.plaintext, tuple(data_key.encrypted_data_keys), self.cache._now(), message_count, size
            )
            self.cache._put(cache_key, entry)
        return data_key

    def decrypt_data_key(
        self,
        encrypted_data_keys: Sequence[EncryptedDataKey],
        algorithm: Algorithm,
        encryption_context: dict[str, str],
    ) -> bytearray:
        """The plaintext data key for these EDKs (a bytearray the caller owns and wipes)."""
        alg = algorithm_argument(algorithm)
        ctx = context_argument(encryption_context)
        edks = list(encrypted_data_keys)
        cache_key = self._key(b"D", alg, ctx, _edks_part(edks))
        hit = self.cache._take_decrypt(cache_key, self._limits)
        if hit is not None:
            return hit
        key = self.provider.decrypt_data_key(edks, alg, dict(ctx))
        if not isinstance(key, (bytes, bytearray)):
            return key  # the engine reports the provider's mistake
        owned = bytearray(key)
        if isinstance(key, bytearray):
            wipe(key)
        if self._limits.max_age > 0 and len(owned) == alg.key_len:
            self.cache._put(cache_key, _Entry(owned, None, self.cache._now()))
        return owned
