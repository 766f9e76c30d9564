"""Body-only messages whose data key lives in KMS Secrets Manager.

Byte-compatible with the official Encryption SDKs' ``SecretManagerDataKeyProvider``
(Java 1.1.0, and the Python SDK's provider): the secret named ``secret_name``
holds, as ``text``, the standard base64 of the DER message header of
``alibaba-message-format.md`` section 3.1 (EDKs, context, algorithm, header IV
and tag); a one-shot message is only the DER ``Body`` SEQUENCE, a stream message
``u32 little-endian IV length || IV || ciphertext || tag``. Nothing in a message
says which secret or which version it belongs to.

What kmsenv does that the official SDKs do not:

* an encrypt whose algorithm or context differs from the stored header is
  refused (:class:`SecretHeaderMismatchError`) instead of writing a message
  nobody can decrypt;
* the stored header's tag is checked before its data key is used, in both
  directions, and bytes after the body are rejected;
* plaintext is released only after the GCM tag verified (streams included);
* :meth:`SecretManagerDataKeyProvider.rotate` writes a new data key as a new
  secret version, and decryption of GCM messages falls back to older versions;
* with a multi-region :class:`~kmsenv.KmsKeyProvider` the stored header holds
  one EDK per region, and the default store reads the secret from the next
  region when the first one cannot be reached.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import struct
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Protocol, Sequence, runtime_checkable

from . import _process
from ._envelope import (
    DEFAULT_ALGORITHM,
    BackendKey,
    build_header,
    check_new_algorithm,
    check_readable,
    context_argument,
    context_bytes_for_encrypt,
    generate,
    open_body,
    seal_body,
    unwrap,
    verify_header,
)
from ._secret import KeyCell
from ._wipe import wipe
from .algorithms import Algorithm
from .arn import Arn
from .crypto import get_backend
from .exceptions import (
    AuthenticationError,
    ConfigurationError,
    HeaderAuthenticationError,
    KmsEnvError,
    KmsError,
    MessageFormatError,
    NoUsableKeyError,
    SecretExistsError,
    SecretNotFoundError,
    UnsupportedAlgorithmError,
)
from .kms import SECRET_EXISTS_CODES, SECRET_NOT_FOUND_CODES, SecretValue, SecretVersion
from .message import der
from .message.codec import DEFAULT_MAX_ENCRYPTED_DATA_KEYS, MessageBody, MessageHeader, read_header_fields
from .model import DataKeyProvider, algorithm_argument
from .stream._io import Source, write_all
from .stream.alibaba_stream import CHUNK, AlibabaStreamDecryptor

__all__ = [
    "SecretManagerDataKeyProvider",
    "SecretStore",
    "SecretValue",
    "SecretVersion",
    "KmsSecretStore",
    "SecretHeaderMismatchError",
    "SecretNotFoundError",
    "SecretExistsError",
    "SecretMessage",
    "encrypt",
    "decrypt",
    "encrypt_message",
    "decrypt_message",
    "parse_body",
    "encrypt_stream",
    "decrypt_stream",
    "parse_stored_header",
]

logger = logging.getLogger("kmsenv")

CURRENT = "ACSCurrent"
PREVIOUS = "ACSPrevious"
# The codes under which KMS says a secret (or its CMK) does not exist; the
# Java SDK creates the secret on exactly these.
NOT_FOUND_CODES = SECRET_NOT_FOUND_CODES
EXISTS_CODES = SECRET_EXISTS_CODES
DEFAULT_MAX_VERSIONS = 5
DEFAULT_CACHE_TTL = 300.0
# A stored header is a few EDKs and a context: far below this.
MAX_SECRET_CHARS = 256 * 1024

_u32le = struct.Struct("<I")


# ---------------------------------------------------------------- errors


class SecretHeaderMismatchError(ConfigurationError):
    """An encrypt asked for an algorithm or encryption context other than the
    one the secret's header was written with. The official SDKs write such a
    message anyway, and it can never be decrypted; kmsenv refuses it.
    ``field`` is ``"algorithm"`` or ``"encryption_context"``."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def _is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, SecretNotFoundError) or (isinstance(exc, KmsError) and exc.code in NOT_FOUND_CODES)


def _is_exists(exc: BaseException) -> bool:
    return isinstance(exc, SecretExistsError) or (isinstance(exc, KmsError) and exc.code in EXISTS_CODES)


# ---------------------------------------------------------------- the secret store


