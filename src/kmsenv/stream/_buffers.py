"""Reusable batch buffers for the framed format.

A framed stream works through a few MiB of batch buffers. Fresh ones cost
more than the encryption itself on small VMs: glibc hands freed multi-MiB
blocks back to the kernel, so every new stream page-faults its buffers in
again (measured: about 13 ms per stream for 16 MiB on the project's VM,
against about 9 ms to seal 64 MiB on two cores). Buffers are therefore kept
for the next stream, bounded in number and bytes.

Contract: a buffer comes back with no plaintext left in it; callers wipe what
they wrote before ``give``. Ciphertext may stay: it is public by design.
"""

from __future__ import annotations

import threading

from .. import _process

# Enough for one encrypting and one decrypting stream at the default batch size.
MAX_KEPT_BUFFERS = 4
MAX_KEPT_BYTES = 40 * 1024 * 1024

_lock = threading.Lock()
_free: list[bytearray] = []


def _after_fork_in_child() -> None:
    # A thread of the parent may have held the lock at fork time; the child
    # starts with a fresh lock and no kept buffers (copy-on-write pages it
    # would only have to fault in again).
    global _lock
    _lock = _process.new_lock()
    _free.clear()


_process.register(__name__, ("_lock", "_free"), _after_fork_in_child)


def take(size: int) -> bytearray:
    """A buffer of exactly ``size`` bytes, reused when one is free."""
    with _lock:
        for i, buf in enumerate(_free):
            if len(buf) == size:
                return _free.pop(i)
    return bytearray(size)


def _unexported(buf: bytearray) -> bool:
    """True when no view of ``buf`` is alive. A sink that kept a memoryview
    of a batch must never see a later stream's data appear in it, so such a
    buffer is not reused. (Resizing is refused while views exist; a one-byte
    shrink and regrow stays inside the allocation.)"""
    try:
        last = buf[-1]
        del buf[-1]
    except BufferError:
        return False
    buf.append(last)
    return True


def give_back(buf: bytearray) -> None:
    """Offer a buffer for reuse. It must hold no plaintext."""
    if not buf or not _unexported(buf):
        return
    with _lock:
        if any(b is buf for b in _free):
            return
        if len(_free) >= MAX_KEPT_BUFFERS or sum(map(len, _free)) + len(buf) > MAX_KEPT_BYTES:
            return
        _free.append(buf)


def release() -> int:
    """Drop every kept buffer (``kmsenv.stream.release_buffers``), for a
    long-lived process that is done with streaming; returns the bytes freed."""
    with _lock:
        held = sum(map(len, _free))
        _free.clear()
    return held


def held() -> int:
    """Bytes currently kept for reuse."""
    with _lock:
        return sum(map(len, _free))
