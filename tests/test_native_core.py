"""Differential tests of the native core (``kmsenv._native``) against ``cryptography``.

The C harness (csrc/tests) covers known answers and error paths; this file
checks byte-for-byte agreement with an independent implementation on random
inputs, above all SM4-GCM, which the core assembles itself from SM4-ECB/CTR and
OpenSSL's gcm128 because the system OpenSSL 3.0 has no SM4-GCM.

It prefers the installed package and falls back to a development build made
with ``python csrc/build_native.py`` (build/cffi/kmsenv/_native*.so).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import random
import struct

import pytest

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def _load_native():
    try:
        from kmsenv import _native  # type: ignore[attr-defined]

        return _native
    except ImportError:
        pass
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pattern = os.path.join(root, "build", "cffi", "kmsenv", "_native*")
    built = [p for p in glob.glob(pattern) if p.endswith((".so", ".pyd"))]
    if not built:
        pytest.skip("kmsenv._native is neither installed nor built (python csrc/build_native.py)")
    spec = importlib.util.spec_from_file_location("kmsenv._native", built[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_native = _load_native()
ffi, lib = _native.ffi, _native.lib

AES, SM4 = lib.KMSENV_CIPHER_AES, lib.KMSENV_CIPHER_SM4
KINDS = [(AES, 16), (AES, 32), (SM4, 16)]


def _algorithm(cipher: int, key: bytes):
    return algorithms.SM4(key) if cipher == SM4 else algorithms.AES(key)


def _buf(data: bytes):
    return ffi.from_buffer("uint8_t[]", data)


def new_key(cipher: int, key: bytes):
    out = ffi.new("kmsenv_key **")
    assert lib.kmsenv_key_new(cipher, key, len(key), out) == lib.KMSENV_OK
    return ffi.gc(out[0], lib.kmsenv_key_free)


def seal(k, iv: bytes, aad: bytes, pt: bytes) -> tuple[bytes, bytes]:
    out = ffi.new("uint8_t[]", max(len(pt), 1))
    tag = ffi.new("uint8_t[16]")
    rc = lib.kmsenv_gcm_seal(k, iv, _buf(aad), len(aad), _buf(pt), len(pt), out, tag)
    assert rc == lib.KMSENV_OK, ffi.string(lib.kmsenv_strerror(rc))
    return bytes(ffi.buffer(out, len(pt))), bytes(ffi.buffer(tag))


def open_(k, iv: bytes, aad: bytes, ct: bytes, tag: bytes) -> tuple[int, bytes]:
    out = ffi.new("uint8_t[]", max(len(ct), 1))
    for i in range(len(ct)):
        out[i] = 0xAA
    rc = lib.kmsenv_gcm_open(k, iv, _buf(aad), len(aad), _buf(ct), len(ct), tag, out)
    return rc, bytes(ffi.buffer(out, len(ct)))


def reference_gcm(cipher: int, key: bytes, iv: bytes, aad: bytes, pt: bytes) -> tuple[bytes, bytes]:
    enc = Cipher(_algorithm(cipher, key), modes.GCM(iv)).encryptor()
    if aad:
        enc.authenticate_additional_data(aad)
    ct = enc.update(pt) + enc.finalize()
    return ct, enc.tag


def test_versions_and_features():
    assert ffi.string(lib.kmsenv_openssl_version()).startswith(b"OpenSSL ")
    assert ffi.string(lib.kmsenv_openssl_build_version()).startswith(b"OpenSSL ")
    assert ffi.string(lib.kmsenv_version())
    assert lib.kmsenv_features() & lib.KMSENV_FEATURE_SM4
    for status in range(-8, 1):
        assert ffi.string(lib.kmsenv_strerror(status))


def _gcm_sizes(rng: random.Random, count: int) -> list[tuple[int, int]]:
    cases = [(rng.randrange(0, 5001), rng.randrange(0, 101)) for _ in range(count)]
    edges = [0, 1, 15, 16, 17, 3071, 3072, 3073, 3088, 4095, 4096, 4097, 6143, 6144, 6145]
    cases += [(n, rng.randrange(0, 101)) for n in edges]
    cases += [((1 << 20) + 7, 33)]
    return cases


@pytest.mark.parametrize("cipher,keylen", KINDS, ids=["aes128", "aes256", "sm4"])
def test_gcm_matches_cryptography(cipher, keylen):
    rng = random.Random(8998 + keylen + cipher)
    key = os.urandom(keylen)
    k = new_key(cipher, key)
    for size, aadlen in _gcm_sizes(rng, 300 if cipher == SM4 else 100):
        iv, aad, pt = os.urandom(12), os.urandom(aadlen), os.urandom(size)
        ct, tag = seal(k, iv, aad, pt)
        assert (ct, tag) == reference_gcm(cipher, key, iv, aad, pt), (size, aadlen)
        rc, back = open_(k, iv, aad, ct, tag)
        assert rc == lib.KMSENV_OK and back == pt
    # tamper: E_AUTH and nothing of the plaintext handed back
    bad_tag = bytes([tag[0] ^ 1]) + tag[1:]
    rc, back = open_(k, iv, aad, ct, bad_tag)
    assert rc == lib.KMSENV_E_AUTH and back == bytes(len(ct))


def test_sm4_gcm_rfc8998():
    key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    iv = bytes.fromhex("00001234567800000000ABCD")
    aad = bytes.fromhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2")
    pt = bytes.fromhex("AA" * 8 + "BB" * 8 + "CC" * 8 + "DD" * 8 + "EE" * 8 + "FF" * 8 + "EE" * 8 + "AA" * 8)
    ct, tag = seal(new_key(SM4, key), iv, aad, pt)
    assert ct.hex().upper() == (
        "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
        "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
    )
    assert tag.hex().upper() == "83DE3541E4C2B58177E065A9BF7B62EC"


def _legacy(fn, k, mode, iv, data, outcap):
    out = ffi.new("uint8_t[]", max(outcap, 1))
    outlen = ffi.new("size_t *")
    rc = fn(k, mode, iv, _buf(data), len(data), out, outcap, outlen)
    return rc, bytes(ffi.buffer(out, outlen[0]))


@pytest.mark.parametrize("cipher,keylen", KINDS, ids=["aes128", "aes256", "sm4"])
def test_legacy_matches_cryptography(cipher, keylen):
    rng = random.Random(32907 + keylen + cipher)
    key = os.urandom(keylen)
    k = new_key(cipher, key)
    alg = lambda: _algorithm(cipher, key)  # noqa: E731
    for _ in range(60):
        iv = os.urandom(16)
        size = rng.randrange(0, 600)
        pt = os.urandom(size)

        # CTR: the IV is the whole 128-bit counter, as in cryptography's CTR
        enc = Cipher(alg(), modes.CTR(iv)).encryptor()
        want = enc.update(pt) + enc.finalize()
        assert _legacy(lib.kmsenv_legacy_encrypt, k, lib.KMSENV_MODE_CTR, iv, pt, size) == (0, want)
        assert _legacy(lib.kmsenv_legacy_decrypt, k, lib.KMSENV_MODE_CTR, iv, want, size) == (0, pt)

        # CBC, block-aligned input
        aligned = pt[: size - size % 16]
        enc = Cipher(alg(), modes.CBC(iv)).encryptor()
        want = enc.update(aligned) + enc.finalize()
        n = len(aligned)
        assert _legacy(lib.kmsenv_legacy_encrypt, k, lib.KMSENV_MODE_CBC, iv, aligned, n) == (0, want)
        assert _legacy(lib.kmsenv_legacy_decrypt, k, lib.KMSENV_MODE_CBC, iv, want, n) == (0, aligned)

        # CBC with PKCS#7
        padder = padding.PKCS7(128).padder()
        padded = padder.update(pt) + padder.finalize()
        enc = Cipher(alg(), modes.CBC(iv)).encryptor()
        want = enc.update(padded) + enc.finalize()
        mode = lib.KMSENV_MODE_CBC_PKCS7
        assert _legacy(lib.kmsenv_legacy_encrypt, k, mode, iv, pt, len(want)) == (0, want)
        assert _legacy(lib.kmsenv_legacy_decrypt, k, mode, iv, want, len(want)) == (0, pt)

    # a corrupted final block almost always breaks the padding
    bad = want[:-1] + bytes([want[-1] ^ 0x55])
    rc, out = _legacy(lib.kmsenv_legacy_decrypt, k, lib.KMSENV_MODE_CBC_PKCS7, iv, bad, len(bad))
    assert rc in (lib.KMSENV_OK, lib.KMSENV_E_PADDING)
    if rc == lib.KMSENV_E_PADDING:
        assert out == b""


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der_read(data: bytes, off: int, tag: int) -> tuple[int, int]:
    assert data[off] == tag
    first = data[off + 1]
    off += 2
    if first < 0x80:
        return off, first
    nbytes = first & 0x7F
    return off + nbytes, int.from_bytes(data[off : off + nbytes], "big")


@pytest.mark.parametrize("cipher,keylen", KINDS, ids=["aes128", "aes256", "sm4"])
def test_batch_seal_open(cipher, keylen):
    key = os.urandom(keylen)
    k = new_key(cipher, key)
    header_body = os.urandom(150)
    header = b"\x30" + _der_len(len(header_body)) + header_body
    aad = os.urandom(40)
    sizes = [0, 1, 100, 127, 128, 255, 256, 4096, 70000]
    pts = [os.urandom(n) for n in sizes]
    n = len(pts)
    joined = b"".join(pts)
    in_offsets = ffi.new("size_t[]", [0] + [sum(sizes[: i + 1]) for i in range(n)])
    total = sum(lib.kmsenv_message_size(len(header), s) for s in sizes)
    out = ffi.new("uint8_t[]", total)
    out_offsets = ffi.new("size_t[]", n + 1)

    rc = lib.kmsenv_gcm_seal_messages(
        k,
        header,
        len(header),
        _buf(aad),
        len(aad),
        n,
        _buf(joined),
        in_offsets,
        ffi.NULL,
        out,
        total,
        out_offsets,
    )
    assert rc == lib.KMSENV_OK and out_offsets[n] == total
    blob = bytes(ffi.buffer(out, total))
    ivs = set()
    for i, pt in enumerate(pts):
        msg = blob[out_offsets[i] : out_offsets[i + 1]]
        off, length = _der_read(msg, 0, 0x30)
        assert off + length == len(msg)
        assert msg[off : off + len(header)] == header
        off, length = _der_read(msg, off + len(header), 0x30)
        assert off + length == len(msg)
        off, length = _der_read(msg, off, 0x04)
        iv = msg[off : off + length]
        off, length = _der_read(msg, off + 12, 0x04)
        ct = msg[off : off + length]
        off, length = _der_read(msg, off + length, 0x04)
        tag = msg[off : off + length]
        assert off + 16 == len(msg) and len(iv) == 12
        assert (ct, tag) == reference_gcm(cipher, key, iv, aad, pt)
        ivs.add(iv)
    assert len(ivs) == n

    back = ffi.new("uint8_t[]", total)
    back_offsets = ffi.new("size_t[]", n + 1)
    status = ffi.new("int[]", n)
    rc = lib.kmsenv_gcm_open_messages(
        k,
        header,
        len(header),
        _buf(aad),
        len(aad),
        n,
        out,
        out_offsets,
        back,
        total,
        back_offsets,
        status,
    )
    assert rc == lib.KMSENV_OK and list(status) == [0] * n
    assert bytes(ffi.buffer(back, back_offsets[n])) == joined

    # corrupt message 2's tag and truncate message 5: per-message statuses
    damaged = bytearray(blob)
    damaged[out_offsets[3] - 1] ^= 1
    offsets = [out_offsets[i] for i in range(n + 1)]
    damaged = damaged[: offsets[6] - 1] + damaged[offsets[6] :]
    offsets = offsets[:6] + [o - 1 for o in offsets[6:]]
    rc = lib.kmsenv_gcm_open_messages(
        k,
        header,
        len(header),
        _buf(aad),
        len(aad),
        n,
        _buf(bytes(damaged)),
        ffi.new("size_t[]", offsets),
        back,
        total,
        back_offsets,
        status,
    )
    assert rc == lib.KMSENV_E_AUTH
    want = [0] * n
    want[2], want[5] = lib.KMSENV_E_AUTH, lib.KMSENV_E_FORMAT
    assert list(status) == want
    survivors = b"".join(p for i, p in enumerate(pts) if want[i] == 0)
    assert bytes(ffi.buffer(back, back_offsets[n])) == survivors


def test_argument_errors():
    kp = ffi.new("kmsenv_key **")
    assert lib.kmsenv_key_new(AES, b"\0" * 24, 24, kp) == lib.KMSENV_E_ARG
    assert lib.kmsenv_key_new(SM4, b"\0" * 32, 32, kp) == lib.KMSENV_E_ARG
    assert lib.kmsenv_key_new(7, b"\0" * 16, 16, kp) == lib.KMSENV_E_ARG
    k = new_key(AES, os.urandom(16))
    tag = ffi.new("uint8_t[16]")
    out = ffi.new("uint8_t[32]")
    assert lib.kmsenv_gcm_seal(k, b"\0" * 12, ffi.NULL, 5, ffi.NULL, 0, out, tag) == lib.KMSENV_E_ARG
    assert lib.kmsenv_gcm_seal(k, b"\0" * 12, ffi.NULL, 0, ffi.NULL, 7, out, tag) == lib.KMSENV_E_ARG
    outlen = ffi.new("size_t *")
    rc = lib.kmsenv_legacy_encrypt(k, lib.KMSENV_MODE_CBC, b"\0" * 16, _buf(b"x" * 17), 17, out, 32, outlen)
    assert rc == lib.KMSENV_E_ARG
    assert lib.kmsenv_message_size(10, 0) == 48
    assert struct.calcsize("P") < 8 or lib.kmsenv_message_size(0, 1 << 32) == 0


@pytest.mark.parametrize("fields_len", [0, 1, 77, 78, 95, 96, 200, 223, 224, 300, 65_000])
def test_seal_message_sizes_agree_with_the_core(fields_len):
    """NativeBackend.seal_message sizes its output in Python (DER lengths of the
    ciphertext, the body and the message): across every length-octet boundary
    it must give kmsenv_sealed_size's size and the bytes of the 16-argument call."""
    from kmsenv.crypto.native import NativeBackend

    backend = NativeBackend()
    fields, auth, aad = os.urandom(fields_len), os.urandom(40), os.urandom(9)
    ivs = os.urandom(24)
    for n in (0, 1, 94, 95, 96, 127, 128, 200, 222, 223, 224, 255, 256, 65_535, 65_536, 70_000):
        pt = os.urandom(n)
        key = os.urandom(32)
        sealed = backend.seal_message("AES", bytearray(key), fields, auth, aad, pt, ivs)
        assert len(sealed) == lib.kmsenv_sealed_size(len(fields), n), (fields_len, n)
        out = ffi.new("uint8_t[]", len(sealed))
        got = ffi.new("size_t *")
        rc = lib.kmsenv_seal_message_ex(
            AES,
            _buf(key),
            32,
            fields,
            len(fields),
            auth,
            len(auth),
            aad,
            len(aad),
            pt,
            n,
            ivs,
            out,
            len(sealed),
            got,
            0,
        )
        assert rc == lib.KMSENV_OK and got[0] == len(sealed) and bytes(ffi.buffer(out, got[0])) == sealed
