"""The single-message fast path (issue 5): the shortcuts it takes must not
change bytes, errors or key hygiene.

Covered: the backends' ``wipe_key`` contract, the engine handing the data key's
buffer to the backend to zero, the header memos (last header, header fields
by their bytes, last header parts) and the CachingProvider's key-prefix and
EDK memos.
"""

from __future__ import annotations

import os

import pytest

import kmsenv
from kmsenv import Algorithm, crypto
from kmsenv.cache import CachingProvider, DataKeyCache
from kmsenv.message import codec

from helpers import ARN_BJ, ARN_HZ, FakeKmsProvider

CTX = {"purpose": "fastpath", "tenant": "t-1"}
AES = Algorithm.AES_GCM_NOPADDING_256


class FixedKey:
    """One data key, handed out as a new DataKey each time (the same EDK objects)."""

    def __init__(self, *arns: str, algorithm: Algorithm = AES) -> None:
        dk = FakeKmsProvider(*(arns or (ARN_BJ,))).generate_data_key(algorithm, CTX)
        self.key = bytes(dk.plaintext)
        self.edks = list(dk.encrypted_data_keys)
        self.handed: list[bytearray] = []  # every key buffer given to the engine
        dk.wipe()

    def generate_data_key(self, algorithm, encryption_context):
        dk = kmsenv.DataKey(self.key, self.edks)
        self.handed.append(dk.plaintext)
        return dk

    def decrypt_data_key(self, encrypted_data_keys, algorithm, encryption_context):
        buf = bytearray(self.key)
        self.handed.append(buf)
        return buf


def _all_wiped(buffers: list[bytearray], size: int = 32) -> bool:
    return all(len(b) == size and not any(b) for b in buffers)


# ---------------------------------------------------------------- key hygiene


def test_data_key_buffers_are_zeroed_by_the_one_call_paths(backend):
    p = FixedKey()
    msgs = [kmsenv.encrypt(os.urandom(n), p, encryption_context=CTX).ciphertext for n in (0, 1, 1024)]
    for m in msgs:
        kmsenv.decrypt(m, p)
    assert len(p.handed) == 6 and _all_wiped(p.handed)


def test_key_is_zeroed_when_the_message_fails(backend):
    p = FixedKey()
    msg = kmsenv.encrypt(b"secret", p, encryption_context=CTX).ciphertext
    body_flip = msg[:-1] + bytes((msg[-1] ^ 1,))
    header = codec.message_header(msg)
    at = msg.index(header.header_auth_tag)
    header_flip = msg[:at] + bytes((msg[at] ^ 1,)) + msg[at + 1 :]
    with pytest.raises(kmsenv.AuthenticationError, match="body"):
        kmsenv.decrypt(body_flip, p)
    with pytest.raises(kmsenv.AuthenticationError, match="header"):
        kmsenv.decrypt(header_flip, p)
    assert len(p.handed) == 3 and _all_wiped(p.handed)


def test_key_is_zeroed_when_sealing_raises_before_the_core(backend):
    """A failure inside the backend before its C call still leaves no key."""
    p = FixedKey()

    class NotBytes:  # fails inside the backend, before any cipher work
        def __len__(self):
            raise ValueError("boom")

        def __bytes__(self):
            raise ValueError("boom")

    with pytest.raises(kmsenv.ConfigurationError):
        kmsenv.encrypt(b"x", p, encryption_context={"k": "\ud800"})  # bad context: before the provider
    assert p.handed == []
    backend_obj = crypto.get_backend()
    key = bytearray(os.urandom(32))
    fields, auth, aad = codec.header_parts(AES, p.edks, CTX)
    with pytest.raises((ValueError, TypeError)):
        backend_obj.seal_message("AES", key, fields, auth, aad, NotBytes(), os.urandom(24), True)
    assert _all_wiped([key])


@pytest.mark.parametrize("wipe_key", [False, True])
def test_backend_wipe_key_flag(backend, wipe_key):
    p = FixedKey()
    fields, auth, aad = codec.header_parts(AES, p.edks, CTX)
    ivs = os.urandom(24)
    key = bytearray(p.key)
    msg = crypto.get_backend().seal_message("AES", key, fields, auth, aad, b"hello", ivs, wipe_key)
    assert (not any(key)) is wipe_key and len(key) == 32
    key = bytearray(p.key)
    header = codec.message_header(msg)
    pt = crypto.get_backend().open_message("AES", key, header.auth_fields(), header.context_bytes(), msg, wipe_key)
    assert pt == b"hello"
    assert (not any(key)) is wipe_key and len(key) == 32


