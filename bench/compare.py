#!/usr/bin/env python
"""kmsenv side by side with its peers: one command, one process, ratios.

    python bench/compare.py            # full run (several minutes)
    python bench/compare.py --quick    # CI smoke run (<= 90 s): every contender once

Every case runs its contenders in one process, interleaved round by round
(rounds outer, contenders inner); each cell gets at least ``--min-time``
seconds per round (timeit, GC off) and the tables show medians over rounds.
The machine is shared and noisy: compare numbers within a run (ratios), never
across runs.

Contenders (where they apply):
  kmsenv native / kmsenv pure   the C core / the pure-Python backend
  reference                     bench/reference_official.py: the official
                                Python SDK's way (asn1crypto DER, base64 EDK
                                texts, a new cryptography Cipher per call, one
                                message at a time, sequential KMS calls)
  AESGCM / cryptography SM4-GCM the floor for Python: bare cipher calls
                                (AESGCM: fixed nonce, object reused)
  gmssl                         pure-Python SM4 (CBC; it has no GCM), measured
                                at 64 B and 1 KiB, extrapolated per byte above

Writes bench/results/latest.json (machine info, every round, targets) and the
PNG charts in bench/results/. Targets are printed PASS/FAIL; the exit status
does not depend on them (timing assertions do not belong in CI).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import io
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from dataclasses import dataclass, field
from typing import Any, Callable

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
try:  # an installed kmsenv wins; else the source tree
    import kmsenv  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(ROOT, "src"))
for _p in (os.path.join(ROOT, "tests"), BENCH):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import kmsenv  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from kmsenv import crypto  # noqa: E402

import reference_official as ref  # noqa: E402
from helpers import ARN_BJ, ARN_HZ, FakeKmsProvider  # noqa: E402

KIB, MIB, GIB = 1024, 1024 * 1024, 1024 * 1024 * 1024
CTX = {"tenant": "acme", "purpose": "bench"}
AES, SM4 = kmsenv.Algorithm.AES_GCM_NOPADDING_256, kmsenv.Algorithm.SM4_GCM_NOPADDING_128
KMS_REGIONS = ("cn-hangzhou", "cn-beijing", "cn-shanghai")
LATENCY_MS = 50.0
RESULTS = os.path.join(BENCH, "results")
KMSENV_SRC = os.path.dirname(os.path.dirname(os.path.abspath(kmsenv.__file__)))

NATIVE, PURE, REF = "kmsenv native", "kmsenv pure", "reference"
AES_FLOOR, SM4_FLOOR, GMSSL = "AESGCM", "cryptography SM4-GCM", "gmssl SM4-CBC"


def size_name(n: int) -> str:
    if n >= GIB and n % GIB == 0:
        return f"{n // GIB} GiB"
    if n >= MIB and n % MIB == 0:
        return f"{n // MIB} MiB"
    if n >= KIB and n % KIB == 0:
        return f"{n // KIB} KiB"
    return f"{n} B"


def parse_sizes(text: str) -> list[int]:
    """``64,1KiB,1MiB`` -> [64, 1024, 1048576] (the message sizes to run)."""
    units = {"gib": GIB, "mib": MIB, "kib": KIB, "b": 1, "": 1}
    sizes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        digits = part.rstrip("bBkKmMgGiI")
        unit = part[len(digits) :].lower()
        if not digits.isdigit() or unit not in units or int(digits) <= 0:
            raise argparse.ArgumentTypeError(f"not a size: {part!r} (say 64, 1KiB, 1MiB or 64MiB)")
        sizes.append(int(digits) * units[unit])
    if not sizes:
        raise argparse.ArgumentTypeError("no sizes given")
    return sizes


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ measuring


def rate(fn: Callable[[], Any], min_time: float) -> float:
    """Calls per second of ``fn`` over at least ``min_time`` seconds (GC off)."""
    was = gc.isenabled()
    gc.disable()
    try:
        t = timeit.Timer(fn)
        n, elapsed = 1, t.timeit(1)
        while elapsed < min_time:
            n = max(n + 1, min(n * 100, int(n * min_time / max(elapsed, 1e-9) * 1.1)))
            elapsed = t.timeit(n)
        return n / elapsed
    finally:
        if was:
            gc.enable()


@dataclass
class Cell:
    """One contender in one case. ``fn`` does ``items`` items of ``nbytes`` each."""

    case: str
    contender: str
    fn: Callable[[], Any] | None
    items: int = 1
    nbytes: int = 0
    backend: str | None = None
    rounds: list[float] = field(default_factory=list)  # items/s per round
    note: str = ""

    def run(self, min_time: float) -> None:
        if self.fn is None:
            return
        if self.backend:
            crypto.set_backend(self.backend)
        self.rounds.append(rate(self.fn, min_time) * self.items)

    @property
    def ops(self) -> float | None:
        return statistics.median(self.rounds) if self.rounds else None

    @property
    def mbs(self) -> float | None:
        return None if self.ops is None or not self.nbytes else self.ops * self.nbytes / 1e6

    def as_json(self) -> dict[str, Any]:
        return {
            "ops_per_s": self.ops,
            "MB_per_s": self.mbs,
            "bytes_per_item": self.nbytes,
            "rounds_ops_per_s": [round(r, 3) for r in self.rounds],
            "note": self.note,
        }


class Results:
    def __init__(self) -> None:
        self.cells: dict[tuple[str, str], Cell] = {}
        self.cases: list[str] = []
        self.extra: dict[str, Any] = {}

    def add(self, cell: Cell) -> Cell:
        if cell.case not in self.cases:
            self.cases.append(cell.case)
        self.cells[(cell.case, cell.contender)] = cell
        return cell

    def get(self, case: str, contender: str) -> Cell | None:
        return self.cells.get((case, contender))

    def contenders(self, case: str) -> list[Cell]:
        return [c for (k, _), c in self.cells.items() if k == case]


def run_interleaved(cells: list[Cell], rounds: int, min_time: float, label: str) -> None:
    """Rounds outer, cells inner; the starting cell rotates each round."""
    for r in range(rounds):
        t0 = time.perf_counter()
        k = r % len(cells) if cells else 0
        for cell in cells[k:] + cells[:k]:
            cell.run(min_time)
        log(f"  {label}: round {r + 1}/{rounds} ({time.perf_counter() - t0:.1f}s)")
    crypto.set_backend("native" if kmsenv.native_available() else "pure")


# ------------------------------------------------------------------ providers


class FixedKeyProvider:
    """One data key wrapped for two CMKs (the stand-in KMS wrapping of the
    official vectors), handed out on every call: a warm cache with no
    bookkeeping and no KMS call. The same provider serves every contender."""

    def __init__(self, ctx: dict[str, str] = CTX) -> None:
        inner = FakeKmsProvider(ARN_BJ, ARN_HZ)
        self.keys = {}
        for alg in (AES, SM4):
            dk = inner.generate_data_key(alg, ctx)
            self.keys[alg] = (bytes(dk.plaintext), list(dk.encrypted_data_keys))
        self.by_len = {len(k): k for k, _ in self.keys.values()}

    # The engine passes an Algorithm (an IntEnum: it hashes as its value), so
    # the stand-in looks it up as it comes; converting it again cost 0.5 us,
    # a twentieth of a whole 1 KiB message, that no real cache spends.
    def generate_data_key(self, algorithm: Any, encryption_context: dict[str, str], **_: Any) -> kmsenv.DataKey:
        key, edks = self.keys[algorithm]
        return kmsenv.DataKey(key, edks)

    def decrypt_data_key(self, encrypted_data_keys: Any, algorithm: Any, encryption_context: Any) -> bytearray:
        return bytearray(self.keys[algorithm][0])


def caching_provider() -> kmsenv.CachingProvider:
    """kmsenv's own cache in front of the stand-in KMS: no KMS call once warm."""
    return kmsenv.CachingProvider(FakeKmsProvider(ARN_BJ, ARN_HZ), kmsenv.DataKeyCache(max_age=3600))


def backends() -> list[tuple[str, str]]:
    out = [(PURE, "pure")]
    if kmsenv.native_available():
        out.insert(0, (NATIVE, "native"))
    return out


# ------------------------------------------------------------------ case: complete messages


