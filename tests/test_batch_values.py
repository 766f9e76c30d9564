"""encrypt_many / decrypt_many take any bytes-like value: what goes in is the
value's bytes, whatever its item size (a memoryview's len() counts items)."""

from __future__ import annotations

import array

import pytest

import kmsenv
from helpers import ARN_BJ, ARN_HZ, FakeKmsProvider

CTX = {"tenant": "acme"}


@pytest.fixture
def provider() -> FakeKmsProvider:
    return FakeKmsProvider(ARN_BJ, ARN_HZ)


def test_values_of_every_buffer_kind_round_trip(backend, provider) -> None:
    values = [
        memoryview(array.array("i", [1, 2, 3])),  # 3 items, 12 bytes
        b"abc",
        bytearray(b"xy"),
        memoryview(b"0123456789")[2:5],
        b"",
        memoryview(array.array("d", [0.5] * 40)),  # 320 bytes
    ]
    messages = kmsenv.encrypt_many(values, provider, encryption_context=CTX)
    expected = [bytes(v) for v in values]
    assert [kmsenv.decrypt(m, provider).plaintext for m in messages] == expected
    assert kmsenv.decrypt_many(messages, provider) == expected


def test_messages_given_as_wide_memoryviews_decrypt(backend, provider) -> None:
    values = [b"x" * 7, b"y" * 100, b""]
    messages = kmsenv.encrypt_many(values, provider, encryption_context=CTX)
    # the same bytes seen through a 2-byte item format where the length allows
    views = [memoryview(m).cast("B") if len(m) % 2 else memoryview(m).cast("H") for m in messages]
    assert kmsenv.decrypt_many(views, provider) == values


@pytest.mark.parametrize("n", [0, 1, 16, 32, 1000])
def test_random_into_fills_in_place(backend, n) -> None:
    from kmsenv.crypto import get_backend

    buf = bytearray(n)
    get_backend().random_into(buf)
    assert len(buf) == n
    if n >= 16:  # 2^-128 chance of a false failure
        assert buf != bytearray(n)
        other = bytearray(n)
        get_backend().random_into(other)
        assert other != buf


def test_encrypt_takes_a_wide_memoryview_as_its_bytes(backend, provider) -> None:
    """kmsenv.encrypt of an array('i') view: all 12 bytes, not 3 (its len());
    the native backend used to seal the first len() bytes only."""
    wide = memoryview(array.array("i", [1, 2, 3]))
    strided = memoryview(b"0123456789")[::2]  # not contiguous: copied
    matrix = memoryview(bytearray(range(12))).cast("B", (3, 4))  # 2-D, itemsize 1
    for value in (wide, strided, matrix):
        message = kmsenv.encrypt(value, provider, encryption_context=CTX).ciphertext
        assert kmsenv.decrypt(message, provider).plaintext == value.tobytes()
