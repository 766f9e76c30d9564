"""JobKey / WorkerSpec: KMS calls scale with processes, not rows.

Counts are read from the LocalKms over real HTTP; worker processes are real
processes (spawn and fork), each with its own KMS client built from the spec.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle

import pytest

pa = pytest.importorskip("pyarrow")

import kmsenv  # noqa: E402
from kmsenv import arrow as ka  # noqa: E402
from kmsenv import jobkey  # noqa: E402
from kmsenv.exceptions import ConfigurationError, NoUsableKeyError  # noqa: E402
from kmsenv.keyheader import DictKeyHeaderStore, KeyHeader, SqliteKeyHeaderStore  # noqa: E402
from kmsenv.kmsspec import KmsSpec  # noqa: E402
from kms_fixtures import *  # noqa: E402,F401,F403
from kms_fixtures import BJ, HZ, SH, kms_calls, kms_options  # noqa: E402


pytestmark = pytest.mark.usefixtures("worker_env")


@pytest.fixture
def counts(local_kms, clean_faults):
    jobkey.clear_cache()
    local_kms.reset_stats()

    return lambda: kms_calls(local_kms)


def test_create_costs_one_call_per_region_and_keeps_no_plaintext(provider, counts):
    job = kmsenv.JobKey.create(provider, encryption_context={"table": "users", "job": "42"})
    assert counts() == {(HZ, "GenerateDataKey"): 1, (BJ, "Encrypt"): 1, (SH, "Encrypt"): 1}
    header = job.headers[0]
    assert [e.key_arn for e in header.encrypted_data_keys] == list(provider.key_arns)
    key = job.data_key(header)  # this process: the provider it came from, one Decrypt
    try:
        blob = pickle.dumps(job)
        assert bytes(key) not in blob
        assert b"_local" not in blob and b"access_key" not in blob
        assert bytes(key).hex() not in repr(job) and "blob" not in repr(job).lower()
        again = pickle.loads(blob)
        assert again.headers == job.headers and again.spec == job.spec
        assert again._local_provider() is None  # a copy elsewhere uses its spec
    finally:
        key[:] = bytes(len(key))
    assert counts()[(HZ, "Decrypt")] == 1


def _worker(job: kmsenv.JobKey, batches: int) -> dict:
    for b in range(batches):
        arr = pa.array([f"row-{b}-{i}" for i in range(1000)])
        out = ka.decrypt_array(ka.encrypt_array(arr, job, format="compact"), job, as_string=True)
        assert out.equals(arr)
    return jobkey.stats()


def test_one_decrypt_per_worker_process_whatever_the_batches(provider, counts):
    job = kmsenv.JobKey.create(provider, encryption_context={"job": "spawned"})
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_worker, [(job, 5)] * 2)  # one task per process (2 × 5 batches)
    decrypts = counts().get((HZ, "Decrypt"), 0)
    assert sorted(r["kms_decrypts"] for r in results) == [1, 1]
    assert len({r["pid"] for r in results}) == 2
    assert decrypts == 2
    with ctx.Pool(2) as pool:  # 8 more tasks on 2 fresh processes: 2 more calls, not 8
        pool.starmap(_worker, [(job, 1)] * 8)
    assert counts()[(HZ, "Decrypt")] == 4


def _child_stats(_):
    return jobkey.stats()


def test_a_forked_child_starts_with_an_empty_cache(provider, counts):
    job = kmsenv.JobKey.create(provider)
    job.data_key(job.headers[0])[:] = bytes(32)
    assert jobkey.stats()["keys"] == 1
    with mp.get_context("fork").Pool(1) as pool:
        child = pool.apply(_child_stats, (None,))
        assert child["keys"] == 0 and child["pid"] != os.getpid()
        done = pool.apply(_worker, (job, 2))
    assert done["kms_decrypts"] == 1  # the child asked KMS itself
    assert jobkey.stats()["keys"] == 1  # the parent's entry is untouched


def test_reader_prefers_its_region_and_fails_over(provider, counts, local_kms):
    job = kmsenv.JobKey.create(provider)
    enc = ka.encrypt_array(pa.array(["a", "b"]), job)
    reader = kmsenv.WorkerSpec.from_provider(provider, kms=KmsSpec.from_kms(provider.kms, prefer_regions=[SH, BJ]))
    assert reader.cmks[0] == provider.key_arns[0]  # order is applied when the provider is built
    jobkey.clear_cache()  # the cache is per process, keyed by the header: a fresh reader
    local_kms.reset_stats()
    assert ka.decrypt_array(enc, reader, as_string=True).to_pylist() == ["a", "b"]
    assert counts() == {(SH, "Decrypt"): 1}
    jobkey.clear_cache()
    local_kms.set_fault(SH, down=True)
    local_kms.reset_stats()
    assert ka.decrypt_array(enc, reader, as_string=True).to_pylist() == ["a", "b"]
    assert counts().get((BJ, "Decrypt")) == 1 and (HZ, "Decrypt") not in counts()
    jobkey.clear_cache()
    for region in (HZ, BJ):
        local_kms.set_fault(region, down=True)
    with pytest.raises(NoUsableKeyError) as info:
        ka.decrypt_array(enc, reader)
    assert len(info.value.errors) == 3


def test_discovery_spec_reads_any_region(provider, counts):
    job = kmsenv.JobKey.create(provider)
    enc = ka.encrypt_array(pa.array(["x"]), job)
    jobkey.clear_cache()
    spec = kmsenv.WorkerSpec(cmks=None, kms=KmsSpec.from_kms(provider.kms, prefer_regions=(BJ,)))
    assert ka.decrypt_array(enc, spec, as_string=True).to_pylist() == ["x"]
    assert counts().get((BJ, "Decrypt")) == 1


def test_cache_ttl_and_size_bounds(provider, counts):
    spec = kmsenv.WorkerSpec.from_provider(provider, cache_max_keys=2)
    jobs = [kmsenv.JobKey.create(provider, spec=spec) for _ in range(3)]
    for job in jobs:
        job.data_key(job.headers[0])
    assert jobkey.stats()["keys"] == 2 and jobkey.stats()["evictions"] == 1
    short = kmsenv.WorkerSpec.from_provider(provider, cache_ttl=0.001)
    job = kmsenv.JobKey.create(provider, spec=short)
    job.data_key(job.headers[0])
    import time

    time.sleep(0.01)
    before = jobkey.stats()["kms_decrypts"]
    job.data_key(job.headers[0])
    assert jobkey.stats()["kms_decrypts"] == before + 1
    with pytest.raises(ConfigurationError):
        kmsenv.WorkerSpec(cache_ttl=0)


def test_alibaba_budget_splits_keys_and_is_enforced(provider, counts):
    job = kmsenv.JobKey.create(provider, rows=10, max_messages_per_key=4)
    assert len(job.headers) == 3
    assert counts()[(HZ, "GenerateDataKey")] == 3
    assert [job.header_for(p, 6).ref for p in range(6)] == [job.headers[i].ref for i in (0, 0, 1, 1, 2, 2)]
    assert job.budget_for(6) == 2
    ka.encrypt_array(pa.array(["a", "b"]), job, partition=(1, 6))
    with pytest.raises(ConfigurationError, match="over its share"):
        ka.encrypt_array(pa.array(["a", "b", "c"]), job, partition=(1, 6))
    # The compact format derives subkeys: no per-key budget.
    ka.encrypt_array(pa.array(["x"] * 50), job, format="compact", partition=(1, 6))
    # Without partitions, this process counts its own use of the key.
    one = kmsenv.JobKey.create(provider, max_messages_per_key=4)
    ka.encrypt_array(pa.array(["a", "b", "c"]), one)
    with pytest.raises(ConfigurationError, match="more than 4 messages"):
        ka.encrypt_array(pa.array(["d", "e"]), one)
    with pytest.raises(ConfigurationError):
        kmsenv.JobKey.create(provider, rows=-1)
    with pytest.raises(ConfigurationError, match="compact"):
        kmsenv.JobKey.create(provider, rows=2**28 * 5000)


def test_jobkey_settings_are_its_own(provider):
    job = kmsenv.JobKey.create(provider, encryption_context={"a": "1"})
    with pytest.raises(ConfigurationError, match="own encryption context"):
        ka.encrypt_array(pa.array(["a"]), job, encryption_context={"a": "2"})
    with pytest.raises(ConfigurationError, match="own algorithm"):
        ka.encrypt_array(pa.array(["a"]), job, algorithm=1)
    with pytest.raises(ConfigurationError):
        kmsenv.WorkerSpec(cmks="acs:kms:cn-hangzhou:1:key/k")
    with pytest.raises(ConfigurationError):
        kmsenv.WorkerSpec.from_provider(object())


# ---------------------------------------------------------------- key headers and stores


def test_key_header_encoding_is_strict(provider):
    job = kmsenv.JobKey.create(provider, encryption_context={"t": "x"})
    header = job.headers[0]
    assert KeyHeader.decode(header.encoded) == header and header.encoded[0] == 0x30
    assert pickle.loads(pickle.dumps(header)).encoded == header.encoded
    from kmsenv.exceptions import MessageFormatError

    with pytest.raises(MessageFormatError):
        KeyHeader.decode(header.encoded + b"\x00")
    with pytest.raises(MessageFormatError):
        KeyHeader.decode(header.encoded[:-1])
    message = kmsenv.encrypt(b"x", provider).ciphertext  # a message header has IV + tag after the fields
    with pytest.raises(MessageFormatError):
        KeyHeader.decode(message[4:])
    with pytest.raises(ConfigurationError):
        KeyHeader(3, {}, header.encrypted_data_keys)  # CBC: never for compact values


def _read_store(store, ref):
    got = store.get(ref)
    return got.encoded if got else None


def test_stores(provider, tmp_path):
    a, b = (kmsenv.JobKey.create(provider).headers[0] for _ in range(2))
    for store in (DictKeyHeaderStore(), SqliteKeyHeaderStore(tmp_path / "keys.db")):
        store.put(a)
        store.put(a)  # idempotent
        store.put(b)
        assert store.get(a.ref) == a and store.get(b.ref) == b
        assert store.get(b"\x00" * 8) is None
        with pytest.raises(ConfigurationError):
            store.get(b"short")
        assert isinstance(store, kmsenv.KeyHeaderStore)
        clone = pickle.loads(pickle.dumps(store))
        assert clone.get(a.ref) == a
    sqlite = SqliteKeyHeaderStore(tmp_path / "keys.db")
    with mp.get_context("spawn").Pool(1) as pool:  # another process reads the same file
        assert pool.apply(_read_store, (sqlite, a.ref)) == a.encoded
    # A different header under a reference already used is refused.
    forged = KeyHeader(a.algorithm, {"other": "ctx"}, a.encrypted_data_keys)
    object.__setattr__(forged, "_digest", a.digest)
    for store in (DictKeyHeaderStore([a]), sqlite):
        with pytest.raises(ConfigurationError, match="another key header"):
            store.put(forged)


def test_worker_spec_carries_the_hedge_options(local_kms, cmks):
    from kmsenv.kms import Kms
    from kmsenv.kmsspec import KmsSpec

    kms = Kms(**kms_options(local_kms))
    hedged = kmsenv.KmsKeyProvider(cmks.hz, cmks.bj, kms=kms, hedge_after=0.05)
    spec = jobkey.WorkerSpec.from_provider(hedged)
    assert (spec.hedge, spec.hedge_after) == (True, 0.05)
    worker_provider = spec._provider()
    assert worker_provider.hedge and worker_provider.hedge_after == 0.05
    plain = jobkey.WorkerSpec.from_provider(kmsenv.KmsKeyProvider(cmks.hz, kms=kms))
    assert (plain.hedge, plain.hedge_after) == (False, None) and not plain._provider().hedge
    assert jobkey.WorkerSpec(cmks=(cmks.hz,), kms=KmsSpec(), hedge=True).hedge_after is None
    with pytest.raises(ConfigurationError, match="hedge"):
        jobkey.WorkerSpec(cmks=(cmks.hz,), hedge=False, hedge_after=0.1)