def sm4_gcm_encrypt(key: bytes, iv: bytes, data: bytes, aad: bytes) -> tuple[bytes, bytes]:
    enc = Cipher(algorithms.SM4(key), modes.GCM(iv)).encryptor()
    enc.authenticate_additional_data(aad)
    ct = enc.update(data) + enc.finalize()
    return ct, enc.tag


def sm4_gcm_decrypt(key: bytes, iv: bytes, ct: bytes, tag: bytes, aad: bytes) -> bytes:
    dec = Cipher(algorithms.SM4(key), modes.GCM(iv, tag)).decryptor()
    dec.authenticate_additional_data(aad)
    return dec.update(ct) + dec.finalize()


GMSSL_SIZES = (64, 1024)


def message_cells(res: Results, sizes: list[int], provider: Any) -> list[Cell]:
    from gmssl.sm4 import SM4_DECRYPT, SM4_ENCRYPT, CryptSM4

    cells: list[Cell] = []
    nonce, aad = bytes(12), bytes(32)
    for alg, alg_name in ((AES, "AES-256-GCM"), (SM4, "SM4-GCM")):
        key = os.urandom(alg.key_len)
        for size in sizes:
            pt = os.urandom(size)
            for op in ("encrypt", "decrypt"):
                case = f"message {alg_name} {op} {size_name(size)}"
                for name, backend in backends():
                    crypto.set_backend(backend)
                    if op == "encrypt":
                        fn = lambda pt=pt, alg=alg: kmsenv.encrypt(pt, provider, encryption_context=CTX, algorithm=alg)
                    else:
                        msg = kmsenv.encrypt(pt, provider, encryption_context=CTX, algorithm=alg).ciphertext
                        fn = lambda msg=msg: kmsenv.decrypt(msg, provider)
                    fn()
                    cells.append(res.add(Cell(case, name, fn, 1, size, backend)))
                if alg is AES and size <= KIB and kmsenv.native_available():
                    crypto.set_backend("native")
                    cp = caching_provider()
                    if op == "encrypt":
                        fn = lambda pt=pt, cp=cp: kmsenv.encrypt(pt, cp, encryption_context=CTX, algorithm=AES)
                    else:
                        msg = kmsenv.encrypt(pt, cp, encryption_context=CTX, algorithm=AES).ciphertext
                        fn = lambda msg=msg, cp=cp: kmsenv.decrypt(msg, cp)
                    fn()
                    cells.append(res.add(Cell(case, NATIVE + " + CachingProvider", fn, 1, size, "native")))
                if op == "encrypt":
                    fn = lambda pt=pt, alg=alg: ref.encrypt(pt, provider, CTX, int(alg))
                else:
                    rmsg = ref.encrypt(pt, provider, CTX, int(alg))
                    fn = lambda rmsg=rmsg: ref.decrypt(rmsg, provider)
                cells.append(res.add(Cell(case, REF, fn, 1, size)))
                if alg is AES:
                    a = AESGCM(key)
                    if op == "encrypt":
                        fn = lambda a=a, pt=pt: a.encrypt(nonce, pt, aad)
                    else:
                        ct = a.encrypt(nonce, pt, aad)
                        fn = lambda a=a, ct=ct: a.decrypt(nonce, ct, aad)
                    cells.append(res.add(Cell(case, AES_FLOOR, fn, 1, size)))
                else:
                    if op == "encrypt":
                        fn = lambda pt=pt, key=key: sm4_gcm_encrypt(key, nonce, pt, aad)
                    else:
                        ct, tag = sm4_gcm_encrypt(key, nonce, pt, aad)
                        fn = lambda ct=ct, tag=tag, key=key: sm4_gcm_decrypt(key, nonce, ct, tag, aad)
                    cells.append(res.add(Cell(case, SM4_FLOOR, fn, 1, size)))
                    if size in GMSSL_SIZES:
                        g = CryptSM4()
                        g.set_key(key, SM4_ENCRYPT if op == "encrypt" else SM4_DECRYPT)
                        iv16 = bytes(16)
                        if op == "encrypt":
                            fn = lambda g=g, pt=pt: g.crypt_cbc(iv16, pt)
                        else:
                            e = CryptSM4()
                            e.set_key(key, SM4_ENCRYPT)
                            ct = e.crypt_cbc(iv16, pt)
                            fn = lambda g=g, ct=ct: g.crypt_cbc(iv16, ct)
                        cells.append(res.add(Cell(case, GMSSL, fn, 1, size)))
                    else:  # extrapolated per byte from the largest measured size, filled in later
                        res.add(Cell(case, GMSSL, None, 1, size, note="extrapolated"))
    return cells


def extrapolate_gmssl(res: Results) -> None:
    for case in res.cases:
        cell = res.get(case, GMSSL)
        if cell is None or cell.note != "extrapolated":
            continue
        op = "encrypt" if " encrypt " in case else "decrypt"
        base = res.get(f"message SM4-GCM {op} {size_name(max(GMSSL_SIZES))}", GMSSL)
        if base is None or not base.rounds:
            continue
        per_byte = [r * base.nbytes for r in base.rounds]  # bytes/s, constant per byte
        cell.rounds = [b / cell.nbytes for b in per_byte]
        cell.note = f"extrapolated per byte from {size_name(base.nbytes)}"


# ------------------------------------------------------------------ case: batches


def batch_cells(res: Results, provider: Any, count: int, size: int = 100) -> list[Cell]:
    cells: list[Cell] = []
    fields = [os.urandom(size) for _ in range(count)]
    nonce, key = bytes(12), os.urandom(32)
    a = AESGCM(key)
    ct = a.encrypt(nonce, fields[0], None)
    for op in ("encrypt", "decrypt"):
        case = f"batch {count:,} x {size} B {op}"
        for name, backend in backends():
            crypto.set_backend(backend)
            if op == "encrypt":
                fn = lambda: kmsenv.encrypt_many(fields, provider, encryption_context=CTX)
            else:
                msgs = kmsenv.encrypt_many(fields, provider, encryption_context=CTX)
                fn = lambda msgs=msgs: kmsenv.decrypt_many(msgs, provider)
            fn()
            cells.append(res.add(Cell(case, name + " (*_many)", fn, count, size, backend)))
        if kmsenv.native_available():  # one message at a time, for scale
            crypto.set_backend("native")
            it = iter(range(1 << 62))
            if op == "encrypt":
                fn = lambda: kmsenv.encrypt(fields[next(it) % count], provider, encryption_context=CTX)
            else:
                singles = [kmsenv.encrypt(f, provider, encryption_context=CTX).ciphertext for f in fields[:1000]]
                fn = lambda singles=singles: kmsenv.decrypt(singles[next(it) % 1000], provider)
            cells.append(res.add(Cell(case, NATIVE + " (one by one)", fn, 1, size, "native")))
        it2 = iter(range(1 << 62))
        if op == "encrypt":
            fn = lambda: ref.encrypt(fields[next(it2) % count], provider, CTX)
        else:
            rmsgs = [ref.encrypt(f, provider, CTX) for f in fields[:200]]
            fn = lambda rmsgs=rmsgs: ref.decrypt(rmsgs[next(it2) % 200], provider)
        cells.append(res.add(Cell(case, REF + " (one by one)", fn, 1, size)))
        if op == "encrypt":
            fn = lambda: a.encrypt(nonce, fields[0], None)
        else:
            fn = lambda: a.decrypt(nonce, ct, None)
        cells.append(res.add(Cell(case, AES_FLOOR, fn, 1, size)))
    return cells


# ------------------------------------------------------------------ case: framed, in memory


class NullSink:
    def write(self, b: Any) -> int:
        return memoryview(b).nbytes

    def flush(self) -> None:
        pass


