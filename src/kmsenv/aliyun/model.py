"""The official SDK's message records (``aliyun_encryption_sdk.model``), read-only.

``AliyunCrypto.encrypt`` and ``decrypt`` return a :class:`CipherMaterial` as the
official client does: the header (algorithm, encryption context, encrypted data
keys, IV, tag) and the body.  Like the official one it never holds the plaintext
data key.  ``Algorithm`` is kmsenv's enum: same member names as the official
one, but an ``IntEnum`` whose value is the algorithm ID (``int(alg)`` where the
official code reads ``alg.algorithm_id``).
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

from kmsenv.algorithms import Algorithm
from kmsenv.message.codec import MessageBody, MessageHeader, context_bytes, decode_message
from kmsenv.signing import SignatureAlgorithm as KmsSignatureAlgorithm

__all__ = [
    "Algorithm",
    "EncryptedDataKey",
    "CipherHeader",
    "CipherBody",
    "CipherMaterial",
    "ContentType",
    "SignatureAlgorithm",
    "SignatureMaterial",
    "VerifyMaterial",
]

_u32 = struct.Struct(">I").pack


@dataclass(frozen=True)
class EncryptedDataKey:
    """As in the official SDK: the CMK ARN and the KMS ``CiphertextBlob`` text, both bytes."""

    key_arn: bytes
    encrypted_data_key: bytes

    def serialize(self) -> bytes:
        """The official authenticated-fields form: lengths (u32 big-endian) and bytes."""
        return _u32(len(self.key_arn)) + self.key_arn + _u32(len(self.encrypted_data_key)) + self.encrypted_data_key

    def __repr__(self) -> str:
        return f"EncryptedDataKey(key_arn={self.key_arn!r}, encrypted_data_key=<{len(self.encrypted_data_key)} bytes>)"


@dataclass(frozen=True)
class CipherHeader:
    algorithm: Algorithm
    encryption_context: Mapping[str, str]
    encrypted_data_keys: frozenset[EncryptedDataKey]
    version: int
    header_iv: bytes
    header_auth_tag: bytes

    @property
    def encryption_context_bytes(self) -> bytes:
        return context_bytes(self.encryption_context)


@dataclass(frozen=True)
class CipherBody:
    iv: bytes
    cipher_text: bytes
    auth_tag: bytes

    def __repr__(self) -> str:
        return f"CipherBody(iv=<{len(self.iv)}>, cipher_text=<{len(self.cipher_text)} bytes>, auth_tag=<{len(self.auth_tag)}>)"


@dataclass(frozen=True)
class CipherMaterial:
    cipher_header: CipherHeader
    cipher_body: CipherBody

    # Shortcuts for the fields callers look at most.
    @property
    def algorithm(self) -> Algorithm:
        return self.cipher_header.algorithm

    @property
    def encryption_context(self) -> Mapping[str, str]:
        return self.cipher_header.encryption_context

    @property
    def encrypted_data_keys(self) -> frozenset[EncryptedDataKey]:
        return self.cipher_header.encrypted_data_keys

    @classmethod
    def from_message(cls, message: bytes | bytearray | memoryview, max_encrypted_data_keys: int = 16) -> CipherMaterial:
        header, body = decode_message(message, max_encrypted_data_keys)
        return cls.from_parts(header, body)

    @classmethod
    def from_parts(cls, header: MessageHeader, body: MessageBody) -> CipherMaterial:
        """The material of a parsed header and body (a Secrets-Manager message's
        header comes from the secret, its body from the message)."""
        edks = frozenset(
            EncryptedDataKey(e.key_arn.encode("utf-8"), base64.b64encode(e.ciphertext_blob))
            for e in header.encrypted_data_keys
        )
        return cls(
            CipherHeader(
                header.algorithm,
                dict(header.encryption_context),
                edks,
                header.version,
                header.header_iv,
                header.header_auth_tag,
            ),
            CipherBody(body.iv, body.ciphertext, body.auth_tag),
        )


class SignatureAlgorithm(Enum):
    """The official SDK's signature algorithms: ``key_spec``, ``algorithm_name``
    (KMS's name) and ``digest_algorithm`` (a ``cryptography`` hash class), as
    there. ``SM2DSA`` (EC_SM2 keys, SM3 over Z || M) is a kmsenv addition.
    ``kms_algorithm`` is the :class:`kmsenv.SignatureAlgorithm` it maps to."""

    RSA_PSS_SHA_256 = ("RSA_2048", "RSA_PSS_SHA_256")
    RSA_PKCS1_SHA_256 = ("RSA_2048", "RSA_PKCS1_SHA_256")
    ECDSA_P256_SHA_256 = ("EC_P256", "ECDSA_SHA_256")
    ECDSA_P256K_SHA_256 = ("EC_P256K", "ECDSA_SHA_256")
    SM2DSA = ("EC_SM2", "SM2DSA")

    def __init__(self, key_spec: str, algorithm_name: str) -> None:
        self.key_spec = key_spec
        self.algorithm_name = algorithm_name

    @property
    def digest_algorithm(self) -> Any:
        from cryptography.hazmat.primitives import hashes

        return hashes.SM3 if self is SignatureAlgorithm.SM2DSA else hashes.SHA256

    @property
    def kms_algorithm(self) -> KmsSignatureAlgorithm:
        return KmsSignatureAlgorithm(self.algorithm_name)


class ContentType(Enum):
    """What ``AliyunCrypto.sign``/``verify`` are given: the message itself, or
    the 32-byte digest KMS signs (SHA-256(M), or SM3(Z || M) for SM2DSA)."""

    MESSAGE = 0
    DIGEST = 1


@dataclass
class SignatureMaterial:
    """The official SDK's signing record. ``signed_value`` is the raw
    signature here (the official provider leaves it base64-encoded)."""

    signature_algorithm: SignatureAlgorithm
    message: bytes | None = None
    digest: bytes | None = None
    signed_value: bytes | None = field(default=None, repr=False)


@dataclass
class VerifyMaterial:
    """The official SDK's verification record; ``verify_value`` is the result."""

    signed_value: bytes = field(repr=False)
    signature_algorithm: SignatureAlgorithm | None
    message: bytes | None = None
    digest: bytes | None = None
    verify_value: bool | None = None
