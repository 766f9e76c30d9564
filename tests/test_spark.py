"""kmsenv.spark against a real LocalKms (3 regions) and a local[2] SparkSession.

The point of the adapter is its KMS call count: one GenerateDataKey plus one
Encrypt per other region on the driver, then one Decrypt per Python worker
process, however many rows and partitions. The counts below are exact, read
from the LocalKms on one side and from inside the Spark tasks (worker pids and
kmsenv.jobkey.stats()) on the other.
"""

from __future__ import annotations

import functools
import sys
from collections import defaultdict

import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("pyspark")

import pyarrow as pa  # noqa: E402
from pyspark import cloudpickle  # noqa: E402
from pyspark.accumulators import AccumulatorParam  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

import kmsenv  # noqa: E402
import kmsenv.arrow  # noqa: E402
import kmsenv.jobkey  # noqa: E402
import kmsenv.spark  # noqa: E402
from kmsenv import ConfigurationError, DictKeyHeaderStore, JobKey, KmsKeyProvider, KmsSpec, WorkerSpec  # noqa: E402
from kmsenv.kms import Kms  # noqa: E402
from kms_fixtures import BJ, HZ, SH, kms_options, local_kms, worker_environment  # noqa: E402,F401

pytestmark = pytest.mark.spark

ROWS = 200_000
EMAIL = "concat('user', lpad(id, 7, '0'), '@example.com')"
# The probe below runs inside Spark's Python workers, which cannot import this
# test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def spark(local_kms):
    # Python workers inherit this environment when the session starts: they
    # take their KMS credentials from it (never from the task closure).
    with worker_environment(local_kms, PYSPARK_PYTHON=sys.executable):
        yield from _session()


