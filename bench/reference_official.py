"""A reference envelope encryptor written the way Alibaba's official Python
Encryption SDK (0.1.1) works, for the benchmark harness (bench/compare.py).

It is a faithful *shape* of the official message path, not a copy of its code
(spec: shared/spec/alibaba-message-format.md sections 3-6 and 8):

* the DER message is built and parsed with ``asn1crypto`` ``Sequence`` /
  ``SetOf`` classes (``SetOf`` sorts its children: DER canonical order, 3.2);
* encrypted data keys travel as **base64 text** inside the SDK objects, decoded
  to raw octets for the DER and re-encoded on parse (3.1, 5.1);
* the header tag is an AES-GCM tag over the authenticated fields (5.1-5.2),
  compared with ``==`` as the SDK does;
* every cipher operation creates a new ``cryptography``
  ``Cipher(..., modes.GCM(iv)).encryptor()`` / ``decryptor()`` (key schedule per
  call), new header/body objects are created for every message, one message at
  a time;
* with several CMKs, KMS is called region after region (8.1):
  GenerateDataKey under the primary, then ReEncrypt (same region) or Encrypt
  (other region) for each further CMK, sequentially; decrypt tries the EDKs one
  after another and swallows every error (8.3).

SM4-GCM (which the Python SDK lacks) follows the Java SDK: SM4-GCM for both
the body and the header tag (5.2). Legacy CBC/CTR algorithms are not
implemented (the benchmark only measures GCM).

It interoperates with kmsenv both ways: ``kmsenv.decrypt`` accepts its messages
and it decrypts kmsenv's (bench/test_reference.py). It accepts any kmsenv data
key provider, so every contender in a benchmark gets the same data key and EDKs.
"""

from __future__ import annotations

import base64
import os
import struct
from typing import Any, Mapping, Sequence

from asn1crypto.core import Integer, OctetString, Sequence as Asn1Sequence, SetOf
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["encrypt", "decrypt", "SequentialKmsProvider", "EncryptedDataKey", "CipherHeader"]

VERSION = 1
# id -> (cipher, key length); GCM only
_ALGORITHMS = {1: ("AES", 16), 2: ("AES", 32), 9: ("SM4", 16)}
_IV_LEN = 12
_TAG_LEN = 16


# --------------------------------------------------------------- ASN.1 classes


class Asn1EncryptedDataKey(Asn1Sequence):
    _fields = [("key_arn", OctetString), ("encrypted_data_key", OctetString)]


class Asn1EncryptedDataKeys(SetOf):
    _child_spec = Asn1EncryptedDataKey


class Asn1ContextEntry(Asn1Sequence):
    _fields = [("key", OctetString), ("value", OctetString)]


class Asn1EncryptionContext(SetOf):
    _child_spec = Asn1ContextEntry


class Asn1CipherHeader(Asn1Sequence):
    _fields = [
        ("version", Integer),
        ("algorithm", Integer),
        ("encrypted_data_keys", Asn1EncryptedDataKeys),
        ("encryption_context", Asn1EncryptionContext),
        ("header_iv", OctetString),
        ("header_auth_tag", OctetString),
    ]


class Asn1CipherBody(Asn1Sequence):
    _fields = [("iv", OctetString), ("cipher_text", OctetString), ("auth_tag", OctetString)]


class Asn1CipherMessage(Asn1Sequence):
    _fields = [("header", Asn1CipherHeader), ("body", Asn1CipherBody)]


# --------------------------------------------------------------- SDK-style objects


class EncryptedDataKey:
    """(CMK ARN, KMS CiphertextBlob as base64 text), as the official SDK keeps it."""

    def __init__(self, key_arn: str, encrypted_data_key: bytes):
        self.key_arn = key_arn
        self.encrypted_data_key = encrypted_data_key  # base64 text (ASCII bytes)

    def serialize(self) -> bytes:
        arn = self.key_arn.encode("utf-8")
        return (
            struct.pack(">I", len(arn))
            + arn
            + struct.pack(">I", len(self.encrypted_data_key))
            + self.encrypted_data_key
        )


def _serialize_context(context: Mapping[str, str]) -> bytes:
    if not context:
        return b""
    items = sorted((k.encode("utf-8"), v.encode("utf-8")) for k, v in context.items())
    out = struct.pack(">I", len(items))
    for k, v in items:
        out += struct.pack(">I", len(k)) + k + struct.pack(">I", len(v)) + v
    return out


