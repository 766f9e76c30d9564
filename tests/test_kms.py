"""kmsenv.kms.Kms and kmsenv.arn.Arn, against LocalKms over real HTTP."""

from __future__ import annotations

import base64
import dataclasses
import os
import threading
import traceback

import pytest

from kms_fixtures import *  # noqa: F401,F403
from kms_fixtures import BJ, HZ, SH
from kmsenv.arn import Arn
from kmsenv.exceptions import ConfigurationError, KmsError
from kmsenv.kms import Kms
from kmsenv.localkms import LocalKms

CTX = {"tenant": "acme", "purpose": "test ünïcode"}


def count(local_kms, region, action):
    return local_kms.stats().get(region, {}).get(action, 0)


# ---------------------------------------------------------------------------
# Arn
# ---------------------------------------------------------------------------


class TestArn:
    def test_parse_and_str_roundtrip(self):
        text = "acs:kms:cn-hangzhou:1234567890123456:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        arn = Arn.parse(text)
        assert arn == Arn("cn-hangzhou", "1234567890123456", "1234abcd-12ab-34cd-56ef-1234567890ab")
        assert str(arn) == text
        assert Arn.parse(arn) is arn
        with pytest.raises(dataclasses.FrozenInstanceError):
            arn.region = "cn-beijing"  # type: ignore[misc]

    @pytest.mark.parametrize(
        "text, fragment",
        [
            ("", "empty"),
            (" acs:kms:cn-hangzhou:123:key/k", "whitespace"),
            ("acs:kms:cn-hangzhou:123:key/k\n", "whitespace"),
            ("acs:kms:cn-hangzhou:123:key/a b", "whitespace"),
            ("alias/my-key", "alias"),
            ("acs:kms:cn-hangzhou:123:alias/my-key", "alias"),
            ("1234abcd-12ab-34cd-56ef-1234567890ab", "bare key ID"),
            ("acs:kms:cn-hangzhou:123", "5 colon-separated"),
            ("acs:kms:cn-hangzhou:123:key/k:x", "5 colon-separated"),
            ("arn:kms:cn-hangzhou:123:key/k", "acs:"),
            ("acs:ecs:cn-hangzhou:123:key/k", "service"),
            ("acs:kms::123:key/k", "empty region"),
            ("acs:kms:cn-hangzhou::key/k", "empty account"),
            ("acs:kms:cn-hangzhou:123:key/", "empty key ID"),
            ("acs:kms:cn-hangzhou:123:key", "resource type"),
            ("acs:kms:cn-hangzhou:123:secret/s", "resource type"),
            ("acs:kms:cn-hangzhou:123:key/alias/foo", "contains '/'"),
            ("acs:kms:cn_hang.zhou:123:key/k", "region"),
        ],
    )
    def test_rejects(self, text, fragment):
        with pytest.raises(ConfigurationError) as info:
            Arn.parse(text)
        assert fragment in str(info.value)

    def test_rejects_non_str(self):
        with pytest.raises(ConfigurationError):
            Arn.parse(b"acs:kms:cn-hangzhou:123:key/k")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Endpoints and configuration (no HTTP)
# ---------------------------------------------------------------------------


