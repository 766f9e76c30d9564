"""kmsenv.aliyun: the official Python SDK's API on kmsenv, against LocalKms over HTTP.

The official vectors carry fake-KMS EDKs (tests/data README), so for them a
``DefaultDataKeyProvider`` subclass hands the engine ``FakeKmsProvider`` through
the documented ``data_key_provider`` hook; everything else talks to LocalKms.
"""

from __future__ import annotations

import base64
import dataclasses

import pytest

import kmsenv
from kmsenv.aliyun import (
    Algorithm,
    AliyunConfig,
    AliyunCrypto,
    CachingCryptoKeyManager,
    ContentType,
    DefaultDataKeyProvider,
    FullJitterBackoffStrategy,
    LocalDataKeyMaterialCache,
)
from kmsenv.kms import ENDPOINTS_ENV
from kmsenv.providers import KmsKeyProvider

from helpers import FakeKmsProvider
from kms_fixtures import *  # noqa: F401,F403
from kms_fixtures import BJ, HZ, REGIONS
from vectors import official_vectors

CONTEXT = {"this": "context", "can help you": "to confirm", "this data": "is your original data"}
PLAIN = b"test_plain_text"


@pytest.fixture
def config(local_kms, clean_faults, monkeypatch):
    """An AliyunConfig as the samples build it; LocalKms endpoints from the environment."""
    monkeypatch.setenv(ENDPOINTS_ENV, ",".join(f"{r}={u}" for r, u in local_kms.endpoints.items()))
    return AliyunConfig(
        local_kms.access_key_id, local_kms.access_key_secret, backoff_strategy=FullJitterBackoffStrategy(1, 5)
    )


def build_aliyun_crypto(config, cache=False, **cache_kwargs):
    client = AliyunCrypto(config)
    if cache:
        client.crypto_key_manager = CachingCryptoKeyManager(LocalDataKeyMaterialCache(**cache_kwargs), 5)
    return client


def counts(local_kms) -> dict[tuple[str, str], int]:
    return {(r, a): n for r, actions in local_kms.stats().items() for a, n in actions.items()}


class Delta:
    def __init__(self, local_kms):
        self.local_kms = local_kms
        self.start = counts(local_kms)

    def __call__(self, region: str, action: str) -> int:
        return counts(self.local_kms).get((region, action), 0) - self.start.get((region, action), 0)

    def total(self, action: str) -> int:
        return sum(self(r, action) for r in REGIONS)


def arns(material) -> set[str]:
    return {e.key_arn.decode() for e in material.encrypted_data_keys}


# ---------------------------------------------------------------- official sample flows


@pytest.mark.parametrize("cache", [False, True], ids=["no-cache", "cache"])
def test_multi_region_sample(local_kms, cmks, config, cache):
    multi_keys = [cmks.hz, cmks.bj]
    given = list(multi_keys)
    delta = Delta(local_kms)
    provider = DefaultDataKeyProvider(cmks.hz)
    provider.add_multi_cmk_id(multi_keys)
    assert multi_keys == given  # bug 21: the official SDK removes the primary from the caller's list
    client = build_aliyun_crypto(config, cache)
    cipher_text, enc_material = client.encrypt(provider, PLAIN, CONTEXT)
    assert delta(HZ, "GenerateDataKey") == 1 and delta(BJ, "Encrypt") == 1
    assert arns(enc_material) == {cmks.hz, cmks.bj}
    assert dict(enc_material.encryption_context) == CONTEXT
    assert enc_material.algorithm is Algorithm.AES_GCM_NOPADDING_256
    # The EDK text is the base64 of the blob stored in the message, as in the official material.
    header = kmsenv.parse_header(cipher_text)
    assert {base64.b64decode(e.encrypted_data_key) for e in enc_material.encrypted_data_keys} == {
        e.ciphertext_blob for e in header.encrypted_data_keys
    }
    text = base64.standard_b64encode(cipher_text).decode()
    for key_arn, region in ((cmks.hz, HZ), (cmks.bj, BJ)):
        reader = build_aliyun_crypto(config, cache)
        plain, dec_material = reader.decrypt(DefaultDataKeyProvider(key_arn), base64.standard_b64decode(text))
        assert plain == PLAIN
        assert dict(dec_material.encryption_context) == CONTEXT
        assert dec_material.cipher_header.header_auth_tag == enc_material.cipher_header.header_auth_tag
        assert delta(region, "Decrypt") == 1
    # Same region: ReEncrypt instead of Encrypt.
    same_region = DefaultDataKeyProvider(cmks.hz)
    same_region.add_multi_cmk_id([cmks.hz2])
    cipher_text2, material2 = build_aliyun_crypto(config, cache).encrypt(same_region, PLAIN, CONTEXT)
    assert delta(HZ, "ReEncrypt") == 1 and arns(material2) == {cmks.hz, cmks.hz2}
    plain, _ = build_aliyun_crypto(config, cache).decrypt(DefaultDataKeyProvider(cmks.hz2), cipher_text2)
    assert plain == PLAIN