@runtime_checkable
class SecretStore(Protocol):
    """The Secrets Manager calls this module makes. A missing secret or version
    raises :class:`SecretNotFoundError` (or a :class:`KmsError` with code
    ``Forbidden.ResourceNotFound``); an existing name or version ID on create
    :class:`SecretExistsError` (or code ``Rejected.ResourceExist``)."""

    def get_secret_value(
        self, name: str, version_id: str | None = None, version_stage: str | None = None
    ) -> SecretValue:
        """The version ``version_id``, else the one holding ``version_stage``, else ACSCurrent."""
        ...

    def create_secret(self, name: str, value: str, version_id: str) -> None:
        """A new secret whose first version (ACSCurrent) is ``value`` (``text``)."""
        ...

    def put_secret_value(self, name: str, value: str, version_id: str) -> None:
        """A new version that becomes ACSCurrent (the old current one ACSPrevious)."""
        ...

    def list_secret_versions(self, name: str) -> Sequence[SecretVersion]:
        """Every version still stored, deprecated ones (no stage) included."""
        ...


class KmsSecretStore:
    """:class:`SecretStore` over KMS Secrets Manager through a :class:`kmsenv.Kms`.

    Reads go to the first region and fail over to the next ones when a region
    cannot be reached (a retryable error after the client's own retries); an
    answer such as "not found" is final. Writes go to the first region and
    are then copied, best effort, to the others (same value, same version
    ID), so that a failed-over read finds the same data key; a write the first
    region refuses fails. ``encryption_key_ids`` maps a region to the CMK
    (key ID) that encrypts the secret there (the Java SDK sends the CMK's ID
    as ``EncryptionKeyId``); a region without one uses Secrets Manager's
    service key.
    """

    def __init__(self, kms: Any, regions: Sequence[str], encryption_key_ids: Mapping[str, str] | None = None):
        if not regions:
            raise ConfigurationError("KmsSecretStore needs at least one region")
        for method in ("get_secret_value", "create_secret", "put_secret_value", "list_secret_versions"):
            if not callable(getattr(kms, method, None)):
                raise ConfigurationError("kms must be a kmsenv.Kms")
        self.kms = kms
        self.regions: tuple[str, ...] = tuple(dict.fromkeys(regions))
        self.encryption_key_ids: dict[str, str] = dict(encryption_key_ids or {})

    def __repr__(self) -> str:
        return f"KmsSecretStore(regions={list(self.regions)!r})"

    def _read(self, action: str, name: str, fn: Callable[[str], Any]) -> Any:
        for i, region in enumerate(self.regions):
            try:
                return fn(region)
            except KmsError as exc:
                if not exc.retryable or i == len(self.regions) - 1:
                    raise
                logger.warning(
                    "kmsenv: %s of secret %r failed in %s (%s); trying %s",
                    action,
                    name,
                    region,
                    exc.code,
                    self.regions[i + 1],
                )
        raise AssertionError("unreachable")  # pragma: no cover

    def get_secret_value(
        self, name: str, version_id: str | None = None, version_stage: str | None = None
    ) -> SecretValue:
        value: SecretValue = self._read(
            "GetSecretValue", name, lambda region: self.kms.get_secret_value(region, name, version_id, version_stage)
        )
        return value

    def _create_in(self, region: str, name: str, value: str, version_id: str) -> None:
        self.kms.create_secret(region, name, value, version_id, encryption_key_id=self.encryption_key_ids.get(region))

    def _replicate(self, name: str, value: str, version_id: str) -> None:
        for region in self.regions[1:]:
            try:
                try:
                    self.kms.put_secret_value(region, name, value, version_id)
                except SecretNotFoundError:
                    self._create_in(region, name, value, version_id)
            except KmsError as exc:
                if _is_exists(exc):
                    continue
                logger.warning(
                    "kmsenv: copying secret %r version %s to %s failed (%s); reads fail over "
                    "to that region only once it holds the secret",
                    name,
                    version_id,
                    region,
                    exc.code,
                )

    def create_secret(self, name: str, value: str, version_id: str) -> None:
        self._create_in(self.regions[0], name, value, version_id)
        self._replicate(name, value, version_id)

    def put_secret_value(self, name: str, value: str, version_id: str) -> None:
        self.kms.put_secret_value(self.regions[0], name, value, version_id)
        self._replicate(name, value, version_id)

    def list_secret_versions(self, name: str) -> Sequence[SecretVersion]:
        versions: list[SecretVersion] = self._read(
            "ListSecretVersionIds", name, lambda region: self.kms.list_secret_versions(region, name)
        )
        return versions


