"""Data-key providers backed by Alibaba Cloud KMS.

:class:`KmsKeyProvider` wraps each data key under one or more CMKs, possibly in
several regions (GenerateDataKey under the first, then ReEncrypt for CMKs in
the same region and Encrypt elsewhere, concurrently), and unwraps with failover
across the CMKs it names.  ``KmsKeyProvider.discovery(...)`` unwraps any
encrypted data key whose ARN lies in allowed accounts/regions.

Specs: alibaba-message-format.md sections 8, 12 and 15.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any, Sequence

from kmsenv import _process
from kmsenv.algorithms import Algorithm
from kmsenv.arn import Arn
from kmsenv.exceptions import ConfigurationError, KmsError, NoUsableKeyError
from kmsenv.model import DataKey, EncryptedDataKey

__all__ = ["KmsKeyProvider"]

logger = logging.getLogger("kmsenv")

# ---------------------------------------------------------------------------
# Shared thread pool for the per-CMK calls of an encrypt
# ---------------------------------------------------------------------------

_POOL_WORKERS = 32
_POOL_PREFIX = "kmsenv-kms"
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


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


_process.register(__name__, ("_pool", "_pool_lock"), _reset_pool_after_fork)


def _wipe(buf: bytearray | None) -> None:
    if buf is None:
        return
    try:
        from kmsenv._wipe import wipe

        wipe(buf)
    except Exception:
        buf[:] = bytes(len(buf))


def _coerce_algorithm(algorithm: object) -> Algorithm:
    if isinstance(algorithm, Algorithm):
        return algorithm
    try:
        if isinstance(algorithm, bool):
            raise ValueError
        return Algorithm(algorithm)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise ConfigurationError(f"unknown algorithm {algorithm!r}") from None


def _context(encryption_context: object) -> dict[str, str]:
    if encryption_context is None:
        return {}
    if not isinstance(encryption_context, dict):
        try:
            encryption_context = dict(encryption_context)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise ConfigurationError("encryption_context must be a dict of str to str") from None
    return dict(encryption_context)


def _key_request(algorithm: Algorithm) -> dict[str, Any]:
    """GenerateDataKey arguments for an algorithm: KeySpec for AES, NumberOfBytes for SM4."""
    if algorithm.info.cipher == "AES":
        return {"key_spec": algorithm.info.kms_key_spec}
    return {"number_of_bytes": algorithm.key_len}


def _string_list(values: object, what: str, check) -> tuple[str, ...] | None:
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


class KmsKeyProvider:
    """Wrap data keys under KMS CMKs, in one or several regions.

    ``KmsKeyProvider(arn1, arn2, ..., kms=None, algorithm=Algorithm.AES_GCM_NOPADDING_256)``.
    The first ARN is the primary: encrypt calls GenerateDataKey under it, then
    ReEncrypt (same region) or Encrypt (other regions) for every other CMK,
    concurrently, with the same encryption context.  Any failure fails the
    encrypt.  Decrypt tries the message's encrypted data keys whose ARN this
    provider names, in this provider's order, failing over on any KMS error.
    """

    def __init__(
        self,
        *cmk_arns: str,
        kms: Any = None,
        algorithm: Algorithm = Algorithm.AES_GCM_NOPADDING_256,
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
        self._setup(tuple(arns), kms, algorithm, discovery=None)

    @classmethod
    def discovery(
        cls,
        regions: Iterable[str] | None = None,
        account_ids: Iterable[str] | None = None,
        kms: Any = None,
        *,
        algorithm: Algorithm = Algorithm.AES_GCM_NOPADDING_256,
    ) -> KmsKeyProvider:
        """A decrypt-only provider that may use any encrypted data key whose ARN
        is in one of ``account_ids`` and ``regions`` (``None`` = no restriction
        on that part).  Encrypting with it raises :class:`ConfigurationError`."""
        region_filter = _string_list(regions, "regions", _valid_region)
        account_filter = _string_list(account_ids, "account_ids", _valid_account)
        self = cls.__new__(cls)
        self._setup((), kms, algorithm, discovery=(region_filter, account_filter))
        return self

    def _setup(self, arns: tuple[Arn, ...], kms: Any, algorithm: object, discovery: Any) -> None:
        self.algorithm: Algorithm = _coerce_algorithm(algorithm)
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

    @property
    def is_discovery(self) -> bool:
        return self._discovery is not None

    def __repr__(self) -> str:
        if self._discovery is not None:
            regions, accounts = self._discovery
            return (
                f"KmsKeyProvider.discovery(regions={list(regions) if regions else None!r}, "
                f"account_ids={list(accounts) if accounts else None!r})"
            )
        args = ", ".join(repr(a) for a in self.key_arns)
        return f"KmsKeyProvider({args}, algorithm={self.algorithm.name})"

    # -- encrypt --------------------------------------------------------------

    def generate_data_key(self, algorithm: Algorithm, encryption_context: dict[str, str]) -> DataKey:
        """A fresh data key wrapped under every CMK (in this provider's order)."""
        if self._discovery is not None:
            raise ConfigurationError(
                "a discovery provider cannot encrypt: create KmsKeyProvider(arn, ...) with the CMKs to encrypt under"
            )
        algorithm = _coerce_algorithm(algorithm)
        ctx = _context(encryption_context)
        primary = self._arns[0]
        plaintext, blob = self.kms.generate_data_key(str(primary), encryption_context=ctx, **_key_request(algorithm))
        try:
            if len(plaintext) != algorithm.key_len:
                raise KmsError(
                    f"KMS GenerateDataKey under {primary} returned a {len(plaintext)}-byte data key; "
                    f"{algorithm.name} needs {algorithm.key_len} bytes",
                    code="InvalidDataKeyLength", region=primary.region,
                )
            edks = [EncryptedDataKey(str(primary), blob)]
            others = self._arns[1:]
            if others and threading.current_thread().name.startswith(_POOL_PREFIX):
                # Called from one of our own pool threads: waiting on the pool
                # could deadlock, so wrap sequentially.
                edks.extend(self._wrap(primary, blob, plaintext, arn, ctx) for arn in others)
            elif others:
                pool = _shared_pool()
                futures = [pool.submit(self._wrap, primary, blob, plaintext, arn, ctx) for arn in others]
                done, not_done = wait(futures, return_when=FIRST_EXCEPTION)
                failed = [f for f in futures if f in done and f.exception() is not None]
                if failed:
                    for f in not_done:
                        f.cancel()
                    raise self._first_failure(failed)
                edks.extend(f.result() for f in futures)
            return DataKey(plaintext, edks)
        finally:
            _wipe(plaintext)

    @staticmethod
    def _first_failure(failed: list[Future]) -> BaseException:
        first = failed[0].exception()
        assert first is not None
        for other in failed[1:]:
            exc = other.exception()
            if exc is not None and hasattr(first, "add_note"):
                first.add_note(f"also failed: {exc}")
        return first

    def _wrap(self, primary: Arn, primary_blob: bytes, plaintext: bytearray, arn: Arn,
              ctx: dict[str, str]) -> EncryptedDataKey:
        if arn.region == primary.region:
            blob = self.kms.re_encrypt(
                primary_blob, str(arn),
                source_encryption_context=ctx, destination_encryption_context=ctx, region=arn.region,
            )
        else:
            blob = self.kms.encrypt(str(arn), plaintext, ctx)
        return EncryptedDataKey(str(arn), blob)

    # -- decrypt --------------------------------------------------------------

    def _candidates(self, encrypted_data_keys: Sequence[EncryptedDataKey]) -> list[EncryptedDataKey]:
        if self._discovery is None:
            return [edk for arn in self.key_arns for edk in encrypted_data_keys if edk.key_arn == arn]
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

    def decrypt_data_key(
        self,
        encrypted_data_keys: Sequence[EncryptedDataKey],
        algorithm: Algorithm,
        encryption_context: dict[str, str],
    ) -> bytearray:
        """The plaintext data key (a bytearray the caller owns and wipes)."""
        algorithm = _coerce_algorithm(algorithm)
        ctx = _context(encryption_context)
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
        # With another CMK to fall back on, a failing region gets one attempt
        # (fail over at once instead of backing off); if every region failed
        # with a transient error, they are tried again with full retries.
        errors: dict[str, BaseException] = {}
        passes = [1, None] if len(candidates) > 1 else [None]
        todo = candidates
        for pass_no, attempts in enumerate(passes):
            last_pass = pass_no == len(passes) - 1
            for position, edk in enumerate(todo):
                more = position + 1 < len(todo) or not last_pass
                key = self._decrypt_one(edk, ctx, algorithm, attempts, errors, more)
                if key is not None:
                    return key
            todo = [edk for edk in todo if getattr(errors.get(edk.key_arn), "retryable", False)]
            if not todo:
                break
        errors_list = [(edk.key_arn, errors[edk.key_arn]) for edk in candidates if edk.key_arn in errors]
        details = "; ".join(f"{arn}: {err}" for arn, err in errors_list)
        raise NoUsableKeyError(
            f"could not decrypt the data key with any of {len(errors_list)} CMK(s): {details}", errors=errors_list
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
        try:
            key = self.kms.decrypt(edk.key_arn, edk.ciphertext_blob, ctx, max_attempts=attempts)
        except KmsError as e:
            errors[edk.key_arn] = e
            self._log_failure(edk.key_arn, e, more)
            return None
        if len(key) != algorithm.key_len:
            n = len(key)
            _wipe(key)
            err = KmsError(
                f"KMS Decrypt under {edk.key_arn} returned a {n}-byte data key; "
                f"{algorithm.name} needs {algorithm.key_len} bytes",
                code="InvalidDataKeyLength", region=Arn.parse(edk.key_arn).region,
            )
            errors[edk.key_arn] = err
            self._log_failure(edk.key_arn, err, more)
            return None
        return key

    @staticmethod
    def _log_failure(arn: str, err: KmsError, more: bool) -> None:
        logger.warning(
            "kmsenv: decrypting the data key under %s failed (code=%s, region=%s, request_id=%s)%s",
            arn, err.code, err.region, err.request_id, "; trying the next CMK" if more else "",
        )
