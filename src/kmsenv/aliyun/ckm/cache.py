"""``CachingCryptoKeyManager`` (``aliyun_encryption_sdk.ckm.cache``) on kmsenv's cache.

Same constructor and settable limits as the official one (seconds, bytes,
messages; defaults 60 s and 2**63-1), but backed by :class:`kmsenv.CachingProvider`,
so entries are keyed by the provider's CMKs as well as the algorithm and the
length-prefixed context (spec section 15 item 9), no key is reused for more
than 2**28 messages, and evicted keys are wiped.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from kmsenv.cache import CachingProvider
from kmsenv.exceptions import ConfigurationError
from kmsenv.model import DataKey, DataKeyProvider, EncryptedDataKey

from ..cache.local import LocalDataKeyMaterialCache
from .base import CryptoKeyManager

__all__ = ["CachingCryptoKeyManager", "MAX_TIME", "MAX_BYTE", "MAX_MESSAGE"]

MAX_TIME = 60
MAX_BYTE = 2**63 - 1
MAX_MESSAGE = 2**63 - 1


def _non_negative_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{name} must be an int >= 0")
    return value


class _SizedProvider:
    """Passes one message's plaintext size to the caching provider (the engine's
    provider protocol does not carry it)."""

    def __init__(self, caching: CachingProvider, size: int):
        self._caching = caching
        self._size = size
        self.algorithm = caching.algorithm

    def generate_data_key(self, algorithm: Any, encryption_context: dict[str, str]) -> DataKey:
        return self._caching.generate_data_key(algorithm, encryption_context, plaintext_size=self._size)

    def decrypt_data_key(
        self, encrypted_data_keys: Sequence[EncryptedDataKey], algorithm: Any, encryption_context: dict[str, str]
    ) -> bytearray:
        return self._caching.decrypt_data_key(encrypted_data_keys, algorithm, encryption_context)


class CachingCryptoKeyManager(CryptoKeyManager):
    """``CachingCryptoKeyManager(cache, max_survival_time=60, max_encryption_bytes=2**63-1, max_encryption_messages=2**63-1)``.

    Set on a client as the official samples do:
    ``client.crypto_key_manager = CachingCryptoKeyManager(LocalDataKeyMaterialCache(), 10)``;
    the limits may be changed later (``ckm.max_encryption_messages = 10``) and
    apply from the next message on.
    """

    def __init__(
        self,
        cache: LocalDataKeyMaterialCache,
        max_survival_time: float = MAX_TIME,
        max_encryption_bytes: int = MAX_BYTE,
        max_encryption_messages: int = MAX_MESSAGE,
    ) -> None:
        if not isinstance(cache, LocalDataKeyMaterialCache):
            raise ConfigurationError("cache must be a LocalDataKeyMaterialCache")
        self.cache = cache
        self.max_survival_time = max_survival_time
        self.max_encryption_bytes = max_encryption_bytes
        self.max_encryption_messages = max_encryption_messages

    @property
    def max_survival_time(self) -> float:
        return self._max_survival_time

    @max_survival_time.setter
    def max_survival_time(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
            raise ConfigurationError("max_survival_time must be a number of seconds >= 0")
        self._max_survival_time = value

    @property
    def max_encryption_bytes(self) -> int:
        return self._max_encryption_bytes

    @max_encryption_bytes.setter
    def max_encryption_bytes(self, value: int) -> None:
        self._max_encryption_bytes = _non_negative_int(value, "max_encryption_bytes")

    @property
    def max_encryption_messages(self) -> int:
        return self._max_encryption_messages

    @max_encryption_messages.setter
    def max_encryption_messages(self, value: int) -> None:
        self._max_encryption_messages = _non_negative_int(value, "max_encryption_messages")

    def _caching(self, provider: DataKeyProvider) -> CachingProvider:
        return CachingProvider(
            provider,
            self.cache.data_key_cache,
            max_age=self.max_survival_time,
            max_messages=self.max_encryption_messages,
            max_bytes=self.max_encryption_bytes,
        )

    def for_encrypt(self, provider: DataKeyProvider, plaintext_size: int) -> DataKeyProvider:
        return _SizedProvider(self._caching(provider), plaintext_size)

    def for_decrypt(self, provider: DataKeyProvider) -> DataKeyProvider:
        return self._caching(provider)

    def __repr__(self) -> str:
        return (
            f"CachingCryptoKeyManager({self.cache!r}, max_survival_time={self.max_survival_time}, "
            f"max_encryption_bytes={self.max_encryption_bytes}, "
            f"max_encryption_messages={self.max_encryption_messages})"
        )
