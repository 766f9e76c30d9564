"""Key headers for the compact column format, and where to keep them.

A compact value (``docs/format.md`` §4, "Compact column values") carries only
an 8-byte reference to its key header: the algorithm, the encryption context
and every encrypted data key, stored once per data key instead of once per
value. The header is encoded like the first four fields of an Alibaba message
header, followed (version 2) by a 32-byte **key commitment** derived from the
data key: ``30 L { version, algorithm, EDK SET, context SET, commitment }``,
read by the same strict decoder. A reader recomputes the commitment from the
data key KMS gave it and refuses a header whose EDKs wrap different data keys
(:meth:`KeyHeader.check_data_key`). The header is not secret: it holds
ciphertext, identifiers and the commitment (a one-way function of the key).

Version 1 headers (no commitment) are still parsed, so that stores and file
metadata written before version 2 stay readable, but values under them are
opened only on request (``allow_uncommitted=True``).

Stores implement :class:`KeyHeaderStore` (``put`` / ``get``); kmsenv ships an
in-memory :class:`DictKeyHeaderStore` and a file-backed
:class:`SqliteKeyHeaderStore`. Both are picklable, so they can travel to
Spark/Dask/Ray workers (the SQLite one as its path).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, runtime_checkable

from .algorithms import Algorithm
from .exceptions import ConfigurationError, HeaderAuthenticationError, MessageFormatError
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

__all__ = ["KeyHeader", "KeyHeaderStore", "DictKeyHeaderStore", "SqliteKeyHeaderStore", "REF_LEN", "COMMITMENT_LEN"]

REF_LEN = 8
#: Key header versions: 2 is written (with a key commitment); 1 is read only.
KEY_HEADER_VERSION = 2
LEGACY_KEY_HEADER_VERSION = MESSAGE_VERSION  # 1: the Alibaba header's version field, no commitment
COMMITMENT_LEN = 32
#: HKDF info label of the commitment (followed by SHA-256 of the header's
#: fields); distinct from every other kmsenv derivation (docs/format.md).
COMMITMENT_INFO = b"kmsenv/compact/v2/commitment"
#: Largest encoded key header accepted from a store or metadata (16 EDKs of
#: the largest size the message codec allows fit well below this).
MAX_KEY_HEADER_BYTES = 1 << 20


def _hash_name(algorithm: Algorithm) -> str:
    return "SM3" if algorithm.info.cipher == "SM4" else "SHA256"


def key_commitment(algorithm: Algorithm, data_key: Any, fields_digest: bytes) -> bytes:
    """``HKDF-H(IKM = data key, salt = none, info = COMMITMENT_INFO || fields_digest, L = 32)``,
    H = SHA-256 (AES) or SM3 (SM4): the commitment a version 2 key header carries.
    Computed by the crypto backend (the only layer that touches the C core)."""
    from .crypto import get_backend

    backend: Any = get_backend()
    return bytes(backend.hkdf(_hash_name(algorithm), data_key, b"", COMMITMENT_INFO + fields_digest, COMMITMENT_LEN))


@dataclass(frozen=True, eq=False)
class KeyHeader:
    """What a reader needs to get the data key back: algorithm, context, EDKs,
    and (version 2) the commitment to that data key.

    Writers make headers with :meth:`for_data_key`, which derives the
    commitment. ``KeyHeader(algorithm, context, edks)`` without a commitment
    is a version 1 header: kmsenv never seals new values under one.

    Two headers are equal when their encodings are (the DER SETs sort EDKs and
    context entries, so the order they were given in does not matter)."""

    algorithm: Algorithm
    encryption_context: Mapping[str, str]
    encrypted_data_keys: tuple[EncryptedDataKey, ...]
    encoded: bytes = field(default=b"", repr=False, compare=False)
    commitment: bytes | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        algorithm = Algorithm(self.algorithm)
        if not algorithm.authenticated:
            raise ConfigurationError(f"{algorithm.name} is not an authenticated algorithm: use a GCM algorithm")
        edks = tuple(self.encrypted_data_keys)
        check_edks(edks)
        context = dict(self.encryption_context)
        context_bytes(context)  # validates str -> str
        if self.commitment is not None:
            if not isinstance(self.commitment, (bytes, bytearray)) or len(self.commitment) != COMMITMENT_LEN:
                raise ConfigurationError(f"a key commitment is {COMMITMENT_LEN} bytes")
            object.__setattr__(self, "commitment", bytes(self.commitment))
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "encrypted_data_keys", edks)
        object.__setattr__(self, "encryption_context", MappingProxyType(context))
        if not self.encoded:
            fields = encode_header_fields(self.version, algorithm, edks, context)
            object.__setattr__(self, "_fields_digest", hashlib.sha256(fields).digest())
            tail = der.octet_string(self.commitment) if self.commitment is not None else b""
            object.__setattr__(self, "encoded", der.tlv(der.SEQUENCE, fields + tail))

    @classmethod
    def for_data_key(
        cls,
        algorithm: Algorithm | int,
        encryption_context: Mapping[str, str],
        encrypted_data_keys: Iterable[EncryptedDataKey],
        data_key: Any,
    ) -> KeyHeader:
        """A version 2 header committing to ``data_key`` (the plaintext key
        every one of ``encrypted_data_keys`` wraps; the caller keeps and wipes it)."""
        plain = cls(Algorithm(algorithm), encryption_context, tuple(encrypted_data_keys))  # validates the fields
        if len(data_key) != plain.algorithm.key_len:
            raise ConfigurationError(f"the data key does not fit {plain.algorithm.name}")
        fields = encode_header_fields(
            KEY_HEADER_VERSION, plain.algorithm, plain.encrypted_data_keys, plain.encryption_context
        )
        commitment = key_commitment(plain.algorithm, data_key, hashlib.sha256(fields).digest())
        return cls(plain.algorithm, plain.encryption_context, plain.encrypted_data_keys, commitment=commitment)

    @property
    def version(self) -> int:
        """2 for a header with a key commitment, 1 for one without (read only)."""
        return KEY_HEADER_VERSION if self.commitment is not None else LEGACY_KEY_HEADER_VERSION

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
    def fields_digest(self) -> bytes:
        """SHA-256 of the header's bytes from the version field through the
        context SET: what the commitment covers besides the data key."""
        cached = self.__dict__.get("_fields_digest")
        if cached is None:
            fields = encode_header_fields(
                self.version, self.algorithm, self.encrypted_data_keys, self.encryption_context
            )
            cached = hashlib.sha256(fields).digest()
            object.__setattr__(self, "_fields_digest", cached)
        return cached

    @property
    def ref(self) -> bytes:
        """The 8-byte key reference every compact value carries."""
        return self.digest[:REF_LEN]

    def check_data_key(self, data_key: Any) -> None:
        """Raise :class:`AuthenticationError` unless ``data_key`` is the key
        this (version 2) header commits to; compared in constant time.

        Whatever EDK (region) the key came from, only the committed key passes,
        so a header whose EDKs wrap different keys opens for at most one."""
        if self.commitment is None:
            raise ConfigurationError("a version 1 key header has no key commitment to check")
        if len(data_key) != self.algorithm.key_len:
            raise HeaderAuthenticationError(
                f"key header {self.ref.hex()}: the data key does not fit {self.algorithm.name}"
            )
        ok = hmac.compare_digest(key_commitment(self.algorithm, data_key, self.fields_digest), self.commitment)
        if not ok:
            raise HeaderAuthenticationError(
                f"key header {self.ref.hex()}: key commitment mismatch: the data key KMS returned is not the one "
                "this header was written with (its encrypted data keys do not all wrap one key)"
            )

    def legacy_form(self) -> KeyHeader:
        """The same algorithm, context and EDKs without a commitment: how an
        Alibaba-format message's header looks up its data key."""
        if self.commitment is None:
            return self
        cached = self.__dict__.get("_legacy")
        if cached is None:
            cached = KeyHeader(self.algorithm, self.encryption_context, self.encrypted_data_keys)
            object.__setattr__(self, "_legacy", cached)
        return cached

    @classmethod
    def decode(
        cls, data: bytes | bytearray | memoryview, max_encrypted_data_keys: int = DEFAULT_MAX_ENCRYPTED_DATA_KEYS
    ) -> KeyHeader:
        """Strictly parse an encoded key header, version 2 or 1 (MessageFormatError on any deviation)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ConfigurationError(f"a key header must be bytes-like, not {type(data).__name__}")
        raw = bytes(data)
        if len(raw) > MAX_KEY_HEADER_BYTES:
            raise MessageFormatError(f"key header of {len(raw)} bytes exceeds the {MAX_KEY_HEADER_BYTES}-byte limit")
        top = der.Reader(memoryview(raw))
        h = top.enter(der.SEQUENCE, "key header")
        top.expect_end("the key header")
        start = h.pos
        version, algorithm, edks, context = read_header_fields(h, max_encrypted_data_keys)
        fields_end = h.pos
        commitment = None
        if version == KEY_HEADER_VERSION:
            commitment = h.octets("key commitment", COMMITMENT_LEN)
            if len(commitment) != COMMITMENT_LEN:
                raise MessageFormatError(f"key commitment is {len(commitment)} bytes, expected {COMMITMENT_LEN}")
        elif version != LEGACY_KEY_HEADER_VERSION:
            raise MessageFormatError(
                f"key header version {version} is not supported (expected {KEY_HEADER_VERSION}, "
                f"or {LEGACY_KEY_HEADER_VERSION} for data written before key commitment)"
            )
        h.expect_end("the key header")
        if not algorithm.authenticated:
            raise MessageFormatError(f"key header names {algorithm.name}, which compact values never use")
        header = cls(algorithm, context, edks, raw, commitment=commitment)
        object.__setattr__(header, "_fields_digest", hashlib.sha256(raw[start:fields_end]).digest())
        return header

    def __reduce__(self) -> tuple[Callable[[bytes], KeyHeader], tuple[bytes]]:
        # pickles as its bytes: small, and parsed strictly again
        return (KeyHeader.decode, (self.encoded,))

    def __repr__(self) -> str:
        arns = [e.key_arn for e in self.encrypted_data_keys]
        return (
            f"KeyHeader(ref={self.ref.hex()}, version={self.version}, algorithm={self.algorithm.name}, "
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
            conn.execute(
                f"INSERT OR IGNORE INTO {self.TABLE} (ref, header) VALUES (?, ?)", (header.ref, header.encoded)
            )
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

    def __reduce__(self) -> tuple[type[SqliteKeyHeaderStore], tuple[str]]:
        return (SqliteKeyHeaderStore, (self.path,))

    def __repr__(self) -> str:
        return f"SqliteKeyHeaderStore({self.path!r})"
