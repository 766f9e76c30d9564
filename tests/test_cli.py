"""The ``kmsenv`` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys


def _kmsenv(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kmsenv", *args], capture_output=True, text=True, timeout=timeout)


def test_demo_runs_every_step():
    out = _kmsenv("demo")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout
    for step in range(1, 8):
        assert f"[{step}/7]" in lines
    assert lines.count("plaintext matches") == 3
    assert "failed over to cn-hangzhou" in lines
    assert "refused (AuthenticationError" in lines
    assert "'GenerateDataKey': 1" in lines and "'Encrypt': 1" in lines
    assert "every step behaved as expected" in lines


def test_info_reports_backend():
    out = _kmsenv("info")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["backend"] in ("native", "pure")
    assert "kmsenv" in info


def test_no_command_is_a_usage_error():
    out = _kmsenv()
    assert out.returncode == 2
    assert "usage" in out.stderr.lower()
    out = _kmsenv("kms")
    assert out.returncode == 2
