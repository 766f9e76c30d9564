"""Whole messages through KmsKeyProvider and LocalKms over real HTTP: the
multi-region promise (any region alone decrypts; losing a region loses nothing)."""

from __future__ import annotations

import pytest

import kmsenv
from kmsenv import Algorithm, KmsKeyProvider
from kmsenv.kms import Kms
from kmsenv.localkms import LocalKms

from kms_fixtures import *  # noqa: F401,F403
from kms_fixtures import BJ, HZ, SH


@pytest.mark.parametrize(
    "alg", [Algorithm.AES_GCM_NOPADDING_256, Algorithm.AES_GCM_NOPADDING_128, Algorithm.SM4_GCM_NOPADDING_128]
)
def test_two_regions_each_alone_and_after_losing_either(alg, kms, cmks, local_kms, clean_faults, backend):
    first, second = (cmks.sm4, cmks.sm4_bj) if alg.info.cipher == "SM4" else (cmks.hz, cmks.bj)
    both = KmsKeyProvider(first, second, kms=kms, algorithm=alg)
    msg = kmsenv.encrypt(b"replicated row", both, encryption_context={"db": "orders"}).ciphertext
    assert kmsenv.parse_header(msg).algorithm is alg
    for arn in (first, second):
        assert kmsenv.decrypt(msg, KmsKeyProvider(arn, kms=kms)).plaintext == b"replicated row"
    for region in (HZ, BJ):
        local_kms.set_fault(region, down=True)
        try:
            assert kmsenv.decrypt(msg, both).plaintext == b"replicated row"
        finally:
            local_kms.set_fault(region)


def test_three_regions_call_pattern(kms, cmks, local_kms, clean_faults):
    local_kms.reset_stats()
    provider = KmsKeyProvider(cmks.hz, cmks.hz2, cmks.bj, cmks.sh, kms=kms)
    msg = kmsenv.encrypt(b"x", provider).ciphertext
    stats = local_kms.stats()
    assert stats[HZ] == {"GenerateDataKey": 1, "ReEncrypt": 1}
    assert stats[BJ] == {"Encrypt": 1} and stats[SH] == {"Encrypt": 1}
    header = kmsenv.parse_header(msg)
    # The header lists them in DER SET order, not the provider's.
    assert {e.key_arn for e in header.encrypted_data_keys} == {cmks.hz, cmks.hz2, cmks.bj, cmks.sh}


def test_all_regions_down_lists_every_error(kms, cmks, local_kms, clean_faults):
    both = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
    msg = kmsenv.encrypt(b"x", both).ciphertext
    local_kms.set_fault(HZ, down=True)
    local_kms.set_fault(BJ, down=True)
    with pytest.raises(kmsenv.NoUsableKeyError) as info:
        kmsenv.decrypt(msg, both)
    assert [arn for arn, _ in info.value.errors] == [cmks.hz, cmks.bj]


def test_context_is_bound_by_kms_and_header(kms, cmks, clean_faults):
    provider = KmsKeyProvider(cmks.hz, kms=kms)
    msg = kmsenv.encrypt(b"x", provider, encryption_context={"tenant": "a"}).ciphertext
    with pytest.raises(kmsenv.EncryptionContextMismatchError):
        kmsenv.decrypt(msg, provider, expected_encryption_context={"tenant": "b"})


def test_batches_make_one_kms_call_each_way(kms, cmks, local_kms, clean_faults):
    provider = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
    local_kms.reset_stats()
    values = [f"user-{i}@example.com".encode() for i in range(500)]
    msgs = kmsenv.encrypt_many(values, provider, encryption_context={"column": "email"})
    assert kmsenv.decrypt_many(msgs, KmsKeyProvider(cmks.bj, kms=kms)) == values
    stats = local_kms.stats()
    assert stats[HZ] == {"GenerateDataKey": 1}
    assert stats[BJ] == {"Encrypt": 1, "Decrypt": 1}


def test_messages_survive_a_server_restart(tmp_path):
    with LocalKms(regions=[HZ, BJ], state_dir=str(tmp_path)) as server:
        arns = [server.create_key(HZ), server.create_key(BJ)]
        creds = (server.access_key_id, server.access_key_secret)
        kms = Kms(access_key_id=creds[0], access_key_secret=creds[1], endpoints=server.endpoints)
        msg = kmsenv.encrypt(b"kept", KmsKeyProvider(*arns, kms=kms)).ciphertext
    with LocalKms(regions=[HZ, BJ], state_dir=str(tmp_path)) as server:
        assert (server.access_key_id, server.access_key_secret) == creds
        kms = Kms(access_key_id=creds[0], access_key_secret=creds[1], endpoints=server.endpoints)
        for arn in arns:
            assert kmsenv.decrypt(msg, KmsKeyProvider(arn, kms=kms)).plaintext == b"kept"