def test_caching_sample_limits(local_kms, cmks, config):
    client = AliyunCrypto(config)
    client.crypto_key_manager = CachingCryptoKeyManager(LocalDataKeyMaterialCache(), 10)
    client.crypto_key_manager.max_encryption_bytes = 1024
    client.crypto_key_manager.max_encryption_messages = 10
    provider = DefaultDataKeyProvider(cmks.hz)
    delta = Delta(local_kms)
    messages = [client.encrypt(provider, b"My plaintext data", CONTEXT)[0] for _ in range(12)]
    assert delta(HZ, "GenerateDataKey") == 2  # 10 messages per key
    # Bytes: 400 + 400 fit in 1024, a third 400 does not.
    for _ in range(3):
        client.encrypt(provider, bytes(400), {"bytes": "test"})
    assert delta(HZ, "GenerateDataKey") == 4
    # Decrypt with caching: one KMS Decrypt per data key, not per message.
    reader = AliyunCrypto(config)
    reader.crypto_key_manager = CachingCryptoKeyManager(LocalDataKeyMaterialCache(), 10)
    for m in messages:
        assert reader.decrypt(DefaultDataKeyProvider(cmks.hz), m)[0] == b"My plaintext data"
    assert delta(HZ, "Decrypt") == 2
    # A limit changed later applies from the next message on.
    client.crypto_key_manager.max_encryption_messages = 1
    before = delta(HZ, "GenerateDataKey")
    client.encrypt(provider, b"x", CONTEXT)
    client.encrypt(provider, b"y", CONTEXT)
    assert delta(HZ, "GenerateDataKey") == before + 2


def test_caching_survival_time(local_kms, cmks, config):
    now = [0.0]
    cache = LocalDataKeyMaterialCache(clock=lambda: now[0])
    client = AliyunCrypto(config, CachingCryptoKeyManager(cache, 10))
    provider = DefaultDataKeyProvider(cmks.hz)
    delta = Delta(local_kms)
    m1, _ = client.encrypt(provider, b"1", CONTEXT)
    now[0] = 9.5
    client.encrypt(provider, b"2", CONTEXT)
    client.decrypt(provider, m1)
    assert delta(HZ, "GenerateDataKey") == 1
    now[0] = 10.0
    client.encrypt(provider, b"3", CONTEXT)
    assert delta(HZ, "GenerateDataKey") == 2
    now[0] = 19.6  # the decrypt entry from 9.5 is 10.1 s old
    client.decrypt(provider, m1)
    assert delta(HZ, "Decrypt") == 2


def test_without_caching_every_message_asks_kms(local_kms, cmks, config):
    client = AliyunCrypto(config)
    provider = DefaultDataKeyProvider(cmks.hz)
    delta = Delta(local_kms)
    m1, _ = client.encrypt(provider, PLAIN, CONTEXT)
    client.encrypt(provider, PLAIN, CONTEXT)
    client.decrypt(provider, m1)
    client.decrypt(provider, m1)
    assert delta(HZ, "GenerateDataKey") == 2 and delta(HZ, "Decrypt") == 2


# ---------------------------------------------------------------- the official SDK's cache bugs


