"""The framed, key-committing stream format: round trips, limits, damage of
every kind, key commitment, and byte-for-byte agreement of the backends."""

from __future__ import annotations

import io
import os
import struct
import sys

import pytest

import kmsenv
from kmsenv import crypto
from kmsenv.exceptions import (
    AuthenticationError,
    ConfigurationError,
    KmsEnvError,
    MessageFormatError,
    UnsupportedAlgorithmError,
)
from kmsenv.stream import _rand, decrypt_stream, encrypt_stream, framed
from stream_helpers import ARN_BJ, ARN_HZ, GCM_ALGS, FakeKmsProvider, FixedKeyProvider, counter_random, wrap

FS = 1024
CTX = {"tenant": "acme", "purpose": "stream-test"}


def _file_like(data: bytes) -> io.BufferedReader:
    return io.BufferedReader(io.BytesIO(data))


# Every test runs on both input paths: an io.BytesIO is sealed and opened
# where it lies, any other file object through the batch buffers.
SOURCES = {"in-memory": io.BytesIO, "file-like": _file_like}
source = io.BytesIO


@pytest.fixture(autouse=True, params=list(SOURCES))
def source_kind(request, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "source", SOURCES[request.param])
    return request.param


def enc(data: bytes, provider, **kw) -> tuple[bytes, kmsenv.stream.StreamResult]:
    out = io.BytesIO()
    kw.setdefault("encryption_context", CTX)
    result = encrypt_stream(source(data), out, provider, **kw)
    return out.getvalue(), result


def dec(message: bytes, provider, **kw) -> tuple[bytes, kmsenv.stream.StreamResult]:
    out = io.BytesIO()
    result = decrypt_stream(source(message), out, provider, **kw)
    return out.getvalue(), result


def dec_fails(message: bytes, provider) -> tuple[type, bytes]:
    """Decrypt expecting a typed failure; return its type and what reached dst."""
    out = io.BytesIO()
    with pytest.raises(KmsEnvError) as info:
        decrypt_stream(source(message), out, provider)
    return type(info.value), out.getvalue()


@pytest.mark.parametrize("alg", GCM_ALGS, ids=lambda a: a.name)
@pytest.mark.parametrize("size", [0, 1, FS - 1, FS, FS + 1, 3 * FS, 3 * FS + 7, 40 * FS + 3])
def test_round_trip(backend, alg, size):
    provider = FakeKmsProvider(ARN_BJ, ARN_HZ)
    data = os.urandom(size)
    message, r = enc(data, provider, algorithm=alg, frame_size=FS)
    assert message[:4] == b"KMSF"
    full, rest = divmod(size, FS)
    assert len(message) == len(r.header.encoded) + full * (FS + 20) + rest + 28
    assert (r.format, r.bytes_in, r.bytes_out) == ("framed", size, len(message))
    assert isinstance(r.header, framed.FramedHeader) and r.header.algorithm == alg
    plain, r2 = dec(message, provider, expected_encryption_context={"tenant": "acme"})
    assert plain == data
    assert (r2.format, r2.bytes_in, r2.bytes_out) == ("framed", len(message), size)
    assert r2.header.message_id == r.header.message_id and dict(r2.header.encryption_context) == CTX


@pytest.mark.parametrize("frame_size", [framed.MIN_FRAME_SIZE, framed.MIN_FRAME_SIZE + 1, 65536, framed.MAX_FRAME_SIZE])
def test_frame_size_edges(backend, frame_size):
    provider = FakeKmsProvider()
    for size in (0, frame_size - 1, frame_size, frame_size + 1):
        data = os.urandom(size)
        message, r = enc(data, provider, frame_size=frame_size)
        assert r.header.frame_size == frame_size
        assert dec(message, provider)[0] == data


@pytest.mark.parametrize("bad", [0, framed.MIN_FRAME_SIZE - 1, framed.MAX_FRAME_SIZE + 1, True, 4096.0])
def test_frame_size_rejected(bad):
    with pytest.raises(ConfigurationError):
        enc(b"x", FakeKmsProvider(), frame_size=bad)


