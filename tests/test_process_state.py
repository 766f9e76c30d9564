"""Per-process state has one home (kmsenv._process): every pool, cache, memo
and lock is registered there and reset in a forked child, and caches never
hand out a key another thread has wiped.

The registry test reads the package's source, so the next module-level cache
fails here until it registers (or is listed below with the reason it may be
shared with a forked child).
"""

from __future__ import annotations

import ast
import importlib
import os
import pathlib
import pickle
import sys
import threading
import time

import pytest

import kmsenv
from kmsenv import _process, engine, jobkey
from kmsenv._secret import KeyCell
from kmsenv.cache import CachingProvider, DataKeyCache
from kmsenv.exceptions import WipedKeyError
from kmsenv.message.codec import decode_message
from kmsenv.providers import KmsKeyProvider
from kms_fixtures import *  # noqa: F401,F403
from helpers import join_fork, start_in_fork
from kms_fixtures import kms_options

PACKAGE = pathlib.Path(kmsenv.__file__).parent
FORK = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

# Module-level names that look like state but are the same in every process,
# with the reason. Anything else mutable at module level must be registered.
SHARED_ON_PURPOSE = {
    ("kmsenv._process", "_REGISTRY"): "the registry itself",
    ("kmsenv._process", "_TRACKED"): "the registry itself",
    ("kmsenv._process", "_RESET_ERRORS"): "filled by the child's reset",
    ("kmsenv._process", "_generation"): "advanced by the child's reset",
    ("kmsenv._wipe", "_native"): "which native module is loaded: the same after fork",
    ("kmsenv.crypto", "_backend"): "the chosen backend: the same after fork",
    ("kmsenv.crypto", "_native_checked"): "a fact about the loaded core",
    ("kmsenv.crypto", "_native_reason"): "a fact about the loaded core",
    ("kmsenv.crypto.pure", "_SM4_GCM_OK"): "a fact about the installed cryptography",
    ("kmsenv.kms", "_DirectAdapter"): "a class, built once",
    ("kmsenv.localkms.actions", "_ALIAS_CHARS"): "a constant set",
}

MUTABLE_CALLS = {
    "Lock",
    "RLock",
    "Condition",
    "Semaphore",
    "BoundedSemaphore",
    "Event",
    "local",
    "OrderedDict",
    "dict",
    "list",
    "set",
    "defaultdict",
    "deque",
    "_Memo",
    "ThreadPoolExecutor",
    "count",
    "WeakSet",
    "WeakValueDictionary",
    "WeakKeyDictionary",
}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _module_state(tree: ast.Module) -> set[str]:
    """Names a module binds to mutable objects at top level, plus every name a
    function rebinds with ``global``."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        mutable = isinstance(value, (ast.Dict, ast.List, ast.Set)) and not (
            getattr(value, "keys", None) or getattr(value, "elts", None)
        )
        if isinstance(value, ast.Call):
            func = value.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            mutable = mutable or called in MUTABLE_CALLS
        if mutable:
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            names.update(node.names)
    return names


def _all_state() -> dict[tuple[str, str], str]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        for name in _module_state(ast.parse(path.read_text(encoding="utf-8"))):
            found[(module, name)] = str(path)
    return found


def _import_everything() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        if module.endswith("__main__"):  # runs the CLI
            continue
        try:
            importlib.import_module(module)
        except ImportError:  # an optional engine that is not installed: its state is checked where it is
            pass


def test_only_the_process_module_registers_at_fork_handlers():
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "register_at_fork" in p.read_text(encoding="utf-8") and p.name != "_process.py"
    ]
    assert offenders == []


def test_every_module_level_pool_cache_memo_and_lock_is_registered():
    _import_everything()
    registered = {(r.module, name) for r in _process.registry() for name in r.names}
    found = _all_state()
    assert len(found) > 30  # the scan sees the package (caches, memos, locks)
    missing = sorted(f"{m}.{n}" for (m, n) in found if (m, n) not in registered and (m, n) not in SHARED_ON_PURPOSE)
    assert missing == [], "register these with kmsenv._process (or list them in SHARED_ON_PURPOSE with a reason)"
    # Registrations name real globals (a rename must not leave a stale entry).
    for reg in _process.registry():
        module = sys.modules[reg.module]
        for name in reg.names:
            assert hasattr(module, name), f"{reg.module}.{name}"


def _classes_with_locks() -> dict[str, set[str]]:
    """Class name -> its methods, for every class that keeps a lock in an attribute."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "localkms" in path.parts:  # the test server: one process, never forked with clients
            continue
        for cls in (n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(n, ast.ClassDef)):
            methods = {f.name for f in cls.body if isinstance(f, ast.FunctionDef)}
            for node in ast.walk(cls):
                if (
                    isinstance(node, ast.Assign)
                    and isinstance(node.value, ast.Call)
                    and isinstance(node.value.func, ast.Attribute)
                    and node.value.func.attr in ("Lock", "RLock")
                    and any(isinstance(t, ast.Attribute) for t in node.targets)
                ):
                    found[f"{_module_name(path)}.{cls.name}"] = methods
    return found


