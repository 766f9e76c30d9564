"""Per-process state: its one home, and the one at-fork handler that resets it.

A forked child starts as a copy of its parent: every pool of pre-drawn IVs,
every cached data key, lock and open connection is there twice. Used in both
processes, a pool of IVs repeats GCM nonces under one key, a cached encryption
key spends its message budget twice, a lock held by a parent thread at fork
time never opens, and a keep-alive socket serves two readers. So every module
that keeps such state registers here:

* module-level state with :func:`register` (the names it owns, and a function
  that resets them in a forked child);
* per-object state (a :class:`~kmsenv.DataKeyCache`, a :class:`~kmsenv.Kms`)
  with :func:`track`: the object's ``_after_fork_in_child()`` is called in the
  child for as long as the object lives.

One ``os.register_at_fork`` handler, installed here and nowhere else, runs
them all. ``tests/test_process_state.py`` walks the package's source and
fails when a module-level pool, cache, memo or lock is not registered.

State that must never be used by two processes (the IV pool) also records
the ``os.getpid()`` it was made in and checks it on use, in case a fork ran
no Python handler (a C library calling ``fork()`` directly).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable

__all__ = ["register", "track", "registry", "generation", "new_lock"]

logger = logging.getLogger("kmsenv")


@dataclass(frozen=True)
class Registration:
    """Module-level state of ``module``: the global ``names`` it resets."""

    module: str
    names: tuple[str, ...]
    reset: Callable[[], None]


_REGISTRY: list[Registration] = []
_TRACKED: "weakref.WeakSet[Any]" = weakref.WeakSet()
_generation = 0
# Failures of the last child reset, for tests (a handler cannot raise to anyone).
_RESET_ERRORS: list[tuple[str, str]] = []


def register(module: str, names: Iterable[str], reset: Callable[[], None]) -> None:
    """Declare the global ``names`` of ``module`` per-process state and give the
    function that resets them in a forked child. Called once, at import."""
    _REGISTRY.append(Registration(module, tuple(names), reset))


def track(obj: Any) -> None:
    """Have ``obj._after_fork_in_child()`` run in every forked child while
    ``obj`` lives (held weakly)."""
    if not callable(getattr(obj, "_after_fork_in_child", None)):
        raise TypeError(f"{type(obj).__name__} has no _after_fork_in_child()")
    _TRACKED.add(obj)


def registry() -> tuple[Registration, ...]:
    """Every module-level registration, in import order."""
    return tuple(_REGISTRY)


def generation() -> int:
    """How many forks separate this process from the one that imported kmsenv."""
    return _generation


def _after_fork_in_child() -> None:
    global _generation
    _generation += 1
    _RESET_ERRORS.clear()
    for reg in _REGISTRY:
        _run(reg.module, reg.reset)
    for obj in list(_TRACKED):
        _run(type(obj).__qualname__, obj._after_fork_in_child)


def _run(owner: str, reset: Callable[[], None]) -> None:
    try:
        reset()
    except Exception as exc:  # one broken reset must not leave the others undone
        _RESET_ERRORS.append((owner, type(exc).__name__))
        logger.error("kmsenv: resetting %s in a forked child failed (%s)", owner, type(exc).__name__)


if hasattr(os, "register_at_fork"):  # absent on Windows, which cannot fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def new_lock() -> threading.Lock:
    """A fresh lock for a child (the parent's may have been held at fork time)."""
    return threading.Lock()
