"""KMS 3.0 instance gateways from the shell (issue 16 follow-ups): ``kmsenv kms serve
--instance ID=REGION[:replica-of=PRIMARY]``, the ``instances.json`` it writes for
``KMSENV_KMS_INSTANCES``, ``kmsenv kms fault --instance ID``, and ``kmsenv demo
--instances``.

The server is a ``kmsenv kms serve`` subprocess; clients are the ``kmsenv`` command run
with the environment its printed ``export`` lines give a shell.  Which gateway answered
is read from the server's request log (one line per answered request, naming the
instance), never from kmsenv's own client; TLS trust is checked with the standard
library's ``ssl`` against the printed CA file.
"""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import ssl
import stat
import subprocess
import time
from pathlib import Path

import pytest
from test_localkms_admin import Served, _env, accepts_connections, is_closed, kmsenv_cmd, wait_until

from kmsenv.exceptions import KmsError
from kmsenv.kms import INSTANCES_ENV, Kms, parse_instances_file
from kmsenv.localkms import LocalKms, admin
from kmsenv.localkms.cli import main as localkms_main
from kmsenv.localkms.cli import parse_instance_option
from kmsenv.localkms.instance import InstanceSpec

# Reaches no crypto backend, or only through code the backend tests cover: the pure-backend CI pass leaves it out.
pytestmark = pytest.mark.backend_independent

HZ, SH = "cn-hangzhou", "cn-shanghai"
PRIMARY, REPLICA = "kst-hzz-cli", "kst-sha-cli"
# An answered instance request in the log: time, instance ID, API, status, latency, request ID.
INSTANCE_LOG_LINE = re.compile(r"^\S+Z (?P<who>kst-[a-z-]+) (?P<api>[A-Za-z]+) (?P<status>\d{3}) ", re.M)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("instance-cli") / "kms-state"


@pytest.fixture(scope="module")
def served(state_dir):
    """Two regions, a primary instance in cn-hangzhou and its replica in cn-shanghai, a
    CMK made with ``kmsenv kms create-key`` before the server starts."""
    made = kmsenv_cmd("kms", "create-key", "--region", HZ, "--state", str(state_dir), env=_env())
    assert made.returncode == 0, made.stderr
    log_path = state_dir.parent / "requests.log"
    server = Served(
        "--region",
        HZ,
        "--region",
        SH,
        "--state",
        str(state_dir),
        "--log",
        str(log_path),
        "--instance",
        f"{PRIMARY}={HZ}",
        "--instance",
        f"{REPLICA}={SH}:replica-of={PRIMARY}",
    )
    server.arn = made.stdout.strip()
    server.log_path = log_path
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def healthy(served):
    """Both instances without faults before and after the test (the same signed call as
    ``kmsenv kms fault --instance ID --clear``, in-process)."""

    def clear() -> None:
        for instance_id in (PRIMARY, REPLICA):
            admin.call(
                list(served.endpoints.values()),
                {"InstanceId": instance_id, "Clear": "true"},
                served.key_id,
                served.secret,
            )

    clear()
    yield served
    clear()


def instance_fault(served, *args: str) -> subprocess.CompletedProcess:
    return kmsenv_cmd("kms", "fault", *args, env=served.env)


def logged_since(served, offset: int) -> list[tuple[str, str, str]]:
    """``(instance, api, status)`` of the instance requests logged after ``offset``."""
    text = served.log_path.read_text()[offset:]
    return [(m["who"], m["api"], m["status"]) for m in INSTANCE_LOG_LINE.finditer(text)]


def log_offset(served) -> int:
    return len(served.log_path.read_text())


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


# -- kmsenv kms serve --instance ---------------------------------------------------------


def test_serve_prints_each_instance_and_writes_the_instances_file(served, state_dir):
    head = "\n".join(served.head)
    path = served.env[INSTANCES_ENV]
    assert Path(path) == state_dir / "instances.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    configured = parse_instances_file(path)  # the reader KMSENV_KMS_INSTANCES uses
    assert set(configured) == {HZ, SH}
    raw = json.loads(Path(path).read_text())
    for region, instance_id in ((HZ, PRIMARY), (SH, REPLICA)):
        entry = configured[region]
        # The banner's line for the instance names its region and the endpoint in the file.
        line = next(line for line in served.head if line.strip().startswith(instance_id + " "))
        assert region in line and f"https://{entry.endpoint}" in line
        for printed in (entry.client_key_file, entry.password_file, entry.ca_file):
            assert printed in head and os.path.isfile(printed)
        assert raw[region]["endpoint"] == entry.endpoint
        password = Path(entry.password_file).read_text().strip()
        assert password and password not in head  # the password file's path, never its content
    assert "replica of " + PRIMARY in head
    assert configured[HZ].client_key_file != configured[SH].client_key_file


