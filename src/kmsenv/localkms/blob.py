"""CiphertextBlob layout, kept length-compatible with real KMS 1.0 blobs.

    blob = base64( VID[36 ASCII] || IV[12] || AES-GCM(P) || tag[16] )

P is the string the caller protects (Encrypt: ``Plaintext`` as given; GenerateDataKey:
the base64 text of the data key), so a 32-byte data key gives a 144-character blob as on
real KMS.  The key version ID (VID) locates the key; the key ID, region and a hash of the
canonical encryption context go into the AAD, so the blob is bound to all three without
growing: a different context, region, key or any edited byte fails authentication.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from typing import Mapping, Optional, Protocol

VERSION_ID_LEN = 36
IV_LEN = 12
TAG_LEN = 16
MIN_BLOB_LEN = VERSION_ID_LEN + IV_LEN + TAG_LEN
_AAD_LABEL = b"kmsenv-localkms-blob-v1\x00"


class BlobError(ValueError):
    """The blob is malformed or fails authentication."""


class Aead(Protocol):
    def encrypt(self, nonce: bytes, data: bytes, associated_data: Optional[bytes]) -> bytes: ...
    def decrypt(self, nonce: bytes, data: bytes, associated_data: Optional[bytes]) -> bytes: ...


def context_digest(context: Optional[Mapping[str, str]]) -> bytes:
    """Order- and whitespace-insensitive digest of an encryption context (empty if none)."""
    if not context:
        return b""
    canonical = json.dumps(context, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).digest()


def _aad(version_id: str, key_id: str, region: str, ctx_digest: bytes) -> bytes:
    return b"".join(
        (
            _AAD_LABEL,
            version_id.encode("ascii"),
            b"\x00",
            key_id.encode("utf-8"),
            b"\x00",
            region.encode("utf-8"),
            b"\x00",
            ctx_digest,
        )
    )


def seal(aead: Aead, version_id: str, key_id: str, region: str, plaintext: bytes, ctx_digest: bytes) -> str:
    vid = version_id.encode("ascii")
    if len(vid) != VERSION_ID_LEN:
        raise ValueError("key version IDs must be 36 ASCII characters")
    iv = os.urandom(IV_LEN)
    sealed = aead.encrypt(iv, plaintext, _aad(version_id, key_id, region, ctx_digest))
    return base64.b64encode(vid + iv + sealed).decode("ascii")


def split(blob: str) -> tuple[str, bytes]:
    """Return (key version ID, raw blob bytes) without authenticating anything yet."""
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise BlobError("not base64") from None
    if len(raw) < MIN_BLOB_LEN:
        raise BlobError("too short")
    try:
        version_id = raw[:VERSION_ID_LEN].decode("ascii")
    except UnicodeDecodeError:
        raise BlobError("bad version id") from None
    return version_id, raw


def open_(aead: Aead, raw: bytes, key_id: str, region: str, ctx_digest: bytes) -> bytes:
    version_id = raw[:VERSION_ID_LEN].decode("ascii")
    iv = raw[VERSION_ID_LEN : VERSION_ID_LEN + IV_LEN]
    try:
        return aead.decrypt(iv, raw[VERSION_ID_LEN + IV_LEN :], _aad(version_id, key_id, region, ctx_digest))
    except Exception:  # cryptography raises InvalidTag; any failure means "not authentic"
        raise BlobError("authentication failed") from None
