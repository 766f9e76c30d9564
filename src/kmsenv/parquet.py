"""Parquet modular encryption for pyarrow (and Dask) with multi-region Alibaba Cloud KMS.

    from kmsenv.kmsspec import KmsSpec
    from kmsenv.parquet import ParquetKmsSpec, write_table, read_table

    spec = ParquetKmsSpec(regions=("cn-hangzhou", "cn-beijing", "cn-shanghai"),
                          kms=KmsSpec(prefer_regions=("cn-hangzhou",)))
    write_table(table, "orders.parquet", spec=spec,
                column_keys={"alias/orders-pii": ["email", "phone"]},
                footer_key="alias/orders-footer")
    table = read_table("orders.parquet", spec=spec)

A :class:`KmsClient` wraps each Parquet key (with double wrapping: each KEK)
under the CMK of *every* configured region and returns one ASCII string::

    kmsenv1|<region>=<base64 blob>|<region>=<base64 blob>...

so a reader in any of those regions unwraps it with its nearest KMS, failing
over to the next region on any KMS error. Master key identifiers are KMS alias
names (``alias/orders-pii``) created in every region; Encrypt is called with
``KeyId=<alias>`` in each region (or with a per-region key ID/ARN from
``ParquetKmsSpec.key_ids``). Every blob is bound to the KMS encryption context
``{"parquet_mkid": <master key identifier>}``.

Why not :meth:`kmsenv.kms.Kms.encrypt`: it accepts only full key ARNs (kmsenv
messages record ARNs, and ``Arn.parse`` deliberately rejects aliases), and its
``decrypt`` needs the ARN of the key to check KMS's answer against. Loosening
those checks would weaken the message path, so this module sends its two
requests (Encrypt by key ID or alias in a given region, Decrypt in a given
region) through ``Kms.encrypt_in_region``/``decrypt_in_region``: the same retry loop, timeouts, proxy handling
and secret-free error translation as every other kmsenv KMS call.

pyarrow's encryption objects cannot be pickled, so nothing here ships them to
other processes: :class:`ParquetKmsSpec` is a picklable recipe (no secrets),
and each process builds its own :func:`crypto_factory` (one per spec, shared by
every call in the process, so KEKs are cached across files).

See docs/parquet.md.
"""

from __future__ import annotations

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pyarrow.parquet.encryption as pe
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise ImportError('kmsenv.parquet needs pyarrow: pip install "kmsenv[parquet]"') from _e

import base64
import binascii
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from kmsenv import _process
from kmsenv.exceptions import ConfigurationError, KmsError, MessageFormatError
from kmsenv.kmsspec import KmsSpec
from kmsenv.providers import fail_over

__all__ = [
    "WRAPPED_KEY_VERSION",
    "MAX_WRAPPED_KEY_CHARS",
    "CONF_KEY",
    "ParquetKmsSpec",
    "KmsClient",
    "crypto_factory",
    "connection_config",
    "encryption_properties",
    "decryption_properties",
    "write_table",
    "read_table",
    "to_parquet",
    "read_parquet",
    "kms_stats",
    "reset_kms_stats",
    "clear_crypto_factories",
]

logger = logging.getLogger("kmsenv")

#: First field of every wrapped-key string this module writes.
WRAPPED_KEY_VERSION = "kmsenv1"
#: Longest wrapped-key string :meth:`KmsClient.unwrap_key` parses.
MAX_WRAPPED_KEY_CHARS = 16384
#: Most regions in one wrapped-key string.
MAX_REGIONS = 32
#: Longest base64 blob per region.
MAX_BLOB_CHARS = 4096
#: The ``custom_kms_conf`` entry that carries a :class:`ParquetKmsSpec`.
CONF_KEY = "kmsenv.parquet.spec"
_MAX_CONF_CHARS = 65536
#: Encryption-context key that binds a blob to its master key identifier.
CONTEXT_KEY = "parquet_mkid"

