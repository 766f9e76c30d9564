"""Shared machinery for kmsenv's atheris harnesses (``fuzz/fuzz_*.py``).

Every harness file defines ``target(data: bytes) -> None`` and ends with
``if __name__ == "__main__": common.main(target)``.  The invariant is the same
for all of them: an input gives a *correct* result (each target has its own
oracle: a re-encoding, another backend, the one-by-one path) or raises a
:class:`kmsenv.KmsEnvError` (some targets insist on a narrower subclass).
Anything else is a finding: another exception (atheris prints the traceback
and writes the input as ``crash-<sha1>``), a crash of the process (libFuzzer's
"deadly signal"), or an allocation past the memory bounds below.

Memory bounds, when fuzzing:

* ``RLIMIT_AS`` is capped at the process's size after start-up plus
  ``KMSENV_FUZZ_AS_HEADROOM_MB`` (default 1024 MiB), so any attempt to honour a
  hostile length (a 100-byte input claiming a 4 GiB field) fails at once with
  ``MemoryError``, which is not a ``KmsEnvError`` and so is reported;
* every ``KMSENV_FUZZ_TRACEMALLOC_EVERY``-th input (default 50; 0 = never) is
  run a second time under ``tracemalloc`` and its Python peak must stay within
  :func:`allocation_budget` of its length.

Adding a parser is one new ``fuzz_<name>.py`` with a ``target`` function (as
``fuzz_decrypt_stream.py`` did for the streaming formats), one ``seeds_<name>``
function in ``make_corpus.py``, its name in ``TARGETS`` below (run.sh reads
it) and in ``tests/test_properties.py``'s ``TARGETS`` (a test checks the two agree).

This module imports neither atheris nor kmsenv at import time, so
``tests/test_properties.py`` can reuse the targets and oracles without atheris.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import importlib.util
import json
import os
import sys
from typing import Any, Callable, Iterator, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: Harness names (fuzz/fuzz_<name>.py), in the order run.sh runs them.
TARGETS = (
    "decode_message",
    "parse_header",
    "decrypt",
    "decrypt_many",
    "native_open_messages",
    "decrypt_stream",
    "open_columns",
)

# kmsenv from the environment (an installed package, as in CI) or else from src/.
if importlib.util.find_spec("kmsenv") is None:
    sys.path.insert(0, os.path.join(ROOT, "src"))


def _fuzzing() -> bool:
    main = sys.modules.get("__main__")
    name = os.path.basename(getattr(main, "__file__", None) or "")
    return name.startswith("fuzz_") and name.endswith(".py")


#: True when a fuzz_*.py harness is the running program (not imported by a test).
FUZZING = _fuzzing()


def instrumented() -> contextlib.AbstractContextManager[Any]:
    """Context for a harness's kmsenv imports: atheris-instrumented when fuzzing."""
    if FUZZING:
        import atheris

        return atheris.instrument_imports(include=["kmsenv"])
    return contextlib.nullcontext()


# --------------------------------------------------------------- fixed keys

#: A public, constant data key: every message the seeds contain is sealed with
#: (a prefix of) it, so mutated seeds reach the header/body tag checks and the
#: legacy decrypt paths.  Not a secret; the harnesses check error texts never
#: contain it, in raw, hex or base64 form.
MASTER = bytes.fromhex("6b6d73656e762d66757a7a2d6669786564206b65792d302d312d322d332d3421")
FIXED_ARN = "acs:kms:cn-hangzhou:1234567890123456:key/key-fuzz-00000000-0000-0000-0000-000000000000"
FIXED_CONTEXT = {"purpose": "fuzz", "tenant": "acme"}


def fixed_key(length: int) -> bytes:
    return MASTER[:length]


