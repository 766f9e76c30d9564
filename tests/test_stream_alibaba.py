"""The Java SDK's stream layout (spec section 7): read and written, checked
against an independent implementation of the layout written here."""

from __future__ import annotations

import base64
import io
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

import kmsenv
from kmsenv.exceptions import (
    KmsEnvError,
    MessageFormatError,
    UnauthenticatedAlgorithmError,
    UnsupportedAlgorithmError,
)
from kmsenv.message.codec import auth_fields, context_bytes
from kmsenv.stream import alibaba_stream, decrypt_stream, encrypt_stream
from stream_helpers import ARN_BJ, ARN_HZ, GCM_ALGS, FixedKeyProvider, ReadOnly, WriteOnly, wrap

CTX = {"b": "x", "a": "yy"}


def _gcm(alg, key, iv, aad, data, tag=None):
    algo = algorithms.SM4(key) if alg.info.cipher == "SM4" else algorithms.AES(key)
    if tag is None:
        e = Cipher(algo, modes.GCM(iv)).encryptor()
        e.authenticate_additional_data(aad)
        return e.update(data) + e.finalize() + e.tag
    d = Cipher(algo, modes.GCM(iv, tag)).decryptor()
    d.authenticate_additional_data(aad)
    return d.update(data) + d.finalize()


def java_write(alg, key, edks, ctx, data, header_iv, body_iv) -> bytes:
    """The layout as the spec describes it, written independently of kmsenv."""
    cb = context_bytes(ctx)
    out = struct.pack(">III", 1, int(alg), len(cb)) + cb + struct.pack(">I", len(edks))
    for arn, blob in sorted((a.encode(), base64.b64encode(b)) for a, b in edks):
        out += struct.pack(">I", len(arn)) + arn + struct.pack(">I", len(blob)) + blob
    fields = auth_fields(1, alg, ctx, [kmsenv.EncryptedDataKey(a, b) for a, b in edks])
    header_tag = _gcm(alg, key, header_iv, fields, b"")[-16:]
    out += struct.pack(">I", 12) + header_iv + struct.pack(">I", 16) + header_tag
    out += struct.pack("<I", len(body_iv)) + body_iv  # little-endian, per the spec
    return out + _gcm(alg, key, body_iv, cb, data)


def java_read(alg, key, message: bytes) -> tuple[dict, bytes]:
    """Independent reader: returns (EDK texts by ARN, plaintext)."""
    pos = 0

    def take(n):
        nonlocal pos
        pos += n
        return message[pos - n : pos]

    version, alg_id, ctx_len = struct.unpack(">III", take(12))
    assert (version, alg_id) == (1, int(alg))
    cb = take(ctx_len)
    edks = {}
    for _ in range(struct.unpack(">I", take(4))[0]):
        arn = take(struct.unpack(">I", take(4))[0]).decode()
        edks[arn] = take(struct.unpack(">I", take(4))[0])
    assert struct.unpack(">I", take(4))[0] == 12
    take(12)
    assert struct.unpack(">I", take(4))[0] == 16
    take(16)
    iv_len = struct.unpack("<I", take(4))[0]
    iv = take(iv_len)
    body = message[pos:]
    return edks, _gcm(alg, key, iv, cb, body[:-16], body[-16:])


@pytest.mark.parametrize("alg", GCM_ALGS, ids=lambda a: a.name)
@pytest.mark.parametrize("size", [0, 1, 17, 1 << 20, (1 << 20) + 5])
def test_we_read_the_java_layout(backend, alg, size):
    key = os.urandom(alg.key_len)
    edks = [(a, wrap(a, CTX, key)) for a in (ARN_HZ, ARN_BJ)]
    data = os.urandom(size)
    message = java_write(alg, key, edks, CTX, data, os.urandom(12), os.urandom(12))
    out = io.BytesIO()
    r = decrypt_stream(io.BytesIO(message), out, FixedKeyProvider(key, ARN_BJ), expected_encryption_context=CTX)
    assert out.getvalue() == data
    assert r.format == "alibaba-stream" and r.header.algorithm == alg and r.bytes_in == len(message)
    assert {e.key_arn for e in r.header.encrypted_data_keys} == {ARN_HZ, ARN_BJ}


@pytest.mark.parametrize("alg", GCM_ALGS, ids=lambda a: a.name)
def test_java_reads_what_we_write(backend, alg):
    key = os.urandom(32)
    data = os.urandom(300_001)
    out = io.BytesIO()
    r = encrypt_stream(
        io.BytesIO(data),
        out,
        FixedKeyProvider(key, ARN_BJ, ARN_HZ),
        algorithm=alg,
        encryption_context=CTX,
        format="alibaba-stream",
    )
    message = out.getvalue()
    assert message[:4] == b"\x00\x00\x00\x01" and r.bytes_out == len(message)
    edks, plain = java_read(alg, key[: alg.key_len], message)
    assert plain == data
    assert set(edks) == {ARN_BJ, ARN_HZ}
    assert base64.b64decode(edks[ARN_BJ]) == wrap(ARN_BJ, CTX, key[: alg.key_len])  # base64 TEXT on the wire


