"""kmsenv.signing against LocalKms over real HTTP (the official V2 client under
kmsenv.Kms; no mocks): KmsSigner signs through AsymmetricSign with digests
computed locally, KmsVerifier verifies locally with cached public keys or by
AsymmetricVerify on request, keys in several regions fail over.

Signatures are also checked by implementations independent of both kmsenv and
LocalKms: `cryptography` for RSA/ECDSA, gmssl for SM2.
"""

from __future__ import annotations

import base64
import hashlib
import threading

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

import kmsenv
from kmsenv import _process, signing
from kmsenv.exceptions import ConfigurationError, KmsError, NoUsableKeyError
from kmsenv.kms import KeyVersion
from kmsenv.signing import KmsSigner, KmsVerifier, SignatureAlgorithm, SignResult
from kms_fixtures import *  # noqa: F401,F403
from kms_fixtures import BJ, HZ, SH, kms_calls

SPECS = ("RSA_2048", "RSA_3072", "EC_P256", "EC_P256K", "EC_SM2")
PAIRS = [
    ("RSA_2048", SignatureAlgorithm.RSA_PSS_SHA_256),
    ("RSA_2048", SignatureAlgorithm.RSA_PKCS1_SHA_256),
    ("RSA_3072", SignatureAlgorithm.RSA_PSS_SHA_256),
    ("RSA_3072", SignatureAlgorithm.RSA_PKCS1_SHA_256),
    ("EC_P256", SignatureAlgorithm.ECDSA_SHA_256),
    ("EC_P256K", SignatureAlgorithm.ECDSA_SHA_256),
    ("EC_SM2", SignatureAlgorithm.SM2DSA),
]
MESSAGE = "签名 this is test.".encode()


@pytest.fixture(scope="module")
def keys(local_kms) -> dict[str, str]:
    """spec -> ARN of a SIGN/VERIFY key in cn-hangzhou."""
    return {spec: local_kms.create_key(HZ, spec) for spec in SPECS}


@pytest.fixture(scope="module")
def regional(local_kms) -> dict[str, dict[str, str]]:
    """spec -> {region: ARN}: one key per region for the failover tests."""
    return {spec: {r: local_kms.create_key(r, spec) for r in (HZ, BJ, SH)} for spec in ("EC_P256", "EC_SM2")}


