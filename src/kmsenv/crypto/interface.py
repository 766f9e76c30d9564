"""What a crypto backend offers; the engine sees nothing else.

A *key* object holds one data key with its schedule prepared. It is not
thread-safe (the engine never shares one across threads at once) and must be
``close()``d, which wipes it.
"""

from __future__ import annotations

from typing import Protocol, Sequence

GCM_IV_LEN = 12
GCM_TAG_LEN = 16
BLOCK_IV_LEN = 16

# Legacy mode names, as in AlgorithmInfo.mode.
CBC = "CBC"
CBC_PKCS7 = "CBC_PKCS7"
CTR = "CTR"


class CipherKey(Protocol):
    def gcm_seal(self, iv: bytes, aad: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
        """Return (ciphertext, 16-byte tag)."""

    def gcm_open(self, iv: bytes, aad: bytes, ciphertext: bytes, tag: bytes) -> bytes:
        """Return the plaintext or raise AuthenticationError (nothing released)."""

    def legacy_encrypt(self, mode: str, iv: bytes, plaintext: bytes) -> bytes: ...

    def legacy_decrypt(self, mode: str, iv: bytes, ciphertext: bytes) -> bytes: ...

    def seal_messages(self, header: bytes, aad: bytes, plaintexts: Sequence[bytes]) -> list[bytes]:
        """Complete DER messages sharing ``header`` (see kmsenv_core.h)."""

    def open_messages(
        self, header: bytes, aad: bytes, messages: Sequence[bytes]
    ) -> tuple[list[bytes | None], list[int]]:
        """Plaintexts (None where failed) and per-message status (0, AUTH, FORMAT)."""

    def close(self) -> None: ...


class Backend(Protocol):
    name: str

    def new_key(self, cipher: str, key: bytes | bytearray) -> CipherKey: ...

    def random(self, n: int) -> bytes: ...


# Per-message statuses of open_messages, equal to the C core's codes.
STATUS_OK = 0
STATUS_AUTH = -2
STATUS_FORMAT = -7
