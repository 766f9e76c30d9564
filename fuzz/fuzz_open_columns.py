"""Fuzz column decryption (kmsenv.columns: the C core's kmsenv_compact_open and
kmsenv_arrow_open_messages over Arrow-layout buffers) against the pure backend.

Input: byte 0 holds flags (bits 0-1 the key: AES-256, AES-128, SM4, or 3:
AES-256 read with *another* data key than the header commits to; bit 2 pass
row ids (b"row-<i>"); bit 3 the Alibaba format instead of compact; bit 4 make
item 1 null; bit 5 the version 1 (uncommitted) key header instead of the
version 2 one; bit 6 allow_uncommitted=True; bit 7 read under the column name
"col" instead of none); the rest is up to 8 values with 2-byte length
prefixes (:func:`common.split_items`). Compact values name the fixed key
header; any other reference is "not found".

Oracle: native and pure give the same plaintexts, or raise the same KmsEnvError
type with the same text; nothing else escapes. Run it with the ASan build of
the core (scripts/asan-suite.sh) to catch memory errors too.

    python fuzz/fuzz_open_columns.py CORPUS_DIR [SEED_DIR...] [-max_total_time=N]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

with common.instrumented():
    import kmsenv
    from kmsenv import columns, crypto
    from kmsenv.keyheader import KeyHeader
    from kmsenv.model import EncryptedDataKey

ALGORITHMS = (
    kmsenv.Algorithm.AES_GCM_NOPADDING_256,
    kmsenv.Algorithm.AES_GCM_NOPADDING_128,
    kmsenv.Algorithm.SM4_GCM_NOPADDING_128,
)
_EDKS = (EncryptedDataKey(common.FIXED_ARN, b"fixed"),)
#: Version 2 headers, committed to the fixed key (index 3 reuses AES-256).
HEADERS = tuple(KeyHeader.for_data_key(a, common.FIXED_CONTEXT, _EDKS, common.fixed_key(a.key_len)) for a in ALGORITHMS)
#: Version 1 headers (no commitment): opened only with allow_uncommitted.
LEGACY_HEADERS = tuple(KeyHeader(a, common.FIXED_CONTEXT, _EDKS) for a in ALGORITHMS)
COLUMN = "col"


def reader_key(index: int) -> bytes:
    """The key the reader gets: the committed one, or (index 3) another one."""
    key = common.fixed_key(ALGORITHMS[index % 3].key_len)
    return bytes(b ^ 0x5A for b in key) if index == 3 else key


def _inputs(data: bytes):
    flags = data[0] if data else 0
    index = flags & 3
    items: list = list(common.split_items(data[1:]))
    if flags & 16 and len(items) > 1:
        items[1] = None
    rows = [f"row-{i}".encode() for i in range(len(items))] if flags & 4 else None
    options = {
        "legacy": bool(flags & 32),
        "allow_uncommitted": bool(flags & 64),
        "column": COLUMN if flags & 128 else None,
    }
    return index, ("alibaba" if flags & 8 else "compact"), items, rows, options


def _open(backend: str, index: int, fmt: str, items: list, rows, options) -> tuple:
    crypto.set_backend(backend)
    header = (LEGACY_HEADERS if options["legacy"] else HEADERS)[index % 3]
    key = reader_key(index)
    col = columns.Column.from_values(items)
    row_col = columns.Column.from_values(rows) if rows is not None else None
    try:
        if fmt == "compact":
            out = columns.open_compact(
                col,
                lambda ref: header if ref == header.ref else None,
                lambda h: bytearray(key),
                row_col,
                column=options["column"],
                allow_uncommitted=options["allow_uncommitted"],
            )
        else:
            out = columns.open_alibaba(col, lambda h: bytearray(key))
        return ("ok", out.values(col))
    except kmsenv.KmsEnvError as exc:
        common.check_no_key_material(exc)
        return (type(exc).__name__, str(exc))


def target(data: bytes) -> None:
    index, fmt, items, rows, options = _inputs(data)
    if fmt == "alibaba" and rows is not None:
        rows = None
    try:
        native = _open("native", index, fmt, items, rows, options)
        pure = _open("pure", index, fmt, items, rows, options)
    finally:
        crypto.set_backend("native")
    assert native == pure, f"native {native!r} != pure {pure!r}"
    # The commitment holds: a reader with another key never gets plaintext.
    if index == 3 and fmt == "compact" and not options["legacy"]:
        assert native[0] != "ok" or all(v is None for v in native[1]), "opened under an uncommitted key"


if __name__ == "__main__":
    common.main(target)
