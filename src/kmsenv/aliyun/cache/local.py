"""``LocalDataKeyMaterialCache`` (``aliyun_encryption_sdk.cache.local``).

An in-process LRU of data keys: a :class:`kmsenv.DataKeyCache` of the given
capacity.  Its limits come from the :class:`CachingCryptoKeyManager` using it.
An invalid capacity is an error here, where the official cache silently used 10.
"""

from __future__ import annotations

import time
from typing import Callable

from kmsenv.cache import CacheStats, DataKeyCache

__all__ = ["LocalDataKeyMaterialCache", "DEFAULT_CAPACITY"]

DEFAULT_CAPACITY = 10


class LocalDataKeyMaterialCache:
    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, clock: Callable[[], float] = time.monotonic) -> None:
        # Limits are always given per use by the crypto key manager.
        self.data_key_cache = DataKeyCache(capacity=capacity, max_age=0, clock=clock)

    @property
    def capacity(self) -> int:
        return self.data_key_cache.capacity

    def stats(self) -> CacheStats:
        return self.data_key_cache.stats()

    def clear(self) -> None:
        """Drop and wipe every cached key."""
        self.data_key_cache.clear()

    def __len__(self) -> int:
        return len(self.data_key_cache)

    def __repr__(self) -> str:
        return f"LocalDataKeyMaterialCache(capacity={self.capacity}, entries={len(self)})"
