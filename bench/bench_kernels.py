"""Every AES-GCM and SM4 kernel candidate side by side with its peer.

    python bench/bench_kernels.py [--rounds 5] [--min-time 0.2] [--json PATH]

The kernel is chosen once per process (csrc/kernels.c), so each candidate runs
in its own worker subprocess with KMSENV_AES_GCM_KERNEL / KMSENV_SM4_KERNEL
forcing it. Every worker also measures the peer (``cryptography``'s AESGCM and
SM4-GCM) in the same process, right after the kernel cells, so each ratio
compares two figures taken side by side; the table shows the median over
rounds (workers run round robin, in a rotating order). Candidates this CPU
cannot run are listed with the reason the selector gave.

Cells (fixed key and IV, no AAD for AES, 32 B AAD for SM4; the cipher call):
* AES-256-GCM seal and open at 1 KiB, 1 MiB and 64 MiB: the bare C call
  (``kmsenv_gcm_seal`` / ``kmsenv_gcm_open``) into a reused buffer, against
  ``AESGCM.encrypt_into`` / ``decrypt_into``-style reuse (``encrypt_into``;
  for open, ``AESGCM.decrypt`` at 1 KiB and ``decrypt_into`` where the
  installed cryptography has it); and ``kmsenv.encrypt`` 1 MiB (a whole
  message, cached data key) against ``AESGCM.encrypt``.
* SM4-GCM seal and open at 1 KiB, 16 KiB and 1 MiB: bare C call against
  ``cryptography``'s SM4-GCM (a new encryptor / decryptor per message, the
  only API it offers). ``gfni512`` is SM4-GCM over gcm128 (OpenSSL's GHASH),
  ``gfni512-vpclmul`` the same CTR with the zmm GHASH (sm4_gfni.c).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import timeit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIB, MIB = 1024, 1 << 20
AES_SIZES = {"1 KiB": KIB, "1 MiB": MIB, "64 MiB": 64 * MIB}
SM4_SIZES = {"1 KiB": KIB, "16 KiB": 16 * KIB, "1 MiB": MIB}
AES_KERNELS = ("evp", "vaes256", "vaes512")
SM4_KERNELS = ("evp", "aesni-avx2", "gfni256", "gfni512", "gfni512-vpclmul")
FLAGS_THAT_MATTER = (
    "aes",
    "pclmulqdq",
    "avx2",
    "vaes",
    "vpclmulqdq",
    "gfni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
)


def rate(fn, min_time: float) -> float:
    """Calls per second over at least min_time seconds."""
    t = timeit.Timer(fn)
    n, elapsed = t.autorange()
    while elapsed < min_time:
        n = max(n * 2, int(n * min_time / max(elapsed, 1e-9) * 1.1))
        elapsed = t.timeit(n)
    return n / elapsed


def cpu_report() -> dict[str, object]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"model": model, "flags": {f: f in flags for f in FLAGS_THAT_MATTER}}


def worker(family: str, min_time: float) -> dict[str, object]:
    sys.path.insert(0, os.path.join(ROOT, "src"))
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import kmsenv
    from kmsenv.crypto import native

    lib, ffi = native.lib, native.ffi
    info = native.kernels()
    out: dict[str, object] = {"kernel": info[family]}
    cells: dict[str, float] = {}
    key16, key32 = bytes(range(16)), bytes(range(32))
    iv, aad = bytes(12), bytes(range(32))
    gc.disable()
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if family == "aes_gcm":
        key = native.NativeKey("AES", key32)
        h = key._h()
        peer = AESGCM(key32)
        for label, n in AES_SIZES.items():
            pt = os.urandom(n)
            buf = ffi.new("uint8_t[]", n + 16)
            into = bytearray(n + 16)
            cells[f"seal {label} kmsenv"] = rate(
                lambda: lib.kmsenv_gcm_seal(h, iv, ffi.NULL, 0, pt, n, buf, buf + n), min_time
            )
            cells[f"seal {label} peer"] = rate(lambda: peer.encrypt_into(iv, pt, None, into), min_time)
            ct = peer.encrypt(iv, pt, None)
            ctb, tag = ct[:n], ct[n:]
            cells[f"open {label} kmsenv"] = rate(
                lambda: lib.kmsenv_gcm_open(h, iv, ffi.NULL, 0, ctb, n, tag, buf), min_time
            )
            if hasattr(peer, "decrypt_into"):
                back = bytearray(n)
                cells[f"open {label} peer"] = rate(lambda: peer.decrypt_into(iv, ct, None, back), min_time)
            elif n <= MIB:
                cells[f"open {label} peer"] = rate(lambda: peer.decrypt(iv, ct, None), min_time)
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

        provider, mib = CachedKeyProvider(), os.urandom(MIB)
        cells["kmsenv.encrypt 1 MiB kmsenv"] = rate(
            lambda: kmsenv.encrypt(mib, provider, encryption_context={"t": "1"}), min_time
        )
        cells["kmsenv.encrypt 1 MiB peer"] = rate(lambda: peer.encrypt(iv, mib, None), min_time)
    else:
        key = native.NativeKey("SM4", key16)
        h = key._h()

        def crypto_sm4(pt: bytes) -> bytes:
            e = Cipher(algorithms.SM4(key16), modes.GCM(iv)).encryptor()
            e.authenticate_additional_data(aad)
            return e.update(pt) + e.finalize() + e.tag

        def crypto_sm4_open(ct: bytes, tag: bytes) -> bytes:
            d = Cipher(algorithms.SM4(key16), modes.GCM(iv, tag)).decryptor()
            d.authenticate_additional_data(aad)
            return d.update(ct) + d.finalize()

        for label, n in SM4_SIZES.items():
            pt = os.urandom(n)
            buf = ffi.new("uint8_t[]", n + 16)
            back = ffi.new("uint8_t[]", max(n, 1))
            cells[f"seal {label} kmsenv"] = rate(
                lambda: lib.kmsenv_gcm_seal(h, iv, aad, 32, pt, n, buf, buf + n), min_time
            )
            cells[f"seal {label} peer"] = rate(lambda: crypto_sm4(pt), min_time)
            sealed = crypto_sm4(pt)
            ct, tag = sealed[:n], sealed[n:]
            if lib.kmsenv_gcm_open(h, iv, aad, 32, ct, n, tag, back) != 0:
                raise RuntimeError("SM4-GCM open failed on cryptography's ciphertext")
            cells[f"open {label} kmsenv"] = rate(
                lambda: lib.kmsenv_gcm_open(h, iv, aad, 32, ct, n, tag, back), min_time
            )
            cells[f"open {label} peer"] = rate(lambda: crypto_sm4_open(ct, tag), min_time)
    out["cells"] = cells
    return out


def run_worker(family: str, kernel: str, min_time: float) -> dict[str, object]:
    env = dict(os.environ)
    for var in ("KMSENV_DISABLE_SIMD", "KMSENV_AES_GCM_KERNEL", "KMSENV_SM4_KERNEL"):
        env.pop(var, None)
    env["KMSENV_AES_GCM_KERNEL" if family == "aes_gcm" else "KMSENV_SM4_KERNEL"] = kernel
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", family, "--min-time", str(min_time)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def size_of(cell: str) -> int:
    for label, n in {**AES_SIZES, **SM4_SIZES}.items():
        if f" {label} " in f" {cell} ":
            return n
    raise KeyError(cell)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--worker", choices=("aes_gcm", "sm4"))
    ap.add_argument("--json", help="also write the medians here")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.min_time)))
        return

    runs = [("aes_gcm", k) for k in AES_KERNELS] + [("sm4", k) for k in SM4_KERNELS]
    samples: dict[tuple[str, str], dict[str, list[float]]] = {}
    chosen: dict[tuple[str, str], dict[str, str]] = {}
    for r in range(args.rounds):
        shift = r % len(runs)
        for family, kernel in runs[shift:] + runs[:shift]:
            res = run_worker(family, kernel, args.min_time)
            chosen[(family, kernel)] = res["kernel"]  # type: ignore[assignment]
            for cell, v in res["cells"].items():  # type: ignore[union-attr]
                samples.setdefault((family, kernel), {}).setdefault(cell, []).append(v)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    cpu = cpu_report()
    import kmsenv
    from kmsenv.crypto import native

    print(
        f"CPU: {cpu['model']}; flags: {', '.join(f for f, on in cpu['flags'].items() if on)}; "
        f"lacks: {', '.join(f for f, on in cpu['flags'].items() if not on) or 'none'}"
    )
    print(
        f"OpenSSL (kmsenv): {kmsenv.backend_info().get('openssl_loaded')}; "
        f"default choice: AES-GCM {native.kernels()['aes_gcm']['name']}, SM4 {native.kernels()['sm4']['name']}"
    )
    print(f"{args.rounds} rounds, medians; ratio = kmsenv / peer measured in the same process\n")
    print("| family | forced kernel | in use | cell | kmsenv MB/s | peer MB/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    medians: dict[str, object] = {"cpu": cpu, "rounds": args.rounds, "rows": []}
    for (family, kernel), cells in samples.items():
        used = chosen[(family, kernel)]["name"]
        if used != kernel:
            print(f"| {family} | {kernel} | {used} | (not run: {chosen[(family, kernel)].get('warning', '')}) | | | |")
            continue
        for cell in sorted(c for c in cells if c.endswith(" kmsenv")):
            base = cell[: -len(" kmsenv")]
            n = size_of(cell) if "kmsenv.encrypt" not in cell else MIB
            mine = statistics.median(cells[cell]) * n / 1e6
            peer_v = cells.get(base + " peer")
            peer = statistics.median(peer_v) * n / 1e6 if peer_v else None
            ratio = f"{mine / peer:.2f}x" if peer else "n/a"
            print(
                f"| {family} | {kernel} | {used} | {base} | {mine:,.0f} | "
                f"{'' if peer is None else f'{peer:,.0f}'} | {ratio} |"
            )
            medians["rows"].append(
                {
                    "family": family,
                    "kernel": kernel,
                    "cell": base,  # type: ignore[union-attr]
                    "kmsenv_mbs": mine,
                    "peer_mbs": peer,
                }
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(medians, fh, indent=1)


if __name__ == "__main__":
    main()