_REGION_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?\Z")
# Master key IDs end up in pyarrow's "mkid:col,col;mkid:col" column-keys string
# (and Spark's parser), so ':' ',' ';' and whitespace are refused.
_MKID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]{0,254}\Z")
_KEY_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./:-]{0,511}\Z")
_B64_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}\Z")
_ALGORITHMS = ("AES_GCM_V1", "AES_GCM_CTR_V1")


def _describe(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _check_region(region: object, where: str) -> str:
    if not isinstance(region, str) or not _REGION_RE.match(region):
        raise ConfigurationError(f"{where}: invalid region {region!r}")
    return region


def _check_mkid(mkid: object, error: type[Exception] = ConfigurationError) -> str:
    if not isinstance(mkid, str) or not _MKID_RE.match(mkid):
        shown = _describe(mkid) if isinstance(mkid, str) else type(mkid).__name__
        raise error(
            f"invalid Parquet master key identifier {shown}: use a KMS alias name such as 'alias/orders-pii' "
            "(letters, digits, '_', '.', '/', '-'; at most 255 characters; no ':' ',' ';' or spaces)"
        )
    return mkid


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


def _key_ids(value: object) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...] | None:
    if value is None:
        return None
    items: Any = value.items() if isinstance(value, Mapping) else value
    out = []
    try:
        for mkid, per_region in items:
            _check_mkid(mkid)
            pairs = per_region.items() if isinstance(per_region, Mapping) else per_region
            norm = []
            for region, key_id in pairs:
                _check_region(region, f"key_ids[{mkid!r}]")
                if not isinstance(key_id, str) or not _KEY_ID_RE.match(key_id):
                    raise ConfigurationError(f"key_ids[{mkid!r}][{region!r}]: invalid key ID, alias or ARN")
                norm.append((region, key_id))
            out.append((mkid, tuple(sorted(norm))))
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigurationError):
            raise
        raise ConfigurationError("key_ids must map master key IDs to {region: key ID or ARN}") from None
    return tuple(sorted(out))


