"""Data-key caching (kmsenv.cache) against LocalKms over real HTTP.

KMS calls are counted with ``LocalKms.stats()``: every limit, identity and
collision property is proved by what KMS was (or was not) asked to do.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest

import kmsenv
from kmsenv.cache import HARD_MAX_MESSAGES, CachingProvider, DataKeyCache
from kmsenv.providers import KmsKeyProvider

from kms_fixtures import *  # noqa: F401,F403
from kms_fixtures import BJ, HZ

ALG = kmsenv.Algorithm.AES_GCM_NOPADDING_256


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def kms_calls(local_kms, action: str) -> int:
    return sum(counts.get(action, 0) for counts in local_kms.stats().values())


class Calls:
    """KMS calls of one action made since construction."""

    def __init__(self, local_kms, action: str):
        self.local_kms, self.action = local_kms, action
        self.start = kms_calls(local_kms, action)

    @property
    def n(self) -> int:
        return kms_calls(self.local_kms, self.action) - self.start


def edk_set(message: bytes) -> tuple:
    return kmsenv.parse_header(message).encrypted_data_keys


def entry_buffers(cache: DataKeyCache) -> list[bytearray]:
    # White-box: the cache's own key buffers, to check they are wiped.
    return [e.key._key for e in cache._entries.values()]  # the KeyCell's own buffer


# ---------------------------------------------------------------- limits


def test_encrypt_reuses_within_max_messages(local_kms, cmks, kms):
    cache = DataKeyCache(max_messages=3)
    provider = CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache)
    gen = Calls(local_kms, "GenerateDataKey")
    messages = [kmsenv.encrypt(b"m%d" % i, provider, encryption_context={"t": "1"}).ciphertext for i in range(7)]
    assert gen.n == 3  # 3 + 3 + 1 messages
    groups = Counter(edk_set(m) for m in messages)
    assert sorted(groups.values()) == [1, 3, 3]
    plain = KmsKeyProvider(cmks.hz, kms=kms)
    assert [kmsenv.decrypt(m, plain).plaintext for m in messages] == [b"m%d" % i for i in range(7)]
    s = cache.stats()
    assert (s.hits, s.misses) == (4, 3)
    assert s.evictions == 2  # each exhausted key was dropped when the next use found it full


def test_engine_wipe_does_not_touch_the_cached_key(local_kms, cmks, kms):
    cache = DataKeyCache()
    provider = CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache)
    first = kmsenv.encrypt(b"a", provider).ciphertext
    (buf,) = entry_buffers(cache)
    assert any(buf)  # the engine wiped its copy, not ours
    second = kmsenv.encrypt(b"b", provider).ciphertext
    assert edk_set(first) == edk_set(second)
    plain = KmsKeyProvider(cmks.hz, kms=kms)
    assert kmsenv.decrypt(second, plain).plaintext == b"b"


def test_byte_limit_with_plaintext_size(local_kms, cmks, kms):
    cache = DataKeyCache(max_bytes=1000)
    provider = CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache)
    gen = Calls(local_kms, "GenerateDataKey")
    keys = [provider.generate_data_key(ALG, {"x": "y"}, plaintext_size=400) for _ in range(3)]
    assert gen.n == 2  # 400 + 400 fit; 1200 would not
    assert keys[0].encrypted_data_keys == keys[1].encrypted_data_keys != keys[2].encrypted_data_keys
    assert bytes(keys[0].plaintext) == bytes(keys[1].plaintext) != bytes(keys[2].plaintext)
    # Exactly at the limit is still allowed: 400 + 600 = 1000.
    again = provider.generate_data_key(ALG, {"x": "y"}, plaintext_size=600)
    assert gen.n == 2 and again.encrypted_data_keys == keys[2].encrypted_data_keys
    for k in keys + [again]:
        k.wipe()


def test_a_single_use_above_the_byte_limit_is_never_cached(local_kms, cmks, kms):
    cache = DataKeyCache(max_bytes=100)
    provider = CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache)
    gen = Calls(local_kms, "GenerateDataKey")
    provider.generate_data_key(ALG, {}, plaintext_size=101).wipe()
    provider.generate_data_key(ALG, {}, plaintext_size=1).wipe()
    assert gen.n == 2
    assert len(cache) == 1


def test_message_count_of_a_batch_is_counted(local_kms, cmks, kms):
    cache = DataKeyCache(max_messages=10)
    provider = CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache)
    gen = Calls(local_kms, "GenerateDataKey")
    provider.generate_data_key(ALG, {}, message_count=8).wipe()
    provider.generate_data_key(ALG, {}, message_count=2).wipe()
    assert gen.n == 1
    provider.generate_data_key(ALG, {}, message_count=1).wipe()
    assert gen.n == 2


def test_hard_message_cap_overrides_settings(local_kms, cmks, kms):
    cache = DataKeyCache(max_messages=2**40)
    assert cache.max_messages == HARD_MAX_MESSAGES == 2**28
    provider = CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache, max_messages=2**50)
    gen = Calls(local_kms, "GenerateDataKey")
    provider.generate_data_key(ALG, {}, message_count=2**28 - 1).wipe()
    provider.generate_data_key(ALG, {}, message_count=1).wipe()
    assert gen.n == 1  # exactly 2**28 messages on one key
    provider.generate_data_key(ALG, {}, message_count=1).wipe()
    assert gen.n == 2
    provider.generate_data_key(ALG, {}, message_count=2**28 + 1).wipe()  # alone above the cap: bypass
    provider.generate_data_key(ALG, {}, message_count=1).wipe()
    assert gen.n == 3


def test_max_age_for_encrypt_and_decrypt(local_kms, cmks, kms):
    clock = Clock()
    cache = DataKeyCache(max_age=10.0, clock=clock)
    provider = CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache)
    gen, dec = Calls(local_kms, "GenerateDataKey"), Calls(local_kms, "Decrypt")
    m1 = kmsenv.encrypt(b"1", provider).ciphertext
    clock.now += 9.9
    m2 = kmsenv.encrypt(b"2", provider).ciphertext
    assert gen.n == 1 and edk_set(m1) == edk_set(m2)
    assert kmsenv.decrypt(m1, provider).plaintext == b"1"
    assert kmsenv.decrypt(m2, provider).plaintext == b"2"
    assert dec.n == 1  # same EDKs: one KMS Decrypt
    clock.now += 0.1  # the encrypt entry is 10 s old now
    m3 = kmsenv.encrypt(b"3", provider).ciphertext
    assert gen.n == 2 and edk_set(m3) != edk_set(m1)
    clock.now += 9.95  # the decrypt entry (made at +9.9) is 10.05 s old
    assert kmsenv.decrypt(m1, provider).plaintext == b"1"
    assert dec.n == 2


def test_max_age_zero_disables_reuse(local_kms, cmks, kms):
    cache = DataKeyCache(max_age=0)
    provider = CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache)
    gen = Calls(local_kms, "GenerateDataKey")
    kmsenv.encrypt(b"1", provider)
    kmsenv.encrypt(b"2", provider)
    assert gen.n == 2 and len(cache) == 0


def test_per_provider_limit_overrides(local_kms, cmks, kms):
    cache = DataKeyCache(max_messages=100)
    provider = CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache, max_messages=1)
    gen = Calls(local_kms, "GenerateDataKey")
    kmsenv.encrypt(b"1", provider)
    kmsenv.encrypt(b"2", provider)
    assert gen.n == 2


# ---------------------------------------------------------------- identity


def test_provider_for_b_never_gets_a_keys(local_kms, cmks, kms):
    cache = DataKeyCache()
    ctx = {"tenant": "acme"}
    for_a = CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache)
    for_b = CachingProvider(KmsKeyProvider(cmks.bj, kms=kms), cache)
    gen = Calls(local_kms, "GenerateDataKey")
    ma = kmsenv.encrypt(b"for a", for_a, encryption_context=ctx).ciphertext
    mb = kmsenv.encrypt(b"for b", for_b, encryption_context=ctx).ciphertext
    assert gen.n == 2
    assert [e.key_arn for e in edk_set(ma)] == [cmks.hz]
    assert [e.key_arn for e in edk_set(mb)] == [cmks.bj]
    assert kmsenv.decrypt(mb, KmsKeyProvider(cmks.bj, kms=kms)).plaintext == b"for b"


def test_same_cmks_share_entries_across_provider_objects(local_kms, cmks, kms):
    cache = DataKeyCache()
    gen, dec = Calls(local_kms, "GenerateDataKey"), Calls(local_kms, "Decrypt")
    m1 = kmsenv.encrypt(b"1", CachingProvider(KmsKeyProvider(cmks.hz, cmks.bj, kms=kms), cache)).ciphertext
    m2 = kmsenv.encrypt(b"2", CachingProvider(KmsKeyProvider(cmks.hz, cmks.bj, kms=kms), cache)).ciphertext
    assert gen.n == 1 and edk_set(m1) == edk_set(m2)
    # The CMK order is part of the identity: (bj, hz) is another provider.
    kmsenv.encrypt(b"3", CachingProvider(KmsKeyProvider(cmks.bj, cmks.hz, kms=kms), cache))
    assert gen.n == 2
    kmsenv.decrypt(m1, CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache))
    kmsenv.decrypt(m2, CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache))
    assert dec.n == 1


def test_provider_without_access_cannot_decrypt_from_a_warm_cache(local_kms, cmks, kms):
    cache = DataKeyCache()
    message = kmsenv.encrypt(b"secret", KmsKeyProvider(cmks.hz, kms=kms)).ciphertext
    warm = CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache)
    assert kmsenv.decrypt(message, warm).plaintext == b"secret"
    assert cache.stats().entries == 1
    dec = Calls(local_kms, "Decrypt")
    outsider = CachingProvider(KmsKeyProvider(cmks.sh, kms=kms), cache)
    with pytest.raises(kmsenv.NoUsableKeyError):
        kmsenv.decrypt(message, outsider)
    assert dec.n == 0
    # The warm entry still serves its own provider.
    assert kmsenv.decrypt(message, warm).plaintext == b"secret"
    assert dec.n == 0


def test_discovery_providers_are_kept_apart(local_kms, cmks, kms):
    cache = DataKeyCache()
    message = kmsenv.encrypt(b"hz only", KmsKeyProvider(cmks.hz, kms=kms)).ciphertext
    hz_reader = CachingProvider(KmsKeyProvider.discovery(regions=[HZ], kms=kms), cache)
    assert kmsenv.decrypt(message, hz_reader).plaintext == b"hz only"
    bj_reader = CachingProvider(KmsKeyProvider.discovery(regions=[BJ], kms=kms), cache)
    with pytest.raises(kmsenv.NoUsableKeyError):
        kmsenv.decrypt(message, bj_reader)
    # The same discovery object behind two wrappers shares its entries.
    dec = Calls(local_kms, "Decrypt")
    assert kmsenv.decrypt(message, CachingProvider(hz_reader.provider, cache)).plaintext == b"hz only"
    assert dec.n == 0


def test_context_collision_ab_c_vs_a_bc(local_kms, cmks, kms):
    cache = DataKeyCache()
    provider = CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache)
    gen = Calls(local_kms, "GenerateDataKey")
    m1 = kmsenv.encrypt(b"1", provider, encryption_context={"ab": "c"}).ciphertext
    m2 = kmsenv.encrypt(b"2", provider, encryption_context={"a": "bc"}).ciphertext
    assert gen.n == 2 and edk_set(m1) != edk_set(m2)
    assert dict(kmsenv.parse_header(m2).encryption_context) == {"a": "bc"}
    plain = KmsKeyProvider(cmks.hz, kms=kms)
    assert kmsenv.decrypt(m2, plain, expected_encryption_context={"a": "bc"}).plaintext == b"2"
    # Nor does a context that only differs by where entries split, or by extra entries.
    kmsenv.encrypt(b"3", provider, encryption_context={"a": "b", "c": ""})
    kmsenv.encrypt(b"4", provider, encryption_context={"ab": "c", "": ""})
    assert gen.n == 4


def test_algorithm_is_part_of_the_key(local_kms, cmks, kms):
    cache = DataKeyCache()
    provider = CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache)
    k256 = provider.generate_data_key(kmsenv.Algorithm.AES_GCM_NOPADDING_256, {})
    k128 = provider.generate_data_key(kmsenv.Algorithm.AES_GCM_NOPADDING_128, {})
    assert len(k256.plaintext) == 32 and len(k128.plaintext) == 16
    assert k256.encrypted_data_keys != k128.encrypted_data_keys


# ---------------------------------------------------------------- capacity, wiping


def test_lru_eviction_wipes_the_evicted_key(local_kms, cmks, kms):
    cache = DataKeyCache(capacity=2)
    provider = CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache)
    gen = Calls(local_kms, "GenerateDataKey")
    kmsenv.encrypt(b"", provider, encryption_context={"n": "1"})
    (buf1,) = entry_buffers(cache)
    kmsenv.encrypt(b"", provider, encryption_context={"n": "2"})
    kmsenv.encrypt(b"", provider, encryption_context={"n": "1"})  # touch 1: 2 is now least recent
    buf2 = entry_buffers(cache)[0]
    assert any(buf1) and any(buf2)
    kmsenv.encrypt(b"", provider, encryption_context={"n": "3"})
    assert gen.n == 3
    assert buf2 == bytearray(len(buf2)) and any(buf1)
    assert cache.stats().evictions == 1 and len(cache) == 2
    kmsenv.encrypt(b"", provider, encryption_context={"n": "1"})
    assert gen.n == 3  # still cached
    kmsenv.encrypt(b"", provider, encryption_context={"n": "2"})
    assert gen.n == 4  # evicted, so KMS again


def test_clear_wipes_everything(local_kms, cmks, kms):
    cache = DataKeyCache()
    provider = CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache)
    message = kmsenv.encrypt(b"x", provider).ciphertext
    kmsenv.decrypt(message, provider)
    buffers = entry_buffers(cache)
    assert len(buffers) == 2 and all(any(b) for b in buffers)
    cache.clear()
    assert len(cache) == 0 and all(b == bytearray(len(b)) for b in buffers)
    gen = Calls(local_kms, "GenerateDataKey")
    kmsenv.encrypt(b"y", provider)
    assert gen.n == 1


def test_failed_decrypt_is_not_cached(local_kms, cmks, kms):
    cache = DataKeyCache()
    message = kmsenv.encrypt(b"x", KmsKeyProvider(cmks.hz, kms=kms), encryption_context={"a": "1"}).ciphertext
    local_kms.disable_key(cmks.hz)
    try:
        with pytest.raises(kmsenv.NoUsableKeyError):
            kmsenv.decrypt(message, CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache))
    finally:
        local_kms.enable_key(cmks.hz)
    assert len(cache) == 0


def test_reprs_and_errors_show_no_key_material(local_kms, cmks, kms):
    cache = DataKeyCache()
    provider = CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache)
    provider.generate_data_key(ALG, {}).wipe()
    (buf,) = entry_buffers(cache)
    for text in (repr(cache), repr(provider), repr(next(iter(cache._entries.values())))):
        assert bytes(buf).hex() not in text and repr(bytes(buf)) not in text
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(cache)


# ---------------------------------------------------------------- threads


def test_concurrent_encrypt_and_decrypt_keep_consistent_counts(local_kms, cmks, kms):
    cache = DataKeyCache(max_messages=10)
    provider = CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache)
    gen = Calls(local_kms, "GenerateDataKey")
    threads_n, per_thread = 12, 20
    results: list[list[bytes]] = [[] for _ in range(threads_n)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads_n)

    def work(i: int) -> None:
        try:
            barrier.wait()
            for j in range(per_thread):
                results[i].append(kmsenv.encrypt(b"%d-%d" % (i, j), provider, encryption_context={"c": "x"}).ciphertext)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    total = threads_n * per_thread
    s = cache.stats()
    assert s.hits + s.misses == total
    assert gen.n == s.misses  # every miss is exactly one KMS data key
    groups = Counter(edk_set(m) for r in results for m in r)
    assert len(groups) == s.misses and max(groups.values()) <= 10
    assert sum(groups.values()) == total

    # Concurrent decrypts of the same messages: each data key decrypted by KMS
    # at most once per thread that raced on its first use, and all correct.
    dec = Calls(local_kms, "Decrypt")
    plain_errors: list[BaseException] = []

    def read(i: int) -> None:
        try:
            barrier.wait()
            for j, m in enumerate(results[i]):
                assert kmsenv.decrypt(m, provider).plaintext == b"%d-%d" % (i, j)
        except BaseException as e:  # pragma: no cover
            plain_errors.append(e)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not plain_errors
    assert len(groups) <= dec.n <= len(groups) * threads_n
    assert dec.n < total


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs",
    [
        {"capacity": 0},
        {"capacity": 1.5},
        {"capacity": True},
        {"max_age": -1},
        {"max_age": float("nan")},
        {"max_age": "10"},
        {"max_messages": -1},
        {"max_messages": 2.0},
        {"max_bytes": -5},
        {"clock": 3},
    ],
)
def test_bad_cache_settings_are_configuration_errors(kwargs):
    with pytest.raises(kmsenv.ConfigurationError):
        DataKeyCache(**kwargs)


def test_bad_provider_arguments_are_configuration_errors(local_kms, cmks, kms):
    cache = DataKeyCache()
    with pytest.raises(kmsenv.ConfigurationError):
        CachingProvider(object(), cache)
    with pytest.raises(kmsenv.ConfigurationError):
        CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), {})
    provider = CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache)
    with pytest.raises(kmsenv.ConfigurationError):
        CachingProvider(provider, cache)
    with pytest.raises(kmsenv.ConfigurationError):
        provider.generate_data_key(ALG, {}, plaintext_size=-1)
    with pytest.raises(kmsenv.ConfigurationError):
        provider.generate_data_key(ALG, {}, message_count=0)
    with pytest.raises(kmsenv.ConfigurationError):
        provider.generate_data_key(99, {})
    with pytest.raises(kmsenv.ConfigurationError):
        provider.decrypt_data_key(["not an edk"], ALG, {})
