"""Fuzz ``kmsenv.message.codec.decode_message``, the DER parser every message goes through.

Input: byte 0 picks ``max_encrypted_data_keys`` (1..16, or the default); the
rest is the message.  Oracle: ``MessageFormatError`` (nothing else), or records
that pass :func:`common.check_decoded` (re-encoding round trip).

    python fuzz/fuzz_decode_message.py CORPUS_DIR [SEED_DIR...] [-max_total_time=N]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

with common.instrumented():
    from kmsenv.exceptions import MessageFormatError
    from kmsenv.message import codec


def target(data: bytes) -> None:
    if not data:
        ok, _ = common.expect(lambda: codec.decode_message(b""), MessageFormatError)
        assert not ok, "an empty input decoded"
        return
    pick = data[0] & 0x1F
    max_edks = pick if 1 <= pick <= 16 else codec.DEFAULT_MAX_ENCRYPTED_DATA_KEYS
    msg = data[1:]
    ok, result = common.expect(lambda: codec.decode_message(msg, max_edks), MessageFormatError)
    if ok:
        common.check_decoded(msg, *result, max_edks)


if __name__ == "__main__":
    common.main(target)
