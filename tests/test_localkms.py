"""kmsenv.localkms through real HTTP, driven by the unmodified official clients:
alibabacloud-kms20160120 (V3 ACS3-HMAC-SHA256, and v2 HMAC-SHA1) and the legacy
aliyun-python-sdk-kms on aliyun-python-sdk-core (RPC HMAC-SHA1)."""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from alibabacloud_kms20160120 import models as M
from alibabacloud_kms20160120.client import Client
from alibabacloud_tea_openapi.models import Config
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkkms.request.v20160120 import (
    DecryptRequest,
    DescribeKeyRequest,
    EncryptRequest,
    GenerateDataKeyRequest,
    ListKeysRequest,
    ReEncryptRequest,
)

import kmsenv.localkms
from kmsenv.localkms import LocalKms

# Reaches no crypto backend, or only through code the backend tests cover: the pure-backend CI pass leaves it out.
pytestmark = pytest.mark.backend_independent

R1, R2 = "cn-hangzhou", "cn-shanghai"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # Both SDKs hand HTTP(S)_PROXY to requests themselves, ignoring NO_PROXY: a proxy in
    # the environment would swallow calls to 127.0.0.1.
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


def new_client(
    kms: LocalKms, region: str = R1, secret: str | None = None, key_id: str | None = None, **extra
) -> Client:
    return Client(
        Config(
            access_key_id=key_id or kms.access_key_id,
            access_key_secret=secret or kms.access_key_secret,
            endpoint=kms.hosts[region],
            protocol="http",
            region_id=region,
            read_timeout=10000,
            connect_timeout=2000,
            **extra,
        )
    )


def legacy_call(kms: LocalKms, request, region: str = R1, secret: str | None = None) -> dict:
    client = AcsClient(kms.access_key_id, secret or kms.access_key_secret, region)
    request.set_endpoint(kms.hosts[region])
    request.set_protocol_type("http")  # the generated request classes force https
    return json.loads(client.do_action_with_exception(request))


def error_of(excinfo) -> tuple[str, int]:
    exc = excinfo.value
    status = getattr(exc, "status_code", None) or exc.data.get("statusCode")
    return exc.code, int(status)


@pytest.fixture(scope="module")
def kms():
    with LocalKms(regions=[R1, R2]) as server:
        yield server


@pytest.fixture(scope="module")
def arn(kms):
    return kms.create_key(R1)


@pytest.fixture(scope="module")
def client(kms):
    return new_client(kms)


# -- key management ------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["Aliyun_AES_256", "Aliyun_AES_128", "Aliyun_SM4"])
def test_create_describe_list_key(kms, client, spec):
    meta = client.create_key(M.CreateKeyRequest(key_spec=spec, description="d")).body.key_metadata
    assert meta.key_spec == spec and meta.key_state == "Enabled"
    assert meta.key_usage == "ENCRYPT/DECRYPT" and meta.creator == kms.account_uid
    assert meta.arn == f"acs:kms:{R1}:{kms.account_uid}:key/{meta.key_id}"
    for ref in (meta.key_id, meta.arn):
        described = client.describe_key(M.DescribeKeyRequest(key_id=ref)).body.key_metadata
        assert described.key_id == meta.key_id and described.primary_key_version
    listed = client.list_keys(M.ListKeysRequest(page_size=100)).body
    assert meta.arn in [k.key_arn for k in listed.keys.key]
    filtered = client.list_keys(
        M.ListKeysRequest(page_size=100, filters=json.dumps([{"Key": "KeySpec", "Values": [spec]}]))
    ).body
    assert filtered.total_count >= 1
    assert all(
        client.describe_key(M.DescribeKeyRequest(key_id=k.key_id)).body.key_metadata.key_spec == spec
        for k in filtered.keys.key
    )


def test_create_key_rejects_unsupported_spec(client):
    # RSA_2048 is served since issue 15 (asymmetric keys); RSA_4096 is no KMS key spec.
    with pytest.raises(Exception) as e:
        client.create_key(M.CreateKeyRequest(key_spec="RSA_4096"))
    assert error_of(e) == ("InvalidParameter", 400)


