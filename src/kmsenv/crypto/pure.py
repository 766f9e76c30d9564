"""The pure-Python backend: ``cryptography`` for AES (and SM4 where its OpenSSL
has it), ``gmssl`` as the SM4 fallback.

It produces byte-identical output to the native core and is the baseline the
benchmarks compare against.
"""

from __future__ import annotations

import hmac
import os
from typing import Any, Callable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._wipe import wipe as _wipe
from ..exceptions import AuthenticationError, HeaderAuthenticationError, MessageFormatError
from ..message import der
from . import interface as I
from .interface import BytesLike
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


def _body_parts(message: Any, parts: I.MessageParts) -> tuple[bytes, bytes, bytes]:
    """(IV, ciphertext, tag) of a GCM message, where the caller's parse found them."""
    iv, ct, tag = parts.iv_start, parts.ct_start, parts.tag_start
    return (
        bytes(message[iv : iv + parts.iv_len]),
        bytes(message[ct : ct + parts.ct_len]),
        bytes(message[tag : tag + parts.tag_len]),
    )


def _ends_with_iv_and_tag(message: Any, start: int, end: int) -> bool:
    """Whether the header TLV [start, end) ends with 04 0c IV 04 10 tag, as the
    C core checks (the engine's strict header parse already did)."""
    at = end - I.HEADER_IV_FROM_END
    return (
        at - start >= 2
        and message[at - 2] == der.OCTET_STRING
        and message[at - 1] == I.GCM_IV_LEN
        and message[end - I.HEADER_TAG_FROM_END - 2] == der.OCTET_STRING
        and message[end - I.HEADER_TAG_FROM_END - 1] == I.GCM_TAG_LEN
    )


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

    def _algo(self) -> CipherAlgorithm:
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

    def seal_one(self, header: bytes, aad: bytes, plaintext: bytes, iv: bytes) -> bytes:
        ct, tag = self.gcm_seal(iv, aad, plaintext)
        return der.message_tlv(header, der.body_tlv(iv, ct, tag))

    def open_one(self, header: bytes, aad: bytes, message: bytes) -> bytes:
        (plaintext,), (status,) = self.open_messages(header, aad, [message])
        if status == I.STATUS_AUTH:
            raise AuthenticationError("authentication tag mismatch")
        if plaintext is None:
            raise MessageFormatError("message body: malformed message")
        return plaintext

    def seal_messages(self, header: bytes, aad: bytes, plaintexts: Sequence[BytesLike]) -> list[bytes]:
        return [self.seal_one(header, aad, bytes(pt), os.urandom(I.GCM_IV_LEN)) for pt in plaintexts]

    def open_messages(
        self, header: bytes, aad: bytes, messages: Sequence[bytes]
    ) -> tuple[list[bytes | None], list[int]]:
        plaintexts: list[bytes | None] = []
        statuses: list[int] = []
        for msg in messages:
            try:
                layout = der.message_layout(msg)
                if msg[layout.header_start : layout.header_end] != header:
                    raise MessageFormatError("another header")
                if layout.iv_len != I.GCM_IV_LEN or layout.tag_len != I.GCM_TAG_LEN:
                    raise MessageFormatError("bad IV or tag length")
                iv, ct, tag = _body_parts(msg, layout)
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


# ---------------------------------------------------------------- streaming (kmsenv.stream)

import struct as _struct  # noqa: E402
from typing import Any as _Any  # noqa: E402

from cryptography.hazmat.primitives import hashes as _hashes  # noqa: E402
from cryptography.hazmat.primitives.kdf.hkdf import HKDF as _HKDF  # noqa: E402

from ..exceptions import KmsEnvError as _KmsEnvError, UnsupportedAlgorithmError as _Unsupported  # noqa: E402

_HASH_CLASSES = {"SHA256": _hashes.SHA256, "SM3": _hashes.SM3}
_be32 = _struct.Struct(">I")


def _pure_hkdf(hash_name: str, ikm: _Any, salt: bytes, info: bytes, length: int) -> bytearray:
    # cryptography returns immutable bytes; the copy is what we control and wipe.
    return bytearray(_HKDF(_HASH_CLASSES[hash_name](), length, bytes(salt), bytes(info)).derive(bytes(ikm)))


