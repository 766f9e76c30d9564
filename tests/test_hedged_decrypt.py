"""Hedged decrypt: KmsKeyProvider asks the next candidate's region too when the one it
asked has not answered within the hedge delay, within a budget.

Against LocalKms over real HTTP, slowed with its per-region latency faults. Nothing
here measures time: the tests assert which regions were called, how often, which
answer was used and what the provider counted. A brownout is hundreds of ms against
a hedge delay of tens, so which region answers first is not a close race.
"""

from __future__ import annotations

import logging
import threading

import numpy
import pytest

import kmsenv
from kms_fixtures import *  # noqa: F401,F403
from kms_fixtures import BJ, HZ, SH, kms_calls, kms_options
from kmsenv import _hedge, _process
from kmsenv._hedge import HedgeStats, Hedging
from kmsenv.algorithms import Algorithm
from kmsenv.exceptions import ConfigurationError, KmsError, NoUsableKeyError
from kmsenv.kms import Kms
from kmsenv.providers import KmsKeyProvider

AES256 = Algorithm.AES_GCM_NOPADDING_256
CTX = {"tenant": "acme", "order": "42"}
BROWNOUT_MS = 600  # the slow region's added latency
HEDGE_AFTER = 0.05  # a fixed delay far below the brownout
GUARD = 30  # seconds: deadlock guards only


