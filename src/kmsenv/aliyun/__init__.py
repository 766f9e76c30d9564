"""Drop-in replacement for Alibaba's official Python Encryption SDK.

Switching is an import change::

    from kmsenv.aliyun import (AliyunConfig, AliyunCrypto, DefaultDataKeyProvider,
                               CachingCryptoKeyManager, LocalDataKeyMaterialCache)

The official module paths work too (``kmsenv.aliyun.client``, ``.kms``,
``.provider.default``, ``.provider.secret_manager``, ``.provider.signature.base``,
``.provider.signature.verifier``, ``.ckm.cache``, ``.cache.local``, ``.model``),
with signing (``SignatureAlgorithm``, ``ContentType``,
``KmsAsymmetricKeyProvider``, ``AliyunCrypto.sign``/``verify``) and
Secrets-Manager data keys (``SecretManagerDataKeyProvider``).  Behind
them run kmsenv's engine, :class:`kmsenv.KmsKeyProvider` and :class:`kmsenv.Kms`,
without the official SDK's bugs (spec section 15); see docs/caching.md for the
cache.
"""

from .cache.local import LocalDataKeyMaterialCache
from .ckm import CachingCryptoKeyManager, CryptoKeyManager, DefaultCryptoKeyManager
from .client import AliyunCrypto
from .kms import AliyunConfig, BackoffStrategy, FullJitterBackoffStrategy
from .model import (
    Algorithm,
    CipherBody,
    CipherHeader,
    CipherMaterial,
    ContentType,
    EncryptedDataKey,
    SignatureAlgorithm,
    SignatureMaterial,
    VerifyMaterial,
)
from .provider.default import DefaultDataKeyProvider
from .provider.secret_manager import SecretManagerDataKeyProvider
from .provider.signature.base import KmsAsymmetricKeyProvider
from .provider.signature.verifier import CertificateVerifier, KmsVerifier, PublicKeyVerifier, Verifier

__all__ = [
    "Algorithm",
    "AliyunConfig",
    "AliyunCrypto",
    "BackoffStrategy",
    "CachingCryptoKeyManager",
    "CipherBody",
    "CipherHeader",
    "CipherMaterial",
    "CertificateVerifier",
    "ContentType",
    "CryptoKeyManager",
    "DefaultCryptoKeyManager",
    "DefaultDataKeyProvider",
    "EncryptedDataKey",
    "FullJitterBackoffStrategy",
    "KmsAsymmetricKeyProvider",
    "KmsVerifier",
    "LocalDataKeyMaterialCache",
    "PublicKeyVerifier",
    "SecretManagerDataKeyProvider",
    "SignatureAlgorithm",
    "SignatureMaterial",
    "Verifier",
    "VerifyMaterial",
]
