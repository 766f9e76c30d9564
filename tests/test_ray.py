"""kmsenv.ray on a real local Ray (2 CPUs) against a real LocalKms.

Encryptor/Decryptor fetch the data key in ``__init__``: one KMS Decrypt per
actor, whatever the number of batches. Counts are asserted exactly from the
server's own statistics.
"""

from __future__ import annotations


import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

import pyarrow as pa  # noqa: E402
import ray.data  # noqa: E402

import kmsenv  # noqa: E402
import kmsenv.ray as kr  # noqa: E402
from kmsenv.kms import Kms  # noqa: E402
from kmsenv.localkms import LocalKms  # noqa: E402
from kms_fixtures import kms_calls, worker_environment  # noqa: E402

pytestmark = pytest.mark.ray

REGIONS = ("cn-hangzhou", "cn-beijing", "cn-shanghai")
HZ, BJ, SH = REGIONS
ROWS = 50_000
ACTORS = 2


@pytest.fixture(scope="module")
def env():
    # The driver too reads the environment (an Encryptor is called in-process below).
    with LocalKms(regions=list(REGIONS)) as server, worker_environment(server) as env_vars:
        arns = [server.create_key(r) for r in REGIONS]
        kms = Kms(
            access_key_id=server.access_key_id,
            access_key_secret=server.access_key_secret,
            endpoints=server.endpoints,
            backoff_base=0.001,
            backoff_max=0.005,
        )
        provider = kmsenv.KmsKeyProvider(*arns, kms=kms)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env_vars})
        try:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False
            # Start every pool actor (and so its __init__ Decrypt) before the first
            # batch, so that the per-actor counts below do not depend on timing.
            context.wait_for_min_actors_s = 60
            yield server, provider
        finally:
            ray.shutdown()


calls = kms_calls


@pytest.fixture(scope="module")
def table():
    return pa.table(
        {
            "id": pa.array(range(ROWS), pa.int64()),
            "email": pa.array([f"user{i:07d}.{(i * 2654435761) % 100000:05d}@example.com" for i in range(ROWS)]),
        }
    )


