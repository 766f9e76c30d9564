"""``AliyunCrypto`` (``aliyun_encryption_sdk.client``) on kmsenv's engine.

``encrypt(provider, plain_text, encryption_context=None) -> (cipher_text, material)``
and ``decrypt(provider, cipher_text) -> (plain_text, material)`` as in the
official client; ``material`` is a :class:`~kmsenv.aliyun.model.CipherMaterial`
(no plaintext data key).  Errors are kmsenv's typed errors.  Legacy CBC/CTR
algorithms, whose bodies nothing authenticates, need
``AliyunCrypto(config, allow_unauthenticated=True)`` for encrypt and decrypt.
Sign/verify are not offered.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Mapping

from kmsenv import _process, engine
from kmsenv.exceptions import ConfigurationError

from .ckm.base import CryptoKeyManager
from .ckm.default import DefaultCryptoKeyManager
from .kms import AliyunConfig
from .model import CipherMaterial
from .provider.default import DefaultDataKeyProvider

if TYPE_CHECKING:
    from kmsenv.kms import Kms

__all__ = ["AliyunCrypto"]


def _text(value: object, what: str) -> str:
    # The official SDK accepts UTF-8 bytes in the context as well as str.
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigurationError(f"encryption context {what} is not valid UTF-8") from None
    if not isinstance(value, str):
        raise ConfigurationError(f"encryption context {what}s must be str (or UTF-8 bytes)")
    return value


def _context(encryption_context: object) -> dict[str, str]:
    if encryption_context is None:
        return {}
    if not isinstance(encryption_context, Mapping):
        raise ConfigurationError("encryption_context must be a dict of str to str")
    return {_text(k, "key"): _text(v, "value") for k, v in encryption_context.items()}


def _provider(key_provider: object) -> DefaultDataKeyProvider:
    if not isinstance(key_provider, DefaultDataKeyProvider):
        raise ConfigurationError("key_provider must be a kmsenv.aliyun.DefaultDataKeyProvider")
    return key_provider


class AliyunCrypto:
    """``AliyunCrypto(config, crypto_key_manager=None)``; ``crypto_key_manager``
    may also be set later, as in the official samples."""

    def __init__(
        self,
        config: AliyunConfig,
        crypto_key_manager: CryptoKeyManager | None = None,
        *,
        allow_unauthenticated: bool = False,
    ) -> None:
        if not isinstance(config, AliyunConfig):
            raise ConfigurationError("config must be a kmsenv.aliyun.AliyunConfig")
        self.config = config
        self.crypto_key_manager = crypto_key_manager if crypto_key_manager is not None else DefaultCryptoKeyManager()
        self.allow_unauthenticated = bool(allow_unauthenticated)
        self._kms: Kms | None = None
        self._kms_lock = threading.Lock()
        _process.track(self)

    def _after_fork_in_child(self) -> None:
        # The Kms itself resets its clients; only this lock may be stuck.
        self._kms_lock = _process.new_lock()

    @property
    def crypto_key_manager(self) -> CryptoKeyManager:
        return self._ckm

    @crypto_key_manager.setter
    def crypto_key_manager(self, value: CryptoKeyManager) -> None:
        if not isinstance(value, CryptoKeyManager):
            raise ConfigurationError("crypto_key_manager must be a DefaultCryptoKeyManager or CachingCryptoKeyManager")
        self._ckm = value

    @property
    def kms(self) -> Kms:
        """The :class:`kmsenv.Kms` built from the config (once, then shared)."""
        if self._kms is None:
            with self._kms_lock:
                if self._kms is None:
                    self._kms = self.config.make_kms()
        return self._kms

    def encrypt(
        self,
        key_provider: DefaultDataKeyProvider,
        plain_text: bytes,
        encryption_context: Mapping[str, str] | None = None,
    ) -> tuple[bytes, CipherMaterial]:
        key_provider = _provider(key_provider)
        ctx = _context(encryption_context)
        if not isinstance(plain_text, (bytes, bytearray, memoryview)):
            raise ConfigurationError(f"plain_text must be bytes, not {type(plain_text).__name__}")
        size = memoryview(plain_text).nbytes
        provider = self.crypto_key_manager.for_encrypt(key_provider.data_key_provider(self.kms), size)
        result = engine.encrypt(
            plain_text,
            provider,
            encryption_context=ctx,
            algorithm=key_provider.algorithm,
            allow_unauthenticated=self.allow_unauthenticated,
        )
        return result.ciphertext, CipherMaterial.from_message(result.ciphertext)

    def decrypt(self, key_provider: DefaultDataKeyProvider, cipher_text: bytes) -> tuple[bytes, CipherMaterial]:
        key_provider = _provider(key_provider)
        provider = self.crypto_key_manager.for_decrypt(key_provider.data_key_provider(self.kms))
        result = engine.decrypt(cipher_text, provider, allow_unauthenticated=self.allow_unauthenticated)
        return result.plaintext, CipherMaterial.from_message(cipher_text)

    def sign(self, *args: Any, **kwargs: Any) -> Any:
        raise ConfigurationError("kmsenv.aliyun does not offer sign/verify; use KMS AsymmetricSign directly")

    verify = sign

    def __repr__(self) -> str:
        return f"AliyunCrypto({self.config!r}, crypto_key_manager={self.crypto_key_manager!r})"
