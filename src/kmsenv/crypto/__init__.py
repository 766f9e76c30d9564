"""Chooses the crypto backend: native when it loads and matches this package's
version, else pure; ``KMSENV_BACKEND=native|pure`` forces one."""

from __future__ import annotations

import os
import threading
import warnings
from types import ModuleType
from typing import Any, Callable

from .._version import __version__
from .. import _process, _wipe
from ..exceptions import ConfigurationError
from .interface import Backend

_lock = threading.Lock()
_backend: Backend | None = None


def _reset_lock_after_fork() -> None:
    # The choice of backend holds in the child; only the lock may be stuck.
    global _lock
    _lock = _process.new_lock()


_process.register(__name__, ("_lock",), _reset_lock_after_fork)
_native_checked = False
_native_reason: str | None = None  # why native is unavailable, if it is


def _load_native() -> ModuleType | None:
    """Return the native module (crypto.native) if usable, else None."""
    global _native_checked, _native_reason
    from . import native

    if not _native_checked:
        _native_checked = True
        if native.lib is None:
            _native_reason = f"the native core is not built or failed to load ({native.IMPORT_ERROR})"
        else:
            built = native.version_info()["compiled_version"]
            if built != __version__:
                _native_reason = (
                    f"the native core is stale (built for kmsenv {built}, this is {__version__}); "
                    "reinstall kmsenv to rebuild it"
                )
        if _native_reason is None:
            # Handed down, not looked up: _wipe is on the bottom floor and
            # imports nothing of kmsenv (import kmsenv gets here at once).
            _wipe.use_native_cleanse(native.cleanse)
    return native if _native_reason is None else None


def cleanse_function() -> Callable[[Any], None] | None:
    """The native core's OPENSSL_cleanse as a function of one writable buffer,
    when the core is usable, else None. (kmsenv._wipe gets it from
    _load_native: the bottom layer imports nothing above it.)"""
    native = _load_native()
    return native.cleanse if native is not None else None


def native_available() -> bool:
    return _load_native() is not None


def native_unavailable_reason() -> str | None:
    _load_native()
    return _native_reason


def _make(name: str) -> Backend:
    if name == "native":
        native = _load_native()
        if native is None:
            raise ConfigurationError(f"KMSENV_BACKEND=native, but {_native_reason}")
        from .native import NativeBackend  # loaded by _load_native(); by name, for its type

        return NativeBackend()
    if name == "pure":
        from .pure import PureBackend

        return PureBackend()
    raise ConfigurationError(f"unknown backend {name!r}: use 'native' or 'pure'")


def get_backend() -> Backend:
    global _backend
    backend = _backend
    if backend is not None:
        return backend
    with _lock:
        if _backend is None:
            forced = os.environ.get("KMSENV_BACKEND", "").strip().lower()
            if forced:
                _backend = _make(forced)
            elif native_available():
                _backend = _make("native")
            else:
                _backend = _make("pure")  # check_at_import() already said why
        return _backend


def check_at_import() -> None:
    """Load and version-check the native core when kmsenv is imported, and say
    at once (a RuntimeWarning) when it is missing or stale, unless the pure
    backend was chosen on purpose with KMSENV_BACKEND=pure."""
    if not native_available() and os.environ.get("KMSENV_BACKEND", "").strip().lower() != "pure":
        warnings.warn(
            f"kmsenv will use its pure-Python backend: {_native_reason}",
            RuntimeWarning,
            stacklevel=3,
        )


def set_backend(name: str) -> None:
    """Switch the process-wide backend ('native' or 'pure')."""
    global _backend
    backend = _make(name)
    with _lock:
        _backend = backend


def backend_name() -> str:
    return get_backend().name


def backend_info() -> dict[str, Any]:
    """What is loaded: backend, native status, OpenSSL versions and CPU features."""
    info: dict[str, Any] = {
        "backend": backend_name(),
        "native_available": native_available(),
        "native_unavailable_reason": _native_reason,
    }
    native = _load_native()
    if native is not None:
        info.update(native.version_info())
    from .pure import cryptography_has_sm4_gcm

    info["pure_sm4_gcm"] = "cryptography" if cryptography_has_sm4_gcm() else "gmssl"
    return info
