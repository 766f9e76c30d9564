"""kmsenv.instance: the protobuf codec, ClientKeys, request signing, and the instance
client against LocalKms's instance gateways, with blobs exchanged both ways with the
UNMODIFIED official client (alibabacloud-dkms-gcs in its own virtual environment, see
tests/instance_driver.py).  Expected bytes come from the spec's verified vectors, the
official protobuf runtime, ``cryptography`` and the official client, never from the
code under test."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from hypothesis import given, settings
from hypothesis import strategies as st

import instance_driver
from kmsenv.exceptions import ConfigurationError, KmsError, MessageFormatError
from kmsenv.instance import AuthError, ClientKeyError, ProtobufError, auth, create_client_key, load_client_key, proto
from kmsenv.instance.client import InstanceClient, context_aad, pack_transfer_blob, unpack_transfer_blob
from kmsenv.localkms import LocalKms
from kmsenv.localkms.instance import InstanceSpec, make_ca

# Reaches no crypto backend, or only through code the backend tests cover: the pure-backend CI pass leaves it out.
pytestmark = pytest.mark.backend_independent

PRIMARY, REPLICA = "kst-hzz-primary", "kst-sha-replica"


@pytest.fixture(scope="session")
def official(tmp_path_factory: pytest.TempPathFactory) -> str:
    return instance_driver.official_python(tmp_path_factory)


# -- proto: the spec's verified vectors, strictness, the official runtime -----------------

# kms-instance-gateway.md §2.4 and §3.3, observed on the wire from the official client.
SPEC_VECTORS = [
    ("EncryptRequest", {"KeyId": "key-emu-1", "Plaintext": b"hi"}, "0a096b65792d656d752d3112026869"),
    (
        "EncryptResponse",
        {
            "KeyId": "key-emu-1",
            "CiphertextBlob": bytes(range(18)),
            "Iv": bytes(12),
            "RequestId": "rid-1",
            "Algorithm": "AES_GCM",
        },
        "0a096b65792d656d752d311212000102030405060708090a0b0c0d0e0f10111a0c"
        "00000000000000000000000022057269642d312a074145535f47434d",
    ),
    (
        "Error",
        {
            "StatusCode": 404,
            "ErrorCode": "Forbidden.KeyNotFound",
            "ErrorMessage": "The specified Key is not found.",
            "RequestId": "rid-2",
        },
        "0894031215466f7262696464656e2e4b65794e6f74466f756e641a1f54686520737065636966696564204b6579"
        "206973206e6f7420666f756e642e22057269642d32",
    ),
]


@pytest.mark.parametrize("name,fields,hex_bytes", SPEC_VECTORS)
def test_spec_vectors_encode_and_decode(name, fields, hex_bytes):
    assert proto.encode(name, fields).hex() == hex_bytes
    decoded = proto.decode(name, bytes.fromhex(hex_bytes))
    assert {k: v for k, v in decoded.items() if k in fields} == fields


@pytest.mark.parametrize(
    "data,why",
    [
        (bytes.fromhex("0a05616263"), "length past the end"),
        (bytes.fromhex("0a"), "truncated varint"),
        (bytes.fromhex("10ffffffffffffffffffff01"), "varint over 10 bytes"),
        (bytes.fromhex("0801"), "wire type 0 for a string field"),
        (bytes.fromhex("0a02c328"), "not UTF-8"),
        (bytes.fromhex("0b"), "group wire type"),
        (bytes.fromhex("00"), "field number 0"),
    ],
)
def test_malformed_messages_are_refused(data, why):
    with pytest.raises(ProtobufError):
        proto.decode("EncryptRequest", data)


def test_int32_bool_and_size_limits():
    big = b"\x08" + bytes.fromhex("8080808010")  # 2**32 in field 1 (Length)
    with pytest.raises(ProtobufError, match="int32"):
        proto.decode("GenerateRandomRequest", big)
    with pytest.raises(ProtobufError, match="bool"):
        proto.decode("VerifyResponse", b"\x10\x02")
    with pytest.raises(ProtobufError, match="limit"):
        proto.decode("EncryptRequest", bytes(100), max_size=99)
    with pytest.raises(ProtobufError):
        proto.encode("GenerateRandomRequest", {"Length": 2**31})
    with pytest.raises(ProtobufError, match="no field"):
        proto.encode("EncryptRequest", {"Nope": "x"})
    assert issubclass(ProtobufError, MessageFormatError)
    # Unknown fields are skipped (proto3), of every wire type.
    unknown = b"\x78\x05" + b"\x81\x01" + bytes(8) + b"\x85\x01" + bytes(4) + b"\x8a\x01\x01z" + b"\x08\x07"
    assert proto.decode("GenerateRandomRequest", unknown)["Length"] == 7


@settings(max_examples=60, deadline=None)
@given(
    name=st.text(max_size=20),
    stages=st.lists(st.text(max_size=8), max_size=4),
    flag=st.booleans(),
    blob=st.binary(max_size=64),
    n=st.integers(-(2**31), 2**31 - 1),
)
def test_round_trips(name, stages, flag, blob, n):
    fields = {"SecretName": name, "VersionStages": stages, "SecretData": name[::-1]}
    assert (
        proto.decode("GetSecretValueResponse", proto.encode("GetSecretValueResponse", fields))["VersionStages"]
        == stages
    )
    decoded = proto.decode("VerifyResponse", proto.encode("VerifyResponse", {"Value": flag, "KeyId": name}))
    assert decoded["Value"] is flag and decoded["KeyId"] == name
    assert proto.decode("GenerateRandomRequest", proto.encode("GenerateRandomRequest", {"Length": n}))["Length"] == n
    assert proto.decode("HashResponse", proto.encode("HashResponse", {"Digest": blob}))["Digest"] == blob


def test_encoding_matches_the_official_protobuf_runtime(official):
    cases = [
        ("GenerateRandomRequest", {"Length": -5}),
        ("GetSecretValueResponse", {"SecretName": "s", "VersionStages": ["ACSCurrent", "x"], "RequestId": "é"}),
        ("VerifyResponse", {"KeyId": "k", "Value": True}),
        (
            "AdvanceGenerateDataKeyResponse",
            {"KeyId": "k", "Iv": b"\x00" * 12, "Plaintext": b"\xff", "KeyVersionId": "v"},
        ),
    ]
    for name, fields in cases:
        job = {"mode": "encode", "message": name, "fields": instance_driver._to_json(fields)}
        theirs = base64.b64decode(instance_driver.run(official, job)["b64"])
        ours = proto.encode(name, fields)
        assert ours == theirs, name
        parsed = instance_driver.run(
            official, {"mode": "decode", "message": name, "data": {"b64": base64.b64encode(ours).decode()}}
        )
        assert parsed.get("KeyId", parsed.get("SecretName")) == fields.get("KeyId", fields.get("SecretName")), name


# -- ClientKeys ----------------------------------------------------------------------------


def _client_key_json(p12: bytes, key_id: str = "KAAP.11111111-2222-3333-4444-555555555555") -> str:
    return json.dumps({"KeyId": key_id, "PrivateKeyData": base64.b64encode(p12).decode()})


def test_client_keys_load_from_every_pkcs12_flavour(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    legacy = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(2048)
        .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
        .hmac_hash(__import__("cryptography.hazmat.primitives.hashes", fromlist=["SHA1"]).SHA1())
        .build(b"pw")
    )
    flavours = {
        "aes": pkcs12.serialize_key_and_certificates(
            b"k", key, None, None, serialization.BestAvailableEncryption(b"pw")
        ),
        "3des": pkcs12.serialize_key_and_certificates(b"k", key, None, None, legacy),
        "none": pkcs12.serialize_key_and_certificates(b"k", key, None, None, serialization.NoEncryption()),
    }
    for name, p12 in flavours.items():
        path = tmp_path / f"{name}.json"
        path.write_text(_client_key_json(p12))
        loaded = load_client_key(path=str(path), password=None if name == "none" else "pw")
        assert loaded.public_key().public_numbers() == key.public_key().public_numbers()
        assert "PrivateKey" not in repr(loaded) and loaded.key_id in repr(loaded)


def test_client_key_errors_say_what_without_secrets(tmp_path):
    content, _ = create_client_key("correct horse")
    with pytest.raises(ClientKeyError) as info:
        load_client_key(content=content, password="battery staple")
    assert "password" in str(info.value) and "battery" not in str(info.value) and "correct" not in str(info.value)
    assert isinstance(info.value, ConfigurationError)
    ec_p12 = pkcs12.serialize_key_and_certificates(
        b"k", ec.generate_private_key(ec.SECP256R1()), None, None, serialization.NoEncryption()
    )
    for bad, match in [
        ("not json", "not JSON"),
        ("[]", "JSON object"),
        ('{"KeyId": "KAAP.x"}', "PrivateKeyData"),
        ('{"KeyId": "bad id/..", "PrivateKeyData": "AA=="}', "KeyId"),
        ('{"KeyId": "KAAP.x", "PrivateKeyData": "!!"}', "base64"),
        (_client_key_json(ec_p12), "not RSA"),
        ("x" * 70000, "over"),
    ]:
        with pytest.raises(ClientKeyError, match=match):
            load_client_key(content=bad, password=None)


# -- signing -----------------------------------------------------------------------------------

SPEC_STRING_TO_SIGN = (
    "POST\n"
    "A7231582DB530AACD6CEBFEDFF820E726E68F5C2BDC90901B76E9AEF3E85CAC8\n"
    "application/x-protobuf\n"
    "Wed, 02 Dec 2026 14:25:09 GMT\n"
    "x-kms-acccesskeyid:KAAP.78876762-de83-468b-a6a4-7d368477f3ef\n"
    "x-kms-apiname:Encrypt\n"
    "x-kms-apiversion:dkms-gcs-0.2\n"
    "x-kms-signaturemethod:RSA_PKCS1_SHA_256\n"
    "/"
)


def test_string_to_sign_is_the_spec_vector():
    body = bytes.fromhex("0a096b65792d656d752d3112026869")
    _, key = create_client_key(None, key_id="KAAP.78876762-de83-468b-a6a4-7d368477f3ef")
    import email.utils

    when = email.utils.parsedate_to_datetime("Wed, 02 Dec 2026 14:25:09 GMT").timestamp()
    headers = auth.signed_headers(key, "Encrypt", body, now=when)
    assert auth.string_to_sign(headers) == SPEC_STRING_TO_SIGN
    assert headers["content-sha256"] == hashlib.sha256(body).hexdigest().upper()
    # PKCS#1 v1.5 over exactly that string, checked with cryptography directly.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signature = base64.b64decode(headers["authorization"].removeprefix("Bearer "))
    key.public_key().verify(signature, SPEC_STRING_TO_SIGN.encode(), padding.PKCS1v15(), hashes.SHA256())


def test_verification_catches_every_change():
    _, key = create_client_key(None)
    body = proto.encode("EncryptRequest", {"KeyId": "k", "Plaintext": b"x"})
    headers = auth.signed_headers(key, "Encrypt", body, extra={"x-kms-migrationkeyversionid": "v" * 36})
    lookup = {key.key_id: key.public_key()}.get
    key_id, _ = auth.verify_request(headers.items(), body, lookup)
    assert key_id == key.key_id
    changes = [
        (dict(headers, **{"x-kms-apiname": "Decrypt"}), body),
        (dict(headers, **{"x-kms-migrationkeyversionid": "w" * 36}), body),
        (headers, body + b"\x00"),
        (dict(headers, **{"content-sha256": auth.content_sha256(body + b"\x00")}), body + b"\x00"),
    ]
    for changed, changed_body in changes:
        with pytest.raises(AuthError) as info:
            auth.verify_request(changed.items(), changed_body, lookup)
        assert info.value.code == "Unauthorized"
    with pytest.raises(AuthError, match="Unauthorized"):
        auth.verify_request(headers.items(), body, lambda _: None)
    with pytest.raises(AuthError, match="Authorization"):
        auth.verify_request(dict(headers, authorization="Basic x").items(), body, lookup)


# -- the client against LocalKms ------------------------------------------------------------


@pytest.fixture(scope="module")
def kms():
    with LocalKms(
        regions=["cn-hangzhou", "cn-shanghai"],
        instances={PRIMARY: "cn-hangzhou", REPLICA: InstanceSpec("cn-shanghai", replica_of=PRIMARY)},
    ) as k:
        yield k


@pytest.fixture(scope="module")
def arn(kms) -> str:
    return kms.create_key("cn-hangzhou")


def client_for(gateway, **kwargs) -> InstanceClient:
    kwargs.setdefault("ca", gateway.ca_file)
    return InstanceClient(
        gateway.endpoint,
        client_key_file=gateway.client_key.key_file,
        password_file=gateway.client_key.password_file,
        region=gateway.region,
        **kwargs,
    )


def test_round_trips_against_localkms(kms, arn):
    client = client_for(kms.instances[PRIMARY])
    key_id = arn.split("/")[-1]
    initial = kms.key_versions(arn)[0]
    ct = client.encrypt(key_id, b"secret", b"aad")
    assert ct.version_id == initial and len(ct.iv) == 12 and len(ct.ciphertext_blob) == len(b"secret") + 16
    assert client.decrypt(ct.ciphertext_blob, ct.iv, key_id=key_id, aad=b"aad") == b"secret"
    assert client.decrypt(ct.ciphertext_blob, ct.iv, version_id=ct.version_id, aad=b"aad") == b"secret"
    data_key, wrapped = client.generate_data_key(key_id, 32)
    assert client.decrypt(wrapped.ciphertext_blob, wrapped.iv, version_id=wrapped.version_id) == data_key
    adv = client.advance_encrypt(key_id, b"adv", b"a")
    assert client.advance_decrypt(adv.ciphertext_blob, b"a") == b"adv"
    assert adv.transfer_blob() == adv.ciphertext_blob[3:]
    key16, adv_key = client.advance_generate_data_key(key_id, 16)
    assert len(key16) == 16 and client.advance_decrypt(adv_key.ciphertext_blob) == key16
    assert len(client.generate_random(48)) == 48
    context = {"b": "2", "a": "1"}
    assert client.unwrap_data_key(client.wrap_data_key(key_id, data_key, context), context) == data_key
    with pytest.raises(KmsError) as info:
        client.unwrap_data_key(client.wrap_data_key(key_id, data_key, context), {"a": "1"})
    assert info.value.code == "InvalidParameter" and not info.value.retryable


def test_context_aad_rules_are_the_adapters():
    context = {"b": "2", "a": "1"}
    # kms-instance-gateway.md §4.5, observed from the official adapters.
    assert context_aad(context).hex() == "8e85be58c1c372ac29fe7bfa80d8ddcbd04a4032c7b51c1c026d67c55b1ab23f"
    assert context_aad(context, "sha256-hex") == b"8e85be58c1c372ac29fe7bfa80d8ddcbd04a4032c7b51c1c026d67c55b1ab23f"
    assert context_aad(context, "json") == b'{"b":"2","a":"1"}'
    assert context_aad({}) == b"" and context_aad(None) == b""


def test_transfer_blob_spec_vector():
    # §4.3: version 1111..., key 00..1f, iv 00..0b, "hello", no AAD.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    vid = "11111111-2222-3333-4444-555555555555"
    ct = AESGCM(bytes(range(32))).encrypt(bytes(range(12)), b"hello", None)
    blob = pack_transfer_blob(vid, bytes(range(12)), ct)
    assert base64.b64encode(blob).decode() == (
        "MTExMTExMTEtMjIyMi0zMzMzLTQ0NDQtNTU1NTU1NTU1NTU1AAECAwQFBgcICQoLL2e6d6onl/81O4oEbSgjbc2dBXu7"
    )
    assert unpack_transfer_blob(blob) == (vid, bytes(range(12)), ct)
    assert unpack_transfer_blob(b"$\x00\x02" + blob) == (vid, bytes(range(12)), ct)
    with pytest.raises(ConfigurationError):
        unpack_transfer_blob(blob[:60])


def test_the_ca_is_required_and_verified(kms, arn, tmp_path, caplog):
    gateway = kms.instances[PRIMARY]
    with pytest.raises(ConfigurationError, match="CA certificate is required"):
        InstanceClient(
            gateway.endpoint, client_key_file=gateway.client_key.key_file, password=gateway.client_key.password
        )
    other = tmp_path / "other-ca.pem"
    other.write_text(make_ca()[1])
    before = gateway.stats().get("GenerateRandom", 0)
    with pytest.raises(KmsError) as info:
        client_for(gateway, ca=str(other)).generate_random(8)
    assert info.value.code == "SSLError" and not info.value.retryable and info.value.region == "cn-hangzhou"
    assert gateway.stats().get("GenerateRandom", 0) == before
    # The certificate names the instance host; connecting to the IP while checking that name works.
    assert len(client_for(gateway, server_hostname=gateway.host_name).generate_random(8)) == 8
    with pytest.raises(KmsError, match="SSLError|certificate"):
        client_for(gateway, server_hostname="kst-other.cryptoservice.kms.aliyuncs.com").generate_random(8)
    assert len(client_for(gateway, ca=None, ca_pem=open(gateway.ca_file).read()).generate_random(8)) == 8
    with caplog.at_level(logging.WARNING, logger="kmsenv"):
        insecure = client_for(gateway, ca=None, insecure_skip_tls_verify_for_tests_only=True)
    assert "TLS verification" in caplog.text and len(insecure.generate_random(8)) == 8


def test_errors_carry_code_region_request_id_and_are_not_retried(kms):
    gateway = kms.instances[PRIMARY]
    gateway.reset_stats()
    sleeps: list[float] = []
    client = client_for(gateway, sleep=sleeps.append)
    with pytest.raises(KmsError) as info:
        client.encrypt("no-such-key", b"x")
    err = info.value
    assert (err.code, err.region, err.retryable) == ("Forbidden.KeyNotFound", "cn-hangzhou", False)
    assert err.request_id and "404" in str(err)
    assert gateway.stats() == {"Encrypt": 1} and sleeps == []
    forged, _ = create_client_key("pw", key_id=gateway.client_key.key_id)
    with pytest.raises(KmsError) as info:
        InstanceClient(gateway.endpoint, client_key_content=forged, password="pw", ca=gateway.ca_file).encrypt(
            "k", b"x"
        )
    assert info.value.code == "Unauthorized"


def test_throttling_is_retried_with_the_shared_gateways_backoff(kms, arn):
    gateway = kms.instances[PRIMARY]
    gateway.reset_stats()
    sleeps: list[float] = []
    client = client_for(gateway, sleep=sleeps.append, max_attempts=3, backoff_base=0.5, backoff_max=0.6)
    gateway.set_fault(throttle_rate=1.0)
    try:
        with pytest.raises(KmsError) as info:
            client.encrypt(arn.split("/")[-1], b"x")
    finally:
        gateway.set_fault()
    assert info.value.code == "Rejected.Throttling" and info.value.retryable
    assert "after 3 attempts" in str(info.value)
    assert gateway.stats() == {"Encrypt": 3}
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.5 and 0 <= sleeps[1] <= 0.6
    gateway.set_fault(error_rate=1.0, error_code="InternalFailure")
    try:
        with pytest.raises(KmsError) as info:
            client.encrypt(arn.split("/")[-1], b"x", max_attempts=1)
    finally:
        gateway.set_fault()
    assert info.value.code == "InternalFailure" and info.value.retryable


def test_replica_failover_when_the_primary_is_down(kms, arn):
    key_id = arn.split("/")[-1]
    primary, replica = client_for(kms.instances[PRIMARY]), client_for(kms.instances[REPLICA])
    blob = primary.wrap_data_key(key_id, b"k" * 32, {"purpose": "dr"})
    kms.instances[PRIMARY].set_fault(down=True)
    try:
        with pytest.raises(KmsError) as info:
            primary.unwrap_data_key(blob, {"purpose": "dr"})
        assert info.value.code == "ConnectionError" and info.value.retryable
        assert replica.unwrap_data_key(blob, {"purpose": "dr"}) == b"k" * 32
    finally:
        kms.instances[PRIMARY].set_fault()
    assert primary.unwrap_data_key(blob, {"purpose": "dr"}) == b"k" * 32  # back, on a fresh connection


def test_one_client_many_threads(kms, arn):
    client = client_for(kms.instances[PRIMARY])
    key_id = arn.split("/")[-1]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(5):
                data = f"{i}-{j}".encode()
                ct = client.encrypt(key_id, data)
                assert client.decrypt(ct.ciphertext_blob, ct.iv, version_id=ct.version_id) == data
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_endpoint_forms():
    _, key = create_client_key(None)
    insecure = {"client_key": key, "insecure_skip_tls_verify_for_tests_only": True}
    assert InstanceClient("kst-a.cryptoservice.kms.aliyuncs.com", **insecure).endpoint.endswith(":443")
    assert InstanceClient("https://127.0.0.1:8443/", **insecure).endpoint == "127.0.0.1:8443"
    for bad in ("http://127.0.0.1:1", "https://h/path", "", "https://h:notaport"):
        with pytest.raises(ConfigurationError):
            InstanceClient(bad, **insecure)


# -- interoperability with the official client, both ways ------------------------------------


def _official(official, gateway, *items):
    job = {
        "config": {
            "protocol": "https",
            "endpoint": gateway.endpoint,
            "client_key_file": gateway.client_key.key_file,
            "password": gateway.client_key.password,
            "ca_file_path": gateway.ca_file,
        },
        "runtime": {"autoretry": False},
        "calls": list(items),
    }
    return instance_driver.run(official, job)


def _b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def test_blobs_interoperate_with_the_official_client(official, kms, arn):
    gateway = kms.instances[PRIMARY]
    client = client_for(gateway)
    key_id = arn.split("/")[-1]
    context = {"tenant": "t1", "app": "x"}
    aad = hashlib.sha256(b"app=x&tenant=t1").digest()  # dkms-transfer-python's rule, spelled out
    data_key = bytes(range(32))

    # kmsenv writes, the official client reads (the transfer adapters' Decrypt: header, no KeyId).
    ours = client.encrypt_transfer(key_id, b"from kmsenv", context)
    wrapped = client.wrap_data_key(key_id, data_key, context)
    ours_adv = client.advance_encrypt(key_id, b"advance from kmsenv", aad)
    read_plain, read_key, read_adv, theirs_enc, theirs_adv = _official(
        official,
        gateway,
        *[
            {
                "method": "decrypt",
                "request": "DecryptRequest",
                "args": {"ciphertext_blob": _b64(blob[48:]), "iv": _b64(blob[36:48]), "aad": _b64(aad)},
                "headers": {"x-kms-migrationkeyversionid": blob[:36].decode()},
            }
            for blob in (ours, wrapped)
        ],
        {
            "method": "advance_decrypt",
            "request": "AdvanceDecryptRequest",
            "args": {"ciphertext_blob": _b64(ours_adv.ciphertext_blob), "aad": _b64(aad)},
        },
        {
            "method": "encrypt",
            "request": "EncryptRequest",
            "args": {"key_id": key_id, "plaintext": _b64(b"from the official client"), "aad": _b64(aad)},
        },
        {
            "method": "advance_encrypt",
            "request": "AdvanceEncryptRequest",
            "args": {"key_id": key_id, "plaintext": _b64(b"official advance"), "aad": _b64(aad)},
        },
    )
    assert base64.b64decode(read_plain["ok"]["Plaintext"]["b64"]) == b"from kmsenv"
    assert base64.b64decode(read_key["ok"]["Plaintext"]["b64"]) == base64.b64encode(data_key)  # base64 text
    assert len(wrapped) == 108  # 36 + 12 + 44 + 16, as the adapters' GenerateDataKey blobs
    assert base64.b64decode(read_adv["ok"]["Plaintext"]["b64"]) == b"advance from kmsenv"

    # The official client writes, kmsenv reads.
    enc = theirs_enc["ok"]
    blob = (
        enc["responseHeaders"]["x-kms-migrationkeyversionid"].encode()
        + base64.b64decode(enc["Iv"]["b64"])
        + base64.b64decode(enc["CiphertextBlob"]["b64"])
    )
    assert client.decrypt_transfer(blob, context) == b"from the official client"
    adv_blob = base64.b64decode(theirs_adv["ok"]["CiphertextBlob"]["b64"])
    assert client.advance_decrypt(adv_blob, aad) == b"official advance"
    assert client.decrypt_transfer(adv_blob[3:], context) == b"official advance"  # the adapters' stripped form


# -- the classic-API adapters, each in its own virtual environment ----------------------------


@pytest.fixture(scope="session")
def transfer_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    return instance_driver.official_python(tmp_path_factory, "transfer")


@pytest.fixture(scope="session")
def kmssdk_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    return instance_driver.official_python(tmp_path_factory, "kmssdk")


def _adapter(python, adapter, gateway, *calls):
    return instance_driver.adapter_calls(python, adapter, gateway, *calls)


def test_dkms_transfer_python_blobs_both_ways(transfer_python, kms, arn):
    """alibabacloud-dkms-transfer-python 0.1.3: the rules kmsenv writes."""
    gateway = kms.instances[PRIMARY]
    client = client_for(gateway)
    key_id = arn.split("/")[-1]
    ctx = {"tenant": "t1", "app": "x"}
    data_key = bytes(range(32))
    ours_text = base64.b64encode(client.encrypt_transfer(key_id, b"kmsenv wrote this", ctx)).decode()
    ours_key = base64.b64encode(client.wrap_data_key(key_id, data_key, ctx)).decode()
    enc, gdk, read_text, read_key, wrong_ctx = _adapter(
        transfer_python,
        "transfer",
        gateway,
        {"op": "encrypt", "key_id": key_id, "plaintext": "the adapter wrote this", "context": ctx},
        {"op": "generate_data_key", "key_id": key_id, "context": ctx},
        {"op": "decrypt", "blob": ours_text, "context": ctx},
        {"op": "decrypt", "blob": ours_key, "context": ctx},
        {"op": "decrypt", "blob": ours_key, "context": {"tenant": "t2", "app": "x"}},
    )
    assert client.decrypt_transfer(base64.b64decode(enc["ok"]["CiphertextBlob"]), ctx) == b"the adapter wrote this"
    blob = base64.b64decode(gdk["ok"]["CiphertextBlob"])
    assert len(blob) == 108
    assert client.unwrap_data_key(blob, ctx) == base64.b64decode(gdk["ok"]["Plaintext"])
    assert read_text["ok"]["Plaintext"] == "kmsenv wrote this"
    assert read_key["ok"]["Plaintext"] == base64.b64encode(data_key).decode()
    assert "error" in wrong_ctx


def test_kms_python_sdk_advance_blobs_both_ways(kmssdk_python, kms, arn):
    """alibabacloud-kms-python-sdk 1.1.3 (TransferClient, Advance, hex-digest Aad)."""
    gateway = kms.instances[PRIMARY]
    client = client_for(gateway)
    key_id = arn.split("/")[-1]
    ctx = {"tenant": "t1"}
    ours = client.advance_encrypt(key_id, b"kmsenv advance", context_aad(ctx, "sha256-hex")).transfer_blob()
    enc, gdk, read = _adapter(
        kmssdk_python,
        "kmssdk",
        gateway,
        {"op": "encrypt", "key_id": key_id, "plaintext": "sdk advance", "context": ctx},
        {"op": "generate_data_key", "key_id": key_id, "context": ctx},
        {"op": "decrypt", "blob": base64.b64encode(ours).decode(), "context": ctx},
    )
    blob = base64.b64decode(enc["ok"]["CiphertextBlob"])
    assert client.decrypt_transfer(blob, ctx, rule="sha256-hex", advance=True) == b"sdk advance"
    key_blob = base64.b64decode(gdk["ok"]["CiphertextBlob"])
    assert client.unwrap_data_key(key_blob, ctx, rule="sha256-hex") == base64.b64decode(gdk["ok"]["Plaintext"])
    assert read["ok"]["Plaintext"] == "kmsenv advance"


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), name=st.sampled_from(sorted(proto.MESSAGES)))
def test_decoding_arbitrary_bytes_raises_only_protobuf_errors(data, name):
    try:
        decoded = proto.decode(name, data)
    except ProtobufError:
        return
    # Whatever decodes re-encodes to a message that decodes to the same fields.
    assert proto.decode(name, proto.encode(name, decoded)) == decoded


def test_a_timed_fault_clears_itself(kms, arn):
    import time

    gateway = kms.instances[REPLICA]
    client = client_for(gateway, max_attempts=1)
    gateway.set_fault(down=True, duration=0.3)
    with pytest.raises(KmsError) as info:
        client.generate_random(4)
    assert info.value.code == "ConnectionError"
    deadline = time.monotonic() + 5
    while gateway.faults.down and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(client.generate_random(4)) == 4
    with pytest.raises(ValueError):
        gateway.set_fault(down=True, duration=0)
