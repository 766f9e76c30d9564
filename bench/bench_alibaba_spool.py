#!/usr/bin/env python
"""What the alibaba-stream decryption spool costs: decrypt_stream time and peak
RSS, file to file, for two (or more) kmsenv source trees side by side.

    python bench/bench_alibaba_spool.py --tree old=/work/base/src --tree new=src \\
        [--sizes 256,1024] [--runs 5] [--dir /tmp] [--output file|null]

Encrypts one alibaba-stream message per size (MiB) under a LocalKms CMK into
``--dir``, then decrypts it into a file next to it (or /dev/null): each run is
a fresh child process importing one tree (so its peak RSS is its own), the
trees taking turns run by run, each after an os.sync(). Prints, per size and
tree, the median wall seconds, MiB/s, CPU seconds (user, system) and peak RSS
(and its growth over the imported-and-ready process). The spool, if any, goes
next to the output file, into ``--dir``; with ``--output null``, into the temp
dir (TMPDIR).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MIB = 1 << 20


def child(tree: str, message: str, output: str) -> None:
    """One timed decrypt_stream with the kmsenv found in ``tree``, after an
    untimed one of a small message (the KMS client's first call); prints JSON."""
    sys.path.insert(0, os.path.abspath(tree))
    import kmsenv
    from kmsenv.kms import Kms

    assert Path(kmsenv.__file__).resolve().is_relative_to(Path(tree).resolve()), kmsenv.__file__
    kms_info = json.loads(os.environ["KMSENV_BENCH_KMS"])
    kms = Kms(access_key_id=kms_info["id"], access_key_secret=kms_info["secret"], endpoints=kms_info["endpoints"])
    provider = kmsenv.KmsKeyProvider(kms_info["arn"], kms=kms)
    with open(kms_info["warm_up"], "rb") as src:
        kmsenv.decrypt_stream(src, io.BytesIO(), provider)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    with open(message, "rb") as src, open(output, "wb") as dst:
        result = kmsenv.decrypt_stream(src, dst, provider)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    if output != os.devnull:
        os.unlink(output)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "user": after.ru_utime - before.ru_utime,
                "sys": after.ru_stime - before.ru_stime,
                "peak_kib": after.ru_maxrss,
                "ready_kib": before.ru_maxrss,
                "bytes_out": result.bytes_out,
                "backend": kmsenv.crypto.get_backend().name,
            }
        )
    )


def encrypt(path: Path, size: int, provider) -> None:
    import kmsenv

    block = os.urandom(MIB)
    with open(path, "wb") as raw, kmsenv.open(raw, "wb", provider=provider, format="alibaba-stream") as w:
        for _ in range(size // MIB):
            w.write(block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", required=True, help="name=path of a kmsenv src/ tree")
    parser.add_argument("--sizes", default="256,1024", help="message sizes in MiB, comma-separated")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default="/tmp", help="where the messages, outputs (and spools) go")
    parser.add_argument("--output", choices=("file", "null"), default="file", help="decrypt to a file or /dev/null")
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)

    import kmsenv
    from kmsenv.kms import Kms
    from kmsenv.localkms import LocalKms

    work = Path(args.dir) / f"kmsenv-spool-bench-{os.getpid()}"
    work.mkdir()
    with LocalKms(regions=["cn-hangzhou"]) as server:
        arn = server.create_key("cn-hangzhou")
        kms = Kms(
            access_key_id=server.access_key_id, access_key_secret=server.access_key_secret, endpoints=server.endpoints
        )
        warm_up = work / "warm-up.kms"
        encrypt(warm_up, MIB, kmsenv.KmsKeyProvider(arn, kms=kms))
        kms_info = {
            "id": server.access_key_id,
            "secret": server.access_key_secret,
            "endpoints": server.endpoints,
            "arn": arn,
            "warm_up": str(warm_up),
        }
        env = {**os.environ, "KMSENV_BENCH_KMS": json.dumps(kms_info)}
        try:
            for size in (int(s) for s in args.sizes.split(",")):
                message = work / f"msg-{size}.kms"
                encrypt(message, size * MIB, kmsenv.KmsKeyProvider(arn, kms=kms))
                runs: dict[str, list[dict]] = {name: [] for name in trees}
                for _ in range(args.runs):
                    for name, tree in trees.items():
                        os.sync()  # each run starts with no dirty pages from the last (or the encryption)
                        output = str(work / "plain") if args.output == "file" else os.devnull
                        out = subprocess.run(
                            [sys.executable, __file__, "--child", tree, str(message), output],
                            env=env,
                            check=True,
                            capture_output=True,
                            text=True,
                        ).stdout
                        run = json.loads(out)
                        assert run["bytes_out"] == size * MIB
                        runs[name].append(run)
                message.unlink()
                for name, rs in runs.items():
                    secs = statistics.median(r["seconds"] for r in rs)
                    peak = statistics.median(r["peak_kib"] for r in rs) / 1024
                    growth = statistics.median(r["peak_kib"] - r["ready_kib"] for r in rs) / 1024
                    user = statistics.median(r["user"] for r in rs)
                    system = statistics.median(r["sys"] for r in rs)
                    each = " ".join(f"{r['seconds']:.3f}" for r in rs)
                    print(
                        f"{size:5d} MiB  {name:6s} {rs[0]['backend']:6s}  median {secs:6.3f} s "
                        f"({size / secs:5.0f} MiB/s; CPU user {user:.3f} s, sys {system:.3f} s)  runs {each}  "
                        f"peak RSS {peak:5.1f} MiB (+{growth:.1f} over ready)",
                        flush=True,
                    )
        finally:
            for leftover in work.iterdir():
                leftover.unlink()
            work.rmdir()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
    else:
        main()
