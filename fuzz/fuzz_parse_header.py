"""Fuzz ``kmsenv.parse_header`` (the public, KMS-free header reader).

Input: byte 0 picks the buffer type (bytes, bytearray, memoryview, a
memoryview slice of a larger buffer); the rest is the message.  Oracle:
``MessageFormatError`` exactly when ``decode_message`` rejects the same bytes,
otherwise the same header as ``decode_message`` (the encoded bytes included),
and the input buffer is left unchanged.

    python fuzz/fuzz_parse_header.py CORPUS_DIR [SEED_DIR...] [-max_total_time=N]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

with common.instrumented():
    import kmsenv
    from kmsenv.exceptions import MessageFormatError
    from kmsenv.message import codec


def _view(kind: int, msg: bytes):
    if kind == 1:
        return bytearray(msg)
    if kind == 2:
        return memoryview(msg)
    if kind == 3:  # a window into a larger buffer: the parser must not read outside it
        return memoryview(b"\x30\x84" + msg + b"\x00\xff")[2 : 2 + len(msg)]
    return msg


def target(data: bytes) -> None:
    kind = data[0] & 3 if data else 0
    msg = data[1:]
    buf = _view(kind, msg)
    ok, header = common.expect(lambda: kmsenv.parse_header(buf), MessageFormatError)
    assert bytes(buf) == msg, "parse_header changed its input"
    ok2, ref = common.expect(lambda: codec.decode_message(msg), MessageFormatError)
    assert ok == ok2, f"parse_header {'accepted' if ok else 'rejected'} what decode_message did not"
    if ok:
        assert header == ref[0] and header.encoded == ref[0].encoded
        common.check_decoded(msg, ref[0], ref[1], codec.DEFAULT_MAX_ENCRYPTED_DATA_KEYS)
    else:
        common.check_no_key_material(header)


if __name__ == "__main__":
    common.main(target)
