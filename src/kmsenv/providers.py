"""Data-key providers backed by Alibaba Cloud KMS.

:class:`KmsKeyProvider` wraps each data key under one or more CMKs, possibly in
several regions (GenerateDataKey under the first, then ReEncrypt for CMKs in
the same region and Encrypt elsewhere, concurrently), and unwraps with failover
across the CMKs it names.  ``KmsKeyProvider.discovery(...)`` unwraps any
encrypted data key whose ARN lies in allowed accounts/regions.

``data_key_source="local"`` draws the data key from the crypto backend's CSPRNG
and sends Encrypt to every CMK at once: one round trip whatever the number of
regions. With ``hedge=True``, decrypt is hedged: a region that has not answered within its hedge
delay gets company from the next candidate's region (see :mod:`kmsenv._hedge`).

Specs: alibaba-message-format.md sections 8, 12 and 15.
"""

from __future__ import annotations

import dataclasses

import functools
import logging
import math
import queue
import threading
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from kmsenv import _process
from kmsenv._hedge import HedgeStats, Hedging
from kmsenv.algorithms import Algorithm
from kmsenv.arn import Arn
from kmsenv.exceptions import ConfigurationError, KmsError, NoUsableKeyError
from kmsenv.model import DataKey, EncryptedDataKey, algorithm_argument, context_argument

__all__ = ["KmsKeyProvider", "HedgeStats", "DATA_KEY_SOURCES"]

#: Where ``generate_data_key`` gets the data key: ``"kms"`` (GenerateDataKey in
#: the first CMK's region, then Encrypt/ReEncrypt for the others: two round
#: trips) or ``"local"`` (the crypto backend's CSPRNG, then Encrypt under every
#: CMK at once: one round trip).
DATA_KEY_SOURCES = ("kms", "local")

logger = logging.getLogger("kmsenv")

# ---------------------------------------------------------------------------
# Shared thread pool for the per-CMK calls of an encrypt
# ---------------------------------------------------------------------------

_POOL_WORKERS = 32
_POOL_PREFIX = "kmsenv-kms"
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