class TestEndpoints:
    def test_default_is_https_regional(self, monkeypatch):
        monkeypatch.delenv("KMSENV_KMS_ENDPOINTS", raising=False)
        k = Kms(access_key_id="a", access_key_secret="b")
        assert k.endpoint_url("cn-hangzhou") == "https://kms.cn-hangzhou.aliyuncs.com"

    def test_env_parsing(self, monkeypatch):
        monkeypatch.setenv(
            "KMSENV_KMS_ENDPOINTS",
            " cn-beijing=http://127.0.0.1:18001 , cn-hangzhou=https://kms.example.com,cn-shanghai=127.0.0.1:18003,",
        )
        k = Kms(access_key_id="a", access_key_secret="b")
        assert k.endpoint_url("cn-beijing") == "http://127.0.0.1:18001"
        assert k.endpoint_url("cn-hangzhou") == "https://kms.example.com"
        assert k.endpoint_url("cn-shanghai") == "https://127.0.0.1:18003"  # no scheme: HTTPS
        assert k.endpoint_url("ap-southeast-1") == "https://kms.ap-southeast-1.aliyuncs.com"
        assert "cn-beijing" in repr(k) and "b'" not in repr(k)

    def test_explicit_argument_wins(self, monkeypatch):
        monkeypatch.setenv("KMSENV_KMS_ENDPOINTS", "cn-beijing=http://127.0.0.1:18001")
        k = Kms(access_key_id="a", access_key_secret="b", endpoints={"cn-hangzhou": "http://localhost:1234/"})
        assert k.endpoint_url("cn-hangzhou") == "http://localhost:1234"
        assert k.endpoint_url("cn-beijing") == "https://kms.cn-beijing.aliyuncs.com"

    @pytest.mark.parametrize(
        "value",
        [
            "cn-beijing",
            "=http://127.0.0.1:1",
            "cn-beijing=",
            "cn-beijing=ftp://127.0.0.1:1",
            "cn-beijing=http://",
            "cn-beijing=http://127.0.0.1:99999",
            "cn-beijing=http://127.0.0.1:abc",
            "cn-beijing=http://127.0.0.1:1/kms",
            "cn-beijing=http://127.0.0.1:1?x=1",
            "cn-beijing=http://user:pw@127.0.0.1:1",
            "cn beijing=http://127.0.0.1:1",
            "cn-beijing=http://127.0.0.1:1,cn-beijing=http://127.0.0.1:2",
            "cn-beijing=http://127.0.0.1:1;cn-hangzhou=http://127.0.0.1:2",
        ],
    )
    def test_env_malformed(self, monkeypatch, value):
        monkeypatch.setenv("KMSENV_KMS_ENDPOINTS", value)
        with pytest.raises(ConfigurationError) as info:
            Kms(access_key_id="a", access_key_secret="b")
        assert "KMSENV_KMS_ENDPOINTS" in str(info.value)

    def test_argument_malformed(self):
        with pytest.raises(ConfigurationError):
            Kms(access_key_id="a", access_key_secret="b", endpoints={"cn-beijing": "gopher://x"})
        with pytest.raises(ConfigurationError):
            Kms(access_key_id="a", access_key_secret="b", endpoints=["cn-beijing=http://x"])  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "kwargs",
        [
            dict(access_key_id="a"),
            dict(access_key_secret="b"),
            dict(security_token="t"),
            dict(access_key_id="a", access_key_secret="b", credential=object()),
            dict(credential=object()),
            dict(max_attempts=0),
            dict(max_attempts=1.5),
            dict(connect_timeout=0),
            dict(read_timeout=-1),
            dict(backoff_base=-0.1),
        ],
    )
    def test_bad_options(self, kwargs):
        with pytest.raises(ConfigurationError):
            Kms(**kwargs)


# ---------------------------------------------------------------------------
# Operations over HTTP
# ---------------------------------------------------------------------------