class CipherHeader:
    def __init__(
        self,
        version: int,
        algorithm: int,
        encrypted_data_keys: list[EncryptedDataKey],
        encryption_context: Mapping[str, str],
        header_iv: bytes = b"",
        header_auth_tag: bytes = b"",
    ):
        self.version = version
        self.algorithm = algorithm
        self.encrypted_data_keys = encrypted_data_keys
        self.encryption_context = dict(encryption_context)
        self.header_iv = header_iv
        self.header_auth_tag = header_auth_tag

    def serialize_authenticated_fields(self) -> bytes:
        out = struct.pack(">III", self.version, self.algorithm, len(self.encryption_context))
        out += _serialize_context(self.encryption_context)
        out += struct.pack(">I", len(self.encrypted_data_keys))
        for edk in sorted(self.encrypted_data_keys, key=lambda e: e.key_arn.encode("utf-8")):
            out += edk.serialize()
        return out

    def compute_header_auth_tag(self, cipher: str, data_key: bytes) -> None:
        self.header_iv = os.urandom(_IV_LEN) if not self.header_iv else self.header_iv
        _, self.header_auth_tag = _gcm_encrypt(
            cipher, data_key, self.header_iv, b"", self.serialize_authenticated_fields()
        )

    def verify_header_auth_tag(self, cipher: str, data_key: bytes) -> bool:
        _, tag = _gcm_encrypt(cipher, data_key, self.header_iv, b"", self.serialize_authenticated_fields())
        return tag == self.header_auth_tag  # the SDK's (non-constant-time) check


class CipherBody:
    def __init__(self, iv: bytes, cipher_text: bytes, auth_tag: bytes):
        self.iv = iv
        self.cipher_text = cipher_text
        self.auth_tag = auth_tag


# --------------------------------------------------------------- ciphers


def _algorithm_object(cipher: str, key: bytes) -> Any:
    return algorithms.AES(key) if cipher == "AES" else algorithms.SM4(key)