class _DaemonWorkers:
    """Reusable daemon threads for Decrypt calls that may be abandoned (hedged
    decrypt). Not a ThreadPoolExecutor: its workers are joined at interpreter
    exit, and an abandoned call to a slow region would hold exit up for the
    read timeout. Not a thread per call either: starting a thread costs more
    than the hand-off. A task never queues behind a busy call: :meth:`submit`
    hands it to an idle worker or a new one, or returns None when ``limit``
    are busy (the caller then runs it itself, unhedged)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._tasks: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._threads = 0
        self._idle = 0  # workers free for a new task (waiting, or about to)

    def _after_fork_in_child(self) -> None:  # the parent's workers do not exist here
        self._lock = _process.new_lock()
        self._tasks = queue.SimpleQueue()
        self._threads = self._idle = 0

    def submit(self, fn: Callable[[], Any]) -> Future[Any] | None:
        with self._lock:
            if self._idle:
                self._idle -= 1
                start = False
            elif self._threads < self.limit:
                self._threads += 1
                start = True
            else:
                return None
        if start:
            try:
                threading.Thread(target=self._work, name=_DECRYPT_PREFIX, daemon=True).start()
            except RuntimeError:  # no new thread (interpreter shutting down, or a limit)
                with self._lock:
                    self._threads -= 1
                return None
        future: Future[Any] = Future()
        self._tasks.put((future, fn))
        return future

    def idle(self) -> tuple[int, int]:
        """(idle workers, workers): for tests."""
        with self._lock:
            return self._idle, self._threads

    def _work(self) -> None:
        while True:
            future, fn = self._tasks.get()
            if future.set_running_or_notify_cancel():
                try:
                    result = fn()
                except BaseException as e:  # delivered through the future
                    future.set_exception(e)
                else:
                    future.set_result(result)
            del future, fn  # nothing of the last call (a data key) stays referenced
            with self._lock:
                self._idle += 1


_DECRYPT_PREFIX = _POOL_PREFIX + "-decrypt"
_decrypt_workers = _DaemonWorkers(64)


def _shared_pool() -> ThreadPoolExecutor:
    global _pool
    pool = _pool
    if pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=_POOL_WORKERS, thread_name_prefix=_POOL_PREFIX)
            pool = _pool
    return pool


def _reset_pool_after_fork() -> None:  # a forked child cannot use the parent's threads
    global _pool, _pool_lock
    _pool = None
    _pool_lock = _process.new_lock()
    _decrypt_workers._after_fork_in_child()


_process.register(__name__, ("_pool", "_pool_lock", "_decrypt_workers"), _reset_pool_after_fork)


def _wipe(buf: bytearray | None) -> None:
    if buf is None:
        return
    try:
        from kmsenv._wipe import wipe

        wipe(buf)
    except Exception:
        buf[:] = bytes(len(buf))


def _key_request(algorithm: Algorithm) -> dict[str, Any]:
    """GenerateDataKey arguments for an algorithm: KeySpec for AES, NumberOfBytes for SM4."""
    if algorithm.info.cipher == "AES":
        return {"key_spec": algorithm.info.kms_key_spec}
    return {"number_of_bytes": algorithm.key_len}


def _string_list(values: object, what: str, check: Callable[[str], bool]) -> tuple[str, ...] | None:
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ConfigurationError(f"{what} must be a list of str (e.g. {what}=['...'])")
    items = tuple(values)
    if not items:
        raise ConfigurationError(f"{what} is empty: it would allow nothing; pass None for no restriction")
    for item in items:
        if not isinstance(item, str) or not check(item):
            raise ConfigurationError(f"invalid entry {item!r} in {what}")
    return items


def _valid_region(region: str) -> bool:
    try:
        Arn(region, "0", "x")
    except ConfigurationError:
        return False
    return True


def _valid_account(account: str) -> bool:
    try:
        Arn("r", account, "x")
    except ConfigurationError:
        return False
    return True


def _data_key_source(value: object) -> str:
    if isinstance(value, str) and value in DATA_KEY_SOURCES:
        return value
    raise ConfigurationError(
        "data_key_source must be 'kms' (GenerateDataKey in the first CMK's region, the default) or 'local' "
        f"(a key from the local CSPRNG, then Encrypt under every CMK at once), not {value!r}"
    )


def hedge_options(hedge: object, hedge_after: object) -> tuple[bool, float | None]:
    """``hedge``/``hedge_after`` checked as KmsKeyProvider takes them: (enabled, fixed delay or None)."""
    # Off unless asked for: a hedge is an extra KMS call (billed, and counted
    # against the account's QPS), and a cold or loaded process would make some.
    if hedge is None:
        hedge = hedge_after is not None
    if not isinstance(hedge, bool):
        raise ConfigurationError(f"hedge must be True or False, not {hedge!r}")
    if hedge_after is None:
        return hedge, None
    if not hedge:
        raise ConfigurationError("hedge_after sets the hedge delay: it cannot be combined with hedge=False")
    if (
        isinstance(hedge_after, bool)
        or not isinstance(hedge_after, (int, float))
        or not math.isfinite(hedge_after)
        or not 0 < hedge_after <= 60
    ):
        raise ConfigurationError(f"hedge_after must be a number of seconds, > 0 and <= 60, not {hedge_after!r}")
    return True, float(hedge_after)


def _fresh_data_key(length: int) -> bytearray:
    """``length`` bytes from the crypto backend's CSPRNG (OpenSSL's RAND_bytes
    DRBG with the native core; the operating system's with the pure backend),
    in a buffer the caller wipes."""
    from kmsenv.crypto import get_backend

    key = bytearray(length)
    try:
        get_backend().random_into(key)  # in place: no immutable copy of the key
    except BaseException:
        _wipe(key)
        raise
    if len(key) != length:
        _wipe(key)
        raise KmsError(
            f"the crypto backend returned {len(key)} random bytes for a {length}-byte data key",
            code="InvalidDataKeyLength",
        )
    return key


@dataclass
class _Attempt:
    """One Decrypt call of a hedged pass: which candidate, and since when."""

    index: int  # position among the candidates
    edk: EncryptedDataKey
    region: str
    hedge: bool
    sent: float  # time.monotonic() when handed over


def _is_instance(kms: Any, region: str) -> bool:
    check = getattr(kms, "is_instance", None)
    return bool(check(region)) if callable(check) else False


def _replica_regions(regions: Iterable[str] | None, arns: Sequence[Arn]) -> tuple[str, ...]:
    """``replica_regions``: regions where every CMK of the provider also exists
    with the same key ID (KMS 3.0 instances synchronized to replicas)."""
    if regions is None:
        return ()
    if isinstance(regions, (str, bytes)) or not isinstance(regions, Iterable):
        raise ConfigurationError("replica_regions is a list of regions, e.g. replica_regions=['cn-shanghai']")
    listed = tuple(regions)
    if not listed:
        return ()
    out = _string_list(listed, "replica_regions", _valid_region)
    assert out is not None
    for arn in arns:
        if arn.region in out:
            raise ConfigurationError(f"replica region {arn.region!r} is the region of {arn} itself")
    if len(set(out)) != len(out):
        raise ConfigurationError("replica_regions lists a region twice")
    return tuple(out)


class KmsKeyProvider:
    """Wrap data keys under KMS CMKs, in one or several regions.

    ``KmsKeyProvider(arn1, arn2, ..., kms=None, algorithm=Algorithm.AES_GCM_NOPADDING_256,
    data_key_source="kms", hedge=None, hedge_after=None)``.

    Encrypt with ``data_key_source="kms"`` (the default): GenerateDataKey under
    the first CMK (the primary), then ReEncrypt (same region) or Encrypt (other
    regions) for every other CMK, concurrently, with the same encryption
    context: two round trips. With ``data_key_source="local"``: the data key
    comes from the crypto backend's CSPRNG (the length GenerateDataKey would
    give) and every CMK gets an Encrypt, all at once: one round trip, whatever
    the number of regions; the messages are the same. Either way any failure
    fails the encrypt (the error of the first CMK, in this provider's order,
    among those that had failed when the failure was seen) and the plaintext
    key is wiped.

    Decrypt tries the message's encrypted data keys whose ARN this provider
    names, in this provider's order, failing over on any KMS error. With
    ``hedge=True`` (off by default: a hedge is an extra, billed KMS call), a region that has not answered within its
    hedge delay (adaptive, see :mod:`kmsenv._hedge`, or ``hedge_after``
    seconds) gets company: the same Decrypt goes to the next candidate's
    region, the first success wins and the other answer is wiped when it comes.
    A budget keeps hedges to about 10 % of the decrypts (plus a burst of 10).
    :meth:`stats` counts decrypts, calls and hedges.

    ``replica_regions``: regions where each CMK also exists under the same key
    ID, as a KMS 3.0 instance's keys do in its replica instances (give the
    :class:`~kmsenv.Kms` an instance endpoint for each). Encrypt makes one data
    key under the CMK in its own region, or in the first replica region that
    answers when its region does not, and writes one EDK naming the CMK;
    decrypt tries the CMK's region, then the replicas in order. Whether real
    replicas keep key IDs and versions is Alibaba's documentation, not yet
    checked on an account: docs/kms-instances.md says how to check.
    """

    def __init__(
        self,
        *cmk_arns: str,
        kms: Any = None,
        algorithm: Algorithm = Algorithm.AES_GCM_NOPADDING_256,
        data_key_source: str = "kms",
        hedge: bool | None = None,
        hedge_after: float | None = None,
        replica_regions: Iterable[str] | None = None,
    ) -> None:
        if len(cmk_arns) == 1 and isinstance(cmk_arns[0], (list, tuple, set, frozenset)):
            raise ConfigurationError(
                "pass CMK ARNs as separate arguments: KmsKeyProvider(*arns), not KmsKeyProvider(arns)"
            )
        if not cmk_arns:
            raise ConfigurationError(
                "KmsKeyProvider needs at least one CMK ARN "
                "(readers that do not know the writer's CMKs can use KmsKeyProvider.discovery(...))"
            )
        arns: list[Arn] = []
        seen: set[str] = set()
        for position, text in enumerate(cmk_arns, 1):
            try:
                arn = Arn.parse(text)
            except ConfigurationError as e:
                raise ConfigurationError(f"CMK #{position}: {e}") from None
            if str(arn) in seen:
                raise ConfigurationError(f"CMK ARN {str(arn)!r} is listed twice")
            seen.add(str(arn))
            arns.append(arn)
        self._setup(
            tuple(arns),
            kms,
            algorithm,
            discovery=None,
            data_key_source=data_key_source,
            hedge=hedge,
            hedge_after=hedge_after,
        )
        self.replica_regions: tuple[str, ...] = _replica_regions(replica_regions, arns)

    @classmethod
    def discovery(
        cls,
        regions: Iterable[str] | None = None,
        account_ids: Iterable[str] | None = None,
        kms: Any = None,
        *,
        algorithm: Algorithm = Algorithm.AES_GCM_NOPADDING_256,
        hedge: bool | None = None,
        hedge_after: float | None = None,
    ) -> KmsKeyProvider:
        """A decrypt-only provider that may use any encrypted data key whose ARN
        is in one of ``account_ids`` and ``regions`` (``None`` = no restriction
        on that part).  Encrypting with it raises :class:`ConfigurationError`.
        ``hedge``/``hedge_after``: as for :class:`KmsKeyProvider`."""
        region_filter = _string_list(regions, "regions", _valid_region)
        account_filter = _string_list(account_ids, "account_ids", _valid_account)
        self = cls.__new__(cls)
        self._setup(
            (),
            kms,
            algorithm,
            discovery=(region_filter, account_filter),
            data_key_source="kms",
            hedge=hedge,
            hedge_after=hedge_after,
        )
        return self

    def _setup(
        self,
        arns: tuple[Arn, ...],
        kms: Any,
        algorithm: object,
        discovery: Any,
        *,
        data_key_source: object,
        hedge: object,
        hedge_after: object,
    ) -> None:
        self.algorithm: Algorithm = algorithm_argument(algorithm)
        self.data_key_source: str = _data_key_source(data_key_source)
        enabled, after = hedge_options(hedge, hedge_after)
        self._arns = arns
        self.key_arns: tuple[str, ...] = tuple(str(a) for a in arns)
        self._discovery = discovery
        if kms is None:
            from kmsenv.kms import Kms

            kms = Kms()
        else:
            missing = [m for m in ("generate_data_key", "encrypt", "re_encrypt", "decrypt") if not hasattr(kms, m)]
            if missing:
                raise ConfigurationError(f"kms must be a kmsenv.Kms (missing {', '.join(missing)})")
        self.kms = kms
        self._hedging = Hedging(enabled, after)
        self.replica_regions = ()

    @property
    def is_discovery(self) -> bool:
        return self._discovery is not None

    @property
    def hedge(self) -> bool:
        """Whether decrypts are hedged."""
        return self._hedging.enabled

    @property
    def hedge_after(self) -> float | None:
        """The fixed hedge delay in seconds, or None for the adaptive one."""
        return self._hedging.after

    def stats(self) -> HedgeStats:
        """Decrypts, Decrypt calls and hedges since this provider was made."""
        return self._hedging.stats()

    def _options_repr(self) -> str:
        """The non-default options, as they would be passed."""
        parts = []
        if self._discovery is None and self.data_key_source != "kms":
            parts.append(f"data_key_source={self.data_key_source!r}")
        if self.replica_regions:
            parts.append(f"replica_regions={list(self.replica_regions)!r}")
        if self._hedging.enabled and self._hedging.after is None:
            parts.append("hedge=True")
        elif self._hedging.enabled:
            parts.append(f"hedge_after={self._hedging.after!r}")
        return "".join(", " + p for p in parts)

    def __repr__(self) -> str:
        if self._discovery is not None:
            regions, accounts = self._discovery
            return (
                f"KmsKeyProvider.discovery(regions={list(regions) if regions else None!r}, "
                f"account_ids={list(accounts) if accounts else None!r}{self._options_repr()})"
            )
        args = ", ".join(repr(a) for a in self.key_arns)
        return f"KmsKeyProvider({args}, algorithm={self.algorithm.name}{self._options_repr()})"

    # -- encrypt --------------------------------------------------------------

    def generate_data_key(self, algorithm: Algorithm, encryption_context: dict[str, str]) -> DataKey:
        """A fresh data key wrapped under every CMK (in this provider's order)."""
        if self._discovery is not None:
            raise ConfigurationError(
                "a discovery provider cannot encrypt: create KmsKeyProvider(arn, ...) with the CMKs to encrypt under"
            )
        algorithm = algorithm_argument(algorithm)
        ctx = context_argument(encryption_context)
        if self.data_key_source == "local":
            return self._generate_locally(algorithm, ctx)
        primary = self._arns[0]
        plaintext, blob = self._generate_with_replicas(primary, algorithm, ctx)
        try:
            if len(plaintext) != algorithm.key_len:
                raise KmsError(
                    f"KMS GenerateDataKey under {primary} returned a {len(plaintext)}-byte data key; "
                    f"{algorithm.name} needs {algorithm.key_len} bytes",
                    code="InvalidDataKeyLength",
                    region=primary.region,
                )
            edks = [EncryptedDataKey(str(primary), blob)]
            others = self._arns[1:]
            if others and _in_own_pool():
                # Called from one of our own pool threads: waiting on the pool
                # could deadlock, so wrap sequentially.
                edks.extend(self._wrap(primary, blob, plaintext, arn, ctx) for arn in others)
            elif others:
                pool = _shared_pool()
                edks.extend(
                    self._collect([pool.submit(self._wrap, primary, blob, plaintext, arn, ctx) for arn in others])
                )
            return DataKey(plaintext, edks)
        finally:
            _wipe(plaintext)

    def _generate_with_replicas(
        self, primary: Arn, algorithm: Algorithm, ctx: dict[str, str]
    ) -> tuple[bytearray, bytes]:
        """GenerateDataKey under the primary CMK; when its region cannot answer
        (a retryable error), under the same key in each replica region in turn.
        The blob is the same key's either way: the EDK keeps the primary ARN."""
        regions = (primary.region, *self.replica_regions)
        errors: list[tuple[str, BaseException]] = []
        for i, region in enumerate(regions):
            arn = primary if region == primary.region else dataclasses.replace(primary, region=region)
            try:
                result: tuple[bytearray, bytes] = self.kms.generate_data_key(
                    str(arn), encryption_context=ctx, **_key_request(algorithm)
                )
                return result
            except KmsError as e:
                if not self.replica_regions:
                    raise
                errors.append((str(arn), e))
                if not e.retryable or i == len(regions) - 1:
                    break
                logger.warning(
                    "kmsenv: GenerateDataKey in %s failed (%s); trying replica %s", region, e.code, regions[i + 1]
                )
        details = "; ".join(f"{arn}: {err}" for arn, err in errors)
        raise NoUsableKeyError(
            f"could not generate a data key under {primary} in any of its regions: {details}", errors=errors
        )

    def _generate_locally(self, algorithm: Algorithm, ctx: dict[str, str]) -> DataKey:
        """One round trip: the data key from the local CSPRNG (GenerateDataKey's
        length: KeySpec's for AES, 16 bytes for SM4), Encrypt under every CMK at
        once. Each blob is what KMS Encrypt returns, as for today's non-primary
        CMKs, so every reader (the official SDKs too) unwraps it with Decrypt."""
        plaintext = _fresh_data_key(algorithm.key_len)
        try:
            first, others = self._arns[0], self._arns[1:]
            if not others or _in_own_pool():
                edks = [self._encrypt_under(arn, plaintext, ctx) for arn in self._arns]
            else:
                # The others go to the pool first; this thread then does the
                # first CMK's Encrypt itself instead of sleeping on the pool (one
                # thread hand-off less on the critical path, as the default path
                # does with GenerateDataKey).
                pool = _shared_pool()
                futures = [pool.submit(self._encrypt_under, arn, plaintext, ctx) for arn in others]
                try:
                    head = self._encrypt_under(first, plaintext, ctx)
                except BaseException as e:
                    raise self._with_notes(e, futures) from None
                edks = [head, *self._collect(futures)]
            return DataKey(plaintext, edks)
        finally:
            _wipe(plaintext)

    @classmethod
    def _collect(cls, futures: list[Future[Any]]) -> list[Any]:
        """Every result, in order; on the first failure, stop waiting, cancel what
        has not started and raise it (the earliest CMK's among those that failed)."""
        done, not_done = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None]
        if failed:
            for f in not_done:
                f.cancel()
            raise cls._first_failure(failed)
        return [f.result() for f in futures]

    @staticmethod
    def _with_notes(first: BaseException, futures: list[Future[Any]]) -> BaseException:
        """``first`` (the first CMK's failure), noting the others that had failed
        too by then; those not started are cancelled."""
        failed = []
        for f in futures:
            if not f.cancel() and f.done() and f.exception() is not None:
                failed.append(f)
        for f in failed:
            if hasattr(first, "add_note"):
                first.add_note(f"also failed: {f.exception()}")
        return first

    @staticmethod
    def _first_failure(failed: list[Future[Any]]) -> BaseException:
        first = failed[0].exception()
        assert first is not None
        for other in failed[1:]:
            exc = other.exception()
            if exc is not None and hasattr(first, "add_note"):
                first.add_note(f"also failed: {exc}")
        return first

    def _wrap(
        self, primary: Arn, primary_blob: bytes, plaintext: bytearray, arn: Arn, ctx: dict[str, str]
    ) -> EncryptedDataKey:
        # An instance gateway has no ReEncrypt: Encrypt the data key there, as elsewhere.
        if arn.region == primary.region and not _is_instance(self.kms, arn.region):
            blob = self.kms.re_encrypt(
                primary_blob,
                str(arn),
                source_encryption_context=ctx,
                destination_encryption_context=ctx,
                region=arn.region,
            )
            return EncryptedDataKey(str(arn), blob)
        return self._encrypt_under(arn, plaintext, ctx)

    def _encrypt_under(self, arn: Arn, plaintext: bytearray, ctx: dict[str, str]) -> EncryptedDataKey:
        return EncryptedDataKey(str(arn), self.kms.encrypt(str(arn), plaintext, ctx))

    # -- decrypt --------------------------------------------------------------

    def _candidates(self, encrypted_data_keys: Sequence[EncryptedDataKey]) -> list[EncryptedDataKey]:
        if self._discovery is None:
            ours = [edk for arn in self.key_arns for edk in encrypted_data_keys if edk.key_arn == arn]
            return [replica for edk in ours for replica in self._with_replicas(edk)]
        regions, accounts = self._discovery
        out = []
        for edk in encrypted_data_keys:
            try:
                arn = Arn.parse(edk.key_arn)
            except ConfigurationError:
                continue  # not a key ARN: never ours
            if str(arn) != edk.key_arn:
                continue
            if regions is not None and arn.region not in regions:
                continue
            if accounts is not None and arn.account_id not in accounts:
                continue
            out.append(edk)
        return out

    def _with_replicas(self, edk: EncryptedDataKey) -> list[EncryptedDataKey]:
        """The EDK, then the same blob under the same key in each replica
        region (in order): the failover list of one CMK with replicas."""
        if not self.replica_regions:
            return [edk]
        arn = Arn.parse(edk.key_arn)
        return [edk] + [
            EncryptedDataKey(str(dataclasses.replace(arn, region=r)), edk.ciphertext_blob)
            for r in self.replica_regions
            if r != arn.region
        ]

    def decrypt_data_key(
        self,
        encrypted_data_keys: Sequence[EncryptedDataKey],
        algorithm: Algorithm,
        encryption_context: dict[str, str],
    ) -> bytearray:
        """The plaintext data key (a bytearray the caller owns and wipes)."""
        algorithm = algorithm_argument(algorithm)
        ctx = context_argument(encryption_context)
        edks = list(encrypted_data_keys)
        for edk in edks:
            if not isinstance(getattr(edk, "key_arn", None), str) or not isinstance(
                getattr(edk, "ciphertext_blob", None), (bytes, bytearray)
            ):
                raise ConfigurationError("encrypted_data_keys must be EncryptedDataKey objects")
        candidates = self._candidates(edks)
        if not candidates:
            message_arns = [edk.key_arn for edk in edks]
            if self._discovery is None:
                allowed = f"its CMKs {list(self.key_arns)!r}"
            else:
                regions, accounts = self._discovery
                allowed = (
                    f"the discovery filter (regions={list(regions) if regions else 'any'}, "
                    f"account_ids={list(accounts) if accounts else 'any'})"
                )
            raise NoUsableKeyError(
                f"none of the message's encrypted data keys ({message_arns!r}) is under a CMK this provider may "
                f"use: {allowed}"
            )
        self._hedging.decrypt_started()
        errors: dict[str, BaseException] = {}
        hedged = self._hedging.enabled and not _in_own_pool()
        return fail_over(
            candidates,
            lambda edk: edk.key_arn,
            lambda edk, attempts, more: self._decrypt_one(edk, ctx, algorithm, attempts, errors, more),
            errors,
            (lambda: self._hedged_pass(candidates, ctx, algorithm, errors)) if hedged else None,
            lambda tried, details: f"could not decrypt the data key with any of {len(tried)} CMK(s): {details}",
        )

    def _hedged_pass(
        self,
        candidates: list[EncryptedDataKey],
        ctx: dict[str, str],
        algorithm: Algorithm,
        errors: dict[str, BaseException],
    ) -> bytearray | None:
        """The first pass of :func:`fail_over` with hedging. At most two calls are in flight: when the
        only one has not answered within its region's hedge delay, the next
        candidate is asked too (if the budget allows); when none is in flight
        (the last one failed), the next candidate is asked as plain failover.
        The first usable answer wins; calls still in flight are abandoned, and
        their answers wiped (or their errors logged) when they come."""
        pending: dict[Future[Any], _Attempt] = {}
        next_index = 0
        hedge_refused = False
        try:
            while True:
                if not pending:
                    if next_index >= len(candidates):
                        return None
                    self._send(candidates[next_index], next_index, ctx, pending, hedge=False)
                    next_index += 1
                timeout = None
                if len(pending) == 1 and next_index < len(candidates) and not hedge_refused:
                    (attempt,) = pending.values()
                    timeout = max(0.0, attempt.sent + self._hedging.delay(attempt.region) - time.monotonic())
                done, _ = wait(list(pending), timeout=timeout, return_when=FIRST_COMPLETED)
                if not done:  # the hedge delay passed
                    if self._send(candidates[next_index], next_index, ctx, pending, hedge=True):
                        next_index += 1
                    else:
                        hedge_refused = True  # once per decrypt: from now on, wait as without hedging
                    continue
                for future in sorted(done, key=lambda f: pending[f].index):
                    attempt = pending.pop(future)
                    key = self._answer(future, attempt, algorithm, errors)
                    if key is not None:
                        return key
        finally:
            for future, attempt in pending.items():
                future.add_done_callback(functools.partial(self._abandoned, attempt))

    def _send(
        self,
        edk: EncryptedDataKey,
        index: int,
        ctx: dict[str, str],
        pending: dict[Future[Any], _Attempt],
        *,
        hedge: bool,
    ) -> bool:
        """Start one Decrypt on a decrypt worker and add it to ``pending``. A hedge
        needs the budget's leave and a free worker, else it is refused (False);
        a plain call without a free worker runs here and now."""
        if hedge and not self._hedging.spend():
            return False
        attempt = _Attempt(index, edk, Arn.parse(edk.key_arn).region, hedge, time.monotonic())
        call = functools.partial(self._timed_decrypt, edk, ctx)
        future = _decrypt_workers.submit(call)
        if future is None:
            if hedge:
                self._hedging.refund()
                return False
            future = _completed(call)
        self._hedging.call_sent()
        pending[future] = attempt
        return True

    def _timed_decrypt(self, edk: EncryptedDataKey, ctx: dict[str, str]) -> tuple[bytearray, float]:
        """One attempt; the plaintext and how long KMS took."""
        started = time.perf_counter()
        key = self.kms.decrypt(edk.key_arn, edk.ciphertext_blob, ctx, max_attempts=1)
        return key, time.perf_counter() - started

    def _answer(
        self, future: Future[Any], attempt: _Attempt, algorithm: Algorithm, errors: dict[str, BaseException]
    ) -> bytearray | None:
        """The key from a finished call, or None with its failure recorded. An
        error that is not a KmsError (local configuration) is raised."""
        arn = attempt.edk.key_arn
        try:
            key, elapsed = future.result()
        except KmsError as e:
            errors[arn] = e
            self._log_failure(arn, e, True)
            return None
        key = self._usable_key(attempt.edk, key, algorithm, errors, True)
        if key is not None:
            self._hedging.record(attempt.region, elapsed)
            if attempt.hedge:
                self._hedging.hedge_won()
        return key

    @staticmethod
    def _abandoned(attempt: _Attempt, future: Future[Any]) -> None:
        """A call nobody waits for any more answered: wipe its key, or log its
        error (a region refusing, e.g. AccessDenied, must not go unnoticed just
        because another region answered first)."""
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            key, _ = future.result()
            _wipe(key)
        elif isinstance(exc, KmsError):
            logger.warning(
                "kmsenv: decrypting the data key under %s failed after another CMK had answered "
                "(code=%s, region=%s, request_id=%s)",
                attempt.edk.key_arn,
                exc.code,
                exc.region,
                exc.request_id,
            )

    def _decrypt_one(
        self,
        edk: EncryptedDataKey,
        ctx: dict[str, str],
        algorithm: Algorithm,
        attempts: int | None,
        errors: dict[str, BaseException],
        more: bool,
    ) -> bytearray | None:
        """The data key from one EDK, or None with the failure recorded."""
        self._hedging.call_sent()
        try:
            started = time.perf_counter()
            answer: bytearray = self.kms.decrypt(edk.key_arn, edk.ciphertext_blob, ctx, max_attempts=attempts)
            elapsed = time.perf_counter() - started
        except KmsError as e:
            errors[edk.key_arn] = e
            self._log_failure(edk.key_arn, e, more)
            return None
        key = self._usable_key(edk, answer, algorithm, errors, more)
        if key is not None and attempts == 1:  # one attempt: a latency, not a retry budget
            self._hedging.record(Arn.parse(edk.key_arn).region, elapsed)
        return key

    def _usable_key(
        self, edk: EncryptedDataKey, key: bytearray, algorithm: Algorithm, errors: dict[str, BaseException], more: bool
    ) -> bytearray | None:
        if len(key) == algorithm.key_len:
            return key
        n = len(key)
        _wipe(key)
        err = KmsError(
            f"KMS Decrypt under {edk.key_arn} returned a {n}-byte data key; "
            f"{algorithm.name} needs {algorithm.key_len} bytes",
            code="InvalidDataKeyLength",
            region=Arn.parse(edk.key_arn).region,
        )
        errors[edk.key_arn] = err
        self._log_failure(edk.key_arn, err, more)
        return None

    @staticmethod
    def _log_failure(arn: str, err: KmsError, more: bool) -> None:
        logger.warning(
            "kmsenv: decrypting the data key under %s failed (code=%s, region=%s, request_id=%s)%s",
            arn,
            err.code,
            err.region,
            err.request_id,
            "; trying the next CMK" if more else "",
        )


