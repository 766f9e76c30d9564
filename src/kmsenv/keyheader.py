"""Key headers for the compact column format, and where to keep them.

A compact value (``docs/format.md``, "Compact column values") carries only an
8-byte reference to its key header: the algorithm, the encryption context and
every encrypted data key, stored once per data key instead of once per value.
The header is encoded exactly like the first four fields of an Alibaba message
header (``30 L { version, algorithm, EDK SET, context SET }``), so it is read
by the same strict decoder. It is not secret: it holds ciphertext and
identifiers only.

Stores implement :class:`KeyHeaderStore` (``put`` / ``get``); kmsenv ships an
in-memory :class:`DictKeyHeaderStore` and a file-backed
:class:`SqliteKeyHeaderStore`. Both are picklable, so they can travel to
Spark/Dask/Ray workers (the SQLite one as its path).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Iterator, Mapping, Protocol, runtime_checkable

from .algorithms import Algorithm
from .exceptions import ConfigurationError, MessageFormatError
from .message import der
from .message.codec import (
    DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
    MESSAGE_VERSION,
    check_edks,
    context_bytes,
    encode_header_fields,
    read_header_fields,
)
from .model import EncryptedDataKey

__all__ = ["KeyHeader", "KeyHeaderStore", "DictKeyHeaderStore", "SqliteKeyHeaderStore", "REF_LEN"]

REF_LEN = 8
#: Largest encoded key header accepted from a store or metadata (16 EDKs of
#: the largest size the message codec allows fit well below this).
MAX_KEY_HEADER_BYTES = 1 << 20


@dataclass(frozen=True, eq=False)
class KeyHeader:
    """What a reader needs to get the data key back: algorithm, context, EDKs.

    Two headers are equal when their encodings are (the DER SETs sort EDKs and
    context entries, so the order they were given in does not matter)."""

    algorithm: Algorithm
    encryption_context: Mapping[str, str]
    encrypted_data_keys: tuple[EncryptedDataKey, ...]
    encoded: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        algorithm = Algorithm(self.algorithm)
        if not algorithm.authenticated:
            raise ConfigurationError(f"{algorithm.name} is not an authenticated algorithm: use a GCM algorithm")
        edks = tuple(self.encrypted_data_keys)
        check_edks(edks)
        context = dict(self.encryption_context)
        context_bytes(context)  # validates str -> str
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "encrypted_data_keys", edks)
        object.__setattr__(self, "encryption_context", MappingProxyType(context))
        if not self.encoded:
            fields = encode_header_fields(MESSAGE_VERSION, algorithm, edks, context)
            object.__setattr__(self, "encoded", der.tlv(der.SEQUENCE, fields))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyHeader) and other.encoded == self.encoded

    def __hash__(self) -> int:
        return hash(self.encoded)

    @property
    def digest(self) -> bytes:
        """SHA-256 of the encoded header: bound into every value's subkey."""
        cached = self.__dict__.get("_digest")
        if cached is None:
            cached = hashlib.sha256(self.encoded).digest()
            object.__setattr__(self, "_digest", cached)
        return cached

    @property
    def ref(self) -> bytes:
        """The 8-byte key reference every compact value carries."""
        return self.digest[:REF_LEN]

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview,
               max_encrypted_data_keys: int = DEFAULT_MAX_ENCRYPTED_DATA_KEYS) -> KeyHeader:
        """Strictly parse an encoded key header (MessageFormatError on any deviation)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ConfigurationError(f"a key header must be bytes-like, not {type(data).__name__}")
        raw = bytes(data)
        if len(raw) > MAX_KEY_HEADER_BYTES:
            raise MessageFormatError(f"key header of {len(raw)} bytes exceeds the {MAX_KEY_HEADER_BYTES}-byte limit")
        top = der.Reader(memoryview(raw))
        h = top.enter(der.SEQUENCE, "key header")
        top.expect_end("the key header")
        version, algorithm, edks, context = read_header_fields(h, max_encrypted_data_keys)
        h.expect_end("the key header")
        if version != MESSAGE_VERSION:
            raise MessageFormatError(f"key header version {version} is not supported (expected {MESSAGE_VERSION})")
        if not algorithm.authenticated:
            raise MessageFormatError(f"key header names {algorithm.name}, which compact values never use")
        return cls(algorithm, context, edks, raw)

    def __reduce__(self):  # pickles as its bytes: small, and parsed strictly again
        return (KeyHeader.decode, (self.encoded,))

    def __repr__(self) -> str:
        arns = [e.key_arn for e in self.encrypted_data_keys]
        return (
            f"KeyHeader(ref={self.ref.hex()}, algorithm={self.algorithm.name}, "
            f"encryption_context={dict(self.encryption_context)!r}, key_arns={arns!r})"
        )


@runtime_checkable
class KeyHeaderStore(Protocol):
    """Where compact key headers live: a key table, a sidecar, file metadata.

    ``put`` must be idempotent for the same header and must refuse a different
    header under a reference it already holds. ``get`` returns ``None`` for an
    unknown reference."""

    def put(self, header: KeyHeader) -> None: ...

    def get(self, ref: bytes) -> KeyHeader | None: ...


def _check_ref(ref: object) -> bytes:
    if not isinstance(ref, (bytes, bytearray)) or len(ref) != REF_LEN:
        raise ConfigurationError(f"a key reference is {REF_LEN} bytes")
    return bytes(ref)


class DictKeyHeaderStore:
    """Key headers in a dict: for tests, single processes, or to ship a job's
    few headers to workers inside the task closure (it pickles)."""

    def __init__(self, headers: Iterable[KeyHeader] = ()) -> None:
        self._headers: dict[bytes, KeyHeader] = {}
        for header in headers:
            self.put(header)

    def put(self, header: KeyHeader) -> None:
        if not isinstance(header, KeyHeader):
            raise ConfigurationError("put() takes a KeyHeader")
        known = self._headers.get(header.ref)
        if known is not None and known.encoded != header.encoded:
            raise ConfigurationError(f"another key header is stored under reference {header.ref.hex()}")
        self._headers[header.ref] = header

    def get(self, ref: bytes) -> KeyHeader | None:
        return self._headers.get(_check_ref(ref))

    def __iter__(self) -> Iterator[KeyHeader]:
        return iter(list(self._headers.values()))

    def __len__(self) -> int:
        return len(self._headers)

    def __repr__(self) -> str:
        return f"DictKeyHeaderStore({len(self._headers)} headers)"


class SqliteKeyHeaderStore:
    """Key headers in a SQLite table ``kmsenv_key_headers(ref, header)``.

    Safe for several threads and processes on one file. Pickles as its path,
    so workers open the same file (use a path every worker can reach)."""

    TABLE = "kmsenv_key_headers"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._local = threading.local()
        with self._connect() as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.TABLE} ("
                "ref BLOB PRIMARY KEY NOT NULL, header BLOB NOT NULL, created REAL NOT NULL DEFAULT (julianday('now')))"
            )

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=30.0)
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def put(self, header: KeyHeader) -> None:
        if not isinstance(header, KeyHeader):
            raise ConfigurationError("put() takes a KeyHeader")
        with self._connect() as conn:
            conn.execute(f"INSERT OR IGNORE INTO {self.TABLE} (ref, header) VALUES (?, ?)", (header.ref, header.encoded))
            row = conn.execute(f"SELECT header FROM {self.TABLE} WHERE ref = ?", (header.ref,)).fetchone()
        if row is None or bytes(row[0]) != header.encoded:
            raise ConfigurationError(f"another key header is stored under reference {header.ref.hex()}")

    def get(self, ref: bytes) -> KeyHeader | None:
        ref = _check_ref(ref)
        row = self._connect().execute(f"SELECT header FROM {self.TABLE} WHERE ref = ?", (ref,)).fetchone()
        if row is None:
            return None
        header = KeyHeader.decode(bytes(row[0]))
        if header.ref != ref:
            raise MessageFormatError(f"the key header stored under {ref.hex()} does not match its reference")
        return header

    def __reduce__(self):
        return (SqliteKeyHeaderStore, (self.path,))

    def __repr__(self) -> str:
        return f"SqliteKeyHeaderStore({self.path!r})"
