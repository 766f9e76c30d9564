#!/usr/bin/env python
"""Peak memory (RSS) of encrypt_stream / decrypt_stream, file to file, per
format, at one input size (default 2 GiB).

    python bench/bench_stream_memory.py [SIZE] [--formats framed,alibaba-stream,alibaba]
        [--dir /tmp] [--via api|cli] [--input file|pipe] [--tree NAME=PATH ...] [--backend native|pure]

SIZE is bytes with an optional K/M/G suffix (binary): 2G, 512M. A plaintext
of that size is written to ``--dir``; each format is then encrypted into a
message there and decrypted into a file there (checked against the
plaintext's SHA-256), each step in a fresh child process so that its peak
RSS is its own. ``--via api`` (default) calls kmsenv.encrypt_stream /
decrypt_stream on files opened with open() and reports, besides the peak
(VmHWM, ru_maxrss), its growth over the child once imported and warmed up
(one KMS round trip done); ``--via cli`` runs ``python -m kmsenv encrypt|
decrypt -i ... -o ...`` and reports its ru_maxrss (from wait4). ``--input
pipe`` feeds the encryption from a pipe (``cat FILE |``): the input's length
is then unknown. ``--tree`` (repeatable) names kmsenv source trees to compare
(default: the installed kmsenv). KMS is a LocalKms over HTTP.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

MIB = 1 << 20
FORMATS = ("framed", "alibaba-stream", "alibaba")


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def vm_hwm_kib() -> int:
    """The process's peak resident set (VmHWM) in KiB; 0 where /proc has none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# ---------------------------------------------------------------- child (--via api)


def child(tree: str, op: str, fmt: str, src: str, dst: str, backend: str) -> None:
    """One encrypt_stream or decrypt_stream, after an untimed warm-up of a
    tiny message (imports, the KMS client's first call); prints JSON."""
    if tree:
        sys.path.insert(0, os.path.abspath(tree))
    import io

    import kmsenv
    from kmsenv.kms import Kms

    if tree:
        assert Path(kmsenv.__file__).resolve().is_relative_to(Path(tree).resolve()), kmsenv.__file__
    if backend:
        kmsenv.crypto.set_backend(backend)
    info = json.loads(os.environ["KMSENV_BENCH_KMS"])
    kms = Kms(access_key_id=info["id"], access_key_secret=info["secret"], endpoints=info["endpoints"])
    provider = kmsenv.KmsKeyProvider(info["arn"], kms=kms)
    warm = io.BytesIO()
    kmsenv.encrypt_stream(io.BytesIO(b"warm-up"), warm, provider, format=fmt)
    kmsenv.decrypt_stream(io.BytesIO(warm.getvalue()), io.BytesIO(), provider)
    ready_hwm, ready_max = vm_hwm_kib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    source = sys.stdin.buffer if src == "-" else open(src, "rb")  # noqa: SIM115 - closed below
    try:
        with open(dst, "wb") as out:
            if op == "encrypt":
                result = kmsenv.encrypt_stream(source, out, provider, format=fmt)
            else:
                result = kmsenv.decrypt_stream(source, out, provider)
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "user": after.ru_utime - before.ru_utime,
                "sys": after.ru_stime - before.ru_stime,
                "hwm_kib": vm_hwm_kib(),
                "maxrss_kib": after.ru_maxrss,
                "ready_hwm_kib": ready_hwm,
                "ready_maxrss_kib": ready_max,
                "bytes_in": result.bytes_in,
                "bytes_out": result.bytes_out,
                "backend": kmsenv.crypto.get_backend().name,
            }
        )
    )


# ---------------------------------------------------------------- parent


def run_child(argv: list[str], env: dict[str, str], stdin_file: str | None) -> tuple[str, int, float]:
    """Run argv (stdin: a pipe fed by ``cat stdin_file``, if given); return
    (stdout, its ru_maxrss in KiB from wait4, wall seconds)."""
    feeder = None
    start = time.perf_counter()
    if stdin_file is not None:
        feeder = subprocess.Popen(["cat", stdin_file], stdout=subprocess.PIPE)
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=feeder.stdout if feeder else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if feeder is not None:
        feeder.stdout.close()  # the child holds the read end now
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if feeder is not None:
        feeder.wait()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{err.decode(errors='replace')}")
    return out.decode(), usage.ru_maxrss, seconds


