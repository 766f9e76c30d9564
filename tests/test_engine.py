"""encrypt / decrypt / encrypt_many / decrypt_many through a local test provider."""

from __future__ import annotations

import os

import pytest

import kmsenv
from kmsenv import Algorithm

from helpers import ARN_BJ, ARN_HZ, FakeKmsProvider

GCM = [a for a in Algorithm if a.authenticated]
LEGACY = [a for a in Algorithm if not a.authenticated]


def _pt_for(alg, n):
    # CBC without padding only takes whole blocks.
    return os.urandom(n - n % 16 if alg.info.mode == "CBC" else n)


@pytest.mark.parametrize("alg", list(Algorithm), ids=lambda a: a.name)
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1000, 70000])
def test_round_trip_every_algorithm(alg, size, backend):
    provider = FakeKmsProvider(ARN_BJ, ARN_HZ)
    pt = _pt_for(alg, size)
    ctx = {"tenant": "acme", "租户": "一"}
    legacy = not alg.authenticated
    res = kmsenv.encrypt(pt, provider, encryption_context=ctx, algorithm=alg, allow_unauthenticated=legacy)
    assert res.header.algorithm is alg
    out = kmsenv.decrypt(
        res.ciphertext, provider, allow_unauthenticated=legacy, expected_encryption_context={"tenant": "acme"}
    )
    assert out.plaintext == pt
    # each region alone can decrypt
    for arn in (ARN_BJ, ARN_HZ):
        assert kmsenv.decrypt(res.ciphertext, FakeKmsProvider(arn), allow_unauthenticated=legacy).plaintext == pt


def test_default_algorithm_and_provider_attribute(backend):
    assert kmsenv.encrypt(b"x", FakeKmsProvider()).header.algorithm is Algorithm.AES_GCM_NOPADDING_256
    p = FakeKmsProvider(algorithm=Algorithm.SM4_GCM_NOPADDING_128)
    assert kmsenv.encrypt(b"x", p).header.algorithm is Algorithm.SM4_GCM_NOPADDING_128
    assert (
        kmsenv.encrypt(b"x", p, algorithm=Algorithm.AES_GCM_NOPADDING_128).header.algorithm
        is Algorithm.AES_GCM_NOPADDING_128
    )


def test_messages_are_fresh_each_time(backend):
    p = FakeKmsProvider()
    a = kmsenv.parse_header(kmsenv.encrypt(b"same", p).ciphertext)
    b = kmsenv.parse_header(kmsenv.encrypt(b"same", p).ciphertext)
    assert a.header_iv != b.header_iv


@pytest.mark.parametrize("alg", LEGACY, ids=lambda a: a.name)
def test_legacy_algorithms_need_opt_in(alg):
    p = FakeKmsProvider()
    with pytest.raises(kmsenv.UnauthenticatedAlgorithmError):
        kmsenv.encrypt(b"x" * 16, p, algorithm=alg)
    assert p.generate_calls == 0
    msg = kmsenv.encrypt(b"x" * 16, p, algorithm=alg, allow_unauthenticated=True).ciphertext
    with pytest.raises(kmsenv.UnauthenticatedAlgorithmError):
        kmsenv.decrypt(msg, p)
    assert p.decrypt_calls == 0


def test_cbc_nopadding_rejects_partial_block(backend):
    with pytest.raises(kmsenv.ConfigurationError, match="multiple of 16"):
        kmsenv.encrypt(
            b"x" * 17, FakeKmsProvider(), algorithm=Algorithm.AES_CBC_NOPADDING_256, allow_unauthenticated=True
        )


def test_decrypt_does_not_mutate_provider(backend):
    # The official SDK sets provider.algorithm from the (untrusted) header.
    p = FakeKmsProvider(algorithm=Algorithm.AES_GCM_NOPADDING_256)
    msg = kmsenv.encrypt(b"x" * 16, p, algorithm=Algorithm.AES_CTR_NOPADDING_256, allow_unauthenticated=True).ciphertext
    kmsenv.decrypt(msg, p, allow_unauthenticated=True)
    assert p.algorithm is Algorithm.AES_GCM_NOPADDING_256
    assert kmsenv.encrypt(b"y", p).header.algorithm is Algorithm.AES_GCM_NOPADDING_256


