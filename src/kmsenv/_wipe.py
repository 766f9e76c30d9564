"""Zero a mutable buffer in place (native OPENSSL_cleanse when the core is loaded).

The bottom layer: it imports nothing of kmsenv at import time, and at its
first wipe asks crypto for the native core's cleanse function only (which
loads neither the pure backend nor the message layer above it).
"""

from __future__ import annotations

from typing import Any

_native: Any = None  # the native cleanse function once looked up; False when there is no native core


def wipe(buf: bytearray | memoryview | None) -> None:
    global _native
    if not buf:
        return
    if _native is None:
        from .crypto import cleanse_function

        _native = cleanse_function() or False
    if _native:
        _native(buf)
    else:
        buf[:] = bytes(len(buf))