# ---------------------------------------------------------------- the stored header


def parse_stored_header(value: str, max_encrypted_data_keys: int = DEFAULT_MAX_ENCRYPTED_DATA_KEYS) -> MessageHeader:
    """The DER header stored in a secret (standard base64 text), parsed
    strictly: canonical base64, exactly one header SEQUENCE, nothing after it.
    Nothing in it is authenticated until its tag is checked with its data key."""
    if not isinstance(value, str):
        raise MessageFormatError("the secret value is not text")
    if len(value) > MAX_SECRET_CHARS:
        raise MessageFormatError(f"the secret value is longer than {MAX_SECRET_CHARS} characters")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise MessageFormatError("the secret value is not base64 (it holds no kmsenv/Alibaba header)") from None
    if base64.b64encode(raw).decode("ascii") != value:
        raise MessageFormatError("the secret value is not canonical base64")
    r = der.Reader(raw)
    h = r.enter(der.SEQUENCE, "stored header")
    version, algorithm, edks, context = read_header_fields(h, max_encrypted_data_keys)
    header_iv = h.octets("header IV", 64)
    tag = h.octets("header auth tag", 64)
    h.expect_end("stored header")
    r.expect_end("the stored header")
    if len(header_iv) != 12:
        raise MessageFormatError(f"header IV is {len(header_iv)} bytes, expected 12")
    if len(tag) != 16:
        raise MessageFormatError(f"header auth tag is {len(tag)} bytes, expected 16")
    # The version is kept as stored (the Java SDK authenticates it as read).
    return MessageHeader(version, algorithm, edks, context, header_iv, tag, raw)


@dataclass(frozen=True)
class _Version:
    """One secret version whose header tag verified: the header and its data key."""

    version_id: str
    header: MessageHeader
    cell: KeyCell

    def key_copy(self) -> bytearray:
        return self.cell.copy()


# ---------------------------------------------------------------- the provider


