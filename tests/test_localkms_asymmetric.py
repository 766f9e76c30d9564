"""LocalKms asymmetric keys (kms-local-server.md §14.2-§14.6, acceptance §14.13 items 1-5),
driven by the unmodified official clients: alibabacloud-kms20160120 (V2) and
aliyun-python-sdk-kms (V1).  Signatures and ciphertexts are checked against independent
implementations: `cryptography` for RSA/ECDSA, gmssl (pure Python) and the OpenSSL CLI
for SM2, never only against the server's own code."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time

import pytest
from alibabacloud_kms20160120 import models as M
from alibabacloud_kms20160120.client import Client
from alibabacloud_tea_openapi.models import Config
from aliyunsdkcore.acs_exception.exceptions import ClientException, ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkkms.request.v20160120 import (
    AsymmetricDecryptRequest,
    AsymmetricEncryptRequest,
    AsymmetricSignRequest,
    AsymmetricVerifyRequest,
    GetPublicKeyRequest,
    ListKeyVersionsRequest,
)
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from gmssl import sm2 as gm_sm2
from gmssl import sm3 as gm_sm3

from kmsenv.localkms import LocalKms
from kmsenv.localkms import asymmetric

# Reaches no crypto backend, or only through code the backend tests cover: the pure-backend CI pass leaves it out.
pytestmark = pytest.mark.backend_independent

R1, R2 = "cn-hangzhou", "cn-shanghai"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")
SIGN_SPECS = {
    "RSA_2048": "RSA_PSS_SHA_256",
    "RSA_3072": "RSA_PKCS1_SHA_256",
    "EC_P256": "ECDSA_SHA_256",
    "EC_P256K": "ECDSA_SHA_256",
    "EC_SM2": "SM2DSA",
}
SM2_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a811ccf5501822d03420004")
SM2_ID = b"1234567812345678"

# GB/T 32918 / gmsm guide test vector (§14.4).
VEC_D = 0x6C5A0A0B2EED3CBEC3E4F1252BFE0E28C504A1C6BF1999EEBB0AF9EF0F8E6C85
VEC_PUB = (
    "8356e642a40ebd18d29ba3532fbd9f3bbee8f027c3f6f39a5ba2f870369f9988"
    "981f5efe55d1c5cdf6c0ef2b070847a14f7fdf4272a8df09c442f3058af94ba1"
)
VEC_MSG = b"ShangMi SM2 Sign Standard"
VEC_Z = "1a5970f7804cbe332809ecb70e4e8de3cee55309321f568a14b12d05270b236d"
VEC_DIGEST = "4cac379502f9c465060ae33889cc95606fbc16f2128733f95a7539ca9d6f5290"
VEC_SIG = (
    "304402205b3a799bd94c9063120d7286769220af6b0fa127009af3e873c0e8742edc5f89"
    "0220097968a4c8b040fd548d1456b33f470cabd8456bfea53e8a828f92f6d4bdcd77"
)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


def new_client(kms: LocalKms, region: str = R1) -> Client:
    return Client(
        Config(
            access_key_id=kms.access_key_id,
            access_key_secret=kms.access_key_secret,
            endpoint=kms.hosts[region],
            protocol="http",
            region_id=region,
            read_timeout=30000,
            connect_timeout=2000,
        )
    )


def legacy_call(kms: LocalKms, request, region: str = R1) -> dict:
    client = AcsClient(kms.access_key_id, kms.access_key_secret, region)
    request.set_endpoint(kms.hosts[region])
    request.set_protocol_type("http")  # the generated request classes force https
    return json.loads(client.do_action_with_exception(request))


def error_of(excinfo) -> tuple[str, int]:
    exc = excinfo.value
    if isinstance(exc, ServerException):
        return exc.get_error_code(), exc.get_http_status()
    return exc.code, int(exc.status_code if exc.status_code else exc.data.get("statusCode"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sm3(data: bytes) -> bytes:
    # gmssl's SM3 as the independent implementation
    return bytes.fromhex(gm_sm3.sm3_hash(list(data)))


def sm2_point(pem: str) -> bytes:
    der = base64.b64decode("".join(pem.strip().splitlines()[1:-1]))
    assert len(der) == 91 and der.startswith(SM2_SPKI_PREFIX)
    return der[len(SM2_SPKI_PREFIX) :]


def sm2_digest(pem: str, message: bytes) -> bytes:
    """SM3(Z || M) with ID 1234567812345678, computed here from the spec's formula."""
    point = sm2_point(pem)
    p = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
    curve = b"".join(
        v.to_bytes(32, "big")
        for v in (
            p - 3,
            0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93,
            0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7,
            0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0,
        )
    )
    z = sm3(b"\x00\x80" + SM2_ID + curve + point)
    return sm3(z + message)


