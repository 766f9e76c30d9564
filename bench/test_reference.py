"""The official-SDK-style reference (bench/reference_official.py) interoperates
with kmsenv both ways, and builds the same bytes given the same inputs."""

from __future__ import annotations

import os

import pytest

import kmsenv
import reference_official as ref
from helpers import ARN_BJ, ARN_HZ, FakeKmsProvider
from kmsenv import crypto

CTX = {"tenant": "acme", "purpose": "bench", "租户": "ｆ😀"}
ALGS = [1, 2, 9]
BACKENDS = ["native", "pure"] if kmsenv.native_available() else ["pure"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    previous = crypto.get_backend().name
    crypto.set_backend(request.param)
    yield request.param
    crypto.set_backend(previous)


@pytest.fixture
def provider():
    return kmsenv.CachingProvider(FakeKmsProvider(ARN_BJ, ARN_HZ), kmsenv.DataKeyCache())


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("size", [0, 1, 64, 1000, 70000])
def test_kmsenv_decrypts_reference(backend, provider, alg, size):
    pt = os.urandom(size)
    msg = ref.encrypt(pt, provider, CTX, alg)
    assert kmsenv.decrypt(msg, provider, expected_encryption_context=CTX).plaintext == pt
    header = kmsenv.parse_header(msg)
    assert int(header.algorithm) == alg and sorted(e.key_arn for e in header.encrypted_data_keys) == sorted(
        [ARN_BJ, ARN_HZ]
    )


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("ctx", [CTX, {}])
def test_reference_decrypts_kmsenv(backend, provider, alg, ctx):
    pt = os.urandom(777)
    msg = kmsenv.encrypt(pt, provider, encryption_context=ctx, algorithm=alg).ciphertext
    assert ref.decrypt(msg, provider) == pt
    for m in kmsenv.encrypt_many([pt, b"", b"x"], provider, encryption_context=ctx, algorithm=alg):
        assert ref.decrypt(m, provider) in (pt, b"", b"x")


@pytest.mark.parametrize("alg", ALGS)
def test_same_bytes_as_kmsenv(backend, provider, alg, monkeypatch):
    """Same data key, EDKs, context and IVs: byte-identical messages (DER order,
    auth fields, header tag, body)."""
    ivs = os.urandom(24)
    monkeypatch.setattr(kmsenv.engine, "_iv_pair", lambda: ivs)
    monkeypatch.setattr(kmsenv.engine, "_iv", lambda: ivs[:12])
    pt = os.urandom(300)
    ours = kmsenv.encrypt(pt, provider, encryption_context=CTX, algorithm=alg).ciphertext
    theirs = ref.encrypt(pt, provider, CTX, alg, header_iv=ivs[:12], body_iv=ivs[12:])
    assert theirs == ours


def test_reference_rejects_tampering(provider):
    msg = bytearray(ref.encrypt(b"secret", provider, CTX))
    msg[-20] ^= 1  # inside the body ciphertext/tag
    with pytest.raises(Exception):
        ref.decrypt(bytes(msg), provider)
    with pytest.raises(kmsenv.AuthenticationError):
        kmsenv.decrypt(bytes(msg), provider)