def test_every_class_that_keeps_a_lock_resets_it_after_fork():
    """A parent thread may hold an object's lock at fork time; an object that
    keeps one must be tracked and replace it in the child."""
    classes = _classes_with_locks()
    assert "kmsenv.cache.DataKeyCache" in classes
    missing = sorted(name for name, methods in classes.items() if "_after_fork_in_child" not in methods)
    assert missing == []


def test_objects_with_per_process_state_are_tracked(local_kms):
    from kmsenv.aliyun import AliyunConfig, AliyunCrypto

    cache = DataKeyCache()
    kms = kmsenv.Kms(**kms_options(local_kms))
    client = AliyunCrypto(AliyunConfig("LTAIunused", "unused"))
    assert all(obj in _process._TRACKED for obj in (cache, kms, client))
    with pytest.raises(TypeError):
        _process.track(object())


# ---------------------------------------------------------------- after fork


def _in_child(check) -> dict:
    """Run ``check()`` in a forked child; its result comes back."""
    return join_fork(start_in_fork(check))


@FORK
def test_a_forked_child_starts_with_fresh_state(local_kms, cmks, worker_env):
    kms = kmsenv.Kms(**kms_options(local_kms))
    cache = DataKeyCache()
    inner = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
    provider = CachingProvider(inner, cache)
    message = kmsenv.encrypt(b"warm", provider).ciphertext  # an encrypt entry, IVs drawn
    kmsenv.decrypt(message, provider)  # a decrypt entry
    job = kmsenv.JobKey.create(inner)
    jobkey.clear_cache()
    job.data_key(job.headers[0])  # a job-key cache entry
    from kmsenv.stream import _buffers

    _buffers.give_back(_buffers.take(1 << 16))
    parent_pool = set(engine._IV_POOL)
    assert parent_pool and len(cache) == 2 and jobkey.stats()["keys"] == 1 and kms._clients and _buffers._free

    def check() -> dict:
        entries = list(cache._entries.values())  # as the fork left them
        clients = len(kms._clients)
        out = kmsenv.encrypt(b"child", provider).ciphertext
        header, body = decode_message(out)
        return {
            "errors": _process._RESET_ERRORS,
            "generation": _process.generation(),
            "encrypt_entries": sum(e.edks is not None for e in entries),
            "decrypt_entries": sum(e.edks is None for e in entries),
            "jobkey_keys": jobkey.stats()["keys"],
            "kms_clients": clients,
            "iv_reused": (header.header_iv + body.iv) in parent_pool
            or header.header_iv in {p[:12] for p in parent_pool},
            "decrypts": kmsenv.decrypt(message, provider).plaintext.decode(),
            "buffers": len(_buffers._free),
        }

    got = _in_child(check)
    assert got["errors"] == [] and got["generation"] == _process.generation() + 1
    # The parent's encryption key is gone in the child (it made its own), its
    # decrypt entry still serves, and nothing else of the parent's survived.
    assert got["encrypt_entries"] == 0 and got["decrypt_entries"] == 1
    assert got["decrypts"] == "warm"
    assert got["jobkey_keys"] == 0 and got["kms_clients"] == 0 and got["buffers"] == 0
    assert got["iv_reused"] is False


def test_the_iv_pool_is_refilled_in_a_process_that_did_not_draw_it():
    """A fork that runs no Python handler (a C library calling fork()) leaves
    the pool in place; the pid it was drawn in gives it away."""
    engine._iv_pair()
    inherited = set(engine._IV_POOL)
    assert inherited
    saved = engine._IV_PID
    engine._IV_PID = -1  # as if drawn by another process
    try:
        fresh = engine._iv_pair()
    finally:
        assert engine._IV_PID == os.getpid()
    assert fresh not in inherited and not (inherited & set(engine._IV_POOL))
    assert saved == os.getpid()


# ---------------------------------------------------------------- wiped keys


def test_a_wiped_key_cell_refuses_to_be_used():
    cell = KeyCell(b"k" * 32)
    copy = cell.copy()
    assert copy == bytearray(b"k" * 32) and copy is not cell.copy()
    assert "k" * 8 not in repr(cell)
    with pytest.raises(TypeError):
        pickle.dumps(cell)
    cell.wipe()
    cell.wipe()  # idempotent
    assert cell.wiped and "wiped" in repr(cell)
    with pytest.raises(WipedKeyError):
        cell.copy()
    assert isinstance(WipedKeyError("x"), kmsenv.KmsEnvError)


