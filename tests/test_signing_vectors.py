"""The official Java Encryption SDK's public signature vectors (34 records,
tests/vectors/alibaba-official-java-signature.json; /work/shared/vectors/README.md
"Signature records"): every record verifies exactly as its ``kmsenv_expect``
says, from the PEM public key and from the certificate, on every backend; the
digests kmsenv computes are the ones the Java SDK sent to AsymmetricSign.

Plus known answers for SM3 / SM2 (GB/T 32905, the gmsm SM2 guide) and the
native SM2 checked against gmssl, the independent reference.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import pytest

import kmsenv
from kmsenv import signing
from kmsenv.crypto import signature as sig
from kmsenv.exceptions import ConfigurationError, KmsEnvError

VECTORS = Path(__file__).parent / "vectors" / "alibaba-official-java-signature.json"
RECORDS = json.loads(VECTORS.read_text(encoding="utf-8"))


def _data(record: dict) -> tuple[bytes, bool]:
    """What the verifier is given: the message, or the digest the caller passes."""
    if record["content_type"] == "digest":
        return base64.b64decode(record["digest_b64"]), True
    return base64.b64decode(record["message_b64"]), False


def _id(record: dict) -> str:
    return f"{RECORDS.index(record):02d}-{record['category']}-{record['algorithm']}-{record['key_spec']}"


def test_the_file_is_the_public_set():
    assert len(RECORDS) == 34
    assert Counter(r["category"] for r in RECORDS) == {"positive": 19, "negative": 15}
    assert {r["algorithm"] for r in RECORDS} == {a.value for a in signing.SignatureAlgorithm}
    assert {r["key_spec"] for r in RECORDS} == {"RSA_2048", "RSA_3072", "EC_P256", "EC_P256K", "EC_SM2"}
    assert {r["kmsenv_expect"] for r in RECORDS} == {"valid", "invalid"}
    # Every record's expectation agrees with the KMS-path verdict (README).
    assert all(r["kmsenv_expect"] == r["sdk_verify"]["kms_path"] for r in RECORDS)
    # ... and with the independent re-check of the vectors' author.
    assert all(r["kmsenv_expect"] == r["independent_check"] for r in RECORDS)
    # Where the Java SDK's own local verify could not answer (ECDSA keys, digest
    # mode), kmsenv still must: 20 of the 34 records.
    assert sum(r["expect"] not in ("valid", "invalid") for r in RECORDS) == 20


@pytest.mark.parametrize("record", RECORDS, ids=_id)
def test_record_from_public_key(backend, record):
    data, is_digest = _data(record)
    got = signing.verify(
        record["public_key_pem"], record["algorithm"], data, base64.b64decode(record["signature_b64"]), digest=is_digest
    )
    assert got is (record["kmsenv_expect"] == "valid"), record["description"]


@pytest.mark.parametrize("record", RECORDS, ids=_id)
def test_record_from_certificate(backend, record):
    """The certificate's key decides, with the caller's algorithm: a PSS
    signature checked through an RSA certificate verifies (the Java SDK takes
    the algorithm from the certificate's own signature and says invalid)."""
    data, is_digest = _data(record)
    got = signing.verify(
        record["certificate_pem"].encode(),
        signing.SignatureAlgorithm(record["algorithm"]),
        data,
        base64.b64decode(record["signature_b64"]),
        digest=is_digest,
    )
    assert got is (record["kmsenv_expect"] == "valid")


def test_certificates_carry_the_records_keys():
    for r in RECORDS:
        a, b = sig.load_public_key(r["public_key_pem"]), sig.load_public_key(r["certificate_pem"])
        assert a.key_spec == b.key_spec == r["key_spec"]
        if a.key is not None:
            assert a.key.public_numbers() == b.key.public_numbers()
        else:
            assert a.sm2_point == b.sm2_point and len(a.sm2_point) == 64


@pytest.mark.parametrize("record", [r for r in RECORDS if r["category"] == "positive"], ids=_id)
def test_digest_is_what_the_sdk_sent(backend, record):
    """SHA-256(M) for RSA/ECDSA, SM3(Z || M) with ID 1234567812345678 for SM2:
    byte for byte the Digest of the SDK's AsymmetricSign call."""
    message = base64.b64decode(record["message_b64"])
    want = base64.b64decode(record["digest_b64"])
    assert signing.message_digest(record["public_key_pem"], record["algorithm"], message) == want
    if "kms_calls_on_sign" in record:  # not on the n - s variant, which the SDK did not sign
        assert any(f"Digest={record['digest_b64']}" in call for call in record["kms_calls_on_sign"])
    if record["algorithm"] != "SM2DSA":
        assert want == hashlib.sha256(message).digest()
    # A positive in digest mode is also a valid signature of its message.
    assert signing.verify(
        record["public_key_pem"], record["algorithm"], message, base64.b64decode(record["signature_b64"])
    )


def test_every_tamper_kind_is_covered():
    tampers = " ".join(r.get("tamper", "") for r in RECORDS if r["category"] == "negative")
    for kind in (
        "flip",
        "another key",
        "leading 0x00",
        "long form",
        "trailing",
        "salt length 0",
        "checked as RSA_PSS",
        "checked as RSA_PKCS1",
        "no Z value",
        "ALICE123",
        "SM3(M) instead",
    ):
        assert kind in tampers, kind
    assert sum(r["description"].startswith("VARIANT s replaced by n - s") for r in RECORDS) >= 1


def test_high_s_ecdsa_verifies(backend):
    """KMS does not normalise s: both s and n - s verify (the record is the n - s variant)."""
    variant = next(r for r in RECORDS if r["description"].startswith("VARIANT s replaced"))
    r, s = sig.parse_der_signature(base64.b64decode(variant["signature_b64"]))
    order = sig._EC_ORDERS[variant["key_spec"]]
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    data, is_digest = _data(variant)
    for candidate in (s, order - s):
        assert signing.verify(
            variant["public_key_pem"], "ECDSA_SHA_256", data, encode_dss_signature(r, candidate), digest=is_digest
        )
    assert max(s, order - s) > order // 2  # one of the two is high-S


# ------------------------------------------------------------------ errors


def test_malformed_keys_and_arguments_raise():
    rec = next(r for r in RECORDS if r["key_spec"] == "EC_SM2" and r["category"] == "positive")
    data, is_digest = _data(rec)
    signature = base64.b64decode(rec["signature_b64"])
    pem = rec["public_key_pem"]
    bad_keys = [
        "",
        "not pem",
        pem.replace("MFkw", "MFkx"),
        pem.replace("-----END PUBLIC KEY-----", ""),
        pem.replace("MFkwEwYHKoZIzj0CAQYIKoEcz1UBgi0DQgAE", "MFkwEwYHKoZIzj0CAQYIKoEcz1UBgi0DQgAF"),  # 0x05 point
        pem + pem,
        42,
        None,
        "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n",
    ]
    for key in bad_keys:
        with pytest.raises(ConfigurationError):
            signing.verify(key, "SM2DSA", data, signature, digest=is_digest)
    with pytest.raises(ConfigurationError):
        signing.verify(pem, "SM2DSA_SHA_256", data, signature)
    with pytest.raises(ConfigurationError):  # key does not fit the algorithm
        signing.verify(pem, "ECDSA_SHA_256", data, signature, digest=is_digest)
    with pytest.raises(ConfigurationError):  # a digest must be 32 bytes
        signing.verify(pem, "SM2DSA", b"\x00" * 31, signature, digest=True)
    with pytest.raises(ConfigurationError):
        signing.verify(pem, "SM2DSA", "text", signature)
    with pytest.raises(ConfigurationError):
        signing.verify(pem, "SM2DSA", data, signature, digest="yes")
    with pytest.raises(ConfigurationError):
        signing.verify(pem, "SM2DSA", data, signature, sm2_user_id=b"x" * 8192)
    assert issubclass(ConfigurationError, KmsEnvError)


def test_a_point_off_the_curve_is_refused(backend):
    rec = next(r for r in RECORDS if r["key_spec"] == "EC_SM2")
    der = bytearray(base64.b64decode("".join(rec["public_key_pem"].splitlines()[1:-1])))
    der[-1] ^= 1
    pem = "-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(bytes(der)).decode() + "\n-----END PUBLIC KEY-----\n"
    with pytest.raises(ConfigurationError):
        signing.verify(pem, "SM2DSA", b"m", base64.b64decode(rec["signature_b64"]))


@pytest.mark.parametrize("rec", [r for r in RECORDS if r["category"] == "positive"], ids=_id)
def test_garbage_signatures_are_false_not_errors(backend, rec):
    data, is_digest = _data(rec)
    genuine = base64.b64decode(rec["signature_b64"])
    for bad in (
        b"",
        b"\x00",
        genuine[:-1],
        genuine + b"\x00",
        b"\x30" + genuine[1:2] + b"\xff" * (len(genuine) - 2),
        b"\x30\x06\x02\x01\x00\x02\x01\x01",
        os.urandom(len(genuine)),
    ):
        assert signing.verify(rec["public_key_pem"], rec["algorithm"], data, bad, digest=is_digest) is False


# ------------------------------------------------------------------ SM3 / SM2 known answers

# kms-local-server.md 14.4: the gmsm SM2 guide's key, message and signature.
SM2_D = bytes.fromhex("6c5a0a0b2eed3cbec3e4f1252bfe0e28c504a1c6bf1999eebb0af9ef0f8e6c85")
SM2_PUB = bytes.fromhex(
    "8356e642a40ebd18d29ba3532fbd9f3bbee8f027c3f6f39a5ba2f870369f9988"
    "981f5efe55d1c5cdf6c0ef2b070847a14f7fdf4272a8df09c442f3058af94ba1"
)
SM2_MSG = b"ShangMi SM2 Sign Standard"
SM2_Z = bytes.fromhex("1a5970f7804cbe332809ecb70e4e8de3cee55309321f568a14b12d05270b236d")
SM2_E = bytes.fromhex("4cac379502f9c465060ae33889cc95606fbc16f2128733f95a7539ca9d6f5290")
SM2_SIG = bytes.fromhex(
    "304402205b3a799bd94c9063120d7286769220af6b0fa127009af3e873c0e8742edc5f89"
    "0220097968a4c8b040fd548d1456b33f470cabd8456bfea53e8a828f92f6d4bdcd77"
)
SM2_PEM = (
    "-----BEGIN PUBLIC KEY-----\n"
    + base64.b64encode(bytes.fromhex("3059301306072a8648ce3d020106082a811ccf5501822d03420004") + SM2_PUB).decode()
    + "\n-----END PUBLIC KEY-----\n"
)


def test_sm3_and_sm2_known_answers(backend):
    assert sig.sm3(b"abc").hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    assert sig.sm3(b"abcd" * 16).hex() == "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"
    assert sig.sm2_z(SM2_PUB) == SM2_Z
    assert signing.message_digest(SM2_PEM, "SM2DSA", SM2_MSG) == SM2_E
    assert signing.verify(SM2_PEM, "SM2DSA", SM2_MSG, SM2_SIG)
    assert signing.verify(SM2_PEM, "SM2DSA", SM2_E, SM2_SIG, digest=True)
    assert not signing.verify(SM2_PEM, "SM2DSA", SM2_MSG, SM2_SIG, sm2_user_id=b"ALICE123@YAHOO.COM")
    assert not signing.verify(SM2_PEM, "SM2DSA", hashlib.sha256(SM2_MSG).digest(), SM2_SIG, digest=True)


def test_the_backend_in_use_is_the_one_asked_for(backend):
    assert sig.sm2_backend_name() == backend


def _gmssl(point: bytes, private: bytes | None = None):
    from gmssl import sm2

    crypt = sm2.CryptSM2(private_key=private.hex() if private else None, public_key="")
    crypt.public_key = point.hex()
    return crypt


def _gmssl_digest(point: bytes, message: bytes, uid: bytes = b"1234567812345678") -> bytes:
    from gmssl import sm3

    curve = bytes.fromhex(
        "FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC"
        "28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93"
        "32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7"
        "BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0"
    )
    z = bytes.fromhex(sm3.sm3_hash(list((len(uid) * 8).to_bytes(2, "big") + uid + curve + point)))
    return bytes.fromhex(sm3.sm3_hash(list(z + message)))


@pytest.mark.skipif(not kmsenv.native_available(), reason="needs the native core")
def test_native_sm2_against_gmssl():
    """The C core and gmssl agree both ways on fresh keys, messages and IDs:
    gmssl signatures verify natively, native signatures verify in gmssl, and
    the digests (Z with several IDs) are the same."""
    from kmsenv import crypto

    previous = crypto.get_backend().name
    crypto.set_backend("native")
    try:
        for i in range(6):
            d = int.from_bytes(os.urandom(32), "big") % (sig._SM2_N - 2) + 1
            private = d.to_bytes(32, "big")
            point = bytes.fromhex(_gmssl(b"\x00" * 64)._kg(d, sig._SM2_G.hex()))
            message = os.urandom(i * 37)
            uid = [b"1234567812345678", b"", b"ALICE123@YAHOO.COM", os.urandom(40)][i % 4]
            e = sig._sm2_impl().digest(point, uid, message)
            assert e == _gmssl_digest(point, message, uid)
            # gmssl -> native
            k = int.from_bytes(os.urandom(32), "big") % (sig._SM2_N - 1) + 1
            raw = _gmssl(point, private).sign(e, "%064x" % k)
            der = sig._der_signature(int(raw[:64], 16), int(raw[64:], 16))
            assert sig._sm2_impl().verify(point, e, der)
            assert not sig._sm2_impl().verify(point, bytes([e[0] ^ 1]) + e[1:], der)
            # native -> gmssl
            mine = sig.sm2_sign_digest(private, point, e)
            r, s = sig.parse_der_signature(mine)
            assert _gmssl(point).verify("%064x%064x" % (r, s), e)
            assert sig._PureSm2().verify(point, e, mine)
    finally:
        crypto.set_backend(previous)


def test_pure_sm3_without_cryptography_sm3(monkeypatch):
    """Where cryptography's OpenSSL has no SM3, the pure backend hashes with
    gmssl: same answers."""
    monkeypatch.setattr(sig, "_cryptography_sm3_two", lambda a, b: None)
    pure = sig._PureSm2()
    assert pure.sm3(b"abc").hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    assert pure.z(SM2_PUB, b"1234567812345678") == SM2_Z
    assert pure.digest(SM2_PUB, b"1234567812345678", SM2_MSG) == SM2_E
    assert pure.verify(SM2_PUB, SM2_E, SM2_SIG)


def test_pure_sm2_keeps_a_key_whose_hex_starts_with_04():
    """gmssl's constructor lstrip()s "04" from the key's hex, which also eats
    the leading digits of an x that starts with 0x04 (one key in 256); kmsenv
    sets the key after construction."""
    point = bytes.fromhex("0404") + os.urandom(62)
    assert sig._PureSm2()._crypt(point).public_key == point.hex()
