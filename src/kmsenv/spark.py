"""Encrypt and decrypt a Spark DataFrame column (``pip install "kmsenv[spark]"``).

A thin adapter over :mod:`kmsenv.arrow`: one ``mapInArrow`` pass hands each
Python worker whole Arrow record batches, and the native core seals a batch
in one call, so there is no per-row Python work and no per-row UDF.

Key distribution (why KMS calls scale with processes, not rows): the driver
makes a :class:`kmsenv.JobKey` (1 GenerateDataKey + 1 Encrypt per other
region) and ships only its encrypted data keys inside the task function. Each
Python worker process makes one KMS Decrypt and keeps the data key in the
process cache of :mod:`kmsenv.jobkey`; Spark reuses Python workers
(``spark.python.worker.reuse=true``, the default), so a job costs about one
Decrypt per executor core. Workers take KMS credentials from their own
environment or RAM role (``ALIBABA_CLOUD_ACCESS_KEY_ID`` / ``..._SECRET``),
never from the task closure or the Spark conf.

Formats: ``"alibaba"`` makes each value a standalone Alibaba SDK message;
``"compact"`` adds 45 bytes per value and needs its key header to read:
store the JobKey's headers yourself (``JobKey.create(..., key_store=store)``
or ``key_store=`` here) and decrypt with that store or the JobKey. Compact
values are bound to the name of the column that holds them (``aad_name=``
overrides it: read a renamed column with the name it was written under).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Iterable, Iterator, Mapping

try:
    from pyspark import TaskContext
    from pyspark.sql import DataFrame
    from pyspark.sql.types import BinaryType, StringType, StructField, StructType
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('kmsenv.spark needs pyspark: pip install "kmsenv[spark]"') from exc

import pyarrow as pa

from . import arrow as _arrow
from .exceptions import ConfigurationError
from .columns import check_format
from .jobkey import JobKey, job_key_for, reader
from .keyheader import KeyHeaderStore

__all__ = ["encrypt_column", "decrypt_column", "encrypt_udf"]

# ---------------------------------------------------------------- driver side


def _field(df: DataFrame, column: str, what: str) -> StructField:
    matches = [f for f in df.schema.fields if f.name == column]
    if len(matches) != 1:
        raise ConfigurationError(f"the DataFrame has no {what} column {column!r} (or has it twice)")
    return matches[0]


def _output_schema(df: DataFrame, column: str, output: str | None, typ: Any) -> StructType:
    out = output or column
    fields = []
    for f in df.schema.fields:
        if f.name == column and out == column:
            fields.append(StructField(column, typ, True))
        elif f.name == out:
            raise ConfigurationError(f"output column {out!r} already exists")
        else:
            fields.append(f)
    if out != column:
        fields.append(StructField(out, typ, True))
    return StructType(fields)


def encrypt_column(
    df: DataFrame,
    column: str,
    key: Any,
    *,
    output: str | None = None,
    format: str = "alibaba",
    aad_column: str | None = None,
    rows: int | None = None,
    encryption_context: Mapping[str, str] | None = None,
    key_store: KeyHeaderStore | None = None,
    aad_name: str | None = None,
) -> DataFrame:
    """Encrypt one string/binary column of ``df`` (lazily, with ``mapInArrow``).

    ``key``: a :class:`kmsenv.JobKey` (made on the driver; reuse it across
    DataFrames of one job), or a data key provider, for which a JobKey is made
    here with ``encryption_context`` and ``rows``. ``rows`` is an upper bound
    of the row count: it sets the number of data keys for the Alibaba-format
    budget (2^28 messages per key). Nothing counts the rows for you (that would
    be a second Spark job): without ``rows`` one key is made and each of the
    DataFrame's partitions may seal at most ``2^28 / partitions`` values; a
    task over its share fails with ConfigurationError.

    The column becomes BinaryType in place, or goes to a new column ``output``.
    Nulls stay null. ``aad_column`` (compact format) binds each value to that
    column's value, a row id that must be given again to decrypt. With the
    compact format the key headers must be kept: ``key_store=`` receives them
    on the driver (or keep the JobKey, or ``JobKey.create(..., key_store=)``),
    and each value is bound to the name of the column that holds it
    (``output`` or ``column``, or ``aad_name``).
    """
    check_format(format, aad_column is not None)
    _arrow._check_column(aad_name, format)
    source = _field(df, column, "input")
    if not isinstance(source.dataType, (StringType, BinaryType)):
        raise ConfigurationError(
            f"column {column!r} must be a string or binary column, not {source.dataType.simpleString()}"
        )
    if aad_column is not None:
        _field(df, aad_column, "row id")
    job = job_key_for(key, format=format, encryption_context=encryption_context, rows=rows, key_store=key_store)
    schema = _output_schema(df, column, output, BinaryType())
    partitions = max(1, df.rdd.getNumPartitions())
    fn = functools.partial(
        _encrypt_batches,
        column=column,
        output=output or column,
        key=job,
        format=format,
        aad_column=aad_column,
        partitions=partitions,
        aad_name=_arrow.bound_name(output or column, aad_name, format),
    )
    return df.mapInArrow(fn, schema)


def decrypt_column(
    df: DataFrame,
    column: str,
    key: Any,
    *,
    output: str | None = None,
    format: str | None = None,
    aad_column: str | None = None,
    key_store: KeyHeaderStore | None = None,
    as_string: bool = True,
    expected_encryption_context: Mapping[str, str] | None = None,
    aad_name: str | None = None,
    allow_uncommitted: bool = False,
) -> DataFrame:
    """Decrypt a column made by :func:`encrypt_column` (lazily, all or nothing
    per batch: a bad value fails the task with an error naming the value).

    ``key``: the :class:`kmsenv.JobKey`, or a :class:`kmsenv.WorkerSpec` (a
    reader that did not write; ``WorkerSpec.from_provider(provider)``, which is
    also what a provider given here becomes: the provider itself never leaves
    the driver). ``format``: ``None`` detects it per batch. Compact values need
    their key header: in the JobKey or in ``key_store`` (a picklable store:
    ``kmsenv.DictKeyHeaderStore``, or a ``SqliteKeyHeaderStore`` whose path
    every executor can read). ``aad_column``: the row-id column the values were
    bound to. Output is StringType when ``as_string`` else BinaryType.
    Compact values are read under the name ``column`` (``aad_name``: the name
    they were written under, for a renamed column). ``allow_uncommitted``:
    also open compact format v1 values (no key commitment; refused by default).
    """
    args = reader(key, column, format=format, aad_name=aad_name, allow_uncommitted=allow_uncommitted)
    _field(df, column, "input")
    if aad_column is not None:
        _field(df, aad_column, "row id")
    schema = _output_schema(df, column, output, StringType() if as_string else BinaryType())
    fn = functools.partial(
        _decrypt_batches,
        column=column,
        output=output or column,
        key=args.key,
        format=args.format,
        aad_column=aad_column,
        key_store=key_store,
        as_string=as_string,
        expected_encryption_context=dict(expected_encryption_context) if expected_encryption_context else None,
        aad_name=args.aad_name,
        allow_uncommitted=args.allow_uncommitted,
    )
    return df.mapInArrow(fn, schema)


def encrypt_udf(
    jobkey: JobKey, *, format: str = "alibaba", partitions: int | None = None, aad_name: str | None = None
) -> Any:
    """An iterator ``arrow_udf`` (Spark >= 4.1) returning BinaryType, for
    ``df.select(enc("email"))`` or, compact with row binding,
    ``enc("email", "id")``.

    ``aad_name`` (required for the compact format): the name of the column
    the values will be stored in (the UDF cannot see its alias), bound into
    each value; :func:`decrypt_column` reads it under that name.

    ``partitions``: the partition count of the DataFrame it runs on; with the
    Alibaba format it selects the data key and enforces each partition's share
    of the budget (without it each process enforces the whole key budget on
    its own use only, so give it when the job may near 2^28 values per key).
    """
    try:
        from pyspark.sql.functions import ArrowUDFType, arrow_udf
    except ImportError:  # pragma: no cover - Spark < 4.1
        raise ConfigurationError("encrypt_udf needs Spark >= 4.1 (arrow_udf); use encrypt_column") from None
    if not isinstance(jobkey, JobKey):
        raise ConfigurationError("encrypt_udf needs a kmsenv.JobKey (JobKey.create(provider, ...) on the driver)")
    check_format(format)
    _arrow._check_column(aad_name, format)
    if format == "compact" and aad_name is None:
        raise ConfigurationError(
            "encrypt_udf(format='compact') needs aad_name=: the name of the column the values will be stored "
            "in (compact values are bound to it)"
        )
    fn = functools.partial(_encrypt_arrays, key=jobkey, format=format, partitions=partitions, aad_name=aad_name)
    with warnings.catch_warnings():
        # A partial has no type hints to infer the UDF type from; it is given.
        warnings.filterwarnings("ignore", "It is preferred to specify type hints", UserWarning)
        return arrow_udf(fn, BinaryType(), ArrowUDFType.SCALAR_ITER)


# ---------------------------------------------------------------- worker side
# Module-level functions (bound with functools.partial) so tasks pickle them by
# reference: the task carries the JobKey / WorkerSpec, never a driver object.


def _partition(partitions: int, format: str) -> tuple[int, int]:
    ctx = TaskContext.get()
    p = ctx.partitionId() if ctx is not None else 0
    if p >= partitions:
        if format == "alibaba":
            raise ConfigurationError(
                f"task for partition {p} of a DataFrame planned with {partitions} partitions: the Alibaba-format "
                "budget cannot be shared out; repartition the DataFrame before encrypt_column"
            )
        p %= partitions  # compact: the partition only picks a data key
    return p, partitions


class _Budget:
    """Alibaba-format values one partition has sealed, against its share."""

    def __init__(self, key: JobKey, partitions: int, format: str) -> None:
        self.limit = key.budget_for(partitions) if format == "alibaba" else None
        self.partitions = partitions
        self.key = key
        self.sealed = 0

    def add(self, array: Any) -> None:
        if self.limit is None:
            return
        self.sealed += len(array) - array.null_count
        if self.sealed > self.limit:
            raise ConfigurationError(
                f"this partition holds more than {self.limit} values, over its share of the data key's budget "
                f"({self.key.max_messages_per_key} messages per key for {self.partitions} partitions over "
                f"{len(self.key.headers)} keys); pass rows= (an upper bound of the row count) or use the compact format"
            )


def _like(array: Any, source_type: Any, as_string: bool = False) -> Any:
    large = pa.types.is_large_binary(source_type) or pa.types.is_large_string(source_type)
    if as_string:
        target = pa.large_string() if large else pa.string()
    else:
        target = pa.large_binary() if large else pa.binary()
    return array if array.type == target else array.cast(target)


def _replace(batch: pa.RecordBatch, column: str, output: str, array: Any) -> pa.RecordBatch:
    arrays = list(batch.columns)
    fields = list(batch.schema)
    if output == column:
        i = batch.schema.get_field_index(column)
        arrays[i] = array
        fields[i] = pa.field(column, array.type)
    else:
        arrays.append(array)
        fields.append(pa.field(output, array.type))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def _encrypt_batches(
    batches: Iterable[pa.RecordBatch],
    *,
    column: str,
    output: str,
    key: JobKey,
    format: str,
    aad_column: str | None,
    partitions: int,
    aad_name: str | None = None,
) -> Iterator[pa.RecordBatch]:
    part = _partition(partitions, format)
    budget = _Budget(key, partitions, format)
    for batch in batches:
        values = batch.column(column)
        budget.add(values)
        rows = batch.column(aad_column) if aad_column else None
        sealed = _arrow.encrypt_array(values, key, format=format, rows=rows, partition=part, column=aad_name)
        yield _replace(batch, column, output, _like(sealed, values.type))


def _decrypt_batches(
    batches: Iterable[pa.RecordBatch],
    *,
    column: str,
    output: str,
    key: Any,
    format: str | None,
    aad_column: str | None,
    key_store: KeyHeaderStore | None,
    as_string: bool,
    expected_encryption_context: Mapping[str, str] | None,
    aad_name: str | None = None,
    allow_uncommitted: bool = False,
) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        values = batch.column(column)
        rows = batch.column(aad_column) if aad_column else None
        opened = _arrow.decrypt_array(
            values,
            key,
            format=format,
            rows=rows,
            key_store=key_store,
            as_string=as_string,
            expected_encryption_context=expected_encryption_context,
            column=aad_name,
            allow_uncommitted=allow_uncommitted,
        )
        yield _replace(batch, column, output, _like(opened, values.type, as_string))


def _encrypt_arrays(
    items: Iterator[Any], *, key: JobKey, format: str, partitions: int | None, aad_name: str | None = None
) -> Iterator[Any]:
    part = _partition(partitions, format) if partitions else None
    budget = _Budget(key, partitions, format) if partitions else None
    for item in items:
        values, rows = (item[0], item[1]) if isinstance(item, tuple) else (item, None)
        if budget is not None:
            budget.add(values)
        yield _arrow.encrypt_array(values, key, format=format, rows=rows, partition=part, column=aad_name)