def framed_cells(res: Results, provider: Any, size: int) -> list[Cell]:
    cells: list[Cell] = []
    buf = os.urandom(size)
    frame = 64 * KIB
    case = f"framed in memory encrypt {size_name(size)}"
    for name, backend in backends():
        for threads in (2, 1) if backend == "native" else (1,):
            fn = lambda threads=threads: kmsenv.encrypt_stream(
                io.BytesIO(buf), NullSink(), provider, encryption_context=CTX, threads=threads
            )
            cells.append(res.add(Cell(case, f"{name} {threads} thr", fn, 1, size, backend)))
        if backend == "native":  # any other file object takes the batch-buffer path
            fn = lambda: kmsenv.encrypt_stream(
                io.BufferedReader(io.BytesIO(buf)), NullSink(), provider, encryption_context=CTX, threads=2
            )
            cells.append(res.add(Cell(case, f"{name} 2 thr, file-like source", fn, 1, size, backend)))
    a = AESGCM(os.urandom(32))
    out = bytearray(frame + 16)
    mv = memoryview(buf)
    nonce = bytes(12)

    def encrypt_into() -> None:
        for off in range(0, size, frame):
            a.encrypt_into(nonce, mv[off : off + frame], None, out)

    cells.append(res.add(Cell(case, "AESGCM.encrypt_into 64 KiB frames, 1 thr", encrypt_into, 1, size)))

    case = f"framed in memory decrypt {size_name(size)}"
    for name, backend in backends():
        crypto.set_backend(backend)
        sink = io.BytesIO()
        kmsenv.encrypt_stream(io.BytesIO(buf), sink, provider, encryption_context=CTX)
        msg = sink.getvalue()
        for threads in (2, 1) if backend == "native" else (1,):
            fn = lambda msg=msg, threads=threads: kmsenv.decrypt_stream(
                io.BytesIO(msg), NullSink(), provider, threads=threads
            )
            cells.append(res.add(Cell(case, f"{name} {threads} thr", fn, 1, size, backend)))
        if backend == "native":
            fn = lambda msg=msg: kmsenv.decrypt_stream(
                io.BufferedReader(io.BytesIO(msg)), NullSink(), provider, threads=2
            )
            cells.append(res.add(Cell(case, f"{name} 2 thr, file-like source", fn, 1, size, backend)))
    # Every frame of the input sealed on its own, so the peer reads 64 MiB of
    # ciphertext as kmsenv does (decrypting one frame over and over ran from
    # L2 and flattered it by about a third).
    sealed = frame + 16
    ct = bytearray(size // frame * sealed)
    ctv = memoryview(ct)
    for i, off in enumerate(range(0, size - size % frame, frame)):
        a.encrypt_into(nonce, mv[off : off + frame], None, ctv[i * sealed : (i + 1) * sealed])
    outd = bytearray(frame)

    def decrypt_into() -> None:
        for off in range(0, len(ct), sealed):
            a.decrypt_into(nonce, ctv[off : off + sealed], None, outd)

    cells.append(res.add(Cell(case, "AESGCM.decrypt_into 64 KiB frames, 1 thr", decrypt_into, 1, size)))
    return cells


# ------------------------------------------------------------------ LocalKms in a child process


def _kms_server(conn, region: str, access_key_id: str, access_key_secret: str) -> None:  # child process
    from kmsenv.localkms import LocalKms

    with LocalKms(regions=[region], access_key_id=access_key_id, access_key_secret=access_key_secret) as kms:
        conn.send((kms.endpoints[region], kms.create_key(region)))
        while True:
            cmd = conn.recv()
            if cmd[0] == "fault":
                kms.set_fault(region, **cmd[1])
                conn.send("ok")
            elif cmd[0] == "stats":
                conn.send(kms.stats())
            else:
                break


class KmsServer:
    """LocalKms, one child process per region, all with the same access key.

    One process per region, as KMS regions are separate services: hosted in
    one process, the three regions' request handling (signature check, crypto,
    JSON; about 1 ms each here) would queue behind one GIL, and every
    multi-region case would measure that queue instead of the client."""

    def __init__(self, regions=KMS_REGIONS) -> None:
        import secrets

        mp = multiprocessing.get_context("spawn")
        self.ak, self.secret = "LTAI" + secrets.token_hex(10), secrets.token_urlsafe(24)
        self.regions = regions
        self.conns: dict[str, Any] = {}
        self.procs = []
        for region in regions:
            conn, child = mp.Pipe()
            proc = mp.Process(target=_kms_server, args=(child, region, self.ak, self.secret), daemon=True)
            proc.start()
            self.conns[region] = conn
            self.procs.append(proc)
        self.endpoints: dict[str, str] = {}
        self.arns: list[str] = []
        for region in regions:
            endpoint, arn = self.conns[region].recv()
            self.endpoints[region] = endpoint
            self.arns.append(arn)

    def fault(self, region: str, **kw: Any) -> None:
        self.conns[region].send(("fault", kw))
        self.conns[region].recv()

    def faults(self, **kw: Any) -> None:
        for r in self.regions:
            self.fault(r, **kw)

    def stats(self) -> dict[str, dict[str, int]]:
        """Every region's action counts (LocalKms counts in the children)."""
        out: dict[str, dict[str, int]] = {}
        for conn in self.conns.values():
            conn.send(("stats",))
            out.update(conn.recv())
        return out

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            KMSENV_KMS_ENDPOINTS=",".join(f"{r}={u}" for r, u in self.endpoints.items()),
            ALIBABA_CLOUD_ACCESS_KEY_ID=self.ak,
            ALIBABA_CLOUD_ACCESS_KEY_SECRET=self.secret,
            PYTHONPATH=os.pathsep.join(filter(None, [KMSENV_SRC, os.environ.get("PYTHONPATH")])),
        )
        return env

    def kms(self, **kw: Any) -> Any:
        from kmsenv.kms import Kms

        return Kms(access_key_id=self.ak, access_key_secret=self.secret, endpoints=self.endpoints, **kw)

    def stop(self) -> None:
        for conn in self.conns.values():
            try:
                conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(10)


# ------------------------------------------------------------------ case: KMS path


def kms_path(res: Results, server: KmsServer, rounds: int, min_time: float) -> None:
    kms = server.kms()
    pt = os.urandom(KIB)
    cells: list[tuple[float, Cell]] = []
    for latency in (0.0, LATENCY_MS):
        for n in (1, 2, 3):
            arns = server.arns[:n]
            case = f"KMS encrypt 1 KiB, {n} region{'s' if n > 1 else ''}, {latency:g} ms"
            ours = kmsenv.KmsKeyProvider(*arns, kms=kms)
            theirs = ref.SequentialKmsProvider(kms, *arns)
            for name, fn in (
                (NATIVE, lambda p=ours: kmsenv.encrypt(pt, p, encryption_context=CTX)),
                (REF, lambda p=theirs: ref.encrypt(pt, p, CTX)),
            ):
                fn()
                cells.append((latency, res.add(Cell(case, name, fn, 1, KIB))))
    for r in range(rounds):
        for latency in (0.0, LATENCY_MS):
            server.faults(latency_ms=latency)
            for lat, cell in cells:
                if lat == latency:
                    cell.run(min_time)
        log(f"  KMS path: round {r + 1}/{rounds}")
    server.faults()

    # decrypt with the first region down; the others at 50 ms
    kms_d = server.kms()
    arns = server.arns[:2]
    msg = kmsenv.encrypt(pt, kmsenv.KmsKeyProvider(*arns, kms=kms_d), encryption_context=CTX).ciphertext
    rmsg = ref.encrypt(pt, ref.SequentialKmsProvider(kms_d, *arns), CTX)
    budget_s = sum(min(kms_d.backoff_max, kms_d.backoff_base * 2**i) for i in range(kms_d.max_attempts - 1))
    res.extra["kms_down_budget"] = {
        "max_attempts": kms_d.max_attempts,
        "backoff_base_s": kms_d.backoff_base,
        "backoff_max_s": kms_d.backoff_max,
        "retry_budget_s": budget_s,
        "budget_ms": budget_s * 1000 + 1.3 * LATENCY_MS,
    }
    case = f"KMS decrypt 1 KiB, 1st of 2 regions down, {LATENCY_MS:g} ms"
    server.faults(latency_ms=LATENCY_MS)
    server.fault(KMS_REGIONS[0], down=True)
    import logging

    logging.getLogger("kmsenv").setLevel(logging.ERROR)  # one failover warning per call otherwise
    down = [
        res.add(Cell(case, NATIVE, lambda: kmsenv.decrypt(msg, kmsenv.KmsKeyProvider(*arns, kms=kms_d)), 1, KIB)),
        res.add(Cell(case, REF, lambda: ref.decrypt(rmsg, ref.SequentialKmsProvider(kms_d, *arns)), 1, KIB)),
    ]
    for r in range(rounds):
        for cell in down:
            cell.run(min(min_time, 0.01))  # one call: each costs the retry budget
    server.faults()

    # 5 rounds in a full run (not the 3 above): a 1.15x goal is a few ms, and a
    # median of 5 is less at the mercy of one noisy round.
    kms_one_round_trip(res, server, 5 if rounds > 1 else 1, min_time)
    kms_hedged_decrypt(res, server, 5 if rounds > 1 else 1, quick=rounds <= 1)