def test_list_keys_paging(kms):
    with LocalKms(regions=[R1]) as k:
        arns = [k.create_key(R1) for _ in range(3)]
        c = new_client(k)
        page = c.list_keys(M.ListKeysRequest(page_number=2, page_size=2)).body
        assert (page.total_count, page.page_number, page.page_size) == (3, 2, 2)
        assert [x.key_arn for x in page.keys.key] == arns[2:]


def test_aliases(kms, client, arn):
    client.create_alias(M.CreateAliasRequest(alias_name="alias/app-one", key_id=arn))
    with pytest.raises(Exception) as e:
        client.create_alias(M.CreateAliasRequest(alias_name="alias/app-one", key_id=arn))
    assert error_of(e) == ("AliasAlreadyExists", 400)
    aliases = client.list_aliases(M.ListAliasesRequest(page_size=100)).body
    entry = next(a for a in aliases.aliases.alias if a.alias_name == "alias/app-one")
    assert entry.key_id == arn.rsplit("/", 1)[1]
    assert entry.alias_arn == f"acs:kms:{R1}:{kms.account_uid}:alias/app-one"
    for ref in ("alias/app-one", entry.alias_arn):
        out = client.generate_data_key(M.GenerateDataKeyRequest(key_id=ref)).body
        assert out.key_id == entry.key_id
    with pytest.raises(Exception) as e:
        client.encrypt(M.EncryptRequest(key_id="alias/nope", plaintext="eA=="))
    assert error_of(e) == ("Forbidden.AliasNotFound", 404)
    # Same alias name in another region is independent.
    other = new_client(kms, R2)
    with pytest.raises(Exception) as e:
        other.encrypt(M.EncryptRequest(key_id="alias/app-one", plaintext="eA=="))
    assert error_of(e) == ("Forbidden.AliasNotFound", 404)


def test_describe_regions(kms, client):
    regions = client.describe_regions().body.regions.region
    assert [r.region_id for r in regions] == [R1, R2]


# -- cryptographic operations --------------------------------------------------------


@pytest.mark.parametrize("context", [None, {"tenant": "acme", "b": "x y+/=~*"}])
def test_generate_data_key_decrypt_round_trip(client, arn, context):
    out = client.generate_data_key(M.GenerateDataKeyRequest(key_id=arn, encryption_context=context)).body
    assert len(base64.b64decode(out.plaintext)) == 32
    assert len(out.ciphertext_blob) == 144  # same length as real KMS
    assert base64.b64decode(out.ciphertext_blob)[:36].decode() == out.key_version_id
    if context:
        context = dict(reversed(list(context.items())))  # key order must not matter
    back = client.decrypt(M.DecryptRequest(ciphertext_blob=out.ciphertext_blob, encryption_context=context)).body
    assert back.plaintext == out.plaintext
    assert (back.key_id, back.key_version_id) == (out.key_id, out.key_version_id)


def test_generate_data_key_sizes(kms, client, arn):
    out = client.generate_data_key(M.GenerateDataKeyRequest(key_id=arn, key_spec="AES_128")).body
    assert len(base64.b64decode(out.plaintext)) == 16 and len(out.ciphertext_blob) == 120
    out = client.generate_data_key(M.GenerateDataKeyRequest(key_id=arn, number_of_bytes=24)).body
    assert len(base64.b64decode(out.plaintext)) == 24
    sm4 = kms.create_key(R1, "Aliyun_SM4")
    out = client.generate_data_key(
        M.GenerateDataKeyRequest(key_id=sm4, number_of_bytes=16, key_spec="SM4_128", encryption_context={"a": "b"})
    ).body
    assert len(base64.b64decode(out.plaintext)) == 16
    back = client.decrypt(M.DecryptRequest(ciphertext_blob=out.ciphertext_blob, encryption_context={"a": "b"})).body
    assert back.plaintext == out.plaintext
    for bad in (
        M.GenerateDataKeyRequest(key_id=arn, number_of_bytes=1025),
        M.GenerateDataKeyRequest(key_id=arn, key_spec="AES_512"),
    ):
        with pytest.raises(Exception) as e:
            client.generate_data_key(bad)
        assert error_of(e) == ("InvalidParameter", 400)


