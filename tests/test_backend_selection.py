"""Backend choice, the KMSENV_BACKEND switch and the stale-build guard."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import kmsenv
from kmsenv import crypto


def _run(env_backend: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("KMSENV_BACKEND", None)
    if env_backend is not None:
        env["KMSENV_BACKEND"] = env_backend
    code = "import kmsenv; print(kmsenv.backend_name(), kmsenv.native_available())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_pure_can_be_forced():
    out = _run("pure")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "pure"


def test_default_is_native_when_available():
    out = _run(None)
    assert out.returncode == 0, out.stderr
    name, available = out.stdout.split()
    assert name == ("native" if available == "True" else "pure")
    if available != "True":
        assert "pure-Python backend" in out.stderr  # the fallback is never silent


def test_missing_native_core_is_reported_at_import(tmp_path):
    """Import alone says so when the native core cannot load (here: a copy of
    the package without its compiled module)."""
    import shutil

    pkg = os.path.dirname(kmsenv.__file__)
    shutil.copytree(pkg, tmp_path / "kmsenv", ignore=shutil.ignore_patterns("_native*", "__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop("KMSENV_BACKEND", None)
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import kmsenv"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "RuntimeWarning" in out.stderr and "not built or failed to load" in out.stderr
    env["KMSENV_BACKEND"] = "pure"  # chosen on purpose: nothing to warn about
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import kmsenv"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0 and "RuntimeWarning" not in out.stderr, out.stderr


def test_unknown_backend_is_a_clear_error():
    out = _run("turbo")
    assert out.returncode != 0
    assert "unknown backend 'turbo'" in out.stderr


@pytest.mark.skipif(not crypto.native_available(), reason="native core not built")
def test_native_reports_versions_and_features():
    info = kmsenv.backend_info()
    assert info["compiled_version"] == kmsenv.__version__
    assert info["openssl_loaded"].startswith("OpenSSL")
    assert info["features"]["SM4"] is True


@pytest.mark.skipif(not crypto.native_available(), reason="native core not built")
def test_stale_native_build_is_refused(monkeypatch):
    monkeypatch.setattr(crypto, "_native_checked", False)
    monkeypatch.setattr(crypto, "_native_reason", None)
    monkeypatch.setattr(crypto, "__version__", "0.0.0.stale-check")
    assert not crypto.native_available()
    assert "stale" in crypto.native_unavailable_reason()
    with pytest.raises(kmsenv.ConfigurationError, match="stale"):
        crypto._make("native")