class TestOperations:
    def test_generate_and_decrypt(self, kms, cmks):
        plaintext, blob = kms.generate_data_key(cmks.hz, encryption_context=CTX)
        assert isinstance(plaintext, bytearray) and len(plaintext) == 32
        assert isinstance(blob, bytes) and len(blob) == 108  # 36 + 12 + 44 + 16
        assert kms.decrypt(cmks.hz, blob, dict(reversed(CTX.items()))) == plaintext

    def test_key_spec_and_number_of_bytes(self, kms, cmks):
        assert len(kms.generate_data_key(cmks.hz, key_spec="AES_128")[0]) == 16
        plaintext, blob = kms.generate_data_key(cmks.sm4, number_of_bytes=16)
        assert len(plaintext) == 16
        assert kms.decrypt(cmks.sm4, blob) == plaintext
        with pytest.raises(ConfigurationError):
            kms.generate_data_key(cmks.hz, key_spec="SM4_128")
        with pytest.raises(ConfigurationError):
            kms.generate_data_key(cmks.hz, number_of_bytes=0)

    def test_encrypt_decrypt_other_region(self, kms, cmks):
        secret = os.urandom(32)
        blob = kms.encrypt(cmks.bj, secret, CTX)
        assert kms.decrypt(cmks.bj, blob, CTX) == secret
        # blobs are regional: the hangzhou region does not know beijing's key versions
        with pytest.raises(KmsError) as info:
            kms.decrypt(cmks.hz, blob, CTX)
        assert info.value.code == "Forbidden.KeyNotFound" and info.value.region == HZ
        assert not info.value.retryable

    def test_re_encrypt_same_region(self, kms, cmks, local_kms):
        plaintext, blob = kms.generate_data_key(cmks.hz, encryption_context=CTX)
        before = count(local_kms, HZ, "ReEncrypt")
        blob2 = kms.re_encrypt(
            blob, cmks.hz2, source_encryption_context=CTX, destination_encryption_context=CTX, region=HZ
        )
        assert count(local_kms, HZ, "ReEncrypt") == before + 1
        assert kms.decrypt(cmks.hz2, blob2, CTX) == plaintext
        with pytest.raises(ConfigurationError):
            kms.re_encrypt(blob, cmks.bj, region=HZ)

    def test_empty_context_equals_none(self, kms, cmks):
        plaintext, blob = kms.generate_data_key(cmks.hz, encryption_context={})
        assert kms.decrypt(cmks.hz, blob) == plaintext
        assert kms.decrypt(cmks.hz, blob, {}) == plaintext

    def test_context_mismatch(self, kms, cmks):
        _, blob = kms.generate_data_key(cmks.hz, encryption_context=CTX)
        for wrong in ({"tenant": "acme"}, None, {**CTX, "extra": "x"}):
            with pytest.raises(KmsError) as info:
                kms.decrypt(cmks.hz, blob, wrong)
            assert info.value.code == "InvalidParameter" and not info.value.retryable

    def test_context_must_be_a_dict(self, kms, cmks):
        # a JSON string would silently become EncryptionContext=null in the official client
        with pytest.raises(ConfigurationError):
            kms.generate_data_key(cmks.hz, encryption_context='{"a":"b"}')  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError):
            kms.generate_data_key(cmks.hz, encryption_context={"a": 1})  # type: ignore[dict-item]

    def test_blob_under_another_key_than_claimed(self, kms, cmks):
        _, blob = kms.generate_data_key(cmks.hz)
        with pytest.raises(KmsError) as info:
            kms.decrypt(cmks.hz2, blob)
        assert info.value.code == "KeyIdMismatch"

    def test_unknown_key(self, kms, cmks):
        arn = Arn.parse(cmks.hz)
        missing = str(Arn(arn.region, arn.account_id, "00000000-0000-0000-0000-000000000000"))
        with pytest.raises(KmsError) as info:
            kms.generate_data_key(missing)
        assert info.value.code == "Forbidden.KeyNotFound"
        assert info.value.request_id and not info.value.retryable

    def test_disabled_key(self, kms, local_kms):
        arn = local_kms.create_key(HZ)
        _, blob = kms.generate_data_key(arn)
        local_kms.disable_key(arn)
        for call in (lambda: kms.generate_data_key(arn), lambda: kms.decrypt(arn, blob)):
            with pytest.raises(KmsError) as info:
                call()
            assert info.value.code == "Rejected.Disabled" and not info.value.retryable
        local_kms.enable_key(arn)
        assert len(kms.decrypt(arn, blob)) == 32

    def test_bad_arguments(self, kms, cmks):
        with pytest.raises(ConfigurationError):
            kms.generate_data_key("alias/foo")
        with pytest.raises(ConfigurationError):
            kms.decrypt(cmks.hz, b"")
        with pytest.raises(ConfigurationError):
            kms.encrypt(cmks.hz, "text")  # type: ignore[arg-type]

    def test_clients_are_reused_and_thread_safe(self, kms, cmks):
        errors = []

        def work():
            try:
                for _ in range(5):
                    pt, blob = kms.generate_data_key(cmks.bj, encryption_context=CTX)
                    assert kms.decrypt(cmks.bj, blob, CTX) == pt
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert set(kms._clients) == {BJ}