def blocks(table: pa.Table, n: int = 8):
    """A dataset of n blocks (no shuffle)."""
    size = -(-table.num_rows // n)
    return ray.data.from_arrow([table.slice(i, size) for i in range(0, table.num_rows, size)])


def to_table(ds) -> pa.Table:
    return pa.concat_tables(ray.get(ds.to_arrow_refs())).sort_by("id")


def test_one_decrypt_per_actor(env, table):
    server, provider = env
    server.reset_stats()
    job = kmsenv.JobKey.create(provider, encryption_context={"table": "users"})
    assert calls(server) == {(HZ, "GenerateDataKey"): 1, (BJ, "Encrypt"): 1, (SH, "Encrypt"): 1}
    server.reset_stats()
    ds = blocks(table)
    enc = ds.map_batches(
        kr.Encryptor,
        fn_constructor_args=(job, "email"),
        fn_constructor_kwargs={"output": "enc", "share": ACTORS},
        concurrency=ACTORS,
        num_cpus=0.5,
        batch_format="pyarrow",
        batch_size=5_000,
    ).materialize()
    # 16 batches over 2 actors: one Decrypt per actor, in __init__.
    assert calls(server) == {(HZ, "Decrypt"): ACTORS}
    got = to_table(enc)
    assert got.column("enc").type == pa.binary()
    assert (
        kmsenv.decrypt(got.column("enc")[123].as_py(), provider).plaintext
        == table.column("email")[123].as_py().encode()
    )
    server.reset_stats()
    dec = to_table(kr.decrypt_dataset(enc, "enc", job, concurrency=ACTORS, num_cpus=0.5))
    # New actors (new processes): one Decrypt each again (+1 for the check above).
    assert calls(server) == {(HZ, "Decrypt"): ACTORS}
    assert dec.column("enc").to_pylist() == table.column("email").to_pylist()


def test_compact_row_binding(env, table):
    server, provider = env
    job = kmsenv.JobKey.create(provider)
    store = kmsenv.DictKeyHeaderStore(job.headers)
    server.reset_stats()
    enc = kr.encrypt_dataset(
        blocks(table),
        "email",
        job,
        concurrency=ACTORS,
        num_cpus=0.5,
        format="compact",
        aad_column="id",
    ).materialize()
    assert calls(server) == {(HZ, "Decrypt"): ACTORS}
    got = to_table(enc)
    # Compact values: plaintext + 45 bytes.
    assert [len(v) for v in got.column("email").to_pylist()] == [len(v) + 45 for v in table.column("email").to_pylist()]
    # A reader with only a WorkerSpec and the key headers' store.
    reader = kmsenv.WorkerSpec.from_provider(provider)
    dec = to_table(
        kr.decrypt_dataset(enc, "email", reader, key_store=store, aad_column="id", concurrency=1, num_cpus=0.5)
    )
    assert dec.column("email").to_pylist() == table.column("email").to_pylist()
    # Swapped between rows: fails, naming the value.
    values = got.column("email").to_pylist()
    values[3], values[4] = values[4], values[3]
    swapped = got.set_column(1, "email", pa.array(values, pa.binary()))
    with pytest.raises(kmsenv.AuthenticationError, match=r"value 3: .*moved to another row"):
        kr.Decryptor(job, "email", aad_column="id")(swapped.slice(0, 10))
    # Bound to the column's name: a renamed column is read with its original name.
    renamed = got.slice(0, 10).rename_columns(["mail" if n == "email" else n for n in got.column_names])
    with pytest.raises(kmsenv.AuthenticationError, match="written under"):
        kr.Decryptor(job, "mail", aad_column="id")(renamed)
    out = kr.Decryptor(job, "mail", aad_column="id", aad_name="email")(renamed)
    assert out.column("mail").to_pylist() == [table.column("email")[i].as_py() for i in out.column("id").to_pylist()]


def test_alibaba_share_per_actor(env, table):
    """Each actor may seal max_messages_per_key // share values per data key,
    then moves to the JobKey's next key; with none left it refuses."""
    server, provider = env
    job = kmsenv.JobKey.create(provider, rows=3_000, max_messages_per_key=1_000)  # 3 keys
    batch = table.slice(0, 400)
    enc = kr.Encryptor(job, "email", share=2)  # 500 values per key for this actor
    assert enc.budget == 500
    assert enc(batch).column("email").type == pa.binary()
    assert enc.key_index == 0
    enc(batch.slice(0, 100))  # 500 of 500 on key 0
    assert enc.key_index == 0
    enc(batch)  # does not fit: key 1
    assert enc.key_index == 1
    enc(batch)  # key 2
    with pytest.raises(kmsenv.ConfigurationError, match="its share of all 3 data keys"):
        enc(batch)
    with pytest.raises(kmsenv.ConfigurationError, match="over one actor's share"):
        kr.Encryptor(job, "email", share=2)(table.slice(0, 501))
    with pytest.raises(kmsenv.ConfigurationError, match="share="):
        kr.Encryptor(job, "email")
    # The compact format has no budget.
    assert kr.Encryptor(job, "email", format="compact")(table).num_rows == ROWS
    # Values sealed under key 1 decrypt with the JobKey.
    out = kr.Encryptor(job, "email", share=2)
    out.key_index = 1
    sealed = out(batch)
    assert kr.Decryptor(job, "email")(sealed).column("email").to_pylist() == batch.column("email").to_pylist()


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_pool_size_checked_before_anything_runs(bad):
    class NoDataset:
        def map_batches(self, *a, **k):
            raise AssertionError("map_batches must not be reached")

    job = object()  # never looked at: the pool size is checked first
    for fn in (kr.encrypt_dataset, kr.decrypt_dataset):
        with pytest.raises(kmsenv.ConfigurationError, match="concurrency must be an int >= 1"):
            fn(NoDataset(), "c", job, concurrency=bad)
