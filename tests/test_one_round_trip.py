"""KmsKeyProvider(..., data_key_source="local"): the data key from the local CSPRNG
and Encrypt under every CMK at once (one round trip), against LocalKms over real HTTP.

What is compared against something independent: the call pattern against LocalKms's
own counters, the EDKs against the official KMS client (aliyunsdkkms, what Alibaba's
Encryption SDK for Python calls), and the failure behaviour against the default
provider (GenerateDataKey first) under the same fault.
"""

from __future__ import annotations

import base64
import json
import threading

import pytest
from aliyunsdkcore.client import AcsClient
from aliyunsdkkms.request.v20160120 import DecryptRequest

import kmsenv
from kms_fixtures import *  # noqa: F401,F403
from kms_fixtures import BJ, HZ, SH, kms_calls, kms_options
from kmsenv.algorithms import Algorithm
from kmsenv.exceptions import ConfigurationError, KmsError
from kmsenv.kms import Kms
from kmsenv.providers import DATA_KEY_SOURCES, KmsKeyProvider

AES256 = Algorithm.AES_GCM_NOPADDING_256
CTX = {"tenant": "acme", "order": "42"}
ALGORITHMS = [Algorithm.AES_GCM_NOPADDING_256, Algorithm.AES_GCM_NOPADDING_128, Algorithm.SM4_GCM_NOPADDING_128]


def arns_for(cmks, algorithm: Algorithm) -> list[str]:
    if algorithm.info.cipher == "SM4":
        return [cmks.sm4, cmks.sm4_bj]
    return [cmks.hz, cmks.bj, cmks.sh]


class RecordingKms(Kms):
    """A real Kms (real HTTP) that keeps every plaintext buffer it was asked to Encrypt."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sent: list[bytearray] = []
        self._sent_lock = threading.Lock()

    def encrypt(self, key_arn, plaintext, encryption_context=None):
        with self._sent_lock:
            self.sent.append(plaintext)
        return super().encrypt(key_arn, plaintext, encryption_context)


@pytest.fixture
def recording(local_kms, clean_faults) -> RecordingKms:
    return RecordingKms(**kms_options(local_kms, max_attempts=2))


def official_unwrap(server, edk, ctx) -> bytes:
    """The data key from one EDK through the official (aliyunsdkkms) client, as
    Alibaba's Encryption SDK for Python unwraps it: Decrypt with the context."""
    region = edk.key_arn.split(":")[2]
    request = DecryptRequest.DecryptRequest()
    request.set_CiphertextBlob(base64.b64encode(edk.ciphertext_blob).decode())
    request.set_EncryptionContext(json.dumps(dict(ctx)))
    request.set_endpoint(server.hosts[region])
    request.set_protocol_type("http")
    client = AcsClient(server.access_key_id, server.access_key_secret, region)
    return base64.b64decode(json.loads(client.do_action_with_exception(request))["Plaintext"])


class FixedKey:
    """A provider that hands out one given data key (to open a message with a key
    obtained elsewhere)."""

    def __init__(self, key: bytes):
        self.key = key

    def generate_data_key(self, algorithm, encryption_context):  # pragma: no cover - decrypt only
        raise AssertionError("decrypt only")

    def decrypt_data_key(self, encrypted_data_keys, algorithm, encryption_context):
        return bytearray(self.key)


# ---------------------------------------------------------------- the option


@pytest.mark.parametrize("value", ["KMS", "Local", "", "random", None, b"local", 1, True, ["local"]])
def test_anything_but_kms_or_local_is_refused(kms, cmks, value):
    with pytest.raises(ConfigurationError) as info:
        KmsKeyProvider(cmks.hz, kms=kms, data_key_source=value)
    assert "data_key_source" in str(info.value) and isinstance(info.value, ValueError)


def test_default_and_repr(kms, cmks):
    assert DATA_KEY_SOURCES == ("kms", "local")
    default = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
    local = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms, data_key_source="local")
    assert default.data_key_source == "kms" and local.data_key_source == "local"
    assert "data_key_source" not in repr(default)
    assert repr(local) == repr(default)[:-1] + ", data_key_source='local')"


# ---------------------------------------------------------------- one round trip


def test_one_encrypt_per_region_and_no_generate_data_key(kms, cmks, local_kms):
    p = KmsKeyProvider(cmks.hz, cmks.bj, cmks.sh, kms=kms, data_key_source="local")
    local_kms.reset_stats()
    dk = p.generate_data_key(AES256, CTX)
    assert kms_calls(local_kms) == {(HZ, "Encrypt"): 1, (BJ, "Encrypt"): 1, (SH, "Encrypt"): 1}
    assert [e.key_arn for e in dk.encrypted_data_keys] == [cmks.hz, cmks.bj, cmks.sh]
    # The default provider, for contrast: GenerateDataKey in the primary first.
    local_kms.reset_stats()
    KmsKeyProvider(cmks.hz, cmks.bj, cmks.sh, kms=kms).generate_data_key(AES256, CTX)
    assert kms_calls(local_kms) == {(HZ, "GenerateDataKey"): 1, (BJ, "Encrypt"): 1, (SH, "Encrypt"): 1}


