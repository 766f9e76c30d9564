"""``DefaultCryptoKeyManager``: every message gets a new data key from KMS."""

from __future__ import annotations

from kmsenv.model import DataKeyProvider

from .base import CryptoKeyManager

__all__ = ["DefaultCryptoKeyManager"]


class DefaultCryptoKeyManager(CryptoKeyManager):
    def for_encrypt(self, provider: DataKeyProvider, plaintext_size: int) -> DataKeyProvider:
        return provider

    def for_decrypt(self, provider: DataKeyProvider) -> DataKeyProvider:
        return provider

    def __repr__(self) -> str:
        return "DefaultCryptoKeyManager()"
