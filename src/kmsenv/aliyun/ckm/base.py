"""``CryptoKeyManager``: what stands between the crypto client and the provider.

In kmsenv a crypto key manager turns the provider that does the work into the
one the engine uses, for one encrypt (whose plaintext size it is told) or one
decrypt.  The official ``get_encrypt_dataKey_material`` methods, which hand out
plaintext data keys, are deliberately not offered.
"""

from __future__ import annotations

import abc

from kmsenv.model import DataKeyProvider

__all__ = ["CryptoKeyManager"]


class CryptoKeyManager(abc.ABC):
    @abc.abstractmethod
    def for_encrypt(self, provider: DataKeyProvider, plaintext_size: int) -> DataKeyProvider: ...

    @abc.abstractmethod
    def for_decrypt(self, provider: DataKeyProvider) -> DataKeyProvider: ...