def test_a_second_cmk_in_the_same_region_gets_encrypt_too(kms, cmks, local_kms):
    p = KmsKeyProvider(cmks.hz, cmks.hz2, cmks.bj, kms=kms, data_key_source="local")
    local_kms.reset_stats()
    dk = p.generate_data_key(AES256, CTX)
    assert kms_calls(local_kms) == {(HZ, "Encrypt"): 2, (BJ, "Encrypt"): 1}
    for edk in dk.encrypted_data_keys:
        assert KmsKeyProvider(edk.key_arn, kms=kms).decrypt_data_key([edk], AES256, CTX) == dk.plaintext


class BarrierKms(Kms):
    """Each Encrypt waits until ``parties`` Encrypts have been asked for: an encrypt
    only completes if its Encrypts are all in flight together. ``patience`` bounds
    the wait (a deadlock guard; nothing here measures time)."""

    def __init__(self, parties: int, patience: float, **kwargs):
        super().__init__(**kwargs)
        self.barrier = threading.Barrier(parties, timeout=patience)

    def encrypt(self, key_arn, plaintext, encryption_context=None):
        self.barrier.wait()
        return super().encrypt(key_arn, plaintext, encryption_context)


def test_every_region_is_asked_at_once(local_kms, cmks, clean_faults):
    arns = (cmks.hz, cmks.bj, cmks.sh)
    p = KmsKeyProvider(*arns, kms=BarrierKms(3, 30, **kms_options(local_kms)), data_key_source="local")
    assert len(p.generate_data_key(AES256, CTX).encrypted_data_keys) == 3
    # The default path sends its two Encrypts only after GenerateDataKey: they
    # never meet a third, so the barrier breaks (the check above can fail).
    default = KmsKeyProvider(*arns, kms=BarrierKms(3, 0.5, **kms_options(local_kms)))
    with pytest.raises(threading.BrokenBarrierError):
        default.generate_data_key(AES256, CTX)


def test_called_from_the_shared_pool_wraps_in_turn(kms, cmks, local_kms):
    from kmsenv.providers import _shared_pool

    p = KmsKeyProvider(cmks.hz, cmks.bj, cmks.sh, kms=kms, data_key_source="local")
    local_kms.reset_stats()
    futures = [_shared_pool().submit(p.generate_data_key, AES256, {}) for _ in range(40)]
    for f in futures:
        assert len(f.result(timeout=60).encrypted_data_keys) == 3
    assert kms_calls(local_kms) == {(HZ, "Encrypt"): 40, (BJ, "Encrypt"): 40, (SH, "Encrypt"): 40}


# ---------------------------------------------------------------- the key and the messages


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.name)
def test_key_length_is_generate_data_keys(kms, cmks, local_kms, algorithm, backend):
    arns = arns_for(cmks, algorithm)
    local = KmsKeyProvider(*arns, kms=kms, algorithm=algorithm, data_key_source="local")
    via_kms = KmsKeyProvider(*arns, kms=kms, algorithm=algorithm)
    data_keys = [local.generate_data_key(algorithm, CTX) for _ in range(16)]  # held: a DataKey wipes on collection
    keys = {bytes(dk.plaintext) for dk in data_keys}
    with via_kms.generate_data_key(algorithm, CTX) as reference:
        assert {len(k) for k in keys} == {len(reference.plaintext)}
    assert len(keys) == 16 and bytes(algorithm.key_len) not in keys


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.name)
def test_each_region_alone_and_the_default_provider_decrypt(kms, cmks, algorithm, backend):
    arns = arns_for(cmks, algorithm)
    writer = KmsKeyProvider(*arns, kms=kms, algorithm=algorithm, data_key_source="local")
    message = kmsenv.encrypt(b"one round trip", writer, encryption_context=CTX, algorithm=algorithm).ciphertext
    header = kmsenv.parse_header(message)
    assert sorted(e.key_arn for e in header.encrypted_data_keys) == sorted(arns)  # a DER SET: sorted
    for arn in arns:
        alone = KmsKeyProvider(arn, kms=kms, algorithm=algorithm)
        assert kmsenv.decrypt(message, alone).plaintext == b"one round trip"
    default = KmsKeyProvider(*arns, kms=kms, algorithm=algorithm)
    assert kmsenv.decrypt(message, default, expected_encryption_context=CTX).plaintext == b"one round trip"
    assert kmsenv.decrypt(message, KmsKeyProvider.discovery(kms=kms)).plaintext == b"one round trip"


