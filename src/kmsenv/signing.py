"""Signatures with KMS asymmetric keys: sign through KMS, verify locally.

* :class:`SignatureAlgorithm`: KMS's algorithm names.
* :func:`verify`: local verification from a PEM public key or certificate.
* :class:`KmsSigner`: computes the digest locally and calls AsymmetricSign,
  failing over between keys in several regions.
* :class:`KmsVerifier`: fetches and caches public keys per key version and
  verifies locally (AsymmetricVerify only when asked).

What is signed, and the official SDKs' signing bugs kmsenv avoids:
docs/signing.md.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Mapping

from . import _process
from .arn import Arn
from .crypto import signature as _sig
from .exceptions import ConfigurationError, KmsError, NoUsableKeyError

if TYPE_CHECKING:
    from .kms import Kms

__all__ = [
    "DEFAULT_SM2_USER_ID",
    "KmsSigner",
    "KmsVerifier",
    "SignResult",
    "SignatureAlgorithm",
    "default_algorithm",
    "message_digest",
    "public_key_spec",
    "verify",
]

#: The SM2 distinguishing ID KMS and the official SDKs use in Z.
DEFAULT_SM2_USER_ID = _sig.DEFAULT_SM2_ID


class SignatureAlgorithm(str, Enum):
    """KMS signature algorithms (the ``Algorithm`` of AsymmetricSign).
    Members are their own KMS names, so plain strings are accepted wherever an
    algorithm is taken."""

    RSA_PSS_SHA_256 = "RSA_PSS_SHA_256"  # RSASSA-PSS, SHA-256, MGF1-SHA-256, salt 32
    RSA_PKCS1_SHA_256 = "RSA_PKCS1_SHA_256"  # RSASSA-PKCS1-v1_5, SHA-256
    ECDSA_SHA_256 = "ECDSA_SHA_256"  # EC_P256 and EC_P256K keys; DER signatures
    SM2DSA = "SM2DSA"  # GB/T 32918.2 over SM3(Z || M); DER signatures

    @property
    def algorithm_name(self) -> str:
        """The KMS name (the official SDKs' attribute)."""
        return self.value

    def __str__(self) -> str:
        return self.value


def _algorithm(value: object) -> SignatureAlgorithm:
    if isinstance(value, SignatureAlgorithm):
        return value
    if isinstance(value, str):
        try:
            return SignatureAlgorithm(value)
        except ValueError:
            pass
    names = ", ".join(a.value for a in SignatureAlgorithm)
    raise ConfigurationError(f"unknown signature algorithm {value!r}; use one of {names}")


def default_algorithm(key_spec: str) -> SignatureAlgorithm:
    """The algorithm used when none is given, from the KMS key spec: RSA keys
    RSA_PSS_SHA_256, EC_P256/EC_P256K ECDSA_SHA_256, EC_SM2 SM2DSA."""
    return SignatureAlgorithm(_sig.default_algorithm(key_spec))


def public_key_spec(public_key: str | bytes) -> str:
    """The KMS key spec (``RSA_2048``, ``RSA_3072``, ``EC_P256``, ``EC_P256K``,
    ``EC_SM2``) of a PEM public key or X.509 certificate's subject key."""
    return _sig.load_public_key(public_key).key_spec


def _bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise ConfigurationError(f"{what} must be bytes, not {type(value).__name__}")


def message_digest(
    public_key: str | bytes,
    algorithm: SignatureAlgorithm | str,
    data: bytes,
    *,
    sm2_user_id: bytes = DEFAULT_SM2_USER_ID,
) -> bytes:
    """The 32-byte digest KMS signs for ``data``: SHA-256(data), or for SM2DSA
    SM3(Z || data) with Z from ``public_key`` and ``sm2_user_id``."""
    alg = _algorithm(algorithm)
    return _sig.message_digest(_sig.load_public_key(public_key), alg.value, _bytes(data, "data"), sm2_user_id)


def _verify_with(
    key: _sig.PublicKey,
    algorithm: SignatureAlgorithm,
    data: object,
    signature: object,
    digest: bool,
    sm2_user_id: object,
) -> bool:
    if not isinstance(digest, bool):
        raise ConfigurationError("digest must be True or False")
    payload = _bytes(data, "data")
    if digest:
        if len(payload) != _sig.DIGEST_LEN:
            raise ConfigurationError(
                f"with digest=True, data is the {_sig.DIGEST_LEN}-byte digest KMS signed, not {len(payload)} bytes"
            )
        value = payload
    else:
        value = _sig.message_digest(key, algorithm.value, payload, sm2_user_id)
    return _sig.verify_digest(key, algorithm.value, value, _bytes(signature, "signature"))


def verify(
    public_key: str | bytes,
    algorithm: SignatureAlgorithm | str,
    data: bytes,
    signature: bytes,
    *,
    digest: bool = False,
    sm2_user_id: bytes = DEFAULT_SM2_USER_ID,
) -> bool:
    """Verify ``signature`` locally (no KMS call).

    ``public_key``: PEM SubjectPublicKeyInfo (what GetPublicKey returns) or a
    PEM X.509 certificate (only its subject key is used; ``algorithm`` decides,
    not the certificate's own signature algorithm). ``data``: the message, or
    with ``digest=True`` the 32-byte digest that was signed (SHA-256(M), or
    SM3(Z || M) for SM2DSA). ``sm2_user_id``: the SM2 distinguishing ID in Z.

    Returns False for a signature that does not verify, including one that is
    not strict DER (ECDSA, SM2), not modulus-length (RSA) or whose PSS salt is
    not 32 bytes. High-S ECDSA signatures verify (KMS does not normalise s).
    Raises :class:`~kmsenv.ConfigurationError` for a malformed key, a key that
    does not fit the algorithm, or malformed arguments.
    """
    alg = _algorithm(algorithm)
    return _verify_with(_sig.load_public_key(public_key), alg, data, signature, digest, sm2_user_id)


@dataclass(frozen=True)
class SignResult:
    """A signature KMS made: which key (``key_arn``) and version signed, with
    which algorithm, over which ``digest``."""

    signature: bytes = field(repr=False)
    key_arn: str
    key_version_id: str
    algorithm: SignatureAlgorithm
    digest: bytes = field(repr=False, default=b"")


@dataclass(frozen=True)
class _KeyState:
    """What a signer or verifier learnt about one key version (public, so it
    may be kept across forks; the lock around it may not)."""

    version_id: str
    public_key: _sig.PublicKey | None = None
    algorithm: SignatureAlgorithm | None = None


def _default_kms(kms: Any, needed: tuple[str, ...]) -> Any:
    if kms is None:
        from .kms import Kms

        return Kms()
    missing = [m for m in needed if not hasattr(kms, m)]
    if missing:
        raise ConfigurationError(f"kms must be a kmsenv.Kms (missing {', '.join(missing)})")
    return kms


def _parse_arns(key_arns: tuple[object, ...], who: str) -> tuple[Arn, ...]:
    if not key_arns:
        raise ConfigurationError(f"{who} needs at least one key ARN")
    if len(key_arns) == 1 and isinstance(key_arns[0], (list, tuple)):
        raise ConfigurationError(f"pass the key ARNs as separate arguments: {who}(*arns)")
    arns = tuple(Arn.parse(a) for a in key_arns)
    if len(set(arns)) != len(arns):
        raise ConfigurationError(f"{who}: a key ARN is listed twice")
    return arns


def _load_fetched_key(pem: str, arn: Arn, version_id: str) -> _sig.PublicKey:
    try:
        return _sig.load_public_key(pem)
    except ConfigurationError as e:
        raise KmsError(
            f"KMS GetPublicKey of {arn} version {version_id} returned an unusable key: {e}",
            code="InvalidResponse",
            region=arn.region,
        ) from None


def _newest_version(kms: Any, arn: Arn, max_attempts: int | None) -> str:
    """The key's newest version (asymmetric keys have no primary version)."""
    versions = kms.list_key_versions(arn, max_attempts=max_attempts)
    if not versions:
        raise KmsError(f"KMS ListKeyVersions of {arn} listed no versions", code="InvalidResponse", region=arn.region)
    if all(v.creation_date for v in versions):
        # ISO 8601 UTC times of one format compare as text; ties keep list order.
        return str(max(enumerate(versions), key=lambda iv: (iv[1].creation_date, iv[0]))[1].key_version_id)
    return str(versions[-1].key_version_id)


class KmsSigner:
    """Signs with KMS asymmetric keys, one per region, failing over in order.

    ``key_version_id``: a version ID (with one key), a mapping {ARN: version
    ID}, or None for each key's newest version (ListKeyVersions, once).
    ``algorithm``: a :class:`SignatureAlgorithm`, or None for each key's
    default (:func:`default_algorithm` of the key spec, read from the public
    key that GetPublicKey returns, once). SM2DSA fetches the public key once
    per key version for Z.

    ``sign(data)`` hashes locally (KMS only ever signs a digest) and calls
    AsymmetricSign with the first key; on a KMS error (region down, key
    disabled, throttled) it goes on to the next key at once, and the
    :class:`SignResult` names the key that signed. Signatures from different
    keys verify under different public keys: keep the key ARN and version
    with the signature (:class:`KmsVerifier` takes them).
    """

    def __init__(
        self,
        *key_arns: str | Arn,
        kms: Kms | None = None,
        key_version_id: str | Mapping[str, str] | None = None,
        algorithm: SignatureAlgorithm | str | None = None,
    ) -> None:
        self._arns = _parse_arns(key_arns, "KmsSigner")
        self.key_arns: tuple[str, ...] = tuple(str(a) for a in self._arns)
        self.kms = _default_kms(kms, ("asymmetric_sign", "get_public_key", "list_key_versions"))
        self.algorithm: SignatureAlgorithm | None = None if algorithm is None else _algorithm(algorithm)
        self._versions = self._version_map(key_version_id)
        self._lock = threading.Lock()
        self._states: dict[Arn, _KeyState] = {}
        _process.track(self)

    def _after_fork_in_child(self) -> None:
        # The learnt versions and public keys hold in the child; only the lock may be stuck.
        self._lock = _process.new_lock()

    def _version_map(self, key_version_id: object) -> dict[Arn, str]:
        if key_version_id is None:
            return {}
        if isinstance(key_version_id, str):
            if len(self._arns) != 1:
                raise ConfigurationError(
                    "key_version_id names a version of one key; with several keys pass {key_arn: version_id}"
                )
            items: list[tuple[object, object]] = [(self._arns[0], key_version_id)]
        elif isinstance(key_version_id, Mapping):
            items = list(key_version_id.items())
        else:
            raise ConfigurationError("key_version_id must be a str, a mapping {key_arn: version_id} or None")
        out: dict[Arn, str] = {}
        for arn_text, version in items:
            arn = Arn.parse(arn_text)
            if arn not in self._arns:
                raise ConfigurationError(f"key_version_id names {arn}, which is not one of the signer's keys")
            if not isinstance(version, str) or not version or any(c.isspace() for c in version):
                raise ConfigurationError("a key version ID must be a non-empty str without whitespace")
            out[arn] = version
        return out

    def __repr__(self) -> str:
        return f"KmsSigner({', '.join(self.key_arns)}, algorithm={self.algorithm})"

    def _state(self, arn: Arn, max_attempts: int | None) -> _KeyState:
        """The key's version, algorithm and (for SM2, or to choose the
        algorithm) public key: learnt once, then cached."""
        with self._lock:
            state = self._states.get(arn)
        if state is not None:
            return state
        version = self._versions.get(arn) or _newest_version(self.kms, arn, max_attempts)
        public_key = None
        if self.algorithm is None or self.algorithm is SignatureAlgorithm.SM2DSA:
            pem = self.kms.get_public_key(arn, version, max_attempts=max_attempts)
            public_key = _load_fetched_key(pem, arn, version)
        algorithm = self.algorithm
        if algorithm is None:
            assert public_key is not None
            algorithm = default_algorithm(public_key.key_spec)
        if public_key is not None:
            # Caught here rather than by KMS: a key that cannot use the algorithm.
            _sig.check_pair(public_key, algorithm.value)
        with self._lock:
            # Two threads may learn the same facts at once; either copy is right.
            return self._states.setdefault(arn, _KeyState(version, public_key, algorithm))

    def _sign_with(self, arn: Arn, data: bytes, digest: bool, max_attempts: int | None) -> SignResult:
        state = self._state(arn, max_attempts)
        algorithm = state.algorithm
        assert algorithm is not None
        if algorithm is SignatureAlgorithm.SM2DSA:
            assert state.public_key is not None
            if digest and len(self._arns) > 1:
                raise ConfigurationError(
                    "an SM2 digest SM3(Z || M) belongs to one public key: sign the message (digest=False) so "
                    "that each key gets its own digest, or use a signer with one key"
                )
            value = data if digest else _sig.message_digest(state.public_key, algorithm.value, data)
        else:
            value = data if digest else hashlib.sha256(data).digest()
        signature = self.kms.asymmetric_sign(arn, state.version_id, algorithm.value, value, max_attempts=max_attempts)
        return SignResult(signature, str(arn), state.version_id, algorithm, value)

    def sign(self, data: bytes, *, digest: bool = False) -> SignResult:
        """Sign ``data``: the message, or with ``digest=True`` the 32-byte
        digest itself (SHA-256(M), or SM3(Z || M) for SM2DSA, which binds it to
        one key's public key, so an SM2 signer with several keys refuses
        digests)."""
        if not isinstance(digest, bool):
            raise ConfigurationError("digest must be True or False")
        payload = _bytes(data, "data")
        if digest and len(payload) != _sig.DIGEST_LEN:
            raise ConfigurationError(f"with digest=True, data is a {_sig.DIGEST_LEN}-byte digest")
        errors: dict[Arn, KmsError] = {}
        last = len(self._arns) - 1
        # With another key to fall back on, a failing key gets one attempt
        # (fail over at once); if every key failed, those that failed with a
        # transient error get a second round with full retries.
        for position, arn in enumerate(self._arns):
            try:
                return self._sign_with(arn, payload, digest, 1 if position < last else None)
            except KmsError as e:
                errors[arn] = e
        for arn in self._arns[:-1]:
            if errors[arn].retryable:
                try:
                    return self._sign_with(arn, payload, digest, None)
                except KmsError as e:
                    errors[arn] = e
        details = "; ".join(f"{arn}: {err}" for arn, err in errors.items())
        raise NoUsableKeyError(
            f"could not sign with any of {len(errors)} key(s): {details}",
            errors=[(str(arn), err) for arn, err in errors.items()],
        )


class KmsVerifier:
    """Verifies signatures made by :class:`KmsSigner` (or any KMS key) locally,
    with public keys fetched by GetPublicKey once per key version and cached.

    ``verify(result)`` takes a :class:`SignResult`; ``verify_signature`` takes
    the parts. With ``use_kms=True`` the check is AsymmetricVerify instead (the
    digest is still computed here). Only keys given to the constructor are
    accepted: a signature that names another key is refused, not verified.
    """

    def __init__(self, *key_arns: str | Arn, kms: Kms | None = None) -> None:
        self._arns = _parse_arns(key_arns, "KmsVerifier")
        self.key_arns: tuple[str, ...] = tuple(str(a) for a in self._arns)
        self.kms = _default_kms(kms, ("asymmetric_verify", "get_public_key"))
        self._lock = threading.Lock()
        self._keys: dict[tuple[Arn, str], _sig.PublicKey] = {}
        _process.track(self)

    def _after_fork_in_child(self) -> None:
        # Public keys are public: the cache stays; the lock is replaced.
        self._lock = _process.new_lock()

    def __repr__(self) -> str:
        return f"KmsVerifier({', '.join(self.key_arns)})"

    def public_key(self, key_arn: str | Arn, key_version_id: str) -> _sig.PublicKey:
        """The (cached) public key of a version of one of the verifier's keys."""
        arn = Arn.parse(key_arn)
        if arn not in self._arns:
            raise ConfigurationError(f"{arn} is not one of this verifier's keys {list(self.key_arns)!r}")
        if not isinstance(key_version_id, str) or not key_version_id:
            raise ConfigurationError("key_version_id must be a non-empty str")
        with self._lock:
            key = self._keys.get((arn, key_version_id))
        if key is None:
            pem = self.kms.get_public_key(arn, key_version_id)
            key = _load_fetched_key(pem, arn, key_version_id)
            with self._lock:
                key = self._keys.setdefault((arn, key_version_id), key)
        return key

    def verify(
        self,
        result: SignResult,
        data: bytes,
        *,
        digest: bool = False,
        use_kms: bool = False,
        sm2_user_id: bytes = DEFAULT_SM2_USER_ID,
    ) -> bool:
        """Verify a :class:`SignResult` over ``data`` (as passed to ``sign``)."""
        if not isinstance(result, SignResult):
            raise ConfigurationError("result must be a SignResult (use verify_signature for the parts)")
        return self.verify_signature(
            result.key_arn,
            result.key_version_id,
            result.algorithm,
            data,
            result.signature,
            digest=digest,
            use_kms=use_kms,
            sm2_user_id=sm2_user_id,
        )

    def verify_signature(
        self,
        key_arn: str | Arn,
        key_version_id: str,
        algorithm: SignatureAlgorithm | str,
        data: bytes,
        signature: bytes,
        *,
        digest: bool = False,
        use_kms: bool = False,
        sm2_user_id: bytes = DEFAULT_SM2_USER_ID,
    ) -> bool:
        """Whether ``signature`` is key version ``key_version_id`` of
        ``key_arn``'s signature of ``data``: locally, or by AsymmetricVerify
        with ``use_kms=True``. False when it does not verify."""
        alg = _algorithm(algorithm)
        if not isinstance(use_kms, bool):
            raise ConfigurationError("use_kms must be True or False")
        key = self.public_key(key_arn, key_version_id)
        if not use_kms:
            return _verify_with(key, alg, data, signature, digest, sm2_user_id)
        _sig.check_pair(key, alg.value)
        payload = _bytes(data, "data")
        value = payload if digest else _sig.message_digest(key, alg.value, payload, sm2_user_id)
        if len(value) != _sig.DIGEST_LEN:
            raise ConfigurationError(f"with digest=True, data is a {_sig.DIGEST_LEN}-byte digest")
        signature_bytes = _bytes(signature, "signature")
        if not signature_bytes:
            return False
        return bool(self.kms.asymmetric_verify(Arn.parse(key_arn), key_version_id, alg.value, value, signature_bytes))
