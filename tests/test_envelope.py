"""The envelope's shared steps (issue 14 §2, §4): one outer-layout walker,
decrypt parses once, one context and one algorithm validator, one
region-failover loop."""

from __future__ import annotations

import os
import random

import pytest

import kmsenv
from kmsenv import _envelope, engine, model
from kmsenv.crypto import get_backend
from kmsenv.exceptions import (
    ConfigurationError,
    KmsError,
    MessageFormatError,
    NoUsableKeyError,
    UnauthenticatedAlgorithmError,
    UnsupportedAlgorithmError,
)
from kmsenv.message import codec, der
from kmsenv.providers import fail_over

from helpers import FakeKmsProvider

CTX = {"tenant": "acme"}


def _message(size: int = 300, **kw) -> tuple[bytes, FakeKmsProvider]:
    p = FakeKmsProvider()
    return kmsenv.encrypt(os.urandom(size), p, encryption_context=CTX, **kw).ciphertext, p


# ---------------------------------------------------------------- the walker


def _walk(fn, data):
    try:
        return fn(data)
    except MessageFormatError:
        return "format error"


@pytest.mark.parametrize("size", [0, 1, 64, 127, 128, 300, 70000])
def test_the_fast_walk_agrees_with_the_strict_one(size):
    """On well-formed messages and on thousands of damaged ones, the byte
    arithmetic and the strict reader give the same layout or both refuse."""
    message, _ = _message(size)
    layout = der.message_layout(message)
    assert layout == der._strict_layout(message)
    assert message[layout.tag_start + layout.tag_len :] == b"" and layout.iv_len == 12 and layout.tag_len == 16
    rng = random.Random(size)
    head = len(message) if size < 1000 else 400  # damage where the lengths are
    for _ in range(3000):
        m = bytearray(message)
        for _ in range(rng.randint(1, 3)):
            m[rng.randrange(head)] = rng.choice(
                [0x00, 0x04, 0x0C, 0x10, 0x30, 0x7F, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, rng.randrange(256)]
            )
        if rng.random() < 0.3:
            m = m[: rng.randrange(len(m) + 1)]
        if rng.random() < 0.1:
            m += b"\x00"
        data = bytes(m)
        assert _walk(der.message_layout, data) == _walk(der._strict_layout, data), data.hex()


def test_the_walker_checks_every_length_of_the_layout():
    message, _ = _message(10)
    for bad in (message + b"\x00", message[:-1], b"\x30\x00", b""):
        with pytest.raises(MessageFormatError):
            der.message_layout(bad)
    body_iv_too_long = codec.encode_message(
        codec.decode_message(message)[0].encoded, codec.encode_body(bytes(65), b"", bytes(16))
    )
    with pytest.raises(MessageFormatError, match="limit of 64"):
        der.message_layout(body_iv_too_long)


def test_builders_and_walker_are_one_layout():
    header = der.header_tlv(b"\x02\x01\x01", bytes(12), bytes(16))
    body = der.body_tlv(bytes(12), b"ct", bytes(16))
    message = der.message_tlv(header, body)
    layout = der.message_layout(message)
    assert message[layout.header_start : layout.header_end] == header
    assert message[layout.ct_start : layout.ct_start + layout.ct_len] == b"ct"
    assert der.message_prefix(header, bytes(12), 2, 16) == message[: layout.ct_start]
    assert der.outer_length(len(header), 12, 2, 16) == len(message) - 2


# ---------------------------------------------------------------- decrypt parses once


@pytest.mark.parametrize("size", [10, 3 << 20])
def test_decrypt_walks_a_message_once_and_hands_the_backend_its_layout(size, backend, monkeypatch):
    message, p = _message(size)
    walks, handed = [], []
    real_walk, real_open = der.message_layout, get_backend().open_message

    def walk(buf, *rest):
        walks.append(len(buf))
        return real_walk(buf, *rest)

    def open_message(*args, **kw):
        handed.append(args[6] if len(args) > 6 else kw.get("parts"))
        return real_open(*args, **kw)

    monkeypatch.setattr(der, "message_layout", walk)
    monkeypatch.setattr(get_backend(), "open_message", open_message)
    result = kmsenv.decrypt(message, p)
    assert len(result.plaintext) == size
    assert walks == [len(message)]  # once: neither the engine nor the backend walks it again
    assert handed == [real_walk(message)]


def test_both_backends_open_with_or_without_the_callers_layout(backend):
    message, p = _message(100)
    header, layout = codec.parse_message(message)
    auth, aad = header._parts()
    key = bytes(p.decrypt_data_key(list(header.encrypted_data_keys), header.algorithm, dict(CTX)))
    be = get_backend()
    with_parts = be.open_message("AES", bytearray(key), auth, aad, message, False, layout)
    assert with_parts == be.open_message("AES", bytearray(key), auth, aad, message)
    assert with_parts == kmsenv.decrypt(message, p).plaintext
    broken = bytearray(message)
    broken[-1] ^= 1
    with pytest.raises(kmsenv.AuthenticationError) as info:
        be.open_message("AES", bytearray(key), auth, aad, bytes(broken), False, layout)
    assert not isinstance(info.value, kmsenv.HeaderAuthenticationError)


