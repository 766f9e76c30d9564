"""Fault injection: KmsKeyProvider + Kms against LocalKms with faults, and a TCP
proxy that resets connections mid-request.

What must hold whatever the network does:

* encrypt either returns a message carrying an encrypted data key for *every*
  CMK asked for, or raises a typed ``KmsError`` (``KmsEnvError``), and no
  plaintext data key survives the failure (the buffers KMS handed out are zero,
  and no live ``DataKey`` holds key bytes);
* decrypt fails over from CMK to CMK (region to region) and raises
  ``NoUsableKeyError`` listing every CMK only when all of them fail.

Faults: a region down (connection refused), latency beyond the read timeout,
throttling storms (429), 5xx bursts (500/503), and TCP resets (SO_LINGER 0)
before the request reaches the server or after it ran but before the answer.
"""

from __future__ import annotations

import gc
import random
import socket
import struct
import threading

import pytest

import kmsenv
from kmsenv import Algorithm, KmsKeyProvider
from kmsenv.exceptions import KmsError, NoUsableKeyError
from kmsenv.kms import Kms
from kmsenv.model import DataKey

from kms_fixtures import *  # noqa: F401,F403
from kms_fixtures import BJ, HZ, SH, kms_options

CTX = {"tenant": "acme"}


class RecordingKms(Kms):
    """A real Kms that keeps every plaintext data-key buffer it hands out, to
    check afterwards that the provider/engine wiped them."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.buffers: list[bytearray] = []
        self._rec_lock = threading.Lock()

    def generate_data_key(self, *args, **kwargs):
        plaintext, blob = super().generate_data_key(*args, **kwargs)
        with self._rec_lock:
            self.buffers.append(plaintext)
        return plaintext, blob

    def decrypt(self, *args, **kwargs):
        plaintext = super().decrypt(*args, **kwargs)
        with self._rec_lock:
            self.buffers.append(plaintext)
        return plaintext


@pytest.fixture
def make_recording_kms(local_kms, clean_faults):
    def factory(**overrides) -> RecordingKms:
        return RecordingKms(**kms_options(local_kms, **overrides))

    return factory


def assert_all_wiped(kms: RecordingKms) -> None:
    assert kms.buffers, "the test did not reach KMS"
    for buf in kms.buffers:
        assert not any(buf), "a plaintext data key buffer was not wiped"
    gc.collect()
    live = [o for o in gc.get_objects() if isinstance(o, DataKey) and any(o.plaintext)]
    assert not live, f"{len(live)} live DataKey object(s) still hold key bytes"


def assert_complete(message: bytes, arns: list[str]) -> None:
    header = kmsenv.parse_header(message)
    assert sorted(e.key_arn for e in header.encrypted_data_keys) == sorted(arns)


def decrypts_under_each(message: bytes, arns: list[str], kms: Kms, plaintext: bytes) -> None:
    for arn in arns:
        assert kmsenv.decrypt(message, KmsKeyProvider(arn, kms=kms)).plaintext == plaintext


# ---------------------------------------------------------------- a region down


@pytest.mark.parametrize("down", [BJ, SH])
def test_encrypt_with_a_secondary_region_down_fails_cleanly(down, cmks, local_kms, make_recording_kms):
    kms = make_recording_kms()
    provider = KmsKeyProvider(cmks.hz, cmks.bj, cmks.sh, kms=kms)
    local_kms.set_fault(down, down=True)
    with pytest.raises(KmsError) as info:
        kmsenv.encrypt(b"secret", provider, encryption_context=CTX)
    assert isinstance(info.value, kmsenv.KmsEnvError)
    assert info.value.region == down and info.value.retryable and info.value.code == "ConnectionError"
    assert_all_wiped(kms)


def test_encrypt_with_the_primary_region_down_fails_before_any_key(cmks, local_kms, make_recording_kms):
    kms = make_recording_kms()
    provider = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
    local_kms.reset_stats()
    local_kms.set_fault(HZ, down=True)
    with pytest.raises(KmsError) as info:
        kmsenv.encrypt(b"secret", provider)
    assert info.value.region == HZ
    assert kms.buffers == []  # no data key was ever made
    assert local_kms.stats()[BJ] == {}  # and nothing was wrapped elsewhere


def test_decrypt_fails_over_region_by_region(cmks, local_kms, make_recording_kms):
    kms = make_recording_kms()
    arns = [cmks.hz, cmks.bj, cmks.sh]
    provider = KmsKeyProvider(*arns, kms=kms)
    message = kmsenv.encrypt(b"replicated", provider, encryption_context=CTX).ciphertext
    assert_complete(message, arns)
    local_kms.set_fault(HZ, down=True)
    local_kms.reset_stats()
    assert kmsenv.decrypt(message, provider).plaintext == b"replicated"
    assert local_kms.stats()[BJ] == {"Decrypt": 1}
    local_kms.set_fault(BJ, down=True)
    local_kms.reset_stats()
    assert kmsenv.decrypt(message, provider).plaintext == b"replicated"
    assert local_kms.stats()[SH] == {"Decrypt": 1}
    local_kms.set_fault(SH, down=True)
    with pytest.raises(NoUsableKeyError) as info:
        kmsenv.decrypt(message, provider)
    assert [arn for arn, _ in info.value.errors] == arns
    assert all(isinstance(e, KmsError) and e.code == "ConnectionError" for _, e in info.value.errors)
    assert_all_wiped(kms)


# ---------------------------------------------------------------- latency


def test_latency_below_the_timeout_is_only_slow(cmks, local_kms, make_kms):
    kms = make_kms(read_timeout=5.0)
    local_kms.set_fault(HZ, latency_ms=150)
    local_kms.set_fault(BJ, latency_ms=150)
    provider = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
    message = kmsenv.encrypt(b"slow", provider).ciphertext
    assert_complete(message, [cmks.hz, cmks.bj])
    assert kmsenv.decrypt(message, provider).plaintext == b"slow"


def test_latency_spike_past_the_read_timeout(cmks, local_kms, make_recording_kms):
    kms = make_recording_kms(read_timeout=0.2, max_attempts=2)
    provider = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
    message = kmsenv.encrypt(b"spike", provider).ciphertext
    # Decrypt: the slow region times out (retried), then the other one answers.
    local_kms.set_fault(HZ, latency_ms=1500)
    local_kms.reset_stats()
    assert kmsenv.decrypt(message, provider).plaintext == b"spike"
    assert local_kms.stats()[HZ].get("Decrypt", 0) <= 2
    assert local_kms.stats()[BJ] == {"Decrypt": 1}
    # Encrypt: a secondary region past the timeout fails the whole encrypt.
    local_kms.set_fault(HZ)
    local_kms.set_fault(BJ, latency_ms=1500)
    with pytest.raises(KmsError) as info:
        kmsenv.encrypt(b"spike", provider)
    assert info.value.code == "ReadTimeout" and info.value.region == BJ and info.value.retryable
    assert_all_wiped(kms)


# ---------------------------------------------------------------- throttling and 5xx


def test_throttling_storm_on_one_region_fails_over(cmks, local_kms, make_kms):
    kms = make_kms(max_attempts=3)
    provider = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
    message = kmsenv.encrypt(b"storm", provider).ciphertext
    local_kms.set_fault(HZ, throttle_rate=1.0)
    local_kms.reset_stats()
    assert kmsenv.decrypt(message, provider).plaintext == b"storm"
    # One fast attempt while another CMK remains, then failover (no backoff).
    assert local_kms.stats()[HZ] == {"Decrypt": 1}
    assert local_kms.stats()[BJ] == {"Decrypt": 1}


@pytest.mark.parametrize(
    "fault",
    [
        dict(throttle_rate=0.6),
        dict(error_rate=0.6, error_code="ServiceUnavailableTemporary"),
        dict(error_rate=0.6, error_code="InternalFailure"),
    ],
    ids=["throttling-429", "5xx-503", "5xx-500"],
)
def test_partial_storm_encrypt_is_all_or_nothing(fault, cmks, local_kms, make_recording_kms):
    """Under a storm on every region, each encrypt either carries all three EDKs
    (and each decrypts alone) or fails with a typed, retryable KmsError."""
    random.seed(1234)  # LocalKms draws its faults from the random module
    kms = make_recording_kms(max_attempts=3)
    arns = [cmks.hz, cmks.bj, cmks.sh]
    provider = KmsKeyProvider(*arns, kms=kms)
    for region in (HZ, BJ, SH):
        local_kms.set_fault(region, **fault)
    made, failed = [], []
    for i in range(30):
        try:
            made.append((kmsenv.encrypt(b"row %d" % i, provider, encryption_context=CTX).ciphertext, b"row %d" % i))
        except KmsError as exc:
            assert exc.retryable and exc.code in (
                "Rejected.Throttling",
                "ServiceUnavailableTemporary",
                "InternalFailure",
            ), exc
            failed.append(exc)
    assert made and failed, (len(made), len(failed))  # both paths were exercised
    assert_all_wiped(kms)
    for region in (HZ, BJ, SH):
        local_kms.set_fault(region)
    for message, plaintext in made:
        assert_complete(message, arns)
    for message, plaintext in made[:3]:
        decrypts_under_each(message, arns, kms, plaintext)


def test_5xx_burst_is_retried_through(cmks, local_kms, make_kms):
    kms = make_kms(max_attempts=4)
    provider = KmsKeyProvider(cmks.hz, kms=kms)
    message = kmsenv.encrypt(b"burst", provider).ciphertext
    local_kms.set_fault(HZ, error_rate=1.0, error_code="InternalFailure")
    local_kms.reset_stats()
    with pytest.raises(NoUsableKeyError) as info:
        kmsenv.decrypt(message, provider)
    ((arn, err),) = info.value.errors
    assert err.code == "InternalFailure" and err.retryable and "after 4 attempts" in str(err)
    assert local_kms.stats()[HZ] == {"Decrypt": 4}
    local_kms.set_fault(HZ)
    assert kmsenv.decrypt(message, provider).plaintext == b"burst"


# ---------------------------------------------------------------- connection resets


class ResetProxy:
    """A TCP proxy in front of one LocalKms region that resets chosen connections.

    ``policy(index)`` decides for the index-th accepted connection: ``None``
    forwards it untouched; ``"request"`` reads part of the request and resets
    (the server never sees it); ``"response"`` forwards the request, and resets
    the client when the server's answer starts (the action ran, the client never
    learns the result).  The reset is SO_LINGER 0 + close: an RST, not a FIN.
    """

    def __init__(self, upstream: str, policy):
        host, port = upstream.rsplit("//", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.policy = policy
        self.accepted = 0
        self.resets = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._closed = False
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="reset-proxy").start()

    @staticmethod
    def _rst(sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                index = self.accepted
                self.accepted += 1
                self._conns.append(client)
            threading.Thread(target=self._serve, args=(client, self.policy(index)), daemon=True).start()

    @staticmethod
    def _read_request(client: socket.socket) -> bytes:
        """One whole HTTP/1.1 request (headers + Content-Length body)."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = client.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body

    def _serve(self, client: socket.socket, mode) -> None:
        # One thread per connection and no concurrent recv on a socket being
        # reset: on Linux, close() does not abort a recv() blocked in another
        # thread, so the RST would only go out when that recv returned.
        try:
            if mode == "request":
                client.recv(64)  # the request has started arriving
                with self._lock:
                    self.resets += 1
                self._rst(client)
                return
            if mode == "response":
                request = self._read_request(client)
                with socket.create_connection(self.upstream, timeout=10) as upstream:
                    upstream.sendall(request)
                    upstream.recv(1)  # the server ran the action and is answering
                with self._lock:
                    self.resets += 1
                self._rst(client)
                return
            self._forward(client)
        except OSError:
            self._rst(client)

    def _forward(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream, timeout=30)
        with self._lock:
            self._conns.append(upstream)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        up = threading.Thread(target=pump, args=(client, upstream), daemon=True)
        up.start()
        pump(upstream, client)
        up.join(timeout=30)
        upstream.close()
        client.close()

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.close()
            except OSError:
                pass


