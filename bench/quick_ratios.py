"""Quick side-by-side ratios (one process, interleaved rounds, medians).

    python bench/quick_ratios.py [--rounds 5]

A stop-gap until the full harness (bench/compare.py) lands: kmsenv.encrypt /
decrypt of a complete 1 KiB message and encrypt_many / decrypt_many of 100 B
fields, against bare ``cryptography`` AESGCM calls. The provider hands out a
cached data key (no KMS), as the targets specify.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

import kmsenv  # noqa: E402
from helpers import ARN_BJ, ARN_HZ, wrap  # noqa: E402


class CachedKeyProvider:
    """Hands out one data key wrapped for two CMKs (no KMS call), like a warm cache."""

    def __init__(self):
        self.key = os.urandom(32)
        self.edks = [kmsenv.EncryptedDataKey(a, wrap(a, {"t": "1"}, self.key)) for a in (ARN_BJ, ARN_HZ)]

    def generate_data_key(self, algorithm, ctx):
        return kmsenv.DataKey(self.key, self.edks)

    def decrypt_data_key(self, edks, algorithm, ctx):
        return bytearray(self.key)


def rate(fn, per_call: int, min_time=0.2) -> float:
    t = timeit.Timer(fn)
    n, elapsed = t.autorange()
    while elapsed < min_time:
        n *= 2
        elapsed = t.timeit(n)
    return n * per_call / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    p = CachedKeyProvider()
    ctx = {"t": "1"}
    aes = AESGCM(os.urandom(32))
    kib, small = os.urandom(1024), [os.urandom(100) for _ in range(10000)]
    msg = kmsenv.encrypt(kib, p, encryption_context=ctx).ciphertext
    batch = kmsenv.encrypt_many(small, p, encryption_context=ctx)
    aes_ct = aes.encrypt(b"\0" * 12, kib, None)
    aes_small = aes.encrypt(b"\0" * 12, small[0], None)
    cases = {
        "AESGCM.encrypt 1KiB": lambda: aes.encrypt(os.urandom(12), kib, None),
        "AESGCM.decrypt 1KiB": lambda: aes.decrypt(b"\0" * 12, aes_ct, None),
        "kmsenv.encrypt 1KiB": lambda: kmsenv.encrypt(kib, p, encryption_context=ctx),
        "kmsenv.decrypt 1KiB": lambda: kmsenv.decrypt(msg, p),
        "AESGCM.encrypt 100B": lambda: aes.encrypt(os.urandom(12), small[0], None),
        "AESGCM.decrypt 100B": lambda: aes.decrypt(b"\0" * 12, aes_small, None),
    }
    batch_cases = {
        "kmsenv.encrypt_many 100B": lambda: kmsenv.encrypt_many(small, p, encryption_context=ctx),
        "kmsenv.decrypt_many 100B": lambda: kmsenv.decrypt_many(batch, p),
    }
    results: dict[str, list[float]] = {k: [] for k in (*cases, *batch_cases)}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            results[name].append(rate(fn, 1))
        for name, fn in batch_cases.items():
            results[name].append(rate(fn, len(small)))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"backend: {kmsenv.backend_name()}, rounds: {args.rounds} (medians, messages/s)")
    for k, v in med.items():
        print(f"  {k:28s} {v:12,.0f}")
    print("ratios:")
    print(f"  encrypt 1KiB / AESGCM.encrypt (nonce per call): {med['kmsenv.encrypt 1KiB'] / med['AESGCM.encrypt 1KiB']:.3f}")
    print(f"  decrypt 1KiB / AESGCM.decrypt:                  {med['kmsenv.decrypt 1KiB'] / med['AESGCM.decrypt 1KiB']:.3f}")
    print(f"  encrypt_many 100B / AESGCM.encrypt:             {med['kmsenv.encrypt_many 100B'] / med['AESGCM.encrypt 100B']:.3f}")
    print(f"  decrypt_many 100B / AESGCM.decrypt:             {med['kmsenv.decrypt_many 100B'] / med['AESGCM.decrypt 100B']:.3f}")


if __name__ == "__main__":
    main()
