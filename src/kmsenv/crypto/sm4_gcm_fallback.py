"""SM4 modes on ``gmssl``'s block cipher, for when ``cryptography``'s OpenSSL lacks SM4.

Slow (pure Python) and not constant-time; used only as the last fallback and as
an independent SM4 reference in the tests.
"""

from __future__ import annotations

import hmac

from gmssl import sm4

from ..exceptions import AuthenticationError, MessageFormatError

_NO_PADDING = 3  # any value other than gmssl's PKCS7 (0) and ZERO (1)
_R = 0xE1 << 120


def _gf_mult(x: int, y: int) -> int:
    """GHASH multiplication in GF(2^128), bit-reflected as in SP 800-38D."""
    z = 0
    v = y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ _R if v & 1 else v >> 1
    return z


class Sm4Fallback:
    def __init__(self, key: bytes):
        self._enc = sm4.CryptSM4(padding_mode=_NO_PADDING)
        self._enc.set_key(bytes(key), sm4.SM4_ENCRYPT)
        self._dec = sm4.CryptSM4(padding_mode=_NO_PADDING)
        self._dec.set_key(bytes(key), sm4.SM4_DECRYPT)
        self._h = int.from_bytes(self.block(bytes(16)), "big")

    def block(self, data: bytes) -> bytes:
        out: bytes = self._enc.crypt_ecb(data)  # gmssl is untyped
        return out

    def _ctr(self, counter: bytes, data: bytes, wrap32: bool) -> bytes:
        out = bytearray()
        ctr = int.from_bytes(counter, "big")
        for i in range(0, len(data), 16):
            ks = self.block(ctr.to_bytes(16, "big"))
            chunk = data[i : i + 16]
            out += bytes(a ^ b for a, b in zip(chunk, ks))
            if wrap32:
                ctr = (ctr & ~0xFFFFFFFF) | ((ctr + 1) & 0xFFFFFFFF)
            else:
                ctr = (ctr + 1) % (1 << 128)
        return bytes(out)

    def _ghash(self, aad: bytes, ct: bytes) -> int:
        y = 0
        for data in (aad, ct):
            for i in range(0, len(data), 16):
                block = data[i : i + 16].ljust(16, b"\0")
                y = _gf_mult(y ^ int.from_bytes(block, "big"), self._h)
        lengths = (len(aad) * 8).to_bytes(8, "big") + (len(ct) * 8).to_bytes(8, "big")
        return _gf_mult(y ^ int.from_bytes(lengths, "big"), self._h)

    def _tag(self, iv: bytes, aad: bytes, ct: bytes) -> bytes:
        j0 = iv + b"\0\0\0\x01"
        s = self._ghash(aad, ct)
        return (s ^ int.from_bytes(self.block(j0), "big")).to_bytes(16, "big")

    def gcm_seal(self, iv: bytes, aad: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
        ct = self._ctr(iv + b"\0\0\0\x02", plaintext, True)
        return ct, self._tag(iv, aad, ct)

    def gcm_open(self, iv: bytes, aad: bytes, ciphertext: bytes, tag: bytes) -> bytes:
        if not hmac.compare_digest(self._tag(iv, aad, ciphertext), tag):
            raise AuthenticationError("authentication tag mismatch")
        return self._ctr(iv + b"\0\0\0\x02", ciphertext, True)

    def legacy(self, mode: str, iv: bytes, data: bytes, encrypt: bool) -> bytes:
        if mode == "CTR":
            return self._ctr(iv, data, False)
        if len(data) % 16:
            raise MessageFormatError("CBC data is not a whole number of blocks")
        out = bytearray()
        prev = iv
        for i in range(0, len(data), 16):
            block = data[i : i + 16]
            if encrypt:
                prev = self.block(bytes(a ^ b for a, b in zip(block, prev)))
                out += prev
            else:
                out += bytes(a ^ b for a, b in zip(self._dec.crypt_ecb(block), prev))
                prev = block
        return bytes(out)

    def close(self) -> None:
        # gmssl keeps round keys in Python lists; drop them (best effort).
        self._enc.sk = [0] * 32
        self._dec.sk = [0] * 32
        self._h = 0