def test_generate_data_key_without_plaintext(client, arn):
    out = client.generate_data_key_without_plaintext(
        M.GenerateDataKeyWithoutPlaintextRequest(key_id=arn, encryption_context={"k": "v"})
    ).body
    assert out.ciphertext_blob and out.key_version_id
    back = client.decrypt(M.DecryptRequest(ciphertext_blob=out.ciphertext_blob, encryption_context={"k": "v"})).body
    assert len(base64.b64decode(back.plaintext)) == 32
    with pytest.raises(Exception) as e:  # the context is bound here too
        client.decrypt(M.DecryptRequest(ciphertext_blob=out.ciphertext_blob))
    assert error_of(e) == ("InvalidParameter", 400)


def test_encrypt_decrypt_text_and_size_limit(client, arn):
    text = "hello wörld + / = ~ * %20 &x=y"
    out = client.encrypt(M.EncryptRequest(key_id=arn, plaintext=text)).body
    back = client.decrypt(M.DecryptRequest(ciphertext_blob=out.ciphertext_blob)).body
    assert back.plaintext == text
    big = "a" * 6144
    out = client.encrypt(M.EncryptRequest(key_id=arn, plaintext=big)).body
    assert client.decrypt(M.DecryptRequest(ciphertext_blob=out.ciphertext_blob)).body.plaintext == big
    with pytest.raises(Exception) as e:
        client.encrypt(M.EncryptRequest(key_id=arn, plaintext=big + "a"))
    assert error_of(e) == ("InvalidParameter", 400)


@pytest.mark.parametrize("wrong", [None, {"tenant": "evil"}, {"tenant": "acme", "x": "y"}])
def test_context_mismatch(client, arn, wrong):
    blob = client.encrypt(
        M.EncryptRequest(key_id=arn, plaintext="c2VjcmV0", encryption_context={"tenant": "acme"})
    ).body
    with pytest.raises(Exception) as e:
        client.decrypt(M.DecryptRequest(ciphertext_blob=blob.ciphertext_blob, encryption_context=wrong))
    assert error_of(e) == ("InvalidParameter", 400)


def test_context_given_as_string_is_refused(client, arn):
    # The client turns a JSON *string* into "null": refuse it rather than drop the context.
    with pytest.raises(Exception) as e:
        client.encrypt(M.EncryptRequest(key_id=arn, plaintext="eA==", encryption_context='{"a":"b"}'))
    assert error_of(e) == ("InvalidParameter", 400)


def test_re_encrypt(kms, client, arn):
    dest = kms.create_key(R1, "Aliyun_AES_128")
    src = client.encrypt(M.EncryptRequest(key_id=arn, plaintext="payload", encryption_context={"a": "1"})).body
    out = client.re_encrypt(
        M.ReEncryptRequest(
            ciphertext_blob=src.ciphertext_blob,
            destination_key_id=dest,
            source_encryption_context={"a": "1"},
            destination_encryption_context={"b": "2"},
        )
    ).body
    assert out.key_id == dest.rsplit("/", 1)[1] and out.ciphertext_blob != src.ciphertext_blob
    back = client.decrypt(M.DecryptRequest(ciphertext_blob=out.ciphertext_blob, encryption_context={"b": "2"})).body
    assert back.plaintext == "payload" and back.key_id == out.key_id
    with pytest.raises(Exception) as e:
        client.re_encrypt(M.ReEncryptRequest(ciphertext_blob=src.ciphertext_blob, destination_key_id=dest))
    assert error_of(e) == ("InvalidParameter", 400)


def test_blob_from_other_region_is_rejected(kms, client, arn):
    blob = client.encrypt(M.EncryptRequest(key_id=arn, plaintext="eA==")).body.ciphertext_blob
    with pytest.raises(Exception) as e:
        new_client(kms, R2).decrypt(M.DecryptRequest(ciphertext_blob=blob))
    assert error_of(e) == ("Forbidden.KeyNotFound", 404)
    with pytest.raises(Exception) as e:  # an ARN naming another region is not found either
        new_client(kms, R2).encrypt(M.EncryptRequest(key_id=arn, plaintext="eA=="))
    assert error_of(e) == ("Forbidden.KeyNotFound", 404)