# ------------------------------------------------------------------ case: 1 RTT vs 2 RTT, hedged decrypt

LOCAL_SOURCE, KMS_SOURCE = "data_key_source=local (1 RTT)", "data_key_source=kms, the default (2 RTT)"
# The floor under the 1-RTT case: the official client alone making the same
# Encrypt calls, concurrently as kmsenv does (n-1 on a pool, one on the calling
# thread), with nothing of kmsenv around them.
OFFICIAL_ALONE = "official client alone, the same Encrypt calls at once"
HEDGED, PLAIN = "hedged (adaptive delay)", "plain (hedge=False)"
BROWNOUT_MS = 500.0
BROWNOUT_CASE = (
    f"KMS decrypt 1 KiB under a brownout (1st region {LATENCY_MS:g} + {BROWNOUT_MS:g} ms, 2nd {LATENCY_MS:g} ms)"
)


def one_rtt_case(n: int) -> str:
    return f"KMS encrypt 1 KiB, {n} region{'s' if n > 1 else ''}, {LATENCY_MS:g} ms, data_key_source=local"


def _server_calls(server: KmsServer, action: str) -> int:
    """Every region's count of ``action`` so far (LocalKms counts in the child)."""
    return sum(actions.get(action, 0) for actions in server.stats().values())


def official_encrypts(kms: Any, arns: list[str], pool: Any) -> Callable[[], None]:
    """The official client's Encrypt of a fresh 32-byte key under every ARN at
    once, as ``data_key_source="local"`` sends them, with none of kmsenv's work
    around the calls: what any SDK built on the official client can reach. It
    uses the very client objects (sessions, timeouts) that ``kms`` gives kmsenv."""
    import base64

    from alibabacloud_kms20160120 import models
    from kmsenv.arn import Arn

    runtime = kms._runtime_options()
    calls = [(kms._client(Arn.parse(arn).region), arn) for arn in arns]

    def one(client: Any, arn: str) -> None:
        key = base64.b64encode(os.urandom(32)).decode("ascii")
        request = models.EncryptRequest(key_id=arn, plaintext=key, encryption_context=dict(CTX))
        if not client.encrypt_with_options(request, runtime).body.ciphertext_blob:
            raise RuntimeError("Encrypt returned no CiphertextBlob")

    def run() -> None:
        futures = [pool.submit(one, *call) for call in calls[1:]]
        one(*calls[0])
        for f in futures:
            f.result()

    return run


def kms_one_round_trip(res: Results, server: KmsServer, rounds: int, min_time: float) -> None:
    """encrypt with the data key from the local CSPRNG and Encrypt in every region
    at once, against the default GenerateDataKey-then-Encrypt, at 50 ms per request;
    beside them the official client alone making the same calls (the floor)."""
    from concurrent.futures import ThreadPoolExecutor

    kms = server.kms()
    pt = os.urandom(KIB)
    cells = []
    pool = ThreadPoolExecutor(max_workers=len(server.arns), thread_name_prefix="bench-official")
    for n in (1, 2, 3):
        for name, source in ((LOCAL_SOURCE, "local"), (KMS_SOURCE, "kms")):
            provider = kmsenv.KmsKeyProvider(*server.arns[:n], kms=kms, data_key_source=source)
            fn = lambda p=provider: kmsenv.encrypt(pt, p, encryption_context=CTX)  # noqa: E731
            fn()  # connections open before timing
            cells.append(res.add(Cell(one_rtt_case(n), name, fn, 1, KIB)))
        fn = official_encrypts(kms, server.arns[:n], pool)
        fn()
        cells.append(res.add(Cell(one_rtt_case(n), OFFICIAL_ALONE, fn, 1, KIB)))
    server.faults(latency_ms=LATENCY_MS)
    try:
        run_interleaved(cells, rounds, min_time, "KMS 1 RTT vs 2 RTT")
    finally:
        server.faults()
        pool.shutdown()


def kms_hedged_decrypt(res: Results, server: KmsServer, rounds: int, quick: bool) -> None:
    """Hedged vs plain decrypt with the first of two regions browned out (+500 ms),
    after a healthy spell at 50 ms that teaches the hedged provider the first
    region's latency and measures what hedging costs when nothing is wrong."""
    import logging
    import threading

    kms = server.kms()
    arns = server.arns[:2]
    pt = os.urandom(KIB)
    msg = kmsenv.encrypt(pt, kmsenv.KmsKeyProvider(*arns, kms=kms), encryption_context=CTX).ciphertext
    hedged = kmsenv.KmsKeyProvider(*arns, kms=kms, hedge=True)
    plain = kmsenv.KmsKeyProvider(*arns, kms=kms, hedge=False)
    logging.getLogger("kmsenv").setLevel(logging.ERROR)

    # Healthy, both regions at 50 ms: 4 threads share the hedged provider.
    server.faults(latency_ms=LATENCY_MS)
    per_thread = 15 if quick else 75
    before = _server_calls(server, "Decrypt")

    def work() -> None:
        for _ in range(per_thread):
            kmsenv.decrypt(msg, hedged)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(2 * LATENCY_MS / 1000)  # an abandoned call is counted when it is answered
    healthy = hedged.stats()
    calls = _server_calls(server, "Decrypt") - before
    res.extra["kms_hedge_healthy"] = {
        "decrypts": healthy.decrypts,
        "decrypt_calls_seen_by_localkms": calls,
        "extra_calls_pct": 100.0 * (calls - healthy.decrypts) / healthy.decrypts,
        "hedges_started": healthy.hedges_started,
        "hedges_refused": healthy.hedges_refused,
        "hedge_delay_ms": {r: d * 1000 for r, d in healthy.hedge_delays.items()},
    }
    log(
        f"  KMS hedging, healthy: {calls} Decrypt calls for {healthy.decrypts} decrypts, "
        f"{healthy.hedges_started} hedge(s); delay {res.extra['kms_hedge_healthy']['hedge_delay_ms']}"
    )

    # The brownout: region 1 at 50 + 500 ms, region 2 at 50 ms. One decrypt per
    # contender per round (the hedges stay within the budget's burst).
    delay_ms = healthy.hedge_delays[KMS_REGIONS[0]] * 1000
    server.fault(KMS_REGIONS[0], latency_ms=LATENCY_MS + BROWNOUT_MS)
    cells = [
        res.add(Cell(BROWNOUT_CASE, HEDGED, lambda: kmsenv.decrypt(msg, hedged), 1, KIB)),
        res.add(Cell(BROWNOUT_CASE, PLAIN, lambda: kmsenv.decrypt(msg, plain), 1, KIB)),
    ]
    try:
        run_interleaved(cells, rounds, 0.01, "KMS brownout")
        time.sleep((LATENCY_MS + BROWNOUT_MS) / 1000)  # let the abandoned calls finish
    finally:
        server.faults()
    after = hedged.stats()
    res.extra["kms_hedge_brownout"] = {
        "hedge_delay_ms": delay_ms,
        "budget_ms": delay_ms + 1.3 * LATENCY_MS,
        "hedges_started": after.hedges_started - healthy.hedges_started,
        "hedges_won": after.hedges_won - healthy.hedges_won,
        "hedges_refused": after.hedges_refused - healthy.hedges_refused,
        "decrypts": after.decrypts - healthy.decrypts,
    }


# ------------------------------------------------------------------ case: LocalKms req/s