def write_plaintext(path: Path, size: int) -> str:
    sha = hashlib.sha256()
    block = bytearray(os.urandom(MIB))
    with open(path, "wb") as f:
        left = size
        while left:
            piece = memoryview(block)[: min(MIB, left)]
            f.write(piece)
            sha.update(piece)
            left -= len(piece)
            block[:8] = (int.from_bytes(block[:8], "little") + 1).to_bytes(8, "little")  # no two blocks alike
    return sha.hexdigest()


def sha256_of(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MIB):
            sha.update(chunk)
    return sha.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("size", nargs="?", default="2G", help="input size: bytes, or with a K/M/G suffix (2G)")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--dir", default="/tmp", help="where the plaintext, messages and outputs (and spools) go")
    parser.add_argument("--via", choices=("api", "cli"), default="api")
    parser.add_argument("--input", choices=("file", "pipe"), default="file", help="how the encryption reads")
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of a kmsenv src/ tree (repeatable)")
    parser.add_argument("--backend", choices=("native", "pure"), default="", help="crypto backend (api only)")
    args = parser.parse_args()
    size = parse_size(args.size)
    formats = [f for f in args.formats.split(",") if f]
    trees = dict(t.split("=", 1) for t in args.tree) or {"installed": ""}

    import kmsenv  # noqa: F401 - the LocalKms comes from whichever kmsenv is importable
    from kmsenv.localkms import LocalKms

    work = Path(args.dir) / f"kmsenv-memory-bench-{os.getpid()}"
    work.mkdir()
    plain, message, output = work / "plain", work / "message", work / "out"
    try:
        with LocalKms(regions=["cn-hangzhou"]) as server:
            arn = server.create_key("cn-hangzhou")
            info = {
                "id": server.access_key_id,
                "secret": server.access_key_secret,
                "endpoints": server.endpoints,
                "arn": arn,
            }
            env = {
                **os.environ,
                "KMSENV_BENCH_KMS": json.dumps(info),
                "KMSENV_KMS_ENDPOINTS": ",".join(f"{r}={u}" for r, u in server.endpoints.items()),
                "ALIBABA_CLOUD_ACCESS_KEY_ID": server.access_key_id,
                "ALIBABA_CLOUD_ACCESS_KEY_SECRET": server.access_key_secret,
            }
            digest = write_plaintext(plain, size)
            print(
                f"input {size} bytes ({size / MIB:.0f} MiB) in {args.dir}, via {args.via}, "
                f"encryption reading a {args.input}",
                flush=True,
            )
            for name, tree in trees.items():
                tree_env = dict(env)
                if tree:
                    tree_env["PYTHONPATH"] = os.path.abspath(tree)
                for fmt in formats:
                    for op in ("encrypt", "decrypt"):
                        src, dst = (plain, message) if op == "encrypt" else (message, output)
                        piped = op == "encrypt" and args.input == "pipe"
                        if args.via == "api":
                            argv = [
                                sys.executable,
                                os.path.abspath(__file__),
                                "--child",
                                tree,
                                op,
                                fmt,
                                "-" if piped else str(src),
                                str(dst),
                                args.backend,
                            ]
                        else:
                            argv = [
                                sys.executable,
                                "-m",
                                "kmsenv",
                                op,
                                "-k",
                                arn,
                                "-i",
                                "-" if piped else str(src),
                                "-o",
                                str(dst),
                            ]
                            if op == "encrypt":
                                argv += ["--format", fmt]
                        os.sync()  # no dirty pages of the previous step
                        out, maxrss, wall = run_child(argv, tree_env, str(src) if piped else None)
                        line = f"{name:9s} {fmt:14s} {op:7s} {wall:7.2f} s wall  peak RSS {maxrss / 1024:7.1f} MiB"
                        if args.via == "api":
                            r = json.loads(out)
                            growth = (r["hwm_kib"] - r["ready_hwm_kib"]) / 1024
                            line += (
                                f" (VmHWM {r['hwm_kib'] / 1024:.1f} MiB, +{growth:.1f} MiB over the ready "
                                f"process; {r['backend']}; CPU user {r['user']:.2f} s, sys {r['sys']:.2f} s)"
                            )
                        print(line, flush=True)
                    ok = sha256_of(output) == digest
                    print(f"{name:9s} {fmt:14s} round trip {'ok' if ok else 'MISMATCH'}", flush=True)
                    if not ok:
                        raise SystemExit(1)
                    message.unlink()
                    output.unlink()
    finally:
        for leftover in work.iterdir():
            leftover.unlink()
        work.rmdir()


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
    else:
        main()
