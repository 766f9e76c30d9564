"""LocalKms's KMS 3.0 instance gateways, driven by the UNMODIFIED official instance client.

``alibabacloud-dkms-gcs`` 1.0.2 lives in its own virtual environment (it pins protobuf<4
and cryptography<42 and installs top-level ``sdk``/``openapi``), created once per session
(or reused from ``$KMSENV_INSTANCE_VENV``) and run as a subprocess by
tests/instance_driver.py, one fresh process per TLS mode (its session cache leaks CA
settings between clients in one process: spec §1.4).  Ciphertexts are checked with
``cryptography``'s AES-GCM against the key material, not against LocalKms's own code.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import instance_driver
from kmsenv.instance import auth, create_client_key, load_client_key, proto
from kmsenv.localkms import LocalKms
from kmsenv.localkms.instance import InstanceSpec, make_ca

# Reaches no crypto backend, or only through code the backend tests cover: the pure-backend CI pass leaves it out.
pytestmark = pytest.mark.backend_independent

PRIMARY, REPLICA, OTHER = "kst-hzz-primary", "kst-sha-replica", "kst-sha-other"


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode("ascii")}


def raw(value: dict[str, str]) -> bytes:
    return base64.b64decode(value["b64"])


@pytest.fixture(scope="session")
def official(tmp_path_factory: pytest.TempPathFactory) -> str:
    return instance_driver.official_python(tmp_path_factory)


@pytest.fixture(scope="module")
def kms():
    with LocalKms(
        regions=["cn-hangzhou", "cn-shanghai"],
        instances={
            PRIMARY: "cn-hangzhou",
            REPLICA: InstanceSpec("cn-shanghai", replica_of=PRIMARY),
            OTHER: "cn-shanghai",
        },
    ) as k:
        yield k


@pytest.fixture(scope="module")
def key(kms) -> str:
    return kms.create_key("cn-hangzhou").split("/")[-1]


def config(gateway, **overrides):
    cfg = {
        "protocol": "https",
        "endpoint": gateway.endpoint,
        "client_key_file": gateway.client_key.key_file,
        "password": gateway.client_key.password,
        "ca_file_path": gateway.ca_file,
    }
    cfg.update(overrides)
    return cfg


def calls(official, cfg, *items, runtime=None):
    job = {"config": cfg, "runtime": runtime or {"autoretry": False}, "calls": list(items)}
    return instance_driver.run(official, job)


def call(method, request, headers=None, **args):
    return {"method": method, "request": request, "args": args, "headers": headers or {}}


def material(kms, version_id: str) -> bytes:
    return kms._store.get_version("cn-hangzhou", version_id).material


# -- the protocol module against the official package -----------------------------------


def test_schema_matches_the_official_api_pb2(official):
    theirs = instance_driver.run(official, {"mode": "schema"})
    ours = {
        name: [[f.number, f.name, f.kind, "repeated" if f.repeated else ""] for f in m.fields]
        for name, m in proto.MESSAGES.items()
    }
    assert set(theirs) == set(ours)
    for name in theirs:
        assert sorted(theirs[name]) == ours[name], name


def test_string_to_sign_matches_the_official_client(official):
    body = proto.encode("EncryptRequest", {"KeyId": "key-emu-1", "Plaintext": b"hi"})
    headers = {
        "accept": "application/x-protobuf",
        "date": "Wed, 02 Dec 2026 14:25:09 GMT",
        "x-kms-apiversion": "dkms-gcs-0.2",
        "x-kms-apiname": "Encrypt",
        "x-kms-signaturemethod": "RSA_PKCS1_SHA_256",
        "x-kms-acccesskeyid": "KAAP.78876762-de83-468b-a6a4-7d368477f3ef",
        "x-kms-migrationkeyversionid": " 11111111-2222-3333-4444-555555555555 ",
        "X-KMS-Unsigned": "not signed",
        "content-type": "application/x-protobuf",
        "content-sha256": auth.content_sha256(body),
    }
    theirs = instance_driver.run(official, {"mode": "string_to_sign", "headers": headers})
    assert auth.string_to_sign(headers) == theirs
    assert "X-KMS" not in theirs and "11111111-2222-3333-4444-555555555555\n" in theirs


# -- round trips -------------------------------------------------------------------------


def test_encrypt_decrypt_and_data_keys(official, kms, key):
    gateway = kms.instances[PRIMARY]
    initial = kms.key_versions(f"acs:kms:cn-hangzhou:{kms.account_uid}:key/{key}")[0]
    aad = b"context-digest"
    enc, gdk, random, adv, adv_gdk, unknown = calls(
        official,
        config(gateway),
        call("encrypt", "EncryptRequest", key_id=key, plaintext=b64(b"hello instance"), aad=b64(aad)),
        call("generate_data_key", "GenerateDataKeyRequest", key_id=key, number_of_bytes=32),
        call("generate_random", "GenerateRandomRequest", length=24),
        call("advance_encrypt", "AdvanceEncryptRequest", key_id=key, plaintext=b64(b"advance"), aad=b64(aad)),
        call("advance_generate_data_key", "AdvanceGenerateDataKeyRequest", key_id=key, number_of_bytes=16),
        call("encrypt", "EncryptRequest", key_id="no-such-key", plaintext=b64(b"x")),
    )
    enc = enc["ok"]
    assert enc["responseHeaders"]["x-kms-migrationkeyversionid"] == initial
    # ct||tag under the initial version, the caller's Aad as GCM AAD: checked with cryptography.
    assert AESGCM(material(kms, initial)).decrypt(raw(enc["Iv"]), raw(enc["CiphertextBlob"]), aad) == b"hello instance"
    gdk = gdk["ok"]
    assert len(raw(gdk["Plaintext"])) == 32
    assert AESGCM(material(kms, initial)).decrypt(raw(gdk["Iv"]), raw(gdk["CiphertextBlob"]), None) == raw(
        gdk["Plaintext"]
    )
    assert len(raw(random["ok"]["Random"])) == 24
    blob = raw(adv["ok"]["CiphertextBlob"])
    assert blob[:3] == b"$\x00\x02" and blob[3:39].decode() == adv["ok"]["KeyVersionId"]
    assert AESGCM(material(kms, blob[3:39].decode())).decrypt(blob[39:51], blob[51:], aad) == b"advance"
    assert len(raw(adv_gdk["ok"]["Plaintext"])) == 16
    assert unknown["error"]["code"] == "Forbidden.KeyNotFound" and unknown["error"]["http_code"] == 404
    assert unknown["error"]["request_id"]

    # Decrypt: by KeyId, by the version header alone (the transfer adapters' way), Advance.
    by_key, by_version, wrong_aad, advance, advance_gdk = calls(
        official,
        config(gateway),
        call(
            "decrypt", "DecryptRequest", key_id=key, ciphertext_blob=enc["CiphertextBlob"], iv=enc["Iv"], aad=b64(aad)
        ),
        call(
            "decrypt",
            "DecryptRequest",
            headers={"x-kms-migrationkeyversionid": initial},
            ciphertext_blob=gdk["CiphertextBlob"],
            iv=gdk["Iv"],
        ),
        call(
            "decrypt", "DecryptRequest", key_id=key, ciphertext_blob=enc["CiphertextBlob"], iv=enc["Iv"], aad=b64(b"x")
        ),
        call("advance_decrypt", "AdvanceDecryptRequest", ciphertext_blob=adv["ok"]["CiphertextBlob"], aad=b64(aad)),
        call("advance_decrypt", "AdvanceDecryptRequest", ciphertext_blob=adv_gdk["ok"]["CiphertextBlob"]),
    )
    assert raw(by_key["ok"]["Plaintext"]) == b"hello instance"
    assert by_key["ok"]["responseHeaders"]["x-kms-migrationkeyversionid"] == initial
    assert raw(by_version["ok"]["Plaintext"]) == raw(gdk["Plaintext"])
    assert wrong_aad["error"]["code"] == "InvalidParameter" and wrong_aad["error"]["http_code"] == 400
    assert raw(advance["ok"]["Plaintext"]) == b"advance"
    assert raw(advance_gdk["ok"]["Plaintext"]) == raw(adv_gdk["ok"]["Plaintext"])


def test_advance_follows_the_primary_version_plain_stays_on_the_initial(official, kms):
    arn = kms.create_key("cn-hangzhou")
    key = arn.split("/")[-1]
    initial = kms.key_versions(arn)[0]
    newer = kms.create_key_version(arn)
    enc, adv = calls(
        official,
        config(kms.instances[PRIMARY]),
        call("encrypt", "EncryptRequest", key_id=key, plaintext=b64(b"p")),
        call("advance_encrypt", "AdvanceEncryptRequest", key_id=key, plaintext=b64(b"p")),
    )
    assert enc["ok"]["responseHeaders"]["x-kms-migrationkeyversionid"] == initial
    assert adv["ok"]["KeyVersionId"] == newer and raw(adv["ok"]["CiphertextBlob"])[3:39].decode() == newer


def test_sign_verify_and_public_key(official, kms):
    arn = kms.create_key("cn-hangzhou", "EC_P256")
    key = arn.split("/")[-1]
    message = b"a message to sign"
    digest = hashlib.sha256(message).digest()
    pub, signed, signed_digest = calls(
        official,
        config(kms.instances[PRIMARY]),
        call("get_public_key", "GetPublicKeyRequest", key_id=key),
        call("sign", "SignRequest", key_id=key, algorithm="ECDSA_SHA_256", message=b64(message), message_type="RAW"),
        call("sign", "SignRequest", key_id=key, algorithm="ECDSA_SHA_256", message=b64(digest), message_type="DIGEST"),
    )
    public = serialization.load_pem_public_key(pub["ok"]["PublicKey"].encode())
    for result in (signed, signed_digest):
        public.verify(raw(result["ok"]["Signature"]), message, ec.ECDSA(hashes.SHA256()))  # raises if invalid
    good, bad = calls(
        official,
        config(kms.instances[PRIMARY]),
        call(
            "verify",
            "VerifyRequest",
            key_id=key,
            algorithm="ECDSA_SHA_256",
            message=b64(message),
            message_type="RAW",
            signature=signed["ok"]["Signature"],
        ),
        call(
            "verify",
            "VerifyRequest",
            key_id=key,
            algorithm="ECDSA_SHA_256",
            message=b64(b"another message"),
            message_type="RAW",
            signature=signed["ok"]["Signature"],
        ),
    )
    assert good["ok"]["Value"] is True and bad["ok"].get("Value") in (False, None)


def test_a_replica_serves_the_primary_keys_an_unrelated_instance_does_not(official, kms, key):
    (enc,) = calls(
        official, config(kms.instances[PRIMARY]), call("encrypt", "EncryptRequest", key_id=key, plaintext=b64(b"dr"))
    )
    decrypt = call(
        "decrypt", "DecryptRequest", key_id=key, ciphertext_blob=enc["ok"]["CiphertextBlob"], iv=enc["ok"]["Iv"]
    )
    (replica,) = calls(official, config(kms.instances[REPLICA]), decrypt)
    (other,) = calls(official, config(kms.instances[OTHER]), decrypt)
    assert raw(replica["ok"]["Plaintext"]) == b"dr"
    assert replica["ok"]["KeyId"] == key
    assert other["error"]["code"] == "Forbidden.KeyNotFound"
    assert kms.instances[REPLICA].stats().get("Decrypt", 0) >= 1


# -- authentication and TLS failures ------------------------------------------------------


def test_a_bad_signature_is_unauthorized(official, kms, key, tmp_path):
    gateway = kms.instances[PRIMARY]
    before = gateway.stats().get("Encrypt", 0)
    # The right ClientKey ID, another private key: the signature does not verify.
    forged, _ = create_client_key("pw", key_id=gateway.client_key.key_id)
    (result,) = calls(
        official,
        config(gateway, client_key_file=None, client_key_content=forged, password="pw"),
        call("encrypt", "EncryptRequest", key_id=key, plaintext=b64(b"x")),
    )
    assert result["error"]["code"] == "Unauthorized" and result["error"]["http_code"] == 401
    assert gateway.stats().get("Encrypt", 0) == before  # refused before the API ran


@pytest.mark.parametrize("kind", ["unknown", "expired", "revoked"])
def test_unknown_expired_or_revoked_client_keys_are_unauthorized(official, kms, key, kind):
    gateway = kms.instances[PRIMARY]
    if kind == "unknown":
        content, _ = create_client_key("pw")
        cfg = config(gateway, client_key_file=None, client_key_content=content, password="pw")
    else:
        issued = gateway.add_client_key(valid_seconds=-1 if kind == "expired" else 3600)
        if kind == "revoked":
            gateway.revoke_client_key(issued.key_id)
        cfg = config(gateway, client_key_file=issued.key_file, password=issued.password)
    (result,) = calls(official, cfg, call("encrypt", "EncryptRequest", key_id=key, plaintext=b64(b"x")))
    assert result["error"]["code"] == "Unauthorized"


def test_a_second_client_key_works(official, kms, key):
    issued = kms.instances[PRIMARY].add_client_key()
    (result,) = calls(
        official,
        config(kms.instances[PRIMARY], client_key_file=issued.key_file, password=issued.password),
        call("encrypt", "EncryptRequest", key_id=key, plaintext=b64(b"x")),
    )
    assert "ok" in result


def test_a_wrong_password_fails_in_the_client(official, kms, key):
    gateway = kms.instances[PRIMARY]
    before = sum(gateway.stats().values())
    (result,) = calls(
        official,
        config(gateway, password="not the password"),
        call("encrypt", "EncryptRequest", key_id=key, plaintext=b64(b"x")),
    )
    assert "error" in result
    assert result["error"]["type"] == "Error"  # OpenSSL.crypto.Error from load_pkcs12
    assert sum(gateway.stats().values()) == before


def test_a_wrong_ca_or_none_fails_the_tls_handshake(official, kms, key, tmp_path):
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_text(make_ca()[1])
    gateway = kms.instances[PRIMARY]
    for cfg in (config(gateway, ca_file_path=str(other_ca)), config(gateway, ca_file_path=None)):
        (result,) = calls(official, cfg, call("encrypt", "EncryptRequest", key_id=key, plaintext=b64(b"x")))
        assert result["error"]["type"] == "UnretryableException"
        assert "CERTIFICATE_VERIFY_FAILED" in result["error"]["text"] or "SSL" in result["error"]["text"]


def test_localhost_and_the_instance_host_name_are_in_the_certificate(official, kms, key):
    gateway = kms.instances[PRIMARY]
    (result,) = calls(
        official,
        config(gateway, endpoint=f"localhost:{gateway.port}"),
        call("encrypt", "EncryptRequest", key_id=key, plaintext=b64(b"x")),
    )
    assert "ok" in result
    ctx = ssl.create_default_context(cafile=gateway.ca_file)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=gateway.host_name) as tls:  # hostname checked
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_a_disabled_key_is_rejected(official, kms):
    arn = kms.create_key("cn-hangzhou")
    kms.disable_key(arn)
    (result,) = calls(
        official,
        config(kms.instances[PRIMARY]),
        call("encrypt", "EncryptRequest", key_id=arn.split("/")[-1], plaintext=b64(b"x")),
    )
    assert result["error"]["code"] == "Rejected.Disabled" and result["error"]["http_code"] == 409


# -- faults, statistics, limits -------------------------------------------------------------


def test_faults_are_per_instance(official, kms, key):
    primary, replica = kms.instances[PRIMARY], kms.instances[REPLICA]
    primary.reset_stats()
    primary.set_fault(throttle_rate=1.0)
    try:
        (throttled,) = calls(
            official,
            config(primary),
            call("encrypt", "EncryptRequest", key_id=key, plaintext=b64(b"x")),
            runtime={"autoretry": True, "max_attempts": 1, "backoff_policy": "no"},
        )
        (fine,) = calls(official, config(replica), call("encrypt", "EncryptRequest", key_id=key, plaintext=b64(b"x")))
    finally:
        primary.set_fault()
    assert throttled["error"]["code"] == "Rejected.Throttling"
    assert primary.stats()["Encrypt"] == 2  # the official client retried once (max_attempts=1)
    assert "ok" in fine
    port = primary.port
    primary.set_fault(down=True)
    try:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        primary.set_fault()
    assert primary.port == port
    (back,) = calls(official, config(primary), call("encrypt", "EncryptRequest", key_id=key, plaintext=b64(b"x")))
    assert "ok" in back


def _raw_request(gateway, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=gateway.ca_file)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(head + body)
            data = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_oversized_bodies_are_refused_before_reading_or_authenticating(kms):
    gateway = kms.instances[PRIMARY]
    status, body = _raw_request(
        gateway, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\nConnection: close\r\n\r\n"
    )
    assert status == 413
    assert proto.decode_error(body).error_code == "RequestEntityTooLarge"


def test_unsigned_and_skewed_requests_get_the_documented_codes(kms):
    gateway = kms.instances[PRIMARY]
    body = proto.encode("EncryptRequest", {"KeyId": "k", "Plaintext": b"x"})
    base = auth.signed_headers(
        load_client_key(path=gateway.client_key.key_file, password=gateway.client_key.password),
        "Encrypt",
        body,
        now=time.time() - 3600,
    )

    def send(headers):
        head = "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        head += f"Content-Length: {len(body)}\r\n\r\n"
        status, answer = _raw_request(gateway, head.encode(), body)
        return status, proto.decode_error(answer)

    status, err = send(base)
    assert (status, err.error_code) == (400, "RequestTimeTooSkewed")
    status, err = send({k: v for k, v in base.items() if k != "x-kms-apiversion"})
    assert (status, err.error_code) == (400, "InvalidApiVersion")
    status, err = send({k: v for k, v in base.items() if k != auth.KEY_ID_HEADER})
    assert (status, err.error_code) == (400, "MissingParameter")
    status, err = send(dict(base, date="yesterday"))
    assert (status, err.error_code, err.error_message) == (400, "InvalidParam", "The Param Date is invalid.")


def test_state_dir_keeps_the_ca_and_client_key(tmp_path):
    state = str(tmp_path / "state")
    with LocalKms(regions=["cn-hangzhou"], state_dir=state, instances={PRIMARY: "cn-hangzhou"}) as first:
        ca = open(first.instances[PRIMARY].ca_file).read()
        key_id = first.instances[PRIMARY].client_key.key_id
        assert oct(os.stat(first.instances[PRIMARY].client_key.key_file).st_mode & 0o777) == "0o600"
    with LocalKms(regions=["cn-hangzhou"], state_dir=state, instances={PRIMARY: "cn-hangzhou"}) as second:
        assert open(second.instances[PRIMARY].ca_file).read() == ca
        assert second.instances[PRIMARY].client_key.key_id == key_id


def test_instance_arguments_are_checked():
    with pytest.raises(ValueError, match="replica_of"):
        LocalKms(regions=["cn-hangzhou"], instances={"kst-a": InstanceSpec("cn-shanghai", replica_of="kst-b")})
    with pytest.raises(ValueError, match="another region"):
        LocalKms(
            regions=["cn-hangzhou"],
            instances={"kst-a": "cn-hangzhou", "kst-b": InstanceSpec("cn-hangzhou", replica_of="kst-a")},
        )
    with pytest.raises(ValueError, match="not served"):
        LocalKms(regions=["cn-hangzhou"], instances={"kst-a": "cn-beijing"})
    with pytest.raises(ValueError, match="instance ID"):
        LocalKms(regions=["cn-hangzhou"], instances={"kst a/..": "cn-hangzhou"})


def test_the_classic_ram_signed_api_is_served_on_the_instance_port(kms, key):
    """SDK V2 (alibabacloud-kms20160120) with RAM credentials and the instance CA, as
    Alibaba documents for the dedicated gateway; and kmsenv.Kms pointed at it."""
    from alibabacloud_kms20160120 import models as M
    from alibabacloud_kms20160120.client import Client
    from alibabacloud_tea_openapi.models import Config

    import kmsenv

    gateway = kms.instances[PRIMARY]
    classic = Client(
        Config(
            access_key_id=kms.access_key_id,
            access_key_secret=kms.access_key_secret,
            endpoint=gateway.endpoint,
            protocol="https",
            ca=gateway.ca_file,
            region_id="cn-hangzhou",
        )
    )
    arn = f"acs:kms:cn-hangzhou:{kms.account_uid}:key/{key}"
    blob = classic.encrypt(M.EncryptRequest(key_id=arn, plaintext="classic over TLS")).body.ciphertext_blob
    assert classic.decrypt(M.DecryptRequest(ciphertext_blob=blob)).body.plaintext == "classic over TLS"
    shared = kmsenv.Kms(
        access_key_id=kms.access_key_id,
        access_key_secret=kms.access_key_secret,
        endpoints={"cn-hangzhou": f"https://{gateway.endpoint}"},
        ca=gateway.ca_file,
    )
    data_key, edk = shared.generate_data_key(arn)
    assert shared.decrypt(arn, edk) == data_key


def test_a_dribbled_tls_handshake_is_cut_at_its_deadline(kms, monkeypatch):
    from kmsenv.localkms import instance as instance_module

    monkeypatch.setattr(instance_module, "HANDSHAKE_TIMEOUT", 0.6)
    gateway = kms.instances[OTHER]
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        closed = False
        sock.sendall(b"\x16\x03\x01\x02\x00")  # a TLS record header: a 512-byte handshake record
        for _ in range(40):  # then one byte of it every 0.1 s: never the whole record
            try:
                sock.sendall(b"\x01")
                sock.settimeout(0.1)
                if sock.recv(1) == b"":
                    closed = True
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = True
                break
    assert closed and time.monotonic() - started < 2.5


def test_get_secret_value_through_the_instance_and_its_replica(official, kms):
    kms._server("cn-hangzhou").actions.handlers["CreateSecret"](
        {"SecretName": "db-password", "SecretData": "s3cr3t", "VersionId": "v1"}
    )
    for instance_id in (PRIMARY, REPLICA):
        (result,) = calls(
            official,
            config(kms.instances[instance_id]),
            call("get_secret_value", "GetSecretValueRequest", secret_name="db-password"),
        )
        assert result["ok"]["SecretData"] == "s3cr3t" and result["ok"]["VersionId"] == "v1"
        assert result["ok"]["VersionStages"] == ["ACSCurrent"]
    (missing,) = calls(
        official,
        config(kms.instances[OTHER]),
        call("get_secret_value", "GetSecretValueRequest", secret_name="db-password"),
    )
    assert missing["error"]["http_code"] == 404