@pytest.fixture
def reset_proxy(local_kms):
    proxies: list[ResetProxy] = []

    def factory(region: str, policy) -> ResetProxy:
        proxy = ResetProxy(local_kms.endpoints[region], policy)
        proxies.append(proxy)
        return proxy

    yield factory
    for p in proxies:
        p.close()


@pytest.mark.parametrize("mode", ["request", "response"])
def test_resets_on_the_first_connections_are_retried(mode, cmks, local_kms, make_recording_kms, reset_proxy):
    proxy = reset_proxy(HZ, lambda i: mode if i < 2 else None)
    kms = make_recording_kms(endpoints={**local_kms.endpoints, HZ: proxy.url}, max_attempts=4)
    provider = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
    local_kms.reset_stats()
    message = kmsenv.encrypt(b"through resets", provider, encryption_context=CTX).ciphertext
    assert proxy.resets == 2
    # "response": the server ran GenerateDataKey for the reset attempts too.
    assert local_kms.stats()[HZ]["GenerateDataKey"] == (3 if mode == "response" else 1)
    assert_complete(message, [cmks.hz, cmks.bj])
    assert kmsenv.decrypt(message, provider).plaintext == b"through resets"
    assert_all_wiped(kms)


@pytest.mark.parametrize("mode", ["request", "response"])
def test_every_connection_reset_fails_encrypt_cleanly_and_decrypt_over(
    mode, cmks, local_kms, make_recording_kms, reset_proxy
):
    message = kmsenv.encrypt(b"x", KmsKeyProvider(cmks.hz, cmks.bj, kms=make_recording_kms())).ciphertext
    proxy = reset_proxy(BJ, lambda i: mode)
    kms = make_recording_kms(endpoints={**local_kms.endpoints, BJ: proxy.url}, max_attempts=3)
    # Secondary region behind the resetting proxy: encrypt fails, nothing leaks.
    with pytest.raises(KmsError) as info:
        kmsenv.encrypt(b"x", KmsKeyProvider(cmks.hz, cmks.bj, kms=kms))
    assert info.value.code == "ConnectionError" and info.value.region == BJ and info.value.retryable
    assert proxy.resets == 3
    assert local_kms.access_key_secret not in str(info.value)
    # Decrypt preferring the resetting region fails over to the healthy one.
    local_kms.reset_stats()
    assert kmsenv.decrypt(message, KmsKeyProvider(cmks.bj, cmks.hz, kms=kms)).plaintext == b"x"
    assert local_kms.stats()[HZ] == {"Decrypt": 1}
    assert_all_wiped(kms)


def test_resets_during_a_multi_region_encrypt_sm4(cmks, local_kms, make_recording_kms, reset_proxy):
    """Every other connection reset on both regions of an SM4 provider:
    encrypts either complete or fail typed; the completed ones decrypt in each region."""
    proxies = {r: reset_proxy(r, lambda i: "request" if i % 2 == 0 else None) for r in (HZ, BJ)}
    kms = make_recording_kms(
        endpoints={**local_kms.endpoints, **{r: p.url for r, p in proxies.items()}}, max_attempts=3
    )
    arns = [cmks.sm4, cmks.sm4_bj]
    provider = KmsKeyProvider(*arns, kms=kms, algorithm=Algorithm.SM4_GCM_NOPADDING_128)
    made = []
    for i in range(6):
        try:
            made.append(kmsenv.encrypt(b"sm4 %d" % i, provider).ciphertext)
        except KmsError as exc:
            assert exc.code == "ConnectionError" and exc.retryable
    assert made and sum(p.resets for p in proxies.values()) > 0
    for message in made:
        assert_complete(message, arns)
    decrypts_under_each(made[0], arns, kms, b"sm4 0")
    assert_all_wiped(kms)
