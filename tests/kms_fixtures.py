"""pytest fixtures: a LocalKms serving three regions, CMKs in them, and a Kms client
with tiny backoff values.  Everything talks real HTTP through the official client.

Use with ``from kms_fixtures import *  # noqa: F401,F403`` in a test module (the
lead may move these into conftest.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kmsenv.kms import Kms
from kmsenv.localkms import LocalKms

REGIONS = ("cn-hangzhou", "cn-beijing", "cn-shanghai")
HZ, BJ, SH = REGIONS

__all__ = ["REGIONS", "HZ", "BJ", "SH", "Cmks", "local_kms", "cmks", "kms", "make_kms", "clean_faults", "cli_env", "kms_options"]


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
