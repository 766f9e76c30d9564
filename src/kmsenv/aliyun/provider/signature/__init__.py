"""``aliyun_encryption_sdk.provider.signature``: signing with KMS asymmetric keys.

:class:`~.base.KmsAsymmetricKeyProvider` signs through KMS (kmsenv's
:class:`kmsenv.signing.KmsSigner`); the verifiers of :mod:`.verifier` check
signatures through KMS or locally. Unlike the official SDK every algorithm
verifies locally (ECDSA and SM2 too), RSA-PSS insists on KMS's 32-byte salt,
and a certificate's verification algorithm comes from its subject key, not
from the algorithm its issuer signed it with (docs/signing.md).
"""

from __future__ import annotations

import hashlib

from kmsenv.exceptions import ConfigurationError

from ...model import SignatureAlgorithm

__all__ = ["get_digest"]


def get_digest(content: bytes, algorithm: SignatureAlgorithm) -> bytes:
    """SHA-256 of ``content`` for the RSA and ECDSA algorithms. An SM2 digest
    needs the signer's public key (SM3(Z || M)): use
    :func:`kmsenv.signing.message_digest` for it."""
    if not isinstance(algorithm, SignatureAlgorithm):
        raise ConfigurationError("algorithm must be a kmsenv.aliyun.SignatureAlgorithm")
    if algorithm is SignatureAlgorithm.SM2DSA:
        raise ConfigurationError(
            "an SM2DSA digest is SM3(Z || M), Z from the public key: use kmsenv.signing.message_digest(public_key, ...)"
        )
    if not isinstance(content, (bytes, bytearray, memoryview)):
        raise ConfigurationError(f"content must be bytes, not {type(content).__name__}")
    return hashlib.sha256(content).digest()