def test_expected_context_must_be_subset(backend):
    p = FakeKmsProvider()
    msg = kmsenv.encrypt(b"x", p, encryption_context={"a": "1", "b": "2"}).ciphertext
    assert kmsenv.decrypt(msg, p, expected_encryption_context={"a": "1"}).plaintext == b"x"
    for expected in ({"a": "2"}, {"c": "1"}, {"a": "1", "b": "3"}):
        with pytest.raises(kmsenv.EncryptionContextMismatchError):
            kmsenv.decrypt(msg, p, expected_encryption_context=expected)


def test_no_usable_key(backend):
    msg = kmsenv.encrypt(b"x", FakeKmsProvider(ARN_BJ)).ciphertext
    with pytest.raises(kmsenv.NoUsableKeyError):
        kmsenv.decrypt(msg, FakeKmsProvider(ARN_HZ))


def test_provider_returning_wrong_key_is_authentication_error(backend):
    class Liar(FakeKmsProvider):
        def decrypt_data_key(self, edks, alg, ctx):
            return bytearray(os.urandom(alg.key_len))

    msg = kmsenv.encrypt(b"secret", FakeKmsProvider()).ciphertext
    with pytest.raises(kmsenv.AuthenticationError, match="header"):
        kmsenv.decrypt(msg, Liar())


def test_foreign_exceptions_from_provider_are_wrapped():
    class Broken(FakeKmsProvider):
        def generate_data_key(self, alg, ctx):
            raise RuntimeError("boom")

        def decrypt_data_key(self, edks, alg, ctx):
            raise OSError("network")

    with pytest.raises(kmsenv.KmsEnvError) as info:
        kmsenv.encrypt(b"x", Broken())
    assert isinstance(info.value.__cause__, RuntimeError)
    msg = kmsenv.encrypt(b"x", FakeKmsProvider()).ciphertext
    with pytest.raises(kmsenv.KmsEnvError):
        kmsenv.decrypt(msg, Broken())


def test_provider_returning_bad_data_key_is_rejected():
    class Short(FakeKmsProvider):
        def generate_data_key(self, alg, ctx):
            return kmsenv.DataKey(bytes(8), [kmsenv.EncryptedDataKey(ARN_BJ, b"x")])

    class Dup(FakeKmsProvider):
        def generate_data_key(self, alg, ctx):
            return kmsenv.DataKey(bytes(32), [kmsenv.EncryptedDataKey(ARN_BJ, b"x")] * 2)

    with pytest.raises(kmsenv.KmsEnvError, match="8-byte key"):
        kmsenv.encrypt(b"x", Short())
    with pytest.raises(kmsenv.ConfigurationError, match="same CMK"):
        kmsenv.encrypt(b"x", Dup())


@pytest.mark.parametrize("bad", ["text", 5, None])
def test_wrong_input_types_are_typed_errors(bad):
    with pytest.raises(kmsenv.ConfigurationError):
        kmsenv.encrypt(bad, FakeKmsProvider())
    with pytest.raises(kmsenv.ConfigurationError):
        kmsenv.decrypt(bad, FakeKmsProvider())


def test_bad_context_types():
    with pytest.raises(kmsenv.ConfigurationError):
        kmsenv.encrypt(b"x", FakeKmsProvider(), encryption_context={"a": 1})
    with pytest.raises(kmsenv.ConfigurationError):
        kmsenv.encrypt(b"x", FakeKmsProvider(), encryption_context=[("a", "b")])


@pytest.mark.parametrize("alg", GCM, ids=lambda a: a.name)
def test_every_bit_flip_is_rejected(alg, backend):
    p = FakeKmsProvider()
    msg = kmsenv.encrypt(b"attack at dawn", p, algorithm=alg, encryption_context={"k": "v"}).ciphertext
    for i in range(len(msg)):
        for bit in range(8):
            bad = bytearray(msg)
            bad[i] ^= 1 << bit
            with pytest.raises((kmsenv.AuthenticationError, kmsenv.MessageFormatError, kmsenv.NoUsableKeyError)):
                kmsenv.decrypt(bytes(bad), p)


