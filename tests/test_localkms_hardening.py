"""LocalKms against hostile or careless clients, over real HTTP: replayed requests,
oversized and malformed requests sent before authentication, connections that hog the
server, and state directories another user could have planted.

Requests are signed here by hand (independently of the server's code) and sent on raw
sockets, because the official clients cannot produce them; legitimate traffic goes
through the unmodified official client.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import os
import select
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from alibabacloud_kms20160120 import models as M
from alibabacloud_kms20160120.client import Client
from alibabacloud_tea_openapi.models import Config

import kmsenv.localkms
from kmsenv.exceptions import ConfigurationError
from kmsenv.localkms import LocalKms

# Reaches no crypto backend, or only through code the backend tests cover: the pure-backend CI pass leaves it out.
pytestmark = pytest.mark.backend_independent

R = "cn-hangzhou"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in PROXY_VARS:  # the SDK would hand loopback calls to a proxy
        monkeypatch.delenv(var, raising=False)


class Clock:
    """Wall time plus an offset the test moves (the server checks signatures against it)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def pct(value: str) -> str:
    return quote(value, safe="-_.~")


# -- hand-made requests ------------------------------------------------------------------


def v3_request(
    kms: LocalKms,
    action: str,
    params: dict | None = None,
    *,
    when: float,
    nonce: str | None = None,
    signature: str | None = None,
) -> bytes:
    """A complete ACS3-HMAC-SHA256 request, as the official client would send it."""
    params = params or {}
    host = kms.hosts[R]
    headers = {
        "host": host,
        "x-acs-action": action,
        "x-acs-version": "2016-01-20",
        "x-acs-date": iso(when),
        "x-acs-signature-nonce": nonce or uuid.uuid4().hex,
        "x-acs-content-sha256": EMPTY_SHA256,
        "accept": "application/json",
        "content-type": "application/x-www-form-urlencoded",
    }
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            "POST",
            "/",
            "&".join(f"{pct(k)}={pct(v)}" for k, v in sorted(params.items())),
            "".join(f"{h}:{headers[h]}\n" for h in sorted(headers)),
            signed,
            EMPTY_SHA256,
        ]
    )
    to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
    if signature is None:
        signature = hmac.new(kms.access_key_secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"ACS3-HMAC-SHA256 Credential={kms.access_key_id},SignedHeaders={signed},Signature={signature}"
    )
    lines = [f"POST /?{urlencode(params)} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode("latin-1")


def v1_request(
    kms: LocalKms,
    action: str,
    params: dict | None = None,
    *,
    when: float,
    nonce: str | None = None,
    signature: str | None = None,
) -> bytes:
    """A complete RPC HMAC-SHA1 request with every parameter in the query (legacy SDK)."""
    query = dict(
        params or {},
        Action=action,
        Version="2016-01-20",
        Format="JSON",
        AccessKeyId=kms.access_key_id,
        SignatureMethod="HMAC-SHA1",
        SignatureVersion="1.0",
        SignatureNonce=nonce or uuid.uuid4().hex,
        Timestamp=iso(when),
    )
    canonical = "&".join(f"{pct(k)}={pct(v)}" for k, v in sorted(query.items()))
    to_sign = f"POST&{pct('/')}&{pct(canonical)}"
    if signature is None:
        signature = base64.b64encode(
            hmac.new((kms.access_key_secret + "&").encode(), to_sign.encode(), hashlib.sha1).digest()
        ).decode()
    query["Signature"] = signature
    return (f"POST /?{urlencode(query)} HTTP/1.1\r\nHost: {kms.hosts[R]}\r\nContent-Length: 0\r\n\r\n").encode()


SIGNERS = {"v3": v3_request, "v1": v1_request}


def connect(kms: LocalKms, timeout: float = 5.0) -> socket.socket:
    host, port = kms.hosts[R].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    body = resp.read()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    assert headers.get("content-type") == "application/json;charset=utf-8", (resp.status, body[:200])
    return resp.status, headers, json.loads(body)


def exchange(kms: LocalKms, raw: bytes) -> tuple[int, dict[str, str], dict]:
    with connect(kms) as sock:
        sock.sendall(raw)
        return read_response(sock)


def closed_by_server(sock: socket.socket, within: float, dribble: bytes = b"") -> float | None:
    """Seconds until the server closed ``sock`` (None if it did not within ``within``),
    sending one byte of ``dribble`` every 0.1 s meanwhile."""
    began = time.monotonic()
    for i in range(int(within / 0.1) + 1):
        if i < len(dribble):
            try:
                sock.send(dribble[i : i + 1])
            except OSError:
                return time.monotonic() - began
        readable, _, _ = select.select([sock], [], [], 0.1)
        if readable:
            try:
                if sock.recv(65536) == b"":
                    return time.monotonic() - began
            except OSError:
                return time.monotonic() - began
    return None


def official_client(kms: LocalKms) -> Client:
    return Client(
        Config(
            access_key_id=kms.access_key_id,
            access_key_secret=kms.access_key_secret,
            endpoint=kms.hosts[R],
            protocol="http",
            region_id=R,
            read_timeout=5000,
            connect_timeout=2000,
        )
    )


@pytest.fixture(scope="module")
def kms():
    with LocalKms(regions=[R]) as server:
        yield server


# -- replay protection -------------------------------------------------------------------


@pytest.mark.parametrize("signer", ["v3", "v1"])
def test_replay_refused_for_the_whole_validity_of_a_future_timestamp(signer):
    clock = Clock()
    with LocalKms(regions=[R], clock=clock) as kms:
        sent_at = clock()
        # Signed 14 minutes ahead: the timestamp stays acceptable until sent_at + 29 min.
        request = SIGNERS[signer](kms, "DescribeRegions", when=sent_at + 14 * 60)
        assert exchange(kms, request)[0] == 200
        for minutes in (1, 16, 28):  # 16: past the old receipt-based 15 minutes
            clock.offset = minutes * 60
            status, _, body = exchange(kms, request)
            assert (status, body["Code"]) == (400, "SignatureNonceUsed"), minutes
        clock.offset = 29 * 60 + 31  # now the timestamp itself is refused
        status, _, body = exchange(kms, request)
        assert (status, body["Code"]) == (400, "InvalidTimeStamp.Expired")
        # A fresh request is served throughout.
        assert exchange(kms, SIGNERS[signer](kms, "DescribeRegions", when=clock()))[0] == 200


def test_full_nonce_memory_refuses_new_requests_instead_of_forgetting():
    clock = Clock()
    with LocalKms(regions=[R], clock=clock, max_nonces=3) as kms:
        first = v3_request(kms, "DescribeRegions", when=clock())
        assert exchange(kms, first)[0] == 200
        for _ in range(2):
            assert exchange(kms, v3_request(kms, "DescribeRegions", when=clock()))[0] == 200
        # Full: a new request is throttled (clients retry it later) ...
        status, _, body = exchange(kms, v3_request(kms, "DescribeRegions", when=clock()))
        assert (status, body["Code"]) == (429, "Rejected.Throttling")
        # ... and the oldest nonce is still remembered, not evicted to make room.
        status, _, body = exchange(kms, first)
        assert (status, body["Code"]) == (400, "SignatureNonceUsed")
        assert kms.stats()[R] == {"DescribeRegions": 3}
        # Once their timestamps expire the nonces are forgotten and requests flow again.
        clock.offset = 15 * 60 + 2
        assert exchange(kms, v3_request(kms, "DescribeRegions", when=clock()))[0] == 200


# -- what an unauthenticated client can make the server read --------------------------------


def test_oversized_body_is_refused_from_the_headers_without_reading_it(kms):
    with connect(kms) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 67108864\r\n\r\n"
        )
        # Answered although not one byte of the 64 MiB body was sent.
        status, headers, body = read_response(sock)
        assert (status, body["Code"]) == (413, "RequestEntityTooLarge")
        assert headers.get("connection") == "close"
        # And the server does not read the body afterwards: it has closed the connection.
        sent, chunk = 0, b"x" * (1 << 20)
        with pytest.raises((BrokenPipeError, ConnectionResetError)):  # not a timeout
            while sent < 64 << 20:
                sent += sock.send(chunk)
        assert sent < 64 << 20
    assert exchange(kms, v3_request(kms, "DescribeRegions", when=time.time()))[0] == 200