@pytest.mark.parametrize("position", [0, 40, 60, -1])
def test_tampered_blob_is_rejected(client, arn, position):
    raw = bytearray(
        base64.b64decode(client.encrypt(M.EncryptRequest(key_id=arn, plaintext="eA==")).body.ciphertext_blob)
    )
    raw[position] ^= 0x01
    with pytest.raises(Exception) as e:
        client.decrypt(M.DecryptRequest(ciphertext_blob=base64.b64encode(bytes(raw)).decode()))
    # Editing the version ID misses the index; anything else fails GCM authentication.
    assert error_of(e) == (("Forbidden.KeyNotFound", 404) if position == 0 else ("InvalidParameter", 400))


def test_garbage_blob_and_unknown_key(client):
    with pytest.raises(Exception) as e:
        client.decrypt(M.DecryptRequest(ciphertext_blob="not-a-blob"))
    assert error_of(e) == ("InvalidParameter", 400)
    with pytest.raises(Exception) as e:
        client.encrypt(M.EncryptRequest(key_id="00000000-0000-4000-8000-000000000000", plaintext="eA=="))
    assert error_of(e) == ("Forbidden.KeyNotFound", 404)


def test_disable_enable_key(kms, client):
    arn = kms.create_key(R1)
    blob = client.encrypt(M.EncryptRequest(key_id=arn, plaintext="eA==")).body.ciphertext_blob
    client.disable_key(M.DisableKeyRequest(key_id=arn))
    assert client.describe_key(M.DescribeKeyRequest(key_id=arn)).body.key_metadata.key_state == "Disabled"
    for call in (
        lambda: client.encrypt(M.EncryptRequest(key_id=arn, plaintext="eA==")),
        lambda: client.decrypt(M.DecryptRequest(ciphertext_blob=blob)),
        lambda: client.generate_data_key(M.GenerateDataKeyRequest(key_id=arn)),
    ):
        with pytest.raises(Exception) as e:
            call()
        assert error_of(e) == ("Rejected.Disabled", 409)
    client.enable_key(M.EnableKeyRequest(key_id=arn))
    assert client.decrypt(M.DecryptRequest(ciphertext_blob=blob)).body.plaintext == "eA=="
    kms.disable_key(arn)  # the Python conveniences do the same
    with pytest.raises(Exception) as e:
        client.decrypt(M.DecryptRequest(ciphertext_blob=blob))
    assert error_of(e) == ("Rejected.Disabled", 409)
    kms.enable_key(arn)
    assert client.decrypt(M.DecryptRequest(ciphertext_blob=blob)).body.plaintext == "eA=="


# -- authentication and request validation --------------------------------------------


def test_wrong_secret(kms, arn):
    for c in (new_client(kms, secret="wrong"), new_client(kms, secret="wrong", signature_algorithm="v2")):
        with pytest.raises(Exception) as e:
            c.encrypt(M.EncryptRequest(key_id=arn, plaintext="eA=="))
        assert type(e.value).__name__ == "ClientException"
        assert error_of(e) == ("SignatureDoesNotMatch", 400)
    # The legacy SDK recognises its own string-to-sign in our message and reports the
    # more precise InvalidAccessKeySecret, as it does against real KMS.
    req = EncryptRequest.EncryptRequest()
    req.set_KeyId(arn)
    req.set_Plaintext("eA==")
    with pytest.raises(ServerException) as e:
        legacy_call(kms, req, secret="wrong")
    assert (e.value.get_error_code(), e.value.get_http_status()) == ("InvalidAccessKeySecret", 400)


def test_unknown_access_key(kms, arn):
    for c in (
        new_client(kms, key_id="LTAIunknownKey"),
        new_client(kms, key_id="LTAIunknownKey", signature_algorithm="v2"),
    ):
        with pytest.raises(Exception) as e:
            c.encrypt(M.EncryptRequest(key_id=arn, plaintext="eA=="))
        assert error_of(e) == ("InvalidAccessKeyId.NotFound", 404)


def test_missing_parameter(kms, client, arn):
    with pytest.raises(Exception) as e:
        client.encrypt(M.EncryptRequest(key_id=arn))
    assert error_of(e) == ("MissingParameter", 400)
    with pytest.raises(Exception) as e:
        client.decrypt(M.DecryptRequest())
    assert error_of(e) == ("MissingParameter", 400)
    req = DescribeKeyRequest.DescribeKeyRequest()
    with pytest.raises(ServerException) as le:
        legacy_call(kms, req)
    assert (le.value.get_error_code(), le.value.get_http_status()) == ("MissingParameter", 400)