def test_the_printed_ca_is_what_the_instances_present(served):
    configured = parse_instances_file(served.env[INSTANCES_ENV])
    for entry in configured.values():
        trusting = ssl.create_default_context(cafile=entry.ca_file)
        with socket.create_connection(("127.0.0.1", port_of(entry.endpoint)), timeout=5) as raw:
            with trusting.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
        # The system's roots do not vouch for it: the printed CA is needed.
        with socket.create_connection(("127.0.0.1", port_of(entry.endpoint)), timeout=5) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")


def test_kmsenv_command_round_trips_through_the_printed_instances(healthy, tmp_path):
    served = healthy
    src, enc, dec = tmp_path / "in.bin", tmp_path / "in.kmsenv", tmp_path / "out.bin"
    src.write_bytes(os.urandom(70_000))
    before = log_offset(served)
    done = kmsenv_cmd("encrypt", "-k", served.arn, "-i", str(src), "-o", str(enc), env=served.env)
    assert done.returncode == 0, done.stderr
    opened = kmsenv_cmd("decrypt", "-k", served.arn, "-i", str(enc), "-o", str(dec), env=served.env)
    assert opened.returncode == 0, opened.stderr
    assert dec.read_bytes() == src.read_bytes()
    inspected = kmsenv_cmd("inspect", str(enc), env=served.env)
    assert json.loads(inspected.stdout)["cmk_arns"] == [served.arn]
    calls = logged_since(served, before)
    # Every data-key call went to the primary instance, answered 200; none to the replica.
    assert {(who, status) for who, _, status in calls} == {(PRIMARY, "200")}
    assert {api for _, api, _ in calls} >= {"GenerateDataKey", "Decrypt"}


# -- kmsenv kms fault --instance -------------------------------------------------------


def test_primary_instance_down_and_the_replica_takes_over(healthy, tmp_path):
    served = healthy
    primary_port = port_of(parse_instances_file(served.env[INSTANCES_ENV])[HZ].endpoint)
    src, enc, dec = tmp_path / "in.bin", tmp_path / "in.kmsenv", tmp_path / "out.bin"
    src.write_bytes(os.urandom(5_000))
    assert kmsenv_cmd("encrypt", "-k", served.arn, "-i", str(src), "-o", str(enc), env=served.env).returncode == 0

    down = instance_fault(served, "--instance", PRIMARY, "--down")
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == f"{PRIMARY} ({HZ}): down"
    assert wait_until(lambda: is_closed(primary_port))
    assert accepts_connections(served.port(HZ))  # the region's shared port is not the instance's

    # Without the replica region the primary's outage is a KMS failure (exit 3), nothing written.
    alone = kmsenv_cmd("decrypt", "-k", served.arn, "-i", str(enc), "-o", str(dec), env=served.env)
    assert alone.returncode == 3, alone.stderr
    assert not dec.exists()

    before = log_offset(served)
    over = kmsenv_cmd(
        "decrypt", "-k", served.arn, "--replica-region", SH, "-i", str(enc), "-o", str(dec), env=served.env
    )
    assert over.returncode == 0, over.stderr
    assert dec.read_bytes() == src.read_bytes()
    assert logged_since(served, before) == [(REPLICA, "Decrypt", "200")]

    up = instance_fault(served, "--instance", PRIMARY, "--up")
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == f"{PRIMARY} ({HZ}): up"
    assert accepts_connections(primary_port)  # the same port as before
    dec.unlink()
    again = kmsenv_cmd("decrypt", "-k", served.arn, "-i", str(enc), "-o", str(dec), env=served.env)
    assert again.returncode == 0, again.stderr