def _independent_verify(pem: str, algorithm: SignatureAlgorithm, message: bytes, signature: bytes) -> bool:
    """Not kmsenv's code: cryptography for RSA/ECDSA, gmssl (with its own Z) for SM2."""
    if algorithm is SignatureAlgorithm.SM2DSA:
        from gmssl import sm2

        der = base64.b64decode("".join(pem.strip().splitlines()[1:-1]))
        assert der[:27].hex() == "3059301306072a8648ce3d020106082a811ccf5501822d03420004"
        crypt = sm2.CryptSM2(private_key=None, public_key="", asn1=True)
        crypt.public_key = der[27:].hex()
        return bool(crypt.verify_with_sm3(signature.hex(), message))  # gmssl's Z uses 1234567812345678
    key = serialization.load_pem_public_key(pem.encode())
    try:
        if algorithm is SignatureAlgorithm.RSA_PSS_SHA_256:
            key.verify(signature, message, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        elif algorithm is SignatureAlgorithm.RSA_PKCS1_SHA_256:
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


@pytest.mark.parametrize("spec,algorithm", PAIRS, ids=[f"{s}-{a.value}" for s, a in PAIRS])
def test_sign_and_verify_every_algorithm(backend, kms, keys, local_kms, spec, algorithm):
    arn = keys[spec]
    signer = KmsSigner(arn, kms=kms, algorithm=algorithm)
    result = signer.sign(MESSAGE)
    assert isinstance(result, SignResult)
    assert (result.key_arn, result.algorithm) == (arn, algorithm)
    assert result.key_version_id == local_kms.key_versions(arn)[0]
    pem = kms.get_public_key(arn, result.key_version_id)
    # independent of kmsenv and of LocalKms
    assert _independent_verify(pem, algorithm, MESSAGE, result.signature)
    assert not _independent_verify(pem, algorithm, MESSAGE + b"!", result.signature)
    # kmsenv locally, from the PEM
    assert signing.verify(pem, algorithm, MESSAGE, result.signature)
    assert signing.verify(pem, algorithm, result.digest, result.signature, digest=True)
    assert not signing.verify(pem, algorithm, MESSAGE[1:], result.signature)
    # the verifier, locally and through AsymmetricVerify
    verifier = KmsVerifier(arn, kms=kms)
    assert verifier.verify(result, MESSAGE)
    assert verifier.verify(result, MESSAGE, use_kms=True)
    assert not verifier.verify(result, MESSAGE + b"x")
    assert not verifier.verify(result, MESSAGE + b"x", use_kms=True)
    flipped = bytes([result.signature[0] ^ 1]) + result.signature[1:]
    assert not verifier.verify_signature(arn, result.key_version_id, algorithm, MESSAGE, flipped)
    assert not verifier.verify_signature(arn, result.key_version_id, algorithm, MESSAGE, flipped, use_kms=True)


def test_digest_mode(backend, kms, keys):
    for spec, algorithm in (("RSA_2048", "RSA_PKCS1_SHA_256"), ("EC_SM2", "SM2DSA")):
        arn = keys[spec]
        signer = KmsSigner(arn, kms=kms, algorithm=algorithm)
        pem = kms.get_public_key(arn, kms.list_key_versions(arn)[0].key_version_id)
        digest = signing.message_digest(pem, algorithm, MESSAGE)
        result = signer.sign(digest, digest=True)
        assert result.digest == digest
        assert signing.verify(pem, algorithm, MESSAGE, result.signature)
        assert KmsVerifier(arn, kms=kms).verify(result, digest, digest=True, use_kms=True)
        with pytest.raises(ConfigurationError):
            signer.sign(digest[:31], digest=True)


def test_sm2_signs_sm3_of_z_and_message(backend, kms, keys):
    """KMS signs what it is given: a signature over SM3(M) alone would not be
    an SM2 signature of M. kmsenv sends SM3(Z || M)."""
    arn = keys["EC_SM2"]
    result = KmsSigner(arn, kms=kms, algorithm="SM2DSA").sign(MESSAGE)
    from gmssl import sm3

    assert result.digest != bytes.fromhex(sm3.sm3_hash(list(MESSAGE)))
    pem = kms.get_public_key(arn, result.key_version_id)
    assert result.digest == signing.message_digest(pem, "SM2DSA", MESSAGE)


def test_algorithm_and_version_defaults(kms, local_kms):
    """No algorithm: from the key spec (read from the public key): RSA ->
    RSA_PSS_SHA_256, EC -> ECDSA_SHA_256, SM2 -> SM2DSA. No version: the newest."""
    expected = {"RSA_2048": "RSA_PSS_SHA_256", "EC_P256K": "ECDSA_SHA_256", "EC_SM2": "SM2DSA"}
    for spec, algorithm in expected.items():
        arn = local_kms.create_key(HZ, spec)
        newest = local_kms.create_key_version(arn)
        assert local_kms.key_versions(arn)[-1] == newest
        result = KmsSigner(arn, kms=kms).sign(MESSAGE)
        assert result.algorithm.value == algorithm and result.key_version_id == newest
        assert KmsVerifier(arn, kms=kms).verify(result, MESSAGE)
        assert signing.default_algorithm(spec).value == algorithm


def test_explicit_versions_and_the_verifier_cache(kms, local_kms):
    arn = local_kms.create_key(HZ, "EC_P256")
    old = local_kms.key_versions(arn)[0]
    new = local_kms.create_key_version(arn)
    by_old = KmsSigner(arn, kms=kms, key_version_id=old).sign(MESSAGE)
    by_new = KmsSigner(arn, kms=kms, key_version_id={arn: new}).sign(MESSAGE)
    assert (by_old.key_version_id, by_new.key_version_id) == (old, new)
    verifier = KmsVerifier(arn, kms=kms)
    before = kms_calls(local_kms).get((HZ, "GetPublicKey"), 0)
    for _ in range(3):
        assert verifier.verify(by_old, MESSAGE) and verifier.verify(by_new, MESSAGE)
    assert kms_calls(local_kms).get((HZ, "GetPublicKey"), 0) - before == 2  # once per version
    # a signature checked under the other version's key does not verify
    assert not verifier.verify_signature(arn, new, "ECDSA_SHA_256", MESSAGE, by_old.signature)


def test_the_signer_learns_each_key_once(kms, keys, local_kms):
    signer = KmsSigner(keys["EC_SM2"], kms=kms)
    before = kms_calls(local_kms)
    for _ in range(3):
        signer.sign(MESSAGE)
    after = kms_calls(local_kms)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert delta[(HZ, "ListKeyVersions")] == 1 and delta[(HZ, "GetPublicKey")] == 1
    assert delta[(HZ, "AsymmetricSign")] == 3


def test_failover_to_the_next_region(make_kms, regional, local_kms):
    for spec in ("EC_P256", "EC_SM2"):
        arns = regional[spec]
        kms = make_kms()
        signer = KmsSigner(arns[HZ], arns[BJ], arns[SH], kms=kms)
        assert signer.key_arns == (arns[HZ], arns[BJ], arns[SH])  # failover order
        verifier = KmsVerifier(*arns.values(), kms=kms)
        assert signer.sign(MESSAGE).key_arn == arns[HZ]
        local_kms.set_fault(HZ, down=True)
        try:
            result = signer.sign(MESSAGE)
            assert result.key_arn == arns[BJ]
            assert result.key_version_id == local_kms.key_versions(arns[BJ])[0]
            assert verifier.verify(result, MESSAGE)
            # a signature by the Beijing key is not one by the Hangzhou key
            with pytest.raises(KmsError):  # Hangzhou is down: its public key cannot be fetched
                verifier.verify_signature(
                    arns[HZ], local_kms.key_versions(arns[HZ])[0], result.algorithm, MESSAGE, result.signature
                )
            local_kms.set_fault(BJ, error_rate=1.0, error_code="InternalFailure")
            assert signer.sign(MESSAGE).key_arn == arns[SH]
        finally:
            local_kms.set_fault(HZ)
            local_kms.set_fault(BJ)
        assert signer.sign(MESSAGE).key_arn == arns[HZ]


def test_failover_on_a_disabled_key(kms, regional, local_kms):
    arns = regional["EC_P256"]
    signer = KmsSigner(arns[HZ], arns[BJ], kms=kms, algorithm="ECDSA_SHA_256")
    local_kms.disable_key(arns[HZ])
    try:
        assert signer.sign(MESSAGE).key_arn == arns[BJ]
    finally:
        local_kms.enable_key(arns[HZ])


def test_every_region_down(make_kms, regional, local_kms):
    arns = regional["EC_P256"]
    signer = KmsSigner(arns[HZ], arns[BJ], kms=make_kms(max_attempts=2), algorithm="ECDSA_SHA_256")
    local_kms.set_fault(HZ, down=True)
    local_kms.set_fault(BJ, down=True)
    try:
        with pytest.raises(NoUsableKeyError) as info:
            signer.sign(MESSAGE)
    finally:
        local_kms.set_fault(HZ)
        local_kms.set_fault(BJ)
    assert [arn for arn, _ in info.value.errors] == [arns[HZ], arns[BJ]]
    assert all(isinstance(e, KmsError) and e.retryable for _, e in info.value.errors)


def test_sm2_digest_with_several_keys_is_refused(kms, regional):
    arns = regional["EC_SM2"]
    signer = KmsSigner(arns[HZ], arns[BJ], kms=kms)
    with pytest.raises(ConfigurationError, match="one public key"):
        signer.sign(b"\x00" * 32, digest=True)
    assert signer.sign(MESSAGE).key_arn == arns[HZ]  # messages are fine


def test_kms_errors_surface(kms, keys, local_kms):
    arn = keys["RSA_2048"]
    # an algorithm the key cannot use: KMS refuses it (InvalidParameter), no key signs
    with pytest.raises(NoUsableKeyError) as info:
        KmsSigner(arn, kms=kms, algorithm="ECDSA_SHA_256").sign(MESSAGE)
    assert info.value.errors[0][1].code == "InvalidParameter"
    # caught locally once the public key is known
    with pytest.raises(ConfigurationError):
        KmsSigner(keys["EC_P256"], kms=kms, algorithm="SM2DSA").sign(MESSAGE)
    with pytest.raises(KmsError) as err:
        kms.get_public_key(arn, "00000000-0000-0000-0000-000000000000")
    assert err.value.code == "Forbidden.KeyVersionNotFound"
    symmetric = local_kms.create_key(HZ)
    with pytest.raises(KmsError) as err:
        kms.asymmetric_sign(symmetric, local_kms.key_versions(symmetric)[0], "RSA_PSS_SHA_256", b"\x00" * 32)
    assert err.value.code == "Rejected.UnsupportedOperation"


def test_kms_methods(kms, keys, local_kms):
    arn = keys["EC_P256"]
    versions = kms.list_key_versions(arn)
    assert [v.key_version_id for v in versions] == local_kms.key_versions(arn)
    assert all(isinstance(v, KeyVersion) and arn.endswith("/" + v.key_id) and v.creation_date for v in versions)
    version = versions[0].key_version_id
    pem = kms.get_public_key(arn, version)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE")
    digest = hashlib.sha256(MESSAGE).digest()
    signature = kms.asymmetric_sign(arn, version, "ECDSA_SHA_256", digest)
    assert kms.asymmetric_verify(arn, version, "ECDSA_SHA_256", digest, signature) is True
    assert kms.asymmetric_verify(arn, version, "ECDSA_SHA_256", digest[::-1], signature) is False
    for bad in (b"", b"\x00" * 31, "x" * 32):
        with pytest.raises(ConfigurationError):
            kms.asymmetric_sign(arn, version, "ECDSA_SHA_256", bad)
    with pytest.raises(ConfigurationError):
        kms.asymmetric_sign(arn, " ", "ECDSA_SHA_256", digest)
    many = local_kms.create_key(HZ, "EC_P256K")
    for _ in range(3):
        local_kms.create_key_version(many)
    assert [v.key_version_id for v in kms.list_key_versions(many)] == local_kms.key_versions(many)


def test_signer_and_verifier_arguments(kms, keys, regional):
    arn = keys["EC_P256"]
    with pytest.raises(ConfigurationError):
        KmsSigner(kms=kms)
    with pytest.raises(ConfigurationError):
        KmsSigner([arn], kms=kms)
    with pytest.raises(ConfigurationError):
        KmsSigner(arn, arn, kms=kms)
    with pytest.raises(ConfigurationError):
        KmsSigner(arn, kms=kms, algorithm="SHA256withRSA")
    with pytest.raises(ConfigurationError):  # one version ID for several keys
        KmsSigner(*regional["EC_P256"].values(), kms=kms, key_version_id="v1")
    with pytest.raises(ConfigurationError):
        KmsSigner(arn, kms=kms, key_version_id={keys["EC_SM2"]: "v1"})
    with pytest.raises(ConfigurationError):
        KmsSigner(arn, kms=object())
    signer = KmsSigner(arn, kms=kms)
    for bad in ("text", None, 5):
        with pytest.raises(ConfigurationError):
            signer.sign(bad)
    result = signer.sign(MESSAGE)
    with pytest.raises(ConfigurationError, match="not one of"):
        KmsVerifier(keys["EC_P256K"], kms=kms).verify(result, MESSAGE)
    assert kmsenv.SignatureAlgorithm is SignatureAlgorithm and "SignatureAlgorithm" in kmsenv.__all__


def test_objects_are_tracked_for_fork(kms, keys):
    signer, verifier = KmsSigner(keys["EC_P256"], kms=kms), KmsVerifier(keys["EC_P256"], kms=kms)
    assert signer in _process._TRACKED and verifier in _process._TRACKED
    lock = signer._lock
    signer._after_fork_in_child()
    verifier._after_fork_in_child()
    assert signer._lock is not lock


def test_one_signer_from_many_threads(kms, keys):
    signer = KmsSigner(keys["EC_SM2"], kms=kms)
    verifier = KmsVerifier(keys["EC_SM2"], kms=kms)
    results: list[bool] = []

    def work(i: int) -> None:
        message = MESSAGE + bytes([i])
        results.append(verifier.verify(signer.sign(message), message))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 8


@pytest.mark.parametrize("spec", ["RSA_2048", "EC_SM2"])
def test_empty_message(backend, kms, keys, spec):
    """The official Python SDK refuses empty content; an empty message is a message."""
    result = KmsSigner(keys[spec], kms=kms).sign(b"")
    pem = kms.get_public_key(keys[spec], result.key_version_id)
    assert signing.verify(pem, result.algorithm, b"", result.signature)
    assert _independent_verify(pem, result.algorithm, b"", result.signature)
    assert not signing.verify(pem, result.algorithm, b"\x00", result.signature)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_signs_and_verifies(kms, keys):
    """A signer and verifier made before a fork work in the child: what they
    learnt (version, public key) is kept, locks and KMS connections are new."""
    from helpers import join_fork, start_in_fork

    signer, verifier = KmsSigner(keys["EC_SM2"], kms=kms), KmsVerifier(keys["EC_SM2"], kms=kms)
    parent = signer.sign(MESSAGE)
    assert verifier.verify(parent, MESSAGE)

    def child() -> tuple[bool, bool, str]:
        result = signer.sign(MESSAGE + b"child")
        return verifier.verify(result, MESSAGE + b"child"), verifier.verify(parent, MESSAGE), result.key_version_id

    ok_child, ok_parent, version = join_fork(start_in_fork(child))
    assert ok_child and ok_parent and version == parent.key_version_id
    assert verifier.verify(signer.sign(MESSAGE), MESSAGE)  # the parent carries on
