"""``AliyunCrypto`` (``aliyun_encryption_sdk.client``) on kmsenv's engine.

``encrypt(provider, plain_text, encryption_context=None) -> (cipher_text, material)``
and ``decrypt(provider, cipher_text) -> (plain_text, material)`` as in the
official client; ``material`` is a :class:`~kmsenv.aliyun.model.CipherMaterial`
(no plaintext data key).  With a
:class:`~kmsenv.aliyun.provider.secret_manager.SecretManagerDataKeyProvider`
the message is the body alone and the header comes from the secret.  Errors are
kmsenv's typed errors.  Legacy CBC/CTR algorithms, whose bodies nothing
authenticates, need ``AliyunCrypto(config, allow_unauthenticated=True)`` for
encrypt and decrypt.

``sign(provider, content, content_type) -> bytes`` (the raw signature) and
``verify(provider, content, signed_value, content_type) -> bool`` take a
:class:`~kmsenv.aliyun.provider.signature.base.KmsAsymmetricKeyProvider` or (to
verify) a verifier of :mod:`kmsenv.aliyun.provider.signature.verifier`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Mapping

from kmsenv import _process, engine, secretmanager
from kmsenv.exceptions import ConfigurationError

from .ckm.base import CryptoKeyManager
from .ckm.default import DefaultCryptoKeyManager
from .kms import AliyunConfig
from .model import CipherMaterial, ContentType, SignatureMaterial, VerifyMaterial
from .provider.default import DefaultDataKeyProvider
from .provider.secret_manager import SecretManagerDataKeyProvider
from .provider.signature.base import KmsAsymmetricKeyProvider
from .provider.signature.verifier import KmsVerifier, Verifier

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


def _content(content: object, content_type: object) -> tuple[bytes, bool]:
    """The bytes and whether they are the digest (which must be 32 bytes)."""
    if not isinstance(content_type, ContentType):
        raise ConfigurationError("content_type must be kmsenv.aliyun.ContentType.MESSAGE or .DIGEST")
    if not isinstance(content, (bytes, bytearray, memoryview)):
        raise ConfigurationError(f"content must be bytes, not {type(content).__name__}")
    data = bytes(content)
    is_digest = content_type is ContentType.DIGEST
    if is_digest and len(data) != 32:
        raise ConfigurationError(f"a DIGEST content is the 32-byte digest KMS signs, not {len(data)} bytes")
    return data, is_digest


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
        if isinstance(key_provider, SecretManagerDataKeyProvider):
            sealed = secretmanager.encrypt_message(
                plain_text,
                key_provider.secret_provider(self.kms),
                encryption_context=ctx,
                algorithm=key_provider.algorithm,
                allow_unauthenticated=self.allow_unauthenticated,
            )
            return sealed.data, CipherMaterial.from_parts(sealed.header, secretmanager.parse_body(sealed.data))
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
        if isinstance(key_provider, SecretManagerDataKeyProvider):
            if not isinstance(cipher_text, (bytes, bytearray, memoryview)):
                raise ConfigurationError(f"cipher_text must be bytes, not {type(cipher_text).__name__}")
            body = secretmanager.parse_body(bytes(cipher_text))
            opened = secretmanager.decrypt_message(
                cipher_text, key_provider.secret_provider(self.kms), allow_unauthenticated=self.allow_unauthenticated
            )
            return opened.data, CipherMaterial.from_parts(opened.header, body)
        provider = self.crypto_key_manager.for_decrypt(key_provider.data_key_provider(self.kms))
        result = engine.decrypt(cipher_text, provider, allow_unauthenticated=self.allow_unauthenticated)
        return result.plaintext, CipherMaterial.from_message(cipher_text)

    def sign(self, sign_provider: KmsAsymmetricKeyProvider, content: bytes, content_type: ContentType) -> bytes:
        """The raw signature KMS makes of ``content`` (a message, or with
        ``ContentType.DIGEST`` its 32-byte digest)."""
        if not isinstance(sign_provider, KmsAsymmetricKeyProvider):
            raise ConfigurationError("sign_provider must be a kmsenv.aliyun KmsAsymmetricKeyProvider")
        data, is_digest = _content(content, content_type)
        if sign_provider.kms is None:
            sign_provider.kms = self.kms
        material = SignatureMaterial(
            sign_provider.signature_algorithm, message=None if is_digest else data, digest=data if is_digest else None
        )
        signed = sign_provider.sign_data(material).signed_value
        assert signed is not None
        return signed

    def verify(
        self,
        sign_provider: KmsAsymmetricKeyProvider | Verifier,
        content: bytes,
        signed_value: bytes,
        content_type: ContentType,
    ) -> bool:
        """Whether ``signed_value`` is a signature of ``content`` (a message,
        or its digest): through KMS (a provider, or a ``KmsVerifier``) or
        locally (``PublicKeyVerifier``, ``CertificateVerifier``)."""
        if not isinstance(sign_provider, (KmsAsymmetricKeyProvider, Verifier)):
            raise ConfigurationError("sign_provider must be a KmsAsymmetricKeyProvider or a kmsenv.aliyun Verifier")
        data, is_digest = _content(content, content_type)
        if not isinstance(signed_value, (bytes, bytearray, memoryview)):
            raise ConfigurationError(f"signed_value must be bytes, not {type(signed_value).__name__}")
        if isinstance(sign_provider, KmsAsymmetricKeyProvider):
            if sign_provider.kms is None:
                sign_provider.kms = self.kms
        elif isinstance(sign_provider, KmsVerifier) and sign_provider.kms is None:
            sign_provider.kms = self.kms
        algorithm = sign_provider.signature_algorithm
        material = VerifyMaterial(
            bytes(signed_value), algorithm, message=None if is_digest else data, digest=data if is_digest else None
        )
        return bool(sign_provider.verify_data(material).verify_value)

    def __repr__(self) -> str:
        return f"AliyunCrypto({self.config!r}, crypto_key_manager={self.crypto_key_manager!r})"
