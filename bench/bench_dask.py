"""Scale-out benchmark: kmsenv.dask on a LocalCluster (2 worker processes x 1 thread).

    python bench/bench_dask.py [--rows 10000000] [--partitions 16] [--formats alibaba,compact]
                               [--reps 3] [--output bench/results/scaleout_dask.json]

A LocalKms with 3 regions (real HTTP on loopback) counts every KMS call. The
rows (~29-byte e-mail-like strings) are generated on the workers
(``dd.from_map``), never shipped from the client. Variants, medians of
``--reps`` runs, each forced with a per-partition ``len``:

* generate only (the baseline every other variant includes)
* ``map_partitions`` pass-through (Dask's own per-partition cost)
* encrypt, per format: a new JobKey per run (its KMS calls are reported apart)
* decrypt, per format: of a persisted encrypted DataFrame, with the workers'
  key caches cleared before each run (so each run pays its Decrypts)

Plus, in-process: the cost of the two pandas representations of an encrypted
column (``binary[pyarrow]``, which kmsenv.dask uses, and ``bytes`` objects).
"""

from __future__ import annotations

import argparse
from pathlib import Path
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

import dask
import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from distributed import Client, LocalCluster, wait

# kmsenv as installed, else from this checkout's src/.
if importlib.util.find_spec("kmsenv") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import kmsenv  # noqa: E402
import kmsenv.dask as kd
from kmsenv.kms import Kms
from kmsenv.localkms import LocalKms

REGIONS = ("cn-hangzhou", "cn-beijing", "cn-shanghai")


def make_rows(bounds: tuple[int, int], run: int = 0) -> pd.DataFrame:
    """Partition [start, stop) of the synthetic e-mail column (runs on a worker;
    ``run`` only makes each run's graph keys new)."""
    start, stop = bounds
    values = [f"user{i:07d}.{(i * 2654435761) % 100000:05d}@example.com" for i in range(start, stop)]
    return pd.DataFrame({"email": pd.array(values, dtype="str")}, index=pd.RangeIndex(start, stop))


def pass_through(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(email=df["email"])


def mismatches(df: pd.DataFrame) -> int:
    """Decrypted values that differ from the generated ones (rows are known by index)."""
    expected = [f"user{i:07d}.{(i * 2654435761) % 100000:05d}@example.com" for i in df.index]
    return int(sum(1 for got, want in zip(df["email"], expected) if got != want))


def value_bytes(s: pd.Series) -> int:
    return pc.sum(pc.binary_length(pa.array(s))).as_py() or 0


def kmsenv_path() -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(kmsenv.__file__)))
    return None if "site-packages" in root or "dist-packages" in root else root


def kms_calls(server: LocalKms) -> dict[str, int]:
    return {f"{r}:{a}": n for r, actions in server.stats().items() for a, n in actions.items() if n}


def total(calls: dict[str, int]) -> int:
    return sum(calls.values())