@dataclass(frozen=True)
class ParquetKmsSpec:
    """Picklable, secret-free settings for Parquet encryption with kmsenv.

    ``regions``: every region the writer wraps each key in, in order (readers
    fall back to this order after ``kms.preferred_regions()``). ``kms``: the
    :class:`~kmsenv.kmsspec.KmsSpec` every process builds its ``Kms`` from.
    ``double_wrapping``: wrap DEKs with locally cached KEKs and only KEKs with
    KMS (recommended). ``cache_lifetime``: seconds pyarrow caches KEKs and KMS
    clients. ``data_key_length_bits``: 128, 192 or 256. ``encryption_algorithm``:
    ``AES_GCM_V1`` or ``AES_GCM_CTR_V1``. ``key_ids``: optional
    ``{master_key_id: {region: key ID, alias or key ARN}}`` for regions where
    the master key identifier is not itself an alias of the right key.

    It travels to pyarrow's KmsClient factory in
    ``KmsConnectionConfig.custom_kms_conf`` (:meth:`to_conf` / :meth:`from_conf`).
    """

    regions: tuple[str, ...]
    kms: KmsSpec = KmsSpec()
    double_wrapping: bool = True
    cache_lifetime: float = 600.0
    data_key_length_bits: int = 256
    encryption_algorithm: str = "AES_GCM_V1"
    key_ids: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] | None = None

    def __post_init__(self) -> None:
        regions = self.regions
        if isinstance(regions, str) or not isinstance(regions, Iterable):
            raise ConfigurationError("ParquetKmsSpec.regions must be a list of region names, not one string")
        regions = tuple(regions)
        if not regions:
            raise ConfigurationError("ParquetKmsSpec.regions must name at least one region")
        if len(regions) > MAX_REGIONS:
            raise ConfigurationError(f"ParquetKmsSpec.regions: at most {MAX_REGIONS} regions")
        for r in regions:
            _check_region(r, "ParquetKmsSpec.regions")
        if len(set(regions)) != len(regions):
            raise ConfigurationError("ParquetKmsSpec.regions lists a region twice")
        object.__setattr__(self, "regions", regions)
        if not isinstance(self.kms, KmsSpec):
            raise ConfigurationError("ParquetKmsSpec.kms must be a kmsenv.kmsspec.KmsSpec")
        if not isinstance(self.double_wrapping, bool):
            raise ConfigurationError("ParquetKmsSpec.double_wrapping must be a bool")
        lifetime = self.cache_lifetime
        if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or not 0 < lifetime <= 86400 * 365:
            raise ConfigurationError("ParquetKmsSpec.cache_lifetime must be a positive number of seconds")
        object.__setattr__(self, "cache_lifetime", float(lifetime))
        if self.data_key_length_bits not in (128, 192, 256) or isinstance(self.data_key_length_bits, bool):
            raise ConfigurationError("ParquetKmsSpec.data_key_length_bits must be 128, 192 or 256")
        if self.encryption_algorithm not in _ALGORITHMS:
            raise ConfigurationError(f"ParquetKmsSpec.encryption_algorithm must be one of {_ALGORITHMS}")
        object.__setattr__(self, "key_ids", _key_ids(self.key_ids))

    def key_id(self, master_key_identifier: str, region: str) -> str:
        """The KeyId sent to Encrypt in ``region``: a ``key_ids`` entry, else the identifier itself."""
        for mkid, pairs in self.key_ids or ():
            if mkid == master_key_identifier:
                for r, key_id in pairs:
                    if r == region:
                        return key_id
        return master_key_identifier

    # -- custom_kms_conf ------------------------------------------------------

    def to_conf(self) -> dict[str, str]:
        """``{CONF_KEY: <JSON>}`` for ``KmsConnectionConfig.custom_kms_conf``."""
        kms = {f.name: getattr(self.kms, f.name) for f in dataclasses.fields(KmsSpec)}
        doc = {
            "v": 1,
            "regions": list(self.regions),
            "kms": kms,
            "double_wrapping": self.double_wrapping,
            "cache_lifetime": self.cache_lifetime,
            "data_key_length_bits": self.data_key_length_bits,
            "encryption_algorithm": self.encryption_algorithm,
            "key_ids": [[m, [list(p) for p in pairs]] for m, pairs in self.key_ids] if self.key_ids else None,
        }
        return {CONF_KEY: json.dumps(doc, sort_keys=True, separators=(",", ":"))}

    @classmethod
    def from_conf(cls, conf: Mapping[str, str]) -> ParquetKmsSpec:
        """Rebuild the spec :meth:`to_conf` wrote (raises ConfigurationError if absent or malformed)."""
        text = conf.get(CONF_KEY) if isinstance(conf, Mapping) else None
        if not isinstance(text, str):
            raise ConfigurationError(
                f"the KMS connection config has no {CONF_KEY!r} entry: build it with kmsenv.parquet.connection_config()"
            )
        if len(text) > _MAX_CONF_CHARS:
            raise ConfigurationError(f"{CONF_KEY} is longer than {_MAX_CONF_CHARS} characters")
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("v") != 1:
                raise ValueError("unknown version")
            kms_doc = doc["kms"]
            names = {f.name for f in dataclasses.fields(KmsSpec)}
            if not isinstance(kms_doc, dict) or not set(kms_doc) <= names:
                raise ValueError("unknown KmsSpec fields")
            kms_doc = dict(kms_doc)
            if kms_doc.get("endpoints") is not None:
                kms_doc["endpoints"] = tuple((r, u) for r, u in kms_doc["endpoints"])
            if kms_doc.get("prefer_regions") is not None:
                kms_doc["prefer_regions"] = tuple(kms_doc["prefer_regions"])
            return cls(
                regions=tuple(doc["regions"]),
                kms=KmsSpec(**kms_doc),
                double_wrapping=doc["double_wrapping"],
                cache_lifetime=doc["cache_lifetime"],
                data_key_length_bits=doc["data_key_length_bits"],
                encryption_algorithm=doc["encryption_algorithm"],
                key_ids=_key_ids([(m, [tuple(p) for p in pairs]) for m, pairs in doc["key_ids"]])
                if doc["key_ids"]
                else None,
            )
        except ConfigurationError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigurationError(f"malformed {CONF_KEY} in the KMS connection config ({e})") from None