def test_cache_keeps_providers_apart(local_kms, cmks, config):
    client = build_aliyun_crypto(config, cache=True)
    for_a, _ = client.encrypt(DefaultDataKeyProvider(cmks.hz), PLAIN, CONTEXT)
    for_b, material_b = client.encrypt(DefaultDataKeyProvider(cmks.bj), PLAIN, CONTEXT)
    assert arns(material_b) == {cmks.bj}  # the official SDK returns A's EDKs here
    assert kmsenv.decrypt(for_b, KmsKeyProvider(cmks.bj, kms=client.kms)).plaintext == PLAIN
    # Warm the decrypt cache with A, then try a provider for C without access.
    assert client.decrypt(DefaultDataKeyProvider(cmks.hz), for_a)[0] == PLAIN
    with pytest.raises(kmsenv.NoUsableKeyError):
        client.decrypt(DefaultDataKeyProvider(cmks.sh), for_a)


def test_cache_context_collision(local_kms, cmks, config):
    client = build_aliyun_crypto(config, cache=True)
    provider = DefaultDataKeyProvider(cmks.hz)
    delta = Delta(local_kms)
    _, m1 = client.encrypt(provider, PLAIN, {"ab": "c"})
    _, m2 = client.encrypt(provider, PLAIN, {"a": "bc"})
    assert delta(HZ, "GenerateDataKey") == 2
    assert dict(m2.encryption_context) == {"a": "bc"} and m1.encrypted_data_keys != m2.encrypted_data_keys


def test_lru_capacity_wipes(local_kms, cmks, config):
    cache = LocalDataKeyMaterialCache(1)
    client = AliyunCrypto(config, CachingCryptoKeyManager(cache, 60))
    provider = DefaultDataKeyProvider(cmks.hz)
    client.encrypt(provider, PLAIN, {"n": "1"})
    (buf,) = [e.key._key for e in cache.data_key_cache._entries.values()]
    client.encrypt(provider, PLAIN, {"n": "2"})
    assert buf == bytearray(len(buf)) and len(cache) == 1 and cache.stats().evictions == 1
    cache.clear()
    assert len(cache) == 0


# ---------------------------------------------------------------- interop with plain kmsenv


def test_compat_and_kmsenv_messages_interoperate(local_kms, cmks, config, backend):
    client = AliyunCrypto(config)
    provider = DefaultDataKeyProvider(cmks.hz, keys=[cmks.sh])
    compat_message, _ = client.encrypt(provider, PLAIN, CONTEXT)
    reader = KmsKeyProvider(cmks.sh, kms=client.kms)
    assert kmsenv.decrypt(compat_message, reader, expected_encryption_context=CONTEXT).plaintext == PLAIN
    native = kmsenv.encrypt(
        b"from kmsenv", KmsKeyProvider(cmks.bj, cmks.hz, kms=client.kms), encryption_context={"k": "v"}
    ).ciphertext
    plain, material = client.decrypt(DefaultDataKeyProvider(cmks.hz), native)
    assert plain == b"from kmsenv" and dict(material.encryption_context) == {"k": "v"}
    assert arns(material) == {cmks.bj, cmks.hz}


# ---------------------------------------------------------------- official vectors


class VectorProvider(DefaultDataKeyProvider):
    """The official vectors' EDKs are fake-KMS blobs: unwrap them like tests/helpers does."""

    def data_key_provider(self, kms):
        return FakeKmsProvider(*self.key_arns)


VECTORS = official_vectors()
ERRORS = {
    "error:authentication": kmsenv.AuthenticationError,
    "error:format": kmsenv.MessageFormatError,
    "error:no-usable-key": kmsenv.NoUsableKeyError,
}


def _fields(obj) -> list[bytes]:
    """Every bytes value reachable in a material object."""
    out: list[bytes] = []
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            out += _fields(getattr(obj, f.name))
    elif isinstance(obj, (set, frozenset, list, tuple)):
        for item in obj:
            out += _fields(item)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out += _fields(k) + _fields(v)
    elif isinstance(obj, (bytes, str)):
        out.append(obj.encode() if isinstance(obj, str) else obj)
    return out