def localkms_rps(res: Results, rounds: int, seconds: float) -> None:
    import bench_localkms as bl

    server = bl.Server(inprocess=False)
    try:
        blob = (
            bl.Client(
                bl.Config(
                    access_key_id=server.ak,
                    access_key_secret=server.secret,
                    endpoint=server.host,
                    protocol="http",
                    region_id=bl.REGION,
                )
            )
            .encrypt(bl.M.EncryptRequest(key_id=server.arn, plaintext="aGVsbG8gd29ybGQ="))
            .body.ciphertext_blob
        )
        params = {"KeyId": server.arn, "Plaintext": "aGVsbG8gd29ybGQ="}

        def lean(threads: int):
            def make(_i: int):
                conn = bl.LeanConnection(server.host)
                pending = [bl._presign(server, "Encrypt", params) for _ in range(int(20000 * seconds / threads) + 100)]

                def call() -> None:
                    if conn.roundtrip(pending.pop()) != 200:
                        raise RuntimeError("Encrypt: non-200 response")

                return call

            return make

        variants = {
            "lean client, 1 thread": (lean(1), 1),
            "lean client, 4 threads": (lean(4), 4),
            "official client, 1 thread": (lambda _i: bl.official_worker(server, "Encrypt", blob), 1),
        }
        case = "LocalKms Encrypt requests/s (server in a child process)"
        cells = {k: res.add(Cell(case, k, None)) for k in variants}
        for r in range(rounds):
            for k, (make, threads) in variants.items():
                cells[k].rounds.append(bl.run_round(make, threads, seconds))
            log(f"  LocalKms req/s: round {r + 1}/{rounds}")
    finally:
        server.stop()


# ------------------------------------------------------------------ case: streams (subprocess per contender)

_STREAM_CHILD = r"""
import json, sys, time, io, os
sys.path[:0] = {paths!r}
import kmsenv
from helpers import ARN_BJ, ARN_HZ, FakeKmsProvider
op, src, dst = sys.argv[1:4]
p = FakeKmsProvider(ARN_BJ, ARN_HZ)
t = time.perf_counter()
with open(src, "rb") as fi, open(dst, "wb") as fo:
    if op == "encrypt":
        kmsenv.encrypt_stream(fi, fo, p, encryption_context={{"tenant": "acme"}})
    else:
        kmsenv.decrypt_stream(fi, fo, p)
seconds = time.perf_counter() - t
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({{"seconds": seconds, "vmhwm_kib": int(hwm.split()[1])}}))
"""

# The CLI as a user runs it (python -m kmsenv ...), reporting its own peak RSS
# (VmHWM of its own address space) to $KMSENV_BENCH_HWM at exit. Rusage of a
# child would not do: Linux folds the forking parent's RSS into the child's
# ru_maxrss at exec.
_CLI_WRAPPER = (
    "import atexit, os, runpy, sys\n"
    "def _hwm():\n"
    "    with open('/proc/self/status') as f, open(os.environ['KMSENV_BENCH_HWM'], 'w') as o:\n"
    "        o.write(next(l for l in f if l.startswith('VmHWM')).split()[1])\n"
    "atexit.register(_hwm)\n"
    "sys.argv = ['kmsenv'] + sys.argv[1:]\n"
    "runpy.run_module('kmsenv', run_name='__main__', alter_sys=True)\n"
)


def _run_child(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """(wall seconds, stdout) of one child process."""
    t = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, env=env)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed ({p.returncode}): {p.stderr.decode(errors='replace')[-2000:]}")
    return wall, p.stdout.decode()


_COPY_CHILD = r"""
import json, sys, time
src, dst = sys.argv[1:3]
t = time.perf_counter()
buf = bytearray(8 << 20)
mv = memoryview(buf)
with open(src, "rb") as fi, open(dst, "wb") as fo:
    while True:
        n = fi.readinto(buf)
        if not n:
            break
        fo.write(mv[:n])
seconds = time.perf_counter() - t
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "vmhwm_kib": int(hwm.split()[1])}))
"""


def stream_dir(size: int, wanted: str | None) -> str:
    """tmpfs when it has room (the files then measure kmsenv, not the VM's disk)."""
    if wanted:
        return tempfile.mkdtemp(prefix="kmsenv-bench-", dir=wanted)
    if os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > 5 * size:
        return tempfile.mkdtemp(prefix="kmsenv-bench-", dir="/dev/shm")
    return tempfile.mkdtemp(prefix="kmsenv-bench-")


