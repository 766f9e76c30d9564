"""A cached key that cannot be used after it is wiped.

Caches hand out *copies* of their keys and wipe the originals on eviction. A
copy taken while another thread wipes would be all zeros, and a value sealed
with it readable by anyone. ``KeyCell`` makes the copy and the wipe exclusive
(one lock per cell) and refuses a copy after the wipe with
:class:`~kmsenv.exceptions.WipedKeyError`: a wiped key never yields zeros.
"""

from __future__ import annotations

import threading
from typing import Any

from ._wipe import wipe
from .exceptions import WipedKeyError

__all__ = ["KeyCell"]


class KeyCell:
    """One plaintext key, owned by a cache (copied in, wiped out)."""

    __slots__ = ("_key", "_lock", "__weakref__")

    def __init__(self, key: bytes | bytearray | memoryview) -> None:
        if not key:
            raise ValueError("a key cell needs a non-empty key")
        self._key = bytearray(key)
        self._lock = threading.Lock()

    def copy(self) -> bytearray:
        """A new buffer holding the key (the caller wipes it)."""
        with self._lock:
            if not self._key:
                raise WipedKeyError("a cached data key was used after it was wiped")
            return bytearray(self._key)

    def wipe(self) -> None:
        """Zero the key; every later :meth:`copy` raises (idempotent)."""
        with self._lock:
            key, self._key = self._key, bytearray()
            wipe(key)

    @property
    def wiped(self) -> bool:
        return not self._key

    def __len__(self) -> int:
        return len(self._key)

    def __repr__(self) -> str:
        state = "wiped" if not self._key else f"{len(self._key)}-byte key redacted"
        return f"KeyCell(<{state}>)"

    def __del__(self) -> None:
        try:
            if self._key:
                wipe(self._key)
        except Exception:  # interpreter shutdown
            pass

    def __reduce__(self) -> Any:
        raise TypeError("a KeyCell holds a plaintext key and must not be pickled")

    def _after_fork_in_child(self) -> None:
        # The parent may have held the lock at fork time.
        self._lock = threading.Lock()
