"""Streams through LocalKms + KmsKeyProvider: multi-region framed messages
and a Java-layout stream, decrypted in either region."""

from __future__ import annotations

import io
import os

import pytest

import kmsenv
from kmsenv.exceptions import AuthenticationError
from kmsenv.stream import decrypt_stream, encrypt_stream
from kms_fixtures import *  # noqa: F401,F403


@pytest.mark.parametrize("fmt", ["framed", "alibaba-stream"])
def test_multi_region_stream(kms, cmks, fmt):
    writer = kmsenv.KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
    data = os.urandom(300_000)
    out = io.BytesIO()
    r = encrypt_stream(io.BytesIO(data), out, writer, format=fmt, encryption_context={"t": "1"}, frame_size=4096)
    assert {e.key_arn for e in r.header.encrypted_data_keys} == {cmks.hz, cmks.bj}
    for reader in (kmsenv.KmsKeyProvider(cmks.bj, kms=kms), kmsenv.KmsKeyProvider(cmks.hz, kms=kms)):
        plain = io.BytesIO()
        decrypt_stream(io.BytesIO(out.getvalue()), plain, reader, expected_encryption_context={"t": "1"})
        assert plain.getvalue() == data


def test_framed_sm4_and_tamper(kms, cmks):
    provider = kmsenv.KmsKeyProvider(cmks.sm4, kms=kms, algorithm=kmsenv.Algorithm.SM4_GCM_NOPADDING_128)
    data = os.urandom(50_000)
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, provider, frame_size=1024)
    message = bytearray(out.getvalue())
    plain = io.BytesIO()
    decrypt_stream(io.BytesIO(bytes(message)), plain, provider)
    assert plain.getvalue() == data
    message[-5] ^= 1
    with pytest.raises(AuthenticationError):
        decrypt_stream(io.BytesIO(bytes(message)), io.BytesIO(), provider)