@pytest.mark.parametrize("v", VECTORS, ids=[v["description"] + " " + str(v.get("tamper", "")) for v in VECTORS])
def test_official_vectors_through_the_compat_api(v):
    strict = AliyunCrypto(AliyunConfig("LTAIunused", "unused"))
    lenient = AliyunCrypto(AliyunConfig("LTAIunused", "unused"), allow_unauthenticated=True)
    key_arns = [v["decrypt_with_arn"]] if v.get("decrypt_with_arn") else v["cmk_arns"]
    provider = VectorProvider(key_arns[0], keys=key_arns[1:])
    expect = v["kmsenv_expect"]
    if expect in ("ok", "ok-unauthenticated"):
        if expect == "ok-unauthenticated":
            with pytest.raises(kmsenv.UnauthenticatedAlgorithmError):
                strict.decrypt(provider, v["message"])
        client = strict if expect == "ok" else lenient
        plain, material = client.decrypt(provider, v["message"])
        assert plain == v["plaintext"]
        assert dict(material.encryption_context) == v["encryption_context"]
        assert int(material.algorithm) == v["algorithm"]["id"]
        assert arns(material) == set(v["cmk_arns"])
        assert provider.algorithm is Algorithm.AES_GCM_NOPADDING_256  # bug 8: never set from the header
        # The plaintext data key is nowhere in the material.
        if v["data_key"]:
            assert not any(v["data_key"] in b for b in _fields(material))
            assert not any(v["data_key_b64"].encode() in b for b in _fields(material))
    else:
        with pytest.raises(ERRORS[expect]):
            lenient.decrypt(provider, v["message"])


# ---------------------------------------------------------------- providers, config, errors


def test_add_multi_cmk_id_never_mutates_and_keeps_order(cmks):
    keys = [cmks.bj, cmks.hz, cmks.sh, cmks.bj]
    keyset = {cmks.bj, cmks.hz}
    provider = DefaultDataKeyProvider(cmks.hz)
    provider.add_multi_cmk_id(keys)
    provider.add_multi_cmk_id(keyset)
    assert keys == [cmks.bj, cmks.hz, cmks.sh, cmks.bj] and keyset == {cmks.bj, cmks.hz}
    assert provider.key_arns == (cmks.hz, cmks.bj, cmks.sh)
    assert DefaultDataKeyProvider("  " + cmks.hz + " ").key_arn == cmks.hz  # trimmed as officially
    t = (cmks.sh,)
    assert DefaultDataKeyProvider(cmks.hz, keys=t).key_arns == (cmks.hz, cmks.sh)


def test_legacy_algorithms_need_opt_in(local_kms, cmks, config):
    provider = DefaultDataKeyProvider(cmks.hz, algorithm=Algorithm.AES_CTR_NOPADDING_256)
    delta = Delta(local_kms)
    with pytest.raises(kmsenv.UnauthenticatedAlgorithmError):
        AliyunCrypto(config).encrypt(provider, PLAIN)
    assert delta.total("GenerateDataKey") == 0  # refused before KMS
    lenient = AliyunCrypto(config, allow_unauthenticated=True)
    message, material = lenient.encrypt(provider, PLAIN)
    assert material.algorithm is Algorithm.AES_CTR_NOPADDING_256
    with pytest.raises(kmsenv.UnauthenticatedAlgorithmError):
        AliyunCrypto(config).decrypt(DefaultDataKeyProvider(cmks.hz), message)
    assert lenient.decrypt(DefaultDataKeyProvider(cmks.hz), message)[0] == PLAIN


def test_decrypt_does_not_change_the_provider_algorithm(local_kms, cmks, config):
    client = AliyunCrypto(config)
    message, _ = client.encrypt(DefaultDataKeyProvider(cmks.hz, algorithm=Algorithm.AES_GCM_NOPADDING_128), PLAIN)
    reader = DefaultDataKeyProvider(cmks.hz)
    client.decrypt(reader, message)
    assert reader.algorithm is Algorithm.AES_GCM_NOPADDING_256
    _, material = client.encrypt(reader, PLAIN)
    assert material.algorithm is Algorithm.AES_GCM_NOPADDING_256


