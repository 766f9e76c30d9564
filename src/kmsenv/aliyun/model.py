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
from dataclasses import dataclass
from typing import Mapping

from kmsenv.algorithms import Algorithm
from kmsenv.message.codec import context_bytes, decode_message

__all__ = ["Algorithm", "EncryptedDataKey", "CipherHeader", "CipherBody", "CipherMaterial"]

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