# ---------------------------------------------------------------------------
# Credentials
# ---------------------------------------------------------------------------


class TestCredentials:
    def test_wrong_secret(self, make_kms, cmks, local_kms):
        sleeps = []
        k = make_kms(access_key_secret="definitely-wrong-secret", sleep=sleeps.append)
        with pytest.raises(KmsError) as info:
            k.generate_data_key(cmks.hz)
        err = info.value
        assert err.code == "SignatureDoesNotMatch" and not err.retryable
        assert err.region == HZ and err.request_id
        assert sleeps == []  # not retried
        assert "definitely-wrong-secret" not in str(err)
        assert "string to sign" not in str(err)

    def test_sts_token_is_sent(self, make_kms, cmks):
        k = make_kms(security_token="sts-token-for-test")
        pt, blob = k.generate_data_key(cmks.hz)
        assert k.decrypt(cmks.hz, blob) == pt

    def test_unknown_access_key(self, make_kms, cmks):
        k = make_kms(access_key_id="LTAInobody")
        with pytest.raises(KmsError) as info:
            k.generate_data_key(cmks.hz)
        assert info.value.code == "InvalidAccessKeyId.NotFound" and not info.value.retryable

    def test_credential_client(self, make_kms, local_kms, cmks):
        from alibabacloud_credentials.client import Client as CredentialClient
        from alibabacloud_credentials.models import Config as CredentialConfig

        cred = CredentialClient(
            CredentialConfig(
                type="access_key", access_key_id=local_kms.access_key_id, access_key_secret=local_kms.access_key_secret
            )
        )
        k = make_kms(access_key_id=None, access_key_secret=None, credential=cred)
        pt, blob = k.generate_data_key(cmks.hz)
        assert k.decrypt(cmks.hz, blob) == pt

    def test_environment_variables_read_at_first_use(self, monkeypatch, local_kms, cmks, clean_faults):
        # set *after* alibabacloud_credentials was imported (it snapshots os.environ)
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", local_kms.access_key_id)
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", local_kms.access_key_secret)
        monkeypatch.delenv("ALIBABA_CLOUD_SECURITY_TOKEN", raising=False)
        monkeypatch.setenv("KMSENV_KMS_ENDPOINTS", ",".join(f"{r}={u}" for r, u in local_kms.endpoints.items()))
        k = Kms(backoff_base=0.001, backoff_max=0.005)
        pt, blob = k.generate_data_key(cmks.sh)
        assert k.decrypt(cmks.sh, blob) == pt

    def test_incomplete_environment(self, monkeypatch, local_kms, cmks):
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIsomething")
        monkeypatch.delenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", raising=False)
        k = Kms(endpoints=local_kms.endpoints)
        with pytest.raises(ConfigurationError) as info:
            k.generate_data_key(cmks.hz)
        assert "ALIBABA_CLOUD_ACCESS_KEY_SECRET" in str(info.value)

    def test_missing_credentials(self, monkeypatch, tmp_path, local_kms, cmks):
        # No credentials anywhere: no env vars, no profile files, no OIDC, no ECS
        # metadata.  alibabacloud_credentials reads its environment at import time,
        # so its snapshot is adjusted as well.
        from alibabacloud_credentials.utils import auth_constant, auth_util

        for name in ("ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET", "ALIBABA_CLOUD_SECURITY_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(auth_util, "environment_access_key_id", None)
        monkeypatch.setattr(auth_util, "environment_access_key_secret", None)
        monkeypatch.setattr(auth_util, "environment_security_token", None)
        monkeypatch.setattr(auth_util, "environment_credentials_file", None)
        monkeypatch.setattr(auth_util, "environment_credentials_uri", None)
        monkeypatch.setattr(auth_util, "enable_oidc_credential", False)
        monkeypatch.setattr(auth_util, "environment_cli_profile_disabled", "true")
        monkeypatch.setattr(auth_util, "environment_ecs_metadata_disabled", "true")
        monkeypatch.setattr(auth_constant, "HOME", str(tmp_path))
        k = Kms(endpoints=local_kms.endpoints)
        before = local_kms.stats()
        with pytest.raises(ConfigurationError) as info:
            k.generate_data_key(cmks.hz)
        message = str(info.value)
        assert "ALIBABA_CLOUD_ACCESS_KEY_ID" in message and "ALIBABA_CLOUD_ACCESS_KEY_SECRET" in message
        assert local_kms.stats() == before  # nothing reached the server


# ---------------------------------------------------------------------------
# Retries, timeouts, transport
# ---------------------------------------------------------------------------


class TestRetries:
    def test_throttled_then_recovers(self, make_kms, local_kms, cmks):
        _, blob = make_kms().generate_data_key(cmks.hz)
        local_kms.set_fault(HZ, throttle_rate=1.0)
        sleeps = []

        def sleep(seconds):
            sleeps.append(seconds)
            if len(sleeps) == 2:
                local_kms.set_fault(HZ)  # the throttling ends during the second backoff

        k = make_kms(sleep=sleep)
        before = count(local_kms, HZ, "Decrypt")
        assert len(k.decrypt(cmks.hz, blob)) == 32
        assert count(local_kms, HZ, "Decrypt") == before + 3
        assert len(sleeps) == 2

    def test_throttled_past_retries(self, make_kms, local_kms, cmks):
        local_kms.set_fault(HZ, throttle_rate=1.0)
        sleeps = []
        k = make_kms(sleep=sleeps.append, max_attempts=3, backoff_base=0.5, backoff_max=0.75)
        before = count(local_kms, HZ, "GenerateDataKey")
        with pytest.raises(KmsError) as info:
            k.generate_data_key(cmks.hz)
        err = info.value
        assert err.code == "Rejected.Throttling" and err.retryable and err.region == HZ and err.request_id
        assert "after 3 attempts" in str(err)
        assert count(local_kms, HZ, "GenerateDataKey") == before + 3
        # full jitter: uniform(0, min(max, base * 2**retry))
        assert len(sleeps) == 2
        assert 0 <= sleeps[0] <= 0.5 and 0 <= sleeps[1] <= 0.75

    def test_random_throttling_with_enough_retries(self, make_kms, local_kms, cmks):
        local_kms.set_fault(BJ, throttle_rate=0.5)
        k = make_kms(max_attempts=30)
        for _ in range(5):
            pt, blob = k.generate_data_key(cmks.bj)
            assert k.decrypt(cmks.bj, blob) == pt

    @pytest.mark.parametrize("code, status", [("ServiceUnavailableTemporary", 503), ("InternalFailure", 500)])
    def test_server_errors_are_retried(self, make_kms, local_kms, cmks, code, status):
        local_kms.set_fault(SH, error_rate=1.0, error_code=code)
        sleeps = []
        k = make_kms(sleep=sleeps.append)
        with pytest.raises(KmsError) as info:
            k.encrypt(cmks.sh, b"k" * 32)
        assert info.value.code == code and info.value.retryable
        assert f"HTTP {status}" in str(info.value)
        assert len(sleeps) == 3  # max_attempts=4 by default

    def test_max_attempts_one_means_no_retry(self, make_kms, local_kms, cmks):
        local_kms.set_fault(SH, error_rate=1.0)
        sleeps = []
        with pytest.raises(KmsError):
            make_kms(sleep=sleeps.append, max_attempts=1).encrypt(cmks.sh, b"k" * 32)
        assert sleeps == []

    def test_region_down(self, make_kms, local_kms, cmks):
        secret = os.urandom(32)
        local_kms.set_fault(BJ, down=True)
        sleeps = []
        with pytest.raises(KmsError) as info:
            make_kms(sleep=sleeps.append).encrypt(cmks.bj, secret, CTX)
        err = info.value
        assert err.code == "ConnectionError" and err.retryable and err.region == BJ
        assert len(sleeps) == 3
        # neither the message nor the printed traceback carries the plaintext
        # (the SDK's transport error text contains the request URL with its query)
        rendered = "".join(traceback.format_exception(err))
        for form in (base64.b64encode(secret).decode(), base64.b64encode(secret).decode().replace("+", "%2B")):
            assert form[:20] not in rendered
        assert err.__suppress_context__

    def test_read_timeout(self, make_kms, local_kms, cmks):
        local_kms.set_fault(SH, latency_ms=1500)
        with pytest.raises(KmsError) as info:
            make_kms(read_timeout=0.3, max_attempts=2).encrypt(cmks.sh, b"k" * 16)
        assert info.value.code == "ReadTimeout" and info.value.retryable

    def test_loopback_endpoints_bypass_proxies(self, monkeypatch):
        # darabonba hands HTTP(S)_PROXY to requests itself, ignoring NO_PROXY;
        # Kms must reach loopback endpoints directly anyway.
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
            monkeypatch.setenv(name, "http://127.0.0.1:9")
        with LocalKms(regions=[HZ]) as server:
            arn = server.create_key(HZ)
            k = Kms(
                access_key_id=server.access_key_id,
                access_key_secret=server.access_key_secret,
                endpoints=server.endpoints,
                max_attempts=1,
            )
            pt, blob = k.generate_data_key(arn)
            assert k.decrypt(arn, blob) == pt


def test_endpoint_that_is_not_kms():
    """A misconfigured endpoint (here: a plain web server answering HTML 502)
    surfaces as a KmsError, never as a raw SDK or JSON exception."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = b"<html>Bad Gateway</html>"
            self.send_response(502)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        k = Kms(
            access_key_id="a",
            access_key_secret="b",
            max_attempts=2,
            backoff_base=0.001,
            endpoints={HZ: f"http://127.0.0.1:{server.server_address[1]}"},
        )
        with pytest.raises(KmsError) as info:
            k.generate_data_key(f"acs:kms:{HZ}:123:key/k")
        assert info.value.code == "InvalidResponse" and info.value.region == HZ
    finally:
        server.shutdown()
        server.server_close()


def test_encrypt_in_region_takes_an_alias_and_decrypt_in_region_needs_no_arn(local_kms, make_kms):
    """Aliases name a different key in each region (kmsenv.parquet wraps by alias)."""
    kms = make_kms()
    keys = {r: local_kms.create_key(r) for r in (HZ, BJ)}
    for region, arn in keys.items():
        local_kms.create_alias(region, "alias/kmsenv-test-orders", arn)
    for region, arn in keys.items():
        blob = kms.encrypt_in_region(region, "alias/kmsenv-test-orders", b"k" * 32, {"m": "x"})
        assert kms.decrypt_in_region(region, blob, {"m": "x"}) == bytearray(b"k" * 32)
        assert kms.decrypt(arn, blob, {"m": "x"}) == bytearray(b"k" * 32)  # the blob names the real key
        with pytest.raises(KmsError):
            kms.decrypt_in_region(region, blob, {"m": "other"})
    with pytest.raises(ConfigurationError):
        kms.encrypt_in_region(HZ, "alias/with space", b"k", None)