def _gcm_encrypt(cipher: str, key: bytes, iv: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    encryptor = Cipher(_algorithm_object(cipher, key), modes.GCM(iv)).encryptor()
    encryptor.authenticate_additional_data(aad)
    ciphertext = encryptor.update(plaintext) + encryptor.finalize()
    return ciphertext, encryptor.tag


def _gcm_decrypt(cipher: str, key: bytes, iv: bytes, ciphertext: bytes, tag: bytes, aad: bytes) -> bytes:
    decryptor = Cipher(_algorithm_object(cipher, key), modes.GCM(iv, tag)).decryptor()
    decryptor.authenticate_additional_data(aad)
    return decryptor.update(ciphertext) + decryptor.finalize()


# --------------------------------------------------------------- format handler


def serialize(header: CipherHeader, body: CipherBody) -> bytes:
    edks = Asn1EncryptedDataKeys()
    for edk in header.encrypted_data_keys:
        edks.append(
            Asn1EncryptedDataKey(
                {
                    "key_arn": edk.key_arn.encode("utf-8"),
                    "encrypted_data_key": base64.b64decode(edk.encrypted_data_key),
                }
            )
        )
    ctx = Asn1EncryptionContext()
    for k, v in header.encryption_context.items():
        ctx.append(Asn1ContextEntry({"key": k.encode("utf-8"), "value": v.encode("utf-8")}))
    asn1_header = Asn1CipherHeader(
        {
            "version": header.version,
            "algorithm": header.algorithm,
            "encrypted_data_keys": edks,
            "encryption_context": ctx,
            "header_iv": header.header_iv,
            "header_auth_tag": header.header_auth_tag,
        }
    )
    asn1_body = Asn1CipherBody({"iv": body.iv, "cipher_text": body.cipher_text, "auth_tag": body.auth_tag})
    return Asn1CipherMessage({"header": asn1_header, "body": asn1_body}).dump()


def deserialize(data: bytes) -> tuple[CipherHeader, CipherBody]:
    message = Asn1CipherMessage.load(data)
    h, b = message["header"], message["body"]
    edks = [
        EncryptedDataKey(e["key_arn"].native.decode("utf-8"), base64.b64encode(e["encrypted_data_key"].native))
        for e in h["encrypted_data_keys"]
    ]
    ctx = {e["key"].native.decode("utf-8"): e["value"].native.decode("utf-8") for e in h["encryption_context"]}
    header = CipherHeader(
        h["version"].native, h["algorithm"].native, edks, ctx, h["header_iv"].native, h["header_auth_tag"].native
    )
    body = CipherBody(b["iv"].native, b["cipher_text"].native, b["auth_tag"].native)
    return header, body


# --------------------------------------------------------------- providers


def _kmsenv_edks(edks: Sequence[EncryptedDataKey]) -> list[Any]:
    import kmsenv

    return [kmsenv.EncryptedDataKey(e.key_arn, base64.b64decode(e.encrypted_data_key)) for e in edks]


class SequentialKmsProvider:
    """The official SDK's KMS usage, on a kmsenv ``Kms`` transport: one call
    after another across regions (8.1), decrypt tries EDKs in turn and
    swallows every error (8.3). Same interface as kmsenv providers."""

    def __init__(self, kms: Any, *arns: str):
        self.kms = kms
        self.arns = list(arns)

    def generate_data_key(self, algorithm: Any, encryption_context: dict[str, str]) -> Any:
        import kmsenv
        from kmsenv.arn import Arn

        alg = kmsenv.Algorithm(algorithm)
        primary = self.arns[0]
        spec = (
            {"key_spec": "AES_256" if alg.key_len == 32 else "AES_128"}
            if alg.info.cipher == "AES"
            else {"number_of_bytes": alg.key_len}
        )
        plaintext, blob = self.kms.generate_data_key(primary, encryption_context=encryption_context, **spec)
        edks = [kmsenv.EncryptedDataKey(primary, blob)]
        region = Arn.parse(primary).region
        for arn in self.arns[1:]:
            if Arn.parse(arn).region == region:
                other = self.kms.re_encrypt(
                    blob,
                    arn,
                    source_encryption_context=encryption_context,
                    destination_encryption_context=encryption_context,
                )
            else:
                other = self.kms.encrypt(arn, plaintext, encryption_context)
            edks.append(kmsenv.EncryptedDataKey(arn, other))
        return kmsenv.DataKey(plaintext, edks)

    def decrypt_data_key(
        self, encrypted_data_keys: Sequence[Any], algorithm: Any, encryption_context: dict[str, str]
    ) -> bytearray:
        for edk in encrypted_data_keys:
            if edk.key_arn not in self.arns:
                continue
            try:
                return self.kms.decrypt(edk.key_arn, edk.ciphertext_blob, encryption_context)
            except Exception:  # the official SDK swallows everything
                continue
        raise RuntimeError("Failed to get dataKey from encrypted_data_keys")


# --------------------------------------------------------------- encrypt / decrypt


def encrypt(
    plaintext: bytes,
    provider: Any,
    encryption_context: Mapping[str, str] | None = None,
    algorithm: int = 2,
    *,
    header_iv: bytes | None = None,
    body_iv: bytes | None = None,
) -> bytes:
    """One complete DER message, official-SDK style. ``provider`` is any kmsenv
    data key provider (its raw EDK blobs become base64 text, as KMS returns them)."""
    ctx = dict(encryption_context or {})
    cipher, _ = _ALGORITHMS[int(algorithm)]
    material = provider.generate_data_key(algorithm, ctx)
    data_key = bytes(material.plaintext)
    edks = [EncryptedDataKey(e.key_arn, base64.b64encode(e.ciphertext_blob)) for e in material.encrypted_data_keys]
    header = CipherHeader(VERSION, int(algorithm), edks, ctx, header_iv or os.urandom(_IV_LEN))
    header.compute_header_auth_tag(cipher, data_key)
    iv = body_iv or os.urandom(_IV_LEN)
    ciphertext, tag = _gcm_encrypt(cipher, data_key, iv, plaintext, _serialize_context(ctx))
    return serialize(header, CipherBody(iv, ciphertext, tag))


def decrypt(message: bytes, provider: Any) -> bytes:
    """Plaintext of one DER message, official-SDK style."""
    header, body = deserialize(message)
    cipher, _ = _ALGORITHMS[header.algorithm]
    key = provider.decrypt_data_key(
        _kmsenv_edks(header.encrypted_data_keys), header.algorithm, header.encryption_context
    )
    data_key = bytes(key)
    if not header.verify_header_auth_tag(cipher, data_key):
        raise Exception("header authTag verify failed")
    return _gcm_decrypt(
        cipher, data_key, body.iv, body.cipher_text, body.auth_tag, _serialize_context(header.encryption_context)
    )