# ---------------------------------------------------------------------------
# Per-process KMS statistics
# ---------------------------------------------------------------------------

_STATS_LOCK = threading.Lock()
_STATS: dict[str, int] = {}
_UNWRAPPED: set[bytes] = set()
_MAX_TRACKED = 100_000


def _count(name: str, n: int = 1) -> None:
    with _STATS_LOCK:
        _STATS[name] = _STATS.get(name, 0) + n


def kms_stats() -> dict[str, int]:
    """This process's KMS activity through :class:`KmsClient`.

    ``encrypt`` / ``decrypt``: KMS calls that succeeded; ``encrypt_failed`` /
    ``decrypt_failed``: calls that failed (after retries); ``wrap_key`` /
    ``unwrap_key``: calls pyarrow made into the client; ``distinct_unwrapped``:
    distinct wrapped-key strings unwrapped (with double wrapping and a warm
    cache, ``decrypt == distinct_unwrapped``: one Decrypt per KEK).
    """
    with _STATS_LOCK:
        out = {k: 0 for k in ("encrypt", "encrypt_failed", "decrypt", "decrypt_failed", "wrap_key", "unwrap_key")}
        out.update(_STATS)
        out["distinct_unwrapped"] = len(_UNWRAPPED)
        out["pid"] = os.getpid()
        return out


def reset_kms_stats() -> None:
    with _STATS_LOCK:
        _STATS.clear()
        _UNWRAPPED.clear()


# ---------------------------------------------------------------------------
# KMS requests by key ID / alias and by region
# ---------------------------------------------------------------------------


def _kms_encrypt(kms: Any, region: str, key_id: str, plaintext: bytes, context: dict[str, str]) -> bytes:
    """Encrypt in ``region`` with ``KeyId=key_id`` (key ID, alias or ARN); the raw blob."""
    blob: bytes = kms.encrypt_in_region(region, key_id, plaintext, context)
    return blob


def _kms_decrypt(kms: Any, region: str, blob: bytes, context: dict[str, str], max_attempts: int | None) -> bytearray:
    """Decrypt ``blob`` in ``region`` (the blob names its key); the plaintext, to be wiped."""
    key: bytearray = kms.decrypt_in_region(region, blob, context, max_attempts=max_attempts)
    return key


def _wipe(buf: bytearray) -> None:
    for i in range(len(buf)):
        buf[i] = 0


# ---------------------------------------------------------------------------
# Wrapped-key strings
# ---------------------------------------------------------------------------


def format_wrapped_key(blobs: Sequence[tuple[str, bytes]]) -> str:
    """``kmsenv1|<region>=<base64 blob>|...`` from ``(region, raw blob)`` pairs."""
    return "|".join([WRAPPED_KEY_VERSION] + [f"{r}={base64.b64encode(b).decode('ascii')}" for r, b in blobs])