@pytest.mark.parametrize("seekable", [True, False])
def test_round_trip_seekable_or_spooled(backend, seekable, monkeypatch):
    monkeypatch.setattr(alibaba_stream, "SPOOL_MEMORY", 1000)  # force the spool onto disk
    key = os.urandom(32)
    provider = FixedKeyProvider(key)
    data = os.urandom(3 * alibaba_stream.CHUNK + 123)
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, provider, format="alibaba-stream")
    src = io.BytesIO(out.getvalue()) if seekable else ReadOnly(out.getvalue(), step=5000)
    dst = WriteOnly()
    r = decrypt_stream(src, dst, provider)
    assert dst.getvalue() == data and r.bytes_out == len(data) and r.bytes_in == len(out.getvalue())


def _small_message(key: bytes) -> tuple[bytes, bytes]:
    data = os.urandom(200)
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, FixedKeyProvider(key), format="alibaba-stream", encryption_context=CTX)
    return data, out.getvalue()


@pytest.mark.parametrize("seekable", [True, False])
def test_every_bit_flip_and_truncation_releases_nothing(backend, seekable):
    key = os.urandom(32)
    provider = FixedKeyProvider(key)
    _, message = _small_message(key)

    def attempt(msg: bytes) -> None:
        dst = WriteOnly()
        src = io.BytesIO(msg) if seekable else ReadOnly(msg)
        with pytest.raises(KmsEnvError):
            decrypt_stream(src, dst, provider)
        assert dst.getvalue() == b""  # the single tag failed: no plaintext at all

    for pos in range(len(message)):
        bad = bytearray(message)
        bad[pos] ^= 0x04
        attempt(bytes(bad))
    for cut in range(len(message)):
        attempt(message[:cut])


def test_input_changing_between_passes_cannot_reach_the_output():
    """Pass 2 reads the private spool pass 1 verified, never the source again:
    a source that changes after verification changes nothing."""
    key = os.urandom(32)
    provider = FixedKeyProvider(key)
    data = os.urandom(2 * alibaba_stream.CHUNK)
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, provider, format="alibaba-stream")
    good = out.getvalue()

    class Swapping(io.BytesIO):
        """Serves the genuine bytes once, then altered ones after a seek."""

        def seek(self, pos, whence=0):
            altered = bytearray(good)
            altered[-100] ^= 1
            self.__init__(bytes(altered))
            return super().seek(pos, whence)

    dst = WriteOnly()
    decrypt_stream(Swapping(good), dst, provider)
    assert dst.getvalue() == data


def test_legacy_streams_refused():
    key = os.urandom(32)
    alg = kmsenv.Algorithm.AES_CTR_NOPADDING_256
    edks = [(ARN_BJ, wrap(ARN_BJ, {}, key))]
    message = java_write(kmsenv.Algorithm.AES_GCM_NOPADDING_256, key, edks, {}, b"data", os.urandom(12), os.urandom(16))
    message = message[:4] + struct.pack(">I", int(alg)) + message[8:]
    with pytest.raises(UnauthenticatedAlgorithmError):
        decrypt_stream(io.BytesIO(message), io.BytesIO(), FixedKeyProvider(key))
    with pytest.raises((UnsupportedAlgorithmError, MessageFormatError)):
        decrypt_stream(io.BytesIO(message), io.BytesIO(), FixedKeyProvider(key), allow_unauthenticated=True)
    with pytest.raises(UnsupportedAlgorithmError):
        encrypt_stream(io.BytesIO(b"x"), io.BytesIO(), FixedKeyProvider(key), algorithm=alg, format="alibaba-stream")


def test_non_canonical_edk_text_and_bad_lengths_rejected():
    key = os.urandom(32)
    _, message = _small_message(key)
    provider = FixedKeyProvider(key)
    # Huge context length: refused from the field.
    with pytest.raises(MessageFormatError, match="exceeds"):
        decrypt_stream(io.BytesIO(message[:8] + b"\x7f\xff\xff\xff" + message[12:]), io.BytesIO(), provider)
    # The body IV length is little-endian: a big-endian 12 is refused.
    i = message.index(struct.pack("<I", 12), 40)
    swapped = message[:i] + struct.pack(">I", 12) + message[i + 4 :]
    with pytest.raises(MessageFormatError, match="body IV"):
        decrypt_stream(io.BytesIO(swapped), io.BytesIO(), provider)
