#!/usr/bin/env python
"""Throughput of kmsenv.localkms on loopback.

    python bench/bench_localkms.py [--seconds N] [--rounds R] [--inprocess]

Starts a LocalKms with one region and measures requests/s for Encrypt, Decrypt and
GenerateDataKey with 1 and 4 client threads, twice:

* ``official``: the unmodified alibabacloud-kms20160120 client (one Client per thread);
  this is what kmsenv sees, client overhead included.
* ``official`` with ``--processes`` client processes (default 2), one thread each: the
  official client needs ~1.5 ms of CPU per call in its own stack, so one Python process
  cannot drive more than ~600 calls/s however many threads it uses.
* ``lean``: pre-signed ACS3-HMAC-SHA256 requests written to keep-alive raw sockets,
  parsing only status line and Content-Length: the server's own ceiling.

By default the server runs in a child process so that server and client do not share
one GIL (as with ``kmsenv kms serve``); ``--inprocess`` hosts it in this process instead.
Each cell is the median of ``--rounds`` rounds of ``--seconds`` seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import multiprocessing
import os
import socket
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

try:  # an installed kmsenv wins (it has the built core); else the source tree
    import kmsenv  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ.pop(_var, None)  # the SDK would send loopback traffic to a proxy

from alibabacloud_kms20160120 import models as M  # noqa: E402
from alibabacloud_kms20160120.client import Client  # noqa: E402
from alibabacloud_tea_openapi.models import Config  # noqa: E402

from kmsenv.localkms import LocalKms  # noqa: E402
from kmsenv.localkms.signing import canonical_query  # noqa: E402

REGION = "cn-hangzhou"
OPS = ("Encrypt", "Decrypt", "GenerateDataKey")
# Not fork: a forked child would inherit the SDK's pooled keep-alive socket, and two
# children writing to one socket read each other's responses.
MP = multiprocessing.get_context("spawn")
THREADS = (1, 4)


# -- server hosting -------------------------------------------------------------------


def _serve_child(conn) -> None:
    with LocalKms(regions=[REGION]) as kms:
        conn.send((kms.hosts[REGION], kms.access_key_id, kms.access_key_secret, kms.create_key(REGION)))
        conn.recv()  # parent says stop


class Server:
    def __init__(self, inprocess: bool) -> None:
        self._kms = self._proc = None
        if inprocess:
            self._kms = LocalKms(regions=[REGION]).start()
            self.host = self._kms.hosts[REGION]
            self.ak, self.secret = self._kms.access_key_id, self._kms.access_key_secret
            self.arn = self._kms.create_key(REGION)
        else:
            self._conn, child = MP.Pipe()
            self._proc = MP.Process(target=_serve_child, args=(child,), daemon=True)
            self._proc.start()
            self.host, self.ak, self.secret, self.arn = self._conn.recv()

    def stop(self) -> None:
        if self._kms:
            self._kms.stop()
        if self._proc:
            self._conn.send("stop")
            self._proc.join(10)


# -- drivers --------------------------------------------------------------------------


def official_worker(server: Server, op: str, blob: str):
    client = Client(
        Config(
            access_key_id=server.ak,
            access_key_secret=server.secret,
            endpoint=server.host,
            protocol="http",
            region_id=REGION,
        )
    )
    calls = {
        "Encrypt": lambda: client.encrypt(M.EncryptRequest(key_id=server.arn, plaintext="aGVsbG8gd29ybGQ=")),
        "Decrypt": lambda: client.decrypt(M.DecryptRequest(ciphertext_blob=blob)),
        "GenerateDataKey": lambda: client.generate_data_key(M.GenerateDataKeyRequest(key_id=server.arn)),
    }
    return calls[op]


def _presign(server: Server, action: str, params: dict) -> bytes:
    """One complete V3-signed HTTP request (each with its own nonce: replays are refused)."""
    headers = {
        "host": server.host,
        "x-acs-action": action,
        "x-acs-version": "2016-01-20",
        "x-acs-date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "x-acs-signature-nonce": uuid.uuid4().hex,
        "x-acs-content-sha256": hashlib.sha256(b"").hexdigest(),
        "content-type": "application/x-www-form-urlencoded",
        "accept": "application/json",
    }
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            "POST",
            "/",
            canonical_query(params.items()),
            "".join(f"{h}:{headers[h]}\n" for h in sorted(headers)),
            signed,
            headers["x-acs-content-sha256"],
        ]
    )
    sts = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
    sig = hmac.new(server.secret.encode(), sts.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = f"ACS3-HMAC-SHA256 Credential={server.ak},SignedHeaders={signed},Signature={sig}"
    lines = [f"POST /?{urlencode(params)} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


class LeanConnection:
    def __init__(self, host: str) -> None:
        h, p = host.rsplit(":", 1)
        self.sock = socket.create_connection((h, int(p)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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


def _official_process(server_info, op, blob, seconds, barrier, results) -> None:
    server = Server.__new__(Server)
    server.host, server.ak, server.secret, server.arn = server_info
    call = official_worker(server, op, blob)
    call()
    barrier.wait()
    n, deadline = 0, time.perf_counter() + seconds
    began = time.perf_counter()
    while time.perf_counter() < deadline:
        call()
        n += 1
    results.put(n / (time.perf_counter() - began))


def run_processes(server: "Server", op: str, blob: str, processes: int, seconds: float) -> float:
    """Aggregate requests/s of ``processes`` processes, each one official-client thread."""
    barrier, results = MP.Barrier(processes), MP.Queue()
    info = (server.host, server.ak, server.secret, server.arn)
    procs = [
        MP.Process(target=_official_process, args=(info, op, blob, seconds, barrier, results)) for _ in range(processes)
    ]
    for p in procs:
        p.start()
    rates = [results.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def run_round(make_call, threads: int, seconds: float) -> float:
    """Requests/s of ``threads`` threads, each calling its own ``make_call()`` callable."""
    calls = [make_call(i) for i in range(threads)]
    for call in calls:
        call()  # warm up: connect, first-use costs
    counts = [0] * threads
    errors: list[BaseException] = []
    start_gate = threading.Barrier(threads + 1)
    deadline = [0.0]

    def worker(i: int) -> None:
        call, n = calls[i], 0
        start_gate.wait()
        try:
            while time.perf_counter() < deadline[0]:
                call()
                n += 1
        except BaseException as exc:
            errors.append(exc)
        counts[i] = n

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    deadline[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start_gate.wait()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise errors[0]
    return sum(counts) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per cell (median shown)")
    parser.add_argument(
        "--inprocess", action="store_true", help="run the server in this process (shares the GIL with clients)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=2,
        help="client processes for the multi-process official-client row "
        "(the official client is GIL-bound at ~1.5 ms CPU per call)",
    )
    args = parser.parse_args()

    server = Server(args.inprocess)
    try:
        blob = (
            Client(
                Config(
                    access_key_id=server.ak,
                    access_key_secret=server.secret,
                    endpoint=server.host,
                    protocol="http",
                    region_id=REGION,
                )
            )
            .encrypt(M.EncryptRequest(key_id=server.arn, plaintext="aGVsbG8gd29ybGQ="))
            .body.ciphertext_blob
        )
        params = {
            "Encrypt": {"KeyId": server.arn, "Plaintext": "aGVsbG8gd29ybGQ="},
            "Decrypt": {"CiphertextBlob": blob},
            "GenerateDataKey": {"KeyId": server.arn},
        }

        def lean_factory(op: str, needed: int):
            def make(_i: int):
                conn = LeanConnection(server.host)
                pending = [_presign(server, op, params[op]) for _ in range(needed)]

                def call() -> None:
                    if conn.roundtrip(pending.pop()) != 200:
                        raise RuntimeError(f"{op}: non-200 response")

                return call

            return make

        mode = "in-process" if args.inprocess else "child process"
        print(
            f"localkms benchmark: server in {mode}, {os.cpu_count()} CPUs, "
            f"{args.rounds} x {args.seconds:g}s rounds, median requests/s"
        )
        print(f"{'client':<9} {'operation':<16}" + "".join(f"{f'{t} thr':>10}" for t in THREADS))
        results = {}
        for client_kind in ("official", "lean"):
            for op in OPS:
                row = []
                for threads in THREADS:
                    rates = []
                    for _ in range(args.rounds):
                        if client_kind == "official":
                            make = lambda _i, op=op: official_worker(server, op, blob)  # noqa
                        else:  # generous request budget: each pre-signed request is single-use
                            make = lean_factory(op, int(20000 * args.seconds / threads) + 100)
                        rates.append(run_round(make, threads, args.seconds))
                    row.append(statistics.median(rates))
                    results[f"{client_kind}/{op}/{threads}"] = round(row[-1], 1)
                print(f"{client_kind:<9} {op:<16}" + "".join(f"{r:>10.0f}" for r in row), flush=True)
        for op in OPS:
            rate = statistics.median(
                run_processes(server, op, blob, args.processes, args.seconds) for _ in range(args.rounds)
            )
            results[f"official-{args.processes}proc/{op}"] = round(rate, 1)
            print(f"official {op:<16} {args.processes} client processes x 1 thread: {rate:>6.0f}", flush=True)
        print(json.dumps(results))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
