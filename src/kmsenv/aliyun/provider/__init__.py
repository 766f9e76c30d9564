"""``aliyun_encryption_sdk.provider``: data key providers and the EDK record."""

from ..model import EncryptedDataKey
from .default import DefaultDataKeyProvider

__all__ = ["DefaultDataKeyProvider", "EncryptedDataKey"]