class TrackingKms(Kms):
    """A real Kms (real HTTP) that notes every Decrypt's answer, in the order
    they came, and can wait until none is in flight (abandoned calls included)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._cv = threading.Condition()
        self.in_flight = 0
        self.answers: list[tuple[str, str, object]] = []  # (region, thread name, key buffer or error code)

    def decrypt(self, key_arn, ciphertext_blob, encryption_context=None, *, max_attempts=None):
        region, thread = key_arn.split(":")[2], threading.current_thread().name
        with self._cv:
            self.in_flight += 1
        try:
            key = super().decrypt(key_arn, ciphertext_blob, encryption_context, max_attempts=max_attempts)
        except KmsError as e:
            self._note(region, thread, e.code)
            raise
        self._note(region, thread, key)
        return key

    def _note(self, region: str, thread: str, what: object) -> None:
        with self._cv:
            self.answers.append((region, thread, what))
            self.in_flight -= 1
            self._cv.notify_all()

    def settle(self) -> None:
        with self._cv:
            assert self._cv.wait_for(lambda: self.in_flight == 0, GUARD), "a Decrypt never came back"

    def regions_answered(self) -> list[str]:
        return [region for region, _, _ in self.answers]


@pytest.fixture
def tracking(local_kms, clean_faults):
    kms = TrackingKms(**kms_options(local_kms, max_attempts=2))
    yield kms
    kms.settle()  # no late answer may land in the next test's counts


@pytest.fixture
def message(kms, cmks):
    """A message under hz, bj and sh (the default provider wrote it)."""
    writer = KmsKeyProvider(cmks.hz, cmks.bj, cmks.sh, kms=kms)
    return kmsenv.encrypt(b"hedged", writer, encryption_context=CTX).ciphertext


def eventually(predicate) -> bool:
    """Whether ``predicate()`` holds within the guard time (for work a pool thread
    finishes after the call that started it returned)."""
    done = threading.Event()
    for _ in range(GUARD * 100):
        if predicate():
            return True
        done.wait(0.01)
    return predicate()


# ---------------------------------------------------------------- options


class TestOptions:
    def test_defaults_and_repr(self, kms, cmks):
        p = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms)
        assert p.hedge is False and p.hedge_after is None  # opt-in: a hedge is a billed KMS call
        assert "hedge" not in repr(p) and "hedge" not in repr(KmsKeyProvider(cmks.hz, kms=kms, hedge=False))
        assert repr(KmsKeyProvider(cmks.hz, kms=kms, hedge=True)).endswith(", hedge=True)")
        assert KmsKeyProvider(cmks.hz, kms=kms, hedge_after=0.1).hedge is True
        assert repr(KmsKeyProvider(cmks.hz, kms=kms, hedge_after=0.1)).endswith(", hedge_after=0.1)")
        d = KmsKeyProvider.discovery(kms=kms, hedge_after=0.2)
        assert d.hedge_after == 0.2 and repr(d).endswith(", hedge_after=0.2)")
        assert p.stats() == HedgeStats()

    @pytest.mark.parametrize(
        "options",
        [
            dict(hedge="yes"),
            dict(hedge=1),
            dict(hedge_after=0),
            dict(hedge_after=-1),
            dict(hedge_after=float("nan")),
            dict(hedge_after=float("inf")),
            dict(hedge_after=61),
            dict(hedge_after="0.1"),
            dict(hedge_after=True),
            dict(hedge=False, hedge_after=0.1),
        ],
    )
    def test_bad_options(self, kms, cmks, options):
        with pytest.raises(ConfigurationError) as info:
            KmsKeyProvider(cmks.hz, kms=kms, **options)
        assert "hedge" in str(info.value)


# ---------------------------------------------------------------- a brownout


def test_a_brownout_in_the_first_region_makes_the_second_answer(tracking, cmks, local_kms, message):
    p = KmsKeyProvider(cmks.hz, cmks.bj, kms=tracking, hedge_after=HEDGE_AFTER)
    local_kms.set_fault(HZ, latency_ms=BROWNOUT_MS)
    local_kms.reset_stats()
    assert kmsenv.decrypt(message, p).plaintext == b"hedged"
    s = p.stats()
    assert (s.decrypts, s.decrypt_calls, s.hedges_started, s.hedges_won, s.hedges_refused) == (1, 2, 1, 1, 0)
    tracking.settle()
    assert tracking.regions_answered() == [BJ, HZ]  # bj answered first; hz's late answer was abandoned
    assert kms_calls(local_kms) == {(HZ, "Decrypt"): 1, (BJ, "Decrypt"): 1}
    late_key = tracking.answers[1][2]
    assert isinstance(late_key, bytearray) and eventually(lambda: late_key == bytearray(32))  # wiped


def test_adaptive_delay_hedges_a_brownout_after_healthy_history(tracking, cmks, local_kms, message):
    """Warm: the adaptive delay learns hz's healthy latency (and stays within its
    floor and cap); then hz browns out and the hedge goes to bj."""
    p = KmsKeyProvider(cmks.hz, cmks.bj, kms=tracking, hedge=True)
    assert p.stats().hedge_delays == {}
    for _ in range(_hedge.MIN_SAMPLES):
        kmsenv.decrypt(message, p)
    delay = p.stats().hedge_delays[HZ]
    assert _hedge.FLOOR <= delay <= _hedge.CAP and delay < BROWNOUT_MS / 1000
    local_kms.set_fault(HZ, latency_ms=BROWNOUT_MS)
    before = len(tracking.answers)
    assert kmsenv.decrypt(message, p).plaintext == b"hedged"
    assert p.stats().hedges_won == 1
    tracking.settle()
    assert tracking.regions_answered()[before:] == [BJ, HZ]


def test_healthy_regions_make_no_hedge(tracking, cmks, local_kms, message):
    """Answers within the delay: the hedging path runs (each call on a decrypt
    thread) but sends nothing more. (A delay of 1 s: no stall of a loaded test
    host reaches it; the adaptive delay's healthy rate is checked below.)"""
    p = KmsKeyProvider(cmks.hz, cmks.bj, kms=tracking, hedge_after=1.0)
    local_kms.reset_stats()
    n = 20
    for _ in range(n):
        assert kmsenv.decrypt(message, p).plaintext == b"hedged"
    s = p.stats()
    assert (s.decrypts, s.decrypt_calls, s.hedges_started, s.hedges_refused) == (n, n, 0, 0)
    assert kms_calls(local_kms) == {(HZ, "Decrypt"): n}
    assert {(r, t.startswith("kmsenv-kms-decrypt")) for r, t, _ in tracking.answers} == {(HZ, True)}


def test_the_adaptive_delay_learns_a_healthy_region(tracking, cmks, local_kms, message):
    """Past MIN_SAMPLES answers the delay is the learnt one, within floor and cap;
    whatever a loaded host did meanwhile, every extra call is a counted hedge."""
    p = KmsKeyProvider(cmks.hz, cmks.bj, kms=tracking, hedge=True)
    local_kms.reset_stats()
    n = 3 * _hedge.MIN_SAMPLES
    for _ in range(n):
        assert kmsenv.decrypt(message, p).plaintext == b"hedged"
    tracking.settle()
    s = p.stats()
    assert _hedge.FLOOR <= s.hedge_delays[HZ] <= _hedge.CAP and s.hedge_delays[HZ] != _hedge.INITIAL
    assert s.decrypts == n and s.decrypt_calls == n + s.hedges_started
    calls = kms_calls(local_kms)
    assert calls[(HZ, "Decrypt")] == n and calls.get((BJ, "Decrypt"), 0) == s.hedges_started


def test_the_budget_stops_hedging_once_spent(tracking, cmks, local_kms, message):
    p = KmsKeyProvider(cmks.hz, cmks.bj, kms=tracking, hedge_after=0.02)
    local_kms.set_fault(HZ, latency_ms=300)
    local_kms.reset_stats()
    n = int(_hedge.BUDGET_BURST) + 5
    for _ in range(n):
        assert kmsenv.decrypt(message, p).plaintext == b"hedged"
    s = p.stats()
    # Every decrypt wanted a hedge: the budget allowed the burst plus a tenth of
    # the decrypts, and refused the rest (those waited for hz).
    assert _hedge.BUDGET_BURST <= s.hedges_started <= _hedge.BUDGET_BURST + _hedge.BUDGET_RATIO * n
    assert s.hedges_refused == n - s.hedges_started >= 1
    assert s.hedges_won == s.hedges_started
    tracking.settle()
    assert kms_calls(local_kms) == {(HZ, "Decrypt"): n, (BJ, "Decrypt"): s.hedges_started}


def test_hedge_disabled_is_the_old_behaviour(tracking, cmks, local_kms, message):
    p = KmsKeyProvider(cmks.hz, cmks.bj, kms=tracking, hedge=False)
    local_kms.set_fault(HZ, latency_ms=300)
    local_kms.reset_stats()
    assert kmsenv.decrypt(message, p).plaintext == b"hedged"
    assert kms_calls(local_kms) == {(HZ, "Decrypt"): 1}
    # In the caller's own thread, as before hedging existed.
    assert [(r, t) for r, t, _ in tracking.answers] == [(HZ, threading.current_thread().name)]
    s = p.stats()
    assert (s.decrypts, s.decrypt_calls, s.hedges_started, s.hedges_refused) == (1, 1, 0, 0)


def test_at_most_two_calls_in_flight(tracking, cmks, local_kms, message):
    """hz and bj both slow: one hedge (to bj), never a third call to sh."""
    p = KmsKeyProvider(cmks.hz, cmks.bj, cmks.sh, kms=tracking, hedge_after=0.02)
    local_kms.set_fault(HZ, latency_ms=300)
    local_kms.set_fault(BJ, latency_ms=300)
    local_kms.reset_stats()
    assert kmsenv.decrypt(message, p).plaintext == b"hedged"
    tracking.settle()
    assert kms_calls(local_kms) == {(HZ, "Decrypt"): 1, (BJ, "Decrypt"): 1}
    assert p.stats().hedges_started == 1


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "fault", [dict(down=True), dict(error_rate=1.0), dict(throttle_rate=1.0)], ids=["down", "5xx", "throttled"]
)
def test_a_region_answering_an_error_fails_over_as_today(tracking, cmks, local_kms, message, fault, caplog):
    # A hedge delay no error path can outlast: with the adaptive start (0.25 s),
    # two 5xx attempts and their back-off on a loaded CI machine once took
    # longer, and a hedge legitimately started; this test is about failover.
    hedged = KmsKeyProvider(cmks.hz, cmks.bj, kms=tracking, hedge=True, hedge_after=30.0)
    plain = KmsKeyProvider(cmks.hz, cmks.bj, kms=tracking, hedge=False)
    local_kms.set_fault(HZ, **fault)
    counts = []
    for p in (plain, hedged):
        local_kms.reset_stats()
        with caplog.at_level(logging.WARNING, logger="kmsenv"):
            assert kmsenv.decrypt(message, p).plaintext == b"hedged"
        counts.append(kms_calls(local_kms))
    assert counts[0] == counts[1] and counts[1][(BJ, "Decrypt")] == 1  # the same calls either way
    s = hedged.stats()
    assert (s.decrypt_calls, s.hedges_started) == (2, 0)  # failover, not a hedge
    warnings = [r.getMessage() for r in caplog.records if r.name == "kmsenv" and r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(cmks.hz in w and "next CMK" in w for w in warnings)


def test_a_permanent_error_is_not_masked(tracking, cmks, local_kms, message):
    """A context every region refuses: the hedged provider reports the same errors,
    in the same order, as the plain one (the hedge neither hides nor reorders them)."""
    wrong = {"tenant": "other"}
    header = kmsenv.parse_header(message)
    local_kms.set_fault(HZ, latency_ms=300)
    found = []
    for hedge in (False, True):
        p = KmsKeyProvider(cmks.hz, cmks.bj, kms=tracking, hedge=hedge, hedge_after=0.02 if hedge else None)
        with pytest.raises(NoUsableKeyError) as info:
            p.decrypt_data_key(header.encrypted_data_keys, AES256, wrong)
        found.append([(arn, e.code, e.retryable) for arn, e in info.value.errors])
        if hedge:
            assert p.stats().hedges_started == 1
    assert found[0] == found[1] == [(cmks.hz, "InvalidParameter", False), (cmks.bj, "InvalidParameter", False)]


def test_a_late_error_from_an_abandoned_region_is_logged(tracking, local_kms, cmks, caplog):
    """The hedge won; the slow region then refuses (its key disabled): that still
    reaches the log, as it would have without hedging."""
    slow = local_kms.create_key(HZ)
    writer = KmsKeyProvider(slow, cmks.bj, kms=tracking)
    message = kmsenv.encrypt(b"late", writer, encryption_context=CTX).ciphertext
    local_kms.disable_key(slow)
    local_kms.set_fault(HZ, latency_ms=300)
    p = KmsKeyProvider(slow, cmks.bj, kms=tracking, hedge_after=HEDGE_AFTER)
    with caplog.at_level(logging.WARNING, logger="kmsenv"):
        assert kmsenv.decrypt(message, p).plaintext == b"late"
        tracking.settle()
        assert eventually(lambda: any("Rejected.Disabled" in r.getMessage() for r in caplog.records))
    text = next(r.getMessage() for r in caplog.records if "Rejected.Disabled" in r.getMessage())
    assert slow in text and "after another CMK had answered" in text


def test_a_fast_refusal_from_the_hedge_does_not_end_the_wait(tracking, local_kms, cmks):
    """hz is slow but fine; the hedge to bj is refused at once (bj's key disabled):
    the provider keeps waiting for hz and uses its answer."""
    refusing = local_kms.create_key(BJ)
    writer = KmsKeyProvider(cmks.hz, refusing, kms=tracking)
    dk = writer.generate_data_key(AES256, CTX)
    local_kms.disable_key(refusing)
    local_kms.set_fault(HZ, latency_ms=300)
    p = KmsKeyProvider(cmks.hz, refusing, kms=tracking, hedge_after=HEDGE_AFTER)
    assert p.decrypt_data_key(dk.encrypted_data_keys, AES256, CTX) == dk.plaintext
    s = p.stats()
    assert (s.hedges_started, s.hedges_won) == (1, 0)
    assert [(r, w if isinstance(w, str) else "key") for r, _, w in tracking.answers[-2:]] == [
        (BJ, "Rejected.Disabled"),
        (HZ, "key"),
    ]


def test_every_region_refusing_the_signature_is_listed(local_kms, cmks, clean_faults, message):
    p = KmsKeyProvider(
        cmks.hz, cmks.bj, kms=TrackingKms(**kms_options(local_kms, access_key_secret="nope")), hedge=True
    )
    with pytest.raises(NoUsableKeyError) as info:
        kmsenv.decrypt(message, p)
    assert [e.code for _, e in info.value.errors] == ["SignatureDoesNotMatch"] * 2


# ---------------------------------------------------------------- threads


def test_no_free_worker_means_no_hedge(tracking, cmks, local_kms, message, monkeypatch):
    """With every decrypt worker busy (here: none allowed), the call runs in the
    caller's thread, unhedged: hedging never makes a decrypt wait for a thread."""
    from kmsenv import providers

    monkeypatch.setattr(providers, "_decrypt_workers", providers._DaemonWorkers(0))
    p = KmsKeyProvider(cmks.hz, cmks.bj, kms=tracking, hedge_after=0.02)
    local_kms.set_fault(HZ, latency_ms=200)
    local_kms.reset_stats()
    assert kmsenv.decrypt(message, p).plaintext == b"hedged"
    assert [(r, t) for r, t, _ in tracking.answers] == [(HZ, threading.current_thread().name)]
    assert kms_calls(local_kms) == {(HZ, "Decrypt"): 1}
    s = p.stats()
    assert (s.decrypt_calls, s.hedges_started) == (1, 0)


def test_a_hedge_without_a_free_worker_is_refused_and_refunded(tracking, cmks, local_kms, message, monkeypatch):
    """One worker: the first call gets it, the hedge finds none and is refused
    (its budget token given back); the decrypt waits for the first region."""
    from kmsenv import providers

    workers = providers._DaemonWorkers(1)
    monkeypatch.setattr(providers, "_decrypt_workers", workers)
    p = KmsKeyProvider(cmks.hz, cmks.bj, kms=tracking, hedge_after=0.02)
    local_kms.set_fault(HZ, latency_ms=200)
    local_kms.reset_stats()
    assert kmsenv.decrypt(message, p).plaintext == b"hedged"
    s = p.stats()
    assert (s.decrypt_calls, s.hedges_started, s.hedges_refused) == (1, 0, 1)
    assert kms_calls(local_kms) == {(HZ, "Decrypt"): 1}
    assert p._hedging.spend() and p._hedging.stats().hedges_started == 1  # the token came back: a full burst left
    assert eventually(lambda: workers.idle() == (1, 1))


def test_many_threads_share_a_hedging_provider(tracking, cmks, local_kms, monkeypatch):
    from kmsenv import providers

    workers = providers._DaemonWorkers(64)  # a fresh set, to count what this test used
    monkeypatch.setattr(providers, "_decrypt_workers", workers)
    p = KmsKeyProvider(cmks.hz, cmks.bj, kms=tracking, hedge=True)
    made = [(p.generate_data_key(AES256, CTX)) for _ in range(4)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for k in range(6):
                dk = made[(i + k) % 4]
                assert p.decrypt_data_key(dk.encrypted_data_keys, AES256, CTX) == dk.plaintext
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert p.stats().decrypts == 72
    tracking.settle()
    # Every worker is free again, and no more were started than could be busy at once.
    assert eventually(lambda: workers.idle()[0] == workers.idle()[1])
    assert 1 <= workers.idle()[1] <= 12 * 2


# ---------------------------------------------------------------- the policy itself


def nearest_rank(samples, q) -> float:
    return float(numpy.percentile(numpy.array(samples), q * 100, method="inverted_cdf"))


def test_the_adaptive_delay_is_the_p99_of_recent_latencies_within_floor_and_cap():
    h = Hedging(True, None)
    rng = numpy.random.default_rng(7)
    assert h.delay(HZ) == _hedge.INITIAL
    early = list(rng.uniform(0.03, 0.08, _hedge.MIN_SAMPLES - 1))
    for x in early:
        h.record(HZ, float(x))
    assert h.delay(HZ) == _hedge.INITIAL  # too few to go by
    samples = early + list(rng.uniform(0.03, 0.08, 300))
    for x in samples[len(early) :]:
        h.record(HZ, float(x))
    recent = samples[-_hedge.WINDOW :]
    assert h.delay(HZ) == pytest.approx(_hedge.HEADROOM * nearest_rank(recent, _hedge.PERCENTILE))
    assert h.delay(HZ) == pytest.approx(_hedge.HEADROOM * sorted(recent)[-2])  # 128 samples: the second largest
    assert h.delay(BJ) == _hedge.INITIAL  # per region
    for x in [0.001] * _hedge.WINDOW:
        h.record(HZ, x)
    assert h.delay(HZ) == _hedge.FLOOR
    for x in [5.0] * _hedge.WINDOW:
        h.record(HZ, x)
    assert h.delay(HZ) == _hedge.CAP
    assert Hedging(True, 0.123).delay(HZ) == 0.123  # a fixed delay ignores history


def test_healthy_hedge_rate_is_under_two_percent():
    """Replaying a stationary latency distribution (log-normal: a long tail):
    the share of calls slower than the delay in force is what hedging costs."""
    h = Hedging(True, None)
    rng = numpy.random.default_rng(11)
    latencies = rng.lognormal(numpy.log(0.05), 0.3, 20_000)
    slower = 0
    for x in latencies:
        if h.delay(HZ) < x:
            slower += 1
        h.record(HZ, float(x))
    assert slower / len(latencies) <= 0.02


def test_the_budget_is_a_burst_plus_a_tenth_of_the_decrypts():
    h = Hedging(True, None)
    burst = int(_hedge.BUDGET_BURST)
    assert [h.spend() for _ in range(burst + 1)] == [True] * burst + [False]
    per_token = round(1 / _hedge.BUDGET_RATIO)
    for _ in range(per_token - 1):
        h.decrypt_started()
    assert h.spend() is False
    h.decrypt_started()
    assert h.spend() is True
    for _ in range(10 * per_token * burst):  # a long quiet spell refills no more than the burst
        h.decrypt_started()
    assert sum(h.spend() for _ in range(2 * burst)) == burst
    s = h.stats()
    assert s.hedges_started == 2 * burst + 1 and s.hedges_refused == 2 + burst


def test_hedging_state_is_tracked_for_fork(kms, cmks):
    p = KmsKeyProvider(cmks.hz, cmks.bj, kms=kms, hedge=True)
    assert p._hedging in _process._TRACKED
    old = p._hedging._lock
    old.acquire()  # as if a parent thread held it at fork time
    try:
        p._hedging._after_fork_in_child()
        assert p._hedging._lock is not old and p._hedging.delay(SH) == _hedge.INITIAL
    finally:
        old.release()


def test_decrypt_workers_are_reused_and_start_afresh_after_fork():
    from kmsenv import providers

    workers = providers._DaemonWorkers(2)
    first = workers.submit(threading.get_ident)
    assert first is not None and eventually(lambda: workers.idle() == (1, 1))
    second = workers.submit(threading.get_ident)
    assert second.result(GUARD) == first.result(GUARD)  # the same thread took the next call
    assert eventually(lambda: workers.idle() == (1, 1))
    workers._after_fork_in_child()  # a forked child has none of the parent's threads
    assert workers.idle() == (0, 0)
    third = workers.submit(threading.get_ident)
    assert third.result(GUARD) != first.result(GUARD)
    assert ("kmsenv.providers", "_decrypt_workers") in {(r.module, n) for r in _process.registry() for n in r.names}
