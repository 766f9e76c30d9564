#!/usr/bin/env python
"""KMS 3.0 instance gateways on loopback: LocalKms's gateway throughput, and what one CMK
with replica regions saves against one CMK per region.

    python bench/bench_instances.py [--seconds N] [--rounds R] [--latency-ms MS] [--encrypts K]
                                    [--only throughput|replicas]

Two parts:

* ``throughput``: requests/s of one LocalKms instance gateway (HTTPS, ClientKey
  signatures, protobuf), the server in a child process (as with ``kmsenv kms serve``):

  - ``lean``: one Encrypt request signed once and written again and again to keep-alive
    TLS connections, parsing only the status line and Content-Length: the server's
    ceiling.  The instance protocol has no nonce (a request may be replayed within the
    Date window), so one signature serves a whole round.  ``--processes`` client
    processes x 1 and 4 threads: one Python client process is GIL-bound.
  - ``InstanceClient``: kmsenv's own instance client (signing, TLS, protobuf, errors)
    doing Encrypt and Decrypt from 1 and 4 threads of this process.

* ``replicas``: KMS calls and latency per ``kmsenv.encrypt`` for N region-specific CMKs
  (N = 2, 3; each region its own primary instance) against one CMK with N-1 replica
  regions (a primary instance and its replicas), every instance answering after
  ``--latency-ms`` (a LocalKms latency fault), so that what a call costs on a real
  network shows.  Both forms run in this process, side by side, each encrypt with a
  new data key (no cache); the table gives medians of ``--encrypts`` encrypts, the
  calls counted by the gateways, the EDKs and header bytes of the message, and the
  ratios.  Decrypt with the first region's instance down is measured too: it is what
  the replica form is for.

Each throughput cell is the median of ``--rounds`` rounds of ``--seconds`` seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import socket
import ssl
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

try:  # an installed kmsenv wins (it has the built core); else the source tree
    import kmsenv
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import kmsenv
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ.pop(_var, None)

from kmsenv.instance import auth, load_client_key, proto  # noqa: E402
from kmsenv.instance.client import InstanceClient  # noqa: E402
from kmsenv.kms import InstanceEndpoint, Kms  # noqa: E402
from kmsenv.localkms import InstanceSpec, LocalKms  # noqa: E402

from bench_localkms import run_round  # noqa: E402  (the same timed rounds as the shared gateway's bench)

REGION = "cn-hangzhou"
REGIONS = ("cn-hangzhou", "cn-shanghai", "cn-beijing")
THREADS = (1, 4)
DATA_KEY = b"k" * 32
SAMPLE = b"one row of the orders table\n" * 40
CONTEXT = {"table": "orders"}
# Not fork: the children must not inherit this process's threads and sockets.
MP = multiprocessing.get_context("spawn")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- part 1: gateway throughput ---------------------------------------------------------


def _serve_child(conn: Any) -> None:
    with LocalKms(regions=[REGION], instances={"kst-bench": REGION}) as kms:
        arn = kms.create_key(REGION)
        gw = kms.instances["kst-bench"]
        conn.send(
            {
                "key_id": arn.rsplit("/", 1)[1],
                "endpoint": gw.endpoint,
                "key_file": gw.client_key.key_file,
                "password": gw.client_key.password,
                "ca": gw.ca_file,
            }
        )
        conn.recv()  # the parent says stop


class ChildServer:
    """A LocalKms with one instance gateway in a child process (its own GIL)."""

    def __init__(self) -> None:
        self._conn, child = MP.Pipe()
        self._proc = MP.Process(target=_serve_child, args=(child,), daemon=True)
        self._proc.start()
        self.info: dict[str, str] = self._conn.recv()

    def stop(self) -> None:
        self._conn.send("stop")
        self._proc.join(10)


def presigned_encrypt(info: dict[str, str]) -> bytes:
    """One complete signed Encrypt request (replayable: the protocol has no nonce)."""
    client_key = load_client_key(path=info["key_file"], password=info["password"])
    body = proto.encode("EncryptRequest", {"KeyId": info["key_id"], "Plaintext": DATA_KEY})
    headers = auth.signed_headers(client_key, "Encrypt", body)
    head = "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body


class LeanTls:
    """A keep-alive TLS connection reading only the status and Content-Length."""

    def __init__(self, info: dict[str, str]) -> None:
        host, port = info["endpoint"].rsplit(":", 1)
        raw = socket.create_connection((host, int(port)))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ssl.create_default_context(cafile=info["ca"]).wrap_socket(raw, server_hostname=host)
        self.buf = b""

    def roundtrip(self, request: bytes) -> int:
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        status = int(head[9:12])
        length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.buf = rest[length:]
        return status

    def close(self) -> None:
        self.sock.close()


def _lean_factory(info: dict[str, str]) -> Callable[[int], Callable[[], None]]:
    request = presigned_encrypt(info)

    def make(_i: int) -> Callable[[], None]:
        conn = LeanTls(info)

        def call() -> None:
            if conn.roundtrip(request) != 200:
                raise RuntimeError("Encrypt: non-200 answer")

        return call

    return make


def _lean_process(info: dict[str, str], threads: int, seconds: float, barrier: Any, results: Any) -> None:
    make = _lean_factory(info)
    barrier.wait()
    results.put(run_round(make, threads, seconds))


def lean_processes(info: dict[str, str], processes: int, threads: int, seconds: float) -> float:
    """Aggregate requests/s of ``processes`` lean client processes x ``threads`` threads."""
    barrier, results = MP.Barrier(processes), MP.Queue()
    procs = [
        MP.Process(target=_lean_process, args=(info, threads, seconds, barrier, results)) for _ in range(processes)
    ]
    for p in procs:
        p.start()
    rates = [results.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    return float(sum(rates))


def throughput(args: argparse.Namespace, results: dict[str, Any]) -> None:
    server = ChildServer()
    try:
        info = server.info
        print(
            f"\ninstance gateway throughput: server in a child process, {args.rounds} x {args.seconds:g}s rounds, "
            "median requests/s"
        )
        print(f"{'client':<34}" + "".join(f"{f'{t} thr':>10}" for t in THREADS))
        client = InstanceClient(
            info["endpoint"], client_key_file=info["key_file"], password=info["password"], ca=info["ca"]
        )
        sealed = client.encrypt(info["key_id"], DATA_KEY)
        rows: list[tuple[str, Callable[[int], Callable[[], None]]]] = [
            ("lean Encrypt, 1 process", _lean_factory(info)),
            ("InstanceClient Encrypt", lambda _i: lambda: client.encrypt(info["key_id"], DATA_KEY) and None),
            (
                "InstanceClient Decrypt",
                lambda _i: (
                    lambda: client.decrypt(sealed.ciphertext_blob, sealed.iv, version_id=sealed.version_id) and None
                ),
            ),
        ]
        for label, make in rows:
            row = [statistics.median(run_round(make, t, args.seconds) for _ in range(args.rounds)) for t in THREADS]
            results.update({f"{label}/{t}thr": round(r, 1) for t, r in zip(THREADS, row)})
            print(f"{label:<34}" + "".join(f"{r:>10.0f}" for r in row), flush=True)
        label = f"lean Encrypt, {args.processes} processes"
        row = [
            statistics.median(lean_processes(info, args.processes, t, args.seconds) for _ in range(args.rounds))
            for t in THREADS
        ]
        results.update({f"{label}/{t}thr": round(r, 1) for t, r in zip(THREADS, row)})
        print(f"{label:<34}" + "".join(f"{r:>10.0f}" for r in row), flush=True)
    finally:
        server.stop()


# -- part 2: N region CMKs against one CMK with replica regions ---------------------------


def _endpoint(gw: Any) -> InstanceEndpoint:
    return InstanceEndpoint(
        gw.endpoint,
        client_key_file=gw.client_key.key_file,
        password_file=gw.client_key.password_file,
        ca_file=gw.ca_file,
    )


def _calls(local: LocalKms) -> int:
    """Instance calls counted since the last call, then zeroed."""
    total = sum(sum(gw.stats().values()) for gw in local.instances.values())
    for gw in local.instances.values():
        gw.reset_stats()
    return total


def _measure(local: LocalKms, run: Callable[[], Any], times: int) -> tuple[float, float, Any]:
    """Median ms and instance calls per run of ``run``, and its last result."""
    run()  # warm: TLS sessions, the clients' first use
    _calls(local)
    took = []
    result = None
    for _ in range(times):
        started = time.perf_counter()
        result = run()
        took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took), _calls(local) / times, result


def replicas(args: argparse.Namespace, results: dict[str, Any]) -> None:
    regions = list(REGIONS)
    primary = {r: f"kst-own-{i}" for i, r in enumerate(regions)}  # one primary instance per region
    replica = {r: f"kst-rep-{i}" for i, r in enumerate(regions[1:], start=1)}  # replicas of the first
    instances: dict[str, str | InstanceSpec] = dict((i, r) for r, i in primary.items())
    instances.update({i: InstanceSpec(r, replica_of=primary[regions[0]]) for r, i in replica.items()})
    print(
        f"\nper encrypt of {len(SAMPLE)} bytes (a new data key each), every instance answering after "
        f"{args.latency_ms:g} ms; median of {args.encrypts}"
    )
    print(
        f"{'N':>2} {'form':<28} {'calls':>6} {'encrypt ms':>11} {'EDKs':>5} {'header B':>9}"
        f" {'decrypt, 1st down ms':>21}"
    )
    # The failover warnings kmsenv logs for every decrypt with the first instance down.
    logging.getLogger("kmsenv").setLevel(logging.ERROR)
    with LocalKms(regions=regions, instances=instances) as local:
        arns = {r: local.create_key(r) for r in regions}
        for gw in local.instances.values():
            gw.set_fault(latency_ms=args.latency_ms)
        for n in (2, 3):
            used = regions[:n]
            options = dict(max_attempts=2, connect_timeout=1.0, backoff_base=0.0, backoff_max=0.0)
            per_region_kms = Kms(instances={r: _endpoint(local.instances[primary[r]]) for r in used}, **options)
            replica_kms = Kms(
                instances={r: _endpoint(local.instances[primary[r] if r == regions[0] else replica[r]]) for r in used},
                **options,
            )
            forms = {
                f"{n} region CMKs": kmsenv.KmsKeyProvider(*(arns[r] for r in used), kms=per_region_kms),
                f"1 CMK + {n - 1} replica region(s)": kmsenv.KmsKeyProvider(
                    arns[regions[0]], kms=replica_kms, replica_regions=used[1:]
                ),
            }
            row: dict[str, dict[str, float]] = {}
            for form, provider in forms.items():
                ms, calls, message = _measure(
                    local,
                    lambda p=provider: kmsenv.encrypt(SAMPLE, p, encryption_context=CONTEXT).ciphertext,
                    args.encrypts,
                )
                header = kmsenv.parse_header(message)
                first = local.instances[primary[regions[0]]]
                first.set_fault(down=True)
                try:
                    down_ms, _, plain = _measure(
                        local, lambda p=provider, m=message: kmsenv.decrypt(m, p).plaintext, args.encrypts
                    )
                finally:
                    first.set_fault(latency_ms=args.latency_ms)
                assert plain == SAMPLE
                row[form] = {
                    "calls": calls,
                    "encrypt_ms": round(ms, 1),
                    "edks": len(header.encrypted_data_keys),
                    "header_bytes": len(header.encoded),
                    "decrypt_first_down_ms": round(down_ms, 1),
                }
                print(
                    f"{n:>2} {form:<28} {calls:>6.1f} {ms:>11.1f} {row[form]['edks']:>5} "
                    f"{row[form]['header_bytes']:>9} {down_ms:>21.1f}",
                    flush=True,
                )
            many, one = row[f"{n} region CMKs"], row[f"1 CMK + {n - 1} replica region(s)"]
            ratios = {
                "calls": many["calls"] / one["calls"],
                "encrypt_ms": many["encrypt_ms"] / one["encrypt_ms"],
                "header_bytes": many["header_bytes"] / one["header_bytes"],
            }
            print(
                f"{'':>2} {'ratio region CMKs / replica':<28} {ratios['calls']:>6.2f} {ratios['encrypt_ms']:>11.2f}"
                f" {'':>5} {ratios['header_bytes']:>9.2f}",
                flush=True,
            )
            results[f"replicas/N={n}"] = {"forms": row, "ratios": {k: round(v, 2) for k, v in ratios.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one throughput round")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per cell (median shown)")
    parser.add_argument("--processes", type=int, default=2, help="lean client processes for the multi-process row")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="latency fault of every instance (replicas)")
    parser.add_argument("--encrypts", type=int, default=15, help="encrypts per replicas cell (median shown)")
    parser.add_argument("--only", choices=("throughput", "replicas"), help="run one part only")
    args = parser.parse_args()
    print(
        f"kmsenv {kmsenv.__version__} instance benchmark: {cpu_name()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, crypto backend {kmsenv.backend_name()}"
    )
    results: dict[str, Any] = {"cpu": cpu_name(), "cpus": os.cpu_count()}
    if args.only in (None, "throughput"):
        throughput(args, results)
    if args.only in (None, "replicas"):
        replicas(args, results)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
