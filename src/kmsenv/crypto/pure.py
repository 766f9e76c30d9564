"""The pure-Python backend: ``cryptography`` for AES (and SM4 where its OpenSSL
has it), ``gmssl`` as the SM4 fallback.

It produces byte-identical output to the native core and is the baseline the
benchmarks compare against.
"""

from __future__ import annotations

import hmac
import os
from typing import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..exceptions import AuthenticationError, MessageFormatError
from ..message import der
from . import interface as I
from .sm4_gcm_fallback import Sm4Fallback

_SM4_GCM_OK: bool | None = None


def cryptography_has_sm4_gcm() -> bool:
    """Whether the OpenSSL inside ``cryptography`` seals SM4-GCM."""
    global _SM4_GCM_OK
    if _SM4_GCM_OK is None:
        try:
            enc = Cipher(algorithms.SM4(bytes(16)), modes.GCM(bytes(12))).encryptor()
            enc.update(b"x")
            enc.finalize()
            _SM4_GCM_OK = True
        except Exception:
            _SM4_GCM_OK = False
    return _SM4_GCM_OK


def _unpad_pkcs7(data: bytes) -> bytes:
    if not data or len(data) % 16:
        raise MessageFormatError("CBC-PKCS5 body is not a whole number of blocks")
    pad = data[-1]
    n = min(max(pad, 1), 16)
    # Check the whole tail in one comparison rather than byte by byte.
    tail_ok = hmac.compare_digest(data[-n:], bytes((pad,)) * n)
    if not (tail_ok and 1 <= pad <= 16):
        raise MessageFormatError("invalid CBC padding")
    return data[:-pad]


def _pad_pkcs7(data: bytes) -> bytes:
    pad = 16 - len(data) % 16
    return data + bytes((pad,)) * pad


class PureKey:
    __slots__ = ("_cipher", "_key", "_aesgcm", "_sm4")

    def __init__(self, cipher: str, key: bytes | bytearray):
        self._cipher = cipher
        self._key = bytearray(key)
        self._aesgcm = AESGCM(bytes(key)) if cipher == "AES" else None
        self._sm4 = None if cipher == "AES" or cryptography_has_sm4_gcm() else Sm4Fallback(bytes(key))

    def _algo(self):
        k = bytes(self._key)
        return algorithms.AES(k) if self._cipher == "AES" else algorithms.SM4(k)

    def gcm_seal(self, iv: bytes, aad: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
        if self._aesgcm is not None:
            out = self._aesgcm.encrypt(iv, bytes(plaintext), aad or None)
            return out[:-16], out[-16:]
        if self._sm4 is not None:
            return self._sm4.gcm_seal(iv, aad, bytes(plaintext))
        enc = Cipher(self._algo(), modes.GCM(iv)).encryptor()
        if aad:
            enc.authenticate_additional_data(aad)
        ct = enc.update(bytes(plaintext)) + enc.finalize()
        return ct, enc.tag

    def gcm_open(self, iv: bytes, aad: bytes, ciphertext: bytes, tag: bytes) -> bytes:
        try:
            if self._aesgcm is not None:
                return self._aesgcm.decrypt(iv, bytes(ciphertext) + bytes(tag), aad or None)
            if self._sm4 is not None:
                return self._sm4.gcm_open(iv, aad, bytes(ciphertext), bytes(tag))
            dec = Cipher(self._algo(), modes.GCM(iv, bytes(tag))).decryptor()
            if aad:
                dec.authenticate_additional_data(aad)
            return dec.update(bytes(ciphertext)) + dec.finalize()
        except InvalidTag:
            raise AuthenticationError("authentication tag mismatch") from None

    def _legacy(self, mode: str, iv: bytes, data: bytes, encrypt: bool) -> bytes:
        if self._sm4 is not None:
            return self._sm4.legacy(mode, iv, data, encrypt)
        m = modes.CTR(iv) if mode == I.CTR else modes.CBC(iv)
        c = Cipher(self._algo(), m)
        ctx = c.encryptor() if encrypt else c.decryptor()
        return ctx.update(data) + ctx.finalize()

    def legacy_encrypt(self, mode: str, iv: bytes, plaintext: bytes) -> bytes:
        data = bytes(plaintext)
        if mode == I.CBC_PKCS7:
            data = _pad_pkcs7(data)
        elif mode == I.CBC and len(data) % 16:
            raise ValueError("CBC without padding needs a multiple of 16 bytes")
        return self._legacy(mode, iv, data, True)

    def legacy_decrypt(self, mode: str, iv: bytes, ciphertext: bytes) -> bytes:
        data = bytes(ciphertext)
        if mode != I.CTR and len(data) % 16:
            raise MessageFormatError("CBC body is not a whole number of blocks")
        out = self._legacy(mode, iv, data, False)
        return _unpad_pkcs7(out) if mode == I.CBC_PKCS7 else out

    def seal_messages(self, header: bytes, aad: bytes, plaintexts: Sequence[bytes]) -> list[bytes]:
        out = []
        for pt in plaintexts:
            iv = os.urandom(I.GCM_IV_LEN)
            ct, tag = self.gcm_seal(iv, aad, pt)
            body = der.tlv(der.SEQUENCE, der.octet_string(iv) + der.octet_string(ct) + der.octet_string(tag))
            out.append(der.tlv(der.SEQUENCE, header + body))
        return out

    def open_messages(
        self, header: bytes, aad: bytes, messages: Sequence[bytes]
    ) -> tuple[list[bytes | None], list[int]]:
        plaintexts: list[bytes | None] = []
        statuses: list[int] = []
        for msg in messages:
            try:
                outer = der.Reader(memoryview(msg)).enter(der.SEQUENCE, "message")
                start = outer.pos
                outer.enter(der.SEQUENCE, "header")
                if bytes(outer.buf[start : outer.pos]) != header:
                    raise MessageFormatError("another header")
                body = outer.enter(der.SEQUENCE, "body")
                outer.expect_end("body")
                iv = body.octets("iv")
                ct = body.octets("ciphertext")
                tag = body.octets("tag")
                body.expect_end("tag")
                if len(iv) != I.GCM_IV_LEN or len(tag) != I.GCM_TAG_LEN:
                    raise MessageFormatError("bad IV or tag length")
                if der.Reader(memoryview(msg)).enter(der.SEQUENCE, "message").end != len(msg):
                    raise MessageFormatError("trailing bytes")
            except MessageFormatError:
                plaintexts.append(None)
                statuses.append(I.STATUS_FORMAT)
                continue
            try:
                plaintexts.append(self.gcm_open(iv, aad, ct, tag))
                statuses.append(I.STATUS_OK)
            except AuthenticationError:
                plaintexts.append(None)
                statuses.append(I.STATUS_AUTH)
        return plaintexts, statuses

    def close(self) -> None:
        # cryptography keeps its own key copy in OpenSSL, which it frees; ours we wipe.
        self._key[:] = bytes(len(self._key))
        self._aesgcm = None
        if self._sm4 is not None:
            self._sm4.close()
            self._sm4 = None


class PureBackend:
    name = "pure"

    def new_key(self, cipher: str, key: bytes | bytearray) -> PureKey:
        return PureKey(cipher, key)

    def random(self, n: int) -> bytes:
        return os.urandom(n)
