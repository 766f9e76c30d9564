"""kmsenv.dask on a real LocalCluster (2 worker processes) against a real LocalKms.

The point of the adapter is the KMS arithmetic: JobKey.create costs one
GenerateDataKey plus one Encrypt per other region, and the job one Decrypt per
worker *process*, however many partitions. Those counts are asserted exactly
from the server's own statistics.
"""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("distributed")
pytest.importorskip("dask.dataframe")

import dask.dataframe as dd  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
from distributed import Client, LocalCluster, wait  # noqa: E402

import kmsenv  # noqa: E402
import kmsenv.dask as kd  # noqa: E402
from kmsenv.kms import Kms  # noqa: E402
from kmsenv.kmsspec import KmsSpec  # noqa: E402
from kmsenv.localkms import LocalKms  # noqa: E402
from kms_fixtures import kms_calls, worker_environment  # noqa: E402

pytestmark = pytest.mark.dask

REGIONS = ("cn-hangzhou", "cn-beijing", "cn-shanghai")
HZ, BJ, SH = REGIONS
ROWS = 200_000
WORKERS = 2


@pytest.fixture(scope="module")
def env():
    """LocalKms, its CMKs, a driver-side provider, and a 2-process LocalCluster
    started after the workers' environment (credentials, PYTHONPATH) is set."""
    with LocalKms(regions=list(REGIONS)) as server, worker_environment(server):
        arns = [server.create_key(r) for r in REGIONS]
        kms = Kms(
            access_key_id=server.access_key_id,
            access_key_secret=server.access_key_secret,
            endpoints=server.endpoints,
            backoff_base=0.001,
            backoff_max=0.005,
            connect_timeout=2.0,
            read_timeout=5.0,
        )
        provider = kmsenv.KmsKeyProvider(*arns, kms=kms)
        with (
            LocalCluster(
                n_workers=WORKERS,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                worker_dashboard_address=None,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield server, arns, provider, client


@pytest.fixture(autouse=True)
def no_faults(env):
    server = env[0]
    for region in REGIONS:
        server.set_fault(region)
    yield
    for region in REGIONS:
        server.set_fault(region)


calls = kms_calls


def emails(n: int = ROWS) -> pd.DataFrame:
    return pd.DataFrame(
        {"id": range(n), "email": [f"user{i:07d}.{(i * 2654435761) % 100000:05d}@example.com" for i in range(n)]}
    )


@pytest.fixture(scope="module")
def data():
    return emails()


@pytest.fixture(scope="module")
def ddf8(env, data):
    """The data as 8 partitions held by the workers (shipped once)."""
    ddf = dd.from_pandas(data, npartitions=8).persist()
    wait(ddf)
    return ddf


def lengths(column) -> list[int]:
    """Byte lengths of a binary column, computed on the workers."""
    return (
        column.map_partitions(
            lambda s: pd.Series(pc.binary_length(pa.array(s)).to_numpy(zero_copy_only=False), index=s.index),
            meta=(column.name, "int64"),
        )
        .compute()
        .tolist()
    )


def make_job(env, **kw) -> kmsenv.JobKey:
    server, _, provider, _ = env
    server.reset_stats()
    job = kmsenv.JobKey.create(provider, **kw)
    # 1 GenerateDataKey in the primary region + 1 Encrypt in each other region.
    assert calls(server) == {(HZ, "GenerateDataKey"): 1, (BJ, "Encrypt"): 1, (SH, "Encrypt"): 1}
    server.reset_stats()
    return job


def decrypts(server) -> int:
    return sum(n for (region, action), n in calls(server).items() if action == "Decrypt")


@pytest.mark.parametrize("fmt", ["alibaba", "compact"])
@pytest.mark.parametrize("partitions", [8, 32])
def test_encrypt_one_decrypt_per_worker_process(env, data, ddf8, fmt, partitions):
    server, _, provider, client = env
    job = make_job(env, encryption_context={"table": "users"})
    ddf = ddf8 if partitions == 8 else ddf8.repartition(npartitions=partitions)
    assert ddf.npartitions == partitions
    before = kd.worker_stats(client)
    enc = kd.encrypt_column(ddf, "email", job, format=fmt, output="enc").persist()
    wait(enc)
    assert enc["enc"].dtype == kd.BINARY
    # One Decrypt per worker process, not per partition, all in the primary region.
    assert calls(server) == {(HZ, "Decrypt"): WORKERS}
    after = kd.worker_stats(client)
    assert len(after) == WORKERS and len({s["pid"] for s in after.values()}) == WORKERS
    assert {a: after[a]["kms_decrypts"] - before[a]["kms_decrypts"] for a in after} == {a: 1 for a in after}

    # Decrypt on the same (warm) workers: the cache answers, no KMS call.
    out = kd.decrypt_column(enc[["id", "enc"]], "enc", job).compute()
    assert calls(server) == {(HZ, "Decrypt"): WORKERS}
    assert out["enc"].tolist() == data["email"].tolist()
    sizes = lengths(enc["enc"])
    if fmt == "compact":
        # Compact values: plaintext + 45 bytes.
        assert sizes == [n + 45 for n in data["email"].str.len()]
    else:
        # Standalone Alibaba messages (three regional EDKs each) that kmsenv.decrypt reads.
        assert min(sizes) > 500
        row = enc[["id", "enc"]].partitions[1].compute().iloc[7]
        assert kmsenv.decrypt(row["enc"], provider).plaintext == data["email"].iloc[row["id"]].encode()


def test_failover_reader_prefers_down_region(env, data, ddf8):
    server, arns, provider, client = env
    job = make_job(env)
    store = kmsenv.DictKeyHeaderStore(job.headers)
    enc = kd.encrypt_column(ddf8, "email", job, format="compact").persist()
    wait(enc)
    assert decrypts(server) == WORKERS
    client.run(kmsenv.jobkey.clear_cache)  # forget the key: the reader must go to KMS
    server.reset_stats()
    server.set_fault(HZ, down=True)
    base = KmsSpec.from_kms(provider.kms)
    reader = kmsenv.WorkerSpec(cmks=tuple(arns), kms=dataclasses.replace(base, prefer_regions=(HZ, SH, BJ)))
    out = kd.decrypt_column(enc, "email", reader, key_store=store).compute()
    assert out["email"].tolist() == data["email"].tolist()
    # cn-hangzhou refuses connections (the server counts nothing there); each
    # worker falls over to its next preferred region, cn-shanghai: one Decrypt each.
    assert calls(server) == {(SH, "Decrypt"): WORKERS}
    assert [s["kms_decrypts"] for s in kd.worker_stats(client).values()] == [1] * WORKERS


def test_row_binding(env, data, ddf8):
    job = make_job(env)
    enc = kd.encrypt_column(ddf8, "email", job, format="compact", aad_column="id").persist()
    good = kd.decrypt_column(enc, "email", job, aad_column="id").compute()
    assert good["email"].tolist() == data["email"].tolist()
    # Swap the values of rows 10 and 11: both authentic under the key, but each
    # bound to the other row's id.
    swapped = enc.partitions[0].compute()
    values = swapped["email"].array.copy()
    values[[10, 11]] = values[[11, 10]]
    swapped["email"] = values
    with pytest.raises(kmsenv.AuthenticationError, match=r"value 10: .*moved to another row"):
        kd.decrypt_column(dd.from_pandas(swapped, npartitions=1), "email", job, aad_column="id").compute()
    # Without the row ids the bound values do not open either.
    with pytest.raises(kmsenv.MessageFormatError, match="bound to a row id"):
        kd.decrypt_column(enc, "email", job).compute()
    # Values are bound to their column's name: a renamed column is read with
    # the name it was written under.
    renamed = enc.rename(columns={"email": "mail"})
    with pytest.raises(kmsenv.AuthenticationError, match="written under"):
        kd.decrypt_column(renamed, "mail", job, aad_column="id").compute()
    out = kd.decrypt_column(renamed, "mail", job, aad_column="id", aad_name="email").compute()
    assert out["mail"].tolist() == data["email"].tolist()
    # Row binding is a compact-format feature.
    with pytest.raises(kmsenv.ConfigurationError, match="compact"):
        kd.encrypt_column(ddf8, "email", job, aad_column="id")


def test_provider_key_and_nulls(env):
    server, _, provider, _ = env
    df = pd.DataFrame({"email": ["a@x.com", None, "c@x.com", None] * 250})
    server.reset_stats()
    enc = kd.encrypt_column(dd.from_pandas(df, npartitions=4), "email", provider, encryption_context={"t": "n"})
    # The JobKey was created on the client at graph time.
    assert calls(server) == {(HZ, "GenerateDataKey"): 1, (BJ, "Encrypt"): 1, (SH, "Encrypt"): 1}
    got = enc.compute()
    assert got["email"].isna().tolist() == df["email"].isna().tolist()
    out = kd.decrypt_column(enc, "email", provider).compute()  # the provider becomes a WorkerSpec
    assert out["email"].isna().tolist() == df["email"].isna().tolist()
    assert out["email"].dropna().tolist() == df["email"].dropna().tolist()


def test_alibaba_budget_per_partition(env, data, ddf8):
    server, _, provider, client = env
    job = make_job(env, max_messages_per_key=22_000)
    # 25,000 rows a partition > 22,000 messages per key
    with pytest.raises(kmsenv.ConfigurationError, match="over its share of the data key's budget"):
        kd.encrypt_column(ddf8, "email", job).persist().compute()
    # The compact format has no per-key budget.
    assert len(kd.encrypt_column(ddf8, "email", job, format="compact")) == ROWS
    # rows= makes enough keys: ceil(200,000 / 22,000) = 10; partition p of 20
    # (~10,000 rows each, budget 11,000) uses key p // 2.
    server.reset_stats()
    job = kmsenv.JobKey.create(provider, rows=ROWS, max_messages_per_key=22_000)
    assert len(job.headers) == 10
    assert calls(server) == {(HZ, "GenerateDataKey"): 10, (BJ, "Encrypt"): 10, (SH, "Encrypt"): 10}
    server.reset_stats()
    before = sum(s["kms_decrypts"] for s in kd.worker_stats(client).values())
    out = kd.decrypt_column(kd.encrypt_column(ddf8.repartition(npartitions=20), "email", job), "email", job).compute()
    assert out["email"].tolist() == data["email"].tolist()
    # Each worker fetches each key it uses once: between 10 (every key on one
    # worker) and 20 (every key on both), never one per partition.
    fetched = sum(s["kms_decrypts"] for s in kd.worker_stats(client).values()) - before
    assert decrypts(server) == fetched
    assert 10 <= fetched <= 20


def test_prefetch_plugin(env, ddf8):
    server, _, _, client = env
    job = make_job(env)
    plugin = kd.PrefetchKeys(job)
    client.register_plugin(plugin)
    try:
        assert calls(server) == {(HZ, "Decrypt"): WORKERS}  # at registration
        server.reset_stats()
        assert len(kd.encrypt_column(ddf8, "email", job, format="compact")) == ROWS
        assert calls(server) == {}  # nothing during the job
    finally:
        client.unregister_worker_plugin(plugin.name)


def test_bad_arguments(env, data):
    _, _, provider, _ = env
    ddf = dd.from_pandas(data.head(10), npartitions=1)
    spec = kmsenv.WorkerSpec.from_provider(provider)
    with pytest.raises(kmsenv.ConfigurationError, match="JobKey or a data key provider"):
        kd.encrypt_column(ddf, "email", spec)
    with pytest.raises(kmsenv.ConfigurationError, match="no column 'nope'"):
        kd.encrypt_column(ddf, "nope", provider)
    with pytest.raises(kmsenv.ConfigurationError, match="format"):
        kd.encrypt_column(ddf, "email", provider, format="xml")
    # A compact job made here from a provider would lose its key headers.
    with pytest.raises(kmsenv.ConfigurationError, match="key_store"):
        kd.encrypt_column(ddf, "email", provider, format="compact")
    job = make_job(env, encryption_context={"a": "b"})
    with pytest.raises(kmsenv.ConfigurationError, match="encryption context"):
        kd.encrypt_column(ddf, "email", job, encryption_context={"a": "c"})
    assert env[0].access_key_secret not in repr(job)


def test_round_trip_through_parquet_and_restart(env, data, ddf8, tmp_path):
    """Last: client.restart() drops the workers' data (ddf8) and their caches."""
    server, _, _, client = env
    job = make_job(env)
    kd.encrypt_column(ddf8, "email", job, format="compact").to_parquet(str(tmp_path / "enc"))
    assert calls(server) == {(HZ, "Decrypt"): WORKERS}
    back = dd.read_parquet(str(tmp_path / "enc"))
    assert back["email"].dtype == kd.BINARY  # binary[pyarrow] survives Parquet
    client.restart()  # fresh worker processes: empty caches
    assert [s["kms_decrypts"] for s in kd.worker_stats(client).values()] == [0] * WORKERS
    server.reset_stats()
    out = kd.decrypt_column(back, "email", job).compute().sort_values("id")
    assert calls(server) == {(HZ, "Decrypt"): WORKERS}
    assert out["email"].tolist() == data["email"].tolist()
    assert out["id"].tolist() == data["id"].tolist()