def conversion_costs(n: int = 1_000_000) -> dict[str, float]:
    """Seconds per 1M values to turn an Arrow binary array into a pandas column and back."""
    arr = pa.array([b"x" * 74] * n, pa.binary())
    out = {}
    t = time.perf_counter()
    s1 = pd.Series(pd.arrays.ArrowExtensionArray(arr))
    out["to_pandas_arrowdtype_s"] = time.perf_counter() - t
    t = time.perf_counter()
    s2 = pd.Series(arr.to_numpy(zero_copy_only=False))
    out["to_pandas_bytes_objects_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pa.array(s1)
    out["from_pandas_arrowdtype_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pa.array(s2)
    out["from_pandas_bytes_objects_s"] = time.perf_counter() - t
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--formats", default="alibaba,compact")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--output", default="bench/results/scaleout_dask.json")
    args = ap.parse_args()
    formats = [f for f in args.formats.split(",") if f]

    results: list[dict] = []
    with LocalKms(regions=list(REGIONS)) as server:
        arns = [server.create_key(r) for r in REGIONS]
        os.environ["ALIBABA_CLOUD_ACCESS_KEY_ID"] = server.access_key_id
        os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = server.access_key_secret
        path = kmsenv_path()
        if path:
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (path, os.environ.get("PYTHONPATH")) if p)
        provider = kmsenv.KmsKeyProvider(
            *arns,
            kms=Kms(
                access_key_id=server.access_key_id,
                access_key_secret=server.access_key_secret,
                endpoints=server.endpoints,
            ),
        )
        t = time.perf_counter()
        cluster = LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            worker_dashboard_address=None,
        )
        client = Client(cluster)
        start_s = time.perf_counter() - t
        workers = len(client.scheduler_info()["workers"])
        step = -(-args.rows // args.partitions)
        bounds = [(i, min(i + step, args.rows)) for i in range(0, args.rows, step)]
        meta = make_rows((0, 0))
        reps = iter(range(10**9))

        def fresh():
            """The generated rows under a new graph key (so no run reuses another's results)."""
            return dd.from_map(make_rows, bounds, meta=meta, enforce_metadata=False, args=(next(reps),))

        def tasks_on_scheduler() -> int:
            return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))

        def settle(baseline: int) -> None:
            """Wait until the scheduler has released the last run's tasks."""
            deadline = time.monotonic() + 30
            while tasks_on_scheduler() > baseline and time.monotonic() < deadline:
                time.sleep(0.05)

        def run(name: str, fmt: str | None, build, *, new_job: bool = False, clear: bool = False, extra=None) -> None:
            times, calls, create_calls = [], [], []
            baseline = tasks_on_scheduler()
            for _ in range(args.reps):
                settle(baseline)
                if clear:
                    client.run(kmsenv.jobkey.clear_cache)
                server.reset_stats()
                job = kmsenv.JobKey.create(provider) if new_job else None
                create_calls.append(total(kms_calls(server)))
                server.reset_stats()
                t0 = time.perf_counter()
                n = sum(build(job, fresh()).map_partitions(len).compute())
                times.append(time.perf_counter() - t0)
                assert n == args.rows, (name, n)
                calls.append(kms_calls(server))
            med = statistics.median(times)
            row = {
                "variant": name,
                "format": fmt,
                "rows": args.rows,
                "partitions": len(bounds),
                "workers": workers,
                "median_s": round(med, 3),
                "times_s": [round(x, 3) for x in times],
                "rows_per_s": round(args.rows / med),
                "kms_calls_per_run": total(calls[-1]),
                "kms_calls_detail": calls[-1],
                "jobkey_create_calls": create_calls[-1] if new_job else 0,
            }
            row.update(extra or {})
            results.append(row)
            print(
                f"  {name:<24} {fmt or '':<8} {med:8.2f} s  {row['rows_per_s']:>11,} rows/s  "
                f"KMS {row['kms_calls_per_run']} (+{row['jobkey_create_calls']} create)",
                flush=True,
            )

        print(
            f"dask {dask.__version__}, {workers} workers x 1 thread, {args.rows:,} rows, {len(bounds)} partitions, "
            f"LocalCluster start {start_s:.2f} s",
            flush=True,
        )
        run("generate", None, lambda job, base: base)
        run("map_partitions pass", None, lambda job, base: base.map_partitions(pass_through, meta=meta))
        for fmt in formats:
            run(
                "encrypt",
                fmt,
                lambda job, base, fmt=fmt: kd.encrypt_column(base, "email", job, format=fmt),
                new_job=True,
            )
            job = kmsenv.JobKey.create(provider)
            enc = kd.encrypt_column(fresh(), "email", job, format=fmt).persist()
            wait(enc)
            size = sum(enc["email"].map_partitions(value_bytes, meta=("email", "int64")).compute())
            per_value = round(size / args.rows, 1)
            results[-1]["bytes_per_value"] = per_value
            # The decrypt graph is the same each run: settle() makes sure the
            # previous run's results are gone, and the KMS counts prove each run decrypted.
            run(
                "decrypt",
                fmt,
                lambda _job, _base, enc=enc, job=job: kd.decrypt_column(enc, "email", job),
                clear=True,
                extra={"bytes_per_value": per_value},
            )
            # The done criterion of the scale-out issue: every row decrypts in
            # another region, with the primary region down, checked row by row.
            reader = kmsenv.WorkerSpec.from_provider(
                provider, kms=kmsenv.KmsSpec.from_kms(provider.kms, prefer_regions=("cn-beijing", "cn-shanghai"))
            )
            settle(0)
            client.run(kmsenv.jobkey.clear_cache)
            server.set_fault("cn-hangzhou", down=True)
            server.reset_stats()
            t0 = time.perf_counter()
            store = kmsenv.DictKeyHeaderStore(job.headers)  # what a reader keeps (key table, sidecar)
            bad = sum(
                kd.decrypt_column(enc, "email", reader, key_store=store)
                .map_partitions(mismatches, meta=("n", "int64"))
                .compute()
            )
            took = time.perf_counter() - t0
            server.set_fault("cn-hangzhou")
            calls = kms_calls(server)
            results.append(
                {
                    "variant": "decrypt+verify, cn-hangzhou down",
                    "format": fmt,
                    "rows": args.rows,
                    "partitions": len(bounds),
                    "workers": workers,
                    "median_s": round(took, 3),
                    "times_s": [round(took, 3)],
                    "rows_per_s": round(args.rows / took),
                    "kms_calls_per_run": total(calls),
                    "kms_calls_detail": calls,
                    "jobkey_create_calls": 0,
                    "mismatches": bad,
                    "bytes_per_value": per_value,
                }
            )
            print(f"  decrypt+verify, cn-hangzhou down {fmt}: {bad} mismatches, {took:.2f} s, KMS {calls}", flush=True)
            assert bad == 0
            del enc
            settle(0)
            client.run(kmsenv.jobkey.clear_cache)
        client.close()
        cluster.close()

    conv = conversion_costs()
    print()
    print(
        f"| variant ({args.rows:,} rows, {len(bounds)} partitions, {workers} workers) | format | median | rows/s | KMS calls / run | bytes / value |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        kms = f"{r['kms_calls_per_run']}" + (
            f" (+{r['jobkey_create_calls']} JobKey.create)" if r["jobkey_create_calls"] else ""
        )
        print(
            f"| {r['variant']} | {r['format'] or '-'} | {r['median_s']:.2f} s | {r['rows_per_s']:,} | {kms} | {r.get('bytes_per_value', '-')} |"
        )
    print()
    print("pandas column of 1M encrypted values (74 B), seconds: " + ", ".join(f"{k} {v:.4f}" for k, v in conv.items()))

    doc = {
        "benchmark": "scaleout_dask",
        "python": platform.python_version(),
        "dask": dask.__version__,
        "pandas": pd.__version__,
        "pyarrow": pa.__version__,
        "kmsenv": kmsenv.__version__,
        "cpus": os.cpu_count(),
        "rows": args.rows,
        "partitions": len(bounds),
        "workers": args.workers,
        "threads_per_worker": 1,
        "reps": args.reps,
        "regions": list(REGIONS),
        "cluster_start_s": round(start_s, 2),
        "results": results,
        "pandas_conversion_per_1m": {k: round(v, 5) for k, v in conv.items()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