def test_only_gcm_algorithms():
    with pytest.raises(UnsupportedAlgorithmError):
        enc(b"x", FakeKmsProvider(), algorithm=kmsenv.Algorithm.AES_CTR_NOPADDING_256)


def test_frame_count_limit(monkeypatch):
    monkeypatch.setattr(framed, "MAX_FRAMES", 3)
    provider = FakeKmsProvider()
    message, _ = enc(os.urandom(2 * FS + 5), provider, frame_size=FS)  # 2 regular + final: fits
    assert dec(message, provider)[0]
    with pytest.raises(ConfigurationError, match="frames"):
        enc(os.urandom(3 * FS), provider, frame_size=FS)  # 3 regular + final: one too many


def test_header_bounds_checked_before_reading():
    provider = FakeKmsProvider()
    message, r = enc(b"hello", provider)
    h = len(b"KMSF") + 1 + 2 + 4 + 32
    # A context length of 4 GiB must be refused from the field, not by trying to read it.
    huge = message[:h] + b"\xff\xff\xff\xff" + message[h + 4 :]
    with pytest.raises(MessageFormatError, match="exceeds"):
        dec(huge, provider)
    bad_fs = message[:7] + struct.pack(">I", 1023) + message[11:]
    with pytest.raises(MessageFormatError, match="frame size"):
        dec(bad_fs, provider)
    bad_alg = message[:5] + struct.pack(">H", 7) + message[7:]
    with pytest.raises(MessageFormatError):
        dec(bad_alg, provider)


def test_too_many_edks():
    arns = [ARN_BJ.replace("key-bj", f"key-{i}") for i in range(3)]
    message, _ = enc(b"x", FakeKmsProvider(*arns))
    with pytest.raises(MessageFormatError, match="more than 2"):
        dec(message, FakeKmsProvider(*arns), max_encrypted_data_keys=2)
    assert dec(message, FakeKmsProvider(*arns), max_encrypted_data_keys=3)[0] == b"x"


def _layout(message: bytes, header_len: int, size: int) -> list[int]:
    """Byte offsets where each frame starts (the final frame last), and the end."""
    full = size // FS
    starts = [header_len + i * (FS + 20) for i in range(full + 1)]
    return starts + [len(message)]


def _allowed(pos: int, starts: list[int]) -> int:
    """Most plaintext a reader may release when byte ``pos`` is damaged or
    missing: only the frames wholly before it."""
    frames_before = sum(1 for s, e in zip(starts, starts[1:]) if e <= pos)
    return frames_before * FS


@pytest.fixture
def small_batches(monkeypatch):
    # Two frames per batch, so earlier batches do reach dst before the damage.
    monkeypatch.setattr(framed, "BATCH_BYTES", 2 * FS)