def test_the_official_client_unwraps_every_edk(local_kms, kms, cmks):
    writer = KmsKeyProvider(cmks.hz, cmks.bj, cmks.sh, kms=kms, data_key_source="local")
    message = kmsenv.encrypt(b"for the official SDK", writer, encryption_context=CTX).ciphertext
    header = kmsenv.parse_header(message)
    keys = {official_unwrap(local_kms, edk, header.encryption_context) for edk in header.encrypted_data_keys}
    assert len(keys) == 1 and len(next(iter(keys))) == 32
    # That key, from outside kmsenv's KMS path, opens the message.
    assert kmsenv.decrypt(message, FixedKey(keys.pop())).plaintext == b"for the official SDK"


# ---------------------------------------------------------------- failures


def failure_of(provider) -> tuple[type, str, str, bool]:
    with pytest.raises(KmsError) as info:
        provider.generate_data_key(AES256, CTX)
    e = info.value
    return type(e), e.code, e.region, e.retryable


@pytest.mark.parametrize(
    "region, fault",
    [
        (SH, dict(down=True)),
        (BJ, dict(error_rate=1.0, error_code="InternalFailure")),
        (HZ, dict(error_rate=1.0, error_code="InternalFailure")),
        (HZ, dict(throttle_rate=1.0)),
    ],
    ids=["secondary-down", "secondary-5xx", "primary-5xx", "primary-throttled"],
)
def test_a_failing_region_fails_the_encrypt_as_today_and_wipes(local_kms, cmks, recording, region, fault):
    arns = (cmks.hz, cmks.bj, cmks.sh)
    local_kms.set_fault(region, **fault)
    default = failure_of(KmsKeyProvider(*arns, kms=Kms(**kms_options(local_kms, max_attempts=2))))
    local = failure_of(KmsKeyProvider(*arns, kms=recording, data_key_source="local"))
    assert local == default and local[2] == region
    assert recording.sent and all(buf == bytearray(32) for buf in recording.sent)  # wiped


def test_a_disabled_key_fails_the_encrypt_as_today(local_kms, cmks, recording):
    arn = local_kms.create_key(BJ)
    local_kms.disable_key(arn)
    default = failure_of(KmsKeyProvider(cmks.hz, arn, kms=recording))
    recording.sent.clear()
    local = failure_of(KmsKeyProvider(cmks.hz, arn, kms=recording, data_key_source="local"))
    assert local == default == (KmsError, "Rejected.Disabled", BJ, False)
    assert all(buf == bytearray(32) for buf in recording.sent)


def test_success_wipes_the_working_copy(cmks, recording):
    dk = KmsKeyProvider(cmks.hz, cmks.bj, kms=recording, data_key_source="local").generate_data_key(AES256, {})
    assert len(recording.sent) == 2 and recording.sent[0] is recording.sent[1]
    assert recording.sent[0] == bytearray(32) and dk.plaintext != bytearray(32)


def test_discovery_cannot_encrypt_whatever_the_source(kms):
    with pytest.raises(ConfigurationError):
        KmsKeyProvider.discovery(kms=kms).generate_data_key(AES256, {})


def test_the_command_takes_data_key_source(local_kms, cmks, tmp_path, monkeypatch, clean_faults):
    """kmsenv encrypt --data-key-source local: one Encrypt per region, no GenerateDataKey;
    the file decrypts through any one region."""
    from kmsenv import cli

    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", local_kms.access_key_id)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", local_kms.access_key_secret)
    monkeypatch.setenv("KMSENV_KMS_ENDPOINTS", ",".join(f"{r}={u}" for r, u in local_kms.endpoints.items()))
    src, enc, dec = tmp_path / "in", tmp_path / "in.kmsenv", tmp_path / "out"
    src.write_bytes(b"one round trip" * 1000)
    local_kms.reset_stats()
    argv = ["encrypt", "-k", cmks.hz, "-k", cmks.bj, "--data-key-source", "local", "-i", str(src), "-o", str(enc)]
    assert cli.main(argv) == 0
    assert kms_calls(local_kms) == {(HZ, "Encrypt"): 1, (BJ, "Encrypt"): 1}
    assert cli.main(["decrypt", "-k", cmks.bj, "-i", str(enc), "-o", str(dec)]) == 0
    assert dec.read_bytes() == src.read_bytes()
    with pytest.raises(SystemExit):
        cli.main(["encrypt", "-k", cmks.hz, "--data-key-source", "hsm", "-i", str(src), "-o", str(enc)])