def parse_wrapped_key(text: object) -> list[tuple[str, bytes]]:
    """The ``(region, raw blob)`` pairs of a wrapped-key string, in order.

    Raises :class:`~kmsenv.exceptions.MessageFormatError` saying what is wrong.
    """
    what = "kmsenv.parquet: malformed wrapped key"
    if not isinstance(text, str):
        raise MessageFormatError(f"{what}: expected a str, got {type(text).__name__}")
    if len(text) > MAX_WRAPPED_KEY_CHARS:
        raise MessageFormatError(f"{what}: {len(text)} characters, more than the limit of {MAX_WRAPPED_KEY_CHARS}")
    if not text.isascii() or not text.isprintable():
        raise MessageFormatError(f"{what}: it contains non-ASCII or non-printable characters")
    fields = text.split("|", MAX_REGIONS + 1)
    version = fields[0]
    if version != WRAPPED_KEY_VERSION:
        if re.fullmatch(r"kmsenv[0-9]{1,4}", version):
            raise MessageFormatError(
                f"{what}: unsupported format version {version!r} (this kmsenv reads {WRAPPED_KEY_VERSION!r}); "
                "upgrade kmsenv"
            )
        raise MessageFormatError(
            f"{what}: it does not start with {WRAPPED_KEY_VERSION + '|'!r} (was the file written by another KMS client?)"
        )
    entries = fields[1:]
    if not entries:
        raise MessageFormatError(f"{what}: no region entries")
    if len(entries) > MAX_REGIONS:
        raise MessageFormatError(f"{what}: more than {MAX_REGIONS} region entries")
    out: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries, 1):
        region, sep, b64 = entry.partition("=")
        if not sep:
            raise MessageFormatError(f"{what}: entry {i} is not of the form <region>=<base64 blob>")
        if not _REGION_RE.match(region):
            raise MessageFormatError(f"{what}: entry {i} has an invalid region name {_describe(region, 40)}")
        if region in seen:
            raise MessageFormatError(f"{what}: region {region!r} appears twice")
        seen.add(region)
        if not b64 or len(b64) > MAX_BLOB_CHARS or len(b64) % 4 or not _B64_RE.match(b64):
            raise MessageFormatError(f"{what}: the blob for region {region!r} is not valid base64 (or too long)")
        try:
            blob = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise MessageFormatError(f"{what}: the blob for region {region!r} is not valid base64") from None
        out.append((region, blob))
    return out


# ---------------------------------------------------------------------------
# KmsClient
# ---------------------------------------------------------------------------


class KmsClient(pe.KmsClient):  # type: ignore[misc]  # pyarrow ships no type information: its classes are Any
    """pyarrow KmsClient that wraps keys under every region's CMK in one string.

    ``wrap_key`` calls KMS Encrypt once per region of ``spec.regions`` (KeyId =
    the master key identifier, an alias, unless ``spec.key_ids`` maps it) with
    the encryption context ``{"parquet_mkid": master_key_identifier}``; any
    failure fails the write (a file readable in only some regions would be a
    silent loss of redundancy). ``unwrap_key`` tries the reader's preferred
    regions first (``spec.kms.preferred_regions()``), then ``spec.regions``
    order, then the string's order; a failing region gets one attempt while
    other regions remain, and transiently failing regions are retried with the
    full retry budget before :class:`~kmsenv.exceptions.NoUsableKeyError`.
    """

    def __init__(self, spec: ParquetKmsSpec, kms: Any = None) -> None:
        super().__init__()
        if not isinstance(spec, ParquetKmsSpec):
            raise ConfigurationError("KmsClient needs a kmsenv.parquet.ParquetKmsSpec")
        self._spec = spec
        self._kms = kms

    @property
    def spec(self) -> ParquetKmsSpec:
        return self._spec

    def __repr__(self) -> str:
        return f"kmsenv.parquet.KmsClient(regions={list(self._spec.regions)!r})"

    def _client(self) -> Any:
        if self._kms is None:
            self._kms = self._spec.kms.kms()
        return self._kms

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        _count("wrap_key")
        mkid = _check_mkid(master_key_identifier)
        if not isinstance(key_bytes, (bytes, bytearray)) or not 1 <= len(key_bytes) <= 64:
            raise ConfigurationError("kmsenv.parquet: the key to wrap must be 1 to 64 bytes")
        kms = self._client()
        context = {CONTEXT_KEY: mkid}
        blobs = []
        for region in self._spec.regions:
            key_id = self._spec.key_id(mkid, region)
            try:
                blob = _kms_encrypt(kms, region, key_id, bytes(key_bytes), context)
            except KmsError as e:
                _count("encrypt_failed")
                raise KmsError(
                    f"kmsenv.parquet: cannot wrap the Parquet key for master key {mkid!r} in region {region!r} "
                    f"(a file must be readable in every configured region): {e.args[0] if e.args else e}",
                    code=e.code,
                    region=region,
                    request_id=e.request_id,
                    retryable=e.retryable,
                ) from None
            _count("encrypt")
            blobs.append((region, blob))
        return format_wrapped_key(blobs)

    def _order(self, regions: list[str]) -> list[str]:
        rank: dict[str, int] = {}
        for r in (*self._spec.kms.preferred_regions(), *self._spec.regions, *regions):
            rank.setdefault(r, len(rank))
        return sorted(regions, key=rank.__getitem__)

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        _count("unwrap_key")
        mkid = _check_mkid(master_key_identifier, MessageFormatError)
        entries = dict(parse_wrapped_key(wrapped_key))
        kms = self._client()
        context = {CONTEXT_KEY: mkid}
        candidates = self._order(list(entries))
        errors: dict[str, BaseException] = {}

        def attempt(region: str, attempts: int | None, more: bool) -> bytes | None:
            try:
                key = _kms_decrypt(kms, region, entries[region], context, attempts)
            except KmsError as e:
                _count("decrypt_failed")
                errors[region] = e
                logger.warning(
                    "kmsenv.parquet: unwrapping a key for master key %r in %s failed (code=%s, request_id=%s)",
                    mkid,
                    region,
                    e.code,
                    e.request_id,
                )
                return None
            _count("decrypt")
            try:
                if len(key) not in (16, 24, 32):
                    errors[region] = KmsError(
                        f"KMS Decrypt in {region} returned a {len(key)}-byte key; expected 16, 24 or 32",
                        code="InvalidKeyLength",
                        region=region,
                    )
                    return None
                with _STATS_LOCK:
                    if len(_UNWRAPPED) < _MAX_TRACKED:
                        _UNWRAPPED.add(hashlib.sha256(wrapped_key.encode("ascii")).digest())
                return bytes(key)
            finally:
                _wipe(key)

        # The providers' failover loop: one attempt per region while others
        # remain, then the transiently failing ones with the full retry budget.
        return fail_over(
            candidates,
            lambda region: region,
            attempt,
            errors,
            failure=lambda tried, details: (
                f"kmsenv.parquet: cannot unwrap the Parquet key for master key {mkid!r} in any of "
                f"{len(candidates)} region(s): {details}"
            ),
        )