def _frame_iv(base_iv: bytes, seq: int) -> bytes:
    return base_iv[:8] + _be32.pack(_be32.unpack(base_iv[8:])[0] ^ seq)


def _frame_aad(msgid: bytes, seq: int, final: bool) -> bytes:
    return bytes(msgid) + _be32.pack(seq) + (b"\x01" if final else b"\x00")


def _pure_frames_seal(
    cipher: str,
    key: _Any,
    base_iv: bytes,
    msgid: bytes,
    first_seq: int,
    frame_size: int,
    final: bool,
    data: _Any,
    out: bytearray,
    nthreads: int,
) -> int:
    del nthreads  # one thread: this backend is the reference, not the fast path
    need = I.frames_sealed_size(frame_size, len(data), final)
    if len(out) < need:
        raise ValueError("output buffer too small")
    full, rest = divmod(len(data), frame_size)
    count = full + (1 if final else 0)
    if count and (first_seq < 1 or first_seq + count - 1 > I.FRAME_MAX_SEQ):
        raise ValueError("frame sequence number out of range")
    view = memoryview(data)
    pos = 0
    k = PureKey(cipher, key)
    try:
        for i in range(count):
            seq = first_seq + i
            is_final = final and i == full
            pt = view[i * frame_size : i * frame_size + (rest if is_final else frame_size)]
            ct, tag = k.gcm_seal(_frame_iv(base_iv, seq), _frame_aad(msgid, seq, is_final), bytes(pt))
            head = (
                _be32.pack(I.FRAME_FINAL_MARKER) + _be32.pack(seq) + _be32.pack(len(pt))
                if is_final
                else _be32.pack(seq)
            )
            piece = head + ct + tag
            out[pos : pos + len(piece)] = piece
            pos += len(piece)
    finally:
        k.close()
    return pos


def _pure_frames_open(
    cipher: str,
    key: _Any,
    base_iv: bytes,
    msgid: bytes,
    first_seq: int,
    frame_size: int,
    data: _Any,
    out: bytearray,
    nthreads: int,
) -> tuple[int, int, bool]:
    del nthreads
    view = memoryview(data)
    frames: list[tuple[int, int, int, bool]] = []  # (seq, ct start, len, final)
    pos, seq, total = 0, first_seq, 0
    while pos < len(view):
        left = len(view) - pos
        if seq < 1 or seq > I.FRAME_MAX_SEQ or left < 4:
            raise I.FrameBatchError(I.STATUS_FORMAT, len(frames))
        first = _be32.unpack(view[pos : pos + 4])[0]
        if first == I.FRAME_FINAL_MARKER:
            if left < 12 or _be32.unpack(view[pos + 4 : pos + 8])[0] != seq:
                raise I.FrameBatchError(I.STATUS_FORMAT, len(frames))
            n = _be32.unpack(view[pos + 8 : pos + 12])[0]
            if n >= frame_size or left - 12 != n + I.GCM_TAG_LEN:
                raise I.FrameBatchError(I.STATUS_FORMAT, len(frames))
            frames.append((seq, pos + 12, n, True))
            pos = len(view)
        else:
            if first != seq or left - 4 < frame_size + I.GCM_TAG_LEN:
                raise I.FrameBatchError(I.STATUS_FORMAT, len(frames))
            frames.append((seq, pos + 4, frame_size, False))
            pos += 4 + frame_size + I.GCM_TAG_LEN
        total += frames[-1][2]
        seq += 1
    if len(out) < total:
        raise ValueError("output buffer too small")
    k = PureKey(cipher, key)
    at = 0
    try:
        for index, (s, start, n, is_final) in enumerate(frames):
            try:
                pt = k.gcm_open(
                    _frame_iv(base_iv, s),
                    _frame_aad(msgid, s, is_final),
                    bytes(view[start : start + n]),
                    bytes(view[start + n : start + n + I.GCM_TAG_LEN]),
                )
            except AuthenticationError:
                out[:] = bytes(len(out))  # all or nothing, as the native core
                raise I.FrameBatchError(I.STATUS_AUTH, index) from None
            out[at : at + n] = pt
            at += n
    finally:
        k.close()
    return total, len(frames), bool(frames and frames[-1][3])


