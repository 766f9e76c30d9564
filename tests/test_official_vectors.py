"""Every message made by Alibaba's official Python SDK behaves as kmsenv_expect says."""

from __future__ import annotations

import pytest

import kmsenv
from kmsenv.message import codec
from kmsenv.message.codec import encode_body, encode_header, encode_message

from helpers import FakeKmsProvider
from vectors import official_vectors

VECTORS = official_vectors()
POSITIVE = [v for v in VECTORS if v["category"] == "positive"]
ERRORS = {
    "error:authentication": kmsenv.AuthenticationError,
    "error:format": kmsenv.MessageFormatError,
    "error:no-usable-key": kmsenv.NoUsableKeyError,
}


def _provider(v):
    arns = [v["decrypt_with_arn"]] if v.get("decrypt_with_arn") else v["cmk_arns"]
    return FakeKmsProvider(*arns)


def test_vector_set_is_complete():
    expects = {v["kmsenv_expect"] for v in VECTORS}
    assert expects == {"ok", "ok-unauthenticated", *ERRORS}
    assert len(POSITIVE) >= 40


@pytest.mark.parametrize("v", VECTORS, ids=[v["description"] + " " + str(v.get("tamper", "")) for v in VECTORS])
def test_vector_behaves_as_expected(v, backend):
    expect = v["kmsenv_expect"]
    provider = _provider(v)
    if expect == "ok":
        result = kmsenv.decrypt(v["message"], provider)
        assert result.plaintext == v["plaintext"]
        assert dict(result.header.encryption_context) == v["encryption_context"]
        assert int(result.header.algorithm) == v["algorithm"]["id"]
    elif expect == "ok-unauthenticated":
        with pytest.raises(kmsenv.UnauthenticatedAlgorithmError):
            kmsenv.decrypt(v["message"], provider)
        assert provider.decrypt_calls == 0  # refused before any KMS call
        result = kmsenv.decrypt(v["message"], provider, allow_unauthenticated=True)
        assert result.plaintext == v["plaintext"]
    else:
        with pytest.raises(ERRORS[expect]):
            kmsenv.decrypt(v["message"], provider, allow_unauthenticated=True)


@pytest.mark.parametrize("v", POSITIVE, ids=[v["description"] for v in POSITIVE])
def test_reencoding_reproduces_official_bytes(v):
    header, body = codec.decode_message(v["message"])
    assert encode_header(header) == header.encoded
    rebuilt = encode_message(encode_header(header), encode_body(body.iv, body.ciphertext, body.auth_tag))
    assert rebuilt == v["message"]


@pytest.mark.parametrize("v", POSITIVE, ids=[v["description"] for v in POSITIVE])
def test_header_tag_recomputed_from_parts(v, backend):
    """Our auth-fields serialisation + GMAC reproduces the official header tag."""
    from kmsenv.crypto import get_backend

    header, _ = codec.decode_message(v["message"])
    key = get_backend().new_key(header.algorithm.info.cipher, v["data_key"])
    try:
        _, tag = key.gcm_seal(header.header_iv, header.auth_fields(), b"")
    finally:
        key.close()
    assert tag == header.header_auth_tag


@pytest.mark.parametrize("v", POSITIVE, ids=[v["description"] for v in POSITIVE])
def test_body_reencrypted_with_same_iv_matches(v, backend):
    """Same key, IV and context give the official SDK's exact body."""
    from kmsenv.crypto import get_backend

    header, body = codec.decode_message(v["message"])
    info = header.algorithm.info
    key = get_backend().new_key(info.cipher, v["data_key"])
    try:
        if info.authenticated:
            ct, tag = key.gcm_seal(body.iv, codec.context_bytes(header.encryption_context), v["plaintext"])
        else:
            ct, tag = key.legacy_encrypt(info.mode, body.iv, v["plaintext"]), b""
    finally:
        key.close()
    assert (ct, tag) == (body.ciphertext, body.auth_tag)
