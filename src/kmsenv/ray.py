"""Encrypt and decrypt a Ray Data column (``pip install "kmsenv[ray]"``).

:class:`Encryptor` and :class:`Decryptor` are callable classes for
``Dataset.map_batches``, which runs them in a pool of actors::

    job = kmsenv.JobKey.create(provider, encryption_context={"table": "users"})
    ds = ds.map_batches(
        kmsenv.ray.Encryptor, fn_constructor_args=(job, "email"),
        fn_constructor_kwargs={"share": 4}, concurrency=4, num_cpus=0.5,
        batch_format="pyarrow")
    # or: kmsenv.ray.encrypt_dataset(ds, "email", job, concurrency=4, num_cpus=0.5)

(Ray >= 2.51 prefers ``compute=ray.data.ActorPoolStrategy(size=4)`` to
``concurrency=4``; the helpers use it.)

``__init__`` runs once per actor and fetches the data key there (one KMS
Decrypt per actor, through the process cache of :mod:`kmsenv.jobkey`);
``__call__`` seals each Arrow batch in one native call. Constructor arguments
travel through Ray's object store, which may spill to disk, so they hold only
the :class:`~kmsenv.JobKey` (encrypted data keys) or a
:class:`~kmsenv.WorkerSpec`: never a plaintext key, never credentials. Actors
take credentials from their own environment (``runtime_env={"env_vars": ...}``
or a RAM role).

**num_cpus and concurrency.** Actors hold their CPUs for the whole job. On a
2-CPU Ray, ``concurrency=2`` actors at the default 1 CPU each leave nothing for
the read tasks that feed them, and the job hangs; ``num_cpus=0.5`` fixed it.
Leave CPUs for the upstream tasks (``concurrency * num_cpus`` below the
cluster's CPUs). kmsenv does not hide these two arguments.

**The Alibaba-format budget** (``jobkey.max_messages_per_key`` messages per
data key) is enforced per actor, because actors, not partitions, seal the
values and they cannot see each other: with ``share=n`` (at least the number of
actors that may ever run, restarts included; :func:`encrypt_dataset` passes its
``concurrency``) each actor seals at most ``max_messages_per_key // n`` values
under a data key, then moves on to the JobKey's next key (one more Decrypt) and
raises :class:`~kmsenv.ConfigurationError` when none is left. Since at most
``n`` actors use a key, no key exceeds its budget. For jobs beyond
``max_messages_per_key // n`` values per actor, create the JobKey with
``rows=`` (more keys), or use the compact format, which has no such budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    import pyarrow as pa
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('kmsenv.ray needs pyarrow and ray: pip install "kmsenv[ray]"') from exc

from . import arrow as _arrow
from ._wipe import wipe
from .columns import check_format
from .exceptions import ConfigurationError
from .jobkey import JobKey, WorkerSpec, reader, reader_key
from .keyheader import KeyHeaderStore

if TYPE_CHECKING:  # kmsenv.ray never imports ray: it only calls the Dataset it is given
    from ray.data import Dataset

__all__ = ["Encryptor", "Decryptor", "encrypt_dataset", "decrypt_dataset"]


def _column(batch: pa.Table, name: str) -> Any:
    if not isinstance(batch, pa.Table):
        raise ConfigurationError(
            f"expected a pyarrow.Table batch (map_batches(..., batch_format='pyarrow')), not {type(batch).__name__}"
        )
    i = batch.schema.get_field_index(name)
    if i < 0:
        raise ConfigurationError(f"the batch has no column {name!r} (or has it twice)")
    return batch.column(i)


def _put(batch: pa.Table, column: str, output: str, values: Any) -> pa.Table:
    field = pa.field(output, values.type, nullable=True)
    if output == column:
        return batch.set_column(batch.schema.get_field_index(column), field, values)
    i = batch.schema.get_field_index(output)
    if i >= 0:
        return batch.set_column(i, field, values)
    return batch.append_column(field, values)


def _warm(spec: WorkerSpec, header: Any) -> None:
    wipe(spec.data_key(header))


class Encryptor:
    """Encrypt ``column`` of each batch (in place, or into ``output``).

    ``jobkey``: a :class:`kmsenv.JobKey`. ``format``: ``"alibaba"`` or
    ``"compact"`` (the key headers stay in the JobKey: keep it, or
    ``jobkey.save(store)``; each value is bound to the name of the column that
    holds it, ``output`` or ``column``, or ``aad_name``). ``aad_column``
    (compact only) binds each value to that column's value in its row.
    ``share`` (required for ``"alibaba"``):
    the most actors that may run this Encryptor; see the module doc for the
    per-actor budget. Output: a ``binary`` column; nulls stay null.
    """

    def __init__(
        self,
        jobkey: JobKey,
        column: str,
        *,
        output: str | None = None,
        format: str = "alibaba",
        aad_column: str | None = None,
        share: int | None = None,
        aad_name: str | None = None,
    ) -> None:
        if not isinstance(jobkey, JobKey):
            raise ConfigurationError("Encryptor takes a kmsenv.JobKey (JobKey.create(provider) on the driver)")
        check_format(format, aad_column is not None)
        _arrow._check_column(aad_name, format)
        if format == "alibaba":
            if isinstance(share, bool) or not isinstance(share, int) or share < 1:
                raise ConfigurationError(
                    "format='alibaba' needs share= (an int >= 1: the most actors that may run, e.g. the "
                    "map_batches concurrency) to split each data key's message budget between actors"
                )
            self.budget: int | None = max(1, jobkey.max_messages_per_key // share)
        else:
            self.budget = None
        self.jobkey = jobkey
        self.column = column
        self.output = output or column
        self.format = format
        self.aad_column = aad_column
        self.aad_name = _arrow.bound_name(self.output, aad_name, format)
        self.share = share
        self.key_index = 0  # the JobKey's key this actor seals with
        self.sealed = 0  # Alibaba-format values sealed under it by this actor
        _warm(jobkey.spec, jobkey.headers[0])  # the actor's one KMS Decrypt

    def _partition(self, present: int) -> tuple[int, int] | None:
        if self.budget is None:
            return None
        keys = len(self.jobkey.headers)
        if present > self.budget:
            raise ConfigurationError(
                f"a batch of {present} values is over one actor's share of a data key's budget "
                f"({self.budget} = {self.jobkey.max_messages_per_key} // share={self.share}); use smaller batches "
                "(batch_size=), or the compact format"
            )
        if self.sealed + present > self.budget:
            self.key_index += 1
            self.sealed = 0
            if self.key_index >= keys:
                raise ConfigurationError(
                    f"this actor has used its share of all {keys} data keys ({self.budget} values each at "
                    f"share={self.share}); create the JobKey with rows= set to the row count (more keys), "
                    "or use the compact format"
                )
        self.sealed += present
        return (self.key_index, keys)

    def __call__(self, batch: pa.Table) -> pa.Table:
        values = _column(batch, self.column)
        rows = _column(batch, self.aad_column) if self.aad_column else None
        partition = self._partition(len(values) - values.null_count)
        out = _arrow.encrypt_array(
            values, self.jobkey, format=self.format, rows=rows, partition=partition, column=self.aad_name
        )
        return _put(batch, self.column, self.output, out)


class Decryptor:
    """Decrypt ``column`` of each batch (in place, or into ``output``).

    ``key``: the :class:`kmsenv.JobKey` used to encrypt, a
    :class:`kmsenv.WorkerSpec`, or a :class:`kmsenv.KmsKeyProvider` (turned
    into its WorkerSpec here, so the provider's client and credentials are not
    shipped). Compact values find their key header in the JobKey or
    ``key_store`` and are read under the name ``column`` (``aad_name``: the
    name they were written under, for a renamed column);
    ``allow_uncommitted`` also opens compact format v1 values (no key
    commitment; refused by default). ``as_string``: UTF-8 strings, else
    binary. With a JobKey, ``__init__`` fetches its first data key (one KMS
    Decrypt per actor).
    """

    def __init__(
        self,
        key: Any,
        column: str,
        *,
        output: str | None = None,
        format: str | None = None,
        aad_column: str | None = None,
        key_store: KeyHeaderStore | None = None,
        as_string: bool = True,
        aad_name: str | None = None,
        allow_uncommitted: bool = False,
    ) -> None:
        args = reader(key, column, format=format, aad_name=aad_name, allow_uncommitted=allow_uncommitted)
        key = self.key = args.key
        self.column = column
        self.output = output or column
        self.format = args.format
        self.aad_column = aad_column
        self.key_store = key_store
        self.as_string = as_string
        self.aad_name = args.aad_name
        self.allow_uncommitted = args.allow_uncommitted
        if isinstance(key, JobKey):
            _warm(key.spec, key.headers[0])

    def __call__(self, batch: pa.Table) -> pa.Table:
        values = _column(batch, self.column)
        rows = _column(batch, self.aad_column) if self.aad_column else None
        out = _arrow.decrypt_array(
            values,
            self.key,
            format=self.format,
            rows=rows,
            key_store=self.key_store,
            as_string=self.as_string,
            column=self.aad_name,
            allow_uncommitted=self.allow_uncommitted,
        )
        return _put(batch, self.column, self.output, out)


def _pool(size: int) -> Any:
    """A fixed pool of ``size`` actors (``concurrency=`` is deprecated since Ray 2.51)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigurationError("concurrency must be an int >= 1 (the size of a fixed actor pool)")
    try:
        from ray.data import ActorPoolStrategy
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError('kmsenv.ray needs ray[data]: pip install "kmsenv[ray]"') from exc
    return ActorPoolStrategy(size=size)


