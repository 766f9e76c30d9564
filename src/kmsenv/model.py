"""Data keys and encrypted data keys, the currency between providers and the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from ._wipe import wipe as _wipe_buffer
from .algorithms import Algorithm
from .exceptions import ConfigurationError, KmsEnvError

__all__ = ["EncryptedDataKey", "DataKey", "DataKeyProvider"]


# ---------------------------------------------------------------- the provider protocol's arguments
# The one check of each argument every layer takes (engine, streams, columns,
# job keys, providers, the cache): here, on the floor they all stand on.


def context_argument(value: object) -> dict[str, str]:
    """An ``encryption_context`` argument as a private dict (the caller may go
    on changing theirs): None is empty, a mapping is copied, anything else is
    a :class:`ConfigurationError`. Key and value types are checked where the
    context is encoded (every encrypt encodes it before calling a provider)."""
    if type(value) is dict:  # the common case first: no ABC check
        return value.copy()
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError("encryption_context must be a mapping of str to str")
    return dict(value)


def algorithm_argument(value: object, error: type[KmsEnvError] = ConfigurationError) -> Algorithm:
    """An ``algorithm`` argument: an :class:`Algorithm` or its ID (a bool is
    not one). Anything else raises ``error``: :class:`ConfigurationError`
    where an algorithm is a setting (providers, the cache), the engine's
    :class:`UnsupportedAlgorithmError` where it asks for a message's (both
    are ValueErrors)."""
    if type(value) is Algorithm:
        return value
    if not isinstance(value, bool):
        try:
            return Algorithm(value)  # type: ignore[arg-type]  # any object on purpose: the enum refuses what is not an ID
        except (ValueError, TypeError):
            pass
    raise error(f"unknown algorithm {value!r}")


@dataclass(frozen=True, eq=False)
class EncryptedDataKey:
    """One CMK's wrapping of the data key: the CMK ARN and the raw KMS ciphertext
    blob (the base64-decoded ``CiphertextBlob``)."""

    key_arn: str
    ciphertext_blob: bytes
    # Headers are memoized by their EDKs, so the hash is computed once.
    _hash: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key_arn, str) or not self.key_arn:
            raise TypeError("key_arn must be a non-empty str")
        if not isinstance(self.ciphertext_blob, (bytes, bytearray, memoryview)):
            raise TypeError("ciphertext_blob must be bytes")
        object.__setattr__(self, "ciphertext_blob", bytes(self.ciphertext_blob))
        object.__setattr__(self, "_hash", hash((self.key_arn, self.ciphertext_blob)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EncryptedDataKey):
            return NotImplemented
        return self is other or (
            self._hash == other._hash
            and self.key_arn == other.key_arn
            and self.ciphertext_blob == other.ciphertext_blob
        )

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> Any:
        # Rebuild through __init__: str hashes differ between processes.
        return (EncryptedDataKey, (self.key_arn, self.ciphertext_blob))

    def __repr__(self) -> str:
        return f"EncryptedDataKey(key_arn={self.key_arn!r}, ciphertext_blob=<{len(self.ciphertext_blob)} bytes>)"


class DataKey:
    """A plaintext data key and its encrypted copies.

    The plaintext lives in a private ``bytearray`` that :meth:`wipe` zeroes (also
    on ``with`` exit and on garbage collection). Its repr never shows key bytes.
    Python may still hold transient copies (e.g. the KMS client's base64 string);
    see docs/security.md.
    """

    __slots__ = ("_key", "encrypted_data_keys", "__weakref__")

    def __init__(self, plaintext: bytes | bytearray | memoryview, encrypted_data_keys: Sequence[EncryptedDataKey]):
        self._key = bytearray(plaintext)
        self.encrypted_data_keys: list[EncryptedDataKey] = list(encrypted_data_keys)

    @classmethod
    def _adopt(cls, key: bytearray, encrypted_data_keys: Sequence[EncryptedDataKey]) -> DataKey:
        """A DataKey that takes ownership of ``key`` (no second copy to wipe)."""
        self = cls.__new__(cls)
        self._key = key
        self.encrypted_data_keys = list(encrypted_data_keys)
        return self

    @property
    def plaintext(self) -> bytearray:
        """The key bytes (a live view: do not keep it beyond the key's life)."""
        return self._key

    def wipe(self) -> None:
        """Zero the key in place (idempotent)."""
        key = self._key
        if key:
            _wipe_buffer(key)
            # Detach the zeroed buffer so a second wipe (e.g. in __del__) costs nothing.
            self._key = bytearray()

    def _spent(self, buf: bytearray) -> None:
        """The engine's backend zeroed ``buf`` (what ``plaintext`` returned) in
        place. When that is this key's own buffer, let go of it so that
        :meth:`wipe` and ``__del__`` have nothing left to do; otherwise (a
        subclass handing out another buffer) wipe as usual."""
        if buf is self._key:
            self._key = bytearray()
        else:
            self.wipe()

    def __enter__(self) -> DataKey:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wipe()

    def __del__(self) -> None:
        try:
            if self._key:  # usually wiped already: skip the call
                self.wipe()
        except Exception:  # interpreter shutdown: nothing sane left to do
            pass

    def __repr__(self) -> str:
        arns = [edk.key_arn for edk in self.encrypted_data_keys]
        return f"DataKey(<{len(self._key)}-byte key redacted>, cmks={arns!r})"

    def __reduce__(self) -> Any:
        raise TypeError("a plaintext DataKey must not be pickled")


@runtime_checkable
class DataKeyProvider(Protocol):
    """Anything that can make and unwrap data keys.

    ``decrypt_data_key`` raises :class:`kmsenv.NoUsableKeyError` when none of the
    encrypted data keys is one it can use.
    """

    def generate_data_key(self, algorithm: Algorithm, encryption_context: dict[str, str]) -> DataKey: ...

    def decrypt_data_key(
        self,
        encrypted_data_keys: Sequence[EncryptedDataKey],
        algorithm: Algorithm,
        encryption_context: dict[str, str],
    ) -> bytes | bytearray: ...