def streams(res: Results, server: KmsServer, size: int, rounds: int, where: str | None = None) -> None:
    tmp = stream_dir(size, where)
    res.extra["stream_dir"] = tmp
    try:
        plain = os.path.join(tmp, "plain.bin")
        block = os.urandom(min(size, 64 * MIB))
        with open(plain, "wb") as f:
            for _ in range(size // len(block)):
                f.write(block)
        del block
        api_enc, cli_enc = os.path.join(tmp, "api.kmsenv"), os.path.join(tmp, "cli.kmsenv")
        api_dec = cli_dec = copy_out = os.path.join(tmp, "out")  # one output file at a time
        script, copier = os.path.join(tmp, "kmsenv_bench_stream.py"), os.path.join(tmp, "kmsenv_bench_copy.py")
        with open(script, "w") as f:
            f.write(_STREAM_CHILD.format(paths=[KMSENV_SRC, os.path.join(ROOT, "tests")]))
        with open(copier, "w") as f:
            f.write(_COPY_CHILD)
        hwm_file = os.path.join(tmp, "hwm")
        env = server.env()
        env["KMSENV_BENCH_HWM"] = hwm_file
        arn = server.arns[0]
        py = sys.executable
        sz = size_name(size)
        contenders = [
            (
                f"stream {sz} encrypt",
                "file copy, no crypto (python, 8 MiB chunks)",
                [py, copier, plain, copy_out],
                None,
            ),
            (
                f"stream {sz} encrypt",
                "encrypt_stream (API, file to file)",
                [py, script, "encrypt", plain, api_enc],
                None,
            ),
            (
                f"stream {sz} decrypt",
                "decrypt_stream (API, file to file)",
                [py, script, "decrypt", api_enc, api_dec],
                None,
            ),
            (
                f"stream {sz} encrypt",
                "CLI (python -m kmsenv, LocalKms)",
                [py, "-c", _CLI_WRAPPER, "encrypt", "-k", arn, "-c", "tenant=acme", "-i", plain, "-o", cli_enc],
                env,
            ),
            (
                f"stream {sz} decrypt",
                "CLI (python -m kmsenv, LocalKms)",
                [py, "-c", _CLI_WRAPPER, "decrypt", "-k", arn, "-i", cli_enc, "-o", cli_dec],
                env,
            ),
        ]
        tiny, tiny_out = os.path.join(tmp, "tiny.bin"), os.path.join(tmp, "tiny.kmsenv")
        with open(tiny, "wb") as f:
            f.write(b"x")
        startup_argv = [py, "-c", _CLI_WRAPPER, "encrypt", "-k", arn, "-i", tiny, "-o", tiny_out]
        startup: list[float] = []
        cells = [res.add(Cell(case, name, None, 1, size)) for case, name, _, _ in contenders]
        net = {
            op: res.add(Cell(f"stream {sz} {op}", "CLI minus its start-up (1-byte file run)", None, 1, size))
            for op in ("encrypt", "decrypt")
        }
        cli_walls: dict[str, list[float]] = {"encrypt": [], "decrypt": []}
        rss: dict[str, list[int]] = {f"{c.case} / {c.contender}": [] for c in cells if "copy" not in c.contender}
        walls: dict[str, list[float]] = {k: [] for k in rss}
        for r in range(rounds):
            for cell, (_, _, argv, e) in zip(cells, contenders):
                if os.path.exists(argv[-1]):
                    os.unlink(argv[-1])
                wall, stdout = _run_child(argv, e)
                if e is None:
                    child = json.loads(stdout)
                    seconds, peak = child["seconds"], child["vmhwm_kib"] * 1024
                else:
                    with open(hwm_file) as f:
                        seconds, peak = wall, int(f.read()) * 1024
                    cli_walls["encrypt" if "encrypt" in cell.case else "decrypt"].append(wall)
                cell.rounds.append(1 / seconds)
                key = f"{cell.case} / {cell.contender}"
                rss.setdefault(key, []).append(peak)
                walls.setdefault(key, []).append(wall)
            if os.path.exists(tiny_out):
                os.unlink(tiny_out)
            startup.append(_run_child(startup_argv, env)[0])
            for op, cell in net.items():
                cell.rounds.append(1 / max(cli_walls[op][-1] - startup[-1], 1e-3))
            log(f"  streams {sz}: round {r + 1}/{rounds}")
        res.extra["cli_startup_seconds"] = statistics.median(startup)
        with open(plain, "rb") as a, open(cli_dec, "rb") as b:  # the last output: CLI decrypt
            if os.path.getsize(cli_dec) != size or a.read(MIB) != b.read(MIB):
                raise RuntimeError("stream round trip mismatch")
        for cell in net.values():
            cell.note = "CLI wall time minus the median wall time of the CLI on a 1-byte file"
        for cell in cells:
            key = f"{cell.case} / {cell.contender}"
            if key not in rss:
                continue
            cell.note = f"peak RSS {max(rss[key]) / 1e6:.0f} MB; " + (
                "wall time incl. interpreter start and KMS calls"
                if "CLI" in cell.contender
                else "time inside the child (excl. interpreter start)"
            )
        res.extra["stream_peak_rss_bytes"] = {k: max(v) for k, v in rss.items() if "copy" not in k}
        res.extra["stream_wall_seconds"] = {k: statistics.median(v) for k, v in walls.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ targets


@dataclass
class Target:
    name: str
    measured: float | None
    op: str  # ">=" or "<="
    goal: float
    unit: str = "x"
    detail: str = ""

    @property
    def ok(self) -> bool | None:
        if self.measured is None:
            return None
        if self.op == "<":
            return self.measured < self.goal
        return self.measured >= self.goal if self.op == ">=" else self.measured <= self.goal


def _ratio(res: Results, case: str, a: str, b: str) -> float | None:
    x, y = res.get(case, a), res.get(case, b)
    if x is None or y is None or not x.ops or not y.ops:
        return None
    return x.ops / y.ops


def targets(res: Results, stream_size: int, framed_size: int) -> list[Target]:
    T: list[Target] = []
    for op in ("encrypt", "decrypt"):
        T.append(
            Target(
                f"kmsenv.{op} 1 KiB vs bare AESGCM.{op}",
                _ratio(res, f"message AES-256-GCM {op} 1 KiB", NATIVE, AES_FLOOR),
                ">=",
                0.2,
            )
        )
    for op in ("encrypt", "decrypt"):
        case = next((c for c in res.cases if c.startswith("batch") and c.endswith(op)), "")
        T.append(
            Target(
                f"{op}_many 100 B vs bare AESGCM.{op} 100 B",
                _ratio(res, case, NATIVE + " (*_many)", AES_FLOOR),
                ">=",
                0.5,
            )
        )
    for size in ("1 MiB", "64 MiB"):
        for op in ("encrypt", "decrypt"):
            T.append(
                Target(
                    f"kmsenv.{op} {size} vs AESGCM.{op}",
                    _ratio(res, f"message AES-256-GCM {op} {size}", NATIVE, AES_FLOOR),
                    ">=",
                    1.0,
                )
            )
    fcase = f"framed in memory encrypt {size_name(framed_size)}"
    fl = _ratio(res, fcase, NATIVE + " 2 thr, file-like source", "AESGCM.encrypt_into 64 KiB frames, 1 thr")
    T.append(
        Target(
            f"framed {size_name(framed_size)} on 2 cores vs 1-thread AESGCM.encrypt_into",
            _ratio(res, fcase, NATIVE + " 2 thr", "AESGCM.encrypt_into 64 KiB frames, 1 thr"),
            ">=",
            1.6,
            detail="" if fl is None else f"a file-like source (one more copy): {fl:.2f}x",
        )
    )
    for op in ("encrypt", "decrypt"):
        T.append(
            Target(
                f"SM4-GCM {op} 1 MiB vs cryptography SM4-GCM",
                _ratio(res, f"message SM4-GCM {op} 1 MiB", NATIVE, SM4_FLOOR),
                ">=",
                15,
            )
        )
        T.append(
            Target(
                f"SM4-GCM {op} 1 MiB vs gmssl (extrapolated per byte from 1 KiB)",
                _ratio(res, f"message SM4-GCM {op} 1 MiB", NATIVE, GMSSL),
                ">=",
                1000,
            )
        )
    sz = size_name(stream_size)
    rss = res.extra.get("stream_peak_rss_bytes", {})
    for key, peak in rss.items():
        T.append(Target(f"peak RSS: {key}", peak / 1e6, "<", 100, "MB"))
    for op in ("encrypt", "decrypt"):
        api = res.get(f"stream {sz} {op}", f"{op}_stream (API, file to file)")
        mem = res.get(f"framed in memory {op} {size_name(framed_size)}", NATIVE + " 2 thr")
        copy = res.get(f"stream {sz} encrypt", "file copy, no crypto (python, 8 MiB chunks)")
        for cell in (api, res.get(f"stream {sz} {op}", "CLI minus its start-up (1-byte file run)")):
            if cell is not None and mem is not None and cell.mbs and mem.mbs:
                detail = ""
                if copy is not None and copy.mbs:  # the I/O ceiling: the same files copied, no crypto
                    detail = f"{cell.mbs / copy.mbs:.2f}x a plain file copy ({copy.mbs:,.0f} MB/s)"
                T.append(
                    Target(
                        f"stream {sz} {op}, {cell.contender.split(' (')[0]}, vs in-memory framed 2 thr",
                        cell.mbs / mem.mbs,
                        ">=",
                        0.8,
                        detail=detail,
                    )
                )
    k3 = res.get(f"KMS encrypt 1 KiB, 3 regions, {LATENCY_MS:g} ms", NATIVE)
    if k3 is not None and k3.ops:
        T.append(
            Target(
                f"KMS encrypt, 3 regions at {LATENCY_MS:g} ms, in units of the latency",
                1000 / k3.ops / LATENCY_MS,
                "<=",
                2.3,
                "x 50 ms",
            )
        )
    k3_local = res.get(one_rtt_case(3), LOCAL_SOURCE)
    if k3_local is not None and k3_local.ops:
        k3_kms = res.get(one_rtt_case(3), KMS_SOURCE)
        T.append(
            Target(
                f"KMS encrypt, 3 regions at {LATENCY_MS:g} ms, data_key_source=local, in units of the latency",
                1000 / k3_local.ops / LATENCY_MS,
                "<=",
                1.15,
                "x 50 ms",
                detail="; ".join(
                    f"{label}: {1000 / cell.ops / LATENCY_MS:.2f}x"
                    for label, cell in (
                        ("the default (GenerateDataKey first)", k3_kms),
                        ("the official client alone, 3 Encrypts at once", res.get(one_rtt_case(3), OFFICIAL_ALONE)),
                        ("1 Encrypt alone", res.get(one_rtt_case(1), OFFICIAL_ALONE)),
                    )
                    if cell is not None and cell.ops
                ),
            )
        )
    brown = res.get(BROWNOUT_CASE, HEDGED)
    brown_budget = res.extra.get("kms_hedge_brownout", {})
    if brown is not None and brown.ops and brown_budget:
        plain_cell = res.get(BROWNOUT_CASE, PLAIN)
        T.append(
            Target(
                f"KMS decrypt, 1st region +{BROWNOUT_MS:g} ms, hedged (ms) vs hedge delay + 1.3 x 50 ms",
                1000 / brown.ops,
                "<=",
                round(brown_budget["budget_ms"], 1),
                "ms",
                detail=f"hedge delay {brown_budget['hedge_delay_ms']:.1f} ms; "
                f"{brown_budget['hedges_won']}/{brown_budget['decrypts']} hedges won"
                + ("" if plain_cell is None or not plain_cell.ops else f"; plain: {1000 / plain_cell.ops:.0f} ms"),
            )
        )
    healthy = res.extra.get("kms_hedge_healthy")
    if healthy:
        T.append(
            Target(
                f"KMS decrypt, both regions healthy at {LATENCY_MS:g} ms: extra Decrypt calls from hedging",
                healthy["extra_calls_pct"],
                "<=",
                2,
                "%",
                detail=f"{healthy['decrypt_calls_seen_by_localkms']} calls for {healthy['decrypts']} decrypts",
            )
        )
    down = res.get(f"KMS decrypt 1 KiB, 1st of 2 regions down, {LATENCY_MS:g} ms", NATIVE)
    budget = res.extra.get("kms_down_budget", {}).get("budget_ms")
    if down is not None and down.ops and budget:
        T.append(
            Target(
                "KMS decrypt, 1st region down (ms) vs retry budget + 1.3 x 50 ms", 1000 / down.ops, "<=", budget, "ms"
            )
        )
    lk = res.get("LocalKms Encrypt requests/s (server in a child process)", "lean client, 4 threads")
    lk1 = res.get("LocalKms Encrypt requests/s (server in a child process)", "lean client, 1 thread")
    if lk is not None and lk.ops:
        best = max(lk, lk1, key=lambda c: c.ops or 0)
        T.append(Target(f"LocalKms req/s ({best.contender})", best.ops, ">=", 1000, "req/s"))
    return T


# ------------------------------------------------------------------ output


def fmt_cell(cell: Cell | None) -> str:
    if cell is None or cell.ops is None:
        return "-"
    star = "*" if cell.note.startswith("extrapolated") else ""
    if cell.case.startswith("KMS"):
        return f"{1000 / cell.ops:.1f} ms"
    if cell.case.startswith("LocalKms"):
        return f"{cell.ops:,.0f}/s"
    if cell.nbytes >= 64 * KIB:
        return f"{cell.mbs:,.0f} MB/s{star}" if cell.mbs >= 10 else f"{cell.mbs:,.2f} MB/s{star}"
    if cell.ops >= 100:
        return f"{cell.ops / 1000:,.1f} k/s{star}"
    return f"{cell.ops:,.1f} /s{star}"


def floor_of(case: str) -> str | None:
    if case.startswith(("message AES", "batch")):
        return AES_FLOOR
    if case.startswith("message SM4"):
        return SM4_FLOOR
    if case.startswith("framed in memory encrypt"):
        return "AESGCM.encrypt_into 64 KiB frames, 1 thr"
    if case.startswith("framed in memory decrypt"):
        return "AESGCM.decrypt_into 64 KiB frames, 1 thr"
    return None


def print_tables(res: Results, T: list[Target]) -> str:
    lines: list[str] = []
    groups: dict[tuple[str, ...], list[str]] = {}
    for case in res.cases:
        key = tuple(c.contender for c in res.contenders(case))
        groups.setdefault(key, []).append(case)
    for contenders, cases in groups.items():
        best_native = next((c for c in contenders if c.startswith(NATIVE)), None)
        cols = ["case", *contenders]
        fl = floor_of(cases[0])
        if fl and best_native:
            cols.append(f"{best_native} / {fl}")
        rows = []
        for case in cases:
            row = [case] + [fmt_cell(res.get(case, c)) for c in contenders]
            if fl and best_native:
                r = _ratio(res, case, best_native, fl)
                row.append("-" if r is None else f"{r:.2f}x")
            rows.append(row)
        widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |")
        lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in rows:
            lines.append("| " + " | ".join(str(x).ljust(w) for x, w in zip(row, widths)) + " |")
        lines.append("")
    lines.append("* gmssl: measured at 64 B and 1 KiB (SM4-CBC, pure Python), extrapolated per byte above.")
    lines.append("")
    cols = ["target", "measured", "goal", "result", "context"]
    rows = []
    for t in T:
        m = (
            "-"
            if t.measured is None
            else (f"{t.measured:,.2f} {t.unit}" if t.measured < 1e4 else f"{t.measured:,.0f} {t.unit}")
        )
        rows.append(
            [t.name, m, f"{t.op} {t.goal:g} {t.unit}", {True: "PASS", False: "FAIL", None: "n/a"}[t.ok], t.detail]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        lines.append("| " + " | ".join(str(x).ljust(w) for x, w in zip(row, widths)) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


# The CPU flags the kernels depend on (csrc/cpu.c): every report names them.
CPU_FLAGS = ("aes", "pclmulqdq", "avx2", "vaes", "vpclmulqdq", "gfni", "avx512f", "avx512bw", "avx512vl", "avx512dq")


def machine_info() -> dict[str, Any]:
    cpu, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name") and not cpu:
                    cpu = ln.split(":", 1)[1].strip()
                elif ln.startswith("flags"):
                    flags = set(ln.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    commit = None
    try:
        commit = (
            subprocess.run(
                ["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        if commit and dirty:
            commit += " (with uncommitted changes)"
    except (OSError, subprocess.SubprocessError):
        pass
    import cryptography

    try:
        from cryptography.hazmat.backends.openssl import backend as ossl

        cryptography_openssl = ossl.openssl_version_text()
    except Exception:  # noqa: BLE001
        cryptography_openssl = None
    return {
        "cpu": cpu,
        "cpu_flags": {f: f in flags for f in CPU_FLAGS},
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "kmsenv": kmsenv.__version__,
        "backend_info": kmsenv.backend_info(),
        "cryptography": cryptography.__version__,
        "cryptography_openssl": cryptography_openssl,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
    }


# ------------------------------------------------------------------ charts


COLORS = {
    NATIVE: "#1f77b4",
    PURE: "#ff7f0e",
    REF: "#d62728",
    AES_FLOOR: "#2ca02c",
    SM4_FLOOR: "#2ca02c",
    GMSSL: "#9467bd",
}


def charts(res: Results, sizes: list[int], outdir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    # small messages: ops/s, log scale
    groups = []
    for alg in ("AES-256-GCM", "SM4-GCM"):
        for size in (64, KIB):
            for op in ("encrypt", "decrypt"):
                groups.append((f"{alg}\n{op} {size_name(size)}", f"message {alg} {op} {size_name(size)}"))
    batch = [c for c in res.cases if c.startswith("batch")]
    for c in batch:
        groups.append((c.replace("batch ", "").replace(" x ", "×\n", 1), c))
    names = [NATIVE, PURE, REF, "floor (AESGCM / cryptography SM4-GCM)", GMSSL]

    def pick(case: str, name: str) -> Cell | None:
        if name.startswith("floor"):
            return res.get(case, AES_FLOOR) or res.get(case, SM4_FLOOR)
        return res.get(case, name) or res.get(case, name + " (*_many)") or res.get(case, name + " (one by one)")

    fig, ax = plt.subplots(figsize=(13, 5.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs, ys = [], []
        for j, (_, case) in enumerate(groups):
            cell = pick(case, name)
            if cell is not None and cell.ops:
                xs.append(j + (i - (len(names) - 1) / 2) * width)
                ys.append(cell.ops)
        color = COLORS.get(name, "#2ca02c")
        ax.bar(xs, ys, width, label=name, color=color)
    ax.set_yscale("log")
    ax.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=8)
    ax.set_ylabel("messages per second (log)")
    ax.set_title("Small messages: complete messages (2 EDKs, context, cached data key) and 100 B batches")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    fig.tight_layout()
    path = os.path.join(outdir, "small_messages.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    # bulk throughput: MB/s vs size
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    for r, alg in enumerate(("AES-256-GCM", "SM4-GCM")):
        for c, op in enumerate(("encrypt", "decrypt")):
            ax = axes[r][c]
            floor = AES_FLOOR if alg.startswith("AES") else SM4_FLOOR
            for name in (NATIVE, PURE, REF, floor, GMSSL):
                xs, ys, ext = [], [], []
                for size in sizes:
                    cell = res.get(f"message {alg} {op} {size_name(size)}", name)
                    if cell is not None and cell.mbs:
                        xs.append(size)
                        ys.append(cell.mbs)
                        ext.append(cell.note.startswith("extrapolated"))
                if not xs:
                    continue
                label = name + (" (extrapolated beyond 1 KiB)" if any(ext) else "")
                ax.plot(xs, ys, marker="o", label=label, color=COLORS.get(name), linestyle="--" if any(ext) else "-")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(sizes, [size_name(s) for s in sizes])
            ax.set_title(f"{alg} {op}, complete messages")
            ax.set_ylabel("MB/s (log)")
            ax.grid(which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(outdir, "bulk_throughput.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    # KMS latency
    fig, ax = plt.subplots(figsize=(8, 5))
    for latency, style in ((0.0, ":"), (LATENCY_MS, "-")):
        for name in (NATIVE, REF):
            xs, ys = [], []
            for n in (1, 2, 3):
                cell = res.get(f"KMS encrypt 1 KiB, {n} region{'s' if n > 1 else ''}, {latency:g} ms", name)
                if cell is not None and cell.ops:
                    xs.append(n)
                    ys.append(1000 / cell.ops)
            if xs:
                label = f"{'kmsenv (concurrent wraps)' if name == NATIVE else 'reference (sequential)'}, {latency:g} ms"
                ax.plot(xs, ys, style, marker="o", color=COLORS[name], label=label)
    xs, ys = [], []
    for n in (1, 2, 3):
        cell = res.get(one_rtt_case(n), LOCAL_SOURCE)
        if cell is not None and cell.ops:
            xs.append(n)
            ys.append(1000 / cell.ops)
    if xs:
        ax.plot(xs, ys, "-", marker="s", color="#2ca02c", label=f"kmsenv, data_key_source=local, {LATENCY_MS:g} ms")
        ax.axhline(
            1.15 * LATENCY_MS, color="#2ca02c", linestyle="--", linewidth=0.8, label="target (local): 1.15 × 50 ms"
        )
    for k in (1, 2, 3):
        ax.axhline(k * LATENCY_MS, color="grey", linewidth=0.6, alpha=0.5)
    ax.axhline(2.3 * LATENCY_MS, color="black", linestyle="--", linewidth=0.8, label="target: 2.3 × 50 ms")
    ax.set_xticks([1, 2, 3])
    ax.set_xlabel("regions (CMKs)")
    ax.set_ylabel("ms per kmsenv.encrypt (1 KiB)")
    ax.set_title(f"KMS path through LocalKms: {LATENCY_MS:g} ms injected per request vs none")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    brown = [(name, res.get(BROWNOUT_CASE, name)) for name in (HEDGED, PLAIN)]
    brown = [(name, 1000 / cell.ops) for name, cell in brown if cell is not None and cell.ops]
    if brown:  # a second panel: decrypt under a brownout
        fig.set_size_inches(13, 5)
        ax.set_position([0.07, 0.12, 0.5, 0.78])
        bx = fig.add_axes([0.66, 0.12, 0.31, 0.78])
        bx.bar([n for n, _ in brown], [v for _, v in brown], color=["#1f77b4", "#d62728"][: len(brown)])
        for i, (_, v) in enumerate(brown):
            bx.text(i, v / 2, f"{v:.0f} ms", ha="center", va="center", fontsize=9, color="white")
        goal = res.extra.get("kms_hedge_brownout", {}).get("budget_ms")
        if goal:
            bx.axhline(goal, color="black", linestyle="--", linewidth=0.8, label="target: hedge delay + 1.3 × 50 ms")
            bx.legend(fontsize=8)
        bx.set_ylabel("ms per kmsenv.decrypt (1 KiB)")
        bx.set_title(f"decrypt, 1st region +{BROWNOUT_MS:g} ms", fontsize=10)
        bx.tick_params(axis="x", labelsize=8)
        bx.grid(axis="y", alpha=0.3)
    else:
        fig.tight_layout()
    path = os.path.join(outdir, "kms_latency.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    # framed + streams
    items = []
    for case in res.cases:
        if case.startswith(("framed in memory", "stream ")):
            for cell in res.contenders(case):
                if cell.mbs:
                    items.append((f"{case}\n{cell.contender}", cell.mbs))
    if items:
        fig, ax = plt.subplots(figsize=(10, 0.45 * len(items) + 1.2))
        ax.barh(range(len(items)), [v for _, v in items], color="#1f77b4")
        ax.set_yticks(
            range(len(items)),
            [k.replace("\n", ": ").replace(" 64 KiB frames, 1 thr", ", 1 thr") for k, _ in items],
            fontsize=7,
        )
        ax.invert_yaxis()
        ax.set_xlabel("MB/s")
        ax.set_title("Framed streams: in memory (64 MiB buffer) and file to file")
        for i, (_, v) in enumerate(items):
            ax.text(v, i, f" {v:,.0f}", va="center", fontsize=7)
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        fig.subplots_adjust(left=0.42)
        path = os.path.join(outdir, "streams.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke run: 1 round, small sizes, <= 90 s")
    ap.add_argument("--rounds", type=int, help="rounds per case (default 5; --quick 1)")
    ap.add_argument("--min-time", type=float, help="seconds per cell per round (default 0.25; --quick 0.02)")
    ap.add_argument("--only", default="", help="comma-separated groups: messages,batch,framed,streams,kms,localkms")
    ap.add_argument("--output", default=os.path.join(RESULTS, "latest.json"))
    ap.add_argument("--no-charts", action="store_true")
    ap.add_argument("--stream-dir", help="where the stream files go (default: /dev/shm when it has room)")
    ap.add_argument(
        "--sizes",
        type=parse_sizes,
        help="message sizes of the messages group, e.g. 1KiB (default 64,1KiB,64KiB,1MiB,64MiB; --quick without 64MiB)",
    )
    args = ap.parse_args(argv)
    quick = args.quick
    rounds = args.rounds or (1 if quick else 5)
    min_time = args.min_time or (0.02 if quick else 0.25)
    sizes = args.sizes or [64, KIB, 64 * KIB, MIB] + ([] if quick else [64 * MIB])
    stream_size = 64 * MIB if quick else GIB
    framed_size = 64 * MIB
    batch_count = 10_000
    only = set(filter(None, args.only.split(","))) or {"messages", "batch", "framed", "streams", "kms", "localkms"}
    started = time.perf_counter()
    info = machine_info()
    log(
        f"kmsenv compare: {'quick' if quick else 'full'} run, {rounds} round(s), min {min_time}s/cell; "
        f"backend {info['backend_info'].get('backend')}, {info['cpu']}"
    )
    log("CPU flags: " + ", ".join(f"{f}{'' if on else ' (no)'}" for f, on in info["cpu_flags"].items()))
    kernels = info["backend_info"].get("kernels") or {}
    for family, k in kernels.items():
        log(f"kernel {family}: {k.get('name')} ({k.get('reason')})")

    res = Results()
    provider = FixedKeyProvider()
    timings: dict[str, float] = {}

    def group(name: str, fn: Callable[[], None]) -> None:
        if name in only:
            t = time.perf_counter()
            log(f"[{name}]")
            fn()
            timings[name] = round(time.perf_counter() - t, 1)

    group("messages", lambda: run_interleaved(message_cells(res, sizes, provider), rounds, min_time, "messages"))
    extrapolate_gmssl(res)
    group("batch", lambda: run_interleaved(batch_cells(res, provider, batch_count), rounds, min_time, "batch"))
    group("framed", lambda: run_interleaved(framed_cells(res, provider, framed_size), rounds, min_time, "framed"))
    server = KmsServer() if only & {"streams", "kms"} else None
    try:
        group("streams", lambda: streams(res, server, stream_size, 1 if quick else 3, args.stream_dir))
        group("kms", lambda: kms_path(res, server, rounds if quick else 3, min_time if quick else 0.3))
    finally:
        if server is not None:
            server.stop()
    group("localkms", lambda: localkms_rps(res, 1 if quick else 3, 0.3 if quick else 1.0))

    T = targets(res, stream_size, framed_size)
    kernels = info["backend_info"].get("kernels") or {}
    machine_line = (
        f"CPU: {info['cpu']} ({', '.join(f for f, on in info['cpu_flags'].items() if on)}; lacks "
        f"{', '.join(f for f, on in info['cpu_flags'].items() if not on) or 'nothing listed'}); "
        f"OpenSSL {info['backend_info'].get('openssl_loaded')}; kernels: "
        + ", ".join(f"{fam} {k.get('name')}" for fam, k in kernels.items())
    )
    print(machine_line + "\n")
    text = machine_line + "\n\n" + print_tables(res, T)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    out = {
        "machine": info,
        "config": {
            "quick": quick,
            "rounds": rounds,
            "min_time_s": min_time,
            "sizes": sizes,
            "stream_size": stream_size,
            "framed_size": framed_size,
            "batch": [batch_count, 100],
            "context": CTX,
            "edks": 2,
            "kms_latency_ms": LATENCY_MS,
        },
        "cases": {case: {c.contender: c.as_json() for c in res.contenders(case)} for case in res.cases},
        "targets": [
            {
                "name": t.name,
                "measured": t.measured,
                "op": t.op,
                "goal": t.goal,
                "unit": t.unit,
                "pass": t.ok,
                "context": t.detail,
            }
            for t in T
        ],
        "extra": res.extra,
        "group_seconds": timings,
        "table": text,
    }
    if not args.no_charts and "messages" in only:
        out["charts"] = [
            os.path.relpath(p, ROOT) for p in charts(res, sizes, os.path.dirname(os.path.abspath(args.output)))
        ]
    out["total_seconds"] = round(time.perf_counter() - started, 1)
    with open(args.output, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False, default=str)
    log(
        f"wrote {os.path.relpath(args.output, ROOT)}{' and charts' if out.get('charts') else ''}; "
        f"total {out['total_seconds']}s {timings}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
