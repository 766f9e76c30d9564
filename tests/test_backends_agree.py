"""The native and pure backends give identical bytes, and SM4 agrees with two
independent implementations (gmssl, cryptography's OpenSSL)."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kmsenv
from kmsenv import Algorithm
from kmsenv.crypto import native_available
from kmsenv.crypto.pure import PureBackend, cryptography_has_sm4_gcm
from kmsenv.crypto.sm4_gcm_fallback import Sm4Fallback

needs_native = pytest.mark.skipif(not native_available(), reason="native core not built")

settings.register_profile("kmsenv", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("kmsenv")


def _native():
    from kmsenv.crypto.native import NativeBackend

    return NativeBackend()


data = st.binary(max_size=3000)
aads = st.binary(max_size=100)


@needs_native
@given(
    alg=st.sampled_from(list(Algorithm)),
    key_seed=st.binary(min_size=32, max_size=32),
    pt=data,
    aad=aads,
    iv=st.binary(min_size=16, max_size=16),
)
def test_native_equals_pure(alg, key_seed, pt, aad, iv):
    info = alg.info
    key = key_seed[: info.key_len]
    n, p = _native().new_key(info.cipher, key), PureBackend().new_key(info.cipher, key)
    try:
        if info.authenticated:
            sealed = n.gcm_seal(iv[:12], aad, pt)
            assert sealed == p.gcm_seal(iv[:12], aad, pt)
            assert n.gcm_open(iv[:12], aad, *sealed) == pt
            assert p.gcm_open(iv[:12], aad, *sealed) == pt
        else:
            if info.mode == "CBC":
                pt = pt[: len(pt) - len(pt) % 16]
            ct = n.legacy_encrypt(info.mode, iv, pt)
            assert ct == p.legacy_encrypt(info.mode, iv, pt)
            assert n.legacy_decrypt(info.mode, iv, ct) == pt == p.legacy_decrypt(info.mode, iv, ct)
    finally:
        n.close()
        p.close()


@needs_native
@given(
    alg=st.sampled_from([a for a in Algorithm if a.authenticated]),
    values=st.lists(st.binary(max_size=300), max_size=20),
    ctx=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)
def test_whole_messages_cross_decrypt(alg, values, ctx):
    """A message made with one backend opens with the other, singly and in batches."""
    from helpers import FakeKmsProvider

    from kmsenv import crypto

    p = FakeKmsProvider()
    try:
        crypto.set_backend("native")
        singles = [kmsenv.encrypt(v, p, encryption_context=ctx, algorithm=alg).ciphertext for v in values]
        batch = kmsenv.encrypt_many(values, p, encryption_context=ctx, algorithm=alg)
        crypto.set_backend("pure")
        assert [kmsenv.decrypt(m, p).plaintext for m in singles] == values
        assert kmsenv.decrypt_many(batch, p) == values
        batch2 = kmsenv.encrypt_many(values, p, encryption_context=ctx, algorithm=alg)
        crypto.set_backend("native")
        assert kmsenv.decrypt_many(batch2 + singles, p) == values + values
    finally:
        crypto.set_backend("native")


@pytest.mark.skipif(not cryptography_has_sm4_gcm(), reason="cryptography's OpenSSL lacks SM4-GCM")
@settings(max_examples=25)
@given(
    key=st.binary(min_size=16, max_size=16),
    iv=st.binary(min_size=12, max_size=12),
    pt=st.binary(max_size=200),
    aad=aads,
)
def test_sm4_gcm_gmssl_equals_cryptography(key, iv, pt, aad):
    enc = Cipher(algorithms.SM4(key), modes.GCM(iv)).encryptor()
    enc.authenticate_additional_data(aad)
    ct = enc.update(pt) + enc.finalize()
    assert Sm4Fallback(key).gcm_seal(iv, aad, pt) == (ct, enc.tag)


@settings(max_examples=25)
@given(
    key=st.binary(min_size=16, max_size=16),
    iv=st.binary(min_size=16, max_size=16),
    blocks=st.integers(0, 8),
    mode=st.sampled_from(["CBC", "CTR"]),
)
def test_sm4_legacy_gmssl_equals_cryptography(key, iv, blocks, mode):
    pt = os.urandom(16 * blocks + (3 if mode == "CTR" else 0))
    m = modes.CBC(iv) if mode == "CBC" else modes.CTR(iv)
    enc = Cipher(algorithms.SM4(key), m).encryptor()
    ct = enc.update(pt) + enc.finalize()
    assert Sm4Fallback(key).legacy(mode, iv, pt, True) == ct
    assert Sm4Fallback(key).legacy(mode, iv, ct, False) == pt


@needs_native
@given(
    key=st.binary(min_size=16, max_size=16),
    iv=st.binary(min_size=12, max_size=12),
    pt=st.binary(max_size=200),
    aad=aads,
)
def test_native_sm4_gcm_equals_gmssl(key, iv, pt, aad):
    k = _native().new_key("SM4", key)
    try:
        assert k.gcm_seal(iv, aad, pt) == Sm4Fallback(key).gcm_seal(iv, aad, pt)
    finally:
        k.close()


@needs_native
def test_ctr_counter_wraps_all_128_bits():
    iv = b"\xff" * 16
    pt = os.urandom(64)
    for cipher, key in (("AES", os.urandom(32)), ("SM4", os.urandom(16))):
        n, p = _native().new_key(cipher, key), PureBackend().new_key(cipher, key)
        assert n.legacy_encrypt("CTR", iv, pt) == p.legacy_encrypt("CTR", iv, pt)
        n.close()
        p.close()


@pytest.mark.parametrize("size", [2**20 + 7, 3 * 2**20])
@needs_native
def test_large_inputs_agree(size):
    pt = os.urandom(size)
    for cipher, key in (("AES", os.urandom(32)), ("SM4", os.urandom(16))):
        n, p = _native().new_key(cipher, key), PureBackend().new_key(cipher, key)
        assert n.gcm_seal(b"\x01" * 12, b"aad", pt) == p.gcm_seal(b"\x01" * 12, b"aad", pt)
        n.close()
        p.close()