def test_v2_signature_round_trip(kms, arn):
    c = new_client(kms, signature_algorithm="v2")
    out = c.generate_data_key(M.GenerateDataKeyRequest(key_id=arn, encryption_context={"a": "b c"})).body
    back = c.decrypt(M.DecryptRequest(ciphertext_blob=out.ciphertext_blob, encryption_context={"a": "b c"})).body
    assert back.plaintext == out.plaintext


def test_legacy_sdk(kms, client, arn):
    ctx = json.dumps({"tenant": "acme", "k": "v w"})  # default separators, as Alibaba's SDK
    req = GenerateDataKeyRequest.GenerateDataKeyRequest()
    req.set_KeyId(arn)
    req.set_EncryptionContext(ctx)
    out = legacy_call(kms, req)
    assert len(out["CiphertextBlob"]) == 144
    req = DecryptRequest.DecryptRequest()
    req.set_CiphertextBlob(out["CiphertextBlob"])
    req.set_EncryptionContext(ctx)
    assert legacy_call(kms, req)["Plaintext"] == out["Plaintext"]
    # Blobs are interchangeable between client generations.
    back = client.decrypt(
        M.DecryptRequest(ciphertext_blob=out["CiphertextBlob"], encryption_context=json.loads(ctx))
    ).body
    assert back.plaintext == out["Plaintext"]
    req = EncryptRequest.EncryptRequest()
    req.set_KeyId(arn)
    req.set_Plaintext("aGk=")
    enc = legacy_call(kms, req)
    req = ReEncryptRequest.ReEncryptRequest()
    req.set_CiphertextBlob(enc["CiphertextBlob"])
    req.set_DestinationKeyId(arn)
    re_enc = legacy_call(kms, req)
    req = DecryptRequest.DecryptRequest()
    req.set_CiphertextBlob(re_enc["CiphertextBlob"])
    assert legacy_call(kms, req)["Plaintext"] == "aGk="
    req = DescribeKeyRequest.DescribeKeyRequest()
    req.set_KeyId(arn)
    assert legacy_call(kms, req)["KeyMetadata"]["Arn"] == arn
    listed = legacy_call(kms, ListKeysRequest.ListKeysRequest())
    assert listed["TotalCount"] >= 1


# -- persistence ---------------------------------------------------------------------


def test_state_dir_survives_restart(tmp_path):
    with LocalKms(regions=[R1, R2], state_dir=str(tmp_path)) as first:
        arn = first.create_key(R1)
        first.create_alias(R1, "alias/kept", arn)
        blob = (
            new_client(first)
            .encrypt(M.EncryptRequest(key_id=arn, plaintext="keep me", encryption_context={"a": "b"}))
            .body.ciphertext_blob
        )
        creds = (first.access_key_id, first.access_key_secret, first.account_uid)
        endpoints = first.endpoints
    with LocalKms(regions=[R1, R2], state_dir=str(tmp_path)) as second:
        assert (second.access_key_id, second.access_key_secret, second.account_uid) == creds
        assert second.endpoints == endpoints  # ports remembered (they are free again)
        c = new_client(second)
        assert (
            c.decrypt(M.DecryptRequest(ciphertext_blob=blob, encryption_context={"a": "b"})).body.plaintext == "keep me"
        )
        assert arn in [k.key_arn for k in c.list_keys(M.ListKeysRequest()).body.keys.key]
        assert c.encrypt(M.EncryptRequest(key_id="alias/kept", plaintext="x")).body.key_id == arn.rsplit("/", 1)[1]


def test_in_memory_forgets():
    with LocalKms(regions=[R1]) as first:
        arn = first.create_key(R1)
        blob = new_client(first).encrypt(M.EncryptRequest(key_id=arn, plaintext="x")).body
    with LocalKms(regions=[R1], access_key_id=first.access_key_id, access_key_secret=first.access_key_secret) as second:
        c = new_client(second)
        assert c.list_keys(M.ListKeysRequest()).body.total_count == 0
        with pytest.raises(Exception) as e:
            c.decrypt(M.DecryptRequest(ciphertext_blob=blob.ciphertext_blob))
        assert error_of(e) == ("Forbidden.KeyNotFound", 404)