def test_key_cell_copy_racing_a_wipe_never_yields_zeros(switch_often):
    key = bytes(range(1, 33))
    zeros, good, refused = [], [0], [0]
    for _ in range(50):
        cell = KeyCell(key)
        barrier = threading.Barrier(3)

        def reader():
            barrier.wait()
            while True:
                try:
                    got = cell.copy()
                except WipedKeyError:
                    refused[0] += 1
                    return
                if got != key:
                    zeros.append(bytes(got))
                good[0] += 1

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        barrier.wait()
        time.sleep(0.0005)
        cell.wipe()
        for t in threads:
            t.join()
    assert zeros == [] and refused[0] == 100 and good[0] > 0


@pytest.fixture
def switch_often():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # many more thread switches: races show up in seconds
    yield
    sys.setswitchinterval(old)


def test_job_key_cache_never_hands_out_an_evicted_key(provider, worker_env, switch_often):
    """Regression: an entry evicted (capacity, TTL, clear_cache) between the
    lookup and the copy was copied after its wipe: 32 zero bytes, then used
    to seal values. 4 keys, capacity 1, 4 threads and a clearing thread."""
    m = 1000
    spec = kmsenv.WorkerSpec.from_provider(provider, cache_max_keys=1)
    job = kmsenv.JobKey.create(provider, rows=4 * m, max_messages_per_key=m, spec=spec)
    assert len(job.headers) == 4
    jobkey.clear_cache()
    real = {h.ref: bytes(job.data_key(h)) for h in job.headers}
    wrong: list[bytes] = []
    calls = [0]
    stop = time.monotonic() + 2.5

    def work(i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            header = job.headers[(i + n) % 4]
            n += 1
            key = job.data_key(header)
            if bytes(key) != real[header.ref]:
                wrong.append(bytes(key))
            calls[0] += 1

    def clearer() -> None:
        while time.monotonic() < stop:
            jobkey.clear_cache()
            time.sleep(0.0005)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)] + [threading.Thread(target=clearer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls[0] > 200
    assert wrong == [], f"{len(wrong)} of {calls[0]} keys were not the real key (zeros: {wrong.count(bytes(32))})"


def test_data_key_cache_at_capacity_one_under_threads(local_kms, cmks, kms, switch_often):
    """16 threads, capacity 1, several contexts and a clearing thread: every
    message opens with the real key and none under an all-zero key."""
    cache = DataKeyCache(capacity=1)
    provider = CachingProvider(KmsKeyProvider(cmks.hz, kms=kms), cache)
    made: list[tuple[bytes, bytes]] = []
    stop = time.monotonic() + 2.0

    def work(i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            pt = f"{i}-{n}".encode()
            made.append((pt, kmsenv.encrypt(pt, provider, encryption_context={"c": str(n % 3)}).ciphertext))
            n += 1

    def clearer() -> None:
        while time.monotonic() < stop:
            cache.clear()
            time.sleep(0.001)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)] + [threading.Thread(target=clearer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) > 100
    plain = KmsKeyProvider(cmks.hz, kms=kms)
    assert kmsenv.decrypt_many([m for _, m in made], plain) == [pt for pt, _ in made]
    zero = ZeroKeyProvider()
    for _, message in made[:: max(1, len(made) // 50)]:
        with pytest.raises(kmsenv.AuthenticationError):
            kmsenv.decrypt(message, zero)


class ZeroKeyProvider:
    """Answers every data key with zeros: nothing kmsenv sealed may open with it."""

    def generate_data_key(self, algorithm, encryption_context):  # pragma: no cover - never asked
        raise AssertionError("encrypt-only")

    def decrypt_data_key(self, encrypted_data_keys, algorithm, encryption_context):
        return bytearray(kmsenv.Algorithm(algorithm).key_len)


# ---------------------------------------------------------------- KMS connections


@FORK
def test_a_forked_child_opens_its_own_kms_connections(local_kms, cmks):
    """Two processes writing requests on one inherited keep-alive socket read
    each other's responses (a data key meant for one landing in the other)."""
    kms = kmsenv.Kms(**kms_options(local_kms))
    provider = KmsKeyProvider(cmks.hz, kms=kms)
    provider.generate_data_key(kmsenv.Algorithm.AES_GCM_NOPADDING_256, {}).wipe()
    from darabonba.core import DaraCore

    parent_sessions = [id(s) for s in DaraCore._sessions.values()]
    assert parent_sessions

    def check() -> dict:
        keys = set()
        for _ in range(20):
            with provider.generate_data_key(kmsenv.Algorithm.AES_GCM_NOPADDING_256, {}) as dk:
                keys.add(bytes(dk.plaintext).hex())
        return {"reused": [id(s) for s in DaraCore._sessions.values() if id(s) in parent_sessions], "keys": len(keys)}

    got = _in_child(check)
    assert got == {"reused": [], "keys": 20}
