"""Hedged Decrypt: when a provider asks a second region, and how often it may.

A region that is slow but not down (a brownout) holds every decrypt for its
whole latency. :class:`Hedging` decides, per :class:`~kmsenv.KmsKeyProvider`,
how long to wait for one region before sending the same Decrypt to the next
candidate's region as well, and whether the provider may afford that extra
call now. The provider does the calls; this module only keeps the numbers.

Hedge delay, per region (unless the user fixed one with ``hedge_after=``):
1.1 x the 99th percentile (nearest rank) of the region's last :data:`WINDOW`
successful first-attempt Decrypt latencies, clamped to [:data:`FLOOR`,
:data:`CAP`]; :data:`INITIAL` until :data:`MIN_SAMPLES` latencies are known.

* p99, not p95: a healthy region exceeds the p95 of its own latencies on 5 %
  of calls, so hedging there costs 5 % extra calls; the goal is at most 2 %.
  With 128 samples the nearest-rank p99 is the second largest, and a new call
  from the same distribution exceeds it with probability 2/129 = 1.6 %,
  whatever the distribution (with n < 100 samples it is the largest:
  1/(n+1)). Taking the second largest, not the largest, means one outlier (a
  cold connection, a GC pause) does not hold the delay up for 128 calls.
* x 1.1 (:data:`HEADROOM`): that bound is an average, and a loaded host shifts
  every latency by a few percent at times; 10 % above the p99 a call is in the
  tail, not in the jitter around it. The healthy hedge rate drops well under
  the 1.6 % bound (near zero for a tight distribution), at the price of 10 %
  of one round trip in a brownout.
* Floor 20 ms: below that the waits are Python's own scheduling (the GIL's
  5 ms switch interval, thread wake-ups, GC) rather than a slow region, and a
  second region seldom answers sooner than that anyway (another region is a
  few ms to tens of ms away, plus its own service time).
* Cap 0.5 s: however the estimate drifted (a region slow for a while feeds
  its slow answers back into its window), a decrypt never waits on one region
  more than 0.5 s before the next is asked, budget permitting. That is well
  above a healthy KMS round trip, even to another continent, so the cap only
  bites when a region is clearly unwell.
* Initial 0.25 s: a fresh provider knows nothing of the region; a first call
  also opens the connection (TCP, TLS) and may fetch credentials, which takes
  a few round trips. 0.25 s still halves a +500 ms brownout for a one-shot
  decrypt (a CLI run) without hedging every cold start.
* Only answers that were used are recorded: a call abandoned because another
  region answered first is censored (its latency is unknown at decision time
  and, in a brownout, would teach the delay to wait for the brownout).

Budget: a token bucket. Every decrypt the provider sends to KMS deposits
:data:`BUDGET_RATIO` (0.1) of a token, every hedge spends one, and the bucket
holds at most :data:`BUDGET_BURST` (10) tokens and starts full: over any
stretch of time the hedges are at most 10 % of the decrypts plus 10, and the
first 10 decrypts of a brownout can hedge at once. When a region stays slow
longer than that, only about one decrypt in ten is hedged: the budget exists
so that a region under load is not sent twice the traffic by every client.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Mapping

from kmsenv import _process

__all__ = [
    "HedgeStats",
    "Hedging",
    "FLOOR",
    "CAP",
    "INITIAL",
    "WINDOW",
    "MIN_SAMPLES",
    "PERCENTILE",
    "HEADROOM",
    "BUDGET_RATIO",
    "BUDGET_BURST",
]

FLOOR = 0.020  # seconds
CAP = 0.5
INITIAL = 0.25
WINDOW = 128  # latencies kept per region
MIN_SAMPLES = 16
PERCENTILE = 0.99
HEADROOM = 1.1
BUDGET_RATIO = 0.10
BUDGET_BURST = 10.0


@dataclass(frozen=True)
class HedgeStats:
    """A :class:`~kmsenv.KmsKeyProvider`'s decrypt figures since it was made.

    ``decrypts``: data keys asked of KMS (calls of ``decrypt_data_key`` that
    sent at least one Decrypt). ``decrypt_calls``: Decrypt calls the provider
    made (hedges and failovers included; the client's own retries of one call
    are not counted again). ``hedges_started``: second calls sent because the
    first region had not answered within its hedge delay; ``hedges_won``: of
    those, the ones whose answer was used; ``hedges_refused``: hedges the
    budget did not allow (or that found no free decrypt worker).
    ``hedge_delays``: the delay each region gets now, in seconds.
    """

    decrypts: int = 0
    decrypt_calls: int = 0
    hedges_started: int = 0
    hedges_won: int = 0
    hedges_refused: int = 0
    hedge_delays: Mapping[str, float] = field(default_factory=dict)

    @property
    def hedge_ratio(self) -> float:
        """Hedges started per decrypt (the extra calls hedging cost)."""
        return self.hedges_started / self.decrypts if self.decrypts else 0.0


def percentile(samples: "deque[float] | list[float]", q: float) -> float:
    """Nearest-rank percentile ``q`` (0 < q <= 1) of a non-empty sample."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Hedging:
    """One provider's hedging policy and state: latencies per region, the
    budget and the counters. Thread-safe; forked children get a fresh lock."""

    def __init__(self, enabled: bool, after: float | None) -> None:
        self.enabled = enabled
        self.after = after  # a fixed delay in seconds, or None for the adaptive one
        self._lock = threading.Lock()
        self._latencies: dict[str, deque[float]] = {}
        self._tokens = BUDGET_BURST
        self._decrypts = self._calls = self._started = self._won = self._refused = 0
        _process.track(self)

    def _after_fork_in_child(self) -> None:
        # A parent thread may have held the lock at fork time; the figures
        # (latencies, budget) hold for the child's network as well.
        self._lock = _process.new_lock()

    # -- the delay ------------------------------------------------------------

    def delay(self, region: str) -> float:
        """Seconds to wait for ``region`` before asking the next one."""
        if self.after is not None:
            return self.after
        with self._lock:
            window = self._latencies.get(region)
            samples = list(window) if window is not None and len(window) >= MIN_SAMPLES else None
        if samples is None:
            return INITIAL
        return min(CAP, max(FLOOR, HEADROOM * percentile(samples, PERCENTILE)))

    def record(self, region: str, seconds: float) -> None:
        """A successful first-attempt Decrypt in ``region`` whose answer was used."""
        with self._lock:
            window = self._latencies.get(region)
            if window is None:
                window = self._latencies[region] = deque(maxlen=WINDOW)
            window.append(seconds)

    # -- the budget and the counters ------------------------------------------

    def decrypt_started(self) -> None:
        """A decrypt that will call KMS: counted, and it earns a tenth of a hedge."""
        with self._lock:
            self._decrypts += 1
            self._tokens = min(BUDGET_BURST, self._tokens + BUDGET_RATIO)

    def call_sent(self) -> None:
        with self._lock:
            self._calls += 1

    def spend(self) -> bool:
        """Take one hedge from the budget (counted as started), or count a refusal."""
        with self._lock:
            if self._tokens >= 1.0 - 1e-9:  # ten deposits of 0.1 make a whole token
                self._tokens = max(0.0, self._tokens - 1.0)
                self._started += 1
                return True
            self._refused += 1
            return False

    def refund(self) -> None:
        """A hedge the budget allowed could not be sent after all (no worker free):
        the token goes back, and it counts as refused."""
        with self._lock:
            self._tokens = min(BUDGET_BURST, self._tokens + 1.0)
            self._started -= 1
            self._refused += 1

    def hedge_won(self) -> None:
        with self._lock:
            self._won += 1

    def stats(self) -> HedgeStats:
        with self._lock:
            regions = sorted(self._latencies)
            figures = (self._decrypts, self._calls, self._started, self._won, self._refused)
        return HedgeStats(*figures, hedge_delays={r: self.delay(r) for r in regions})
