"""Zero a mutable buffer in place (native OPENSSL_cleanse when the core is loaded)."""

from __future__ import annotations

from typing import Any

_native: Any = None  # (ffi, lib) once looked up; False when there is no native core


def wipe(buf: bytearray | memoryview | None) -> None:
    global _native
    if not buf:
        return
    if _native is None:
        from .crypto import native_module

        _native = native_module() or False
    if _native:
        ffi, lib = _native
        lib.kmsenv_wipe(ffi.from_buffer(buf, require_writable=True), len(buf))
    else:
        buf[:] = bytes(len(buf))
