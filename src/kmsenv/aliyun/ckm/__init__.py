"""``aliyun_encryption_sdk.ckm``: crypto key managers."""

from .base import CryptoKeyManager
from .cache import CachingCryptoKeyManager
from ..model import SignatureMaterial, VerifyMaterial
from .default import DefaultCryptoKeyManager

__all__ = [
    "CryptoKeyManager",
    "DefaultCryptoKeyManager",
    "CachingCryptoKeyManager",
    "SignatureMaterial",
    "VerifyMaterial",
]
