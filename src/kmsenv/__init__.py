"""kmsenv: fast multi-region envelope encryption for Alibaba Cloud KMS.

Messages are byte-compatible with Alibaba's official Encryption SDKs.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .algorithms import Algorithm
from .cache import CacheStats, CachingProvider, DataKeyCache
from .crypto import backend_info, backend_name, native_available
from .engine import (
    DecryptResult,
    EncryptResult,
    decrypt,
    decrypt_many,
    encrypt,
    encrypt_many,
    parse_header,
)
from .exceptions import (
    AuthenticationError,
    ConfigurationError,
    EncryptionContextMismatchError,
    HeaderAuthenticationError,
    InputChangedError,
    KmsEnvError,
    KmsError,
    MessageFormatError,
    NoCredentialsError,
    NoUsableKeyError,
    SecretExistsError,
    SecretNotFoundError,
    UnauthenticatedAlgorithmError,
    UnsupportedAlgorithmError,
    WipedKeyError,
)
from .jobkey import JobKey, WorkerSpec
from .keyheader import DictKeyHeaderStore, KeyHeader, KeyHeaderStore, SqliteKeyHeaderStore
from .kmsspec import KmsSpec
from .message.codec import MessageHeader
from .model import DataKey, DataKeyProvider, EncryptedDataKey
from .stream import FramedHeader, StreamResult, decrypt_stream, encrypt_stream, open

__all__ = [
    "__version__",
    "Algorithm",
    "AuthenticationError",
    "CacheStats",
    "CachingProvider",
    "ConfigurationError",
    "DataKey",
    "DataKeyCache",
    "DataKeyProvider",
    "DecryptResult",
    "DictKeyHeaderStore",
    "EncryptResult",
    "EncryptedDataKey",
    "EncryptionContextMismatchError",
    "FramedHeader",
    "HeaderAuthenticationError",
    "InputChangedError",
    "JobKey",
    "KeyHeader",
    "KeyHeaderStore",
    "Kms",
    "KmsEnvError",
    "KmsError",
    "KmsKeyProvider",
    "KmsSpec",
    "MessageFormatError",
    "MessageHeader",
    "NoCredentialsError",
    "NoUsableKeyError",
    "SecretExistsError",
    "SecretHeaderMismatchError",
    "SecretNotFoundError",
    "SecretManagerDataKeyProvider",
    "SignatureAlgorithm",
    "SqliteKeyHeaderStore",
    "StreamResult",
    "UnauthenticatedAlgorithmError",
    "UnsupportedAlgorithmError",
    "WipedKeyError",
    "WorkerSpec",
    "backend_info",
    "backend_name",
    "decrypt",
    "decrypt_many",
    "decrypt_stream",
    "encrypt",
    "encrypt_many",
    "encrypt_stream",
    "native_available",
    "open",
    "parse_header",
]

from .crypto import check_at_import as _check_at_import

_check_at_import()

# The KMS side pulls in the Alibaba Cloud SDK, and signing `cryptography`'s
# asymmetric code; load them only when asked for (kmsenv.signing included).
_LAZY = {
    "Kms": ("kms", "Kms"),
    "KmsKeyProvider": ("providers", "KmsKeyProvider"),
    "SignatureAlgorithm": ("signing", "SignatureAlgorithm"),
    "signing": ("signing", None),
    "SecretManagerDataKeyProvider": ("secretmanager", "SecretManagerDataKeyProvider"),
    "SecretHeaderMismatchError": ("secretmanager", "SecretHeaderMismatchError"),
    "secretmanager": ("secretmanager", None),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        loaded = importlib.import_module(f".{module}", __name__)
        value = loaded if attr is None else getattr(loaded, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kmsenv' has no attribute {name!r}")