_Candidate = TypeVar("_Candidate")
_Result = TypeVar("_Result")


def fail_over(
    candidates: Sequence[_Candidate],
    name: Callable[[_Candidate], str],
    attempt: Callable[[_Candidate, int | None, bool], _Result | None],
    errors: dict[str, BaseException],
    first_pass: Callable[[], _Result | None] | None = None,
    failure: Callable[[list[tuple[str, BaseException]], str], str] | None = None,
) -> _Result:
    """The region-failover loop (KmsKeyProvider's decrypt, kmsenv.parquet's
    unwrap). With another candidate to fall back on, each gets one attempt,
    in order (fail over at once instead of backing off): ``first_pass()``
    when given (a hedged pass), else ``attempt(candidate, 1, True)`` each;
    then the candidates whose failure was retryable (a transient KMS error)
    are tried again with the full retry budget, one after the other
    (``attempt(candidate, None, more)``, ``more``: whether another follows).
    A lone candidate gets the full budget at once. ``attempt`` returns the
    result, or None having recorded its failure in ``errors`` under
    ``name(candidate)``. When nothing succeeds: :class:`NoUsableKeyError`
    with every recorded failure in candidate order, its text
    ``failure(errors, details)``."""
    todo = list(candidates)
    if len(todo) > 1:
        if first_pass is not None:
            result = first_pass()
            if result is not None:
                return result
        else:
            for candidate in todo:
                result = attempt(candidate, 1, True)
                if result is not None:
                    return result
        todo = [c for c in todo if getattr(errors.get(name(c)), "retryable", False)]
    for position, candidate in enumerate(todo):
        result = attempt(candidate, None, position + 1 < len(todo))
        if result is not None:
            return result
    tried = [(name(c), errors[name(c)]) for c in candidates if name(c) in errors]
    details = "; ".join(f"{who}: {err}" for who, err in tried)
    text = failure(tried, details) if failure is not None else f"no candidate succeeded: {details}"
    raise NoUsableKeyError(text, errors=tried)


def _in_own_pool() -> bool:
    """Whether this thread is one of kmsenv's KMS pool threads (waiting on a
    pool from inside it could deadlock)."""
    return threading.current_thread().name.startswith(_POOL_PREFIX)


def _completed(fn: Callable[[], Any]) -> Future[Any]:
    """A Future already holding ``fn()``'s result or exception (a call run in this thread)."""
    future: Future[Any] = Future()
    try:
        future.set_result(fn())
    except BaseException as e:  # delivered through the future, like a pool's
        future.set_exception(e)
    return future
