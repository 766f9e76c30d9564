"""pytest fixtures: a LocalKms serving three regions, CMKs in them, and a Kms client
with tiny backoff values.  Everything talks real HTTP through the official client.

Use with ``from kms_fixtures import *  # noqa: F401,F403`` in a test module (the
lead may move these into conftest.py).
"""

from __future__ import annotations

import os
import site
import sysconfig
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import pytest

import kmsenv

from kmsenv.kms import Kms
from kmsenv.localkms import LocalKms

REGIONS = ("cn-hangzhou", "cn-beijing", "cn-shanghai")
HZ, BJ, SH = REGIONS

__all__ = [
    "REGIONS",
    "HZ",
    "BJ",
    "SH",
    "Cmks",
    "local_kms",
    "cmks",
    "kms",
    "make_kms",
    "clean_faults",
    "cli_env",
    "kms_options",
    "kms_calls",
    "kmsenv_import_root",
    "worker_env_vars",
    "worker_environment",
    "worker_env",
    "provider",
]


@dataclass(frozen=True)
class Cmks:
    hz: str  # primary, cn-hangzhou
    hz2: str  # a second CMK in cn-hangzhou (ReEncrypt path)
    bj: str
    sh: str
    sm4: str  # Aliyun_SM4 in cn-hangzhou
    sm4_bj: str  # Aliyun_SM4 in cn-beijing


@pytest.fixture(scope="module")
def local_kms():
    with LocalKms(regions=list(REGIONS)) as server:
        yield server


@pytest.fixture(scope="module")
def cmks(local_kms) -> Cmks:
    return Cmks(
        hz=local_kms.create_key(HZ),
        hz2=local_kms.create_key(HZ),
        bj=local_kms.create_key(BJ),
        sh=local_kms.create_key(SH),
        sm4=local_kms.create_key(HZ, key_spec="Aliyun_SM4"),
        sm4_bj=local_kms.create_key(BJ, key_spec="Aliyun_SM4"),
    )


@pytest.fixture
def clean_faults(local_kms):
    """Clear every region's faults before and after the test."""
    for region in REGIONS:
        local_kms.set_fault(region)
    yield local_kms
    for region in REGIONS:
        local_kms.set_fault(region)


@pytest.fixture
def make_kms(local_kms, clean_faults):
    """Build a Kms for the LocalKms with tiny backoffs; keyword arguments override."""

    def factory(**overrides) -> Kms:
        return Kms(**kms_options(local_kms, **overrides))

    return factory


def kms_options(local_kms, **overrides) -> dict:
    """Keyword arguments for a Kms (or subclass) talking to ``local_kms`` with
    tiny backoffs, so retry tests stay fast; keyword arguments override."""
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
    return options


@pytest.fixture
def kms(make_kms) -> Kms:
    return make_kms()


@pytest.fixture(scope="module")
def cli_env():
    """(server, [beijing ARN, hangzhou ARN], environment) for running the real
    ``kmsenv`` command against a LocalKms of its own."""
    import os

    with LocalKms(regions=["cn-beijing", "cn-hangzhou"]) as server:
        arns = [server.create_key(r) for r in ("cn-beijing", "cn-hangzhou")]
        env = dict(os.environ)
        env.update(
            KMSENV_KMS_ENDPOINTS=",".join(f"{r}={u}" for r, u in server.endpoints.items()),
            ALIBABA_CLOUD_ACCESS_KEY_ID=server.access_key_id,
            ALIBABA_CLOUD_ACCESS_KEY_SECRET=server.access_key_secret,
        )
        yield server, arns, env


def kms_calls(server) -> dict[tuple[str, str], int]:
    """``{(region, action): count}`` of the calls a LocalKms served (zeros left out)."""
    return {(r, a): n for r, actions in server.stats().items() for a, n in actions.items() if n}


# ---------------------------------------------------------------- engine workers


def kmsenv_import_root() -> str | None:
    """The sys.path entry kmsenv was imported from, unless it is an installed
    package (worker processes find that one on their own)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(kmsenv.__file__)))
    sites = {os.path.abspath(p) for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]]}
    return None if root in sites or "site-packages" in root or "dist-packages" in root else root


def worker_env_vars(server) -> dict[str, str]:
    """What worker processes need to reach ``server``: its credentials in the
    standard variables (never in a task closure), and PYTHONPATH when kmsenv
    runs from a checkout."""
    env = {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": server.access_key_id,
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": server.access_key_secret,
    }
    root = kmsenv_import_root()
    if root:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return env


@contextmanager
def worker_environment(server, **extra: str) -> Iterator[dict[str, str]]:
    """``os.environ`` as workers started inside the block inherit it (also used
    by WorkerSpec clients in this process); restored afterwards. A stray
    KMSENV_PREFER_REGIONS / KMSENV_KMS_ENDPOINTS would change what the tests see."""
    env = dict(worker_env_vars(server), **extra)
    names = set(env) | {"KMSENV_PREFER_REGIONS", "KMSENV_KMS_ENDPOINTS"}
    saved = {k: os.environ.get(k) for k in names}
    os.environ.pop("KMSENV_PREFER_REGIONS", None)
    os.environ.pop("KMSENV_KMS_ENDPOINTS", None)
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def worker_env(local_kms):
    """The module's WorkerSpec clients (in other processes, or in this one) read
    the environment; the process's job-key cache is dropped afterwards."""
    with worker_environment(local_kms):
        yield
    from kmsenv import jobkey

    jobkey.clear_cache()


@pytest.fixture(scope="module")
def provider(local_kms, cmks):
    """A three-region KmsKeyProvider (cn-hangzhou primary) on the module's LocalKms."""
    from kmsenv.providers import KmsKeyProvider

    return KmsKeyProvider(cmks.hz, cmks.bj, cmks.sh, kms=Kms(**kms_options(local_kms)))
