"""Secrets hygiene: data keys are wiped after use and never appear in logs,
reprs or exception texts; the access key secret never appears either, and the
local KMS server prints it only on ``kms serve``'s credentials line.

"Appear" is checked in every form a key could take in text: raw bytes, hex
(both cases), standard and URL-safe base64, URL-encoded base64 (the KMS query
parameter form) and Python's bytes-repr escapes.
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
import urllib.parse

import pytest

import kmsenv
from kmsenv import Algorithm, KmsKeyProvider
from kmsenv.exceptions import KmsEnvError, KmsError
from kmsenv.kms import Kms
from kmsenv.model import DataKey, EncryptedDataKey

from helpers import ARN_BJ, FakeKmsProvider
from kms_fixtures import *  # noqa: F401,F403
from kms_fixtures import BJ, HZ, REGIONS, SH

PLAINTEXT = b"TOP-SECRET-PLAINTEXT-0123456789"
SDK_LOGGERS = (
    "kmsenv",
    "kmsenv.localkms",
    "alibabacloud_credentials",
    "alibabacloud_tea_openapi",
    "alibabacloud_kms20160120",
    "darabonba-core",
    "darabonba",
    "Tea",
    "aliyunsdkcore",
)


# ---------------------------------------------------------------- helpers


def forms(secret: bytes | str) -> list[bytes]:
    """Every textual form of a secret worth searching for."""
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    out = {raw}
    if isinstance(secret, bytes | bytearray):
        b64 = base64.b64encode(raw)
        out |= {
            raw.hex().encode(),
            raw.hex().upper().encode(),
            b64,
            base64.urlsafe_b64encode(raw),
            urllib.parse.quote(b64.decode(), safe="").encode(),
            b64.rstrip(b"="),
        }
        escaped = repr(raw)[2:-1].encode()
        if len(escaped) >= 8:
            out.add(escaped)
    return [f for f in out if len(f) >= 8]


def find_secrets(text: str | bytes, secrets: dict[str, bytes | str]) -> list[str]:
    blob = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    latin = text.encode("latin-1", "replace") if isinstance(text, str) else blob
    found = []
    for name, secret in secrets.items():
        for form in forms(secret):
            if form in blob or form in latin:
                found.append(name)
                break
    return found


def exception_text(exc: BaseException) -> str:
    """str/repr of an exception, its notes, chain and per-CMK errors, and its traceback."""
    parts, seen, todo = [], set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        parts += [str(e), repr(e), *getattr(e, "__notes__", [])]
        parts += traceback.format_exception(type(e), e, e.__traceback__)
        todo += [e.__cause__, e.__context__] + [err for _, err in getattr(e, "errors", [])]
    return "\n".join(parts)


class RecordingKms(Kms):
    """A real Kms that keeps a copy of every data key it saw (for the scans) and
    the live buffers it handed out (for the wipe checks)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.copies: list[bytes] = []
        self.buffers: list[bytearray] = []
        self._l = threading.Lock()

    def _keep(self, buf: bytearray) -> None:
        with self._l:
            self.copies.append(bytes(buf))
            self.buffers.append(buf)

    def generate_data_key(self, *args, **kwargs):
        plaintext, blob = super().generate_data_key(*args, **kwargs)
        self._keep(plaintext)
        return plaintext, blob

    def decrypt(self, *args, **kwargs):
        plaintext = super().decrypt(*args, **kwargs)
        self._keep(plaintext)
        return plaintext


@pytest.fixture
def rkms(local_kms, clean_faults):
    def factory(**overrides) -> RecordingKms:
        options = dict(
            access_key_id=local_kms.access_key_id,
            access_key_secret=local_kms.access_key_secret,
            endpoints=local_kms.endpoints,
            backoff_base=0.001,
            backoff_max=0.005,
            connect_timeout=2.0,
            read_timeout=5.0,
        )
        options.update(overrides)
        return RecordingKms(**options)

    return factory


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))  # includes exc_info tracebacks

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def debug_logs():
    """Root and every SDK logger at DEBUG into one capture (urllib3 separately)."""
    cap = Capture()
    root = logging.getLogger()
    saved = [(root, root.level)] + [(logging.getLogger(n), logging.getLogger(n).level) for n in SDK_LOGGERS]
    root.addHandler(cap)
    for logger, _ in saved:
        logger.setLevel(logging.DEBUG)
    # urllib3 is checked by its own test (see the finding below); keep it out here.
    u3 = logging.getLogger("urllib3")
    u3_level, u3_prop = u3.level, u3.propagate
    u3.propagate = False
    try:
        yield cap
    finally:
        root.removeHandler(cap)
        for logger, level in saved:
            logger.setLevel(level)
        u3.setLevel(u3_level)
        u3.propagate = u3_prop


