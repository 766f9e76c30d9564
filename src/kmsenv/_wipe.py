"""Zero a mutable buffer in place (native OPENSSL_cleanse when the core is loaded).

The bottom layer: it imports nothing of kmsenv. The backend loader
(``kmsenv.crypto``) hands it the native core's cleanse function when it has
loaded and checked the core, which ``import kmsenv`` does; until then (or
without a usable core) a buffer is zeroed from Python.
"""

from __future__ import annotations

from typing import Callable, Union

_Buffer = Union[bytearray, memoryview]

_native: Callable[[_Buffer], None] | None = None  # the native cleanse, once crypto has loaded the core


def use_native_cleanse(cleanse: Callable[[_Buffer], None]) -> None:
    """Wipe with ``cleanse`` from now on (called by ``kmsenv.crypto`` only: the
    floor above must not be imported from here)."""
    global _native
    _native = cleanse


def wipe(buf: bytearray | memoryview | None) -> None:
    if not buf:
        return
    cleanse = _native
    if cleanse is not None:
        cleanse(buf)
    else:
        buf[:] = bytes(len(buf))
