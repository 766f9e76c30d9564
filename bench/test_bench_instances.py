"""pytest-benchmark suites for KMS 3.0 instances (issue 16), on LocalKms's instance gateways.

    pytest bench/test_bench_instances.py --benchmark-only [--benchmark-group-by=group]

* ``instance encrypt N=…``: one kmsenv.encrypt (a new data key each time) with N region
  CMKs, each in its own primary instance, against one CMK with N-1 replica regions; every
  instance answers after a 20 ms latency fault, so the figures are round trips, not CPU.
  ``extra_info`` records the instance calls and EDKs per message.
* ``instance client``: one InstanceClient Encrypt (TLS keep-alive, RSA request signature).

For requests/s and the side-by-side table use ``python bench/bench_instances.py``.
"""

from __future__ import annotations

import pytest

import kmsenv
from kmsenv.instance.client import InstanceClient
from kmsenv.kms import InstanceEndpoint, Kms
from kmsenv.localkms import LocalKms
from kmsenv.localkms.instance import InstanceSpec
from kmsenv.message.codec import decode_message

pytestmark = pytest.mark.bench

REGIONS = ("cn-hangzhou", "cn-shanghai", "cn-beijing")
LATENCY_MS = 20


@pytest.fixture(scope="module")
def local():
    instances: dict[str, str | InstanceSpec] = {f"kst-own-{i}": r for i, r in enumerate(REGIONS)}
    instances.update({f"kst-rep-{i}": InstanceSpec(r, replica_of="kst-own-0") for i, r in enumerate(REGIONS) if i})
    with LocalKms(regions=list(REGIONS), instances=instances) as server:
        yield server


def _endpoint(gw) -> InstanceEndpoint:
    return InstanceEndpoint(
        gw.endpoint,
        client_key_file=gw.client_key.key_file,
        password_file=gw.client_key.password_file,
        ca_file=gw.ca_file,
    )


def _calls(local) -> int:
    total = sum(sum(gw.stats().values()) for gw in local.instances.values())
    for gw in local.instances.values():
        gw.reset_stats()
    return total


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("form", ["region CMKs", "one CMK + replicas"])
def test_instance_encrypt(benchmark, local, n, form):
    regions = REGIONS[:n]
    if form == "region CMKs":  # each region's own primary instance and CMK
        kms = Kms(instances={r: _endpoint(local.instances[f"kst-own-{i}"]) for i, r in enumerate(regions)})
        provider = kmsenv.KmsKeyProvider(*(local.create_key(r) for r in regions), kms=kms)
    else:  # the first region's primary, its replicas in the others
        gateways = {regions[0]: local.instances["kst-own-0"]}
        gateways.update({r: local.instances[f"kst-rep-{i}"] for i, r in enumerate(regions) if i})
        kms = Kms(instances={r: _endpoint(gw) for r, gw in gateways.items()})
        provider = kmsenv.KmsKeyProvider(local.create_key(regions[0]), kms=kms, replica_regions=list(regions[1:]))
    for gw in local.instances.values():
        gw.set_fault(latency_ms=LATENCY_MS)
    try:
        kmsenv.encrypt(b"warm", provider)  # TLS sessions and the clients' first use
        _calls(local)
        benchmark.group = f"instance encrypt N={n}"
        message = benchmark.pedantic(kmsenv.encrypt, args=(b"row", provider), rounds=15, iterations=1)
        header, _ = decode_message(message.ciphertext)
        benchmark.extra_info["instance_calls_per_message"] = _calls(local) / 15
        benchmark.extra_info["edks"] = len(header.encrypted_data_keys)
        assert len(header.encrypted_data_keys) == (n if form == "region CMKs" else 1)
    finally:
        for gw in local.instances.values():
            gw.set_fault()


def test_instance_client_encrypt(benchmark, local):
    gw = local.instances["kst-own-0"]
    key_id = local.create_key(REGIONS[0]).rsplit("/", 1)[1]
    client = InstanceClient(
        gw.endpoint, client_key_file=gw.client_key.key_file, password=gw.client_key.password, ca=gw.ca_file
    )
    client.encrypt(key_id, b"warm")
    benchmark.group = "instance client"
    sealed = benchmark(client.encrypt, key_id, b"x" * 32)
    assert client.decrypt(sealed.ciphertext_blob, sealed.iv, key_id=key_id) == b"x" * 32