class FixedKeyProvider:
    """A data key provider for fuzzing: ``generate_data_key`` hands out
    :data:`MASTER` (cut to the algorithm's key length) wrapped under one fixed
    ARN; ``decrypt_data_key`` returns the fake-KMS key of the first encrypted
    data key that is a ``fakekms-json-v1`` blob (the official vectors, see
    tests/data/README.md), else the fixed key.  It never checks ARNs or the
    context: the point is to get fuzzed messages past the provider into the
    tag checks."""

    def __init__(self, arns: Sequence[str] = (FIXED_ARN,)):
        self.arns = list(arns)

    def generate_data_key(self, algorithm: Any, encryption_context: dict[str, str]) -> Any:
        import kmsenv

        key = fixed_key(kmsenv.Algorithm(algorithm).key_len)
        return kmsenv.DataKey(key, [kmsenv.EncryptedDataKey(a, b"fixed:" + a.encode()) for a in self.arns])

    def decrypt_data_key(self, encrypted_data_keys: Any, algorithm: Any, encryption_context: Any) -> bytearray:
        import kmsenv

        for edk in encrypted_data_keys:
            blob = edk.ciphertext_blob
            if not blob.startswith(b'{"arn":'):
                continue
            try:
                doc = json.loads(blob)
                return bytearray(base64.b64decode(doc["dk"], validate=True))
            except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
                continue
        return bytearray(fixed_key(kmsenv.Algorithm(algorithm).key_len))


# --------------------------------------------------------------- helpers


def split_items(data: bytes, max_items: int = 8) -> list[bytes]:
    """A batch from fuzz bytes: items each prefixed with a 2-byte big-endian length
    (a short last item takes what is left)."""
    items: list[bytes] = []
    i = 0
    while i + 2 <= len(data) and len(items) < max_items:
        n = int.from_bytes(data[i : i + 2], "big")
        i += 2
        items.append(data[i : i + n])
        i += n
    return items


def join_items(items: Sequence[bytes]) -> bytes:
    """Inverse of :func:`split_items` (for seeds)."""
    out = bytearray()
    for item in items:
        if len(item) > 0xFFFF:
            raise ValueError("item too large for the 2-byte framing")
        out += len(item).to_bytes(2, "big") + item
    return bytes(out)