class SecretManagerDataKeyProvider:
    """A data key kept in a Secrets Manager secret, for body-only messages.

    ``key_provider`` is any kmsenv data-key provider: it makes the data key
    when the secret does not exist yet and unwraps the stored EDKs (a
    :class:`~kmsenv.KmsKeyProvider` with CMKs in several regions stores one
    EDK per region). ``secret_name`` is the secret, used verbatim, as the
    official SDKs do.

    ``secrets`` is any :class:`SecretStore`; by default a
    :class:`KmsSecretStore` on the key provider's ``kms`` in the regions of
    its CMKs, the first CMK's region first.

    ``algorithm`` is the algorithm of a secret this provider creates (default:
    the key provider's, else AES-256-GCM); once the secret exists its header
    decides. ``max_versions`` bounds how many secret versions (current first,
    then ACSPrevious, then older ones, newest first) a GCM decrypt tries;
    ``1`` reads the current version only, as the official SDKs do.

    Per process, the provider caches each version's verified header and data
    key (in a :class:`KeyCell`, wiped on :meth:`clear_cache`, replacement and
    fork) and, for ``cache_ttl`` seconds, which version is current: a
    rotation by another process is seen within ``cache_ttl``. The cache is
    this object's: another provider (other CMKs) asks KMS itself.
    """

    def __init__(
        self,
        key_provider: DataKeyProvider,
        secret_name: str,
        *,
        secrets: SecretStore | None = None,
        algorithm: Algorithm | int | None = None,
        max_versions: int = DEFAULT_MAX_VERSIONS,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        max_encrypted_data_keys: int = DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(secret_name, str) or not secret_name or secret_name != secret_name.strip():
            raise ConfigurationError("secret_name must be a non-empty str without surrounding whitespace")
        for method in ("generate_data_key", "decrypt_data_key"):
            if not callable(getattr(key_provider, method, None)):
                raise ConfigurationError(f"key_provider must be a kmsenv data-key provider (no {method})")
        if isinstance(max_versions, bool) or not isinstance(max_versions, int) or not 1 <= max_versions <= 100:
            raise ConfigurationError("max_versions must be an int between 1 and 100")
        if isinstance(cache_ttl, bool) or not isinstance(cache_ttl, (int, float)) or not cache_ttl >= 0:
            raise ConfigurationError("cache_ttl must be a non-negative number of seconds")
        self.key_provider = key_provider
        self.secret_name = secret_name
        self.algorithm: Algorithm = (
            algorithm_argument(algorithm)
            if algorithm is not None
            else getattr(key_provider, "algorithm", None) or DEFAULT_ALGORITHM
        )
        self.secrets: SecretStore = secrets if secrets is not None else _default_store(key_provider)
        for method in ("get_secret_value", "create_secret", "put_secret_value", "list_secret_versions"):
            if not callable(getattr(self.secrets, method, None)):
                raise ConfigurationError(f"secrets must be a SecretStore (no {method})")
        self.max_versions = max_versions
        self.cache_ttl = float(cache_ttl)
        self.max_encrypted_data_keys = max_encrypted_data_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._versions: OrderedDict[str, _Version] = OrderedDict()
        self._current: tuple[str, float] | None = None
        self._older: tuple[tuple[str, ...], float] | None = None
        _process.track(self)

    def __repr__(self) -> str:
        return f"SecretManagerDataKeyProvider({self.key_provider!r}, {self.secret_name!r}, secrets={self.secrets!r})"

    # -- cache ----------------------------------------------------------------

    def clear_cache(self) -> None:
        """Forget every cached header and wipe every cached data key."""
        with self._lock:
            versions, self._versions = self._versions, OrderedDict()
            self._current = self._older = None
        for v in versions.values():
            v.cell.wipe()

    def _after_fork_in_child(self) -> None:
        # The parent may hold the lock; the child reads its keys again.
        self._lock = _process.new_lock()
        versions, self._versions = self._versions, OrderedDict()
        self._current = self._older = None
        for v in versions.values():
            v.cell.wipe()

    def _fresh(self, stamp: float) -> bool:
        return self._clock() - stamp < self.cache_ttl

    def _keep(self, version: _Version, current: bool) -> _Version:
        """Cache ``version`` (a version's value never changes); return the
        cached one if another thread got there first."""
        with self._lock:
            known = self._versions.get(version.version_id)
            if known is version:
                self._versions.move_to_end(version.version_id)
                kept, known = version, None
            elif known is not None and not known.cell.wiped:
                self._versions.move_to_end(version.version_id)
                kept = known
            else:
                self._versions[version.version_id] = kept = version
                known = None
            if current:
                self._current = (version.version_id, self._clock())
            # Evicted cells are dropped, not wiped: a thread may be copying
            # one right now; KeyCell wipes itself when the last user lets go.
            while len(self._versions) > self.max_versions + 1:
                self._versions.popitem(last=False)
        if known is not None:
            version.cell.wipe()  # our duplicate: nobody else has it
        return kept

    # -- loading versions ----------------------------------------------------

    def _open(self, secret: SecretValue) -> _Version:
        """Parse a stored header, unwrap its data key and check its tag."""
        if secret.data_type != "text":
            raise MessageFormatError(
                f"secret {self.secret_name!r} version {secret.version_id} is {secret.data_type!r}, not text"
            )
        header = parse_stored_header(secret.value, self.max_encrypted_data_keys)
        key = unwrap(self.key_provider, header)
        try:
            with BackendKey(header.algorithm, key) as backend_key:
                verify_header(backend_key, header)
            cell = KeyCell(key)
        finally:
            wipe(key)
        return _Version(secret.version_id, header, cell)

    def _cached(self, version_id: str) -> _Version | None:
        with self._lock:
            v = self._versions.get(version_id)
        return v if v is not None and not v.cell.wiped else None

    def _load(self, version_id: str) -> _Version:
        found = self._cached(version_id)
        if found is not None:
            return found
        secret = self.secrets.get_secret_value(self.secret_name, version_id=version_id)
        return self._keep(self._open(secret), current=False)

    def _current_version(self) -> _Version | None:
        """The current version, or None when the secret does not exist."""
        pointer = self._current
        if pointer is not None and self._fresh(pointer[1]):
            found = self._cached(pointer[0])
            if found is not None:
                return found
        try:
            secret = self.secrets.get_secret_value(self.secret_name)
        except KmsEnvError as exc:
            if _is_not_found(exc):
                return None
            raise
        found = self._cached(secret.version_id)
        if found is None:
            found = self._open(secret)
        return self._keep(found, current=True)

    def _older_ids(self, current_id: str) -> tuple[str, ...]:
        """Versions other than ``current_id``: ACSCurrent (if another process
        moved it), ACSPrevious, then the rest newest first; at most
        ``max_versions - 1``."""
        if self.max_versions <= 1:
            return ()
        older = self._older
        if older is not None and self._fresh(older[1]):
            return older[0]
        listed = list(self.secrets.list_secret_versions(self.secret_name))
        # Newest first: by creation time, ties broken by list order (stores list oldest first).
        ordered = sorted(reversed(listed), key=lambda v: v.create_time, reverse=True)
        # A current version other than ours: another process rotated within
        # our cache_ttl; its key is the likeliest after ours.
        ordered.sort(key=lambda v: 0 if CURRENT in v.stages else 1 if PREVIOUS in v.stages else 2)
        ids = tuple(v.version_id for v in ordered if v.version_id != current_id)
        ids = ids[: self.max_versions - 1]
        self._older = (ids, self._clock())
        return ids

    def _candidates(self) -> Iterator[_Version]:
        """The current version, then the older ones (for GCM decrypts), lazily:
        an older one is read only when the ones before it did not fit."""
        current = self._current_version()
        if current is None:
            raise SecretNotFoundError(f"secret {self.secret_name!r} does not exist", code="Forbidden.ResourceNotFound")
        yield current
        for version_id in self._older_ids(current.version_id):
            try:
                older = self._load(version_id)
            except (SecretNotFoundError, NoUsableKeyError, HeaderAuthenticationError) as exc:
                # Gone since the listing, wrapped under CMKs this provider cannot
                # use, or altered: it opens nothing; the others may. (A KMS that
                # cannot be reached is an error, not a failed tag.)
                logger.warning(
                    "kmsenv: secret %r version %s skipped (%s)", self.secret_name, version_id, type(exc).__name__
                )
                continue
            yield older

    # -- creating and rotating -----------------------------------------------

    def _new_value(self, algorithm: Algorithm, ctx: Mapping[str, str]) -> tuple[str, KeyCell, MessageHeader]:
        context_bytes_for_encrypt(ctx)
        data_key = generate(self.key_provider, algorithm, ctx)
        try:
            with BackendKey(algorithm, data_key.plaintext) as key:
                raw = build_header(key, algorithm, data_key.encrypted_data_keys, ctx)
            cell = KeyCell(data_key.plaintext)
        finally:
            data_key.wipe()
        value = base64.b64encode(raw).decode("ascii")
        return value, cell, parse_stored_header(value, self.max_encrypted_data_keys)

    def _current_for_encrypt(
        self, algorithm: Algorithm | None, ctx: Mapping[str, str], check: Callable[[Algorithm], None]
    ) -> _Version:
        """The current version, created (as the Java SDK does) when the secret
        does not exist; refused when it does not match the request or its
        algorithm does not pass ``check`` (before anything is created)."""
        current = self._current_version()
        if current is None:
            new_algorithm = algorithm or self.algorithm
            check(new_algorithm)
            version_id = str(uuid.uuid4())
            value, cell, header = self._new_value(new_algorithm, ctx)
            try:
                self.secrets.create_secret(self.secret_name, value, version_id)
            except KmsEnvError as exc:
                cell.wipe()
                if not _is_exists(exc):
                    raise
                # Another writer created it first: use theirs.
                current = self._current_version()
                if current is None:
                    raise
            else:
                current = self._keep(_Version(version_id, header, cell), current=True)
        _check_matches(current.header, algorithm, ctx, self.secret_name)
        check(current.header.algorithm)
        return current

    def rotate(
        self,
        *,
        algorithm: Algorithm | int | None = None,
        encryption_context: Mapping[str, str] | None = None,
        allow_unauthenticated: bool = False,
    ) -> str:
        """Write a new data key as a new version of the secret (ACSCurrent;
        the old current version becomes ACSPrevious) and return its version ID.

        New messages use the new key. GCM messages under the older versions
        still decrypt (up to ``max_versions`` versions are tried); CBC/CTR
        messages do not: they have no tag that could tell which version's key
        is theirs, so they are read with the current version only.

        ``algorithm`` and ``encryption_context`` default to the current
        version's (a secret that does not exist yet is created). Moving to a
        CBC/CTR algorithm needs ``allow_unauthenticated=True``."""
        requested = algorithm_argument(algorithm) if algorithm is not None else None

        def check(alg: Algorithm) -> None:
            check_new_algorithm(alg, allow_unauthenticated or current is not None and alg is current.header.algorithm)

        current = self._current_version()
        if current is None:
            return self._current_for_encrypt(requested, context_argument(encryption_context), check).version_id
        alg = requested or current.header.algorithm
        check(alg)
        ctx = (
            context_argument(encryption_context)
            if encryption_context is not None
            else dict(current.header.encryption_context)
        )
        version_id = str(uuid.uuid4())
        value, cell, header = self._new_value(alg, ctx)
        try:
            self.secrets.put_secret_value(self.secret_name, value, version_id)
        except BaseException:
            cell.wipe()
            raise
        with self._lock:
            self._older = None
        self._keep(_Version(version_id, header, cell), current=True)
        return version_id


def _default_store(key_provider: Any) -> KmsSecretStore:
    kms = getattr(key_provider, "kms", None)
    arns = getattr(key_provider, "key_arns", None) or ()
    if kms is None or not arns:
        raise ConfigurationError(
            "the default secret store needs a KmsKeyProvider with CMK ARNs (it uses their regions); "
            "pass secrets= otherwise"
        )
    parsed = [Arn.parse(a) for a in arns]
    key_ids: dict[str, str] = {}
    for a in parsed:
        key_ids.setdefault(a.region, a.key_id)
    return KmsSecretStore(kms, [a.region for a in parsed], key_ids)


def _check_matches(header: MessageHeader, algorithm: Algorithm | None, ctx: Mapping[str, str], name: str) -> None:
    if algorithm is not None and algorithm is not header.algorithm:
        raise SecretHeaderMismatchError(
            f"secret {name!r} holds a {header.algorithm.name} data key; a {algorithm.name} message cannot use it "
            "(leave algorithm= out, or rotate(algorithm=...) to change the secret's algorithm)",
            "algorithm",
        )
    if dict(ctx) != dict(header.encryption_context):
        stored = sorted(header.encryption_context)
        raise SecretHeaderMismatchError(
            f"secret {name!r} was written with another encryption context (keys {stored!r}); the message's "
            "context must equal the stored one, or no reader could decrypt it "
            "(rotate(encryption_context=...) to change it)",
            "encryption_context",
        )


def _provider_argument(provider: object) -> SecretManagerDataKeyProvider:
    if not isinstance(provider, SecretManagerDataKeyProvider):
        raise ConfigurationError("provider must be a kmsenv.SecretManagerDataKeyProvider")
    return provider


def _encrypt_target(
    provider: SecretManagerDataKeyProvider,
    encryption_context: Mapping[str, str] | None,
    algorithm: Algorithm | int | None,
    allow_unauthenticated: bool,
    what: str | None = None,
) -> _Version:
    ctx = context_argument(encryption_context)
    alg = algorithm_argument(algorithm, UnsupportedAlgorithmError) if algorithm is not None else None

    def check(chosen: Algorithm) -> None:
        if what is not None:
            check_new_algorithm(chosen, what=what, error=UnsupportedAlgorithmError)
        else:
            check_new_algorithm(chosen, allow_unauthenticated)

    return provider._current_for_encrypt(alg, ctx, check)


# ---------------------------------------------------------------- one-shot messages


class SecretMessage(NamedTuple):
    """What :func:`encrypt_message` and :func:`decrypt_message` return: the
    data (the body-only message, or the plaintext), the stored header it
    belongs to, and the ID of the secret version that holds it."""

    data: bytes
    header: MessageHeader
    version_id: str


def encrypt_message(
    plaintext: bytes | bytearray | memoryview,
    provider: SecretManagerDataKeyProvider,
    *,
    encryption_context: Mapping[str, str] | None = None,
    algorithm: Algorithm | int | None = None,
    allow_unauthenticated: bool = False,
) -> SecretMessage:
    """:func:`encrypt`, also saying which header and secret version the
    message belongs to."""
    if not isinstance(plaintext, (bytes, bytearray, memoryview)):
        raise ConfigurationError(f"plaintext must be bytes-like, not {type(plaintext).__name__}")
    p = _provider_argument(provider)
    version = _encrypt_target(p, encryption_context, algorithm, allow_unauthenticated)
    header = version.header
    iv = get_backend().random(header.algorithm.info.iv_len)
    key = version.key_copy()
    try:
        with BackendKey(header.algorithm, key) as backend_key:
            body = seal_body(backend_key, header.algorithm, header.context_bytes(), bytes(plaintext), iv)
    finally:
        wipe(key)
    return SecretMessage(body, header, version.version_id)


def encrypt(
    plaintext: bytes | bytearray | memoryview,
    provider: SecretManagerDataKeyProvider,
    *,
    encryption_context: Mapping[str, str] | None = None,
    algorithm: Algorithm | int | None = None,
    allow_unauthenticated: bool = False,
) -> bytes:
    """A body-only message (the DER ``Body`` SEQUENCE) under the secret's
    current data key. The secret is created when it does not exist (with
    ``algorithm``, else the provider's, and ``encryption_context``); when it
    does, ``algorithm`` (if given) and ``encryption_context`` must equal the
    stored header's, or :class:`SecretHeaderMismatchError` is raised. A
    CBC/CTR secret needs ``allow_unauthenticated=True``."""
    return encrypt_message(
        plaintext,
        provider,
        encryption_context=encryption_context,
        algorithm=algorithm,
        allow_unauthenticated=allow_unauthenticated,
    ).data


def parse_body(data: bytes) -> MessageBody:
    """The one DER Body SEQUENCE, nothing after it."""
    r = der.Reader(data)
    b = r.enter(der.SEQUENCE, "message body")
    iv = b.octets("body IV", 64)
    ct = b.octets("ciphertext")
    tag = b.octets("body auth tag", 64)
    b.expect_end("message body")
    r.expect_end("the message body")
    return MessageBody(iv, ct, tag)


def _fits(header: MessageHeader, iv_len: int, tag_len: int | None) -> bool:
    info = header.algorithm.info
    return iv_len == info.iv_len and (tag_len is None or tag_len == info.tag_len)


def decrypt(
    message: bytes | bytearray | memoryview,
    provider: SecretManagerDataKeyProvider,
    *,
    allow_unauthenticated: bool = False,
) -> bytes:
    """The plaintext of a body-only message, released only after the header
    and (GCM) body tags verified. GCM messages are tried against the current
    secret version, then older ones (``provider.max_versions``); CBC/CTR
    messages (``allow_unauthenticated=True`` needed) against the current one
    only. Bytes after the body are a :class:`MessageFormatError`."""
    return decrypt_message(message, provider, allow_unauthenticated=allow_unauthenticated).data


def decrypt_message(
    message: bytes | bytearray | memoryview,
    provider: SecretManagerDataKeyProvider,
    *,
    allow_unauthenticated: bool = False,
) -> SecretMessage:
    """:func:`decrypt`, also saying which secret version's key opened the message."""
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise ConfigurationError(f"message must be bytes-like, not {type(message).__name__}")
    p = _provider_argument(provider)
    body = parse_body(bytes(message))
    failure: AuthenticationError | None = None
    current: MessageHeader | None = None
    for i, version in enumerate(p._candidates()):
        header = version.header
        current = current or header
        if not _fits(header, len(body.iv), len(body.auth_tag)):
            continue
        if not header.algorithm.authenticated:
            if i > 0:
                continue  # no tag: an older legacy key could never be told apart
            check_readable(header, allow_unauthenticated)
        key = version.key_copy()
        try:
            with BackendKey(header.algorithm, key) as backend_key:
                plaintext = open_body(
                    backend_key,
                    header.algorithm,
                    body,
                    header.context_bytes(),
                    altered="the body was altered or belongs to another secret version",
                )
            return SecretMessage(plaintext, header, version.version_id)
        except AuthenticationError as exc:
            failure = failure or exc
        finally:
            wipe(key)
        if not header.algorithm.authenticated:
            break
    if failure is None and current is not None:
        info = current.algorithm.info
        raise MessageFormatError(
            f"the body's IV ({len(body.iv)} bytes) and tag ({len(body.auth_tag)} bytes) fit no version of the "
            f"secret (the current one is {current.algorithm.name}: {info.iv_len} and {info.tag_len})"
        )
    raise failure or AuthenticationError("message body authentication failed")


# ---------------------------------------------------------------- streams


class _BodyDecryptor(AlibabaStreamDecryptor):
    """The Java stream's body (ciphertext then a 16-byte tag), read with the
    two-pass verified release of :class:`AlibabaStreamDecryptor`: the header
    and IV come from the secret and the stream's prefix instead."""

    def __init__(self, src: Source, header: MessageHeader, key: bytearray, iv: bytes, spool_dir: str | None):
        self.header = header
        self._iv = iv
        self._src = src
        self._key = key
        self._spool = None
        self._snapshot = None
        self._gcm = None
        self._buf = bytearray(CHUNK)
        self._out = bytearray(CHUNK)
        self.bytes_out = 0
        try:
            self._verify_pass(spool_dir)
        except BaseException:
            self.close()
            raise


def encrypt_stream(
    src: Any,
    dst: Any,
    provider: SecretManagerDataKeyProvider,
    *,
    encryption_context: Mapping[str, str] | None = None,
    algorithm: Algorithm | int | None = None,
) -> int:
    """Encrypt the binary file ``src`` into ``dst`` in the Java stream layout
    (``u32 LE IV length || IV || ciphertext || tag``); GCM secrets only.
    Returns the bytes written."""
    p = _provider_argument(provider)
    version = _encrypt_target(p, encryption_context, algorithm, False, what="the secret-manager stream layout")
    header = version.header
    source = Source(src)
    iv = get_backend().random(header.algorithm.info.iv_len)
    written = write_all(dst, _u32le.pack(len(iv)) + iv)
    key = version.key_copy()
    try:
        backend: Any = get_backend()
        gcm = backend.gcm_stream(header.algorithm.info.cipher, key, iv, False)
    finally:
        wipe(key)
    buf = bytearray(CHUNK)
    out = bytearray(CHUNK)
    try:
        gcm.aad(header.context_bytes())
        while True:
            n = source.readinto(memoryview(buf))
            if n:
                gcm.update_into(memoryview(buf)[:n], memoryview(out)[:n])
                written += write_all(dst, memoryview(out)[:n])
            if n < len(buf):
                break
        written += write_all(dst, gcm.final())
    finally:
        gcm.close()
        wipe(buf)
    return written


def _read_rest(source: Source) -> bytes:
    parts = bytearray()
    buf = bytearray(CHUNK)
    while True:
        n = source.readinto(memoryview(buf))
        parts += memoryview(buf)[:n]
        if n < len(buf):
            return bytes(parts)


def decrypt_stream(
    src: Any,
    dst: Any,
    provider: SecretManagerDataKeyProvider,
    *,
    allow_unauthenticated: bool = False,
    spool_dir: str | None = None,
) -> int:
    """Decrypt a Java-layout stream from ``src`` into ``dst``; returns the
    plaintext bytes written. For GCM nothing is written before the tag
    verified (the body is kept in a private spool between the passes, see
    :mod:`kmsenv.stream.alibaba_stream`). Older secret versions are tried
    only when ``src`` is seekable (the body is read again for each);
    CBC/CTR streams (``allow_unauthenticated=True`` needed) are read whole
    into memory and opened with the current version."""
    p = _provider_argument(provider)
    candidates = p._candidates()
    current = next(candidates)
    seekable = False
    start = 0
    try:
        seekable = bool(src.seekable())
        start = src.tell() if seekable else 0
    except (AttributeError, OSError, ValueError):
        seekable = False
    source = Source(src)
    iv_len = _u32le.unpack(source.read_exact(4, "body IV length"))[0]
    header = current.header
    if iv_len != header.algorithm.info.iv_len:
        raise MessageFormatError(
            f"the stream's IV is {iv_len} bytes; the secret's {header.algorithm.name} uses {header.algorithm.info.iv_len}"
        )
    iv = source.read_exact(iv_len, "body IV")
    if not header.algorithm.authenticated:
        check_readable(header, allow_unauthenticated)
        body = MessageBody(iv, _read_rest(source), b"")
        key = current.key_copy()
        try:
            with BackendKey(header.algorithm, key) as backend_key:
                plaintext = open_body(
                    backend_key,
                    header.algorithm,
                    body,
                    header.context_bytes(),
                    altered="the body was altered or belongs to another secret version",
                )
        finally:
            wipe(key)
        return write_all(dst, plaintext)
    body_start = start + 4 + iv_len
    version: _Version | None = current
    failure: AuthenticationError | None = None
    while version is not None:
        h = version.header
        if _fits(h, iv_len, None) and h.algorithm.authenticated:
            try:
                decryptor = _BodyDecryptor(source, h, version.key_copy(), iv, spool_dir)
            except AuthenticationError as exc:
                failure = failure or exc
                if not seekable:
                    break
                src.seek(body_start, io.SEEK_SET)
                source = Source(src)
            else:
                written = 0
                try:
                    while True:
                        chunk = decryptor.read_chunk()
                        if chunk is None:
                            return written
                        written += write_all(dst, chunk)
                finally:
                    decryptor.close()
        version = next(candidates, None) if seekable else None
    raise failure or AuthenticationError("message body authentication failed")
