"""pytest-benchmark suites for kmsenv's building blocks.

    pytest bench/ --benchmark-only [--benchmark-group-by=group]

Not part of the normal test run (pyproject's testpaths is ``tests``). Each
benchmark runs once per available backend where a backend applies. For side by
side ratios against the peers use ``python bench/compare.py``.
"""

from __future__ import annotations

import os

import pytest

import kmsenv
import reference_official as ref
from helpers import ARN_BJ, ARN_HZ, FakeKmsProvider
from kmsenv import crypto
from kmsenv.message import codec

pytestmark = pytest.mark.bench

BACKENDS = ["native", "pure"] if kmsenv.native_available() else ["pure"]
SIZES = [64, 1024, 65536, 1 << 20]
CIPHERS = {"AES-256": ("AES", 32), "SM4": ("SM4", 16)}
CTX = {"tenant": "acme", "purpose": "bench"}


@pytest.fixture(params=BACKENDS)
def backend(request):
    previous = crypto.get_backend().name
    crypto.set_backend(request.param)
    yield crypto.get_backend()
    crypto.set_backend(previous)


@pytest.fixture(scope="module")
def provider():
    return kmsenv.CachingProvider(FakeKmsProvider(ARN_BJ, ARN_HZ), kmsenv.DataKeyCache(max_age=3600))


def _size(n: int) -> str:
    return f"{n >> 10}KiB" if n >= 1024 else f"{n}B"


# -- AEAD seal/open with a kept key (the cipher call) -------------------------------


@pytest.mark.parametrize("size", SIZES, ids=_size)
@pytest.mark.parametrize("cipher", list(CIPHERS))
def test_gcm_seal(benchmark, backend, cipher, size):
    name, klen = CIPHERS[cipher]
    key = backend.new_key(name, os.urandom(klen))
    iv, aad, pt = os.urandom(12), os.urandom(32), os.urandom(size)
    benchmark.group = f"gcm_seal {cipher} {_size(size)}"
    benchmark.extra_info["bytes"] = size
    ct, tag = benchmark(key.gcm_seal, iv, aad, pt)
    assert key.gcm_open(iv, aad, ct, tag) == pt


@pytest.mark.parametrize("size", SIZES, ids=_size)
@pytest.mark.parametrize("cipher", list(CIPHERS))
def test_gcm_open(benchmark, backend, cipher, size):
    name, klen = CIPHERS[cipher]
    key = backend.new_key(name, os.urandom(klen))
    iv, aad, pt = os.urandom(12), os.urandom(32), os.urandom(size)
    ct, tag = key.gcm_seal(iv, aad, pt)
    benchmark.group = f"gcm_open {cipher} {_size(size)}"
    benchmark.extra_info["bytes"] = size
    assert benchmark(key.gcm_open, iv, aad, ct, tag) == pt


# -- header codec (pure Python, backend-independent) ---------------------------------


def _edks():
    dk = FakeKmsProvider(ARN_BJ, ARN_HZ).generate_data_key(kmsenv.Algorithm.AES_GCM_NOPADDING_256, CTX)
    return list(dk.encrypted_data_keys)


def test_header_encode_fields_uncached(benchmark):
    """DER header fields + auth fields from scratch (memo bypassed)."""
    edks = _edks()
    benchmark.group = "header codec"
    benchmark(
        lambda: (
            codec.encode_header_fields(1, 2, edks, CTX),
            codec.auth_fields(1, 2, CTX, edks),
            codec._CTX_MEMO.clear(),
            codec._EDK_MEMO.clear(),
        )
    )


def test_header_parts_memoized(benchmark):
    edks = _edks()
    benchmark.group = "header codec"
    benchmark(codec.header_parts, 2, edks, CTX)


def test_header_decode(benchmark, provider):
    msg = kmsenv.encrypt(b"x" * 100, provider, encryption_context=CTX).ciphertext
    benchmark.group = "header codec"
    benchmark(codec.decode_message, msg)


def test_header_reference_asn1crypto(benchmark, provider):
    """For scale: the official SDK's way (asn1crypto build + dump) of the same message."""
    benchmark.group = "header codec"
    benchmark(ref.encrypt, b"x" * 100, provider, CTX)


# -- complete messages and batches ---------------------------------------------------


@pytest.mark.parametrize("size", [64, 1024], ids=_size)
def test_message_encrypt(benchmark, backend, provider, size):
    pt = os.urandom(size)
    benchmark.group = f"message encrypt {_size(size)}"
    benchmark(kmsenv.encrypt, pt, provider, encryption_context=CTX)


@pytest.mark.parametrize("size", [64, 1024], ids=_size)
def test_message_decrypt(benchmark, backend, provider, size):
    msg = kmsenv.encrypt(os.urandom(size), provider, encryption_context=CTX).ciphertext
    benchmark.group = f"message decrypt {_size(size)}"
    benchmark(kmsenv.decrypt, msg, provider)


def test_batch_encrypt_many(benchmark, backend, provider):
    fields = [os.urandom(100) for _ in range(1000)]
    benchmark.group = "batch 1000 x 100 B"
    benchmark.extra_info["messages"] = len(fields)
    out = benchmark(kmsenv.encrypt_many, fields, provider, encryption_context=CTX)
    assert len(out) == len(fields)


def test_batch_decrypt_many(benchmark, backend, provider):
    fields = [os.urandom(100) for _ in range(1000)]
    msgs = kmsenv.encrypt_many(fields, provider, encryption_context=CTX)
    benchmark.group = "batch 1000 x 100 B"
    benchmark.extra_info["messages"] = len(fields)
    assert benchmark(kmsenv.decrypt_many, msgs, provider) == fields
