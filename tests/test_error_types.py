"""Header and body authentication failures are told apart by type, on every
path (one native call, the large-message path, batches, streams), never by
their text."""

from __future__ import annotations

import io

import pytest

import kmsenv
from kmsenv import AuthenticationError, HeaderAuthenticationError
from kmsenv.message.codec import decode_message
from kmsenv.stream import alibaba_stream, framed
from kmsenv.stream._io import Source

from helpers import FakeKmsProvider

SIZES = [10, 3 << 20]  # the one-call path, and the large-message path


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 1
    return bytes(out)


def _header_iv_at(message: bytes) -> int:
    header, _ = decode_message(message)
    return message.index(header.header_iv)


@pytest.mark.parametrize("size", SIZES)
def test_one_shot_header_and_body_failures_have_their_own_types(size, backend):
    p = FakeKmsProvider()
    message = kmsenv.encrypt(b"x" * size, p, encryption_context={"a": "b"}).ciphertext
    with pytest.raises(HeaderAuthenticationError):
        kmsenv.decrypt(_flip(message, _header_iv_at(message)), p)
    with pytest.raises(AuthenticationError) as info:
        kmsenv.decrypt(_flip(message, len(message) - 1), p)  # the body tag
    assert not isinstance(info.value, HeaderAuthenticationError)
    assert "body" in str(info.value)


def test_batches_tell_header_from_body(backend):
    p = FakeKmsProvider()
    messages = kmsenv.encrypt_many([b"a", b"b"], p)
    with pytest.raises(HeaderAuthenticationError):
        kmsenv.decrypt_many([_flip(messages[0], _header_iv_at(messages[0])), messages[1]], p)
    with pytest.raises(AuthenticationError) as info:
        kmsenv.decrypt_many([messages[0], _flip(messages[1], len(messages[1]) - 1)], p)
    assert not isinstance(info.value, HeaderAuthenticationError)


@pytest.mark.parametrize("fmt", ["framed", "alibaba-stream", "alibaba"])
def test_streams_tell_header_from_body(fmt, backend):
    p = FakeKmsProvider()
    out = io.BytesIO()
    kmsenv.encrypt_stream(io.BytesIO(b"y" * 5000), out, p, format=fmt, encryption_context={"k": "vvvvvvvv"})
    data = out.getvalue()
    # A byte only the header's own check covers (KMS binds the EDKs and the
    # context): the message id (framed: the key commitment fails) or the header IV.
    if fmt == "framed":
        header_only = framed.read_header(Source(io.BytesIO(data))).message_id
    elif fmt == "alibaba-stream":
        header_only = alibaba_stream.read_header(Source(io.BytesIO(data)), 16)[0].header_iv
    else:
        header_only = decode_message(data)[0].header_iv
    at = data.index(header_only) + 3
    with pytest.raises(HeaderAuthenticationError):
        kmsenv.decrypt_stream(io.BytesIO(_flip(data, at)), io.BytesIO(), p)
    with pytest.raises(AuthenticationError) as info:
        kmsenv.decrypt_stream(io.BytesIO(_flip(data, len(data) - 1)), io.BytesIO(), p)
    assert not isinstance(info.value, HeaderAuthenticationError)


def test_header_authentication_error_is_an_authentication_error():
    assert issubclass(HeaderAuthenticationError, AuthenticationError)
    assert issubclass(HeaderAuthenticationError, kmsenv.KmsEnvError)
