"""``aliyun_encryption_sdk.provider.signature.base``: ``KmsAsymmetricKeyProvider``.

``KmsAsymmetricKeyProvider(key, key_version_id, signature_algorithm, kms=None,
verifier=None)`` as in the official SDK. Signing runs through
:class:`kmsenv.signing.KmsSigner` (the digest is computed here, KMS signs it;
SM2DSA's SM3(Z || M) with the public key fetched once); verification through
``verifier``, by default a :class:`~.verifier.KmsVerifier` (AsymmetricVerify),
as in the official SDK. ``AliyunCrypto.sign``/``verify`` give it the crypto
client's :class:`kmsenv.Kms` unless it has its own.
"""

from __future__ import annotations

import threading
from typing import Any

from kmsenv import _process, signing
from kmsenv.arn import Arn
from kmsenv.exceptions import ConfigurationError

from ...model import SignatureAlgorithm, SignatureMaterial, VerifyMaterial
from .verifier import KmsVerifier, Verifier

__all__ = ["KmsAsymmetricKeyProvider"]

_KMS_METHODS = ("asymmetric_sign", "asymmetric_verify", "get_public_key", "list_key_versions")


class KmsAsymmetricKeyProvider:
    """Signs with one version of one KMS asymmetric key."""

    def __init__(
        self,
        key: str,
        key_version_id: str,
        signature_algorithm: SignatureAlgorithm,
        kms: Any = None,
        verifier: Verifier | None = None,
    ) -> None:
        if not isinstance(key, str):
            raise ConfigurationError(f"key must be a CMK ARN str, not {type(key).__name__}")
        if not isinstance(key_version_id, str) or not key_version_id:
            raise ConfigurationError("key_version_id must be a non-empty str")
        if not isinstance(signature_algorithm, SignatureAlgorithm):
            raise ConfigurationError("signature_algorithm must be a kmsenv.aliyun.SignatureAlgorithm")
        if verifier is not None and not isinstance(verifier, Verifier):
            raise ConfigurationError("verifier must be a kmsenv.aliyun Verifier")
        self.key_arn = str(Arn.parse(key.strip()))
        self.key_version_id = key_version_id
        self.signature_algorithm = signature_algorithm
        self._lock = threading.Lock()
        self._kms: Any = None
        self._signer: signing.KmsSigner | None = None
        self._verifier: Verifier = (
            verifier if verifier is not None else KmsVerifier(self.key_arn, key_version_id, None, signature_algorithm)
        )
        if kms is not None:
            self.kms = kms
        _process.track(self)

    def _after_fork_in_child(self) -> None:
        # The signer resets itself; only this lock may be stuck.
        self._lock = _process.new_lock()

    @property
    def kms(self) -> Any:
        return self._kms

    @kms.setter
    def kms(self, kms: Any) -> None:
        """Set once, as in the official SDK: a provider keeps the first KMS it gets."""
        if not all(hasattr(kms, m) for m in _KMS_METHODS):
            raise ConfigurationError("kms must be a kmsenv.Kms")
        with self._lock:
            if self._kms is not None:
                return
            self._kms = kms
        if isinstance(self._verifier, KmsVerifier) and self._verifier.kms is None:
            self._verifier.kms = kms

    @property
    def verifier(self) -> Verifier:
        return self._verifier

    def _kms_signer(self) -> signing.KmsSigner:
        with self._lock:
            if self._kms is None:
                raise ConfigurationError(
                    "KmsAsymmetricKeyProvider has no kms: pass one, or sign through AliyunCrypto.sign"
                )
            if self._signer is None:
                self._signer = signing.KmsSigner(
                    self.key_arn,
                    kms=self._kms,
                    key_version_id=self.key_version_id,
                    algorithm=self.signature_algorithm.kms_algorithm,
                )
            return self._signer

    def sign_data(self, signature_material: SignatureMaterial) -> SignatureMaterial:
        """Sign the material's digest (if set) or message; ``signed_value``
        becomes the raw signature."""
        if not isinstance(signature_material, SignatureMaterial):
            raise ConfigurationError("sign_data takes a SignatureMaterial")
        if signature_material.digest:
            data, is_digest = signature_material.digest, True
        elif signature_material.message is not None:
            data, is_digest = signature_material.message, False
        else:
            raise ConfigurationError("a SignatureMaterial needs its message or its digest")
        signature_material.signed_value = self._kms_signer().sign(data, digest=is_digest).signature
        return signature_material

    def verify_data(self, verify_material: VerifyMaterial) -> VerifyMaterial:
        return self._verifier.verify_data(verify_material)

    def __repr__(self) -> str:
        return f"KmsAsymmetricKeyProvider({self.key_arn!r}, {self.key_version_id!r}, {self.signature_algorithm.name})"
