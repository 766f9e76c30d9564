"""Fuzz ``kmsenv.stream.decrypt_stream``: format detection and the three
streaming readers (kmsenv's framed format, the Java SDK's stream layout, one
DER message), from a non-seekable source, with a fixed-key provider.

Input: byte 0 holds flags (bit 0 ``allow_unauthenticated``, bit 1 an
``expected_encryption_context``, bit 2 read through a 1..7-byte-chunk source);
the rest is the stream.

Oracle: a typed ``KmsEnvError`` (no key material in its text) or success; the
native and pure backends produce the same outcome, the same plaintext bytes
written (also on failure: only verified frames may have been written, so both
must have written the same) and the same error class; a DER input decrypts
exactly as ``kmsenv.decrypt`` does.

    python fuzz/fuzz_decrypt_stream.py CORPUS_DIR [SEED_DIR...] [-max_total_time=N]
"""

from __future__ import annotations

import io
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

with common.instrumented():
    import kmsenv
    from kmsenv import stream

PROVIDER = common.FixedKeyProvider()


class Trickle(io.RawIOBase):
    """A non-seekable source returning at most ``step`` bytes per read."""

    def __init__(self, data: bytes, step: int):
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def _run(data: bytes, flags: int, backend: str):
    src = Trickle(data, 1 + (flags >> 3) % 7) if flags & 4 else io.BytesIO(data)
    dst = io.BytesIO()
    kwargs = dict(
        allow_unauthenticated=bool(flags & 1),
        expected_encryption_context=common.FIXED_CONTEXT if flags & 2 else None,
        threads=1,
    )
    with common.backend(backend):
        ok, res = common.expect(lambda: stream.decrypt_stream(src, dst, PROVIDER, **kwargs), kmsenv.KmsEnvError)
    return ok, res, dst.getvalue()


def target(data: bytes) -> None:
    flags = data[0] if data else 0
    body = data[1:]
    ok, res, out = _run(body, flags, "native")
    ok_p, res_p, out_p = _run(body, flags, "pure")
    assert ok == ok_p, f"backends disagree: native {res!r}, pure {res_p!r}"
    assert out == out_p, "backends wrote different plaintext"
    if not ok:
        common.check_no_key_material(res)
        common.check_no_key_material(res_p)
        if type(res) is not type(res_p):
            common.soft_finding(
                "stream-error-class", f"native {type(res).__name__}: {res} / pure {type(res_p).__name__}: {res_p}", data
            )
    if body[:1] == b"\x30":
        one_ok, one = common.expect(
            lambda: kmsenv.decrypt(
                body,
                PROVIDER,
                allow_unauthenticated=bool(flags & 1),
                expected_encryption_context=common.FIXED_CONTEXT if flags & 2 else None,
            ),
            kmsenv.KmsEnvError,
        )
        assert one_ok == ok, f"decrypt_stream and decrypt disagree on a DER message: {res!r} / {one!r}"
        if ok:
            assert out == one.plaintext


def _budget(n: int) -> int:
    # Streams hold fixed-size buffers whatever the input: a framed batch (up to
    # 8 MiB, or one frame of up to 16 MiB as the header's frame size says, in and
    # out: ~17 MB measured for a 631-byte input) and 1 MiB read chunks; the
    # target decrypts twice (both backends) and exception cycles keep the first
    # run's buffers until the next GC.  A bounded constant, not a claimed length.
    return 32 * n + (96 << 20)


target.allocation_budget = _budget  # type: ignore[attr-defined]

if __name__ == "__main__":
    common.main(target)