# ---------------------------------------------------------------------------
# Process-level CryptoFactory per spec
# ---------------------------------------------------------------------------

_FACTORY_LOCK = threading.Lock()
_FACTORIES: dict[ParquetKmsSpec, Any] = {}


def _kms_client_factory(config: Any) -> KmsClient:
    """pyarrow calls this with a KmsConnectionConfig; the spec rides in custom_kms_conf."""
    return KmsClient(ParquetKmsSpec.from_conf(config.custom_kms_conf))


def crypto_factory(spec: ParquetKmsSpec) -> Any:
    """This process's ``pyarrow.parquet.encryption.CryptoFactory`` for ``spec``.

    One per spec and process (rebuilt after a fork), so pyarrow's KEK and KMS
    client caches serve every file this process writes or reads.
    """
    if not isinstance(spec, ParquetKmsSpec):
        raise ConfigurationError("crypto_factory needs a kmsenv.parquet.ParquetKmsSpec")
    with _FACTORY_LOCK:
        factory = _FACTORIES.get(spec)
        if factory is None:
            factory = pe.CryptoFactory(_kms_client_factory)
            _FACTORIES[spec] = factory
        return factory


def clear_crypto_factories() -> None:
    """Drop this process's factories (and with them pyarrow's cached KEKs)."""
    with _FACTORY_LOCK:
        _FACTORIES.clear()


def _forget_after_fork() -> None:
    global _FACTORY_LOCK, _STATS_LOCK
    _FACTORY_LOCK = _process.new_lock()
    _STATS_LOCK = _process.new_lock()
    _FACTORIES.clear()
    _STATS.clear()
    _UNWRAPPED.clear()


_process.register(__name__, ("_FACTORY_LOCK", "_FACTORIES", "_STATS_LOCK", "_STATS", "_UNWRAPPED"), _forget_after_fork)


def connection_config(spec: ParquetKmsSpec) -> Any:
    """A ``KmsConnectionConfig`` carrying ``spec`` (no credentials: workers use their own)."""
    if not isinstance(spec, ParquetKmsSpec):
        raise ConfigurationError("connection_config needs a kmsenv.parquet.ParquetKmsSpec")
    return pe.KmsConnectionConfig(kms_instance_id="kmsenv", custom_kms_conf=spec.to_conf())