class PureGcmStream:
    """Incremental GCM through cryptography's Cipher API; see interface.GcmStream."""

    __slots__ = ("_ctx", "_decrypt")

    def __init__(self, cipher: str, key: _Any, iv: bytes, decrypt: bool):
        if len(iv) != I.GCM_IV_LEN:
            raise MessageFormatError("GCM IV must be 12 bytes")
        if cipher == "SM4" and not cryptography_has_sm4_gcm():
            raise _Unsupported("incremental SM4-GCM needs a cryptography build with SM4-GCM")
        k = bytes(key)
        algo = algorithms.AES(k) if cipher == "AES" else algorithms.SM4(k)
        c = Cipher(algo, modes.GCM(bytes(iv)))
        self._ctx: _Any = c.decryptor() if decrypt else c.encryptor()
        self._decrypt = decrypt

    def _c(self) -> _Any:
        if self._ctx is None:
            raise _KmsEnvError("GCM stream used after close()")
        return self._ctx

    def aad(self, data: bytes) -> None:
        if data:
            self._c().authenticate_additional_data(bytes(data))

    def update_into(self, data: _Any, out: _Any) -> None:
        n = len(data)
        if n:
            memoryview(out)[:n] = self._c().update(bytes(data))

    def final(self) -> bytes:
        ctx = self._c()
        ctx.finalize()
        self._ctx = None
        return bytes(ctx.tag)

    def verify(self, tag: bytes) -> None:
        ctx = self._c()
        self._ctx = None
        try:
            ctx.finalize_with_tag(bytes(tag))
        except InvalidTag:
            raise AuthenticationError("authentication tag mismatch") from None

    def close(self) -> None:
        self._ctx = None


# ---------------------------------------------------------------- columns (kmsenv.columns)
# The reference of the native core's column calls (compact.c, arrow.c): value
# by value, the same bytes, statuses and stopping points.


def _offset_format(width: int) -> str:
    return "<i" if width == 4 else "<q"


def _pure_compact_subkey(version: int, cipher: str, key: _Any, header_hash: bytes, segment: bytes) -> bytearray:
    """HKDF-H(ikm = data key, salt = segment, info = label || header hash), len(key) bytes."""
    info = (I.COMPACT_SUBKEY_INFO if version == 2 else I.COMPACT_SUBKEY_INFO_V1) + bytes(header_hash)
    return _pure_hkdf("SM3" if cipher == "SM4" else "SHA256", key, segment, info, len(key))


def _compact_aad(prefix: bytes, version: int, name: bytes, row: _Any) -> bytes:
    """prefix || (v2) u32be(len(name)) || name || row id (when bound)."""
    parts = [prefix]
    if version == 2:
        parts += [_be32.pack(len(name)), name]
    if row is not None:
        parts.append(bytes(row))
    return b"".join(parts)


def _pure_compact_seal(
    cipher: str,
    key: _Any,
    header_hash: bytes,
    segment: bytes,
    name: bytes,
    col: I.ColumnView,
    rows: I.ColumnView | None,
    start: int,
    stop: int,
    ivs: bytes | None,
    out: I.ColumnOutput,
) -> None:
    sub = _pure_compact_subkey(2, cipher, key, header_hash, segment)
    try:
        k = PureKey(cipher, sub)
    except BaseException:
        _wipe(sub)
        raise
    fmt = _offset_format(out.width)
    pos = _struct.unpack_from(fmt, out.offsets, start * out.width)[0]
    flag = I.COMPACT_FORMAT | (I.COMPACT_ROW_BOUND if rows is not None else 0)
    prefix = bytes([flag]) + bytes(header_hash[: I.COMPACT_REF_LEN]) + segment
    try:
        for i in range(start, stop):
            value = col.value(i)
            if value is not None:
                iv = ivs[(i - start) * 12 : (i - start + 1) * 12] if ivs is not None else os.urandom(12)
                aad = _compact_aad(prefix, 2, name, rows.value(i) if rows is not None else None)
                ct, tag = k.gcm_seal(iv, aad, bytes(value))
                sealed = prefix + iv + ct + tag
                out.data[pos : pos + len(sealed)] = sealed
                pos += len(sealed)
            _struct.pack_into(fmt, out.offsets, (i + 1) * out.width, pos)
    finally:
        k.close()
        _wipe(sub)


