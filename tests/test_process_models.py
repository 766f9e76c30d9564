"""Every entry point under the process models Python services run.

multiprocessing fork / forkserver / spawn pools, a prefork server (caches
warmed in the parent, then N forked workers, the parent still working), 16
threads with caches at capacity 1-2 and concurrent clears, and
``asyncio.to_thread``. Every output of every process and thread comes back to
the test, which then asserts:

* no (data key, IV) pair repeats anywhere: DER messages and Java streams by
  their EDKs and both IVs, framed streams by their EDKs and message id,
  compact values by key reference, segment and IV;
* nothing opens under an all-zero data key;
* every value round-trips through a provider with no cache.

Only public APIs are used, so the suite runs against any kmsenv.
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing as mp
import os
import pickle
import sys
import threading
import time

import pytest

import kmsenv
from kmsenv import columns, crypto, jobkey
from kmsenv.cache import CachingProvider, DataKeyCache
from kmsenv.keyheader import DictKeyHeaderStore
from kmsenv.message.codec import decode_message
from kmsenv.providers import KmsKeyProvider
from kmsenv.stream import framed
from kmsenv.stream import alibaba_stream
from kmsenv.stream._io import Source
from kms_fixtures import *  # noqa: F401,F403
from helpers import join_fork, start_in_fork
from kms_fixtures import kms_options

pytestmark = pytest.mark.usefixtures("worker_env")

CTX = {"service": "orders"}
N = 24  # values per entry point per worker
STREAM_FORMATS = ("framed", "alibaba-stream", "alibaba")

# What forked workers inherit (set by the test before it forks).
_INHERITED: dict = {}


def _provider(opts: dict, arns: list[str], capacity: int = 8) -> CachingProvider:
    inner = KmsKeyProvider(*arns, kms=kmsenv.Kms(**opts))
    return CachingProvider(inner, DataKeyCache(capacity=capacity))


def produce(tag: str, provider, job: kmsenv.JobKey, pending: list[tuple[bytes, bytes]] = ()) -> dict:
    """One worker's output through every entry point (plaintexts are derived from
    ``tag`` so the test can check them). ``pending``: messages made elsewhere,
    to decrypt here (decrypt caches after a fork)."""
    pts = [f"{tag}/{i}".encode() * (1 + i % 3) for i in range(N)]
    out: dict = {"pid": os.getpid(), "tag": tag}
    out["message"] = [(pt, kmsenv.encrypt(pt, provider, encryption_context=CTX).ciphertext) for pt in pts]
    out["many"] = list(zip(pts, kmsenv.encrypt_many(pts, provider, encryption_context=CTX)))
    for fmt in STREAM_FORMATS:
        made = []
        for pt in pts[:4]:
            dst = io.BytesIO()
            kmsenv.encrypt_stream(io.BytesIO(pt * 100), dst, provider, encryption_context=CTX, format=fmt)
            made.append((pt * 100, dst.getvalue()))
        out[fmt] = made
    out["compact"] = list(zip(pts, columns.encrypt_values(pts, job, format="compact")))
    out["job-alibaba"] = list(zip(pts, columns.encrypt_values(pts, job, format="alibaba")))
    out["opened"] = [kmsenv.decrypt(m, provider).plaintext == pt for pt, m in pending]
    return out


def _pool_worker(args: tuple) -> bytes:
    tag, model, opts, arns, job, backend = args
    if model == "fork":
        provider = _INHERITED["provider"]  # the parent's, caches warm
        pending = _INHERITED["pending"]
    else:
        crypto.set_backend(backend)
        provider = _provider(opts, arns)
        pending = []
    return pickle.dumps(produce(tag, provider, job, pending))


# ---------------------------------------------------------------- the checks


class ZeroKeyProvider:
    """Answers every encrypted data key with zeros."""

    def generate_data_key(self, algorithm, encryption_context):  # pragma: no cover - decrypt only
        raise AssertionError("decrypt only")

    def decrypt_data_key(self, encrypted_data_keys, algorithm, encryption_context):
        return bytearray(kmsenv.Algorithm(algorithm).key_len)


def _edks(edks) -> tuple:
    return tuple((e.key_arn, bytes(e.ciphertext_blob)) for e in edks)


def _nonce_uses(kind: str, data: bytes) -> list[tuple]:
    """The (data key, nonce, what it sealed) triples one output spent. The same
    header sealed again with its own IV (encrypt_many's messages share one
    header) repeats a computation, not a nonce; anything else under a used
    nonce is a reuse."""
    if kind in ("message", "many", "alibaba", "job-alibaba"):
        header, body = decode_message(data)
        key = _edks(header.encrypted_data_keys)
        return [(key, header.header_iv, header.encoded), (key, body.iv, data)]
    if kind == "framed":
        header = framed.read_header(Source(io.BytesIO(data)))
        return [(_edks(header.encrypted_data_keys), header.message_id, data)]
    if kind == "alibaba-stream":
        header, body_iv = alibaba_stream.read_header(Source(io.BytesIO(data)), 16)
        key = _edks(header.encrypted_data_keys)
        return [(key, header.header_iv, b"header"), (key, body_iv, data)]
    if kind == "compact":  # version | key ref (8) | segment (8) | IV (12) | ...
        return [((data[1:9], data[9:17]), data[17:29], data)]
    raise AssertionError(kind)


def check(outputs: list[dict], arns: list[str], opts: dict, job: kmsenv.JobKey) -> dict:
    kinds = ("message", "many", *STREAM_FORMATS, "compact", "job-alibaba")
    seen: dict[tuple, tuple] = {}
    repeats = []
    total = 0
    for out in outputs:
        assert all(out["opened"]), f"{out['tag']}: a parent's message did not open after the fork"
        for kind in kinds:
            for _, data in out[kind]:
                total += 1
                for key, nonce, sealed in _nonce_uses(kind, data):
                    first = seen.setdefault((key, nonce), (sealed, f"{out['tag']}:{kind}"))
                    if first[0] != sealed:
                        repeats.append((f"{out['tag']}:{kind}", first[1]))
    assert repeats == [], f"{len(repeats)} (data key, IV) pairs repeat, e.g. {repeats[:3]}"

    plain = KmsKeyProvider(*arns, kms=kmsenv.Kms(**opts))  # no cache: what a fresh reader sees
    zero = ZeroKeyProvider()
    store = DictKeyHeaderStore(job.headers)
    for out in outputs:
        for kind in ("message", "many", "job-alibaba"):
            pts = [pt for pt, _ in out[kind]]
            assert kmsenv.decrypt_many([m for _, m in out[kind]], plain) == pts, (out["tag"], kind)
            for _, m in out[kind][::8]:
                with pytest.raises(kmsenv.AuthenticationError):
                    kmsenv.decrypt(m, zero)
        for kind in STREAM_FORMATS:
            for pt, data in out[kind]:
                dst = io.BytesIO()
                kmsenv.decrypt_stream(io.BytesIO(data), dst, plain)
                assert dst.getvalue() == pt, (out["tag"], kind)
        values = [v for _, v in out["compact"]]
        assert columns.decrypt_values(values, plain, key_store=store) == [pt for pt, _ in out["compact"]]
        with pytest.raises(kmsenv.AuthenticationError):
            columns.decrypt_values(values, zero, key_store=store)
    return {"outputs": total, "pairs": len(seen), "processes": len({o["pid"] for o in outputs})}


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def setup(local_kms, cmks, backend):
    """(kms options, CMK ARNs, a JobKey whose workers cache one key at a time)."""
    jobkey.clear_cache()
    opts = kms_options(local_kms)
    arns = [cmks.hz, cmks.bj]
    inner = KmsKeyProvider(*arns, kms=kmsenv.Kms(**opts))
    job = kmsenv.JobKey.create(
        inner,
        encryption_context={"table": "t"},
        rows=4 * 1000,
        max_messages_per_key=1000,
        spec=kmsenv.WorkerSpec.from_provider(inner, cache_max_keys=1),
    )
    return opts, arns, job, backend


def _warm(provider, job) -> list[tuple[bytes, bytes]]:
    """Use every cache and pool once in this process (the parent)."""
    warm = produce("parent-warm", provider, job)
    return [warm["message"][0], warm["many"][0]]


# ---------------------------------------------------------------- the models


@pytest.mark.parametrize("model", ["fork", "forkserver", "spawn"])
def test_multiprocessing_pools(setup, model):
    if model not in mp.get_all_start_methods():
        pytest.skip(f"{model} is not available on this platform")
    opts, arns, job, backend = setup
    provider = _provider(opts, arns)
    pending = _warm(provider, job)
    outputs = [produce("parent-before", provider, job)]
    _INHERITED.update(provider=provider, pending=pending)
    try:
        with mp.get_context(model).Pool(2) as pool:
            tasks = [(f"{model}-{i}", model, opts, arns, job, backend) for i in range(4)]
            results = pool.map_async(_pool_worker, tasks)
            outputs.append(produce("parent-during", provider, job))  # the parent keeps encrypting
            outputs += [pickle.loads(r) for r in results.get(timeout=240)]
    finally:
        _INHERITED.clear()
    outputs.append(produce("parent-after", provider, job))
    summary = check(outputs, arns, opts, job)
    assert summary["processes"] >= 2


def test_prefork_server(setup):
    """gunicorn/uWSGI/Celery prefork: the parent warms every cache, then forks
    workers that serve at once, while the parent goes on encrypting."""
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    opts, arns, job, _ = setup
    provider = _provider(opts, arns)
    pending = _warm(provider, job)
    children = [start_in_fork(lambda i=i: produce(f"prefork-{i}", provider, job, pending)) for i in range(3)]
    outputs = [produce("prefork-parent", provider, job)]
    outputs += [join_fork(child) for child in children]
    summary = check(outputs, arns, opts, job)
    assert summary["processes"] == 4


@pytest.fixture
def switch_often():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


def test_sixteen_threads_with_tiny_caches_and_concurrent_clears(setup, switch_often):
    opts, arns, job, _ = setup
    provider = _provider(opts, arns, capacity=1)
    outputs: list[dict] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def work(i: int) -> None:
        try:
            outputs.append(produce(f"thread-{i}", provider, job))
        except BaseException as exc:  # reported below
            errors.append(exc)

    def clear() -> None:
        while not done.is_set():
            provider.cache.clear()
            jobkey.clear_cache()
            time.sleep(0.002)

    clearer = threading.Thread(target=clear)
    clearer.start()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        done.set()
        clearer.join()
    assert errors == []
    summary = check(outputs, arns, opts, job)
    assert summary["outputs"] == 16 * (4 * N + 3 * 4)


def test_asyncio_to_thread(setup):
    opts, arns, job, _ = setup
    provider = _provider(opts, arns, capacity=2)

    async def main() -> list[dict]:
        return await asyncio.gather(*(asyncio.to_thread(produce, f"async-{i}", provider, job) for i in range(8)))

    outputs = asyncio.run(main())
    check(outputs, arns, opts, job)