def _check_column_keys(column_keys: object) -> dict[str, list[str]]:
    if not isinstance(column_keys, Mapping) or not column_keys:
        raise ConfigurationError("column_keys must be a non-empty dict {master_key_id: [column, ...]}")
    out: dict[str, list[str]] = {}
    seen: set[str] = set()
    for mkid, columns in column_keys.items():
        _check_mkid(mkid)
        if isinstance(columns, str) or not isinstance(columns, Iterable):
            raise ConfigurationError(f"column_keys[{mkid!r}] must be a list of column names")
        cols = list(columns)
        if not cols:
            raise ConfigurationError(f"column_keys[{mkid!r}] is empty")
        for c in cols:
            if not isinstance(c, str) or not c or any(ch in c for ch in ":,;") or c != c.strip():
                raise ConfigurationError(
                    f"column name {c!r} cannot be encrypted by name: pyarrow's column-keys syntax forbids "
                    "':' ',' ';' and surrounding spaces"
                )
            if c in seen:
                raise ConfigurationError(f"column {c!r} is assigned to more than one master key")
            seen.add(c)
        out[mkid] = cols
    return out


def encryption_properties(
    spec: ParquetKmsSpec,
    *,
    column_keys: Mapping[str, Sequence[str]],
    footer_key: str,
    plaintext_footer: bool = False,
) -> Any:
    """``FileEncryptionProperties`` for one file, built in this process (never pickle them)."""
    config = pe.EncryptionConfiguration(
        footer_key=_check_mkid(footer_key),
        column_keys=_check_column_keys(column_keys),
        encryption_algorithm=spec.encryption_algorithm,
        plaintext_footer=bool(plaintext_footer),
        double_wrapping=spec.double_wrapping,
        cache_lifetime=datetime.timedelta(seconds=spec.cache_lifetime),
        internal_key_material=True,
        data_key_length_bits=spec.data_key_length_bits,
    )
    return crypto_factory(spec).file_encryption_properties(connection_config(spec), config)


def decryption_properties(spec: ParquetKmsSpec) -> Any:
    """``FileDecryptionProperties`` for reading, built in this process."""
    config = pe.DecryptionConfiguration(cache_lifetime=datetime.timedelta(seconds=spec.cache_lifetime))
    return crypto_factory(spec).file_decryption_properties(connection_config(spec), config)


def write_table(
    table: pa.Table,
    where: Any,
    *,
    spec: ParquetKmsSpec,
    column_keys: Mapping[str, Sequence[str]],
    footer_key: str,
    plaintext_footer: bool = False,
    **write_kwargs: Any,
) -> None:
    """``pyarrow.parquet.write_table`` with kmsenv encryption (fresh DEKs per file)."""
    if "encryption_properties" in write_kwargs:
        raise ConfigurationError("write_table builds encryption_properties itself; do not pass them")
    props = encryption_properties(
        spec, column_keys=column_keys, footer_key=footer_key, plaintext_footer=plaintext_footer
    )
    pq.write_table(table, where, encryption_properties=props, **write_kwargs)


def read_table(
    source: Any, *, spec: ParquetKmsSpec, columns: Sequence[str] | None = None, **read_kwargs: Any
) -> pa.Table:
    """``pyarrow.parquet.read_table`` with kmsenv decryption."""
    if "decryption_properties" in read_kwargs:
        raise ConfigurationError("read_table builds decryption_properties itself; do not pass them")
    return pq.read_table(source, columns=columns, decryption_properties=decryption_properties(spec), **read_kwargs)


# ---------------------------------------------------------------------------
# Dask (imported lazily). The functions that run on workers are module-level,
# so workers import them by reference and share this module's caches.
# ---------------------------------------------------------------------------


