"""Where the stream formats draw their randomness (message ids, IVs).

One function so tests can substitute it to make both backends' outputs
comparable byte for byte; nothing else should replace it."""

from __future__ import annotations

from ..crypto import get_backend


def random_bytes(n: int) -> bytes:
    return get_backend().random(n)