def gmssl_for(pem: str, private_hex: str = "") -> gm_sm2.CryptSM2:
    point_hex = sm2_point(pem).hex()
    # gmssl strips a leading "04" from the key hex (§14.10): keys whose X starts with it
    # cannot be given to it; callers pick another key version then.
    assert not point_hex.startswith("04")
    return gm_sm2.CryptSM2(private_key=private_hex, public_key=point_hex, mode=1)


def gmssl_verify(pem: str, message: bytes, der_signature: bytes) -> bool:
    r, s = utils.decode_dss_signature(der_signature)
    return bool(gmssl_for(pem).verify_with_sm3("%064x%064x" % (r, s), message))


def digest_for(spec: str, pem: str, message: bytes) -> bytes:
    return sm2_digest(pem, message) if spec == "EC_SM2" else hashlib.sha256(message).digest()


def verify_locally(spec: str, algorithm: str, pem: str, message: bytes, sig: bytes) -> bool:
    if spec == "EC_SM2":
        return gmssl_verify(pem, message, sig)
    public = serialization.load_pem_public_key(pem.encode())
    try:
        if algorithm == "RSA_PSS_SHA_256":
            assert isinstance(public, rsa.RSAPublicKey)
            # salt 32 exactly: OpenSSL checks a given salt length, it does not search
            public.verify(sig, message, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        elif algorithm == "RSA_PKCS1_SHA_256":
            assert isinstance(public, rsa.RSAPublicKey)
            public.verify(sig, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            assert isinstance(public, ec.EllipticCurvePublicKey)
            public.verify(sig, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


@pytest.fixture(scope="module")
def kms():
    with LocalKms(regions=[R1, R2]) as server:
        yield server


@pytest.fixture(scope="module")
def client(kms):
    return new_client(kms)


def first_version(client: Client, key_id: str) -> str:
    body = client.list_key_versions(M.ListKeyVersionsRequest(key_id=key_id)).body
    return body.key_versions.key_version[0].key_version_id


def gmssl_safe_version(kms: LocalKms, client: Client, arn: str) -> tuple[str, str]:
    """A version of the SM2 key whose public point gmssl can take (see gmssl_for)."""
    vid = first_version(client, arn)
    for _ in range(8):
        pem = client.get_public_key(M.GetPublicKeyRequest(key_id=arn, key_version_id=vid)).body.public_key
        if not sm2_point(pem).hex().startswith("04"):
            return vid, pem
        vid = client.create_key_version(M.CreateKeyVersionRequest(key_id=arn)).body.key_version.key_version_id
    raise AssertionError("no usable SM2 key version")  # (255/256)^9 odds


@pytest.fixture(scope="module")
def sign_keys(kms, client) -> dict[str, tuple[str, str]]:
    """spec -> (key id, first version id), created over the wire without KeyUsage."""
    keys = {}
    for spec in SIGN_SPECS:
        meta = client.create_key(M.CreateKeyRequest(key_spec=spec)).body.key_metadata
        keys[spec] = (meta.key_id, first_version(client, meta.key_id))
    return keys


@pytest.fixture(scope="module")
def encrypt_keys(kms) -> dict[str, str]:
    return {spec: kms.create_key(R1, spec, key_usage="ENCRYPT/DECRYPT") for spec in ("RSA_2048", "RSA_3072", "EC_SM2")}


# -- §14.13 item 1: keys, versions, public keys, sign and verify ----------------------


@pytest.mark.parametrize("spec", list(SIGN_SPECS))
def test_create_key_defaults_and_metadata(client, spec):
    meta = client.create_key(M.CreateKeyRequest(key_spec=spec, description="d")).body.key_metadata
    assert (meta.key_spec, meta.key_usage, meta.key_state) == (spec, "SIGN/VERIFY", "Enabled")
    assert meta.primary_key_version is None  # omitted for asymmetric keys
    assert meta.automatic_rotation == "Disabled"
    described = client.describe_key(M.DescribeKeyRequest(key_id=meta.arn)).body.key_metadata
    assert described.primary_key_version is None
    assert described.last_rotation_date == meta.creation_date
    body = client.list_key_versions(M.ListKeyVersionsRequest(key_id=meta.key_id)).body
    assert body.total_count == 1 and len(body.key_versions.key_version) == 1
    version = body.key_versions.key_version[0]
    assert version.key_id == meta.key_id and len(version.key_version_id) == 36
    one = client.describe_key_version(
        M.DescribeKeyVersionRequest(key_id=meta.key_id, key_version_id=version.key_version_id)
    ).body.key_version
    assert (one.key_id, one.key_version_id, one.creation_date) == (
        meta.key_id,
        version.key_version_id,
        version.creation_date,
    )


def test_list_keys_filters_asymmetric_spec(client, sign_keys):
    filters = json.dumps([{"Key": "KeySpec", "Values": ["EC_SM2"]}, {"Key": "KeyState", "Values": ["Enabled"]}])
    keys = client.list_keys(M.ListKeysRequest(filters=filters, page_size=100)).body.keys.key
    assert sign_keys["EC_SM2"][0] in {k.key_id for k in keys}
    assert sign_keys["EC_P256"][0] not in {k.key_id for k in keys}


@pytest.mark.parametrize("spec", list(SIGN_SPECS))
def test_public_key_pem(client, sign_keys, spec):
    key_id, vid = sign_keys[spec]
    body = client.get_public_key(M.GetPublicKeyRequest(key_id=key_id, key_version_id=vid)).body
    assert (body.key_id, body.key_version_id) == (key_id, vid)
    pem = body.public_key
    assert pem.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert pem.endswith("\n-----END PUBLIC KEY-----\n")
    assert all(len(line) <= 64 for line in pem.splitlines())
    if spec == "EC_SM2":
        assert pem.splitlines()[1].startswith("MFkwEwYHKoZIzj0CAQYIKoEcz1UBgi0DQgAE")
        assert len(sm2_point(pem)) == 64
        return
    public = serialization.load_pem_public_key(pem.encode())
    expected = {
        "RSA_2048": (rsa.RSAPublicKey, 2048),
        "RSA_3072": (rsa.RSAPublicKey, 3072),
        "EC_P256": (ec.EllipticCurvePublicKey, 256),
        "EC_P256K": (ec.EllipticCurvePublicKey, 256),
    }[spec]
    assert isinstance(public, expected[0]) and public.key_size == expected[1]
    if spec.startswith("EC_"):
        assert public.curve.name == {"EC_P256": "secp256r1", "EC_P256K": "secp256k1"}[spec]
    # Byte-for-byte what cryptography writes for that key (the documented KMS format).
    assert (
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode() == pem
    )


@pytest.mark.parametrize(
    "spec,algorithm",
    [
        ("RSA_2048", "RSA_PSS_SHA_256"),
        ("RSA_2048", "RSA_PKCS1_SHA_256"),
        ("RSA_3072", "RSA_PSS_SHA_256"),
        ("RSA_3072", "RSA_PKCS1_SHA_256"),
        ("EC_P256", "ECDSA_SHA_256"),
        ("EC_P256K", "ECDSA_SHA_256"),
        ("EC_SM2", "SM2DSA"),
    ],
)
def test_sign_verifies_locally_and_with_kms(kms, client, sign_keys, spec, algorithm):
    key_id, vid = sign_keys[spec]
    if spec == "EC_SM2":
        vid, pem = gmssl_safe_version(kms, client, key_id)
    else:
        pem = client.get_public_key(M.GetPublicKeyRequest(key_id=key_id, key_version_id=vid)).body.public_key
    message = os.urandom(100)
    digest = digest_for(spec, pem, message)
    body = client.asymmetric_sign(
        M.AsymmetricSignRequest(key_id=key_id, key_version_id=vid, algorithm=algorithm, digest=b64(digest))
    ).body
    assert (body.key_id, body.key_version_id) == (key_id, vid)
    sig = base64.b64decode(body.value)
    if spec.startswith("RSA"):
        assert len(sig) == int(spec[4:]) // 8  # raw, modulus length
    else:
        assert sig[0] == 0x30 and len(sig) <= 72  # DER SEQUENCE{r, s}
        utils.decode_dss_signature(sig)
    assert verify_locally(spec, algorithm, pem, message, sig)
    assert not verify_locally(spec, algorithm, pem, message + b"x", sig)

    def kms_verify(signature: bytes, d: bytes = digest):
        return client.asymmetric_verify(
            M.AsymmetricVerifyRequest(
                key_id=key_id, key_version_id=vid, algorithm=algorithm, digest=b64(d), value=b64(signature)
            )
        ).body.value

    assert kms_verify(sig) is True
    flipped = bytearray(sig)
    flipped[len(sig) // 2] ^= 0x01
    result = kms_verify(bytes(flipped))
    assert result is False  # a JSON boolean, not the truthy string "false"
    assert kms_verify(sig, hashlib.sha256(b"other").digest()) is False
    assert kms_verify(b"not a signature") is False  # unparseable: false, not an error


def test_sign_and_verify_with_v1_client(kms, client, sign_keys):
    for spec in ("RSA_2048", "EC_P256", "EC_SM2"):
        key_id, vid = sign_keys[spec]
        req = GetPublicKeyRequest.GetPublicKeyRequest()
        req.set_KeyId(key_id)
        req.set_KeyVersionId(vid)
        pem = legacy_call(kms, req)["PublicKey"]
        digest = digest_for(spec, pem, b"v1 message")
        sign = AsymmetricSignRequest.AsymmetricSignRequest()
        sign.set_KeyId(key_id)
        sign.set_KeyVersionId(vid)
        sign.set_Algorithm(SIGN_SPECS[spec])
        sign.set_Digest(base64.b64encode(digest))  # bytes, as Alibaba's Python SDK sends
        value = legacy_call(kms, sign)["Value"]
        verify = AsymmetricVerifyRequest.AsymmetricVerifyRequest()
        verify.set_KeyId(key_id)
        verify.set_KeyVersionId(vid)
        verify.set_Algorithm(SIGN_SPECS[spec])
        verify.set_Digest(b64(digest))
        verify.set_Value(value)
        assert legacy_call(kms, verify)["Value"] is True
        verify.set_Digest(b64(hashlib.sha256(b"other").digest()))
        assert legacy_call(kms, verify)["Value"] is False
        versions = ListKeyVersionsRequest.ListKeyVersionsRequest()
        versions.set_KeyId(key_id)
        listed = legacy_call(kms, versions)
        assert isinstance(listed["KeyVersions"]["KeyVersion"], list)  # even with one item
        assert listed["KeyVersions"]["KeyVersion"][0]["KeyVersionId"] == vid


# -- §14.13 item 2: SM2 ---------------------------------------------------------------


def test_sm2_public_vector_in_emulator_code():
    key = asymmetric.Sm2Key(VEC_D)
    assert "%064x%064x" % key.public == VEC_PUB
    assert asymmetric.sm2_z(key.public).hex() == VEC_Z
    assert asymmetric.sm3(bytes.fromhex(VEC_Z) + VEC_MSG).hex() == VEC_DIGEST
    assert asymmetric.sm2_verify(key.public, bytes.fromhex(VEC_DIGEST), bytes.fromhex(VEC_SIG))
    assert not asymmetric.sm2_verify(key.public, bytes.fromhex(VEC_DIGEST)[::-1], bytes.fromhex(VEC_SIG))
    # SM3 against the published "abc" value, and the PEM helper agrees with gmssl's Z rule.
    assert asymmetric.sm3(b"abc").hex().startswith("66c7f0f4") and sm3(b"abc") == asymmetric.sm3(b"abc")
    pem = key.public_pem()
    assert sm2_digest(pem, VEC_MSG).hex() == VEC_DIGEST
    # The stored private key form round-trips and is OpenSSL's 138-byte PKCS#8.
    der = key.private_der()
    assert len(der) == 138 and asymmetric.load("EC_SM2", der).public == key.public


def test_sm2_signature_over_raw_sm3_does_not_verify_as_signature_of_message(kms, client):
    arn = kms.create_key(R1, "EC_SM2")
    vid, pem = gmssl_safe_version(kms, client, arn)
    message = b"raw digest trap"
    wrong = client.asymmetric_sign(
        M.AsymmetricSignRequest(key_id=arn, key_version_id=vid, algorithm="SM2DSA", digest=b64(sm3(message)))
    ).body.value
    assert not gmssl_verify(pem, message, base64.b64decode(wrong))
    right = client.asymmetric_sign(
        M.AsymmetricSignRequest(
            key_id=arn, key_version_id=vid, algorithm="SM2DSA", digest=b64(sm2_digest(pem, message))
        )
    ).body.value
    assert gmssl_verify(pem, message, base64.b64decode(right))


def test_sm2_signature_verifies_with_openssl(tmp_path, kms, client):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    arn = kms.create_key(R1, "EC_SM2")
    vid = kms.key_versions(arn)[0]
    pem = client.get_public_key(M.GetPublicKeyRequest(key_id=arn, key_version_id=vid)).body.public_key
    message = os.urandom(64)
    sig = base64.b64decode(
        client.asymmetric_sign(
            M.AsymmetricSignRequest(
                key_id=arn, key_version_id=vid, algorithm="SM2DSA", digest=b64(sm2_digest(pem, message))
            )
        ).body.value
    )
    (tmp_path / "pub.pem").write_text(pem)
    (tmp_path / "msg").write_bytes(message)
    (tmp_path / "sig").write_bytes(sig)

    def openssl_verify(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                "openssl",
                "dgst",
                "-sm3",
                "-verify",
                str(tmp_path / "pub.pem"),
                *extra,
                "-signature",
                str(tmp_path / "sig"),
                str(tmp_path / "msg"),
            ],
            capture_output=True,
            text=True,
        )

    # OpenSSL 3.0's dgst takes the verification ID through -sigopt (-vfyopt is 3.x later)
    probe = openssl_verify("-sigopt", "distid:1234567812345678")
    if "Verified OK" not in probe.stdout and "unknown" in probe.stderr.lower():
        pytest.skip(f"this openssl cannot verify SM2: {probe.stderr.strip()[:200]}")
    assert "Verified OK" in probe.stdout, probe.stderr
    assert "Verified OK" not in openssl_verify().stdout  # empty ID: a different Z


# -- §14.13 item 3: encryption ----------------------------------------------------------


def _decrypt(client, arn, vid, algorithm, ciphertext: bytes) -> bytes:
    return base64.b64decode(
        client.asymmetric_decrypt(
            M.AsymmetricDecryptRequest(
                key_id=arn, key_version_id=vid, algorithm=algorithm, ciphertext_blob=b64(ciphertext)
            )
        ).body.plaintext
    )


def _encrypt(client, arn, vid, algorithm, plaintext: bytes) -> bytes:
    return base64.b64decode(
        client.asymmetric_encrypt(
            M.AsymmetricEncryptRequest(key_id=arn, key_version_id=vid, algorithm=algorithm, plaintext=b64(plaintext))
        ).body.ciphertext_blob
    )


@pytest.mark.parametrize(
    "spec,algorithm,limit",
    [
        ("RSA_2048", "RSAES_OAEP_SHA_256", 190),
        ("RSA_2048", "RSAES_OAEP_SHA_1", 214),
        ("RSA_3072", "RSAES_OAEP_SHA_256", 318),
        ("RSA_3072", "RSAES_OAEP_SHA_1", 342),
    ],
)
def test_rsa_oaep(client, encrypt_keys, spec, algorithm, limit):
    arn = encrypt_keys[spec]
    vid = first_version(client, arn)
    pem = client.get_public_key(M.GetPublicKeyRequest(key_id=arn, key_version_id=vid)).body.public_key
    public = serialization.load_pem_public_key(pem.encode())
    h = hashes.SHA1() if algorithm.endswith("SHA_1") else hashes.SHA256()
    oaep = padding.OAEP(padding.MGF1(h), h, None)
    plaintext = os.urandom(limit)
    assert _decrypt(client, arn, vid, algorithm, public.encrypt(plaintext, oaep)) == plaintext
    blob1 = _encrypt(client, arn, vid, algorithm, plaintext)
    blob2 = _encrypt(client, arn, vid, algorithm, plaintext)
    assert blob1 != blob2 and len(blob1) == int(spec[4:]) // 8  # randomized, raw
    assert _decrypt(client, arn, vid, algorithm, blob1) == plaintext
    with pytest.raises(Exception) as e:
        _encrypt(client, arn, vid, algorithm, os.urandom(limit + 1))
    assert error_of(e) == ("InvalidParameter", 400)
    # The other OAEP hash does not decrypt it: an error, not garbage.
    other = "RSAES_OAEP_SHA_1" if algorithm.endswith("256") else "RSAES_OAEP_SHA_256"
    with pytest.raises(Exception) as e:
        _decrypt(client, arn, vid, other, blob1)
    assert error_of(e) == ("InvalidParameter", 400)


def test_sm2pke(kms, client, encrypt_keys):
    arn = encrypt_keys["EC_SM2"]
    vid, pem = gmssl_safe_version(kms, client, arn)
    plaintext = os.urandom(200)
    blob = _encrypt(client, arn, vid, "SM2PKE", plaintext)
    assert len(blob) == len(plaintext) + 97 and blob[0] == 0x04
    assert _decrypt(client, arn, vid, "SM2PKE", blob) == plaintext
    assert _encrypt(client, arn, vid, "SM2PKE", plaintext) != blob
    # Independent encryptor: gmssl C1C3C2 without 04 (its own output), with 04, and as
    # the GM/T 0009 DER SM2Cipher.
    gm = gmssl_for(pem)
    raw = gm.encrypt(plaintext)
    assert _decrypt(client, arn, vid, "SM2PKE", raw) == plaintext
    assert _decrypt(client, arn, vid, "SM2PKE", b"\x04" + raw) == plaintext
    x, y, c3, c2 = raw[:32], raw[32:64], raw[64:96], raw[96:]

    def der_int(b: bytes) -> bytes:
        b = b.lstrip(b"\x00") or b"\x00"
        b = b"\x00" + b if b[0] & 0x80 else b
        return b"\x02" + bytes([len(b)]) + b

    def der_octets(b: bytes) -> bytes:
        length = bytes([len(b)]) if len(b) < 0x80 else b"\x81" + bytes([len(b)])
        return b"\x04" + length + b

    body = der_int(x) + der_int(y) + der_octets(c3) + der_octets(c2)
    der = b"\x30\x82" + len(body).to_bytes(2, "big") + body
    assert _decrypt(client, arn, vid, "SM2PKE", der) == plaintext
    # C1C2C3 (the 2010 order) with 04 also decrypts: the C3 check decides.
    assert _decrypt(client, arn, vid, "SM2PKE", b"\x04" + x + y + c2 + c3) == plaintext
    # Limits and failures
    assert _decrypt(client, arn, vid, "SM2PKE", _encrypt(client, arn, vid, "SM2PKE", b"z" * 6047)) == b"z" * 6047
    with pytest.raises(Exception) as e:
        _encrypt(client, arn, vid, "SM2PKE", b"z" * 6048)
    assert error_of(e) == ("InvalidParameter", 400)
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(Exception) as e:
        _decrypt(client, arn, vid, "SM2PKE", bytes(tampered))
    assert error_of(e) == ("InvalidParameter", 400)


def test_sm2pke_in_emulator_code_against_gmssl_private_key():
    key = asymmetric.Sm2Key(VEC_D)
    gm = gm_sm2.CryptSM2(private_key="%064x" % VEC_D, public_key=VEC_PUB, mode=1)
    ours = key.encrypt("SM2PKE", b"encryption standard")
    assert gm.decrypt(ours[1:]) == b"encryption standard"
    assert key.decrypt("SM2PKE", gm.encrypt(b"the other way")) == b"the other way"


def test_encrypt_decrypt_with_v1_client(kms, client, encrypt_keys):
    arn = encrypt_keys["RSA_2048"]
    vid = first_version(client, arn)
    enc = AsymmetricEncryptRequest.AsymmetricEncryptRequest()
    enc.set_KeyId(arn)
    enc.set_KeyVersionId(vid)
    enc.set_Algorithm("RSAES_OAEP_SHA_256")
    enc.set_Plaintext(b64(b"v1 plaintext"))
    blob = legacy_call(kms, enc)["CiphertextBlob"]
    dec = AsymmetricDecryptRequest.AsymmetricDecryptRequest()
    dec.set_KeyId(arn)
    dec.set_KeyVersionId(vid)
    dec.set_Algorithm("RSAES_OAEP_SHA_256")
    dec.set_CiphertextBlob(blob)
    assert base64.b64decode(legacy_call(kms, dec)["Plaintext"]) == b"v1 plaintext"


# -- §14.13 item 4: errors -------------------------------------------------------------


def test_sign_errors_in_check_order(kms, client, sign_keys, encrypt_keys):
    key_id, vid = sign_keys["RSA_2048"]
    digest = b64(hashlib.sha256(b"m").digest())

    def sign(**kw):
        args = dict(key_id=key_id, key_version_id=vid, algorithm="RSA_PSS_SHA_256", digest=digest)
        args.update(kw)
        with pytest.raises(Exception) as e:
            client.asymmetric_sign(M.AsymmetricSignRequest(**args))
        return error_of(e)

    assert sign(algorithm="ECDSA_SHA_256") == ("InvalidParameter", 400)
    assert sign(algorithm="RSAES_OAEP_SHA_256") == ("InvalidParameter", 400)
    assert sign(digest=b64(os.urandom(20))) == ("InvalidParameter", 400)
    assert sign(digest="not base64!") == ("InvalidParameter", 400)
    assert sign(key_version_id="00000000-0000-0000-0000-000000000000") == ("Forbidden.KeyVersionNotFound", 404)
    # a version of another key
    assert sign(key_version_id=sign_keys["RSA_3072"][1]) == ("Forbidden.KeyVersionNotFound", 404)
    assert sign(key_version_id=None) == ("MissingParameter", 400)
    assert sign(algorithm=None) == ("MissingParameter", 400)
    assert sign(digest=None) == ("MissingParameter", 400)
    assert sign(key_id="alias/nope") == ("Forbidden.AliasNotFound", 404)
    assert sign(key_id="00000000-0000-0000-0000-000000000000") == ("Forbidden.KeyNotFound", 404)
    # An ARN of another region's key is not found here
    other = kms.create_key(R2, "RSA_2048")
    assert sign(key_id=other) == ("Forbidden.KeyNotFound", 404)
    # Usage mismatch wins over a wrong algorithm (§14.6 rows 6-8)
    enc = encrypt_keys["RSA_2048"]
    enc_vid = kms.key_versions(enc)[0]
    assert sign(key_id=enc, key_version_id=enc_vid) == ("Rejected.UnsupportedOperation", 400)
    assert sign(key_id=enc, key_version_id=enc_vid, algorithm="nope") == ("Rejected.UnsupportedOperation", 400)
    # Asymmetric operations on a symmetric key
    sym = kms.create_key(R1)
    assert sign(key_id=sym, key_version_id=kms.key_versions(sym)[0]) == ("Rejected.UnsupportedOperation", 400)
    with pytest.raises(Exception) as e:
        client.asymmetric_verify(
            M.AsymmetricVerifyRequest(
                key_id=key_id, key_version_id=vid, algorithm="RSA_PSS_SHA_256", digest=digest, value="%%%"
            )
        )
    assert error_of(e) == ("InvalidParameter", 400)
    # DryRun after every check passed
    assert sign(dry_run="true") == ("DryRunOperation", 400)


def test_encrypt_errors(kms, client, sign_keys, encrypt_keys):
    key_id, vid = sign_keys["RSA_2048"]
    with pytest.raises(Exception) as e:  # Encrypt with a SIGN/VERIFY key
        _encrypt(client, key_id, vid, "RSAES_OAEP_SHA_256", b"x")
    assert error_of(e) == ("Rejected.UnsupportedOperation", 400)
    arn = encrypt_keys["RSA_2048"]
    evid = kms.key_versions(arn)[0]
    for bad in (b"",):
        with pytest.raises(Exception) as e:
            client.asymmetric_encrypt(
                M.AsymmetricEncryptRequest(
                    key_id=arn, key_version_id=evid, algorithm="RSAES_OAEP_SHA_256", plaintext=b64(bad)
                )
            )
        assert error_of(e) == ("MissingParameter", 400)
    with pytest.raises(Exception) as e:
        _encrypt(client, arn, evid, "SM2PKE", b"x")
    assert error_of(e) == ("InvalidParameter", 400)
    with pytest.raises(Exception) as e:
        _decrypt(client, arn, evid, "RSAES_OAEP_SHA_256", os.urandom(100))  # wrong size
    assert error_of(e) == ("InvalidParameter", 400)


def test_symmetric_operations_on_asymmetric_key(kms, client, encrypt_keys):
    arn = encrypt_keys["RSA_2048"]  # ENCRYPT/DECRYPT usage, but asymmetric
    with pytest.raises(Exception) as e:
        client.encrypt(M.EncryptRequest(key_id=arn, plaintext="hello"))
    assert error_of(e) == ("Rejected.UnsupportedOperation", 400)
    with pytest.raises(Exception) as e:
        client.generate_data_key(M.GenerateDataKeyRequest(key_id=arn))
    assert error_of(e) == ("Rejected.UnsupportedOperation", 400)
    with pytest.raises(Exception) as e:
        client.generate_data_key_without_plaintext(M.GenerateDataKeyWithoutPlaintextRequest(key_id=arn))
    assert error_of(e) == ("Rejected.UnsupportedOperation", 400)
    sym = kms.create_key(R1)
    blob = client.encrypt(M.EncryptRequest(key_id=sym, plaintext="x")).body.ciphertext_blob
    with pytest.raises(Exception) as e:
        client.re_encrypt(M.ReEncryptRequest(ciphertext_blob=blob, destination_key_id=arn))
    assert error_of(e) == ("Rejected.UnsupportedOperation", 400)


@pytest.mark.parametrize(
    "spec,usage",
    [
        ("EC_P256", "ENCRYPT/DECRYPT"),
        ("EC_P256K", "ENCRYPT/DECRYPT"),
        ("Aliyun_AES_256", "SIGN/VERIFY"),
        ("RSA_2048", "SIGN"),
        ("RSA_4096", None),
    ],
)
def test_create_key_invalid_combinations(client, spec, usage):
    with pytest.raises(Exception) as e:
        client.create_key(M.CreateKeyRequest(key_spec=spec, key_usage=usage))
    assert error_of(e) == ("InvalidParameter", 400)


def test_create_key_rotation_flag_refused_for_asymmetric(client):
    with pytest.raises(Exception) as e:
        client.create_key(M.CreateKeyRequest(key_spec="EC_SM2", enable_automatic_rotation=True))
    assert error_of(e) == ("InvalidParameter", 400)
    meta = client.create_key(M.CreateKeyRequest(key_spec="EC_SM2", enable_automatic_rotation=False)).body
    assert meta.key_metadata.key_spec == "EC_SM2"


def test_disabled_key_and_alias_and_arn_resolution(kms, client):
    arn = kms.create_key(R1, "EC_P256")
    vid = kms.key_versions(arn)[0]
    kms.create_alias(R1, "alias/asym-p256", arn)
    digest = b64(hashlib.sha256(b"m").digest())
    for ref in (arn, "alias/asym-p256", f"acs:kms:{R1}:{kms.account_uid}:alias/asym-p256", arn.rsplit("/", 1)[1]):
        body = client.asymmetric_sign(
            M.AsymmetricSignRequest(key_id=ref, key_version_id=vid, algorithm="ECDSA_SHA_256", digest=digest)
        ).body
        assert body.key_id == arn.rsplit("/", 1)[1]
    kms.disable_key(arn)
    try:
        for call in (
            lambda: client.asymmetric_sign(
                M.AsymmetricSignRequest(key_id=arn, key_version_id=vid, algorithm="ECDSA_SHA_256", digest=digest)
            ),
            lambda: client.get_public_key(M.GetPublicKeyRequest(key_id=arn, key_version_id=vid)),
        ):
            with pytest.raises(Exception) as e:
                call()
            assert error_of(e) == ("Rejected.Disabled", 409)
        # V1: ServerException, which is not a ClientException (Alibaba's SDK relies on it)
        req = AsymmetricSignRequest.AsymmetricSignRequest()
        req.set_KeyId(arn)
        req.set_KeyVersionId(vid)
        req.set_Algorithm("ECDSA_SHA_256")
        req.set_Digest(digest)
        with pytest.raises(ServerException) as e:
            legacy_call(kms, req)
        assert not isinstance(e.value, ClientException)
        assert error_of(e) == ("Rejected.Disabled", 409)
        # versions stay listable in any state
        assert client.list_key_versions(M.ListKeyVersionsRequest(key_id=arn)).body.total_count == 1
    finally:
        kms.enable_key(arn)


# -- §14.13 item 5: key versions --------------------------------------------------------


def test_create_key_version_sm2(kms, client):
    arn = client.create_key(M.CreateKeyRequest(key_spec="EC_SM2")).body.key_metadata.arn
    v1 = first_version(client, arn)
    before = client.describe_key(M.DescribeKeyRequest(key_id=arn)).body.key_metadata
    time.sleep(1.1)  # dates have one-second resolution
    v2 = client.create_key_version(M.CreateKeyVersionRequest(key_id=arn)).body.key_version
    assert v2.key_version_id != v1
    after = client.describe_key(M.DescribeKeyRequest(key_id=arn)).body.key_metadata
    assert after.last_rotation_date == v2.creation_date > before.last_rotation_date
    assert after.primary_key_version is None
    listed = client.list_key_versions(M.ListKeyVersionsRequest(key_id=arn)).body
    assert [v.key_version_id for v in listed.key_versions.key_version] == [v1, v2.key_version_id]
    pems = {
        v: client.get_public_key(M.GetPublicKeyRequest(key_id=arn, key_version_id=v)).body.public_key
        for v in (v1, v2.key_version_id)
    }
    assert pems[v1] != pems[v2.key_version_id]
    message = b"versioned"
    for vid, pem in pems.items():
        digest = sm2_digest(pem, message)
        sig = client.asymmetric_sign(
            M.AsymmetricSignRequest(key_id=arn, key_version_id=vid, algorithm="SM2DSA", digest=b64(digest))
        ).body.value
        assert asymmetric.sm2_verify(_point(pem), digest, base64.b64decode(sig))
        for other_vid in pems:  # each version verifies its own signatures only
            ok = client.asymmetric_verify(
                M.AsymmetricVerifyRequest(
                    key_id=arn, key_version_id=other_vid, algorithm="SM2DSA", digest=b64(digest), value=sig
                )
            ).body.value
            assert ok is (other_vid == vid)


def _point(pem: str) -> tuple[int, int]:
    raw = sm2_point(pem)
    return int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")


def test_create_key_version_symmetric_becomes_primary(kms, client):
    arn = kms.create_key(R1)
    old_blob = client.encrypt(M.EncryptRequest(key_id=arn, plaintext="old")).body
    new = client.create_key_version(M.CreateKeyVersionRequest(key_id=arn)).body.key_version
    meta = client.describe_key(M.DescribeKeyRequest(key_id=arn)).body.key_metadata
    assert meta.primary_key_version == new.key_version_id
    blob = client.encrypt(M.EncryptRequest(key_id=arn, plaintext="new")).body
    assert blob.key_version_id == new.key_version_id != old_blob.key_version_id
    assert client.decrypt(M.DecryptRequest(ciphertext_blob=old_blob.ciphertext_blob)).body.plaintext == "old"


def test_asymmetric_keys_persist_in_state_dir(tmp_path):
    state = str(tmp_path / "state")
    with LocalKms(regions=[R1], state_dir=state) as kms:
        arns = {spec: kms.create_key(R1, spec) for spec in ("RSA_2048", "EC_P256K", "EC_SM2")}
        client = new_client(kms)
        pems = {
            spec: client.get_public_key(
                M.GetPublicKeyRequest(key_id=arn, key_version_id=kms.key_versions(arn)[0])
            ).body.public_key
            for spec, arn in arns.items()
        }
    with LocalKms(regions=[R1], state_dir=state) as kms:
        client = new_client(kms)
        for spec, arn in arns.items():
            vid = kms.key_versions(arn)[0]
            pem = client.get_public_key(M.GetPublicKeyRequest(key_id=arn, key_version_id=vid)).body.public_key
            assert pem == pems[spec]
            digest = digest_for(spec, pem, b"after restart")
            sig = client.asymmetric_sign(
                M.AsymmetricSignRequest(key_id=arn, key_version_id=vid, algorithm=SIGN_SPECS[spec], digest=b64(digest))
            ).body.value
            assert (
                client.asymmetric_verify(
                    M.AsymmetricVerifyRequest(
                        key_id=arn, key_version_id=vid, algorithm=SIGN_SPECS[spec], digest=b64(digest), value=sig
                    )
                ).body.value
                is True
            )


def test_strict_version_interval():
    with LocalKms(regions=[R1], strict_version_interval=True) as kms:
        client = new_client(kms)
        arn = kms.create_key(R1, "EC_P256")
        with pytest.raises(Exception) as e:
            client.create_key_version(M.CreateKeyVersionRequest(key_id=arn))
        assert error_of(e) == ("Rejected.UnsupportedOperation", 400)
        assert len(kms.key_versions(arn)) == 1
    with LocalKms(regions=[R1]) as kms:  # default: no interval
        client = new_client(kms)
        arn = kms.create_key(R1, "EC_P256")
        for _ in range(2):
            client.create_key_version(M.CreateKeyVersionRequest(key_id=arn))
        assert len(kms.key_versions(arn)) == 3
        kms.disable_key(arn)
        with pytest.raises(Exception) as e:
            client.create_key_version(M.CreateKeyVersionRequest(key_id=arn))
        assert error_of(e) == ("Rejected.Disabled", 409)