def test_instance_latency_and_throttling_from_the_shell(healthy):
    served = healthy
    kms = Kms(
        access_key_id=served.key_id,
        access_key_secret=served.secret,
        endpoints=served.endpoints,
        instances=parse_instances_file(served.env[INSTANCES_ENV]),
        max_attempts=1,
    )
    key, blob = kms.generate_data_key(served.arn)
    started = time.monotonic()
    kms.decrypt(served.arn, blob)
    fast = time.monotonic() - started

    slow = instance_fault(served, "--instance", PRIMARY, "--latency-ms", "400")
    assert slow.returncode == 0, slow.stderr
    assert slow.stdout.strip() == f"{PRIMARY} ({HZ}): up, latency 400 ms"
    started = time.monotonic()
    assert kms.decrypt(served.arn, blob) == key
    assert time.monotonic() - started >= 0.4 > fast

    # Settings not named stay: the latency survives adding a throttle rate.
    throttled = instance_fault(served, "--instance", PRIMARY, "--throttle-rate", "1")
    assert throttled.stdout.strip() == f"{PRIMARY} ({HZ}): up, latency 400 ms, throttle rate 1"
    with pytest.raises(KmsError) as refused:
        kms.decrypt(served.arn, blob)
    assert refused.value.code == "Rejected.Throttling" and refused.value.region == HZ

    # The replica and the shared gateway of the same region are untouched.
    kms_shared = Kms(
        access_key_id=served.key_id, access_key_secret=served.secret, endpoints=served.endpoints, max_attempts=1
    )
    assert kms_shared.decrypt(served.arn, kms_shared.generate_data_key(served.arn)[1])

    cleared = instance_fault(served, "--instance", PRIMARY, "--clear")
    assert cleared.stdout.strip() == f"{PRIMARY} ({HZ}): up"
    assert kms.decrypt(served.arn, blob) == key


def test_fault_usage_errors_change_nothing(healthy):
    served = healthy
    unknown = instance_fault(served, "--instance", "kst-nowhere", "--down")
    assert unknown.returncode == 1
    assert "Kmsenv.InstanceNotServed" in unknown.stderr and PRIMARY in unknown.stderr
    both = instance_fault(served, HZ, "--instance", PRIMARY, "--down")
    assert both.returncode == 2 and "one of them" in both.stderr
    neither = instance_fault(served, "--down")
    assert neither.returncode == 2
    nothing = instance_fault(served, "--instance", PRIMARY)
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr
    bad = instance_fault(served, "--instance", PRIMARY, "--throttle-rate", "1.5")
    assert bad.returncode == 1 and "ThrottleRate" in bad.stderr
    primary_port = port_of(parse_instances_file(served.env[INSTANCES_ENV])[HZ].endpoint)
    assert accepts_connections(primary_port)


def test_instance_fault_through_the_state_dir(healthy, state_dir):
    served = healthy
    primary_port = port_of(parse_instances_file(served.env[INSTANCES_ENV])[HZ].endpoint)
    done = kmsenv_cmd("kms", "fault", "--instance", PRIMARY, "--down", "--state", str(state_dir), env=_env())
    assert done.returncode == 0, done.stderr
    assert wait_until(lambda: is_closed(primary_port))
    assert (
        kmsenv_cmd("kms", "fault", "--instance", PRIMARY, "--up", "--state", str(state_dir), env=_env()).returncode == 0
    )
    assert accepts_connections(primary_port)


# -- the control call in-process -----------------------------------------------------------


@pytest.fixture(scope="module")
def local():
    with LocalKms(regions=[HZ, SH], instances={PRIMARY: HZ, REPLICA: InstanceSpec(SH, replica_of=PRIMARY)}) as kms:
        yield kms


def _set(local, **params: str) -> dict:
    return admin.call(list(local.endpoints.values()), params, local.access_key_id, local.access_key_secret)


def test_control_call_changes_only_the_named_instance(local):
    answer = _set(local, InstanceId=REPLICA, LatencyMs="25", ErrorRate="0.5")
    assert answer["InstanceId"] == REPLICA and answer["Region"] == SH
    assert (local.instances[REPLICA].faults.latency_ms, local.instances[REPLICA].faults.error_rate) == (25.0, 0.5)
    assert local.instances[PRIMARY].faults.latency_ms == 0  # the primary, and the regions, keep theirs
    assert local._servers[SH].faults.latency_ms == 0
    _set(local, InstanceId=REPLICA, Down="true")
    assert not local.instances[REPLICA].listening
    assert local.instances[REPLICA].faults.latency_ms == 25.0  # not named: kept
    _set(local, InstanceId=REPLICA, Clear="true")
    assert local.instances[REPLICA].listening and local.instances[REPLICA].faults.latency_ms == 0


def test_timed_instance_fault_clears_itself(local):
    _set(local, InstanceId=PRIMARY, Down="true", DurationSeconds="0.3")
    assert not local.instances[PRIMARY].listening
    # "Not down" is set once the port is back (the gateway's order), so wait for that.
    assert wait_until(lambda: not local.instances[PRIMARY].faults.down, timeout=5)
    assert local.instances[PRIMARY].listening