def exercise(local_kms, cmks, kms: Kms) -> list[BaseException]:
    """Encrypt, decrypt, batch, failover, throttling, 5xx, timeouts, a wrong
    secret, tampering, no usable key: return every exception raised."""
    errors: list[BaseException] = []

    def expect_error(fn):
        try:
            fn()
        except KmsEnvError as exc:
            errors.append(exc)
        else:
            raise AssertionError("expected a KmsEnvError")

    provider = KmsKeyProvider(cmks.hz, cmks.bj, cmks.sh, kms=kms)
    sm4 = KmsKeyProvider(cmks.sm4, cmks.sm4_bj, kms=kms, algorithm=Algorithm.SM4_GCM_NOPADDING_128)
    msg = kmsenv.encrypt(PLAINTEXT, provider, encryption_context={"tenant": "acme"}).ciphertext
    batch = kmsenv.encrypt_many([PLAINTEXT, b"x"], sm4)
    assert kmsenv.decrypt(msg, provider).plaintext == PLAINTEXT
    assert kmsenv.decrypt_many(batch, sm4)[0] == PLAINTEXT
    # failover: down, throttled, 5xx; then all of them at once
    local_kms.set_fault(HZ, down=True)
    local_kms.set_fault(BJ, throttle_rate=1.0)
    assert kmsenv.decrypt(msg, provider).plaintext == PLAINTEXT
    local_kms.set_fault(SH, error_rate=1.0, error_code="InternalFailure")
    expect_error(lambda: kmsenv.decrypt(msg, provider))
    expect_error(lambda: kmsenv.encrypt(PLAINTEXT, provider))
    for region in REGIONS:
        local_kms.set_fault(region)
    # secondary region too slow: encrypt fails after GenerateDataKey ran
    slow = type(kms)(
        access_key_id=local_kms.access_key_id,
        access_key_secret=local_kms.access_key_secret,
        endpoints=local_kms.endpoints,
        backoff_base=0.001,
        backoff_max=0.002,
        read_timeout=0.2,
        max_attempts=1,
    )
    slow.copies, slow.buffers = kms.copies, kms.buffers  # share the recording
    local_kms.set_fault(BJ, latency_ms=800)
    expect_error(lambda: kmsenv.encrypt(PLAINTEXT, KmsKeyProvider(cmks.hz, cmks.bj, kms=slow)))
    local_kms.set_fault(BJ)
    # a wrong access key secret: the signature error must not echo the query
    # (Encrypt's query carries the data key)
    bad = Kms(
        access_key_id=local_kms.access_key_id,
        access_key_secret="WRONG-" + "s" * 24,
        endpoints=local_kms.endpoints,
        max_attempts=1,
    )
    expect_error(lambda: bad.encrypt(cmks.hz, kms.copies[0]))
    expect_error(lambda: kmsenv.decrypt(msg, KmsKeyProvider(cmks.hz, kms=bad)))
    # tampering, wrong context, no usable key, disabled key
    tampered = bytearray(msg)
    tampered[-1] ^= 1
    expect_error(lambda: kmsenv.decrypt(bytes(tampered), provider))
    expect_error(lambda: kmsenv.decrypt(msg, provider, expected_encryption_context={"tenant": "other"}))
    expect_error(lambda: kmsenv.decrypt(msg, KmsKeyProvider(cmks.hz2, kms=kms)))
    local_kms.disable_key(cmks.sh)
    try:
        expect_error(lambda: kmsenv.decrypt(msg, KmsKeyProvider(cmks.sh, kms=kms)))
    finally:
        local_kms.enable_key(cmks.sh)
    return errors


# ---------------------------------------------------------------- wiping


