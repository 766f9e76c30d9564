"""LocalKms from the shell: ``kmsenv kms fault`` against a running ``kmsenv kms serve``
(the authenticated ``KmsenvSetFault`` call on the server's own ports), and the request
log of ``kmsenv kms serve --log``.

Everything is real: the server is a ``kmsenv kms serve`` subprocess (or an in-process
LocalKms where only the control call is under test), the faults are set by running the
``kmsenv`` command, and their effect is observed through kmsenv's KMS client.  Unsigned
and wrongly signed control calls are built by hand on raw connections.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Optional
from urllib.parse import quote

import pytest

import kmsenv.localkms
from kmsenv.exceptions import KmsError
from kmsenv.kms import Kms
from kmsenv.localkms import LocalKms, admin
from kmsenv.localkms.admin import sign_v3

# Reaches no crypto backend, or only through code the backend tests cover: the pure-backend CI pass leaves it out.
pytestmark = pytest.mark.backend_independent

HZ, BJ = "cn-hangzhou", "cn-beijing"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")
CREDENTIAL_VARS = (
    "ALIBABA_CLOUD_ACCESS_KEY_ID",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
    "ALIBABA_CLOUD_SECURITY_TOKEN",
    "KMSENV_KMS_ENDPOINTS",
)
LOG_LINE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (?P<region>[a-z0-9-]+) "
    r"(?P<action>[A-Za-z0-9]+|-|\?) (?P<status>\d{3}) \d+\.\dms "
    r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}"
)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in PROXY_VARS:  # the SDK would hand loopback calls to a proxy
        monkeypatch.delenv(var, raising=False)


def _env(**extra: str) -> dict[str, str]:
    """The environment of a ``kmsenv`` subprocess: this checkout's package, no proxy,
    no credentials or endpoints but those given."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS + CREDENTIAL_VARS}
    package_root = str(Path(kmsenv.localkms.__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def kmsenv_cmd(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``kmsenv ARGS`` (the console script's module) as the shell would."""
    return subprocess.run(
        [sys.executable, "-m", "kmsenv", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


class Served:
    """A ``kmsenv kms serve`` subprocess, read up to its "Press Ctrl+C" line; ``env`` is
    the environment its printed ``export`` lines give a shell."""

    STOP_TIMEOUT = 60  # generous: CI runs this beside a wheel build on 2 shared vCPUs

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kmsenv", "kms", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # faulthandler: a server that does not stop is sent SIGABRT, and every
            # thread's stack lands on its stderr for the failure report
            env=_env(PYTHONFAULTHANDLER="1"),
        )
        self.lines: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()
        self.head: list[str] = []
        deadline = time.monotonic() + 30
        while not self.head or self.head[-1] != "Press Ctrl+C to stop.":
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "".join(self.stderr)
            self.head.append(line)
        exports = dict(line[len("export ") :].split("=", 1) for line in self.head if line.startswith("export "))
        self.env = _env(**exports)
        self.endpoints = dict(item.split("=", 1) for item in exports["KMSENV_KMS_ENDPOINTS"].split(","))
        self.key_id = exports["ALIBABA_CLOUD_ACCESS_KEY_ID"]
        self.secret = exports["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]

    @staticmethod
    def _pump(stream, put) -> None:
        for line in stream:
            put(line.rstrip("\n"))
        put(None)

    def kms(self, **overrides) -> Kms:
        """kmsenv's client on this server: one attempt, short timeouts."""
        options = dict(
            access_key_id=self.key_id,
            access_key_secret=self.secret,
            endpoints=self.endpoints,
            max_attempts=1,
            connect_timeout=2.0,
            read_timeout=5.0,
        )
        options.update(overrides)
        return Kms(**options)

    def port(self, region: str) -> int:
        return int(self.endpoints[region].rsplit(":", 1)[1])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=self.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            time.sleep(0.2)  # let the pump threads drain the pipes
            after = []
            while True:
                try:
                    after.append(self.lines.get_nowait())
                except queue.Empty:
                    break
            raise AssertionError(
                f"kmsenv kms serve did not stop within {self.STOP_TIMEOUT} s of SIGINT; "
                f"stdout after the banner: {after!r}; stderr:\n"
                + "\n".join(line for line in self.stderr if line is not None)[-6000:]
            ) from None


def fault(served_env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return kmsenv_cmd("kms", "fault", *args, env=served_env)


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def accepts_connections(port: int) -> bool:
    """True once connecting works; False while refused or while the listener is being
    closed (a connection still in its backlog is reset)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except (ConnectionRefusedError, ConnectionResetError):
        return False
    return True


def is_closed(port: int) -> bool:
    try:
        return refuses_connections(port)
    except ConnectionResetError:  # closing right now: try again
        return False


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("admin") / "kms-state"


@pytest.fixture(scope="module")
def served(state_dir):
    """Two regions with persistent state and a request log, a CMK in each made with
    ``kmsenv kms create-key`` (before the server starts, and while it runs)."""
    made = kmsenv_cmd("kms", "create-key", "--region", HZ, "--state", str(state_dir), env=_env())
    assert made.returncode == 0, made.stderr
    server = Served(
        "--region", HZ, "--region", BJ, "--state", str(state_dir), "--log", str(state_dir.parent / "requests.log")
    )
    made_live = kmsenv_cmd("kms", "create-key", "--region", BJ, "--state", str(state_dir), env=_env())
    assert made_live.returncode == 0, made_live.stderr
    server.arns = {HZ: made.stdout.strip(), BJ: made_live.stdout.strip()}
    server.log_path = state_dir.parent / "requests.log"
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def healthy(served):
    """Both regions without faults before and after the test."""

    def clear() -> None:  # the same signed call as `kmsenv kms fault R --clear`, in-process
        for region in (HZ, BJ):
            admin.call(
                list(served.endpoints.values()), {"Region": region, "Clear": "true"}, served.key_id, served.secret
            )

    clear()
    yield served
    clear()


# -- faults from the shell, observed by a KMS client -----------------------------------


def test_down_then_up_from_the_shell(healthy):
    served = healthy
    kms = served.kms()
    key, blob = kms.generate_data_key(served.arns[HZ])
    assert served.arns[HZ].startswith(f"acs:kms:{HZ}:")

    down = fault(served.env, HZ, "--down")
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == f"{HZ}: down"
    assert refuses_connections(served.port(HZ))
    with pytest.raises(KmsError) as refused:
        kms.decrypt(served.arns[HZ], blob)
    assert refused.value.code == "ConnectionError" and refused.value.region == HZ
    assert kms.generate_data_key(served.arns[BJ])  # the other region is unaffected

    # Its own port is closed: --up reaches the region through the other region's port.
    up = fault(served.env, HZ, "--up")
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == f"{HZ}: up"
    assert kms.decrypt(served.arns[HZ], blob) == key  # same port as before


def test_latency_and_errors_from_the_shell(healthy):
    served = healthy
    kms = served.kms()
    arn = served.arns[BJ]
    started = time.monotonic()
    kms.generate_data_key(arn)
    fast = time.monotonic() - started

    slow = fault(served.env, BJ, "--latency-ms", "600")
    assert slow.returncode == 0, slow.stderr
    assert slow.stdout.strip() == f"{BJ}: up, latency 600 ms"
    started = time.monotonic()
    kms.generate_data_key(arn)
    assert time.monotonic() - started >= 0.6 > fast

    # Settings not named stay: the latency survives adding an error rate.
    failing = fault(served.env, BJ, "--error-rate", "1", "--error-code", "InternalFailure")
    assert failing.stdout.strip() == f"{BJ}: up, latency 600 ms, error rate 1 (InternalFailure)"
    with pytest.raises(KmsError) as failed:
        kms.generate_data_key(arn)
    assert failed.value.code == "InternalFailure"

    # The control call itself is exempt from the region's faults: --clear is prompt.
    started = time.monotonic()
    cleared = fault(served.env, BJ, "--clear", "--endpoint", served.endpoints[BJ])
    assert cleared.returncode == 0, cleared.stderr
    assert cleared.stdout.strip() == f"{BJ}: up"
    started = time.monotonic()
    kms.generate_data_key(arn)
    assert time.monotonic() - started < 0.6


def test_throttling_from_the_shell(healthy):
    served = healthy
    assert fault(served.env, HZ, "--throttle-rate", "1").returncode == 0
    with pytest.raises(KmsError) as throttled:
        served.kms().generate_data_key(served.arns[HZ])
    assert throttled.value.code == "Rejected.Throttling"


def test_fault_reads_the_server_from_its_state_dir(healthy, state_dir):
    served = healthy
    no_credentials = _env()  # neither endpoints nor credentials in the environment
    missing = fault(no_credentials, HZ, "--down")
    assert missing.returncode == 2
    assert "ALIBABA_CLOUD_ACCESS_KEY_ID" in missing.stderr
    done = fault(no_credentials, HZ, "--down", "--state", str(state_dir))
    assert done.returncode == 0, done.stderr
    assert refuses_connections(served.port(HZ))
    assert fault(no_credentials, HZ, "--up", "--state", str(state_dir)).returncode == 0
    assert not refuses_connections(served.port(HZ))


def test_taking_a_region_down_through_its_own_port(healthy):
    served = healthy
    down = fault(served.env, BJ, "--down", "--endpoint", served.endpoints[BJ])
    assert down.returncode == 0, down.stderr  # answered before the port closed
    assert down.stdout.strip() == f"{BJ}: down"
    assert wait_until(lambda: is_closed(served.port(BJ)))
    assert fault(served.env, BJ, "--up").returncode == 0
    served.kms().generate_data_key(served.arns[BJ])


def test_bad_values_are_refused_and_change_nothing(healthy):
    served = healthy
    for args in (
        ["--throttle-rate", "1.5"],
        ["--error-rate", "-0.1"],
        ["--latency-ms", "-1"],
        ["--down", "--for", "0"],
    ):
        result = fault(served.env, HZ, *args)
        assert result.returncode == 1, args
        assert "InvalidParameter" in result.stderr
    unknown = fault(served.env, "cn-nowhere", "--down")
    assert unknown.returncode == 1 and "Kmsenv.RegionNotServed" in unknown.stderr
    nothing = fault(served.env, HZ)
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr
    served.kms().generate_data_key(served.arns[HZ])


# -- the last listening port -------------------------------------------------------------


@pytest.fixture
def single():
    with LocalKms(regions=[HZ]) as server:
        server.arn = server.create_key(HZ)
        server.env = _env(
            KMSENV_KMS_ENDPOINTS=f"{HZ}={server.endpoints[HZ]}",
            ALIBABA_CLOUD_ACCESS_KEY_ID=server.access_key_id,
            ALIBABA_CLOUD_ACCESS_KEY_SECRET=server.access_key_secret,
        )
        yield server


def test_last_listening_region_down_only_for_a_while(single):
    port = int(single.endpoints[HZ].rsplit(":", 1)[1])
    refused = fault(single.env, HZ, "--down")
    assert refused.returncode == 1
    assert "Kmsenv.LastRegionUp" in refused.stderr and "--for" in refused.stderr
    assert not refuses_connections(port)

    timed = fault(single.env, HZ, "--down", "--for", "3")
    answered = time.monotonic()
    assert timed.returncode == 0, timed.stderr
    assert timed.stdout.strip() == f"{HZ}: down for 3 s"
    assert wait_until(lambda: is_closed(port), timeout=2)  # closed once answered, on this port
    assert wait_until(lambda: accepts_connections(port), timeout=10)
    assert time.monotonic() - answered > 2
    kms = Kms(
        access_key_id=single.access_key_id,
        access_key_secret=single.access_key_secret,
        endpoints=single.endpoints,
        max_attempts=1,
    )
    kms.generate_data_key(single.arn)


def test_a_later_change_outlives_a_timed_fault():
    with LocalKms(regions=[HZ, BJ]) as server:
        server.set_fault(HZ, latency_ms=50, duration=0.3)
        server.set_fault(HZ, error_rate=1.0)  # replaces the timed fault, and its timer
        time.sleep(0.6)
        assert server._servers[HZ].faults.error_rate == 1.0
        server.set_fault(BJ, down=True, duration=0.2)
        assert wait_until(lambda: server._servers[BJ].listening, timeout=5)
        assert server._servers[BJ].faults.down is False


# -- only the server's credentials change faults ----------------------------------------


@pytest.fixture
def pair():
    with LocalKms(regions=[HZ, BJ]) as server:
        yield server


def _post(server: LocalKms, target: str, headers: dict[str, str]) -> tuple[int, dict]:
    host, port = server.hosts[BJ].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", target, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _signed(
    server: LocalKms, params: dict[str, str], secret: Optional[str] = None, key_id: Optional[str] = None
) -> tuple[str, dict[str, str]]:
    return sign_v3(
        server.hosts[BJ], "KmsenvSetFault", params, key_id or server.access_key_id, secret or server.access_key_secret
    )


def _v1_query(server: LocalKms, params: dict[str, str], secret: str) -> str:
    """An RPC HMAC-SHA1 (V1) signed query, computed here independently of the server."""
    full = dict(
        params,
        Action="KmsenvSetFault",
        Version="2016-01-20",
        Format="JSON",
        AccessKeyId=server.access_key_id,
        SignatureMethod="HMAC-SHA1",
        SignatureVersion="1.0",
        SignatureNonce=uuid.uuid4().hex,
        Timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    canonical = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(full.items()))
    to_sign = f"POST&%2F&{quote(canonical, safe='')}"
    full["Signature"] = base64.b64encode(
        hmac.new((secret + "&").encode(), to_sign.encode(), hashlib.sha1).digest()
    ).decode()
    return "/?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in full.items())


DOWN_HZ = {"Region": HZ, "Down": "true"}


def test_unsigned_and_wrongly_signed_admin_calls_are_refused(pair):
    hz_port = int(pair.endpoints[HZ].rsplit(":", 1)[1])
    unsigned_target = "/?Region=cn-hangzhou&Down=true"
    unsigned = {"host": pair.hosts[BJ], "x-acs-action": "KmsenvSetFault", "x-acs-version": "2016-01-20"}
    assert _post(pair, unsigned_target, unsigned)[1]["Code"] == "IncompleteSignature"
    v1_unsigned = "/?Action=KmsenvSetFault&Version=2016-01-20&Region=cn-hangzhou&Down=true"
    assert _post(pair, v1_unsigned, {"host": pair.hosts[BJ]})[1]["Code"] == "IncompleteSignature"

    status, body = _post(pair, *_signed(pair, DOWN_HZ, secret="not-the-secret"))
    assert (status, body["Code"]) == (400, "SignatureDoesNotMatch")
    status, body = _post(pair, *_signed(pair, DOWN_HZ, key_id="LTAIsomeoneelse0000000000"))
    assert (status, body["Code"]) == (404, "InvalidAccessKeyId.NotFound")
    status, body = _post(pair, _v1_query(pair, DOWN_HZ, "not-the-secret"), {"host": pair.hosts[BJ]})
    assert (status, body["Code"]) == (400, "SignatureDoesNotMatch")

    # A signed call whose parameters were changed on the way no longer verifies.
    target, headers = _signed(pair, {"Region": HZ, "LatencyMs": "10"})
    tampered = target.replace("LatencyMs=10", "Down=true")
    assert _post(pair, tampered, headers)[1]["Code"] == "SignatureDoesNotMatch"

    assert pair._servers[HZ].faults == kmsenv.localkms.Faults()
    assert not refuses_connections(hz_port)

    # The same call signed with the server's key works, once: a replay is refused.
    target, headers = _signed(pair, DOWN_HZ)
    status, body = _post(pair, target, headers)
    assert (status, body["Faults"]["Down"]) == (200, True)
    assert refuses_connections(hz_port)
    assert _post(pair, target, headers)[1]["Code"] == "SignatureNonceUsed"
    status, body = _post(
        pair, _v1_query(pair, {"Region": HZ, "Down": "false"}, pair.access_key_secret), {"host": pair.hosts[BJ]}
    )
    assert (status, body["Listening"]) == (200, True)
    assert not refuses_connections(hz_port)
    assert pair.stats() == {HZ: {}, BJ: {}}  # control calls are not KMS traffic


def test_cli_with_the_wrong_secret_changes_nothing(pair):
    env = _env(
        KMSENV_KMS_ENDPOINTS=",".join(f"{r}={u}" for r, u in pair.endpoints.items()),
        ALIBABA_CLOUD_ACCESS_KEY_ID=pair.access_key_id,
        ALIBABA_CLOUD_ACCESS_KEY_SECRET="wrong" + pair.access_key_secret[5:],
    )
    result = fault(env, HZ, "--down")
    assert result.returncode == 1
    assert "SignatureDoesNotMatch" in result.stderr and "wrong access key secret" in result.stderr
    assert not refuses_connections(int(pair.endpoints[HZ].rsplit(":", 1)[1]))
    assert pair._servers[HZ].faults.down is False


# -- the request log ---------------------------------------------------------------------


def test_request_log_has_one_line_per_request_and_no_secrets(healthy):
    served = healthy
    kms = served.kms()
    key, blob = kms.generate_data_key(served.arns[HZ])
    wrapped = kms.encrypt(served.arns[BJ], bytes(key))
    assert kms.decrypt(served.arns[BJ], wrapped) == key
    assert fault(served.env, BJ, "--latency-ms", "5").returncode == 0
    target, headers = sign_v3(
        f"127.0.0.1:{served.port(HZ)}", "GenerateDataKey", {"KeyId": served.arns[HZ]}, served.key_id, "not-the-secret"
    )
    conn = http.client.HTTPConnection("127.0.0.1", served.port(HZ), timeout=10)
    conn.request("POST", target, headers=headers)
    assert conn.getresponse().status == 400
    conn.close()

    expected = {
        (HZ, "GenerateDataKey", "200"),
        (BJ, "Encrypt", "200"),
        (BJ, "Decrypt", "200"),
        (HZ, "KmsenvSetFault", "200"),
        (HZ, "-", "400"),
    }  # HZ: the port BJ's fault used

    def logged() -> set[tuple[str, str, str]]:
        # A line is written right after its answer is sent: poll until the last is there.
        lines = served.log_path.read_text().splitlines()
        for line in lines:
            assert LOG_LINE.fullmatch(line), line
        return {LOG_LINE.fullmatch(line).group("region", "action", "status") for line in lines}

    assert wait_until(lambda: expected <= logged()), expected - logged()

    text = served.log_path.read_text()
    for secret in (
        served.secret,
        base64.b64encode(bytes(key)).decode(),
        base64.b64encode(blob).decode(),
        base64.b64encode(wrapped).decode(),
        headers["authorization"].rsplit("=", 1)[1],
    ):
        assert secret not in text
    assert served.key_id not in text and "KeyId" not in text and served.arns[HZ] not in text
    assert os.stat(served.log_path).st_mode & 0o077 == 0


def test_request_log_to_stderr():
    server = Served("--region", HZ, "--log", "-")
    try:
        kms = server.kms()
        with pytest.raises(KmsError):  # no such key: still a request, still a line
            kms.generate_data_key(f"acs:kms:{HZ}:1234567890123456:key/{uuid.uuid4()}")
        assert wait_until(lambda: any(" GenerateDataKey 404 " in line for line in server.stderr if line))
    finally:
        assert server.stop() == 0
    lines = [line for line in server.stderr if line]
    assert lines and all(LOG_LINE.fullmatch(line) for line in lines), lines
    assert "request log: stderr" in server.head
    assert server.secret not in "\n".join(lines)