def test_retries_follow_the_config(local_kms, cmks, config):
    retrying = AliyunConfig(
        local_kms.access_key_id,
        local_kms.access_key_secret,
        max_retries=2,
        backoff_strategy=FullJitterBackoffStrategy(1, 2),
    )
    client = AliyunCrypto(retrying)
    assert client.kms.max_attempts == 3
    local_kms.set_fault(HZ, throttle_rate=1.0)
    delta = Delta(local_kms)
    with pytest.raises(kmsenv.KmsError) as info:
        client.encrypt(DefaultDataKeyProvider(cmks.hz), PLAIN)
    assert info.value.code == "Rejected.Throttling"
    assert delta(HZ, "GenerateDataKey") == 3  # the official SDK never retried server errors


def test_bytes_context_is_accepted_as_utf8(local_kms, cmks, config):
    client = AliyunCrypto(config)
    _, material = client.encrypt(DefaultDataKeyProvider(cmks.hz), PLAIN, {b"k": "v", "租户": b"\xe9\x98\xbf"})
    assert dict(material.encryption_context) == {"k": "v", "租户": "阿"}


def test_bad_input_is_a_typed_error(local_kms, cmks, config):
    with pytest.raises(kmsenv.ConfigurationError):
        DefaultDataKeyProvider("alias/foo")
    with pytest.raises(kmsenv.ConfigurationError):
        DefaultDataKeyProvider(cmks.hz).add_multi_cmk_id(cmks.bj)  # a str, not a list
    with pytest.raises(kmsenv.ConfigurationError):
        DefaultDataKeyProvider(cmks.hz, algorithm=99)
    with pytest.raises(kmsenv.ConfigurationError):
        DefaultDataKeyProvider(cmks.hz, format_handle=object())
    with pytest.raises(kmsenv.ConfigurationError):
        AliyunConfig("id", None)
    with pytest.raises(kmsenv.ConfigurationError):
        AliyunConfig("id", "secret", max_retries=-1)
    with pytest.raises(kmsenv.ConfigurationError):
        LocalDataKeyMaterialCache(0)
    with pytest.raises(kmsenv.ConfigurationError):
        CachingCryptoKeyManager(LocalDataKeyMaterialCache(), -1)
    with pytest.raises(kmsenv.ConfigurationError):
        CachingCryptoKeyManager(object())
    ckm = CachingCryptoKeyManager(LocalDataKeyMaterialCache())
    with pytest.raises(kmsenv.ConfigurationError):
        ckm.max_encryption_messages = "10"
    client = AliyunCrypto(config)
    with pytest.raises(kmsenv.ConfigurationError):
        client.crypto_key_manager = "cache"
    with pytest.raises(kmsenv.ConfigurationError):
        client.encrypt(KmsKeyProvider(cmks.hz, kms=client.kms), PLAIN)
    with pytest.raises(kmsenv.ConfigurationError):
        client.encrypt(DefaultDataKeyProvider(cmks.hz), "text, not bytes")
    with pytest.raises(kmsenv.ConfigurationError):
        client.encrypt(DefaultDataKeyProvider(cmks.hz), PLAIN, {"k": 1})
    with pytest.raises(kmsenv.MessageFormatError):
        client.decrypt(DefaultDataKeyProvider(cmks.hz), b"\x30\x03garbage")
    with pytest.raises(kmsenv.ConfigurationError, match="sign_provider"):
        client.sign(DefaultDataKeyProvider(cmks.hz), PLAIN, ContentType.MESSAGE)
    with pytest.raises(kmsenv.ConfigurationError, match="sign_provider"):
        client.verify(DefaultDataKeyProvider(cmks.hz), PLAIN, b"sig", ContentType.MESSAGE)


def test_config_repr_hides_the_secret(local_kms):
    config = AliyunConfig("LTAIabc", "very-secret-value")
    assert "very-secret-value" not in repr(config)
    assert "very-secret-value" not in repr(AliyunCrypto(config))