def test_data_key_buffers_are_wiped_after_encrypt_and_decrypt(local_kms, cmks, rkms):
    kms = rkms()
    provider = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
    handed: list[bytearray] = []  # the DataKeys' own key buffers

    class Spy:
        algorithm = provider.algorithm

        def generate_data_key(self, algorithm, ctx):
            dk = provider.generate_data_key(algorithm, ctx)
            handed.append(dk.plaintext)
            return dk

        def decrypt_data_key(self, edks, algorithm, ctx):
            return provider.decrypt_data_key(edks, algorithm, ctx)

    msg = kmsenv.encrypt(PLAINTEXT, Spy()).ciphertext
    batch = kmsenv.encrypt_many([PLAINTEXT] * 3, Spy())
    assert kmsenv.decrypt(msg, Spy()).plaintext == PLAINTEXT
    assert kmsenv.decrypt_many(batch, Spy()) == [PLAINTEXT] * 3
    assert len(handed) == 2 and all(len(buf) == 32 and not any(buf) for buf in handed)
    # GenerateDataKey's and Decrypt's buffers (the provider's and the engine's copies)
    assert len(kms.buffers) == 4 and all(len(b) == 32 and not any(b) for b in kms.buffers)
    assert all(any(c) for c in kms.copies)  # (the test's own copies were real keys)


def test_caller_key_buffers_are_wiped_on_success_and_failure(backend):
    returned: list[bytearray] = []

    class Provider(FakeKmsProvider):
        def decrypt_data_key(self, *args):
            key = super().decrypt_data_key(*args)
            returned.append(key)
            return key

    p = Provider(ARN_BJ)
    msg = kmsenv.encrypt(PLAINTEXT, p).ciphertext
    tampered = msg[:-1] + bytes((msg[-1] ^ 1,))
    assert kmsenv.decrypt(msg, p).plaintext == PLAINTEXT
    with pytest.raises(kmsenv.AuthenticationError):
        kmsenv.decrypt(tampered, p)
    with pytest.raises(kmsenv.AuthenticationError):
        kmsenv.decrypt_many([msg, tampered], p)
    assert len(returned) == 3 and all(len(k) == 32 and not any(k) for k in returned)


def test_wrong_size_data_key_from_a_provider_is_wiped():
    bad = DataKey(os.urandom(20), [EncryptedDataKey(ARN_BJ, b"blob")])
    buf = bad.plaintext

    class Provider:
        def generate_data_key(self, algorithm, ctx):
            return bad

        def decrypt_data_key(self, *a):
            raise AssertionError

    with pytest.raises(KmsEnvError) as info:
        kmsenv.encrypt(PLAINTEXT, Provider())
    assert len(buf) == 20 and not any(buf)
    assert "20-byte" in str(info.value)


def test_data_key_wipe_and_repr_and_no_pickle():
    key = os.urandom(32)
    dk = DataKey(key, [EncryptedDataKey(ARN_BJ, b"blob")])
    assert not find_secrets(repr(dk) + str(dk), {"key": key})
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(dk)
    with dk:
        buf = dk.plaintext
        assert bytes(buf) == key
    assert len(buf) == 32 and not any(buf)


# ---------------------------------------------------------------- logs, reprs, errors


def test_no_secret_in_debug_logs_reprs_or_errors(local_kms, cmks, rkms, debug_logs):
    kms = rkms()
    errors = exercise(local_kms, cmks, kms)
    assert len(errors) >= 8
    secrets: dict[str, bytes | str] = {f"data key {i}": k for i, k in enumerate(kms.copies)}
    secrets["access key secret"] = local_kms.access_key_secret
    secrets["plaintext"] = PLAINTEXT
    assert len(kms.copies) >= 5
    assert debug_logs.lines, "nothing was logged at DEBUG"
    assert any("trying the next CMK" in line for line in debug_logs.lines)  # failover was logged
    assert find_secrets(debug_logs.text, secrets) == []
    for exc in errors:
        text = exception_text(exc)
        assert find_secrets(text, secrets) == [], f"{type(exc).__name__}: {exc}"
    provider = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
    result = kmsenv.encrypt(PLAINTEXT, provider)
    reprs = [
        repr(kms),
        repr(provider),
        repr(local_kms),
        repr(result),
        repr(result.header),
        repr(kmsenv.decrypt(result.ciphertext, provider)),
        repr(kmsenv.message.codec.decode_message(result.ciphertext)[1]),
    ]
    secrets.update({f"data key {i}": k for i, k in enumerate(kms.copies)})
    assert find_secrets("\n".join(reprs), secrets) == []
    assert all(not any(b) for b in kms.buffers)