def test_backends_make_the_same_bytes_and_open_each_other():
    if not kmsenv.native_available():
        pytest.skip("needs the native core")
    p = FixedKey(ARN_BJ, ARN_HZ)
    fields, auth, aad = codec.header_parts(AES, p.edks, CTX)
    sizes = [0, 1, 15, 16, 127, 128, 255, 256, 1024, 65535, 65536, 70000]
    previous = crypto.get_backend().name
    try:
        for n in sizes:
            pt, ivs = os.urandom(n), os.urandom(24)
            out = {}
            for name in ("native", "pure"):
                crypto.set_backend(name)
                out[name] = crypto.get_backend().seal_message("AES", bytearray(p.key), fields, auth, aad, pt, ivs, True)
            assert out["native"] == out["pure"], n
            for name in ("native", "pure"):
                crypto.set_backend(name)
                assert kmsenv.decrypt(out["native"], p).plaintext == pt
                assert type(kmsenv.decrypt(out["native"], p).plaintext) is bytes
    finally:
        crypto.set_backend(previous)


# ---------------------------------------------------------------- header memos


def test_headers_of_distinct_messages_share_fields_but_keep_their_iv_and_tag(backend):
    p = FixedKey(ARN_BJ, ARN_HZ)
    msgs = [kmsenv.encrypt(b"m%d" % i, p, encryption_context=CTX).ciphertext for i in range(4)]
    headers = [codec.message_header(m) for m in msgs]
    for m, h in zip(msgs, headers):
        strict = codec.decode_message(m)[0]
        assert h == strict  # every field, IV and tag included
        assert h.encoded == strict.encoded
        assert h.auth_fields() == strict.auth_fields() and h.context_bytes() == strict.context_bytes()
    assert len({h.header_iv for h in headers}) == 4
    assert len({h.header_auth_tag for h in headers}) == 4
    for i, m in enumerate(msgs):
        assert kmsenv.decrypt(m, p).plaintext == b"m%d" % i


def test_last_header_shortcut_still_checks_framing_and_limits(backend):
    p = FixedKey(ARN_BJ, ARN_HZ)
    msg = kmsenv.encrypt(b"payload", p, encryption_context=CTX).ciphertext
    kmsenv.decrypt(msg, p)  # now the last header
    with pytest.raises(kmsenv.MessageFormatError):
        kmsenv.decrypt(msg + b"\x00", p)  # trailing byte: outer length no longer fits
    with pytest.raises(kmsenv.MessageFormatError):
        kmsenv.decrypt(msg[:-1], p)
    with pytest.raises(kmsenv.MessageFormatError, match="more than 1 encrypted data keys"):
        kmsenv.decrypt(msg, p, max_encrypted_data_keys=1)
    assert kmsenv.decrypt(msg, p, max_encrypted_data_keys=2).plaintext == b"payload"
    # Same header, another (malformed) body: the header is reused, the C core rejects the body.
    h = codec.message_header(msg)
    body = bytes.fromhex("300a") + bytes.fromhex("0408") + bytes(8)
    inner = h.encoded + body
    bad = bytes((0x30,)) + codec.der.encode_length(len(inner)) + inner
    with pytest.raises(kmsenv.MessageFormatError):
        kmsenv.decrypt(bad, p)


def test_fields_memo_falls_back_to_the_strict_reader_for_odd_tails(backend):
    p = FixedKey()
    msg = kmsenv.encrypt(b"x", p, encryption_context=CTX).ciphertext
    codec.message_header(msg)  # remember the fields
    h = codec.message_header(msg)
    # A header whose tag is 15 bytes: same fields, a different tail.
    content = h.encoded[2 if h.encoded[1] < 0x80 else 2 + (h.encoded[1] & 0x7F) :]
    fields, iv = content[:-32], content[-30:-18]
    odd = fields + b"\x04\x0c" + iv + b"\x04\x0f" + bytes(15)
    odd_header = codec.der.tlv(codec.der.SEQUENCE, odd)
    body = codec.encode_body(bytes(12), b"", bytes(16))
    odd_msg = codec.encode_message(odd_header, body)
    with pytest.raises(kmsenv.MessageFormatError, match="header auth tag is 15 bytes"):
        codec.message_header(odd_msg)


def test_header_parts_follow_their_inputs():
    a, b = FixedKey(ARN_BJ), FixedKey(ARN_BJ)
    pa = codec.header_parts(AES, a.edks, CTX)
    pb = codec.header_parts(AES, b.edks, CTX)
    assert pa != pb  # different data keys, different EDKs
    assert codec.header_parts(AES, a.edks, CTX) == pa
    assert codec.header_parts(AES, a.edks, {"purpose": "other"}) != pa
    assert codec.header_parts(Algorithm.AES_GCM_NOPADDING_128, a.edks, CTX)[0] != pa[0]
    with pytest.raises(kmsenv.ConfigurationError):
        codec.header_parts(AES, [], CTX)


