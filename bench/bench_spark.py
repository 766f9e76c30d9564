#!/usr/bin/env python
"""Spark scale-out of kmsenv.spark: throughput and KMS calls per run.

    python bench/bench_spark.py [--rows 10000000] [--partitions 16] [--reps 3]
        [--formats alibaba,compact] [--output bench/results/scaleout_spark.json]

Starts a LocalKms (3 regions) and a local[2] SparkSession, generates N rows of
~29-byte e-mail-like strings in Spark SQL, and times (median of --reps):

* ``jvm``: generate + ``write.format("noop")``, no Python at all;
* ``passthrough``: the same through a ``mapInArrow`` that returns its batches
  (the engine's Arrow round trip, no crypto);
* ``encrypt <format>``: ``kmsenv.spark.encrypt_column`` to ``noop``, with a
  new JobKey per rep (its 1 GenerateDataKey + 2 Encrypt are in the counts);
* ``decrypt <format>``: ``kmsenv.spark.decrypt_column`` of a Parquet file
  written once from the encrypted column, to ``noop``; before each rep every
  pooled Python worker drops its cached data keys, so the readers are fresh
  (their Decrypts are in the counts).

Each row reports rows/s, KMS calls per run (LocalKms stats diff), the average
encrypted value length, and the Python worker processes (descendants of this
process running ``pyspark.daemon``) alive after the run / started during it.
``--rows 200000 --reps 1`` is a quick smoke run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import site
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

# kmsenv as installed, else from this checkout's src/.
if importlib.util.find_spec("kmsenv") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ.pop(_var, None)

import kmsenv  # noqa: E402
from kmsenv import DictKeyHeaderStore, JobKey, KmsKeyProvider  # noqa: E402
from kmsenv.kms import Kms  # noqa: E402
from kmsenv.localkms import LocalKms  # noqa: E402

REGIONS = ("cn-hangzhou", "cn-beijing", "cn-shanghai")
EMAIL = "concat('user', lpad(id, 7, '0'), '.', lpad((id * 2654435761) % 100000, 5, '0'), '@example.com')"


def passthrough(batches):
    """mapInArrow baseline: the Arrow round trip through a Python worker."""
    yield from batches


def clear_worker_caches(batches):
    """Run in each pooled Python worker so the next decrypt acts as a fresh reader."""
    import pyarrow as pa

    import kmsenv.jobkey

    for _ in batches:
        pass
    kmsenv.jobkey.clear_cache()
    yield pa.RecordBatch.from_pydict({"n": pa.array([0], pa.int64())})


def import_root() -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(kmsenv.__file__)))
    sites = {os.path.abspath(p) for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]]}
    return None if root in sites else root


def python_workers() -> set[int]:
    """Pids of Spark Python workers (forked children of a pyspark.daemon) under this process."""
    import psutil

    me = psutil.Process()
    out = set()
    for p in me.children(recursive=True):
        try:
            parent = p.parent()
            if "pyspark.daemon" in " ".join(p.cmdline()) and parent and "pyspark.daemon" in " ".join(parent.cmdline()):
                out.add(p.pid)
        except psutil.Error:
            continue
    return out


def kms_diff(server: LocalKms, before: dict) -> dict:
    out = {}
    for region, actions in server.stats().items():
        diff = {a: n - before.get(region, {}).get(a, 0) for a, n in actions.items()}
        diff = {a: n for a, n in diff.items() if n}
        if diff:
            out[region] = diff
    return out


def total(diff: dict) -> int:
    return sum(n for actions in diff.values() for n in actions.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--formats", default="alibaba,compact")
    ap.add_argument("--output", default="bench/results/scaleout_spark.json")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="2g")
    args = ap.parse_args()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]

    with LocalKms(regions=list(REGIONS)) as server:
        arns = [server.create_key(r) for r in REGIONS]
        kms = Kms(
            access_key_id=server.access_key_id, access_key_secret=server.access_key_secret, endpoints=server.endpoints
        )
        provider = KmsKeyProvider(*arns, kms=kms)
        os.environ["ALIBABA_CLOUD_ACCESS_KEY_ID"] = server.access_key_id
        os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = server.access_key_secret
        os.environ["PYSPARK_PYTHON"] = sys.executable
        for var in ("KMSENV_PREFER_REGIONS", "KMSENV_KMS_ENDPOINTS"):
            os.environ.pop(var, None)
        root = import_root()
        if root:
            os.environ["PYTHONPATH"] = os.pathsep.join(
                [root] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
            )

        from pyspark.sql import SparkSession

        import kmsenv.spark

        t0 = time.perf_counter()
        spark = (
            SparkSession.builder.master(args.master)
            .appName("kmsenv-bench-spark")
            .config("spark.sql.shuffle.partitions", "4")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.memory", args.driver_memory)
            .getOrCreate()
        )
        spark.sparkContext.setLogLevel("ERROR")
        startup = time.perf_counter() - t0
        tmp = Path(tempfile.mkdtemp(prefix="kmsenv-bench-spark-"))
        results = []
        try:

            def gen():
                return spark.range(0, args.rows, numPartitions=args.partitions).selectExpr("id", f"{EMAIL} AS email")

            plain_len = gen().selectExpr("avg(length(email))").first()[0]

            def measure(
                name: str, build, fmt: str | None = None, value_bytes: float | None = None, before_rep=None
            ) -> None:
                times, kms_calls, detail, started = [], [], None, set()
                for _ in range(args.reps):
                    if before_rep is not None:
                        before_rep()
                    workers_before = python_workers()
                    before = server.stats()
                    t = time.perf_counter()
                    build().write.format("noop").mode("overwrite").save()
                    times.append(time.perf_counter() - t)
                    d = kms_diff(server, before)
                    kms_calls.append(total(d))
                    detail = d
                    started |= python_workers() - workers_before
                med = statistics.median(times)
                row = {
                    "variant": name,
                    "format": fmt,
                    "rows": args.rows,
                    "partitions": args.partitions,
                    "seconds": times,
                    "median_s": med,
                    "rows_per_s": args.rows / med,
                    "kms_calls_per_run": kms_calls,
                    "kms_calls_last_run": detail,
                    "bytes_per_value": value_bytes,
                    "python_workers_alive": len(python_workers()),
                    "python_workers_started": len(started),
                }
                results.append(row)
                print(
                    f"  {name:<18} {med:8.2f} s  {args.rows / med / 1e3:9.0f} k rows/s  KMS {kms_calls}  {detail}",
                    flush=True,
                )

            print(
                f"Spark {spark.version}, {args.master}, {args.rows:,} rows x {args.partitions} partitions, "
                f"plaintext {plain_len:.1f} B, session start {startup:.1f} s",
                flush=True,
            )
            measure("jvm", gen, value_bytes=plain_len)
            # Start the Python workers outside the timings (a real job pays this once).
            gen().limit(10).mapInArrow(passthrough, gen().schema).collect()
            spark.range(0, 8, numPartitions=8).mapInArrow(passthrough, "id long").collect()

            def fresh_readers() -> None:
                spark.range(0, 8, numPartitions=8).mapInArrow(clear_worker_caches, "n long").collect()

            measure("passthrough", lambda: gen().mapInArrow(passthrough, gen().schema), value_bytes=plain_len)
            for fmt in formats:
                store = DictKeyHeaderStore()

                def encrypted(fmt=fmt, store=store):
                    job = JobKey.create(provider, key_store=store)  # a new key per rep
                    return kmsenv.spark.encrypt_column(gen(), "email", job, format=fmt)

                path = str(tmp / fmt)
                encrypted().write.mode("overwrite").parquet(path)
                stored = spark.read.parquet(path)
                size = stored.selectExpr("avg(length(email))").first()[0]
                measure(f"encrypt {fmt}", encrypted, fmt, size)
                spec = kmsenv.WorkerSpec.from_provider(provider)
                measure(
                    f"decrypt {fmt}",
                    lambda: kmsenv.spark.decrypt_column(spark.read.parquet(path), "email", spec, key_store=store),
                    fmt,
                    size,
                    before_rep=fresh_readers,
                )
                # The scale-out issue's done criterion: every row decrypts in
                # another region with the primary down, checked row by row in SQL.
                reader = kmsenv.WorkerSpec.from_provider(
                    provider, kms=kmsenv.KmsSpec.from_kms(kms, prefer_regions=("cn-beijing", "cn-shanghai"))
                )
                fresh_readers()
                server.set_fault("cn-hangzhou", down=True)
                before = server.stats()
                t = time.perf_counter()
                dec = kmsenv.spark.decrypt_column(
                    spark.read.parquet(path), "email", reader, key_store=store, output="plain"
                )
                bad = dec.selectExpr(
                    f"sum(CASE WHEN plain = {EMAIL} THEN 0 ELSE 1 END) AS bad", "count(*) AS n"
                ).first()
                took = time.perf_counter() - t
                server.set_fault("cn-hangzhou")
                d = kms_diff(server, before)
                results.append(
                    {
                        "variant": f"decrypt+verify {fmt}, cn-hangzhou down",
                        "format": fmt,
                        "rows": bad["n"],
                        "partitions": args.partitions,
                        "seconds": [took],
                        "median_s": took,
                        "rows_per_s": bad["n"] / took,
                        "kms_calls_per_run": [total(d)],
                        "kms_calls_last_run": d,
                        "bytes_per_value": size,
                        "python_workers_alive": len(python_workers()),
                        "python_workers_started": 0,
                        "mismatches": bad["bad"],
                    }
                )
                print(
                    f"  decrypt+verify {fmt}, cn-hangzhou down: {bad['n']:,} rows, {bad['bad']} mismatches, "
                    f"{took:.2f} s, KMS {d}",
                    flush=True,
                )
                assert bad["n"] == args.rows and bad["bad"] == 0
                shutil.rmtree(path, ignore_errors=True)
        finally:
            spark.stop()
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    header = "| variant | median s | rows/s | KMS calls/run | bytes/value | Python workers (alive / started) |"
    print(header)
    print("|---|---|---|---|---|---|")
    for r in results:
        bpv = f"{r['bytes_per_value']:.1f}" if r["bytes_per_value"] is not None else ""
        print(
            f"| {r['variant']} | {r['median_s']:.2f} | {r['rows_per_s'] / 1e3:,.0f} k | "
            f"{r['kms_calls_per_run']} | {bpv} | {r['python_workers_alive']} / {r['python_workers_started']} |"
        )
    out = {
        "benchmark": "bench_spark",
        "rows": args.rows,
        "partitions": args.partitions,
        "reps": args.reps,
        "master": args.master,
        "spark": spark.version,
        "python": platform.python_version(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "session_start_s": startup,
        "plaintext_bytes": plain_len,
        "backend": kmsenv.backend_info() if hasattr(kmsenv, "backend_info") else None,
        "results": results,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
