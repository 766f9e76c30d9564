"""Fuzz ``kmsenv.decrypt_many`` with mixed batches (shared headers, foreign
headers, legacy algorithms, malformed and tampered messages).

Input: byte 0 holds flags (bit 0 ``allow_unauthenticated``, bit 1 an
``expected_encryption_context``); the rest is up to 8 messages, each prefixed
by a 2-byte big-endian length (:func:`common.split_items`).

Oracle: ``decrypt_many`` is all or nothing and equals ``decrypt`` applied to
each message: it succeeds exactly when every message decrypts alone, with the
same plaintexts; otherwise it raises a ``KmsEnvError`` (with no key material in
its text).  Native and pure backends give the same outcome.

    python fuzz/fuzz_decrypt_many.py CORPUS_DIR [SEED_DIR...] [-max_total_time=N]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

with common.instrumented():
    import kmsenv

PROVIDER = common.FixedKeyProvider()


def _kwargs(flags: int) -> dict:
    return dict(
        allow_unauthenticated=bool(flags & 1),
        expected_encryption_context=common.FIXED_CONTEXT if flags & 2 else None,
    )


def target(data: bytes) -> None:
    flags = data[0] if data else 0
    items = common.split_items(data[1:])
    kwargs = _kwargs(flags)
    with common.backend("native"):
        ok, res = common.expect(lambda: kmsenv.decrypt_many(items, PROVIDER, **kwargs), kmsenv.KmsEnvError)
        singles = [
            common.expect(lambda m=m: kmsenv.decrypt(m, PROVIDER, **kwargs).plaintext, kmsenv.KmsEnvError)
            for m in items
        ]
    with common.backend("pure"):
        ok_p, res_p = common.expect(lambda: kmsenv.decrypt_many(items, PROVIDER, **kwargs), kmsenv.KmsEnvError)
    all_ok = all(s_ok for s_ok, _ in singles)
    assert ok == all_ok, (
        f"decrypt_many {'succeeded' if ok else 'failed: ' + repr(res)} but one-by-one "
        f"{[type(s).__name__ if not s_ok else 'ok' for s_ok, s in singles]}"
    )
    assert ok == ok_p, f"backends disagree: native {res!r}, pure {res_p!r}"
    if ok:
        assert res == [s for _, s in singles], "decrypt_many plaintexts differ from decrypt's"
        assert res == res_p
    else:
        common.check_no_key_material(res)
        common.check_no_key_material(res_p)


if __name__ == "__main__":
    common.main(target)