def test_truncation_every_boundary_and_inside(backend, small_batches):
    provider = FakeKmsProvider()
    size = 7 * FS + 100
    data = os.urandom(size)
    message, r = enc(data, provider, frame_size=FS)
    starts = _layout(message, len(r.header.encoded), size)
    cuts = set()
    for s in starts[:-1]:
        cuts.update({s - 1, s, s + 1, s + 4, s + 12, s + FS // 2, s + FS + 3, s + FS + 19})
    cuts.update(range(0, len(r.header.encoded), 7))
    released = 0
    for cut in sorted(c for c in cuts if 0 <= c < len(message)):
        _, out = dec_fails(message[:cut], provider)
        assert out == data[: len(out)]
        assert len(out) <= _allowed(cut, starts)
        released = max(released, len(out))
    assert released > 0  # earlier verified batches were released before the damage


def test_truncation_every_byte_of_small_message(backend):
    provider = FakeKmsProvider()
    data = os.urandom(FS + 50)
    message, r = enc(data, provider, frame_size=FS)
    for cut in range(len(message)):
        kind, out = dec_fails(message[:cut], provider)
        assert out == b"", cut  # one batch: nothing of it may be released
        assert kind in (MessageFormatError, AuthenticationError)


def test_bit_flip_every_byte(backend, small_batches):
    provider = FakeKmsProvider()
    size = 3 * FS + 10
    data = os.urandom(size)
    message, r = enc(data, provider, frame_size=FS)
    starts = _layout(message, len(r.header.encoded), size)
    for pos in range(len(message)):
        bad = bytearray(message)
        bad[pos] ^= 0x01 if pos % 2 else 0x80
        _, out = dec_fails(bytes(bad), provider)
        assert out == data[: len(out)], pos
        assert len(out) <= _allowed(pos, starts), pos


def _frames(message: bytes, header_len: int, count: int) -> tuple[bytes, list[bytes], bytes]:
    head = message[:header_len]
    frames = [message[header_len + i * (FS + 20) : header_len + (i + 1) * (FS + 20)] for i in range(count)]
    return head, frames, message[header_len + count * (FS + 20) :]


def test_reorder_duplicate_drop(backend):
    provider = FakeKmsProvider()
    data = os.urandom(4 * FS + 9)
    message, r = enc(data, provider, frame_size=FS)
    head, frames, final = _frames(message, len(r.header.encoded), 4)

    def renumber(fs: list[bytes]) -> list[bytes]:
        return [struct.pack(">I", i + 1) + f[4:] for i, f in enumerate(fs)]

    swapped = [frames[1], frames[0], frames[2], frames[3]]
    dropped = [frames[0], frames[2], frames[3]]
    duplicated = [frames[0], frames[1], frames[1], frames[2], frames[3]]
    for variant in (swapped, dropped, duplicated):
        # As found (seq fields disagree with the position) ...
        kind, out = dec_fails(head + b"".join(variant) + final, provider)
        assert kind is MessageFormatError and out == b""
        # ... and with the seq fields rewritten to look right: the AAD catches it.
        kind, out = dec_fails(head + b"".join(renumber(variant)) + final, provider)
        assert kind in (AuthenticationError, MessageFormatError) and out == b""
    # Frames lost between the last regular frame and the final one.
    kind, out = dec_fails(head + b"".join(frames[:2]) + final, provider)
    assert kind is MessageFormatError and out == b""


def test_final_frame_missing_or_followed_by_data(backend, small_batches):
    provider = FakeKmsProvider()
    data = os.urandom(4 * FS + 9)
    message, r = enc(data, provider, frame_size=FS)
    head, frames, final = _frames(message, len(r.header.encoded), 4)
    kind, out = dec_fails(head + b"".join(frames), provider)  # whole frames, no final
    assert kind is MessageFormatError and len(out) <= 4 * FS and out == data[: len(out)]
    for extra in (b"\x00", final, message[len(head) :]):
        kind, out = dec_fails(message + extra, provider)
        assert kind is MessageFormatError
        assert len(out) <= 4 * FS  # the final frame's plaintext never leaves
        assert out == data[: len(out)]


def test_final_flag_is_authenticated(backend):
    """A final frame sealed with the 'not final' AAD flag (so a reader would
    take a cut-off message for complete) fails authentication."""
    key = os.urandom(32)
    provider = FixedKeyProvider(key)
    data = os.urandom(FS + 10)
    message, r = enc(data, provider, frame_size=FS)
    h = r.header
    content_key, _ = framed.derive(h.algorithm, bytearray(key), h.message_id)
    k = crypto.get_backend().new_key("AES", content_key)
    seq = 2
    iv = bytes(8) + struct.pack(">I", seq)
    aad_not_final = h.message_id + struct.pack(">I", seq) + b"\x00"
    ct, tag = k.gcm_seal(iv, aad_not_final, data[FS:])
    forged_final = struct.pack(">III", 0xFFFFFFFF, seq, 10) + ct + tag
    good_final = message[-(10 + 28) :]
    assert len(forged_final) == len(good_final) and forged_final != good_final
    kind, out = dec_fails(message[: -len(good_final)] + forged_final, provider)
    assert kind is AuthenticationError and out == b""
    # Control: the same construction with flag 1 reproduces the genuine frame.
    ct1, tag1 = k.gcm_seal(iv, aad_not_final[:-1] + b"\x01", data[FS:])
    assert struct.pack(">III", 0xFFFFFFFF, seq, 10) + ct1 + tag1 == good_final
    k.close()


def _with_edk_blob(message: bytes, header: framed.FramedHeader, blob: bytes) -> bytes:
    """The same message with its (single) EDK blob replaced, lengths fixed up."""
    old = header.encrypted_data_keys[0].ciphertext_blob
    i = message.index(struct.pack(">I", len(old)) + old)
    return message[:i] + struct.pack(">I", len(blob)) + blob + message[i + 4 + len(old) :]


def test_key_commitment_rejects_other_data_key(backend, monkeypatch):
    k1, k2 = os.urandom(32), os.urandom(32)
    provider = FixedKeyProvider(k1)
    data = os.urandom(2 * FS)
    message, r = enc(data, provider, frame_size=FS)
    # Re-wrap: the EDK now unwraps to k2, everything else was made with k1.
    forged = _with_edk_blob(message, r.header, wrap(ARN_BJ, CTX, k2))
    be = crypto.get_backend()
    calls = []
    real_new_key, real_open = be.new_key, be.frames_open
    monkeypatch.setattr(be, "new_key", lambda *a, **k: calls.append("new_key") or real_new_key(*a, **k), raising=False)
    monkeypatch.setattr(
        be, "frames_open", lambda *a, **k: calls.append("frames_open") or real_open(*a, **k), raising=False
    )
    out = io.BytesIO()
    with pytest.raises(AuthenticationError, match="commitment"):
        decrypt_stream(source(forged), out, provider)
    assert calls == [] and out.getvalue() == b""  # nothing decrypted, not even the header tag
    # Control: the untouched message goes through both.
    assert dec(message, provider)[0] == data
    assert "new_key" in calls and "frames_open" in calls


def test_commitment_and_keys_depend_on_message_id(backend):
    key = bytearray(os.urandom(32))
    alg = kmsenv.Algorithm.AES_GCM_NOPADDING_256
    a = framed.derive(alg, key, bytes(32))
    b = framed.derive(alg, key, b"\x01" + bytes(31))
    assert a[0] != b[0] and a[1] != b[1] and a[0] != key and len(a[1]) == 32
    sm4 = framed.derive(kmsenv.Algorithm.SM4_GCM_NOPADDING_128, key[:16], bytes(32))
    assert len(sm4[0]) == 16 and sm4[1] != a[1]


@pytest.mark.parametrize("alg", GCM_ALGS, ids=lambda a: a.name)
@pytest.mark.parametrize("fmt", ["framed", "alibaba-stream"])
def test_backends_agree_byte_for_byte(alg, fmt, monkeypatch):
    if not kmsenv.native_available():
        pytest.skip("needs the native core to compare against")
    key = os.urandom(32)
    data = os.urandom(5 * FS + 77)
    outputs = {}
    previous = crypto.get_backend().name
    try:
        for name, threads in (("native", 1), ("native", 2), ("pure", 1)):
            crypto.set_backend(name)
            monkeypatch.setattr(_rand, "random_bytes", counter_random())
            outputs[(name, threads)] = enc(
                data, FixedKeyProvider(key), algorithm=alg, format=fmt, frame_size=FS, threads=threads
            )[0]
    finally:
        crypto.set_backend(previous)
    assert len(set(outputs.values())) == 1
    assert dec(outputs[("pure", 1)], FixedKeyProvider(key))[0] == data


def test_fresh_randomness_per_message():
    provider = FakeKmsProvider()
    a, ra = enc(b"same", provider)
    b, rb = enc(b"same", provider)
    assert ra.header.message_id != rb.header.message_id and a != b
