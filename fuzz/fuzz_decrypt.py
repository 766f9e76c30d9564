"""Fuzz ``kmsenv.decrypt`` end to end with a fixed-key provider, on both backends.

Input: byte 0 holds flags (bit 0 ``allow_unauthenticated``, bit 1 an
``expected_encryption_context``, bits 2-3 ``max_encrypted_data_keys``); the
rest is the message.  The provider (:class:`common.FixedKeyProvider`) answers
every message with the key it was sealed with when it comes from the seeds, so
mutations reach the header tag, body tag, padding and legacy paths.

Oracle: the native and pure backends agree exactly (same plaintext and header,
or both a ``KmsEnvError``; a different subclass is a soft finding, see
:func:`common.soft_finding`); a success decodes to the same header as
``parse_header`` and passes :func:`common.check_decoded`; a failure is a
``KmsEnvError`` whose text holds no form of the data key.

    python fuzz/fuzz_decrypt.py CORPUS_DIR [SEED_DIR...] [-max_total_time=N]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

with common.instrumented():
    import kmsenv
    from kmsenv.message import codec

PROVIDER = common.FixedKeyProvider()
MAX_EDKS = (16, 1, 2, 4)


def _decrypt(msg: bytes, flags: int, backend: str):
    kwargs = dict(
        allow_unauthenticated=bool(flags & 1),
        expected_encryption_context=common.FIXED_CONTEXT if flags & 2 else None,
        max_encrypted_data_keys=MAX_EDKS[(flags >> 2) & 3],
    )
    with common.backend(backend):
        return common.expect(lambda: kmsenv.decrypt(msg, PROVIDER, **kwargs), kmsenv.KmsEnvError)


def target(data: bytes) -> None:
    flags = data[0] if data else 0
    msg = data[1:]
    ok, res = _decrypt(msg, flags, "native")
    ok_p, res_p = _decrypt(msg, flags, "pure")
    assert ok == ok_p, f"backends disagree: native {res!r}, pure {res_p!r}"
    if not ok:
        common.check_no_key_material(res)
        common.check_no_key_material(res_p)
        if type(res) is not type(res_p):
            common.soft_finding(
                "error-class", f"native {type(res).__name__}: {res} / pure {type(res_p).__name__}: {res_p}", data
            )
        return
    assert res.plaintext == res_p.plaintext and res.header == res_p.header
    assert res.header == kmsenv.parse_header(msg, max_encrypted_data_keys=MAX_EDKS[(flags >> 2) & 3])
    header, body = codec.decode_message(msg, 16)
    common.check_decoded(msg, header, body, 16)
    if header.algorithm.authenticated:
        assert len(res.plaintext) == len(body.ciphertext)


if __name__ == "__main__":
    common.main(target)