def test_random_credentials_per_instance():
    with LocalKms(regions=[R1]) as a, LocalKms(regions=[R1]) as b:
        assert a.access_key_id != b.access_key_id
        assert a.access_key_secret != b.access_key_secret
        assert a.access_key_secret not in repr(a)


# -- faults and statistics -----------------------------------------------------------


@pytest.fixture
def fresh():
    with LocalKms(regions=[R1, R2]) as server:
        yield server


def test_fault_down_and_back_up(fresh):
    arn = fresh.create_key(R1)
    c = new_client(fresh)
    c.encrypt(M.EncryptRequest(key_id=arn, plaintext="x"))  # leaves a pooled connection
    port = int(fresh.hosts[R1].rsplit(":", 1)[1])
    fresh.set_fault(R1, down=True)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(Exception) as e:
        c.encrypt(M.EncryptRequest(key_id=arn, plaintext="x"))
    assert "UnretryableException" in type(e.value).__name__
    # The other region is unaffected.
    new_client(fresh, R2).list_keys(M.ListKeysRequest())
    fresh.set_fault(R1)  # back up, same port
    assert int(fresh.hosts[R1].rsplit(":", 1)[1]) == port
    assert c.encrypt(M.EncryptRequest(key_id=arn, plaintext="x")).body.ciphertext_blob


def test_fault_latency(fresh):
    arn = fresh.create_key(R1)
    c = new_client(fresh)
    c.encrypt(M.EncryptRequest(key_id=arn, plaintext="x"))
    fresh.set_fault(R1, latency_ms=250)
    started = time.perf_counter()
    c.encrypt(M.EncryptRequest(key_id=arn, plaintext="x"))
    assert time.perf_counter() - started >= 0.25
    fresh.set_fault(R1)
    started = time.perf_counter()
    c.encrypt(M.EncryptRequest(key_id=arn, plaintext="x"))
    assert time.perf_counter() - started < 0.25


def test_fault_throttle(fresh):
    arn = fresh.create_key(R1)
    fresh.set_fault(R1, throttle_rate=1.0)
    with pytest.raises(Exception) as e:
        new_client(fresh).encrypt(M.EncryptRequest(key_id=arn, plaintext="x"))
    assert type(e.value).__name__ == "ClientException"
    assert error_of(e) == ("Rejected.Throttling", 429)
    req = EncryptRequest.EncryptRequest()
    req.set_KeyId(arn)
    req.set_Plaintext("x")
    with pytest.raises(ServerException) as le:
        legacy_call(fresh, req)
    assert (le.value.get_error_code(), le.value.get_http_status()) == ("Rejected.Throttling", 429)


@pytest.mark.parametrize("code,status", [("ServiceUnavailableTemporary", 503), ("InternalFailure", 500)])
def test_fault_server_errors(fresh, code, status):
    arn = fresh.create_key(R1)
    fresh.set_fault(R1, error_rate=1.0, error_code=code)
    with pytest.raises(Exception) as e:
        new_client(fresh).generate_data_key(M.GenerateDataKeyRequest(key_id=arn))
    assert type(e.value).__name__ == "ServerException"
    assert error_of(e) == (code, status)


def test_fault_rates_are_partial(fresh):
    arn = fresh.create_key(R1)
    fresh.set_fault(R1, throttle_rate=0.5)
    c = new_client(fresh)
    outcomes = []
    for _ in range(60):
        try:
            c.encrypt(M.EncryptRequest(key_id=arn, plaintext="x"))
            outcomes.append("ok")
        except Exception as exc:
            outcomes.append(exc.code)
    assert set(outcomes) == {"ok", "Rejected.Throttling"}


def test_stats(fresh):
    arn = fresh.create_key(R1)  # the Python API is not a request: not counted
    c = new_client(fresh)
    for _ in range(3):
        c.encrypt(M.EncryptRequest(key_id=arn, plaintext="x"))
    c.generate_data_key(M.GenerateDataKeyRequest(key_id=arn))
    with pytest.raises(Exception):  # refused before the action: not counted
        new_client(fresh, secret="bad").encrypt(M.EncryptRequest(key_id=arn, plaintext="x"))
    fresh.set_fault(R1, throttle_rate=1.0)
    with pytest.raises(Exception):  # reached the action, then throttled: counted
        c.encrypt(M.EncryptRequest(key_id=arn, plaintext="x"))
    new_client(fresh, R2).list_keys(M.ListKeysRequest())
    assert fresh.stats() == {R1: {"Encrypt": 4, "GenerateDataKey": 1}, R2: {"ListKeys": 1}}
    fresh.reset_stats()
    assert fresh.stats() == {R1: {}, R2: {}}


