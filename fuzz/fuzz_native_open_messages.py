"""Fuzz the C core's batch DER parser and GCM open, ``kmsenv_gcm_open_messages``,
through the native backend's ``open_messages``, against the pure backend's.

Input: byte 0 holds flags (bits 0-1 the key: AES-256, AES-128, SM4; bit 2 take
the expected header from the first message instead of the fixed one; bit 3
empty AAD); the rest is up to 8 messages with 2-byte length prefixes
(:func:`common.split_items`).

Oracle: per-message statuses are OK, AUTH or FORMAT; a plaintext is returned
exactly for OK; native and pure give identical statuses and plaintexts.  Run it
with the ASan build of the core (scripts/asan-suite.sh does) to catch memory
errors too.

    python fuzz/fuzz_native_open_messages.py CORPUS_DIR [SEED_DIR...] [-max_total_time=N]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

with common.instrumented():
    from kmsenv.crypto import native, pure
    from kmsenv.crypto.interface import STATUS_AUTH, STATUS_FORMAT, STATUS_OK
    from kmsenv.exceptions import MessageFormatError
    from kmsenv.message import codec, der

KEYS = (("AES", 32), ("AES", 16), ("SM4", 16))
AAD = codec.context_bytes(common.FIXED_CONTEXT)


def fixed_header(index: int) -> bytes:
    """The constant header TLV the seeds for key ``index`` share (header IV zero,
    header tag computed with the fixed key: open_messages does not check it)."""
    import kmsenv
    from kmsenv.model import EncryptedDataKey

    alg = {
        0: kmsenv.Algorithm.AES_GCM_NOPADDING_256,
        1: kmsenv.Algorithm.AES_GCM_NOPADDING_128,
        2: kmsenv.Algorithm.SM4_GCM_NOPADDING_128,
    }[index]
    edks = [EncryptedDataKey(common.FIXED_ARN, b"fixed")]
    key = pure.PureBackend().new_key(KEYS[index][0], common.fixed_key(KEYS[index][1]))
    try:
        _, tag = key.gcm_seal(bytes(12), codec.auth_fields(1, alg, common.FIXED_CONTEXT, edks), b"")
    finally:
        key.close()
    fields = codec.encode_header_fields(1, alg, edks, common.FIXED_CONTEXT)
    return der.tlv(der.SEQUENCE, fields + der.octet_string(bytes(12)) + der.octet_string(tag))


HEADERS = tuple(fixed_header(i) for i in range(3))


def _first_header(item: bytes) -> bytes | None:
    try:
        outer = der.Reader(memoryview(item)).enter(der.SEQUENCE, "message")
        start = outer.pos
        outer.enter(der.SEQUENCE, "header")
        return bytes(item[start : outer.pos])
    except MessageFormatError:
        return None


def target(data: bytes) -> None:
    flags = data[0] if data else 0
    index = (flags & 3) % 3
    items = common.split_items(data[1:])
    header = HEADERS[index]
    if flags & 4 and items:
        header = _first_header(items[0]) or header
    aad = b"" if flags & 8 else AAD
    cipher, keylen = KEYS[index]
    nk = native.NativeBackend().new_key(cipher, common.fixed_key(keylen))
    pk = pure.PureBackend().new_key(cipher, common.fixed_key(keylen))
    try:
        n_pt, n_st = nk.open_messages(header, aad, items)
        p_pt, p_st = pk.open_messages(header, aad, items)
    finally:
        nk.close()
        pk.close()
    assert len(n_st) == len(items) == len(n_pt)
    for pt, st in zip(n_pt, n_st):
        assert st in (STATUS_OK, STATUS_AUTH, STATUS_FORMAT), st
        assert (pt is not None) == (st == STATUS_OK)
    assert list(n_st) == list(p_st), f"statuses differ: native {list(n_st)} pure {list(p_st)}"
    assert n_pt == p_pt, "plaintexts differ"


if __name__ == "__main__":
    common.main(target)