def soft_finding(kind: str, detail: str, data: bytes) -> None:
    """A disagreement that is not a safety violation (e.g. the two backends
    reject one input with different KmsEnvError subclasses).  Fatal with
    ``KMSENV_FUZZ_STRICT=1``; otherwise, with ``KMSENV_FUZZ_FINDINGS=DIR``,
    the first input of each distinct (kind, detail) is written there as
    ``<kind>-<sha1>`` plus a ``.txt`` note, and fuzzing goes on."""
    if os.environ.get("KMSENV_FUZZ_STRICT") == "1":
        raise AssertionError(f"{kind}: {detail}")
    out = os.environ.get("KMSENV_FUZZ_FINDINGS")
    if not out:
        return
    import hashlib
    import re

    detail = re.sub(r"\d+", "N", detail)  # one finding per shape, not per length
    tag = hashlib.sha1(f"{kind}|{detail}".encode()).hexdigest()[:12]
    path = os.path.join(out, f"{kind}-{tag}")
    if os.path.exists(path):
        return
    os.makedirs(out, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    with open(path + ".txt", "w", encoding="utf-8") as fh:
        fh.write(f"{kind}: {detail}\n")


def expect(fn: Callable[[], Any], *allowed: type[BaseException]) -> tuple[bool, Any]:
    """Run ``fn``: (True, result), or (False, exc) for an allowed exception type.
    Any other exception propagates: that is the finding."""
    try:
        return True, fn()
    except allowed as exc:
        return False, exc


_KEY_FORMS: tuple[bytes, ...] = ()


def _key_forms() -> tuple[bytes, ...]:
    global _KEY_FORMS
    if not _KEY_FORMS:
        forms = []
        for n in (16, 32):
            k = fixed_key(n)
            forms += [k, k.hex().encode(), k.hex().upper().encode(), base64.b64encode(k)]
        _KEY_FORMS = tuple(forms)
    return _KEY_FORMS


def check_no_key_material(exc: BaseException) -> None:
    """No form of the fixed data key in an exception's text or its notes."""
    texts = [str(exc), repr(exc)] + list(getattr(exc, "__notes__", []) or [])
    blob = "\n".join(texts).encode("utf-8", "backslashreplace")
    for form in _key_forms():
        if form in blob:
            raise AssertionError(f"{type(exc).__name__} text contains data key material")


def check_decoded(msg: bytes, header: Any, body: Any, max_edks: int) -> None:
    """Oracle for a message the codec accepted: the records are well formed and
    re-encoding them gives a message of the same length that decodes to the same
    records, whose bytes are a permutation of the input's (the decoder accepts
    SET elements in any order but nothing non-minimal or extra)."""
    from kmsenv.message import codec

    info = header.algorithm.info
    edks = header.encrypted_data_keys
    assert 1 <= len(edks) <= max_edks, len(edks)
    assert len({e.key_arn for e in edks}) == len(edks), "duplicate ARNs accepted"
    assert all(e.key_arn and len(e.key_arn.encode()) <= codec.MAX_ARN_BYTES for e in edks)
    assert all(len(e.ciphertext_blob) <= codec.MAX_EDK_BYTES for e in edks)
    assert len(header.header_iv) == 12 and len(header.header_auth_tag) == 16
    assert len(body.iv) == info.iv_len and len(body.auth_tag) == info.tag_len
    assert header.encoded and header.encoded[0] == 0x30 and header.encoded in msg
    reencoded = codec.encode_message(
        codec.encode_header(header), codec.encode_body(body.iv, body.ciphertext, body.auth_tag)
    )
    assert len(reencoded) == len(msg), (len(reencoded), len(msg))
    assert sorted(reencoded) == sorted(msg), "re-encoding is not a permutation of the input"
    h2, b2 = codec.decode_message(reencoded, max_edks)
    assert b2 == body and _canonical(h2) == _canonical(header), "re-encoded message decodes differently"


def _canonical(header: Any) -> tuple:
    """A header's values with the SET OF members (EDKs, context) order-free: the
    decoder keeps wire order, the encoder sorts, neither is authenticated."""
    return (
        header.version,
        header.algorithm,
        sorted(header.encrypted_data_keys, key=lambda e: e.key_arn),
        dict(header.encryption_context),
        header.header_iv,
        header.header_auth_tag,
    )


# --------------------------------------------------------------- memory bounds


def allocation_budget(n: int) -> int:
    """Python-heap peak allowed for one call on an n-byte input (a target may
    set its own as ``target.allocation_budget``)."""
    return 32 * n + (1 << 20)


class AllocationBudgetExceeded(AssertionError):
    pass


def measure_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes traced by tracemalloc while ``fn`` runs (its own exceptions ignored)."""
    import tracemalloc

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            fn()
        except Exception:
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _vm_size() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def cap_address_space(headroom_mb: int) -> int:
    import resource

    limit = _vm_size() + headroom_mb * (1 << 20)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return limit


# --------------------------------------------------------------- running


def default_args(argv: list[str]) -> list[str]:
    args = list(argv)
    if not any(a.startswith("-dict=") for a in args):
        args.append(f"-dict={os.path.join(HERE, 'der.dict')}")
    if not any(a.startswith("-max_len=") for a in args):
        args.append("-max_len=8192")
    if not any(a.startswith("-timeout=") for a in args):
        args.append("-timeout=20")
    return args


def main(target: Callable[[bytes], None]) -> None:
    """Fuzz ``target`` with libFuzzer options from the command line."""
    import atheris

    import kmsenv

    if os.environ.get("KMSENV_FUZZ_ALLOW_PURE") != "1" and not kmsenv.native_available():
        sys.exit(f"fuzz: the native core is unavailable ({kmsenv.crypto.native_unavailable_reason()})")
    every = int(os.environ.get("KMSENV_FUZZ_TRACEMALLOC_EVERY", "50"))
    budget = getattr(target, "allocation_budget", allocation_budget)
    count = 0

    def one_input(data: bytes) -> None:
        nonlocal count
        target(data)
        count += 1
        if every and count % every == 0:
            peak = measure_peak(lambda: target(data))
            if peak > budget(len(data)):
                raise AllocationBudgetExceeded(
                    f"{peak} bytes peak for a {len(data)}-byte input (budget {budget(len(data))})"
                )

    target(b"")  # warm lazy imports and caches before measuring the process
    limit = cap_address_space(int(os.environ.get("KMSENV_FUZZ_AS_HEADROOM_MB", "1024")))
    print(
        f"fuzz: backend={kmsenv.backend_name()} RLIMIT_AS={limit >> 20} MiB tracemalloc every {every or 'never'}",
        file=sys.stderr,
        flush=True,
    )
    atheris.Setup(default_args(sys.argv), one_input)
    atheris.Fuzz()


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Switch kmsenv's process-wide backend for a block."""
    from kmsenv import crypto

    previous = crypto.get_backend().name
    crypto.set_backend(name)
    try:
        yield
    finally:
        crypto.set_backend(previous)
