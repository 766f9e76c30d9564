#!/usr/bin/env python
"""Column encryption in one process: kmsenv.arrow against per-value Python.

    python bench/bench_columns.py [--rows 10000000] [--batch 1000000] [--rounds 3]
                                  [--output bench/results/columns.json]

A column of ~29-byte e-mail-like strings (as in shared/design/scale-out.md),
encrypted with a JobKey (3 regions on LocalKms, so the Alibaba-format values
carry 3 EDKs) in batches of ``--batch`` rows, as an engine would hand them over.
Contenders, interleaved per round, medians reported:

* ``kmsenv.arrow compact`` / ``alibaba``: encrypt_array / decrypt_array on
  Arrow buffers (one native call per batch);
* ``encrypt_many`` / ``decrypt_many``: kmsenv's list API after ``to_pylist()``
  and ``encode()`` (the Python objects an adapter without the Arrow entry point
  would build);
* ``AESGCM per value``: ``cryptography``'s AESGCM.encrypt in a Python loop over
  the same values with os.urandom IVs (bare AEAD, no message format at all: the
  floor for any per-value Python code).

Also reported: bytes per value for both formats and the KMS calls made.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

# kmsenv as installed, else from this checkout's src/.
if importlib.util.find_spec("kmsenv") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pyarrow as pa  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

import kmsenv  # noqa: E402
from kmsenv import arrow as ka  # noqa: E402
from kmsenv.localkms import LocalKms  # noqa: E402

REGIONS = ["cn-hangzhou", "cn-beijing", "cn-shanghai"]


def column(rows: int, start: int = 0) -> pa.Array:
    import pyarrow.compute as pc

    ids = pa.array(range(start, start + rows), pa.int64())
    left = pc.utf8_lpad(pc.cast(ids, pa.string()), 7, "0")
    right = pc.utf8_lpad(pc.cast(pc.bit_wise_and(pc.multiply(ids, 2654435761), 0x7FFFFFFF), pa.string()), 5, "0")
    right = pc.utf8_slice_codeunits(right, -5)
    return pc.binary_join_element_wise("user", left, ".", right, "@example.com", "")


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--batch", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--python-rows", type=int, default=1_000_000, help="rows for the per-value Python contenders")
    ap.add_argument("--output", default=str(Path(__file__).parent / "results" / "columns.json"))
    args = ap.parse_args()

    with LocalKms(regions=REGIONS) as server:
        arns = [server.create_key(r) for r in REGIONS]
        kms = kmsenv.Kms(
            endpoints=server.endpoints, access_key_id=server.access_key_id, access_key_secret=server.access_key_secret
        )
        provider = kmsenv.KmsKeyProvider(*arns, kms=kms)
        batches = [column(min(args.batch, args.rows - s), s) for s in range(0, args.rows, args.batch)]
        py_batches = [b for b in batches][: max(1, args.python_rows // args.batch)]
        py_rows = sum(len(b) for b in py_batches)
        server.reset_stats()
        job = kmsenv.JobKey.create(provider, encryption_context={"table": "users", "column": "email"}, rows=args.rows)
        data_key = job.data_key(job.headers[0])
        aead = AESGCM(bytes(data_key))
        data_key[:] = bytes(len(data_key))
        times: dict[str, list[float]] = {}
        sizes: dict[str, float] = {}
        for _ in range(args.rounds):
            for fmt in ("compact", "alibaba"):
                enc = []
                times.setdefault(f"arrow {fmt} encrypt", []).append(
                    timed(lambda: enc.extend(ka.encrypt_array(b, job, format=fmt) for b in batches)) / args.rows
                )
                sizes[fmt] = sum(e.nbytes - 4 * (len(e) + 1) for e in enc) / args.rows
                times.setdefault(f"arrow {fmt} decrypt", []).append(
                    timed(lambda: [ka.decrypt_array(e, job, format=fmt) for e in enc]) / args.rows
                )
                enc.clear()  # free the round's output before the next
            lists = []
            times.setdefault("encrypt_many (to_pylist)", []).append(
                timed(
                    lambda: lists.extend(
                        kmsenv.encrypt_many(
                            [v.encode() for v in b.to_pylist()], provider, encryption_context={"t": "u"}
                        )
                        for b in py_batches
                    )
                )
                / py_rows
            )
            times.setdefault("decrypt_many", []).append(
                timed(lambda: [kmsenv.decrypt_many(m, provider) for m in lists]) / py_rows
            )
            lists.clear()

            def per_value() -> None:
                for b in py_batches:
                    for v in b.to_pylist():
                        aead.encrypt(os.urandom(12), v.encode(), None)

            times.setdefault("AESGCM per value (bare AEAD)", []).append(timed(per_value) / py_rows)
        calls = server.stats()

    med = {k: statistics.median(v) for k, v in times.items()}
    floor = med["AESGCM per value (bare AEAD)"]
    print(
        f"{args.rows:,} rows of 29 bytes, batches of {args.batch:,}, {args.rounds} rounds (medians); "
        f"per-value Python contenders on {py_rows:,} rows"
    )
    print(f"| {'case':32} | {'rows/s':>12} | {'vs AESGCM per value':>20} |")
    print(f"|{'-' * 34}|{'-' * 14}|{'-' * 22}|")
    for k, v in med.items():
        print(f"| {k:32} | {1 / v:12,.0f} | {floor / v:19.2f}x |")
    print(f"bytes per value: compact {sizes['compact']:.1f}, alibaba {sizes['alibaba']:.1f} (plaintext 29)")
    print(f"KMS calls: {json.dumps(calls)}")
    out = {
        "rows": args.rows,
        "batch": args.batch,
        "rounds": args.rounds,
        "python_rows": py_rows,
        "rows_per_s": {k: 1 / v for k, v in med.items()},
        "bytes_per_value": sizes,
        "kms_calls": calls,
        "cpu": kmsenv.backend_info().get("features"),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
