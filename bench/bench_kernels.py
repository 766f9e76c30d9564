"""SIMD kernels against the EVP fallback and the Python peers (issue 5).

    python bench/bench_kernels.py [--rounds 5] [--min-time 0.2]

The kernel choice is fixed once per process, so every round runs two worker
subprocesses back to back, alternating their order: one with the default
dispatch (SIMD kernels) and one with KMSENV_DISABLE_SIMD=1 (OpenSSL EVP).
The peers (cryptography, gmssl, AESGCM) are measured inside the SIMD worker
of the same round. Each cell gets at least --min-time seconds per round
(timeit autorange, GC off); the table shows the median over rounds, in MB/s
and operations per second.

Cells:
* SM4-GCM 64 B / 1 KiB / 1 MiB, 32 B AAD, fixed key and IV (the cipher call):
  kmsenv ``NativeKey.gcm_seal`` (Python wrapper, returns bytes) and the bare
  C call into a preallocated buffer, SIMD vs EVP; ``cryptography`` SM4-GCM
  (new encryptor per message, the only API it has); gmssl SM4-CBC (gmssl has
  no GCM; its CBC is the closest, pure Python), 64 B and 1 KiB only.
* AES-256-GCM 1 MiB: ``kmsenv.encrypt`` (complete message, cached data key),
  ``NativeKey.gcm_seal`` and the bare C call (VAES vs EVP), against
  ``AESGCM.encrypt`` and ``AESGCM.encrypt_into`` (reused bytearray).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import timeit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"64 B": 64, "1 KiB": 1024, "1 MiB": 1 << 20}


def rate(fn, min_time: float) -> float:
    """Calls per second over at least min_time seconds."""
    t = timeit.Timer(fn)
    n, elapsed = t.autorange()
    while elapsed < min_time:
        n = max(n * 2, int(n * min_time / max(elapsed, 1e-9) * 1.1))
        elapsed = t.timeit(n)
    return n / elapsed


def worker(simd: bool, min_time: float) -> dict[str, float]:
    sys.path.insert(0, os.path.join(ROOT, "src"))
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import kmsenv
    from kmsenv.crypto import native

    lib, ffi = native.lib, native.ffi
    tag_ = "simd" if simd else "evp"
    out: dict[str, float] = {}
    key16, key32 = bytes(range(16)), bytes(range(32))
    iv, aad = bytes(12), bytes(range(32))
    gc.disable()

    sm4 = native.NativeKey("SM4", key16)
    for label, n in SIZES.items():
        pt = os.urandom(n)
        buf = ffi.new("uint8_t[]", n + 16)
        out[f"sm4 {label} kmsenv-{tag_} wrapper"] = rate(lambda: sm4.gcm_seal(iv, aad, pt), min_time)
        h = sm4._h()
        out[f"sm4 {label} kmsenv-{tag_} bare"] = rate(
            lambda: lib.kmsenv_gcm_seal(h, iv, aad, 32, pt, n, buf, buf + n), min_time
        )

    aes = native.NativeKey("AES", key32)
    mib = os.urandom(1 << 20)
    abuf = ffi.new("uint8_t[]", (1 << 20) + 16)
    ah = aes._h()
    out[f"aes 1 MiB kmsenv-{tag_} wrapper"] = rate(lambda: aes.gcm_seal(iv, b"", mib), min_time)
    out[f"aes 1 MiB kmsenv-{tag_} bare"] = rate(
        lambda: lib.kmsenv_gcm_seal(ah, iv, ffi.NULL, 0, mib, 1 << 20, abuf, abuf + (1 << 20)), min_time
    )
    from helpers import ARN_BJ, ARN_HZ, wrap  # tests/helpers.py

    class CachedKeyProvider:
        """One data key wrapped for two CMKs, no KMS call (a warm cache)."""

        def __init__(self) -> None:
            self.key = os.urandom(32)
            self.edks = [kmsenv.EncryptedDataKey(a, wrap(a, {"t": "1"}, self.key)) for a in (ARN_BJ, ARN_HZ)]

        def generate_data_key(self, algorithm, ctx):
            return kmsenv.DataKey(self.key, self.edks)

        def decrypt_data_key(self, edks, algorithm, ctx):
            return bytearray(self.key)

    provider = CachedKeyProvider()
    ctx = {"t": "1"}
    out[f"aes 1 MiB kmsenv.encrypt-{tag_}"] = rate(
        lambda: kmsenv.encrypt(mib, provider, encryption_context=ctx), min_time
    )

    if simd:  # peers, once per round
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        def crypto_sm4(pt: bytes) -> bytes:
            e = Cipher(algorithms.SM4(key16), modes.GCM(iv)).encryptor()
            e.authenticate_additional_data(aad)
            return e.update(pt) + e.finalize() + e.tag

        for label, n in SIZES.items():
            pt = os.urandom(n)
            out[f"sm4 {label} cryptography"] = rate(lambda: crypto_sm4(pt), min_time)
        try:
            from gmssl.sm4 import SM4_ENCRYPT, CryptSM4

            g = CryptSM4()
            g.set_key(key16, SM4_ENCRYPT)
            for label in ("64 B", "1 KiB"):
                pt = os.urandom(SIZES[label])
                out[f"sm4 {label} gmssl-cbc"] = rate(lambda: g.crypt_cbc(bytes(16), pt), min_time)
        except ImportError:
            pass
        a = AESGCM(key32)
        into = bytearray((1 << 20) + 16)
        out["aes 1 MiB AESGCM.encrypt"] = rate(lambda: a.encrypt(iv, mib, None), min_time)
        out["aes 1 MiB AESGCM.encrypt_into"] = rate(lambda: a.encrypt_into(iv, mib, None, into), min_time)
    out["_features"] = int(lib.kmsenv_features())
    return out


def run_worker(simd: bool, min_time: float) -> dict[str, float]:
    env = dict(os.environ)
    env.pop("KMSENV_DISABLE_SIMD", None)
    if not simd:
        env["KMSENV_DISABLE_SIMD"] = "1"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "simd" if simd else "evp",
           "--min-time", str(min_time)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--worker", choices=("simd", "evp"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker == "simd", args.min_time)))
        return

    samples: dict[str, list[float]] = {}
    feats = {}
    for r in range(args.rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        for simd in order:
            res = run_worker(simd, args.min_time)
            feats["simd" if simd else "evp"] = res.pop("_features")
            for k, v in res.items():
                samples.setdefault(k, []).append(v)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"features: simd worker 0x{feats['simd']:x}, evp worker 0x{feats['evp']:x}; "
          f"{args.rounds} interleaved rounds, medians\n")
    print("| cell | MB/s | ops/s | min..max ops/s |")
    print("|---|---|---|---|")
    for k in sorted(med):
        size = SIZES[" ".join(k.split()[1:3])]
        v = samples[k]
        print(f"| {k} | {med[k] * size / 1e6:,.1f} | {med[k]:,.0f} | {min(v):,.0f}..{max(v):,.0f} |")

    def ratio(a: str, b: str) -> str:
        return f"{med[a] / med[b]:.2f}x" if a in med and b in med else "n/a"

    print("\nratios (medians):")
    for label in SIZES:
        print(f"  SM4-GCM {label}: SIMD/EVP wrapper {ratio(f'sm4 {label} kmsenv-simd wrapper', f'sm4 {label} kmsenv-evp wrapper')}, "
              f"SIMD wrapper/cryptography {ratio(f'sm4 {label} kmsenv-simd wrapper', f'sm4 {label} cryptography')}, "
              f"SIMD bare/cryptography {ratio(f'sm4 {label} kmsenv-simd bare', f'sm4 {label} cryptography')}, "
              f"SIMD wrapper/gmssl-cbc {ratio(f'sm4 {label} kmsenv-simd wrapper', f'sm4 {label} gmssl-cbc')}")
    print(f"  AES-256-GCM 1 MiB: VAES/EVP bare {ratio('aes 1 MiB kmsenv-simd bare', 'aes 1 MiB kmsenv-evp bare')}, "
          f"kmsenv.encrypt(VAES)/AESGCM.encrypt {ratio('aes 1 MiB kmsenv.encrypt-simd', 'aes 1 MiB AESGCM.encrypt')}, "
          f"kmsenv.encrypt(EVP)/AESGCM.encrypt {ratio('aes 1 MiB kmsenv.encrypt-evp', 'aes 1 MiB AESGCM.encrypt')}, "
          f"bare VAES/encrypt_into {ratio('aes 1 MiB kmsenv-simd bare', 'aes 1 MiB AESGCM.encrypt_into')}")


if __name__ == "__main__":
    main()
