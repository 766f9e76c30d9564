"""``aliyun_encryption_sdk.provider.secret_manager``: ``SecretManagerDataKeyProvider``.

``SecretManagerDataKeyProvider(key_arn, data_key_name, kms=None,
format_handle=None, algorithm=AES_GCM_NOPADDING_256, keys=None)`` as in the
official SDK: the data key's header lives in the Secrets Manager secret
``data_key_name`` (created on the first encrypt, base64 ``text``, with
``key_arn``'s key as the secret's CMK) and ``AliyunCrypto.encrypt`` returns only
the message body. The work is done by :class:`kmsenv.SecretManagerDataKeyProvider`
over a :class:`kmsenv.KmsKeyProvider` of this provider's CMKs, so
``add_multi_cmk_id`` makes the stored header multi-region.

Unlike the official provider: an encrypt whose context or algorithm differs from
the stored header's is refused (:class:`kmsenv.SecretHeaderMismatchError`; the
official SDK silently uses the stored ones), bytes after the body are refused,
and the verified header and data key are cached per process (a crypto key
manager's cache is not used with this provider: the secret is the cache).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from kmsenv import _process, secretmanager
from kmsenv.exceptions import ConfigurationError

from ..model import Algorithm
from .default import DefaultDataKeyProvider

__all__ = ["SecretManagerDataKeyProvider"]


class SecretManagerDataKeyProvider(DefaultDataKeyProvider):
    def __init__(
        self,
        key_arn: str,
        data_key_name: str,
        kms: Any = None,
        format_handle: Any = None,
        algorithm: Algorithm = Algorithm.AES_GCM_NOPADDING_256,
        keys: Iterable[str] | None = None,
    ) -> None:
        if not isinstance(data_key_name, str) or not data_key_name or data_key_name != data_key_name.strip():
            raise ConfigurationError("data_key_name must be a non-empty str without surrounding whitespace")
        super().__init__(key_arn, kms, format_handle, algorithm, keys)
        self.data_key_name = data_key_name
        self._secret_lock = threading.Lock()
        self._secret: tuple[Any, tuple[str, ...], secretmanager.SecretManagerDataKeyProvider] | None = None
        _process.track(self)

    def _after_fork_in_child(self) -> None:
        # The kmsenv provider wipes its own cache; only this lock may be stuck.
        self._secret_lock = _process.new_lock()

    def secret_provider(self, kms: Any) -> secretmanager.SecretManagerDataKeyProvider:
        """The :class:`kmsenv.SecretManagerDataKeyProvider` doing the work (one
        per KMS client and CMK list, so its cache lasts across calls)."""
        chosen = self.kms if self.kms is not None else kms
        with self._secret_lock:
            held = self._secret
            if held is not None and held[0] is chosen and held[1] == self.key_arns:
                return held[2]
            provider = secretmanager.SecretManagerDataKeyProvider(
                self.data_key_provider(chosen), self.data_key_name, algorithm=self.algorithm
            )
            self._secret = (chosen, self.key_arns, provider)
        if held is not None:
            held[2].clear_cache()  # its data keys are wiped, not left to the collector
        return provider

    def __repr__(self) -> str:
        return (
            f"SecretManagerDataKeyProvider({self.key_arn!r}, {self.data_key_name!r}, "
            f"algorithm={self.algorithm.name}, keys={list(self.key_arns[1:])!r})"
        )