@pytest.mark.parametrize(
    "alg", [Algorithm.AES_GCM_NOPADDING_256, Algorithm.SM4_GCM_NOPADDING_128], ids=lambda a: a.name
)
def test_every_truncation_is_a_format_error(alg, backend):
    p = FakeKmsProvider()
    msg = kmsenv.encrypt(b"attack at dawn", p, algorithm=alg).ciphertext
    for n in range(len(msg)):
        with pytest.raises(kmsenv.MessageFormatError):
            kmsenv.decrypt(msg[:n], p)


def test_no_key_material_in_reprs_or_errors(backend):
    key = bytes(range(32))
    dk = kmsenv.DataKey(key, [kmsenv.EncryptedDataKey(ARN_BJ, b"blob")])
    texts = [repr(dk), str(dk), repr(dk.encrypted_data_keys[0])]

    class Fixed(FakeKmsProvider):
        def decrypt_data_key(self, edks, alg, ctx):
            return bytearray(key)

    p = FakeKmsProvider()
    res = kmsenv.encrypt(b"top secret plaintext", p)
    texts += [repr(res), repr(res.header), repr(kmsenv.decrypt(res.ciphertext, p))]
    try:
        kmsenv.decrypt(res.ciphertext, Fixed())
    except kmsenv.AuthenticationError as exc:
        texts.append(str(exc))
        texts.append(repr(exc))
    forbidden = [key.hex(), repr(key), key.decode("latin-1"), "top secret"]
    for text in texts:
        for f in forbidden:
            assert f not in text, text


def test_data_key_wipes_and_refuses_pickling():
    import pickle

    dk = kmsenv.DataKey(b"\x01" * 32, [])
    buf = dk.plaintext
    with dk:
        pass
    assert buf == bytearray(32)
    with pytest.raises(TypeError):
        pickle.dumps(kmsenv.DataKey(b"\x01" * 32, []))


# ---------------------------------------------------------------- batches


@pytest.mark.parametrize("alg", GCM, ids=lambda a: a.name)
def test_encrypt_many_round_trip(alg, backend):
    p = FakeKmsProvider(ARN_BJ, ARN_HZ)
    values = [os.urandom(n) for n in (0, 1, 100, 127, 128, 129, 5000)] + [b"x"] * 50
    msgs = kmsenv.encrypt_many(values, p, encryption_context={"table": "users"}, algorithm=alg)
    assert p.generate_calls == 1
    assert len(msgs) == len(values)
    # each one is a complete standalone message
    for v, m in zip(values[:8], msgs[:8]):
        assert kmsenv.decrypt(m, FakeKmsProvider(ARN_HZ)).plaintext == v
    bodies = {kmsenv.message.codec.decode_message(m)[1].iv for m in msgs}
    assert len(bodies) == len(msgs)  # fresh body IV per message
    q = FakeKmsProvider(ARN_HZ)
    assert kmsenv.decrypt_many(msgs, q) == values
    assert q.decrypt_calls == 1


def test_decrypt_many_mixed_headers(backend):
    p = FakeKmsProvider()
    a = kmsenv.encrypt_many([b"a1", b"a2"], p)
    b = [kmsenv.encrypt(b"b1", p).ciphertext, kmsenv.encrypt(b"b2", p, encryption_context={"x": "y"}).ciphertext]
    c = kmsenv.encrypt_many([b"c1"], p, algorithm=Algorithm.SM4_GCM_NOPADDING_128)
    msgs = [a[0], b[0], c[0], a[1], b[1]]
    assert kmsenv.decrypt_many(msgs, p) == [b"a1", b"b1", b"c1", b"a2", b"b2"]
    assert kmsenv.decrypt_many([], p) == []


