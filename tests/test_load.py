"""Load: 16 threads encrypting and decrypting through one shared ``Kms`` and
``LocalKms`` (two regions, AES-256 and SM4 providers, single messages and
``encrypt_many`` batches) for a bounded time.

Checks: no errors at all; every message made is decrypted (by another thread
than its writer where possible, and the rest at the end); every data key is
distinct; and no GCM IV is used twice under one data key: per data key, the
header IV (one GMAC per header) and every body IV are pairwise distinct.
A provider wrapper records, per thread, the data key each encrypt used; IVs are
read back from the messages.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections import defaultdict

import kmsenv
from kmsenv import Algorithm, KmsKeyProvider

from kms_fixtures import *  # noqa: F401,F403

THREADS = 16
WORK_SECONDS = float(os.environ.get("KMSENV_LOAD_SECONDS", "4"))  # hard cap 10 below
MAX_OPS_PER_THREAD = 400


class KeyRecordingProvider:
    """Delegates to a real provider; remembers which data key (by SHA-256) the
    current thread's last generate_data_key returned."""

    def __init__(self, inner: KmsKeyProvider):
        self.inner = inner
        self.algorithm = inner.algorithm
        self._local = threading.local()
        self.generated: list[str] = []
        self._lock = threading.Lock()

    def generate_data_key(self, algorithm, encryption_context):
        dk = self.inner.generate_data_key(algorithm, encryption_context)
        digest = hashlib.sha256(bytes(dk.plaintext)).hexdigest()
        self._local.last = digest
        with self._lock:
            self.generated.append(digest)
        return dk

    def decrypt_data_key(self, encrypted_data_keys, algorithm, encryption_context):
        return self.inner.decrypt_data_key(encrypted_data_keys, algorithm, encryption_context)

    @property
    def last_key(self) -> str:
        return self._local.last


def test_sixteen_threads_no_errors_every_message_decrypts_no_iv_reuse(kms, cmks):
    providers = [
        KeyRecordingProvider(KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)),
        KeyRecordingProvider(KmsKeyProvider(cmks.sm4, cmks.sm4_bj, kms=kms, algorithm=Algorithm.SM4_GCM_NOPADDING_128)),
    ]
    # Each reader names one CMK of each writer, in one region: both read every message.
    readers = [KmsKeyProvider(cmks.bj, cmks.sm4_bj, kms=kms), KmsKeyProvider(cmks.hz, cmks.sm4, kms=kms)]
    pending: queue.Queue = queue.Queue()  # (message(s), plaintext(s), batch?) awaiting decryption
    ivs: dict[str, list[tuple[str, bytes]]] = defaultdict(list)  # data key -> [(kind, iv)]
    ivs_lock = threading.Lock()
    errors: list[BaseException] = []
    counts = {"encrypted": 0, "decrypted": 0}
    counts_lock = threading.Lock()
    deadline = time.monotonic() + min(WORK_SECONDS, 10.0)
    start = threading.Barrier(THREADS)

    def record(key: str, messages: list[bytes]) -> None:
        header_ivs = {kmsenv.parse_header(m).header_iv for m in messages}
        assert len(header_ivs) == 1  # one header (one GMAC) per data key
        entries = [("header", header_ivs.pop())]
        for m in messages:
            entries.append(("body", kmsenv.message.codec.decode_message(m)[1].iv))
        with ivs_lock:
            ivs[key].extend(entries)

    def decrypt_one(item, reader) -> None:
        messages, plaintexts, batch = item
        if batch:
            assert kmsenv.decrypt_many(messages, reader) == plaintexts
        else:
            assert kmsenv.decrypt(messages[0], reader).plaintext == plaintexts[0]
        with counts_lock:
            counts["decrypted"] += len(messages)

    def worker(n: int) -> None:
        provider = providers[n % 2]
        reader = readers[n % 2]
        try:
            start.wait()
            for i in range(MAX_OPS_PER_THREAD):
                if time.monotonic() >= deadline:
                    break
                if i % 4 == 3:
                    plaintexts = [b"t%d-%d-%d" % (n, i, j) * (j + 1) for j in range(8)]
                    messages = kmsenv.encrypt_many(plaintexts, provider, encryption_context={"t": str(n)})
                    item = (messages, plaintexts, True)
                else:
                    plaintexts = [os.urandom(i % 64)]
                    messages = [kmsenv.encrypt(plaintexts[0], provider).ciphertext]
                    item = (messages, plaintexts, False)
                record(provider.last_key, messages)
                with counts_lock:
                    counts["encrypted"] += len(messages)
                pending.put(item)
                try:  # decrypt someone's message (often another thread's)
                    other = pending.get_nowait()
                except queue.Empty:
                    continue
                decrypt_one(other, reader)
        except BaseException as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,), name=f"load-{n}") for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert not errors, f"{len(errors)} errors, first: {errors[0]!r}"

    # Whatever is still queued is decrypted now: every message must decrypt.
    while True:
        try:
            item = pending.get_nowait()
        except queue.Empty:
            break
        decrypt_one(item, readers[0])
    generated = [g for p in providers for g in p.generated]
    assert len(set(generated)) == len(generated), "a data key was handed out twice"
    assert set(ivs) == set(generated)
    for key, entries in ivs.items():
        used = [iv for _, iv in entries]
        assert len(set(used)) == len(used), f"an IV was used twice under one data key: {entries}"
        assert all(len(iv) == 12 for iv in used)
    assert counts["encrypted"] == counts["decrypted"] >= THREADS, counts
    print(
        f"load: {THREADS} threads, {counts['encrypted']} messages encrypted and decrypted, "
        f"{sum(len(p.generated) for p in providers)} data keys"
    )
