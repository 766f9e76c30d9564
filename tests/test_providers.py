"""kmsenv.providers.KmsKeyProvider against LocalKms over real HTTP."""

from __future__ import annotations

import logging
import threading
import time

import pytest

import kmsenv

from kms_fixtures import *  # noqa: F401,F403
from kms_fixtures import BJ, HZ, SH
from kmsenv.algorithms import Algorithm
from kmsenv.arn import Arn
from kmsenv.exceptions import ConfigurationError, KmsError, NoUsableKeyError
from kmsenv.kms import Kms
from kmsenv.model import DataKeyProvider, EncryptedDataKey
from kmsenv.providers import KmsKeyProvider

AES256 = Algorithm.AES_GCM_NOPADDING_256
CTX = {"tenant": "acme", "order": "42"}


def by_arn(data_key):
    return {edk.key_arn: edk for edk in data_key.encrypted_data_keys}


class RecordingKms(Kms):
    """A real Kms (real HTTP) that remembers the data-key buffers it handed out."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.handed_out = []

    def generate_data_key(self, *args, **kwargs):
        plaintext, blob = super().generate_data_key(*args, **kwargs)
        self.handed_out.append(plaintext)
        return plaintext, blob


# ---------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------


class TestConstruction:
    def test_attributes_and_repr(self, kms, cmks):
        p = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
        assert isinstance(p, DataKeyProvider)
        assert p.key_arns == (cmks.hz, cmks.bj)
        assert p.algorithm is AES256
        assert not p.is_discovery
        assert repr(p) == f"KmsKeyProvider({cmks.hz!r}, {cmks.bj!r}, algorithm=AES_GCM_NOPADDING_256)"
        assert KmsKeyProvider(cmks.sm4, kms=kms, algorithm=Algorithm.SM4_GCM_NOPADDING_128).algorithm is (
            Algorithm.SM4_GCM_NOPADDING_128
        )

    @pytest.mark.parametrize(
        "arns, fragment",
        [
            ((), "at least one"),
            (("acs:kms:cn-hangzhou:1:key/a", "acs:kms:cn-hangzhou:1:key/a"), "listed twice"),
            (("acs:kms:cn-hangzhou:1:key/a", "alias/x"), "alias"),
            (("acs:kms:cn-hangzhou:1:alias/x",), "alias"),
            (("acs:kms:cn-hangzhou:1:key/a ",), "whitespace"),
            (("acs:kms:cn-hangzhou:key/a",), "5 colon-separated"),
            (("key-id-only",), "bare key ID"),
            ((["acs:kms:cn-hangzhou:1:key/a"],), "separate arguments"),
            ((None,), "must be a str"),
        ],
    )
    def test_errors(self, kms, arns, fragment):
        with pytest.raises(ConfigurationError) as info:
            KmsKeyProvider(*arns, kms=kms)
        assert fragment in str(info.value)

    def test_bad_algorithm_and_kms(self, kms, cmks):
        with pytest.raises(ConfigurationError):
            KmsKeyProvider(cmks.hz, kms=kms, algorithm=99)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError):
            KmsKeyProvider(cmks.hz, kms=object())

    def test_default_kms_from_environment(self, monkeypatch, local_kms, cmks, clean_faults):
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", local_kms.access_key_id)
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", local_kms.access_key_secret)
        monkeypatch.setenv("KMSENV_KMS_ENDPOINTS", ",".join(f"{r}={u}" for r, u in local_kms.endpoints.items()))
        p = KmsKeyProvider(cmks.hz, cmks.bj)
        assert isinstance(p.kms, Kms)
        dk = p.generate_data_key(AES256, CTX)
        assert p.decrypt_data_key(dk.encrypted_data_keys, AES256, CTX) == dk.plaintext

    def test_discovery_arguments(self, kms):
        with pytest.raises(ConfigurationError):
            KmsKeyProvider.discovery(regions="cn-hangzhou", kms=kms)  # a str, not a list
        with pytest.raises(ConfigurationError):
            KmsKeyProvider.discovery(account_ids=[], kms=kms)
        with pytest.raises(ConfigurationError):
            KmsKeyProvider.discovery(account_ids=[""], kms=kms)
        p = KmsKeyProvider.discovery(regions=[HZ], account_ids=["123"], kms=kms)
        assert p.is_discovery and p.key_arns == ()
        assert "discovery" in repr(p)


# ---------------------------------------------------------------------------
# Encrypt / decrypt
# ---------------------------------------------------------------------------


class TestRoundTrip:
    def test_single_cmk(self, kms, cmks):
        p = KmsKeyProvider(cmks.hz, kms=kms)
        dk = p.generate_data_key(AES256, CTX)
        assert len(dk.plaintext) == 32 and [e.key_arn for e in dk.encrypted_data_keys] == [cmks.hz]
        key = p.decrypt_data_key(dk.encrypted_data_keys, AES256, CTX)
        assert key == dk.plaintext and isinstance(key, bytearray)
        assert "redacted" in repr(dk) and bytes(dk.plaintext).hex() not in repr(dk)

    @pytest.mark.parametrize("names", [("hz", "bj"), ("hz", "bj", "sh"), ("sh", "hz", "hz2", "bj")])
    def test_multi_region_each_edk_alone(self, kms, cmks, names):
        arns = [getattr(cmks, n) for n in names]
        p = KmsKeyProvider(*arns, kms=kms)
        dk = p.generate_data_key(AES256, CTX)
        assert [e.key_arn for e in dk.encrypted_data_keys] == arns  # provider's order
        for edk in dk.encrypted_data_keys:
            # one region alone can unwrap its own EDK
            single = KmsKeyProvider(edk.key_arn, kms=kms)
            assert single.decrypt_data_key([edk], AES256, CTX) == dk.plaintext
        assert p.decrypt_data_key(dk.encrypted_data_keys, AES256, CTX) == dk.plaintext

    def test_call_pattern(self, kms, cmks, local_kms):
        p = KmsKeyProvider(cmks.hz, cmks.bj, cmks.sh, cmks.hz2, kms=kms)
        local_kms.reset_stats()
        p.generate_data_key(AES256, CTX)
        assert local_kms.stats() == {
            HZ: {"GenerateDataKey": 1, "ReEncrypt": 1},
            BJ: {"Encrypt": 1},
            SH: {"Encrypt": 1},
        }

    def test_aes128(self, kms, cmks, local_kms):
        alg = Algorithm.AES_GCM_NOPADDING_128
        p = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms, algorithm=alg)
        dk = p.generate_data_key(alg, {})
        assert len(dk.plaintext) == 16
        assert p.decrypt_data_key(dk.encrypted_data_keys, alg, {}) == dk.plaintext

    def test_sm4(self, kms, cmks, local_kms):
        alg = Algorithm.SM4_GCM_NOPADDING_128
        p = KmsKeyProvider(cmks.sm4, cmks.sm4_bj, kms=kms, algorithm=alg)
        local_kms.reset_stats()
        dk = p.generate_data_key(alg, CTX)
        assert len(dk.plaintext) == 16
        assert local_kms.stats() == {HZ: {"GenerateDataKey": 1}, BJ: {"Encrypt": 1}, SH: {}}
        for edk in dk.encrypted_data_keys:
            assert KmsKeyProvider(edk.key_arn, kms=kms, algorithm=alg).decrypt_data_key([edk], alg, CTX) == (
                dk.plaintext
            )

    def test_key_length_checked_on_decrypt(self, kms, cmks):
        p = KmsKeyProvider(cmks.hz, kms=kms)
        dk = p.generate_data_key(AES256, {})
        with pytest.raises(NoUsableKeyError) as info:
            p.decrypt_data_key(dk.encrypted_data_keys, Algorithm.AES_GCM_NOPADDING_128, {})
        assert [e.code for _, e in info.value.errors] == ["InvalidDataKeyLength"]

    def test_context_mismatch(self, kms, cmks):
        p = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
        dk = p.generate_data_key(AES256, CTX)
        with pytest.raises(NoUsableKeyError) as info:
            p.decrypt_data_key(dk.encrypted_data_keys, AES256, {"tenant": "other"})
        assert [(arn, e.code) for arn, e in info.value.errors] == [
            (cmks.hz, "InvalidParameter"),
            (cmks.bj, "InvalidParameter"),
        ]

    def test_edk_claiming_another_cmk(self, kms, cmks):
        # an EDK labelled with hz2's ARN but wrapped under hz must not be accepted as hz2's
        dk = KmsKeyProvider(cmks.hz, kms=kms).generate_data_key(AES256, {})
        forged = EncryptedDataKey(cmks.hz2, dk.encrypted_data_keys[0].ciphertext_blob)
        with pytest.raises(NoUsableKeyError) as info:
            KmsKeyProvider(cmks.hz2, kms=kms).decrypt_data_key([forged], AES256, {})
        assert info.value.errors[0][1].code == "KeyIdMismatch"

    def test_provider_does_not_mutate(self, kms, cmks):
        p = KmsKeyProvider(cmks.hz, kms=kms)
        dk = p.generate_data_key(AES256, {})
        p.decrypt_data_key(dk.encrypted_data_keys, Algorithm.AES_GCM_NOPADDING_256, {})
        assert p.algorithm is AES256 and p.key_arns == (cmks.hz,)
        assert not any(isinstance(v, (bytes, bytearray)) for v in vars(p).values())


# ---------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------


class TestConcurrency:
    def test_other_regions_wrapped_concurrently(self, kms, cmks, local_kms):
        p = KmsKeyProvider(cmks.hz, cmks.bj, cmks.sh, kms=kms)
        p.generate_data_key(AES256, {})  # warm up clients and connections
        local_kms.set_fault(BJ, latency_ms=200)
        local_kms.set_fault(SH, latency_ms=200)
        started = time.perf_counter()
        dk = p.generate_data_key(AES256, CTX)
        elapsed = time.perf_counter() - started
        assert len(dk.encrypted_data_keys) == 3
        # sequential Encrypt calls would need >= 400 ms
        assert elapsed < 0.38, f"generate_data_key took {elapsed * 1000:.0f} ms"

    def test_shared_provider_from_many_threads(self, kms, cmks):
        p = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
        errors = []

        def work():
            try:
                for _ in range(4):
                    dk = p.generate_data_key(AES256, CTX)
                    assert p.decrypt_data_key(dk.encrypted_data_keys, AES256, CTX) == dk.plaintext
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors

    # ---------------------------------------------------------------------------
    # Failures
    # ---------------------------------------------------------------------------

    def test_called_from_the_shared_pool(self, kms, cmks):
        from kmsenv.providers import _shared_pool

        p = KmsKeyProvider(cmks.hz, cmks.bj, cmks.sh, kms=kms)
        futures = [_shared_pool().submit(p.generate_data_key, AES256, {}) for _ in range(40)]
        for f in futures:
            assert len(f.result(timeout=30).encrypted_data_keys) == 3


class TestEncryptFailures:
    def test_secondary_region_down_fails_and_wipes(self, make_kms, local_kms, cmks):
        k = RecordingKms(
            access_key_id=local_kms.access_key_id,
            access_key_secret=local_kms.access_key_secret,
            endpoints=local_kms.endpoints,
            backoff_base=0.001,
            backoff_max=0.002,
            max_attempts=2,
        )
        p = KmsKeyProvider(cmks.hz, cmks.bj, cmks.sh, kms=k)
        local_kms.set_fault(SH, down=True)
        with pytest.raises(KmsError) as info:
            p.generate_data_key(AES256, CTX)
        assert info.value.region == SH and info.value.code == "ConnectionError"
        assert cmks.sh in str(info.value)
        assert len(k.handed_out) == 1 and k.handed_out[0] == bytearray(32)  # wiped

    def test_success_wipes_the_working_copy(self, local_kms, cmks, clean_faults):
        k = RecordingKms(
            access_key_id=local_kms.access_key_id,
            access_key_secret=local_kms.access_key_secret,
            endpoints=local_kms.endpoints,
        )
        dk = KmsKeyProvider(cmks.hz, cmks.bj, kms=k).generate_data_key(AES256, {})
        assert dk.plaintext != bytearray(32)
        assert k.handed_out[0] == bytearray(32)

    def test_primary_failure(self, make_kms, local_kms, cmks):
        local_kms.set_fault(HZ, error_rate=1.0, error_code="InternalFailure")
        with pytest.raises(KmsError) as info:
            KmsKeyProvider(cmks.hz, cmks.bj, kms=make_kms()).generate_data_key(AES256, {})
        assert info.value.code == "InternalFailure" and info.value.region == HZ

    def test_disabled_secondary(self, kms, local_kms, cmks):
        arn = local_kms.create_key(BJ)
        local_kms.disable_key(arn)
        with pytest.raises(KmsError) as info:
            KmsKeyProvider(cmks.hz, arn, kms=kms).generate_data_key(AES256, {})
        assert info.value.code == "Rejected.Disabled" and not info.value.retryable

    def test_discovery_cannot_encrypt(self, kms):
        with pytest.raises(ConfigurationError) as info:
            KmsKeyProvider.discovery(kms=kms).generate_data_key(AES256, {})
        assert "discovery provider cannot encrypt" in str(info.value)


class TestDecryptFailover:
    @pytest.fixture
    def message(self, kms, cmks):
        dk = KmsKeyProvider(cmks.hz, cmks.bj, cmks.sh, kms=kms).generate_data_key(AES256, CTX)
        return dk.encrypted_data_keys, bytes(dk.plaintext)

    def test_provider_order_not_message_order(self, kms, cmks, local_kms, message):
        edks, key = message
        p = KmsKeyProvider(cmks.sh, cmks.bj, kms=kms)
        local_kms.reset_stats()
        assert p.decrypt_data_key(edks, AES256, CTX) == key
        assert local_kms.stats() == {HZ: {}, BJ: {}, SH: {"Decrypt": 1}}

    def test_one_region_down(self, kms, cmks, local_kms, message, caplog):
        edks, key = message
        local_kms.set_fault(HZ, down=True)
        p = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
        with caplog.at_level(logging.WARNING, logger="kmsenv"):
            assert p.decrypt_data_key(edks, AES256, CTX) == key
        warnings = [r for r in caplog.records if r.name == "kmsenv" and r.levelno == logging.WARNING]
        assert len(warnings) == 1
        text = warnings[0].getMessage()
        assert cmks.hz in text and "ConnectionError" in text and "next CMK" in text
        assert key.hex() not in caplog.text

    @pytest.mark.parametrize(
        "fault",
        [dict(throttle_rate=1.0), dict(error_rate=1.0), dict(latency_ms=1200)],
        ids=["throttled", "5xx", "timeout"],
    )
    def test_failover_on_fault(self, make_kms, cmks, local_kms, message, fault):
        edks, key = message
        local_kms.set_fault(BJ, **fault)
        p = KmsKeyProvider(cmks.bj, cmks.sh, kms=make_kms(read_timeout=0.3, max_attempts=2))
        assert p.decrypt_data_key(edks, AES256, CTX) == key

    def test_failover_on_disabled_key(self, kms, local_kms, cmks):
        hz_arn = local_kms.create_key(HZ)
        p = KmsKeyProvider(hz_arn, cmks.bj, kms=kms)
        dk = p.generate_data_key(AES256, {})
        local_kms.disable_key(hz_arn)
        assert p.decrypt_data_key(dk.encrypted_data_keys, AES256, {}) == dk.plaintext

    def test_all_regions_down(self, kms, cmks, local_kms, message):
        edks, _ = message
        for region in (HZ, BJ, SH):
            local_kms.set_fault(region, down=True)
        p = KmsKeyProvider(cmks.hz, cmks.bj, cmks.sh, kms=kms)
        with pytest.raises(NoUsableKeyError) as info:
            p.decrypt_data_key(edks, AES256, CTX)
        errors = info.value.errors
        assert [arn for arn, _ in errors] == [cmks.hz, cmks.bj, cmks.sh]
        assert [e.region for _, e in errors] == [HZ, BJ, SH]
        assert all(isinstance(e, KmsError) and e.code == "ConnectionError" for _, e in errors)
        for arn in (cmks.hz, cmks.bj, cmks.sh):
            assert arn in str(info.value)

    def test_no_edk_for_this_provider(self, kms, cmks, local_kms, message):
        edks, _ = message
        p = KmsKeyProvider(cmks.hz2, kms=kms)
        local_kms.reset_stats()
        with pytest.raises(NoUsableKeyError) as info:
            p.decrypt_data_key(edks, AES256, CTX)
        assert info.value.errors == []
        assert cmks.hz in str(info.value) and cmks.hz2 in str(info.value)
        assert local_kms.stats() == {HZ: {}, BJ: {}, SH: {}}  # nothing tried

    def test_wrong_secret_lists_each(self, make_kms, cmks, message):
        edks, _ = message
        p = KmsKeyProvider(cmks.bj, cmks.hz, kms=make_kms(access_key_secret="nope"))
        with pytest.raises(NoUsableKeyError) as info:
            p.decrypt_data_key(edks, AES256, CTX)
        assert [e.code for _, e in info.value.errors] == ["SignatureDoesNotMatch"] * 2


class TestDiscovery:
    @pytest.fixture
    def message(self, kms, cmks):
        dk = KmsKeyProvider(cmks.bj, cmks.hz, kms=kms).generate_data_key(AES256, CTX)
        return dk.encrypted_data_keys, bytes(dk.plaintext)

    def test_allowed_account(self, kms, cmks, local_kms, message):
        edks, key = message
        account = Arn.parse(cmks.hz).account_id
        p = KmsKeyProvider.discovery(account_ids=[account], kms=kms)
        assert p.decrypt_data_key(edks, AES256, CTX) == key
        assert KmsKeyProvider.discovery(kms=kms).decrypt_data_key(edks, AES256, CTX) == key

    def test_region_filter(self, kms, cmks, local_kms, message):
        edks, key = message
        p = KmsKeyProvider.discovery(regions=[HZ], kms=kms)
        local_kms.reset_stats()
        assert p.decrypt_data_key(edks, AES256, CTX) == key
        assert local_kms.stats() == {HZ: {"Decrypt": 1}, BJ: {}, SH: {}}
        with pytest.raises(NoUsableKeyError):
            KmsKeyProvider.discovery(regions=[SH], kms=kms).decrypt_data_key(edks, AES256, CTX)

    def test_discovery_failover(self, kms, local_kms, message):
        edks, key = message
        local_kms.set_fault(BJ, down=True)
        assert KmsKeyProvider.discovery(kms=kms).decrypt_data_key(edks, AES256, CTX) == key

    def test_other_account(self, kms, local_kms, message):
        edks, _ = message
        p = KmsKeyProvider.discovery(account_ids=["9999999999999999"], kms=kms)
        local_kms.reset_stats()
        with pytest.raises(NoUsableKeyError) as info:
            p.decrypt_data_key(edks, AES256, CTX)
        assert info.value.errors == [] and "9999999999999999" in str(info.value)
        assert local_kms.stats() == {HZ: {}, BJ: {}, SH: {}}

    def test_malformed_edk_arns_are_skipped(self, kms, message):
        edks, key = message
        junk = [EncryptedDataKey("not an arn", b"x" * 80), EncryptedDataKey("acs:kms:cn-hangzhou:1:alias/a", b"y")]
        assert KmsKeyProvider.discovery(kms=kms).decrypt_data_key(junk + list(edks), AES256, CTX) == key
        with pytest.raises(NoUsableKeyError):
            KmsKeyProvider.discovery(kms=kms).decrypt_data_key(junk, AES256, CTX)


# ---------------------------------------------------------------- fast failover, then retries


def test_failover_is_immediate_while_another_cmk_remains(make_kms, cmks, local_kms, clean_faults):
    """A region down costs one refused connection, not the whole retry budget."""
    import time

    slept: list[float] = []
    kms = make_kms(max_attempts=4, backoff_base=0.5, backoff_max=0.5)
    kms._sleep = slept.append  # count backoff instead of sleeping
    provider = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
    message = kmsenv.encrypt(b"fast", provider).ciphertext
    local_kms.set_fault(HZ, down=True)
    started = time.monotonic()
    assert kmsenv.decrypt(message, provider).plaintext == b"fast"
    assert slept == []  # no backoff before failing over
    assert time.monotonic() - started < 5.0


def test_all_regions_transient_then_second_pass_with_retries(make_kms, cmks, local_kms, clean_faults):
    """When every region fails transiently on the fast pass, each is retried
    with the full budget, in order: a throttle that clears is survived."""
    calls: list[float] = []
    kms = make_kms(max_attempts=3)

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        local_kms.set_fault(HZ)  # the storm ends during the first backoff
        local_kms.set_fault(BJ)

    kms._sleep = sleep
    provider = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
    message = kmsenv.encrypt(b"storm", provider).ciphertext
    local_kms.set_fault(HZ, throttle_rate=1.0)
    local_kms.set_fault(BJ, throttle_rate=1.0)
    local_kms.reset_stats()
    assert kmsenv.decrypt(message, provider).plaintext == b"storm"
    assert local_kms.stats()[HZ] == {"Decrypt": 3}  # fast pass 1, then 1 throttled + 1 ok
    assert local_kms.stats()[BJ] == {"Decrypt": 1}  # fast pass only
    assert len(calls) == 1


def test_permanent_errors_are_not_retried_on_the_second_pass(make_kms, cmks, local_kms, clean_faults):
    kms = make_kms(max_attempts=3)
    provider = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
    message = kmsenv.encrypt(b"x", provider).ciphertext
    local_kms.disable_key(cmks.hz)
    local_kms.set_fault(BJ, throttle_rate=1.0)
    local_kms.reset_stats()
    try:
        with pytest.raises(kmsenv.NoUsableKeyError) as info:
            kmsenv.decrypt(message, provider)
    finally:
        local_kms.enable_key(cmks.hz)
    assert [arn for arn, _ in info.value.errors] == [cmks.hz, cmks.bj]
    assert local_kms.stats()[HZ] == {"Decrypt": 1}  # disabled: not retried
    assert local_kms.stats()[BJ] == {"Decrypt": 1 + 3}  # fast pass, then the full budget