def test_decrypt_many_reports_the_failing_message(backend):
    p = FakeKmsProvider()
    msgs = kmsenv.encrypt_many([b"one", b"two", b"three"], p)
    bad = bytearray(msgs[2])
    bad[-1] ^= 1
    with pytest.raises(kmsenv.AuthenticationError, match="message 2"):
        kmsenv.decrypt_many([msgs[0], msgs[1], bytes(bad)], p)
    with pytest.raises(kmsenv.MessageFormatError, match="message 1"):
        kmsenv.decrypt_many([msgs[0], msgs[1][:-3], msgs[2]], p)
    with pytest.raises(kmsenv.MessageFormatError, match="message 1"):
        kmsenv.decrypt_many([msgs[0], msgs[1] + b"\x00", msgs[2]], p)
    with pytest.raises(kmsenv.EncryptionContextMismatchError):
        kmsenv.decrypt_many(msgs, p, expected_encryption_context={"a": "b"})


def test_encrypt_many_refuses_legacy_algorithms():
    with pytest.raises(kmsenv.UnauthenticatedAlgorithmError):
        kmsenv.encrypt_many([b"x"], FakeKmsProvider(), algorithm=Algorithm.AES_CTR_NOPADDING_256)


def test_decrypt_many_legacy_with_opt_in(backend):
    p = FakeKmsProvider()
    msgs = [
        kmsenv.encrypt(v, p, algorithm=Algorithm.AES_CBC_PKCS5_256, allow_unauthenticated=True).ciphertext
        for v in (b"a", b"b", b"c")
    ]
    with pytest.raises(kmsenv.UnauthenticatedAlgorithmError):
        kmsenv.decrypt_many(msgs, p)
    assert kmsenv.decrypt_many(msgs, p, allow_unauthenticated=True) == [b"a", b"b", b"c"]


@pytest.mark.parametrize("alg", LEGACY, ids=lambda a: a.name)
def test_decrypt_many_legacy_copies_of_one_message(alg, backend):
    """Regression: three copies of one legacy message were refused as
    'message 2: malformed message' (the legacy path opened only the first
    message of each header group and handed back the rest as strangers)."""
    p = FakeKmsProvider()
    one = kmsenv.encrypt(b"x" * 32, p, algorithm=alg, allow_unauthenticated=True).ciphertext
    other = kmsenv.encrypt(b"y" * 16, p, algorithm=alg, allow_unauthenticated=True).ciphertext
    for n in range(1, 6):
        assert kmsenv.decrypt_many([one] * n, p, allow_unauthenticated=True) == [b"x" * 32] * n
    mixed = [one, other, one, one, other, one]
    want = [b"x" * 32 if m is one else b"y" * 16 for m in mixed]
    assert kmsenv.decrypt_many(mixed, p, allow_unauthenticated=True) == want


def test_encrypted_data_keys_survive_pickling_across_processes(tmp_path):
    """EDKs cache their hash; a pickle must not carry it into a process whose
    str hashes differ (job keys travel to workers this way)."""
    import os
    import subprocess
    import sys

    src = os.path.join(os.path.dirname(kmsenv.__file__), "..")
    dump = tmp_path / "edk.pkl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    code_dump = (
        "import pickle, kmsenv; open(%r, 'wb').write(pickle.dumps("
        "[kmsenv.EncryptedDataKey('acs:kms:r:1:key/k', b'blob')]))" % str(dump)
    )
    code_load = (
        "import pickle, kmsenv; e = pickle.load(open(%r, 'rb'))[0];"
        "f = kmsenv.EncryptedDataKey('acs:kms:r:1:key/k', b'blob');"
        "assert e == f and hash(e) == hash(f) and {e: 1}[f] == 1" % str(dump)
    )
    for seed, code in (("1", code_dump), ("2", code_load)):
        out = subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONHASHSEED=seed), capture_output=True)
        assert out.returncode == 0, out.stderr.decode()


def test_decrypt_result_is_a_plain_frozen_dataclass(backend) -> None:
    """decrypt fills its DecryptResult without the dataclass __init__: it must
    be the same object one would build with it."""
    import dataclasses

    provider = FakeKmsProvider(ARN_BJ, ARN_HZ)
    result = kmsenv.decrypt(kmsenv.encrypt(b"pt", provider).ciphertext, provider)
    built = kmsenv.DecryptResult(b"pt", result.header)
    assert type(result) is kmsenv.DecryptResult and result == built and vars(result) == vars(built)
    assert [getattr(result, f.name) for f in dataclasses.fields(result)] == [b"pt", built.header]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.plaintext = b"other"  # type: ignore[misc]
