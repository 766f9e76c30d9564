"""``kmsenv demo``: the product in one minute, on an embedded two-region local KMS.

It starts LocalKms with two regions, creates a CMK in each, encrypts a sample
under both, decrypts through each region alone, takes one region down and
decrypts again, and says what happened at each step.
"""

from __future__ import annotations

import logging
import time
from typing import TextIO

# The command imports this module only to run the demo (kmsenv.cli._demo).
import kmsenv
from kmsenv.localkms import LocalKms

REGIONS = ("cn-beijing", "cn-hangzhou")
SAMPLE = b"Quarterly backup of the orders table\n" * 100


class _StepLog(logging.Handler):
    """kmsenv's log lines (the failover warnings), held until the step they
    belong to has printed its own line: a step prints after its work, so a line
    logged during step 6's decrypt printed at once would sit under step 5."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("      log: %(message)s"))
        self.held: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.held.append(self.format(record))

    def print_held(self, out: TextIO) -> None:
        held, self.held = self.held, []
        for line in held:
            print(line, file=out)
        out.flush()


def run_demo(out: TextIO) -> int:
    # Show kmsenv's failover warnings under the step that caused them.
    handler = _StepLog()
    logger = logging.getLogger("kmsenv")
    logger.addHandler(handler)
    try:
        return _steps(out, handler)
    finally:
        logger.removeHandler(handler)
        handler.print_held(out)


def _steps(out: TextIO, log: _StepLog) -> int:

    def say(step: int, text: str) -> None:
        print(f"[{step}/7] {text}", file=out, flush=True)
        log.print_held(out)

    with LocalKms(regions=list(REGIONS)) as local:
        say(1, "local KMS up: " + ", ".join(f"{r} at {u}" for r, u in local.endpoints.items()))
        arns = [local.create_key(region) for region in REGIONS]
        say(2, "created one CMK per region:\n      " + "\n      ".join(arns))

        # A short retry budget keeps the failover step quick.
        kms = kmsenv.Kms(
            access_key_id=local.access_key_id,
            access_key_secret=local.access_key_secret,
            endpoints=local.endpoints,
            max_attempts=2,
            connect_timeout=1.0,
            read_timeout=2.0,
            backoff_base=0.01,
        )
        both = kmsenv.KmsKeyProvider(*arns, kms=kms)
        context = {"purpose": "demo", "table": "orders"}
        started = time.perf_counter()
        message = kmsenv.encrypt(SAMPLE, both, encryption_context=context).ciphertext
        took = (time.perf_counter() - started) * 1000
        calls = {r: dict(a) for r, a in local.stats().items()}
        started = time.perf_counter()
        kmsenv.encrypt(SAMPLE, both, encryption_context=context)
        warm = (time.perf_counter() - started) * 1000
        say(
            3,
            f"encrypted {len(SAMPLE):,} bytes under both CMKs in {took:.0f} ms "
            f"({warm:.0f} ms once the regional clients are warm; the region calls run concurrently)"
            f"\n      KMS calls: {calls}\n      message is {len(message):,} bytes with "
            f"{len(kmsenv.parse_header(message).encrypted_data_keys)} encrypted data keys "
            f"using {kmsenv.backend_name()} crypto",
        )

        for step, (region, arn) in enumerate(zip(REGIONS, arns), start=4):
            alone = kmsenv.KmsKeyProvider(arn, kms=kms)
            plain = kmsenv.decrypt(message, alone, expected_encryption_context=context).plaintext
            verdict = "plaintext matches" if plain == SAMPLE else "MISMATCH"
            say(step, f"decrypted through {region} alone: {verdict}")
            if plain != SAMPLE:
                return 1

        local.set_fault(REGIONS[0], down=True)
        started = time.perf_counter()
        plain = kmsenv.decrypt(message, both).plaintext
        took = (time.perf_counter() - started) * 1000
        say(
            6,
            f"took {REGIONS[0]} down; decrypting with both CMKs failed over to {REGIONS[1]} "
            f"in {took:.0f} ms: {'plaintext matches' if plain == SAMPLE else 'MISMATCH'}",
        )
        tampered = bytearray(message)
        tampered[-1] ^= 1
        try:
            kmsenv.decrypt(bytes(tampered), both)
            say(7, "a tampered message was accepted: THIS IS A BUG")
            return 1
        except kmsenv.AuthenticationError as exc:
            say(7, f"flipped one bit of the message: refused ({type(exc).__name__}: {exc})")
    print("demo finished: every step behaved as expected", file=out)
    return 0 if plain == SAMPLE else 1