def test_no_data_key_in_urllib3_debug_log(local_kms, cmks, rkms):
    kms = rkms()
    cap = Capture()
    u3 = logging.getLogger("urllib3")
    level = u3.level
    u3.addHandler(cap)
    u3.setLevel(logging.DEBUG)
    try:
        kmsenv.encrypt(PLAINTEXT, KmsKeyProvider(cmks.hz, cmks.bj, kms=kms))
    finally:
        u3.removeHandler(cap)
        u3.setLevel(level)
    assert any("POST" in line for line in cap.lines)
    assert find_secrets(cap.text, {f"data key {i}": k for i, k in enumerate(kms.copies)}) == []


# ---------------------------------------------------------------- the local KMS server


def test_local_kms_server_logs_hold_no_secret(local_kms, cmks, rkms):
    cap = Capture()
    server_log = logging.getLogger("kmsenv.localkms")
    level = server_log.level
    server_log.addHandler(cap)
    server_log.setLevel(logging.DEBUG)
    kms = rkms()
    try:
        exercise(local_kms, cmks, kms)
        # a malformed request and an unsigned one, straight at the socket
        import socket

        host, port = local_kms.hosts[HZ].split(":")
        for raw in (
            b"GARBAGE /?Plaintext=AAAA HTTP/9\r\n\r\n",
            b"POST /?Action=Encrypt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        ):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(raw)
                s.recv(4096)
    finally:
        server_log.removeHandler(cap)
        server_log.setLevel(level)
    assert cap.lines, "the server logged nothing at DEBUG"
    secrets: dict[str, bytes | str] = {f"data key {i}": k for i, k in enumerate(kms.copies)}
    secrets["access key secret"] = local_kms.access_key_secret
    assert find_secrets(cap.text, secrets) == []


def test_kms_serve_prints_the_secret_only_on_its_credentials_line(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kmsenv.localkms",
            "serve",
            "--region",
            "cn-hangzhou",
            "--region",
            "cn-beijing",
            "--state",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Press Ctrl+C"):
                break
        exports = dict(ln.split(" ", 1)[1].strip().split("=", 1) for ln in lines if ln.startswith("export "))
        secret = exports["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]
        endpoints = dict(e.split("=", 1) for e in exports["KMSENV_KMS_ENDPOINTS"].split(","))
        # use it (good and bad signatures) so the server has something to log
        kms = Kms(
            access_key_id=exports["ALIBABA_CLOUD_ACCESS_KEY_ID"],
            access_key_secret=secret,
            endpoints=endpoints,
            max_attempts=1,
        )
        with pytest.raises(KmsError):
            kms.generate_data_key("acs:kms:cn-hangzhou:1234567890123456:key/nope", key_spec="AES_256")
        with pytest.raises(KmsError):
            Kms(
                access_key_id=exports["ALIBABA_CLOUD_ACCESS_KEY_ID"],
                access_key_secret="x" * 30,
                endpoints=endpoints,
                max_attempts=1,
            ).decrypt("acs:kms:cn-hangzhou:1234567890123456:key/nope", b"blob")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    everything = "".join(lines) + out + err
    assert everything.count(secret) == 1
    (line,) = [ln for ln in everything.splitlines() if secret in ln]
    assert line == f"export ALIBABA_CLOUD_ACCESS_KEY_SECRET={secret}"
    # the persisted state keeps it (documented: test use only), but no log file does
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.name.startswith("localkms.sqlite3"):
            assert secret.encode() not in path.read_bytes(), path


def test_no_data_key_in_the_sdk_debug_trace(local_kms, cmks, rkms, monkeypatch):
    """``DEBUG=sdk`` makes darabonba log every request's path and query (its own
    'darabonba-core' logger, which also prints to stderr by default)."""
    monkeypatch.setenv("DEBUG", "sdk")
    kms = rkms()
    cap = Capture()
    sdk = logging.getLogger("darabonba-core")
    sdk.addHandler(cap)
    try:
        kmsenv.encrypt(PLAINTEXT, KmsKeyProvider(cmks.hz, cmks.bj, kms=kms))
    finally:
        sdk.removeHandler(cap)
    assert any("> POST" in line for line in cap.lines), "the SDK trace did not run"
    assert find_secrets(cap.text, {f"data key {i}": k for i, k in enumerate(kms.copies)}) == []