def test_a_bad_body_iv_fails_before_any_kms_call():
    message, p = _message(10)
    header = codec.decode_message(message)[0]
    odd = codec.encode_message(header.encoded, codec.encode_body(bytes(16), b"x", bytes(16)))
    before = p.decrypt_calls
    with pytest.raises(MessageFormatError, match="body IV is 16 bytes"):
        kmsenv.decrypt(odd, p)
    assert p.decrypt_calls == before


# ---------------------------------------------------------------- one validator each


class _Reader:
    def read(self, n: int = -1) -> bytes:
        return b""


class _Sink:
    def write(self, b: bytes) -> int:
        return len(b)


def test_one_context_validator():
    assert model.context_argument(None) == {}
    src = {"a": "b"}
    copy = model.context_argument(src)
    assert copy == src and copy is not src
    for bad in ([("a", "b")], "a=b", 3):
        with pytest.raises(ConfigurationError):
            model.context_argument(bad)
        with pytest.raises(ConfigurationError):
            kmsenv.encrypt(b"x", FakeKmsProvider(), encryption_context=bad)
        with pytest.raises(ConfigurationError):
            kmsenv.encrypt_stream(_Reader(), _Sink(), FakeKmsProvider(), encryption_context=bad)


def test_one_algorithm_validator_keeps_each_callers_error_type():
    """The engine has always said UnsupportedAlgorithmError for an unknown
    algorithm, the providers ConfigurationError: one validator, both types
    kept (both are ValueErrors)."""
    for bad in (99, 0, True, "AES", None):
        with pytest.raises(ConfigurationError):
            model.algorithm_argument(bad)
        with pytest.raises(UnsupportedAlgorithmError):
            model.algorithm_argument(bad, UnsupportedAlgorithmError)
    with pytest.raises(UnsupportedAlgorithmError):
        kmsenv.encrypt(b"x", FakeKmsProvider(), algorithm=99)
    assert model.algorithm_argument(9) is kmsenv.Algorithm.SM4_GCM_NOPADDING_128
    assert _envelope.choose_algorithm(object(), None) is kmsenv.Algorithm.AES_GCM_NOPADDING_256


def test_one_new_algorithm_check_keeps_each_formats_error_type():
    ctr = kmsenv.Algorithm.AES_CTR_NOPADDING_256
    with pytest.raises(UnauthenticatedAlgorithmError):
        _envelope.check_new_algorithm(ctr)
    _envelope.check_new_algorithm(ctr, allow_unauthenticated=True)
    with pytest.raises(UnsupportedAlgorithmError, match="the framed format takes GCM"):
        _envelope.check_new_algorithm(ctr, what="the framed format", error=UnsupportedAlgorithmError)
    with pytest.raises(ConfigurationError, match="a JobKey takes GCM"):
        kmsenv.JobKey.create(FakeKmsProvider(), algorithm=ctr, spec=kmsenv.WorkerSpec())


# ---------------------------------------------------------------- one failover loop


def _kms_error(retryable: bool) -> KmsError:
    return KmsError("no", code="X", retryable=retryable)


def test_fail_over_order_and_second_pass():
    """One attempt each while others remain; then the transiently failing
    ones with the full budget (attempts None), in order; the errors of all
    in candidate order when nothing works."""
    calls = []
    outcome = {"a": _kms_error(True), "b": _kms_error(False), "c": _kms_error(True)}
    errors: dict[str, BaseException] = {}

    def attempt(name, attempts, more):
        calls.append((name, attempts, more))
        errors[name] = outcome[name]
        return None

    with pytest.raises(NoUsableKeyError) as info:
        fail_over(["a", "b", "c"], str, attempt, errors, failure=lambda tried, details: f"{len(tried)}: {details}")
    assert calls == [("a", 1, True), ("b", 1, True), ("c", 1, True), ("a", None, True), ("c", None, False)]
    assert [name for name, _ in info.value.errors] == ["a", "b", "c"]
    assert str(info.value).startswith("3: a: no")


def test_fail_over_returns_the_first_success_and_a_lone_candidate_gets_the_full_budget():
    seen = []

    def attempt(name, attempts, more):
        seen.append((name, attempts))
        return f"key-{name}" if name == "b" else None

    assert fail_over(["a", "b"], str, attempt, {}) == "key-b"
    assert seen == [("a", 1), ("b", 1)]
    seen.clear()
    assert fail_over(["b"], str, attempt, {}) == "key-b"
    assert seen == [("b", None)]
    assert fail_over(["a", "b"], str, attempt, {}, first_pass=lambda: "hedged") == "hedged"


def test_engine_keeps_only_the_private_names_tests_use():
    """Old engine privates are gone (their public home is _envelope), but the
    IV pool the process-state tests reach into stays the engine's."""
    for gone in ("_generate", "_unwrap", "_Key", "_header", "_verify_header", "_context", "_algorithm"):
        assert not hasattr(engine, gone), gone
    assert callable(engine._iv_pair) and isinstance(engine._IV_POOL, list)