def _write_partition(
    df: Any,
    path: str,
    spec: ParquetKmsSpec,
    column_keys: dict[str, Any],
    footer_key: str,
    plaintext_footer: bool,
    index: bool | None,
    write_kwargs: dict[str, Any],
    partition_info: dict[str, Any] | None = None,
) -> Any:
    import pandas as pd

    number = partition_info["number"] if partition_info else 0
    where = f"{path.rstrip('/')}/part.{number}.parquet"
    table = pa.Table.from_pandas(df, preserve_index=index)
    write_table(
        table,
        where,
        spec=spec,
        column_keys=column_keys,
        footer_key=footer_key,
        plaintext_footer=plaintext_footer,
        **write_kwargs,
    )
    return pd.Series([where], index=[number], name="path", dtype=object)


def _read_partition(path: str, spec: ParquetKmsSpec, columns: list[str] | None = None) -> Any:
    # ``columns`` is a keyword so that Dask pushes column projections into the read.
    return read_table(path, spec=spec, columns=list(columns) if columns is not None else None).to_pandas()


def to_parquet(
    ddf: Any,
    path: str,
    *,
    spec: ParquetKmsSpec,
    column_keys: Mapping[str, Sequence[str]],
    footer_key: str,
    plaintext_footer: bool = False,
    index: bool | None = None,
    compute: bool = True,
    **write_kwargs: Any,
) -> Any:
    """Write a Dask DataFrame as encrypted ``<path>/part.<i>.parquet`` files.

    Each worker process builds its encryption properties from ``spec`` with its
    own :func:`crypto_factory`, so KMS is called ``len(spec.regions)`` times
    per master key per process (per cache lifetime), however many files.
    Returns the list of paths (or, with ``compute=False``, a Dask Series of them).
    ``index`` is pyarrow's ``preserve_index``.
    """
    if not isinstance(spec, ParquetKmsSpec):
        raise ConfigurationError("to_parquet needs a kmsenv.parquet.ParquetKmsSpec")
    import pandas as pd

    column_keys = _check_column_keys(column_keys)
    _check_mkid(footer_key)
    path = os.fspath(path)
    if "://" not in path:
        os.makedirs(path, exist_ok=True)
    result = ddf.map_partitions(
        _write_partition,
        path,
        spec,
        column_keys,
        footer_key,
        bool(plaintext_footer),
        index,
        dict(write_kwargs),
        meta=pd.Series([], name="path", dtype=object),
        enforce_metadata=False,
        align_dataframes=False,
    )
    if not compute:
        return result
    return list(result.compute())


def _list_parts(paths_or_dir: Any) -> list[str]:
    if isinstance(paths_or_dir, (str, os.PathLike)):
        root = os.fspath(paths_or_dir)
        if not os.path.isdir(root):
            return [root]
        names = [n for n in os.listdir(root) if n.endswith(".parquet")]

        def order(name: str) -> tuple[int, int, str]:
            m = re.fullmatch(r"part\.(\d+)\.parquet", name)
            return (0, int(m.group(1)), name) if m else (1, 0, name)

        return [os.path.join(root, n) for n in sorted(names, key=order)]
    return [os.fspath(p) for p in paths_or_dir]


def read_parquet(
    paths_or_dir: Any, *, spec: ParquetKmsSpec, columns: Sequence[str] | None = None, meta: Any = None
) -> Any:
    """A Dask DataFrame over encrypted files (one partition per file, ``dd.from_map``).

    Every file is opened in the worker that reads it, with decryption properties
    built there. Without ``meta`` the first file is read once here to learn the
    schema (which costs this process its own KMS Decrypt per KEK).
    """
    if not isinstance(spec, ParquetKmsSpec):
        raise ConfigurationError("read_parquet needs a kmsenv.parquet.ParquetKmsSpec")
    import dask.dataframe as dd

    paths = _list_parts(paths_or_dir)
    if not paths:
        raise ConfigurationError(f"no .parquet files in {paths_or_dir!r}")
    cols = list(columns) if columns is not None else None
    if meta is None:
        meta = _read_partition(paths[0], spec, cols).iloc[:0]
    return dd.from_map(
        _read_partition,
        paths,
        args=(spec,),
        columns=cols,
        meta=meta,
        label="kmsenv-read-parquet",
        enforce_metadata=False,
    )
