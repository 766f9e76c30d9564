"""Property tests (hypothesis) for every parser of untrusted bytes, sharing
the fuzz harnesses' targets and oracles (fuzz/common.py, fuzz/fuzz_*.py):

* arbitrary bytes and mutated real messages: a correct result or a typed
  ``KmsEnvError``, nothing else (decode_message, parse_header, decrypt on both
  backends, decrypt_many against one-by-one decrypt, the native batch open
  against the pure one);
* hostile lengths: a short input claiming a field of up to 4 GiB fails at once,
  with a Python-heap peak (tracemalloc) bounded by its size, not by the claim;
* round trips and tamper detection for every authenticated algorithm;
* the format limits (EDK count, ARN and EDK sizes, DER length octets);
* the fuzz regression inputs (fuzz/regressions/<target>/*).
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kmsenv
from kmsenv import Algorithm
from kmsenv.message import codec, der
from kmsenv.model import EncryptedDataKey

FUZZ = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fuzz")
sys.path.insert(0, FUZZ)
import common  # noqa: E402
import fuzz_decode_message  # noqa: E402
import fuzz_decrypt  # noqa: E402
import fuzz_decrypt_many  # noqa: E402
import fuzz_decrypt_stream  # noqa: E402
import fuzz_native_open_messages  # noqa: E402
import fuzz_open_columns  # noqa: E402
import fuzz_parse_header  # noqa: E402
import make_corpus  # noqa: E402

TARGETS = {
    "decode_message": fuzz_decode_message.target,
    "parse_header": fuzz_parse_header.target,
    "decrypt": fuzz_decrypt.target,
    "decrypt_many": fuzz_decrypt_many.target,
    "native_open_messages": fuzz_native_open_messages.target,
    "decrypt_stream": fuzz_decrypt_stream.target,
    "open_columns": fuzz_open_columns.target,
}
NEEDS_NATIVE = {"decrypt", "decrypt_many", "native_open_messages", "decrypt_stream", "open_columns"}
NATIVE = kmsenv.native_available()
needs_native = pytest.mark.skipif(not NATIVE, reason="the native core is not built (the backends cannot be compared)")
FAST = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

MESSAGES = make_corpus.all_messages()
PROVIDER = common.FixedKeyProvider()


def test_every_fuzz_target_is_covered_here():
    assert set(TARGETS) == set(common.TARGETS)


# ---------------------------------------------------------------- mutations


@st.composite
def mutated(draw, base=st.sampled_from(MESSAGES)):
    """A real message with 1-4 random edits (bit flips, byte sets, cuts, inserts, deletions)."""
    msg = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        if not msg:
            break
        i = draw(st.integers(0, len(msg) - 1))
        if kind == "flip":
            msg[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            msg[i] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0x81, 0x84, 0x85, 0xFF]))
        elif kind == "truncate":
            del msg[i:]
        elif kind == "insert":
            msg[i:i] = draw(st.binary(min_size=1, max_size=6))
        else:
            del msg[i : i + draw(st.integers(1, 16))]
    return bytes(msg)


@FAST
@given(data=st.binary(max_size=400))
def test_decoders_on_arbitrary_bytes(data):
    fuzz_decode_message.target(data)
    fuzz_parse_header.target(data)


@FAST
@given(flag=st.integers(0, 255), msg=mutated())
def test_decoders_on_mutated_messages(flag, msg):
    fuzz_decode_message.target(bytes((flag,)) + msg)
    fuzz_parse_header.target(bytes((flag,)) + msg)


@needs_native
@FAST
@given(flag=st.integers(0, 15), msg=st.one_of(mutated(), st.sampled_from(MESSAGES)))
def test_decrypt_on_mutated_messages_both_backends_agree(flag, msg):
    fuzz_decrypt.target(bytes((flag,)) + msg)


@needs_native
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    flag=st.integers(0, 3),
    picks=st.lists(
        st.one_of(st.sampled_from([m for b in make_corpus._batches() for m in b]), mutated(), st.binary(max_size=40)),
        max_size=6,
    ),
)
def test_decrypt_many_equals_one_by_one(flag, picks):
    picks = [p for p in picks if len(p) <= 0xFFFF]
    fuzz_decrypt_many.target(bytes((flag,)) + common.join_items(picks))


@needs_native
@FAST
@given(flag=st.integers(0, 15), data=st.binary(max_size=300))
def test_native_batch_open_on_arbitrary_bytes(flag, data):
    fuzz_native_open_messages.target(bytes((flag,)) + data)


@needs_native
@FAST
@given(seed=st.sampled_from(make_corpus.seeds_native_open_messages()), data=st.data())
def test_native_batch_open_on_mutated_batches(seed, data):
    items = common.split_items(seed[1:])
    items = [data.draw(st.one_of(st.just(m), mutated(st.just(m)))) for m in items]
    fuzz_native_open_messages.target(seed[:1] + common.join_items(items))


# ---------------------------------------------------------------- hostile lengths


def tlv_positions(msg: bytes) -> list[int]:
    """Offsets of every TLV in a message (tag byte), walking the structure."""
    out = []

    def walk(r: der.Reader) -> None:
        while not r.at_end():
            out.append(r.pos)
            tag = r.buf[r.pos]
            length = r.header(tag, "x")
            if tag in (der.SEQUENCE, der.SET):
                walk(der.Reader(r.buf, r.pos, r.pos + length))
            r.pos += length

    walk(der.Reader(memoryview(msg)))
    return out


def with_length(msg: bytes, pos: int, length_octets: bytes) -> bytes:
    """Replace the length of the TLV at ``pos`` by ``length_octets`` (content kept)."""
    r = der.Reader(memoryview(msg), pos)
    r.pos = pos
    r.header(msg[pos], "x")
    return msg[: pos + 1] + length_octets + msg[r.pos :]


BOMBS = [
    b"\x84\xff\xff\xff\xff",
    b"\x84\x7f\xff\xff\xff",
    b"\x84\x00\x00\x01\x00",
    b"\x85\x01\x00\x00\x00\x00",
    b"\x88\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\x80",
    b"\x81\x05",
]
BOMB_MESSAGE = kmsenv.encrypt(b"bomb", PROVIDER, encryption_context=common.FIXED_CONTEXT).ciphertext


def check_bounded(fn, size: int, budget=common.allocation_budget) -> None:
    peak = common.measure_peak(fn)
    assert peak <= budget(size), peak


@pytest.mark.parametrize("bomb", BOMBS, ids=lambda b: b.hex())
@pytest.mark.parametrize("pos", tlv_positions(BOMB_MESSAGE))
def test_hostile_lengths_fail_at_once_with_bounded_memory(pos, bomb):
    msg = with_length(BOMB_MESSAGE, pos, bomb)
    with pytest.raises(kmsenv.MessageFormatError):
        codec.decode_message(msg)
    for name, target in TARGETS.items():
        if name == "decrypt_many":
            data = b"\x00" + common.join_items([msg, BOMB_MESSAGE])
        elif name in ("native_open_messages", "open_columns"):
            if not NATIVE:
                continue
            data = bytes((8 if name == "open_columns" else 0,)) + common.join_items([msg])
        else:
            data = b"\x00" + msg
        if name in NEEDS_NATIVE and not NATIVE:
            continue
        with capped_address_space():
            target(data)
            check_bounded(
                lambda: target(data), len(data), getattr(target, "allocation_budget", common.allocation_budget)
            )


def test_a_hundred_bytes_claiming_four_gib():
    big = b"\x84\xff\xff\xff\xff"
    cases = [
        b"\x30" + big + bytes(94),  # the message claims 4 GiB
        b"\x30\x62" + b"\x30" + big + bytes(92),  # its header does
        b"\x30\x62\x30\x60\x02\x01\x01\x02\x01\x02\x31" + big + bytes(84),  # the EDK set does
    ]
    for data in cases:
        assert len(data) == 100
        with pytest.raises(kmsenv.MessageFormatError, match="claims 4294967295 bytes"):
            codec.decode_message(data)
        check_bounded(lambda: kmsenv.parse_header(data), 100, lambda n: 64 << 10)
        check_bounded(lambda: kmsenv.decrypt(data, PROVIDER), 100)
        check_bounded(lambda: kmsenv.decrypt_many([data, data], PROVIDER), 200)


# ---------------------------------------------------------------- round trips


contexts = st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=12), max_size=4)


@FAST
@given(
    alg=st.sampled_from([a for a in Algorithm if a.authenticated]),
    ctx=contexts,
    pt=st.binary(max_size=200),
    where=st.integers(min_value=0),
    bit=st.integers(0, 7),
)
def test_round_trip_and_every_bit_flip_is_rejected(alg, ctx, pt, where, bit):
    msg = kmsenv.encrypt(pt, PROVIDER, encryption_context=ctx, algorithm=alg).ciphertext
    result = kmsenv.decrypt(msg, PROVIDER, expected_encryption_context=ctx)
    assert result.plaintext == pt and dict(result.header.encryption_context) == ctx
    tampered = bytearray(msg)
    tampered[where % len(msg)] ^= 1 << bit
    with pytest.raises(kmsenv.KmsEnvError):
        kmsenv.decrypt(bytes(tampered), PROVIDER)


@FAST
@given(alg=st.sampled_from([a for a in Algorithm if not a.authenticated]), pt=st.binary(max_size=100))
def test_legacy_round_trip_needs_opt_in(alg, pt):
    if alg.info.mode == "CBC":
        pt = pt[: len(pt) - len(pt) % 16]
    msg = kmsenv.encrypt(pt, PROVIDER, algorithm=alg, allow_unauthenticated=True).ciphertext
    with pytest.raises(kmsenv.UnauthenticatedAlgorithmError):
        kmsenv.decrypt(msg, PROVIDER)
    assert kmsenv.decrypt(msg, PROVIDER, allow_unauthenticated=True).plaintext == pt


# ---------------------------------------------------------------- limits


def header_bytes(edks, ctx=None) -> bytes:
    h = codec.MessageHeader(1, Algorithm.AES_GCM_NOPADDING_256, tuple(edks), ctx or {}, bytes(12), bytes(16))
    return codec.encode_message(codec.encode_header(h), codec.encode_body(bytes(12), b"", bytes(16)))


def edk(i: int, arn_len: int = 60, blob_len: int = 8) -> EncryptedDataKey:
    arn = f"acs:kms:cn-hangzhou:1234567890123456:key/{i:04d}-"
    return EncryptedDataKey(arn + "x" * (arn_len - len(arn)), bytes(blob_len))


def test_encrypted_data_key_count_limit():
    assert len(codec.decode_message(header_bytes([edk(i) for i in range(16)]))[0].encrypted_data_keys) == 16
    seventeen = header_bytes([edk(i) for i in range(17)])
    with pytest.raises(kmsenv.MessageFormatError, match="more than 16"):
        codec.decode_message(seventeen)
    assert len(codec.decode_message(seventeen, 17)[0].encrypted_data_keys) == 17
    with pytest.raises(kmsenv.MessageFormatError, match="more than 2"):
        kmsenv.parse_header(header_bytes([edk(i) for i in range(3)]), max_encrypted_data_keys=2)


@pytest.mark.parametrize(
    "arn_len, blob_len, ok",
    [
        (codec.MAX_ARN_BYTES, 8, True),
        (codec.MAX_ARN_BYTES + 1, 8, False),
        (60, codec.MAX_EDK_BYTES, True),
        (60, codec.MAX_EDK_BYTES + 1, False),
    ],
)
def test_arn_and_edk_size_limits(arn_len, blob_len, ok):
    msg = header_bytes([edk(0, arn_len, blob_len)])
    if ok:
        codec.decode_message(msg)
    else:
        with pytest.raises(kmsenv.MessageFormatError, match="more than the limit"):
            codec.decode_message(msg)


def test_context_size_limit_on_encrypt():
    # 4 + 4 + 1 + 4 + n bytes serialized for one pair {"k": "v" * n}
    at_limit = {"k": "v" * (codec.MAX_CONTEXT_BYTES - 13)}
    assert len(codec.context_bytes(at_limit)) == codec.MAX_CONTEXT_BYTES
    kmsenv.encrypt(b"x", PROVIDER, encryption_context=at_limit)
    with pytest.raises(kmsenv.ConfigurationError, match="32767"):
        kmsenv.encrypt(b"x", PROVIDER, encryption_context={"k": "v" * (codec.MAX_CONTEXT_BYTES - 12)})


# ---------------------------------------------------------------- streams


@contextlib.contextmanager
def capped_address_space(headroom_mb: int = 1024):
    """RLIMIT_AS at the current size + headroom for a block: an attempt to
    honour a hostile 4 GiB length raises MemoryError instead of eating the machine."""
    saved = resource.getrlimit(resource.RLIMIT_AS)
    common.cap_address_space(headroom_mb)
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, saved)


STREAM_SEEDS = make_corpus.seeds_decrypt_stream()


@needs_native
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(seed=st.sampled_from(STREAM_SEEDS), data=st.data())
def test_decrypt_stream_on_mutated_streams(seed, data):
    msg = data.draw(mutated(st.just(seed[1:])))
    with capped_address_space():
        fuzz_decrypt_stream.target(seed[:1] + msg)


# ---------------------------------------------------------------- regressions


def regression_inputs():
    for target in common.TARGETS:
        d = os.path.join(FUZZ, "regressions", target)
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                yield pytest.param(target, os.path.join(d, name), id=f"{target}/{name}")


REGRESSIONS = list(regression_inputs())


def test_there_are_regression_inputs():
    assert REGRESSIONS


#: Regression inputs of findings in files this suite's author does not own,
#: reported to the lead: strict xfails that turn into failures once fixed.
KNOWN_FINDINGS: dict[str, str] = {}


def regression_params():
    for param in REGRESSIONS:
        target, path = param.values
        key = f"{target}/{os.path.basename(path)}"
        marks = (
            [pytest.mark.xfail(strict=True, raises=MemoryError, reason=KNOWN_FINDINGS[key])]
            if key in KNOWN_FINDINGS
            else []
        )
        yield pytest.param(target, path, id=key, marks=marks)


@pytest.mark.parametrize("target, path", list(regression_params()))
def test_fuzz_regression_inputs(target, path):
    if target in NEEDS_NATIVE and not NATIVE:
        pytest.skip("needs the native core")
    with open(path, "rb") as fh:
        data = fh.read()
    with capped_address_space():
        TARGETS[target](data)
