"""The SIMD kernels (AES-GCM: VAES on ymm and zmm; SM4: GFNI on zmm and ymm,
the AES-NI method on AVX2) and the OpenSSL EVP fallback must produce identical
bytes, and the per-process choice (csrc/kernels.c) must be what it says. The
choice is fixed once per process, so each path runs in its own subprocess:
default, KMSENV_DISABLE_SIMD=1, and each kernel forced by name. A kernel this
CPU cannot run is skipped with the instructions it lacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kmsenv.crypto import native

pytestmark = pytest.mark.skipif(native.lib is None, reason="native core not built")

# Bit not yet named in kmsenv_core.h (see the issue 5 report): SM4 on AVX2+VAES.
FEATURE_SM4_AVX2 = 16

_CHILD = r"""
import hashlib, json, sys
from kmsenv.crypto import native
from kmsenv.crypto import interface as I

def det(seed, n):
    return b"".join(hashlib.sha256(b"%s:%d" % (seed, i)).digest() for i in range(n // 32 + 1))[:n]

sizes = list(range(0, 300)) + [511, 512, 513, 1023, 1024, 1025, 4095, 4096, 4097,
                               65536 + 3, (1 << 20) + 7]
digest = {}
for cipher, keylen in (("SM4", 16), ("AES", 16), ("AES", 32)):
    h = hashlib.sha256()
    key = native.NativeKey(cipher, det(b"key" + cipher.encode(), keylen))
    for n in sizes:
        iv = det(b"iv%d" % n, 12)
        aad = det(b"aad%d" % n, n % 97)
        pt = det(b"pt%d" % n, n)
        ct, tag = key.gcm_seal(iv, aad, pt)
        assert key.gcm_open(iv, aad, ct, tag) == pt
        h.update(ct + tag)
    for mode in (I.CTR, I.CBC, I.CBC_PKCS7):
        for n in (0, 16, 32, 48, 256, 4096, 4096 + 16):
            iv = det(b"liv%d" % n, 16)
            pt = det(b"lpt%d" % n, n)
            if mode == I.CBC_PKCS7:
                pt = pt[:-3] if n else pt
            ct = key.legacy_encrypt(mode, iv, pt)
            assert key.legacy_decrypt(mode, iv, ct) == pt
            h.update(ct)
    digest["%s-%d" % (cipher, keylen)] = h.hexdigest()
info = native.version_info()
print(json.dumps({"digest": digest, "features": info["features"], "kernels": info["kernels"],
                  "raw": int(native.lib.kmsenv_features())}))
"""


# Which kernel each forced run asks for (None: leave the variable unset).
_FORCED = {
    "wide-ghash": {"KMSENV_AES_GCM_KERNEL": "vaes512", "KMSENV_SM4_KERNEL": "gfni512-vpclmul"},
    "wide": {"KMSENV_AES_GCM_KERNEL": "vaes512", "KMSENV_SM4_KERNEL": "gfni512"},
    "ymm": {"KMSENV_AES_GCM_KERNEL": "vaes256", "KMSENV_SM4_KERNEL": "gfni256"},
    "aesni": {"KMSENV_AES_GCM_KERNEL": "evp", "KMSENV_SM4_KERNEL": "aesni-avx2"},
}
# What each family's kernel needs from /proc/cpuinfo, for the skip reasons.
_NEEDS = {
    "vaes512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "vaes", "vpclmulqdq", "aes", "pclmulqdq"},
    "vaes256": {"avx2", "vaes", "vpclmulqdq", "aes", "pclmulqdq"},
    "gfni512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "gfni"},
    # gfni512 plus its own SM4-GCM on the zmm GHASH (kernels.c asks for the
    # AES_VAES512 bit, which carries VPCLMULQDQ)
    "gfni512-vpclmul": {
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512dq",
        "gfni",
        "vpclmulqdq",
        "pclmulqdq",
        "vaes",
        "aes",
    },
    "gfni256": {"avx2", "gfni"},
    "aesni-avx2": {"avx2", "vaes", "aes"},
    "evp": set(),
}


def _run(disable: bool = False, extra: dict[str, str] | None = None) -> dict:
    env = dict(os.environ)
    for var in ("KMSENV_DISABLE_SIMD", "KMSENV_AES_GCM_KERNEL", "KMSENV_SM4_KERNEL", "KMSENV_KERNEL_SELFTEST_FAULT"):
        env.pop(var, None)
    if disable:
        env["KMSENV_DISABLE_SIMD"] = "1"
    env.update(extra or {})
    # The child imports the same kmsenv as this process (installed or in-tree).
    import kmsenv

    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(kmsenv.__file__)))
    env["PYTHONPATH"] = pkg_parent + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-W", "always::RuntimeWarning", "-c", _CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["stderr"] = out.stderr
    return result


@pytest.fixture(scope="module")
def both() -> tuple[dict, dict]:
    return _run(False), _run(True)


def test_paths_produce_identical_bytes(both: tuple[dict, dict]) -> None:
    simd, evp = both
    assert simd["digest"] == evp["digest"]
    assert evp["kernels"]["aes_gcm"]["name"] == "evp" and evp["kernels"]["sm4"]["name"] == "evp"


@pytest.mark.parametrize("run", sorted(_FORCED))
def test_every_kernel_matches_openssl(run: str, both: tuple[dict, dict]) -> None:
    """Each kernel, forced in turn, gives the bytes OpenSSL EVP gives (the
    digest covers GCM at 300+ sizes up to 1 MiB, and SM4's legacy modes)."""
    _, evp = both
    forced = _run(extra=_FORCED[run])
    flags = _cpu_flags()
    ran = []
    for family, var in (("aes_gcm", "KMSENV_AES_GCM_KERNEL"), ("sm4", "KMSENV_SM4_KERNEL")):
        want = _FORCED[run][var]
        got = forced["kernels"][family]
        if got["name"] == want:
            ran.append(want)
            continue
        # Only a CPU without the instructions may refuse, and it must say so.
        assert flags and not _NEEDS[want] <= flags, got
        assert "lacks its instructions" in got.get("warning", ""), got
    assert forced["digest"] == evp["digest"]
    if not ran:
        pytest.skip(
            f"this CPU runs none of {sorted(_FORCED[run].values())} (flags lack "
            f"{sorted(set().union(*(_NEEDS[k] for k in _FORCED[run].values())) - flags)})"
        )


@pytest.mark.parametrize("kernel", ["vaes512", "vaes256", "gfni512-vpclmul", "gfni512", "gfni256", "aesni-avx2"])
def test_a_kernel_failing_its_self_test_is_never_used(kernel: str, both: tuple[dict, dict]) -> None:
    """A wrong answer in the self-test disables the kernel for the process,
    with a RuntimeWarning, and the bytes still match OpenSSL's."""
    flags = _cpu_flags()
    if not flags or not _NEEDS[kernel] <= flags:
        pytest.skip(f"this CPU cannot run {kernel} (needs {sorted(_NEEDS[kernel])})")
    _, evp = both
    family, var = ("aes_gcm", "KMSENV_AES_GCM_KERNEL") if kernel.startswith("vaes") else ("sm4", "KMSENV_SM4_KERNEL")
    run = _run(extra={"KMSENV_KERNEL_SELFTEST_FAULT": kernel, var: kernel})
    got = run["kernels"][family]
    assert got["name"] != kernel
    assert f"{kernel} failed its self-test" in got["warning"]
    assert "RuntimeWarning" in run["stderr"] and f"{kernel} failed its self-test" in run["stderr"]
    assert run["digest"] == evp["digest"]
    # Without the fault the same kernel is taken: the fault, not the CPU, made the difference.
    clean = _run(extra={var: kernel})
    assert clean["kernels"][family]["name"] == kernel
    assert "RuntimeWarning" not in clean["stderr"]


def test_an_unknown_kernel_name_warns_and_chooses_automatically() -> None:
    run = _run(extra={"KMSENV_AES_GCM_KERNEL": "fastest-please"})
    assert "is not a kernel name" in run["kernels"]["aes_gcm"]["warning"]
    assert "RuntimeWarning" in run["stderr"]


def test_switch_disables_simd_features(both: tuple[dict, dict]) -> None:
    _, evp = both
    for bit in ("AES_VAES", "AES_VAES512", "SM4_GFNI", "SM4_GFNI256"):
        assert evp["features"][bit] is False
    assert evp["raw"] & FEATURE_SM4_AVX2 == 0
    assert evp["features"]["SM4"] is True


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def test_default_reports_what_the_cpu_has(both: tuple[dict, dict]) -> None:
    simd, _ = both
    flags = _cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo")
    for bit, kernel in (
        ("AES_VAES", "vaes256"),
        ("AES_VAES512", "vaes512"),
        ("SM4_GFNI", "gfni512"),
        ("SM4_GFNI256", "gfni256"),
    ):
        assert simd["features"][bit] is (_NEEDS[kernel] <= flags), bit
    assert bool(simd["raw"] & FEATURE_SM4_AVX2) is ({"aes", "avx2", "vaes"} <= flags)


def test_default_choice_is_reported_with_its_reason(both: tuple[dict, dict]) -> None:
    simd, _ = both
    flags = _cpu_flags()
    aes, sm4 = simd["kernels"]["aes_gcm"], simd["kernels"]["sm4"]
    assert aes["reason"] and sm4["reason"]
    if _NEEDS["vaes256"] <= flags:
        # calibrated among the kernels that passed and OpenSSL itself
        assert "calibrated sealing 64 KiB" in aes["reason"] and "evp" in aes["reason"]
    if _NEEDS["gfni512-vpclmul"] <= flags:
        assert sm4["name"] == "gfni512-vpclmul"
    elif _NEEDS["gfni512"] <= flags:
        assert sm4["name"] == "gfni512"
    elif _NEEDS["gfni256"] <= flags:
        assert sm4["name"] == "gfni256"
    elif _NEEDS["aesni-avx2"] <= flags:
        assert sm4["name"] == "aesni-avx2"
    else:
        assert sm4["name"] == "evp"


_SM4_GCM_CHILD = r"""
import json, os
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from kmsenv.crypto import native
from kmsenv.exceptions import AuthenticationError

sizes = list(range(0, 300)) + [511, 512, 513, 1535, 1536, 1537, 1536 + 255, 1536 + 257, 3071, 3072,
                               3073, 4096, 4609, 16384, 65536 + 3, (1 << 20) + 7]
bad = []
for i, n in enumerate(sizes):
    key, iv = os.urandom(16), os.urandom(12)
    aad, pt = os.urandom((i * 37) % 301), os.urandom(n)
    enc = Cipher(algorithms.SM4(key), modes.GCM(iv)).encryptor()
    enc.authenticate_additional_data(aad)
    want = enc.update(pt) + enc.finalize()
    k = native.NativeKey("SM4", key)
    ct, tag = k.gcm_seal(iv, aad, pt)
    if ct != want or tag != enc.tag:
        bad.append(["seal", n, len(aad)])
    if k.gcm_open(iv, aad, want, enc.tag) != pt:
        bad.append(["open", n, len(aad)])
    try:
        k.gcm_open(iv, aad, want, enc.tag[:-1] + bytes([enc.tag[-1] ^ 1]))
        bad.append(["bad tag accepted", n, len(aad)])
    except AuthenticationError:
        pass
print(json.dumps({"bad": bad, "count": len(sizes), "kernels": native.version_info()["kernels"]}))
"""


@pytest.mark.parametrize("kernel", ["gfni512-vpclmul", "gfni512"])
def test_sm4_gcm_matches_cryptography(kernel: str) -> None:
    """SM4-GCM with the whole-GCM kernel (zmm GHASH) and with gfni512 over
    gcm128 gives ``cryptography``'s SM4-GCM bytes (its own OpenSSL) at 300+
    sizes to 1 MiB, AAD 0..300, and refuses a flipped tag."""
    flags = _cpu_flags()
    if not flags or not _NEEDS[kernel] <= flags:
        pytest.skip(f"this CPU cannot run {kernel} (needs {sorted(_NEEDS[kernel])})")
    env = dict(os.environ)
    for var in ("KMSENV_DISABLE_SIMD", "KMSENV_AES_GCM_KERNEL", "KMSENV_KERNEL_SELFTEST_FAULT"):
        env.pop(var, None)
    env["KMSENV_SM4_KERNEL"] = kernel
    import kmsenv

    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(kmsenv.__file__)))
    env["PYTHONPATH"] = pkg_parent + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", _SM4_GCM_CHILD], env=env, capture_output=True, text=True, timeout=300, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["kernels"]["sm4"]["name"] == kernel, result["kernels"]
    assert result["count"] > 300
    assert result["bad"] == []
