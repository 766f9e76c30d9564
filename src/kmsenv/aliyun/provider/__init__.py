"""``aliyun_encryption_sdk.provider``: data key providers and the EDK record."""

from ..model import EncryptedDataKey
from .default import DefaultDataKeyProvider
from .secret_manager import SecretManagerDataKeyProvider

__all__ = ["DefaultDataKeyProvider", "EncryptedDataKey", "SecretManagerDataKeyProvider"]
