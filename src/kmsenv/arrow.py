"""Encrypt and decrypt Arrow arrays and table columns (``pip install "kmsenv[arrow]"``).

The engine-neutral core of the Spark, Dask and Ray adapters. The native core
reads the Arrow buffers (offsets + data + validity) in place and writes the
output buffers in one call per array, so no Python object is made per value.

``key`` is a :class:`kmsenv.JobKey` (jobs on many processes: KMS calls scale
with processes, not rows), a :class:`kmsenv.WorkerSpec` (decrypt only), or a
data key provider such as :class:`kmsenv.KmsKeyProvider` (one data key per
call). ``format`` is ``"alibaba"`` (standalone messages the official SDKs
read) or ``"compact"`` (45 bytes per value plus a key header stored once:
``docs/format.md`` §4). Compact values are bound to the name of the column
they are stored in: :func:`encrypt_column` / :func:`decrypt_column` fill it in
(``aad_name=`` overrides it, e.g. to read a renamed column);
:func:`encrypt_array` / :func:`decrypt_array` take it as ``column=``.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Mapping

try:
    import pyarrow as pa
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('kmsenv.arrow needs pyarrow: pip install "kmsenv[arrow]"') from exc

from .algorithms import Algorithm
from .columns import Column, KeySource, SealedColumn, decrypt_with, encrypt_with
from .exceptions import ConfigurationError, MessageFormatError
from .keyheader import KeyHeader, KeyHeaderStore
from .jobkey import reader

__all__ = ["encrypt_array", "decrypt_array", "encrypt_column", "decrypt_column", "key_headers", "METADATA_KEY"]

#: Field metadata under which encrypt_column keeps compact key headers.
METADATA_KEY = b"kmsenv.key_headers"
FORMAT_KEY = b"kmsenv.format"
AAD_KEY = b"kmsenv.aad_column"
MAX_METADATA_HEADERS = 4096

_BINARY_TYPES = {pa.binary(): 4, pa.string(): 4, pa.large_binary(): 8, pa.large_string(): 8}


def _as_binary(array: Any, what: str) -> pa.Array:
    if isinstance(array, pa.ChunkedArray):
        raise TypeError("internal: chunked arrays are handled per chunk")
    if not isinstance(array, pa.Array):
        if hasattr(array, "__arrow_c_array__"):
            array = pa.array(array)
        else:
            raise ConfigurationError(f"{what} must be a pyarrow Array or ChunkedArray, not {type(array).__name__}")
    t = array.type
    if t in _BINARY_TYPES:
        return array
    if pa.types.is_binary_view(t) or pa.types.is_string_view(t) or pa.types.is_fixed_size_binary(t):
        return array.cast(pa.large_binary() if array.nbytes > 2**31 - 1 else pa.binary())
    if pa.types.is_null(t):
        return array.cast(pa.binary())
    raise ConfigurationError(f"{what} must hold binary or string values, not {t}")


def _rows_array(rows: Any, length: int) -> pa.Array:
    """Row ids as binary: strings and binaries as they are, other types as their string form."""
    if not isinstance(rows, (pa.Array, pa.ChunkedArray)):
        rows = pa.array(rows)
    if isinstance(rows, pa.ChunkedArray):
        rows = rows.combine_chunks()
    if len(rows) != length:
        raise ConfigurationError(f"the row ids have {len(rows)} values for {length} values")
    t = rows.type
    if t in _BINARY_TYPES:
        return rows
    if (
        pa.types.is_integer(t)
        or pa.types.is_string_view(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
    ):
        return rows.cast(pa.string()) if pa.types.is_integer(t) else rows.cast(pa.binary())
    raise ConfigurationError(f"row ids must be integers, strings or binary, not {t}")


def _column(array: pa.Array) -> Column:
    width = _BINARY_TYPES[array.type]
    validity, offsets, data = array.buffers()
    n = len(array)
    offs = (
        memoryview(offsets)[array.offset * width : (array.offset + n + 1) * width]
        if offsets is not None
        else bytes(width)
    )
    return Column(
        n,
        # pyarrow exports signed bytes ("b"); readers index them as unsigned.
        memoryview(data).cast("B") if data is not None else b"",
        offs,
        width,
        validity if array.null_count else None,
        array.offset,
        keepalive=array,
    )


def _to_arrow(sealed: SealedColumn, like: pa.Array, as_string: bool = False) -> pa.Array:
    if sealed.width == 4:
        typ = pa.string() if as_string else pa.binary()
    else:
        typ = pa.large_string() if as_string else pa.large_binary()
    validity = None
    if like.null_count:
        validity = like.is_valid().buffers()[1]  # a fresh bitmap at offset 0, whatever like's offset
    data = pa.py_buffer(sealed.data)[: sealed.size] if sealed.size else pa.py_buffer(b"")
    return pa.Array.from_buffers(typ, len(like), [validity, pa.py_buffer(sealed.offsets), data], like.null_count)


def _chunks(array: Any) -> tuple[list[Any], bool]:
    if isinstance(array, pa.ChunkedArray):
        return list(array.chunks), True
    return [array], False


def encrypt_array(
    array: Any,
    key: Any,
    *,
    encryption_context: Mapping[str, str] | None = None,
    format: str = "alibaba",
    algorithm: Algorithm | int | None = None,
    rows: Any = None,
    key_store: KeyHeaderStore | None = None,
    partition: tuple[int, int] | None = None,
    column: str | None = None,
) -> Any:
    """Encrypt every value of a binary/string array; nulls stay null.

    Returns ``binary`` (``large_binary`` past 2 GiB); a ChunkedArray gives a
    ChunkedArray. ``column`` (compact format): the name of the column the
    values will be stored in, bound into each value (give it again to
    :func:`decrypt_array`). ``rows``: row ids to bind into each value's AAD
    (compact format). ``partition=(p, n)``: this is partition ``p`` of ``n``
    of a job (selects the JobKey's data key and enforces its budget)."""
    _check_column(column, format)
    chunks, chunked = _chunks(array)
    out, _ = _encrypt_chunks(
        chunks,
        rows,
        KeySource(key),
        "array",
        format=format,
        encryption_context=encryption_context,
        algorithm=algorithm,
        key_store=key_store,
        partition=partition,
        column=column,
    )
    return _chunked(out) if chunked else out[0]


def _check_column(column: str | None, format: str) -> None:
    if column is not None and format != "compact":
        raise ConfigurationError("a column name is bound into compact values only: it needs format='compact'")


def _encrypt_chunks(
    chunks: list[Any], rows: Any, source: KeySource, what: str, **options: Any
) -> tuple[list[pa.Array], dict[bytes, KeyHeader]]:
    """Each chunk through the native core; the key headers used, by reference."""
    out, headers = [], {}
    for chunk, row in zip(chunks, _split_rows(rows, chunks)):
        arr = _as_binary(chunk, what)
        row_col = _column(_rows_array(row, len(arr))) if row is not None else None
        sealed, header = encrypt_with(source, _column(arr), rows=row_col, **options)
        headers[header.ref] = header
        out.append(_to_arrow(sealed, arr))
    return out, headers


def _chunked(arrays: list[pa.Array], as_string: bool = False) -> pa.ChunkedArray:
    """One type for all chunks: the large one if any chunk needed 64-bit offsets."""
    small, large = (pa.string(), pa.large_string()) if as_string else (pa.binary(), pa.large_binary())
    typ = large if any(a.type == large for a in arrays) else small
    return pa.chunked_array([a.cast(typ) for a in arrays], typ)


def _split_rows(rows: Any, chunks: list[Any]) -> list[Any]:
    if rows is None:
        return [None] * len(chunks)
    if not isinstance(rows, (pa.Array, pa.ChunkedArray)):
        rows = pa.array(rows)
    if isinstance(rows, pa.ChunkedArray):
        rows = rows.combine_chunks()
    total = sum(len(c) for c in chunks)
    if len(rows) != total:
        raise ConfigurationError(f"the row ids have {len(rows)} values for {total} values")
    out, pos = [], 0
    for c in chunks:
        out.append(rows.slice(pos, len(c)))
        pos += len(c)
    return out


def decrypt_array(
    array: Any,
    key: Any,
    *,
    format: str | None = None,
    rows: Any = None,
    key_store: KeyHeaderStore | None = None,
    headers: Any = (),
    expected_encryption_context: Mapping[str, str] | None = None,
    as_string: bool = False,
    column: str | None = None,
    allow_uncommitted: bool = False,
) -> Any:
    """Decrypt an array made by :func:`encrypt_array`; all or nothing.

    ``format``: ``None`` detects it from the first value. Compact key headers
    are looked up in the JobKey, then ``headers``, then ``key_store``.
    ``column``: the column name the compact values were sealed for.
    ``allow_uncommitted``: also open compact format v1 values (no key
    commitment; refused by default). ``as_string=True`` returns (validated
    UTF-8) strings."""
    source = KeySource(key)
    chunks, chunked = _chunks(array)
    row_chunks = _split_rows(rows, chunks)
    out = []
    for chunk, row in zip(chunks, row_chunks):
        arr = _as_binary(chunk, "array")
        col = _column(arr)
        row_col = _column(_rows_array(row, len(arr))) if row is not None else None
        opened = decrypt_with(
            source,
            col,
            format=format,
            rows=row_col,
            key_store=key_store,
            headers=headers,
            expected_context=expected_encryption_context,
            column=column,
            allow_uncommitted=allow_uncommitted,
        )
        result = _to_arrow(opened, arr)
        if as_string:
            try:
                result = result.cast(pa.large_string() if opened.width == 8 else pa.string())
            except pa.ArrowInvalid:
                opened.wipe()
                raise MessageFormatError(
                    "a decrypted value is not valid UTF-8 (decrypt with as_string=False)"
                ) from None
        out.append(result)
    return _chunked(out, as_string) if chunked else out[0]


# ---------------------------------------------------------------- tables


def key_headers(field: pa.Field) -> list[KeyHeader]:
    """The compact key headers kept in a field's metadata by encrypt_column."""
    meta = field.metadata or {}
    raw = meta.get(METADATA_KEY)
    if raw is None:
        return []
    try:
        items = json.loads(raw)
        if not isinstance(items, list) or len(items) > MAX_METADATA_HEADERS:
            raise ValueError
        return [KeyHeader.decode(base64.b64decode(item, validate=True)) for item in items]
    except (ValueError, TypeError):
        raise MessageFormatError(f"column {field.name!r}: malformed kmsenv key header metadata") from None


def _with_headers(field: pa.Field, headers: list[KeyHeader], format: str, aad_column: str | None) -> pa.Field:
    meta = dict(field.metadata or {})
    meta.pop(METADATA_KEY, None)
    if format == "compact":
        meta[METADATA_KEY] = json.dumps([base64.b64encode(h.encoded).decode("ascii") for h in headers]).encode()
    meta[FORMAT_KEY] = format.encode()
    if aad_column:
        meta[AAD_KEY] = aad_column.encode()
    else:
        meta.pop(AAD_KEY, None)
    return field.with_metadata(meta)


def _index(table: pa.Table, column: str) -> int:
    if not isinstance(table, pa.Table):
        raise ConfigurationError(f"table must be a pyarrow.Table, not {type(table).__name__}")
    i: int = table.schema.get_field_index(column)  # pyarrow is untyped
    if i < 0:
        raise ConfigurationError(f"the table has no column {column!r} (or has it twice)")
    return i


def encrypt_column(
    table: pa.Table,
    column: str,
    key: Any,
    *,
    output: str | None = None,
    encryption_context: Mapping[str, str] | None = None,
    format: str = "alibaba",
    algorithm: Algorithm | int | None = None,
    aad_column: str | None = None,
    key_store: KeyHeaderStore | None = None,
    aad_name: str | None = None,
) -> pa.Table:
    """Encrypt one column of a table (in place, or into ``output``).

    With the compact format the key headers go into the output field's
    metadata (which Parquet keeps in its footer) and into ``key_store`` when
    given, and each value is bound to the name of the column it is stored in
    (``output`` or ``column``; ``aad_name`` overrides it), so that it cannot be
    moved to another column. ``aad_column`` binds each value to that column's
    value (a row id)."""
    i = _index(table, column)
    _check_column(aad_name, format)
    rows = table.column(_index(table, aad_column)) if aad_column else None
    chunks = table.column(i).chunks or [pa.array([], table.schema.field(i).type)]
    out, headers = _encrypt_chunks(
        chunks,
        rows,
        KeySource(key),
        f"column {column!r}",
        format=format,
        encryption_context=encryption_context,
        algorithm=algorithm,
        key_store=key_store if key_store is not None else _NullStore(),
        column=bound_name(output or column, aad_name, format),
    )
    result = _chunked(out)
    field = _with_headers(
        pa.field(output or column, result.type, nullable=True), list(headers.values()), format, aad_column
    )
    if output is None or output == column:
        return table.set_column(i, field, result)
    return table.append_column(field, result)


def bound_name(stored: str, aad_name: str | None, format: str | None) -> str | None:
    """The column name compact values are bound to: ``aad_name`` when given,
    else the name of the column that holds the encrypted values. None for the
    Alibaba format, which has no place for it."""
    if format == "alibaba":
        return None
    return aad_name if aad_name is not None else stored


class _NullStore:
    """encrypt_column keeps headers in the field metadata; nothing else to store."""

    def put(self, header: KeyHeader) -> None:
        pass

    def get(self, ref: bytes) -> KeyHeader | None:
        return None


def decrypt_column(
    table: pa.Table,
    column: str,
    key: Any,
    *,
    output: str | None = None,
    format: str | None = None,
    aad_column: str | None = None,
    key_store: KeyHeaderStore | None = None,
    expected_encryption_context: Mapping[str, str] | None = None,
    as_string: bool = False,
    aad_name: str | None = None,
    allow_uncommitted: bool = False,
) -> pa.Table:
    """Decrypt one column made by :func:`encrypt_column` (in place, or into
    ``output``). Key headers come from the field metadata, the JobKey and
    ``key_store``; the row-id column defaults to the one recorded at encryption.

    Compact values must be read under the column name they were bound to:
    ``column`` itself, unless ``aad_name`` names another (the original name of
    a renamed column). ``allow_uncommitted``: also open compact format v1
    values (no key commitment, no column binding; refused by default)."""
    args = reader(key, column, format=format, aad_name=aad_name, allow_uncommitted=allow_uncommitted, ship=False)
    i = _index(table, column)
    field = table.schema.field(i)
    meta = field.metadata or {}
    if aad_column is None and AAD_KEY in meta:
        aad_column = meta[AAD_KEY].decode("utf-8", "replace")
    if format is None and FORMAT_KEY in meta:
        format = meta[FORMAT_KEY].decode("ascii", "replace")
    rows = table.column(_index(table, aad_column)) if aad_column else None
    result = decrypt_array(
        table.column(i),
        key,
        format=format,
        rows=rows,
        key_store=key_store,
        headers=key_headers(field),
        expected_encryption_context=expected_encryption_context,
        as_string=as_string,
        column=args.aad_name,
        allow_uncommitted=args.allow_uncommitted,
    )
    clean = {k: v for k, v in meta.items() if k not in (METADATA_KEY, FORMAT_KEY, AAD_KEY)}
    out_field = pa.field(output or column, result.type, nullable=True, metadata=clean or None)
    if output is None or output == column:
        return table.set_column(i, out_field, result)
    return table.append_column(out_field, result)