def test_control_call_wants_a_region_or_an_instance(local):
    with pytest.raises(admin.AdminCallError) as both:
        _set(local, InstanceId=PRIMARY, Region=HZ, Down="true")
    assert both.value.code == "InvalidParameter"
    with pytest.raises(admin.AdminCallError) as neither:
        _set(local, Down="true")
    assert neither.value.code == "MissingParameter"
    assert local.instances[PRIMARY].listening


# -- serve's option checks (nothing starts) ----------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("kst-a=cn-hangzhou", ("kst-a", InstanceSpec(HZ))),
        ("kst-b=cn-shanghai:replica-of=kst-a", ("kst-b", InstanceSpec(SH, replica_of="kst-a"))),
    ],
)
def test_instance_option_forms(value, expected):
    assert parse_instance_option(value) == expected


@pytest.mark.parametrize(
    "args, message",
    [
        (["--instance", "kst-a"], "ID=REGION"),
        (["--instance", "=cn-hangzhou"], "ID=REGION"),
        (["--instance", "kst-a=cn-hangzhou:primary=kst-b"], "replica-of="),
        (["--instance", "kst-a=cn-hangzhou:replica-of="], "primary instance's ID"),
        (["--instance", "kst-a=cn-hangzhou", "--instance", "kst-a=cn-shanghai"], "twice"),
        (["--instance", "kst-b=cn-shanghai:replica-of=kst-x"], "replica_of must name"),
        (["--region", HZ, "--instance", "kst-a=cn-beijing"], "not served"),
        (["--instance", "kst_a=cn-hangzhou"], "invalid instance ID"),
    ],
)
def test_serve_refuses_bad_instance_options(args, message, capsys):
    assert localkms_main(["serve", *args]) == 2
    assert message in capsys.readouterr().err


def test_serve_without_state_writes_the_instances_file_beside_the_client_keys():
    server = Served("--instance", f"kst-solo={SH}")  # no --region: the instance's region is served
    try:
        path = server.env[INSTANCES_ENV]
        configured = parse_instances_file(path)
        assert list(configured) == [SH] and list(server.endpoints) == [SH]
        assert os.path.dirname(path) == os.path.dirname(configured[SH].client_key_file)
    finally:
        assert server.stop() == 0
    assert not os.path.exists(path)  # the private temporary directory went with the server


# -- kmsenv demo --instances -----------------------------------------------------------------


def _step(lines: list[str], number: int) -> list[str]:
    """The lines of step ``number`` of the instance demo (its own line and the indented ones)."""
    start = next(i for i, line in enumerate(lines) if line.startswith(f"[{number}/6]"))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("      ")), len(lines))
    return lines[start:end]


def _calls(step: list[str]) -> dict:
    (line,) = [line for line in step if "KMS calls per instance: " in line]
    return ast.literal_eval(line.split("KMS calls per instance: ", 1)[1])


def _edks_and_header(step: list[str]) -> tuple[int, int]:
    found = re.search(r"(\d+) encrypted data keys?, header (\d+) bytes", "\n".join(step))
    assert found, step
    return int(found[1]), int(found[2])


def test_demo_instances_shows_one_call_one_edk_and_the_replica_failover():
    from kmsenv.demo import OTHER, PRIMARY as DEMO_PRIMARY, REPLICA as DEMO_REPLICA

    done = kmsenv_cmd("demo", "--instances", env=_env(), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "demo finished: every step behaved as expected"
    idle: dict = {}
    # (a) one CMK + its replica region: one data-key call on the primary instance, one EDK.
    replicated = _step(lines, 3)
    assert _calls(replicated) == {DEMO_PRIMARY: {"GenerateDataKey": 1, "Encrypt": 1}, DEMO_REPLICA: idle, OTHER: idle}
    one_edk, one_header = _edks_and_header(replicated)
    # Two region CMKs: one more Encrypt on the second region's instance, two EDKs, a bigger header.
    per_region = _step(lines, 4)
    assert _calls(per_region) == {
        DEMO_PRIMARY: {"GenerateDataKey": 1, "Encrypt": 1},
        DEMO_REPLICA: idle,
        OTHER: {"Encrypt": 1},
    }
    two_edks, two_header = _edks_and_header(per_region)
    assert (one_edk, two_edks) == (1, 2) and one_header < two_header
    # (b) the primary down: one Decrypt, answered by the replica, and the plaintext matched.
    failover = _step(lines, 5)
    assert "plaintext matches" in failover[0]
    assert _calls(failover) == {DEMO_PRIMARY: idle, DEMO_REPLICA: {"Decrypt": 1}, OTHER: idle}
    # (c) nothing went to the shared gateways.
    assert _step(lines, 6)[0].endswith("counted none")