def _pure_compact_open(
    version: int,
    cipher: str,
    key: _Any,
    header_hash: bytes,
    name: bytes,
    col: I.ColumnView,
    rows: I.ColumnView | None,
    start: int,
    out: I.ColumnOutput,
) -> tuple[int, int]:
    fmt = _offset_format(out.width)
    pos = first = _struct.unpack_from(fmt, out.offsets, start * out.width)[0]
    ref = bytes(header_hash[: I.COMPACT_REF_LEN])
    segment = None
    k = None
    try:
        for i in range(start, col.length):
            value = col.value(i)
            if value is not None:
                got = (
                    I.COMPACT_VERSIONS.get(value[0] & ~I.COMPACT_ROW_BOUND & 0xFF)
                    if len(value) >= I.COMPACT_OVERHEAD
                    else None
                )
                if got is None:
                    out.data[first:pos] = bytes(pos - first)
                    return I.STATUS_FORMAT, i
                if bytes(value[1 : 1 + I.COMPACT_REF_LEN]) != ref:
                    return I.STATUS_OTHER_KEY, i
                if got != version or bool(value[0] & I.COMPACT_ROW_BOUND) != (rows is not None):
                    out.data[first:pos] = bytes(pos - first)
                    return I.STATUS_FORMAT, i
                seg = bytes(value[1 + I.COMPACT_REF_LEN : I.COMPACT_PREFIX_LEN])
                if seg != segment:
                    if k is not None:
                        k.close()
                    sub = _pure_compact_subkey(version, cipher, key, header_hash, seg)
                    k = PureKey(cipher, sub)
                    _wipe(sub)
                    segment = seg
                assert k is not None  # set with the first value's segment, just above
                aad = _compact_aad(
                    bytes(value[: I.COMPACT_PREFIX_LEN]), version, name, rows.value(i) if rows is not None else None
                )
                iv_end = I.COMPACT_PREFIX_LEN + I.GCM_IV_LEN
                try:
                    pt = k.gcm_open(
                        bytes(value[I.COMPACT_PREFIX_LEN : iv_end]), aad, bytes(value[iv_end:-16]), bytes(value[-16:])
                    )
                except AuthenticationError:
                    out.data[first:pos] = bytes(pos - first)
                    return I.STATUS_AUTH, i
                out.data[pos : pos + len(pt)] = pt
                pos += len(pt)
            _struct.pack_into(fmt, out.offsets, (i + 1) * out.width, pos)
    finally:
        if k is not None:
            k.close()
    return I.STATUS_OK, col.length


def _pure_alibaba_column_seal(
    key: PureKey, header: bytes, aad: bytes, col: I.ColumnView, new_output: Callable[[int], I.ColumnOutput]
) -> I.ColumnOutput:
    present = [bytes(v) for v in (col.value(i) for i in range(col.length)) if v is not None]
    messages = key.seal_messages(header, aad, present)
    out = new_output(sum(len(m) for m in messages))
    fmt = _offset_format(out.width)
    pos = 0
    it = iter(messages)
    for i in range(col.length):
        if col.is_valid(i):
            m = next(it)
            out.data[pos : pos + len(m)] = m
            pos += len(m)
        _struct.pack_into(fmt, out.offsets, (i + 1) * out.width, pos)
    return out