def _session():
    session = (
        SparkSession.builder.master("local[2]")
        .appName("kmsenv-test-spark")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


@pytest.fixture(scope="module")
def provider(local_kms):
    arns = [local_kms.create_key(r) for r in (HZ, BJ, SH)]
    return KmsKeyProvider(*arns, kms=Kms(**kms_options(local_kms)))


def source(spark, rows=ROWS, partitions=8):
    return spark.range(0, rows, numPartitions=partitions).selectExpr("id", f"{EMAIL} AS email")


def mismatches(df, column="email", expected=EMAIL):
    """(rows, rows whose column differs from the generated source value): one
    job, no shuffle, every row checked (the source is a function of id)."""
    row = df.selectExpr("count(*)", f"count_if(NOT ({column} <=> {expected}))").first()
    return tuple(row)


def calls(server, before):
    """KMS calls since ``before`` (a server.stats() snapshot), non-zero only."""
    now = server.stats()
    out = {}
    for region, actions in now.items():
        diff = {a: n - before.get(region, {}).get(a, 0) for a, n in actions.items()}
        diff = {a: n for a, n in diff.items() if n}
        if diff:
            out[region] = diff
    return out


class _ListParam(AccumulatorParam):
    def zero(self, value):
        return []

    def addInPlace(self, a, b):
        return a + b


def _probe(acc, inner, batches, **kwargs):
    """Wraps kmsenv.spark._encrypt_batches in the workers: records (pid, the
    process's KMS Decrypts before, after) for every partition it encrypts."""
    before = kmsenv.jobkey.stats()["kms_decrypts"]
    yield from inner(batches, **kwargs)
    after = kmsenv.jobkey.stats()
    acc.add([(after["pid"], before, after["kms_decrypts"])])


def encrypt_and_count(spark, monkeypatch, df, key, **kwargs):
    """Run encrypt_column on df (written to the noop sink) with a probe in the
    tasks; returns {pid: KMS Decrypts that process made during the job}."""
    acc = spark.sparkContext.accumulator([], _ListParam())
    monkeypatch.setattr(kmsenv.spark, "_encrypt_batches", functools.partial(_probe, acc, kmsenv.spark._encrypt_batches))
    enc = kmsenv.spark.encrypt_column(df, "email", key, **kwargs)
    monkeypatch.undo()
    enc.write.format("noop").mode("overwrite").save()
    per_pid = defaultdict(list)
    for pid, before, after in acc.value:
        per_pid[pid].append((before, after))
    assert sum(len(v) for v in per_pid.values()) == df.rdd.getNumPartitions()
    return {pid: max(a for _, a in spans) - min(b for b, _ in spans) for pid, spans in per_pid.items()}


# ---------------------------------------------------------------- KMS call counts


@pytest.mark.parametrize("fmt,partitions", [("alibaba", 8), ("compact", 8), ("alibaba", 32)])
def test_kms_calls_scale_with_worker_processes(spark, local_kms, provider, monkeypatch, fmt, partitions):
    before = local_kms.stats()
    job = JobKey.create(provider, encryption_context={"table": "users"})
    assert calls(local_kms, before) == {HZ: {"GenerateDataKey": 1}, BJ: {"Encrypt": 1}, SH: {"Encrypt": 1}}

    before = local_kms.stats()
    per_pid = encrypt_and_count(spark, monkeypatch, source(spark, partitions=partitions), job, format=fmt)
    # Exactly one Decrypt per Python worker process that ran tasks (2 with
    # local[2] and worker reuse), whether 8 or 32 partitions.
    assert all(n == 1 for n in per_pid.values()), per_pid
    assert 1 <= len(per_pid) <= 2
    assert calls(local_kms, before) == {HZ: {"Decrypt": len(per_pid)}}


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", ["alibaba", "compact"])
def test_round_trip_in_spark(spark, local_kms, provider, fmt):
    src = source(spark)
    job = JobKey.create(provider)
    enc = kmsenv.spark.encrypt_column(src, "email", job, format=fmt)
    assert dict(enc.dtypes) == {"id": "bigint", "email": "binary"}
    before = local_kms.stats()
    dec = kmsenv.spark.decrypt_column(enc, "email", job)
    assert dict(dec.dtypes) == {"id": "bigint", "email": "string"}
    assert mismatches(dec) == (ROWS, 0)
    # At most one Decrypt per Python worker process: a stage that runs both
    # mapInArrow steps has two Python workers per task slot (4 with local[2]).
    assert set(calls(local_kms, before)) <= {HZ}
    assert calls(local_kms, before).get(HZ, {}).get("Decrypt", 0) <= 4


def test_alibaba_values_are_standalone_messages(spark, provider):
    job = JobKey.create(provider, encryption_context={"purpose": "spark-test"})
    enc = kmsenv.spark.encrypt_column(source(spark, rows=1000, partitions=4), "email", job, output="sealed")
    row = enc.where("id = 777").first()
    assert row.email == "user0000777@example.com"  # output=: the source column stays
    result = kmsenv.decrypt(bytes(row.sealed), provider, expected_encryption_context={"purpose": "spark-test"})
    assert result.plaintext == b"user0000777@example.com"


def test_compact_values_are_45_bytes_longer(spark, provider):
    store = DictKeyHeaderStore()
    enc = kmsenv.spark.encrypt_column(
        source(spark, rows=50_000, partitions=4), "email", provider, output="sealed", format="compact", key_store=store
    )
    overhead = enc.select((F.length("sealed") - F.length("email")).alias("d")).agg(F.min("d"), F.max("d")).first()
    assert tuple(overhead) == (45, 45)
    # A reader with only the store and a WorkerSpec (no JobKey) reads it back.
    dec = kmsenv.spark.decrypt_column(
        enc, "sealed", WorkerSpec.from_provider(provider), key_store=store, output="plain"
    )
    assert mismatches(dec, "plain") == (50_000, 0)


def test_nulls_stay_null(spark, provider):
    with_nulls = f"CASE WHEN id % 3 = 0 THEN NULL ELSE {EMAIL} END"
    df = spark.range(0, 1000, numPartitions=2).selectExpr("id", f"{with_nulls} AS email")
    job = JobKey.create(provider)
    enc = kmsenv.spark.encrypt_column(df, "email", job, format="compact")
    assert enc.where("email IS NULL").count() == 334
    dec = kmsenv.spark.decrypt_column(enc, "email", job)
    assert mismatches(dec, expected=with_nulls) == (1000, 0)
    raw = kmsenv.spark.decrypt_column(enc, "email", job, as_string=False, output="raw")
    assert raw.schema["raw"].dataType.simpleString() == "binary"
    assert bytes(raw.where("id = 1").first().raw) == b"user0000001@example.com"


# ---------------------------------------------------------------- row binding


def test_compact_row_binding_and_a_swapped_value(spark, provider):
    src = source(spark, rows=5000, partitions=4)
    job = JobKey.create(provider)
    enc = kmsenv.spark.encrypt_column(src, "email", job, format="compact", aad_column="id").cache()
    dec = kmsenv.spark.decrypt_column(enc, "email", job, aad_column="id")
    assert mismatches(dec) == (5000, 0)

    # Row 11's value moved into row 10: authenticated against row id 10, it fails.
    moved = enc.where("id = 11").first().email
    swapped = enc.withColumn("email", F.when(F.col("id") == 10, F.lit(moved)).otherwise(F.col("email")))
    with pytest.raises(Exception) as info:
        kmsenv.spark.decrypt_column(swapped, "email", job, aad_column="id").collect()
    assert "authentication failed (altered, moved to another row or column, or not sealed under this key header" in str(
        info.value
    )

    # Bound values without their row ids are refused, and say why.
    with pytest.raises(Exception) as info:
        kmsenv.spark.decrypt_column(enc, "email", job).collect()
    assert "the value is bound to a row id: pass the row id column" in str(info.value)

    # Values are bound to their column's name: a renamed column is read with
    # the name it was written under.
    renamed = enc.withColumnRenamed("email", "mail")
    with pytest.raises(Exception) as info:
        kmsenv.spark.decrypt_column(renamed, "mail", job, aad_column="id").collect()
    assert "a renamed column is read with the name it was written under" in str(info.value)
    dec = kmsenv.spark.decrypt_column(renamed, "mail", job, aad_column="id", aad_name="email")
    assert mismatches(dec, "mail") == (5000, 0)
    enc.unpersist()


# ---------------------------------------------------------------- readers and failover


def _driver_sealed(spark, provider, rows=20_000):
    """A fresh JobKey and a DataFrame sealed with it on the driver, so no
    Spark worker has its data key cached yet."""
    job = JobKey.create(provider)
    emails = pa.array([f"user{i:07d}@example.com" for i in range(rows)])
    sealed = kmsenv.arrow.encrypt_array(emails, job)
    table = pa.table({"id": pa.array(range(rows), pa.int64()), "email": sealed})
    return job, spark.createDataFrame(table).repartition(4)


def test_reader_prefers_its_region_and_fails_over(spark, local_kms, provider):
    spec = WorkerSpec.from_provider(
        provider,
        kms=KmsSpec(
            endpoints=local_kms.endpoints,
            prefer_regions=(HZ, BJ, SH),
            max_attempts=2,
            backoff_base=0.001,
            backoff_max=0.005,
            connect_timeout=2.0,
            read_timeout=5.0,
        ),
    )
    _, df = _driver_sealed(spark, provider)
    before = local_kms.stats()
    dec = kmsenv.spark.decrypt_column(df, "email", spec)
    assert mismatches(dec) == (20_000, 0)
    first = calls(local_kms, before)
    # The count itself is covered by the encrypt tests (one per worker pid);
    # here Spark may have started a fresh Python worker, so allow up to 2 per slot.
    assert set(first) == {HZ} and 1 <= first[HZ]["Decrypt"] <= 4

    _, df = _driver_sealed(spark, provider)
    local_kms.set_fault(HZ, down=True)
    try:
        before = local_kms.stats()
        dec = kmsenv.spark.decrypt_column(df, "email", spec)
        assert mismatches(dec) == (20_000, 0)
        second = calls(local_kms, before)
    finally:
        local_kms.set_fault(HZ)
    # cn-hangzhou refused connections (not counted); cn-beijing answered.
    assert set(second) == {BJ} and 1 <= second[BJ]["Decrypt"] <= 4


# ---------------------------------------------------------------- the budget and misuse


def test_alibaba_partition_budget_is_enforced(spark, provider):
    df = source(spark, rows=2000, partitions=4)  # 500 values per partition
    small = JobKey.create(provider, max_messages_per_key=1000)  # 1 key: 250 per partition
    with pytest.raises(Exception) as info:
        kmsenv.spark.encrypt_column(df, "email", small).write.format("noop").mode("overwrite").save()
    assert "over its share of the data key's budget" in str(info.value)
    enough = JobKey.create(provider, max_messages_per_key=1000, rows=2000)  # 2 keys: 500 per partition
    kmsenv.spark.encrypt_column(df, "email", enough).write.format("noop").mode("overwrite").save()
    # The compact format derives subkeys: no budget.
    kmsenv.spark.encrypt_column(df, "email", small, format="compact").write.format("noop").mode("overwrite").save()


def test_misuse_is_refused_on_the_driver(spark, provider):
    df = source(spark, rows=10, partitions=1)
    job = JobKey.create(provider)
    with pytest.raises(ConfigurationError, match="no input column 'nope'"):
        kmsenv.spark.encrypt_column(df, "nope", job)
    with pytest.raises(ConfigurationError, match="string or binary"):
        kmsenv.spark.encrypt_column(df, "id", job)
    with pytest.raises(ConfigurationError, match="needs format='compact'"):
        kmsenv.spark.encrypt_column(df, "email", job, aad_column="id")
    with pytest.raises(ConfigurationError, match="key header"):
        kmsenv.spark.encrypt_column(df, "email", provider, format="compact")
    with pytest.raises(ConfigurationError, match="can only decrypt"):
        kmsenv.spark.encrypt_column(df, "email", WorkerSpec.from_provider(provider))
    with pytest.raises(ConfigurationError, match="JobKey.create"):
        kmsenv.spark.encrypt_column(df, "email", job, rows=10)
    with pytest.raises(ConfigurationError, match="already exists"):
        kmsenv.spark.encrypt_column(df, "email", job, output="id")


# ---------------------------------------------------------------- arrow_udf


def test_encrypt_udf(spark, provider):
    if not hasattr(F, "arrow_udf"):
        pytest.skip("arrow_udf needs Spark >= 4.1")
    src = source(spark, rows=20_000, partitions=4)
    job = JobKey.create(provider)
    enc = src.select("id", kmsenv.spark.encrypt_udf(job, partitions=4)("email").alias("email"))
    dec = kmsenv.spark.decrypt_column(enc, "email", job)
    assert mismatches(dec) == (20_000, 0)

    bound = src.select(
        "id", kmsenv.spark.encrypt_udf(job, format="compact", aad_name="email")("email", "id").alias("email")
    )
    dec = kmsenv.spark.decrypt_column(bound, "email", job, aad_column="id")
    assert mismatches(dec) == (20_000, 0)
    # The UDF cannot see its alias: the compact format needs the column name.
    with pytest.raises(ConfigurationError, match="aad_name="):
        kmsenv.spark.encrypt_udf(job, format="compact")
