"""Per-region fault settings (down, latency, throttling, 5xx) for tests and benchmarks."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

from .errors import SERVER_ERRORS, KmsError, server_error, throttled


@dataclass(frozen=True)
class Faults:
    """One region's fault settings.  Frozen: the server swaps the whole object, so a
    request always sees a consistent combination."""

    down: bool = False
    latency_ms: float = 0.0
    throttle_rate: float = 0.0
    error_rate: float = 0.0
    error_code: str = "ServiceUnavailableTemporary"

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        for name in ("throttle_rate", "error_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.error_code not in SERVER_ERRORS:
            raise ValueError(f"error_code must be one of {sorted(SERVER_ERRORS)}")

    def injected_error(self, rng: Optional[random.Random] = None) -> Optional[KmsError]:
        """The error to answer instead of running the action, if one is drawn."""
        draw = (rng or random).random
        if self.throttle_rate and draw() < self.throttle_rate:
            return throttled()
        if self.error_rate and draw() < self.error_rate:
            return server_error(self.error_code)
        return None