def _pure_alibaba_column_open(
    key: PureKey, header: bytes, aad: bytes, col: I.ColumnView, start: int, out: I.ColumnOutput
) -> tuple[int, int]:
    fmt = _offset_format(out.width)
    pos = first = _struct.unpack_from(fmt, out.offsets, start * out.width)[0]
    for i in range(start, col.length):
        value = col.value(i)
        if value is not None:
            if bytes(value[: len(header) + 8]).find(header) < 0:
                return I.STATUS_OTHER_KEY, i
            plaintexts, statuses = key.open_messages(header, aad, [bytes(value)])
            if statuses[0] == I.STATUS_AUTH:
                out.data[first:pos] = bytes(pos - first)
                return I.STATUS_AUTH, i
            if statuses[0] != I.STATUS_OK:
                return I.STATUS_OTHER_KEY, i
            pt = plaintexts[0]
            assert pt is not None
            out.data[pos : pos + len(pt)] = pt
            pos += len(pt)
        _struct.pack_into(fmt, out.offsets, (i + 1) * out.width, pos)
    return I.STATUS_OK, col.length


class PureBackend:
    name = "pure"

    def seal_message(
        self,
        cipher: str,
        key: bytearray,
        fields: bytes,
        auth: bytes,
        aad: bytes,
        plaintext: BytesLike,
        ivs: bytes,
        wipe_key: bool = False,
    ) -> bytes:
        try:
            k = PureKey(cipher, key)
        finally:
            if wipe_key:  # as the native core: the raw key is spent once set up
                _wipe(key)
        try:
            _, tag = k.gcm_seal(ivs[:12], auth, b"")
            return k.seal_one(der.header_tlv(fields, ivs[:12], tag), aad, bytes(plaintext), ivs[12:24])
        finally:
            k.close()

    def open_message(
        self,
        cipher: str,
        key: bytearray,
        auth: bytes,
        aad: bytes,
        message: bytes,
        wipe_key: bool = False,
        parts: I.MessageParts | None = None,
    ) -> bytes:
        # The same order as the C core: the framing first (a malformed body is
        # a format error), then the header tag, then the body tag. The caller's
        # parse says where the parts lie; without it, the layout is walked here.
        try:
            if parts is None:
                parts = der.message_layout(message)
            end = parts.header_end
            if (
                parts.iv_len != I.GCM_IV_LEN
                or parts.tag_len != I.GCM_TAG_LEN
                or not _ends_with_iv_and_tag(message, parts.header_start, end)
            ):
                raise MessageFormatError("message: the IVs must be 12 bytes and the tags 16")
            header_iv = bytes(message[end - I.HEADER_IV_FROM_END : end - I.HEADER_IV_FROM_END + I.GCM_IV_LEN])
            header_tag = bytes(message[end - I.HEADER_TAG_FROM_END : end])
            iv, ct, tag = _body_parts(message, parts)
            k = PureKey(cipher, key)
        finally:
            if wipe_key:
                _wipe(key)
        try:
            try:
                k.gcm_open(header_iv, auth, b"", header_tag)
            except AuthenticationError:
                raise HeaderAuthenticationError("header authentication failed") from None
            return k.gcm_open(iv, aad, ct, tag)
        finally:
            k.close()

    def new_key(self, cipher: str, key: bytes | bytearray) -> PureKey:
        return PureKey(cipher, key)

    def random(self, n: int) -> bytes:
        return os.urandom(n)

    def random_into(self, buf: bytearray) -> None:
        # Straight into buf where the OS offers a device to read (no copy of a
        # key in an immutable bytes object); else through os.urandom.
        try:
            with open("/dev/urandom", "rb", buffering=0) as dev:
                got = dev.readinto(buf)
        except OSError:
            got = None
        if got != len(buf):
            buf[:] = os.urandom(len(buf))

    # Streaming: frames, HKDF and incremental GCM (see kmsenv.stream).
    hkdf = staticmethod(_pure_hkdf)
    frames_seal = staticmethod(_pure_frames_seal)
    frames_open = staticmethod(_pure_frames_open)
    gcm_stream = staticmethod(PureGcmStream)

    # Columns (see kmsenv.columns).
    compact_subkey = staticmethod(_pure_compact_subkey)
    compact_seal = staticmethod(_pure_compact_seal)
    compact_open = staticmethod(_pure_compact_open)
    alibaba_column_seal = staticmethod(_pure_alibaba_column_seal)
    alibaba_column_open = staticmethod(_pure_alibaba_column_open)