def test_concurrent_clients(fresh):
    arn = fresh.create_key(R1)
    errors = []

    def worker():
        c = new_client(fresh)
        try:
            for i in range(25):
                out = c.generate_data_key(M.GenerateDataKeyRequest(key_id=arn)).body
                back = c.decrypt(M.DecryptRequest(ciphertext_blob=out.ciphertext_blob)).body
                assert back.plaintext == out.plaintext
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert fresh.stats()[R1] == {"GenerateDataKey": 100, "Decrypt": 100}


# -- CLI -----------------------------------------------------------------------------


def _cli_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    package_root = str(Path(kmsenv.localkms.__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "kmsenv.localkms", *args]


class _Served:
    """A ``serve`` subprocess whose output is read up to the "Press Ctrl+C" line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            _cli("serve", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_cli_env()
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.head = []
        deadline = time.monotonic() + 30
        while not self.head or self.head[-1] != "Press Ctrl+C to stop.":
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, self.proc.stderr.read()
            self.head.append(line)
        exports = dict(ln[len("export ") :].split("=", 1) for ln in self.head if ln.startswith("export "))
        self.endpoints = dict(item.split("=", 1) for item in exports["KMSENV_KMS_ENDPOINTS"].split(","))
        self.key_id = exports["ALIBABA_CLOUD_ACCESS_KEY_ID"]
        self.secret = exports["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def client(self, region: str) -> Client:
        return Client(
            Config(
                access_key_id=self.key_id,
                access_key_secret=self.secret,
                endpoint=self.endpoints[region].split("://", 1)[1],
                protocol="http",
                region_id=region,
            )
        )

    def stop(self) -> tuple[int, str, str]:
        self.proc.send_signal(signal.SIGINT)
        rc = self.proc.wait(timeout=15)
        rest = []
        while (line := self.lines.get(timeout=5)) is not None:
            rest.append(line)
        return rc, "\n".join(self.head + rest), self.proc.stderr.read()


def test_cli_serve():
    served = _Served("--region", "cn-beijing", "--region", R1, "--port", "0")
    try:
        assert list(served.endpoints) == ["cn-beijing", R1]
        c = served.client(R1)
        meta = c.create_key(M.CreateKeyRequest()).body.key_metadata
        assert meta.arn.startswith(f"acs:kms:{R1}:")
    finally:
        rc, out, err = served.stop()
    assert rc == 0
    assert served.secret not in err
    secret_lines = [ln for ln in out.splitlines() if served.secret in ln]
    assert secret_lines == [f"export ALIBABA_CLOUD_ACCESS_KEY_SECRET={served.secret}"]


def test_cli_create_key_and_serve_with_state(tmp_path):
    state = str(tmp_path / "state")
    made = subprocess.run(
        _cli("create-key", "--region", "cn-beijing", "--state", state, "--spec", "Aliyun_SM4"),
        capture_output=True,
        text=True,
        env=_cli_env(),
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    arn = made.stdout.strip()
    assert arn.startswith("acs:kms:cn-beijing:") and ":key/" in arn
    served = _Served("--state", state)  # regions default to those in the state
    try:
        assert list(served.endpoints) == ["cn-beijing"]
        c = served.client("cn-beijing")
        assert c.describe_key(M.DescribeKeyRequest(key_id=arn)).body.key_metadata.key_spec == "Aliyun_SM4"
        blob = c.encrypt(M.EncryptRequest(key_id=arn, plaintext="x")).body.ciphertext_blob
    finally:
        rc, _, _ = served.stop()
    assert rc == 0
    again = _Served("--state", state)  # same credentials and port: old clients keep working
    try:
        assert (again.key_id, again.secret, again.endpoints) == (served.key_id, served.secret, served.endpoints)
        assert c.decrypt(M.DecryptRequest(ciphertext_blob=blob)).body.plaintext == "x"
    finally:
        rc, _, _ = again.stop()
    assert rc == 0
