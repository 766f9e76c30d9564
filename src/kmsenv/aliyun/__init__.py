"""Drop-in replacement for Alibaba's official Python Encryption SDK.

Switching is an import change::

    from kmsenv.aliyun import (AliyunConfig, AliyunCrypto, DefaultDataKeyProvider,
                               CachingCryptoKeyManager, LocalDataKeyMaterialCache)

The official module paths work too (``kmsenv.aliyun.client``, ``.kms``,
``.provider.default``, ``.ckm.cache``, ``.cache.local``, ``.model``).  Behind
them run kmsenv's engine, :class:`kmsenv.KmsKeyProvider` and :class:`kmsenv.Kms`,
without the official SDK's bugs (spec section 15); see docs/caching.md for the
cache.
"""

from .cache.local import LocalDataKeyMaterialCache
from .ckm import CachingCryptoKeyManager, CryptoKeyManager, DefaultCryptoKeyManager
from .client import AliyunCrypto
from .kms import AliyunConfig, BackoffStrategy, FullJitterBackoffStrategy
from .model import Algorithm, CipherBody, CipherHeader, CipherMaterial, EncryptedDataKey
from .provider.default import DefaultDataKeyProvider

__all__ = [
    "Algorithm",
    "AliyunConfig",
    "AliyunCrypto",
    "BackoffStrategy",
    "CachingCryptoKeyManager",
    "CipherBody",
    "CipherHeader",
    "CipherMaterial",
    "CryptoKeyManager",
    "DefaultCryptoKeyManager",
    "DefaultDataKeyProvider",
    "EncryptedDataKey",
    "FullJitterBackoffStrategy",
    "LocalDataKeyMaterialCache",
]
