"""``kmsenv demo``: the product in one minute, on an embedded two-region local KMS.

It starts LocalKms with two regions, creates a CMK in each, encrypts a sample
under both, decrypts through each region alone, takes one region down and
decrypts again, and says what happened at each step.

``kmsenv demo --instances`` does the same for KMS 3.0 instance gateways: one CMK in
a primary instance with a replica instance in another region, against two
region-specific CMKs; the primary down, decrypt from the replica; the counters of
each instance.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping, TextIO

# The command imports this module only to run the demo (kmsenv.cli._demo).
import kmsenv
from kmsenv.localkms import InstanceSpec, LocalKms

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


def run_demo(out: TextIO, instances: bool = False) -> int:
    """Run the demo (``instances``: the KMS 3.0 instance one); return the exit status."""
    # Show kmsenv's failover warnings under the step that caused them.
    handler = _StepLog()
    logger = logging.getLogger("kmsenv")
    logger.addHandler(handler)
    try:
        return _instance_steps(out, handler) if instances else _steps(out, handler)
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


# -- kmsenv demo --instances ---------------------------------------------------------------

PRIMARY = "kst-hzz-demo"  # the primary instance, in REGIONS[1]
REPLICA = "kst-sha-demo"  # its replica, in INSTANCE_REGIONS[1]
OTHER = "kst-sha-own"  # a primary of its own in that region: the two-CMK form's second CMK
INSTANCE_REGIONS = ("cn-hangzhou", "cn-shanghai")
_INSTANCE_STEPS = 6


def _instance_kms(local: Any, by_region: Mapping[str, str]) -> "kmsenv.Kms":
    """kmsenv's client with ``{region: instance ID}`` as its instance gateways (ClientKeys,
    the private CA) and a short retry budget, so that the failover step is quick."""
    from kmsenv.kms import InstanceEndpoint

    gateways = {}
    for region, instance_id in by_region.items():
        gw = local.instances[instance_id]
        gateways[region] = InstanceEndpoint(
            gw.endpoint,
            client_key_file=gw.client_key.key_file,
            password_file=gw.client_key.password_file,
            ca_file=gw.ca_file,
        )
    return kmsenv.Kms(
        access_key_id=local.access_key_id,
        access_key_secret=local.access_key_secret,
        endpoints=local.endpoints,
        instances=gateways,
        max_attempts=2,
        connect_timeout=1.0,
        read_timeout=2.0,
        backoff_base=0.01,
    )


def _instance_calls(local: Any) -> dict[str, dict[str, int]]:
    """``{instance ID: {API: count}}``, then zeroed: each step shows its own calls."""
    calls = {i: gw.stats() for i, gw in local.instances.items()}
    for gw in local.instances.values():
        gw.reset_stats()
    return calls


def _instance_steps(out: TextIO, log: _StepLog) -> int:
    def say(step: int, text: str) -> None:
        print(f"[{step}/{_INSTANCE_STEPS}] {text}", file=out, flush=True)
        log.print_held(out)

    home, away = INSTANCE_REGIONS
    instances: dict[str, str | InstanceSpec] = {
        PRIMARY: home,
        REPLICA: InstanceSpec(away, replica_of=PRIMARY),
        OTHER: away,
    }
    with LocalKms(regions=list(INSTANCE_REGIONS), instances=instances) as local:
        width = max(len(i) for i in local.instances)
        rows = []
        for instance_id, gw in local.instances.items():
            role = f"replica of {gw.replica_of}" if gw.replica_of else "primary"
            rows.append(f"{instance_id:<{width}}  {gw.region}  {role:<{width + 11}}  https://{gw.endpoint}")
        say(1, "local KMS up with instance gateways (HTTPS, private CA, ClientKeys):\n      " + "\n      ".join(rows))
        arn = local.create_key(home)
        other_arn = local.create_key(away)
        say(
            2,
            f"created CMK {arn}\n      in {PRIMARY}; {REPLICA} serves it under the same key ID in {away}"
            f"\n      (and, for comparison, CMK {other_arn} in {OTHER})",
        )

        context = {"purpose": "demo", "table": "orders"}
        replicated = _instance_kms(local, {home: PRIMARY, away: REPLICA})
        one = kmsenv.KmsKeyProvider(arn, kms=replicated, replica_regions=[away])
        _instance_calls(local)
        message = kmsenv.encrypt(SAMPLE, one, encryption_context=context).ciphertext
        calls = _instance_calls(local)
        header = kmsenv.parse_header(message)
        say(
            3,
            f"encrypted {len(SAMPLE):,} bytes under one CMK with replica region {away}:"
            f"\n      KMS calls per instance: {calls}"
            f"\n      (one data-key call: the gateway's GenerateDataKey and Encrypt of the key, as Alibaba's"
            f" transfer adapters do)\n      {len(header.encrypted_data_keys)} encrypted data key, "
            f"header {len(header.encoded)} bytes",
        )

        per_region = _instance_kms(local, {home: PRIMARY, away: OTHER})
        two = kmsenv.KmsKeyProvider(arn, other_arn, kms=per_region)
        two_header = kmsenv.parse_header(kmsenv.encrypt(SAMPLE, two, encryption_context=context).ciphertext)
        calls = _instance_calls(local)
        say(
            4,
            f"for comparison, one CMK per region ({home}, {away}):\n      KMS calls per instance: {calls}"
            f"\n      {len(two_header.encrypted_data_keys)} encrypted data keys, header {len(two_header.encoded)}"
            f" bytes ({len(two_header.encoded) - len(header.encoded)} more than the replica form)",
        )

        local.instances[PRIMARY].set_fault(down=True)
        started = time.perf_counter()
        plain = kmsenv.decrypt(message, one, expected_encryption_context=context).plaintext
        took = (time.perf_counter() - started) * 1000
        calls = _instance_calls(local)
        say(
            5,
            f"took {PRIMARY} down; decrypting with the CMK and its replica region failed over to "
            f"{REPLICA} in {took:.0f} ms: {'plaintext matches' if plain == SAMPLE else 'MISMATCH'}"
            f"\n      KMS calls per instance: {calls}",
        )
        if plain != SAMPLE:
            return 1
        local.instances[PRIMARY].set_fault()
        shared = {r: a for r, a in local.stats().items() if a}
        say(
            6,
            "every call above went to an instance gateway: the regions' shared gateways counted "
            + (f"{shared}" if shared else "none"),
        )
    print("demo finished: every step behaved as expected", file=out)
    return 0 if not shared else 1
