"""Zero a mutable buffer in place (native OPENSSL_cleanse when the core is loaded)."""

from __future__ import annotations


def wipe(buf: bytearray | memoryview | None) -> None:
    if buf is None:
        return
    n = len(buf)
    if not n:
        return
    from .crypto import native_module

    native = native_module()
    if native is not None:
        ffi, lib = native
        lib.kmsenv_wipe(ffi.from_buffer(buf, require_writable=True), n)
    else:
        buf[:] = bytes(n)
