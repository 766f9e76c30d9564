"""The ``kmsenv`` command as a user runs it, against a real LocalKms."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest


from kms_fixtures import cli_env  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def kms_env(cli_env):  # noqa: F811
    return cli_env


def kmsenv(*args: str, env=None, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kmsenv", *args], input=stdin, capture_output=True, env=env, timeout=timeout
    )


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_demo_runs_every_step():
    out = kmsenv("demo")
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout.decode()
    for step in range(1, 8):
        assert f"[{step}/7]" in text
    assert text.count("plaintext matches") == 3
    assert "failed over to cn-hangzhou" in text
    assert "refused (AuthenticationError" in text
    assert "'GenerateDataKey': 1" in text and "'Encrypt': 1" in text
    assert "every step behaved as expected" in text


def test_info_reports_backend():
    out = kmsenv("info")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["backend"] in ("native", "pure")


def test_no_command_is_a_usage_error():
    assert kmsenv().returncode == 2
    assert kmsenv("kms").returncode == 2


@pytest.mark.parametrize("fmt", ["framed", "alibaba", "alibaba-stream"])
def test_round_trip_each_region_alone(kms_env, tmp_path, fmt):
    server, arns, env = kms_env
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(300_000))
    before = digest(src)
    enc = tmp_path / "data.bin.kmsenv"
    out = kmsenv(
        "encrypt",
        "-k",
        arns[0],
        "-k",
        arns[1],
        "-c",
        "app=test",
        "--format",
        fmt,
        "-i",
        str(src),
        "-o",
        str(enc),
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == b""  # no progress bar when not on a terminal
    assert digest(src) == before  # input untouched
    for i, arn in enumerate(arns):
        dec = tmp_path / f"out{i}"
        out = kmsenv("decrypt", "-k", arn, "-c", "app=test", "-i", str(enc), "-o", str(dec), env=env)
        assert out.returncode == 0, out.stderr
        assert dec.read_bytes() == src.read_bytes()
    info = json.loads(kmsenv("inspect", str(enc)).stdout)
    assert info["format"] == fmt
    assert info["cmk_arns"] == arns or sorted(info["cmk_arns"]) == sorted(arns)
    assert info["encryption_context"] == {"app": "test"}


def test_stdin_stdout_and_sm4(kms_env):
    _, arns, env = kms_env
    enc = kmsenv("encrypt", "-k", arns[1], "-a", "SM4_GCM_NOPADDING_128", "-i", "-", "-o", "-", env=env, stdin=b"piped")
    assert enc.returncode == 0, enc.stderr
    dec = kmsenv("decrypt", "-k", arns[1], "-i", "-", "-o", "-", env=env, stdin=enc.stdout)
    assert dec.returncode == 0, dec.stderr
    assert dec.stdout == b"piped"


def test_directories_mirror_the_tree(kms_env, tmp_path):
    _, arns, env = kms_env
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"a")
    (tree / "sub" / "b.txt").write_bytes(b"b" * 10000)
    meta = tmp_path / "meta.jsonl"
    out = kmsenv(
        "encrypt",
        "-k",
        arns[0],
        "-r",
        "-i",
        str(tree),
        "-o",
        str(tmp_path / "enc"),
        "--metadata-output",
        str(meta),
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert sorted(p.relative_to(tmp_path / "enc").as_posix() for p in (tmp_path / "enc").rglob("*") if p.is_file()) == [
        "a.txt.kmsenv",
        "sub/b.txt.kmsenv",
    ]
    records = [json.loads(line) for line in meta.read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert records[1]["bytes_in"] == 10000 and records[1]["cmk_arns"] == [arns[0]]
    out = kmsenv("decrypt", "--discovery", "-r", "-i", str(tmp_path / "enc"), "-o", str(tmp_path / "dec"), env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "dec" / "sub" / "b.txt").read_bytes() == b"b" * 10000


def test_failures_leave_no_output_and_keep_good_files(kms_env, tmp_path):
    _, arns, env = kms_env
    src = tmp_path / "data"
    src.write_bytes(os.urandom(200_000))
    enc = tmp_path / "data.kmsenv"
    assert kmsenv("encrypt", "-k", arns[0], "-i", str(src), "-o", str(enc), env=env).returncode == 0
    good = tmp_path / "good"
    good.write_bytes(b"previous good output")
    tampered = tmp_path / "tampered.kmsenv"
    blob = bytearray(enc.read_bytes())
    blob[150_000] ^= 1
    tampered.write_bytes(bytes(blob))
    out = kmsenv("decrypt", "-k", arns[0], "-i", str(tampered), "-o", str(good), env=env)
    assert out.returncode == 4
    assert b"nothing was written" in out.stderr
    assert good.read_bytes() == b"previous good output"
    truncated = tmp_path / "truncated.kmsenv"
    truncated.write_bytes(enc.read_bytes()[:-10])
    out = kmsenv("decrypt", "-k", arns[0], "-i", str(truncated), "-o", str(tmp_path / "none"), env=env)
    assert out.returncode == 4
    assert not (tmp_path / "none").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_exit_codes(kms_env, tmp_path):
    server, arns, env = kms_env
    src = tmp_path / "data"
    src.write_bytes(b"x")
    enc = tmp_path / "data.kmsenv"
    assert kmsenv("encrypt", "-k", arns[0], "-i", str(src), "-o", str(enc), env=env).returncode == 0
    # usage
    assert kmsenv("encrypt", "-i", str(src), "-o", str(tmp_path / "o"), env=env).returncode == 2
    assert kmsenv("encrypt", "-k", "key/abc", "-i", str(src), "-o", str(tmp_path / "o"), env=env).returncode == 2
    assert kmsenv("encrypt", "-k", arns[0], "-i", str(src), "-o", str(src), env=env).returncode == 2
    # KMS: wrong secret, then a region down
    bad = dict(env, ALIBABA_CLOUD_ACCESS_KEY_SECRET="wrong")
    out = kmsenv("decrypt", "-k", arns[0], "-i", str(enc), "-o", str(tmp_path / "o"), env=bad)
    assert out.returncode == 3
    assert b"ALIBABA_CLOUD_ACCESS_KEY_SECRET" in out.stderr
    assert server.access_key_secret.encode() not in out.stderr
    out = kmsenv("decrypt", "-k", arns[1], "-i", str(enc), "-o", str(tmp_path / "o"), env=env)
    assert out.returncode == 3  # the message has no EDK for that CMK
    # authentication: context mismatch
    out = kmsenv("decrypt", "-k", arns[0], "-c", "app=x", "-i", str(enc), "-o", str(tmp_path / "o"), env=env)
    assert out.returncode == 4
    assert not (tmp_path / "o").exists()


def test_progress_bar_on_a_terminal_only(kms_env, tmp_path):
    """A terminal gets a progress bar for large inputs; a pipe gets nothing."""
    import pty
    import select

    _, arns, env = kms_env
    src = tmp_path / "big"
    src.write_bytes(os.urandom(6 << 20))  # over the 4 MB threshold
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kmsenv", "encrypt", "-k", arns[0], "-i", str(src), "-o", str(tmp_path / "o")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0
    text = seen.decode(errors="replace")
    assert "100.0%" in text and "MB/s" in text and "#" in text
    piped = kmsenv("encrypt", "-k", arns[0], "-i", str(src), "-o", str(tmp_path / "o2"), env=env)
    assert piped.returncode == 0 and piped.stderr == b""


def test_alibaba_format_from_a_pipe_says_it_spools_in_one_line(kms_env, tmp_path):
    """DER needs its lengths first: from a pipe the CLI says, in one line, that
    it spools; from a regular file it says nothing. Both outputs decrypt."""
    _, arns, env = kms_env
    data = os.urandom(100_000)
    piped = kmsenv(
        "encrypt", "-k", arns[0], "--format", "alibaba", "-i", "-", "-o", str(tmp_path / "p"), env=env, stdin=data
    )
    assert piped.returncode == 0, piped.stderr
    lines = piped.stderr.decode().splitlines()
    assert len(lines) == 1 and "spooling" in lines[0] and "not known in advance" in lines[0]
    (tmp_path / "in").write_bytes(data)
    filed = kmsenv(
        "encrypt", "-k", arns[0], "--format", "alibaba", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "f"), env=env
    )
    assert filed.returncode == 0 and filed.stderr == b"", filed.stderr
    for name in ("p", "f"):
        out = kmsenv(
            "decrypt", "-k", arns[0], "-i", str(tmp_path / name), "-o", str(tmp_path / (name + ".out")), env=env
        )
        assert out.returncode == 0, out.stderr
        assert (tmp_path / (name + ".out")).read_bytes() == data
