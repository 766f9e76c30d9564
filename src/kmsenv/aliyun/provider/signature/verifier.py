"""``aliyun_encryption_sdk.provider.signature.verifier``: the verifiers.

* :class:`PublicKeyVerifier` (a PEM public key) and :class:`CertificateVerifier`
  (a PEM X.509 certificate) verify locally, with no KMS call, for every
  algorithm (the official ones only know RSA).
* :class:`KmsVerifier` asks KMS (AsymmetricVerify), as the official one does;
  :class:`~.base.KmsAsymmetricKeyProvider` uses it unless given another.

``verify_data(material)`` sets and returns ``material.verify_value``: False for a
signature that does not verify; malformed keys or arguments raise kmsenv's typed
errors.
"""

from __future__ import annotations

import abc
import threading
from typing import Any

from kmsenv import _process, signing
from kmsenv.arn import Arn
from kmsenv.exceptions import ConfigurationError

from ...model import SignatureAlgorithm, VerifyMaterial

__all__ = ["CertificateVerifier", "KmsVerifier", "PublicKeyVerifier", "Verifier"]

# A certificate names its key, not which RSA padding its owner signs with: the
# official SDK's choice (PKCS#1 v1.5) stays the default for RSA keys.
_DEFAULT_FOR_SPEC = {
    "RSA_2048": SignatureAlgorithm.RSA_PKCS1_SHA_256,
    "RSA_3072": SignatureAlgorithm.RSA_PKCS1_SHA_256,
    "EC_P256": SignatureAlgorithm.ECDSA_P256_SHA_256,
    "EC_P256K": SignatureAlgorithm.ECDSA_P256K_SHA_256,
    "EC_SM2": SignatureAlgorithm.SM2DSA,
}


def _algorithm(value: object) -> SignatureAlgorithm:
    if not isinstance(value, SignatureAlgorithm):
        raise ConfigurationError("signature_algorithm must be a kmsenv.aliyun.SignatureAlgorithm")
    return value


def _pem(value: object, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("ascii", "replace")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise ConfigurationError(f"{what} must be str or bytes, not {type(value).__name__}")


def _payload(material: VerifyMaterial) -> tuple[bytes, bool]:
    """The bytes to check and whether they are the digest."""
    if not isinstance(material, VerifyMaterial):
        raise ConfigurationError("verify_data takes a VerifyMaterial")
    if material.digest:
        return material.digest, True
    if material.message is None:
        raise ConfigurationError("a VerifyMaterial needs its message or its digest")
    return material.message, False


class Verifier(abc.ABC):
    """A signature check for one algorithm."""

    def __init__(self, signature_algorithm: SignatureAlgorithm, public_key: bytes | None = None) -> None:
        self.signature_algorithm = _algorithm(signature_algorithm)
        self.public_key = public_key

    def verify_data(self, verify_material: VerifyMaterial) -> VerifyMaterial:
        """Local verification with ``public_key`` (PEM)."""
        if self.public_key is None:
            raise ConfigurationError(f"{type(self).__name__} has no public key to verify with")
        data, is_digest = _payload(verify_material)
        verify_material.verify_value = signing.verify(
            self.public_key,
            self.signature_algorithm.kms_algorithm,
            data,
            verify_material.signed_value,
            digest=is_digest,
        )
        return verify_material

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.signature_algorithm.name})"


class PublicKeyVerifier(Verifier):
    """``PublicKeyVerifier(signature_algorithm, pem_public_key)``: the PEM that
    GetPublicKey returns (SubjectPublicKeyInfo)."""

    def __init__(self, signature_algorithm: SignatureAlgorithm, pem_public_key: str | bytes) -> None:
        pem = _pem(pem_public_key, "pem_public_key")
        alg = _algorithm(signature_algorithm)
        spec = signing.public_key_spec(pem)  # a malformed key fails here, not at the first verify
        if spec != alg.key_spec and not (spec.startswith("RSA_") and alg.key_spec.startswith("RSA_")):
            raise ConfigurationError(f"{alg.name} cannot verify with a {spec} public key")
        super().__init__(alg, pem)


class CertificateVerifier(Verifier):
    """``CertificateVerifier(pem_certificate, signature_algorithm=None)``.

    The algorithm follows the certificate's subject key: RSA keys
    RSA_PKCS1_SHA_256 (the official default; pass RSA_PSS_SHA_256 for PSS
    signatures), EC_P256 and EC_P256K keys ECDSA, SM2 keys SM2DSA. (The official
    verifier reads the issuer's signature algorithm instead, which says nothing
    about the subject's key.) The certificate's validity is not checked here.
    """

    def __init__(self, pem_certificate: str | bytes, signature_algorithm: SignatureAlgorithm | None = None) -> None:
        pem = _pem(pem_certificate, "pem_certificate")
        if b"-----BEGIN CERTIFICATE-----" not in pem:
            raise ConfigurationError("pem_certificate must be a PEM X.509 certificate")
        spec = signing.public_key_spec(pem)
        alg = _DEFAULT_FOR_SPEC.get(spec) if signature_algorithm is None else _algorithm(signature_algorithm)
        if alg is None:
            raise ConfigurationError(f"no signature algorithm for a {spec} certificate key")
        super().__init__(alg, pem)


class KmsVerifier(Verifier):
    """``KmsVerifier(key_arn, key_version_id, kms, signature_algorithm)``:
    AsymmetricVerify in KMS (the digest is computed here). ``kms`` is a
    :class:`kmsenv.Kms`, or None until ``AliyunCrypto.verify`` sets its own."""

    def __init__(self, key_arn: str, key_version_id: str, kms: Any, signature_algorithm: SignatureAlgorithm) -> None:
        if not isinstance(key_arn, str):
            raise ConfigurationError("key_arn must be a str")
        if not isinstance(key_version_id, str) or not key_version_id:
            raise ConfigurationError("key_version_id must be a non-empty str")
        self.key_arn = str(Arn.parse(key_arn.strip()))
        self.key_version_id = key_version_id
        self._lock = threading.Lock()
        self._verifier: signing.KmsVerifier | None = None
        self.kms = kms
        super().__init__(signature_algorithm)
        _process.track(self)

    def _after_fork_in_child(self) -> None:
        # The kmsenv verifier resets itself; only this lock may be stuck.
        self._lock = _process.new_lock()

    @property
    def kms(self) -> Any:
        return self._kms

    @kms.setter
    def kms(self, kms: Any) -> None:
        if kms is not None and not all(hasattr(kms, m) for m in ("asymmetric_verify", "get_public_key")):
            raise ConfigurationError("kms must be a kmsenv.Kms")
        with self._lock:
            self._kms = kms
            self._verifier = None

    def _kms_verifier(self) -> signing.KmsVerifier:
        with self._lock:
            if self._kms is None:
                raise ConfigurationError("KmsVerifier has no kms: pass one, or verify through AliyunCrypto.verify")
            if self._verifier is None:
                self._verifier = signing.KmsVerifier(self.key_arn, kms=self._kms)
            return self._verifier

    def verify_data(self, verify_material: VerifyMaterial) -> VerifyMaterial:
        data, is_digest = _payload(verify_material)
        verify_material.verify_value = self._kms_verifier().verify_signature(
            self.key_arn,
            self.key_version_id,
            self.signature_algorithm.kms_algorithm,
            data,
            verify_material.signed_value,
            digest=is_digest,
            use_kms=True,
        )
        return verify_material

    def __repr__(self) -> str:
        return f"KmsVerifier({self.key_arn!r}, {self.key_version_id!r}, {self.signature_algorithm.name})"