def test_last_context_and_header_memos_compare_by_value_not_identity():
    # The last-context and last-header memos compare the inputs (dict and
    # list equality) against private copies: a caller's later change to its
    # own dict or list must never reach a memoized answer.
    a = FixedKey(ARN_BJ, ARN_HZ)
    ctx = dict(CTX)
    first = codec.header_parts(AES, a.edks, ctx)
    assert codec.context_parts(ctx) == codec.context_parts(dict(CTX))
    ctx["purpose"] = "changed in place"
    changed = codec.header_parts(AES, a.edks, ctx)
    assert changed != first and changed[2] == codec.context_parts({**CTX, "purpose": "changed in place"})[0]
    assert codec.context_parts(ctx)[0] == changed[2]
    # the same entries in another order: the same bytes (section 4 sorts them)
    backwards = dict(reversed(list(CTX.items())))
    assert codec.header_parts(AES, a.edks, backwards) == first
    assert codec.context_parts(backwards) == codec.context_parts(CTX)
    # EDKs as a tuple, or a changed list: looked up, not taken from the last entry
    assert codec.header_parts(AES, tuple(a.edks), CTX) == first
    edks = list(a.edks)
    assert codec.header_parts(AES, edks, CTX) == first
    edks.pop()  # the caller's list changed: another header
    assert codec.header_parts(AES, edks, CTX) != first
    assert codec.header_parts(AES, a.edks, CTX) == first
    # an invalid context is refused even right after a valid one
    codec.context_parts(CTX)
    with pytest.raises(kmsenv.ConfigurationError):
        codec.context_parts({"purpose": 1})
    with pytest.raises(kmsenv.ConfigurationError):
        codec.header_parts(AES, a.edks, {**CTX, "n": 1})


# ---------------------------------------------------------------- caching provider


def test_caching_provider_sees_a_context_changed_in_place(backend):
    # Its last cache-key prefix is found by comparing contexts with a private
    # copy: the caller's dict, changed after use, is another context.
    cp = CachingProvider(FakeKmsProvider(ARN_BJ), DataKeyCache(max_age=3600))
    ctx = dict(CTX)
    m1 = kmsenv.encrypt(b"a", cp, encryption_context=ctx, algorithm=AES).ciphertext
    ctx["purpose"] = "changed in place"
    m2 = kmsenv.encrypt(b"b", cp, encryption_context=ctx, algorithm=AES).ciphertext
    h1, h2 = codec.message_header(m1), codec.message_header(m2)
    assert dict(h2.encryption_context) == ctx and h1.encrypted_data_keys != h2.encrypted_data_keys
    m3 = kmsenv.encrypt(b"c", cp, encryption_context=dict(CTX), algorithm=AES).ciphertext
    assert codec.message_header(m3).encrypted_data_keys == h1.encrypted_data_keys  # the first entry, still cached


def test_caching_provider_keys_follow_algorithm_and_context(backend):
    inner = FakeKmsProvider(ARN_BJ)
    cp = CachingProvider(inner, DataKeyCache(max_age=3600))
    for ctx in (CTX, {"purpose": "other"}, {}):
        for alg in (AES, Algorithm.AES_GCM_NOPADDING_128):
            m1 = kmsenv.encrypt(b"a", cp, encryption_context=ctx, algorithm=alg).ciphertext
            m2 = kmsenv.encrypt(b"b", cp, encryption_context=ctx, algorithm=alg).ciphertext
            h1, h2 = codec.message_header(m1), codec.message_header(m2)
            assert h1.encrypted_data_keys == h2.encrypted_data_keys  # one cached key per (alg, ctx)
            assert kmsenv.decrypt(m1, cp).plaintext == b"a"
            assert kmsenv.decrypt(m2, cp).plaintext == b"b"
    assert inner.generate_calls == 6
    assert inner.decrypt_calls == 6


def test_caching_provider_edk_memo_ignores_lookalikes():
    class LookAlike:
        def __init__(self, edk):
            self.key_arn, self.ciphertext_blob = edk.key_arn, b"other blob"

        def __eq__(self, other):
            return True

        __hash__ = object.__hash__

    from kmsenv.cache import _edks_part

    p = FixedKey()
    real = _edks_part(p.edks)
    assert _edks_part(p.edks) == real
    assert _edks_part([LookAlike(e) for e in p.edks]) != real


def test_a_data_key_subclass_handing_out_another_buffer_is_still_wiped(backend):
    own: list[bytearray] = []

    class CopyingDataKey(kmsenv.DataKey):
        __slots__ = ()

        @property
        def plaintext(self) -> bytearray:
            own.append(self._key)
            return bytearray(self._key)  # not its own buffer

    p = FixedKey()

    class Provider:
        def generate_data_key(self, algorithm, ctx):
            return CopyingDataKey(p.key, p.edks)

        def decrypt_data_key(self, *a):
            return bytearray(p.key)

    msg = kmsenv.encrypt(b"abc", Provider(), encryption_context=CTX).ciphertext
    assert kmsenv.decrypt(msg, Provider()).plaintext == b"abc"
    assert own and _all_wiped(own)