def encrypt_dataset(
    ds: Dataset,
    column: str,
    jobkey: JobKey,
    *,
    concurrency: int = 2,
    num_cpus: float = 0.5,
    output: str | None = None,
    format: str = "alibaba",
    aad_column: str | None = None,
    aad_name: str | None = None,
    **map_batches_args: Any,
) -> Dataset:
    """``ds.map_batches(Encryptor, ...)`` on a fixed pool of ``concurrency``
    actors of ``num_cpus`` CPUs each (see the module doc), with
    ``share=concurrency`` and ``batch_format="pyarrow"``;
    other keyword arguments go to ``map_batches`` (e.g. ``batch_size``)."""
    compute = _pool(concurrency)  # checked first: it also sets the budget share
    return ds.map_batches(
        Encryptor,
        compute=compute,
        fn_constructor_args=(jobkey, column),
        fn_constructor_kwargs={
            "output": output,
            "format": format,
            "aad_column": aad_column,
            "share": concurrency,
            "aad_name": aad_name,
        },
        batch_format="pyarrow",
        num_cpus=num_cpus,
        **map_batches_args,
    )


def decrypt_dataset(
    ds: Dataset,
    column: str,
    key: Any,
    *,
    concurrency: int = 2,
    num_cpus: float = 0.5,
    output: str | None = None,
    format: str | None = None,
    aad_column: str | None = None,
    key_store: KeyHeaderStore | None = None,
    as_string: bool = True,
    aad_name: str | None = None,
    allow_uncommitted: bool = False,
    **map_batches_args: Any,
) -> Dataset:
    """``ds.map_batches(Decryptor, ...)`` on a fixed pool of ``concurrency``
    actors of ``num_cpus`` CPUs each, with ``batch_format="pyarrow"``."""
    compute = _pool(concurrency)
    key = reader_key(key)  # never ship a provider (it holds a client with credentials)
    return ds.map_batches(
        Decryptor,
        compute=compute,
        fn_constructor_args=(key, column),
        fn_constructor_kwargs={
            "output": output,
            "format": format,
            "aad_column": aad_column,
            "key_store": key_store,
            "as_string": as_string,
            "aad_name": aad_name,
            "allow_uncommitted": allow_uncommitted,
        },
        batch_format="pyarrow",
        num_cpus=num_cpus,
        **map_batches_args,
    )