def test_expect_100_continue_is_refused_before_the_body(kms):
    with connect(kms) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10000000\r\n\r\n")
        status, _, body = read_response(sock)  # no "100 Continue" first
        assert (status, body["Code"]) == (413, "RequestEntityTooLarge")


def _cli_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    package_root = str(Path(kmsenv.localkms.__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc/<pid>/status (Linux)")
def test_server_memory_stays_flat_under_a_64_mib_unauthenticated_post(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "kmsenv.localkms", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_cli_env(),
    )
    try:
        endpoint = None
        for line in proc.stdout:
            if line.startswith("export KMSENV_KMS_ENDPOINTS="):
                endpoint = line.strip().split("=", 2)[2]
            if line.startswith("Press Ctrl+C"):
                break
        assert endpoint, proc.stderr.read()
        host, port = endpoint.split("://", 1)[1].rsplit(":", 1)
        before = _peak_rss_kib(proc.pid)
        body = b"a=" + b"x" * ((64 << 20) - 2)
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.settimeout(30)

            def send() -> None:
                try:
                    sock.sendall(
                        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
                        b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                    )
                except OSError:
                    pass  # the server stopped reading: expected

            sender = threading.Thread(target=send)
            sender.start()
            status, _, answer = read_response(sock)
            sender.join(30)
        grown_mib = (_peak_rss_kib(proc.pid) - before) / 1024
        assert grown_mib < 16, f"server peak RSS grew {grown_mib:.0f} MiB"
        assert (status, answer["Code"]) == (413, "RequestEntityTooLarge")
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.parametrize("value", ["-5", "+5", "1_0", "0x10", "5, 6", "99999999999999999999999"])
def test_unusable_content_length_is_refused_and_the_connection_closed(kms, value):
    with connect(kms) as sock:
        sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n".encode())
        status, headers, body = read_response(sock)
        assert (status, body["Code"]) == (400, "InvalidParameter")
        assert headers.get("connection") == "close"


def test_conflicting_content_lengths_and_chunked_bodies_are_refused(kms):
    status, _, body = exchange(kms, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n")
    assert (status, body["Code"]) == (400, "InvalidParameter")
    status, _, body = exchange(kms, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert (status, body["Code"]) == (411, "MissingContentLength")


@pytest.mark.parametrize("case", ["request line", "headers", "parameters", "method", "syntax"])
def test_protocol_level_refusals_are_kms_json_errors(kms, case):
    """Limits on what is parsed before authentication, answered as KMS errors (JSON with a
    Code, as the clients expect) rather than the stdlib's HTML pages."""
    if case == "request line":  # over 256 KiB
        raw, expected = f"POST /?a={'x' * (257 * 1024)} HTTP/1.1\r\nHost: x\r\n\r\n", (414, "RequestURITooLong")
    elif case == "headers":  # 80 KiB in all, though each line is small
        raw = "POST / HTTP/1.1\r\nHost: x\r\n" + "".join(f"x-pad-{i}: {'y' * 4000}\r\n" for i in range(20)) + "\r\n"
        expected = (431, "RequestHeaderFieldsTooLarge")
    elif case == "parameters":
        raw, expected = (
            f"POST /?{'&'.join(f'p{i}=' for i in range(600))} HTTP/1.1\r\nHost: x\r\n\r\n",
            (400, "InvalidParameter"),
        )
    elif case == "method":
        raw, expected = "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", (501, "UnsupportedHTTPMethod")
    else:
        raw, expected = "GARBAGE\r\n\r\n", (400, "InvalidParameter")
    status, _, body = exchange(kms, raw.encode())
    assert (status, body["Code"]) == expected
    assert set(body) >= {"RequestId", "HostId", "Code", "Message"}


def test_largest_legitimate_parameter_fits(kms):
    """CreateKey's Description may hold 8192 characters; as 4-byte UTF-8 the official client's
    request line is ~98 KiB (the stdlib alone stops at 64 KiB)."""
    client = official_client(kms)
    description = "\U0001f511" * 8192
    key_id = client.create_key(M.CreateKeyRequest(description=description)).body.key_metadata.key_id
    described = client.describe_key(M.DescribeKeyRequest(key_id=key_id)).body.key_metadata
    assert described.description == description


# -- undecodable signatures --------------------------------------------------------------------


@pytest.mark.parametrize("signer,signature", [("v3", "\u00e9" * 64), ("v1", "\u00e9\u00e8=="), ("v1", "%FF%FE")])
def test_non_ascii_signature_is_a_400_not_a_500(kms, caplog, signer, signature):
    caplog.set_level(logging.DEBUG, logger="kmsenv.localkms")
    raw = SIGNERS[signer](kms, "DescribeRegions", when=time.time(), signature=signature)
    if signature.startswith("%"):  # undecodable bytes in the query
        raw = raw.replace(quote(signature, safe="").encode(), signature.encode())
    status, _, body = exchange(kms, raw)
    assert (status, body["Code"]) == (400, "SignatureDoesNotMatch")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# -- connections ---------------------------------------------------------------------------------


def test_silent_connection_is_closed_after_the_read_timeout():
    with LocalKms(regions=[R], read_timeout=0.5) as kms, connect(kms) as sock:
        took = closed_by_server(sock, within=10)
        assert took is not None and 0.3 < took < 5, took


def test_dribbling_client_is_cut_off_although_it_keeps_sending():
    with LocalKms(regions=[R], read_timeout=0.5) as kms, connect(kms) as sock:
        # A byte every 0.1 s: each recv would be well inside any per-recv timeout.
        dribble = b"POST /?" + b"a" * 200
        took = closed_by_server(sock, within=10, dribble=dribble)
        assert took is not None and took < 5, took


def _served(kms: LocalKms, within: float = 5.0) -> bool:
    """True once the official client gets an answer (connection slots may take a moment)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return bool(official_client(kms).describe_regions().body.regions.region)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _mid_request(kms: LocalKms) -> socket.socket:
    """A connection that has started a request and stalls (a slowloris)."""
    sock = connect(kms)
    sock.sendall(b"POST /?Action=")
    return sock


def test_connections_over_the_bound_get_503_and_the_server_recovers_when_they_leave():
    with LocalKms(regions=[R], max_connections=2, read_timeout=30) as kms:
        hogs = [_mid_request(kms) for _ in range(2)]
        time.sleep(0.5)  # let the server accept both
        with connect(kms) as extra:
            status, headers, body = read_response(extra)  # answered without a request
        assert (status, body["Code"]) == (503, "ServiceUnavailableTemporary")
        assert headers.get("connection") == "close"
        for hog in hogs:
            hog.close()
        assert _served(kms)


def test_idle_connections_make_room_for_new_ones():
    """Pooled keep-alive (or silent) connections hold nothing: at the bound the one idle
    longest is closed for a newcomer instead of the newcomer being refused."""
    with LocalKms(regions=[R], max_connections=2, read_timeout=30) as kms:
        hogs = [connect(kms)]
        # Let the server take the first in before the second arrives: which one has been
        # idle longest is decided by the server's accept order, not by the connect calls.
        time.sleep(0.3)
        hogs.append(connect(kms))
        try:
            time.sleep(0.5)
            assert _served(kms, within=0)  # first try, no 503
            assert closed_by_server(hogs[0], within=1) is not None
        finally:
            for hog in hogs:
                hog.close()


def test_stalled_requests_free_their_slots_after_the_read_timeout():
    with LocalKms(regions=[R], max_connections=2, read_timeout=0.5) as kms:
        hogs = [_mid_request(kms) for _ in range(2)]
        try:
            time.sleep(1.5)
            assert _served(kms, within=0)
            assert all(closed_by_server(h, within=1) is not None for h in hogs)
        finally:
            for hog in hogs:
                hog.close()


# -- state directory -------------------------------------------------------------------------------


def _plant(state: Path, mode: int) -> None:
    """A state directory as another user could prepare it: their access key inside."""
    state.mkdir()
    db = sqlite3.connect(state / "localkms.sqlite3")
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute(
        "INSERT INTO meta VALUES ('access_key', ?)",
        (json.dumps({"id": "LTAIplantedByAnotherUser", "secret": "known-to-them"}),),
    )
    db.commit()
    db.close()
    os.chmod(state, mode)


def test_state_dir_and_database_are_created_private_whatever_the_umask(tmp_path):
    state = tmp_path / "parent" / "state"
    old = os.umask(0)
    try:
        with LocalKms(regions=[R], state_dir=str(state)) as kms:
            official_client(kms).create_key(M.CreateKeyRequest())  # writes: WAL files exist
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [state, *state.iterdir()]}
    finally:
        os.umask(old)
    assert modes.pop("state") == 0o700
    assert modes and all(mode == 0o600 for mode in modes.values()), modes


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_state_dir_writable_by_others_is_refused(tmp_path, mode):
    state = tmp_path / "state"
    _plant(state, 0o755)
    with LocalKms(regions=[R], state_dir=str(state)) as kms:  # control: ours, not writable
        assert kms.access_key_id == "LTAIplantedByAnotherUser"
    os.chmod(state, mode)
    with pytest.raises(ConfigurationError) as e:
        LocalKms(regions=[R], state_dir=str(state))
    assert str(state) in str(e.value) and f"chmod 700 {state}" in str(e.value)
    assert "known-to-them" not in str(e.value)


def test_database_writable_by_others_is_refused(tmp_path):
    state = tmp_path / "state"
    _plant(state, 0o700)
    os.chmod(state / "localkms.sqlite3", 0o666)
    with pytest.raises(ConfigurationError) as e:
        LocalKms(regions=[R], state_dir=str(state))
    assert f"chmod 600 {state / 'localkms.sqlite3'}" in str(e.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
@pytest.mark.parametrize("owned", ["dir", "database"])
def test_state_owned_by_another_user_is_refused(tmp_path, owned):
    state = tmp_path / "state"
    _plant(state, 0o700)
    nobody = 65534
    os.chown(state if owned == "dir" else state / "localkms.sqlite3", nobody, nobody)
    with pytest.raises(ConfigurationError) as e:
        LocalKms(regions=[R], state_dir=str(state))
    assert "another user" in str(e.value) and f"uid {nobody}" in str(e.value)


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "kmsenv.localkms", "serve"],
        ["-m", "kmsenv", "kms", "serve"],
        ["-m", "kmsenv.localkms", "create-key", "--region", R],
    ],
)
def test_cli_refuses_an_unsafe_state_dir_with_one_clear_line(tmp_path, command):
    state = tmp_path / "state"
    _plant(state, 0o777)
    try:
        done = subprocess.run(
            [sys.executable, *command, "--state", str(state)],
            capture_output=True,
            text=True,
            env=_cli_env(),
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("served from a world-writable state directory")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "LTAIplanted" not in done.stdout
    assert str(state) in done.stderr and "chmod 700" in done.stderr
