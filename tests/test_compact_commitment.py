"""Compact format v2: key commitment and column binding (docs/format.md §4).

* A key header whose EDKs wrap two *different* data keys (a writer holding
  CMKs in two regions) opens in at most one region: the other region's reader
  stops at the commitment, before any value is opened, even for a value built
  as a GCM multi-key collision (one ciphertext, a valid tag under both keys).
* A value moved to another column of the same row fails authentication.
* Version 1 data is refused by default (no KMS call) and read unchanged with
  ``allow_uncommitted=True``.
* The commitment is compared once per data key, not per value or segment.

KMS is the real LocalKms over HTTP; the collision is computed here from the
GCM definition (NIST SP 800-38D) with `cryptography`'s AES.
"""

from __future__ import annotations

import hashlib
import os
import struct

import pytest

pa = pytest.importorskip("pyarrow")

import kmsenv  # noqa: E402
from kmsenv import arrow as ka  # noqa: E402
from kmsenv import columns as kc  # noqa: E402
from kmsenv import jobkey  # noqa: E402
from kmsenv.algorithms import Algorithm  # noqa: E402
from kmsenv.exceptions import AuthenticationError, ConfigurationError, MessageFormatError  # noqa: E402
from kmsenv.keyheader import DictKeyHeaderStore, KeyHeader  # noqa: E402
from kmsenv.kms import Kms  # noqa: E402
from kmsenv.kmsspec import KmsSpec  # noqa: E402
from kmsenv.providers import KmsKeyProvider  # noqa: E402
from kms_fixtures import *  # noqa: E402,F401,F403
from kms_fixtures import BJ, HZ, SH, kms_calls  # noqa: E402

pytestmark = pytest.mark.usefixtures("worker_env")

AES256 = Algorithm.AES_GCM_NOPADDING_256
CTX = {"table": "payments"}


def _one_region(local_kms, arn):
    return KmsKeyProvider(arn, kms=Kms(**kms_options(local_kms)))


# ---------------------------------------------------------------- GCM multi-key collision (SP 800-38D)

_R = 0xE1 << 120
_ONE = 1 << 127  # the field's 1 in GCM's bit order


def _gf_mul(x: int, y: int) -> int:
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ _R if v & 1 else v >> 1
    return z


def _gf_pow(x: int, e: int) -> int:
    result = _ONE
    while e:
        if e & 1:
            result = _gf_mul(result, x)
        x = _gf_mul(x, x)
        e >>= 1
    return result


def _aes_block(key: bytes, block: bytes) -> int:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return int.from_bytes(enc.update(block) + enc.finalize(), "big")


def _keystream(key: bytes, iv: bytes, blocks: int) -> bytes:
    return b"".join(_aes_block(key, iv + struct.pack(">I", 2 + i)).to_bytes(16, "big") for i in range(blocks))


def _blocks(data: bytes) -> list[int]:
    data += bytes(-len(data) % 16)
    return [int.from_bytes(data[i : i + 16], "big") for i in range(0, len(data), 16)]


def _ghash(h: int, aad: bytes, ct: bytes) -> int:
    y = 0
    for x in _blocks(aad) + _blocks(ct) + [(len(aad) * 8) << 64 | len(ct) * 8]:
        y = _gf_mul(y ^ x, h)
    return y


def gcm_collision(k1: bytes, k2: bytes, iv: bytes, aad: bytes, want1: bytes, want2: bytes) -> tuple[bytes, bytes]:
    """(ciphertext, tag) that opens under AES-GCM key k1 *and* k2 with the same
    IV and AAD: block 0 decrypts to ``want1`` under k1, block 1 to ``want2``
    under k2, and block 2 is solved for so that both tags agree."""
    ks1, ks2 = _keystream(k1, iv, 3), _keystream(k2, iv, 3)
    ct = bytearray(48)
    ct[0:16] = bytes(a ^ b for a, b in zip(want1, ks1[0:16]))
    ct[16:32] = bytes(a ^ b for a, b in zip(want2, ks2[16:32]))
    h1, h2 = _aes_block(k1, bytes(16)), _aes_block(k2, bytes(16))
    j0 = iv + b"\x00\x00\x00\x01"
    # GHASH is linear in each block: the last ciphertext block (only the
    # length block follows it) enters as block * H^2. Solve
    # GHASH1 ^ GHASH2 == E_k1(J0) ^ E_k2(J0) for it.
    base = _ghash(h1, aad, bytes(ct)) ^ _ghash(h2, aad, bytes(ct))
    target = _aes_block(k1, j0) ^ _aes_block(k2, j0)
    coeff = _gf_pow(h1, 2) ^ _gf_pow(h2, 2)
    block2 = _gf_mul(base ^ target, _gf_pow(coeff, 2**128 - 2))
    ct[32:48] = block2.to_bytes(16, "big")
    tag = (_ghash(h1, aad, bytes(ct)) ^ _aes_block(k1, j0)).to_bytes(16, "big")
    assert tag == (_ghash(h2, aad, bytes(ct)) ^ _aes_block(k2, j0)).to_bytes(16, "big")
    return bytes(ct), tag


def colliding_value(header: KeyHeader, dk1, dk2, column: bytes) -> tuple[bytes, bytes, bytes]:
    """A compact value of the header's version that opens under both data keys:
    (value, plaintext under dk1, plaintext under dk2)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    segment, iv = os.urandom(8), os.urandom(12)
    version = getattr(header, "version", 1)  # kmsenv before format v2 has version 1 headers only
    prefix = bytes([0xC5 if version == 2 else 0xC1]) + header.ref + segment
    aad = prefix + (struct.pack(">I", len(column)) + column if version == 2 else b"")
    k1, k2 = (bytes(kc.subkey(header.algorithm, dk, header, segment)) for dk in (dk1, dk2))
    ct, tag = gcm_collision(k1, k2, iv, aad, b"hz: pay 100 CNY.", b"bj: pay 1M CNY!!")
    p1, p2 = AESGCM(k1).decrypt(iv, ct + tag, aad), AESGCM(k2).decrypt(iv, ct + tag, aad)
    assert p1 != p2 and p1[:16] == b"hz: pay 100 CNY." and p2[16:32] == b"bj: pay 1M CNY!!"
    return prefix + iv + ct + tag, p1, p2


@pytest.fixture(scope="module")
def split_keys(local_kms, cmks):
    """Two data keys made in two regions, and a header holding one EDK of each."""
    hz, bj = _one_region(local_kms, cmks.hz), _one_region(local_kms, cmks.bj)
    dk1, dk2 = hz.generate_data_key(AES256, CTX), bj.generate_data_key(AES256, CTX)
    assert bytes(dk1.plaintext) != bytes(dk2.plaintext)
    edks = (dk1.encrypted_data_keys[0], dk2.encrypted_data_keys[0])
    assert [e.key_arn for e in edks] == [cmks.hz, cmks.bj]
    yield hz, bj, dk1, dk2, edks
    dk1.wipe()
    dk2.wipe()


# ---------------------------------------------------------------- key commitment


def test_two_data_keys_in_one_header_open_in_one_region_only(backend, local_kms, split_keys):
    hz, bj, dk1, dk2, edks = split_keys
    header = KeyHeader.for_data_key(AES256, CTX, edks, dk1.plaintext)  # commits to the cn-hangzhou key
    value, p1, p2 = colliding_value(header, dk1.plaintext, dk2.plaintext, b"amount")
    store = DictKeyHeaderStore([header])

    # cn-hangzhou's key is the committed one: the value opens there.
    assert kc.decrypt_values([value], hz, key_store=store, column="amount") == [p1]
    # cn-beijing unwraps another key. The ciphertext is valid under it too (a
    # multi-key collision), so only the commitment stands in the way, and it
    # stops the read before any value is opened.
    local_kms.reset_stats()
    checks = kc.stats()["commitment_checks"]
    with pytest.raises(AuthenticationError, match="value 0: key header .*: key commitment mismatch") as info:
        kc.decrypt_values([value], bj, key_store=store, column="amount")
    assert "pay" not in str(info.value)
    assert kc.stats()["commitment_checks"] == checks + 1
    assert kms_calls(local_kms) == {(BJ, "Decrypt"): 1}
    # The same through Arrow and a WorkerSpec that prefers cn-beijing.
    reader = kmsenv.WorkerSpec(
        cmks=(bj.key_arns[0], hz.key_arns[0]), kms=KmsSpec.from_kms(hz.kms, prefer_regions=(BJ, HZ))
    )
    jobkey.clear_cache()
    with pytest.raises(AuthenticationError, match="key commitment mismatch"):
        ka.decrypt_array(pa.array([value], pa.binary()), reader, headers=[header], column="amount")


def test_the_attack_works_on_v1_which_is_why_v1_is_refused(backend, local_kms, split_keys):
    hz, bj, dk1, dk2, edks = split_keys
    legacy = KeyHeader(AES256, CTX, edks)  # version 1: nothing ties it to a key
    value, p1, p2 = colliding_value(legacy, dk1.plaintext, dk2.plaintext, b"")
    store = DictKeyHeaderStore([legacy])
    local_kms.reset_stats()
    for reader in (hz, bj):
        with pytest.raises(MessageFormatError, match="v1 .*allow_uncommitted=True"):
            kc.decrypt_values([value], reader, key_store=store)
    assert kms_calls(local_kms) == {}  # refused before any key lookup
    # With the opt-in, v1 reads exactly as before: one value, two plaintexts.
    uncommitted = kc.stats()["uncommitted_keys"]
    assert kc.decrypt_values([value], hz, key_store=store, allow_uncommitted=True) == [p1]
    assert kc.decrypt_values([value], bj, key_store=store, allow_uncommitted=True) == [p2]
    assert kc.stats()["uncommitted_keys"] == uncommitted + 2


def test_committed_jobkey_opens_through_every_region(local_kms, provider):
    """The EDKs of an honest header all wrap one key: each region's reader passes."""
    job = kmsenv.JobKey.create(provider, encryption_context=CTX)
    header = job.headers[0]
    assert header.version == 2 and len(header.encrypted_data_keys) == 3
    sealed = ka.encrypt_array(pa.array(["a", None, "b"]), job, format="compact", column="c")
    for region in (HZ, BJ, SH):
        jobkey.clear_cache()
        local_kms.reset_stats()
        spec = kmsenv.WorkerSpec.from_provider(provider, kms=KmsSpec.from_kms(provider.kms, prefer_regions=(region,)))
        out = ka.decrypt_array(sealed, spec, headers=job.headers, column="c", as_string=True)
        assert out.to_pylist() == ["a", None, "b"]
        assert kms_calls(local_kms) == {(region, "Decrypt"): 1}


def test_a_tampered_commitment_is_refused(backend, provider):
    job = kmsenv.JobKey.create(provider)
    header = job.headers[0]
    sealed = kc.encrypt_values([b"x"], job, column="c")
    raw = bytearray(header.encoded)
    raw[-1] ^= 1  # the commitment is the header's last byte
    forged = KeyHeader.decode(bytes(raw))
    # Another header: another reference, so the value no longer finds it...
    with pytest.raises(kmsenv.KmsEnvError, match="was not found"):
        kc.decrypt_values(sealed, provider, key_store=DictKeyHeaderStore([forged]), column="c")
    # ...and a value made for the forged header stops at the commitment.
    jobkey.clear_cache()
    with pytest.raises(AuthenticationError, match="key commitment mismatch"):
        kc.open_compact(
            kc.Column.from_values([bytes([0xC5]) + forged.ref + bytes(36)]),
            lambda ref: forged,
            kc.KeySource(provider).key_for,
            column="c",
        )


@pytest.mark.parametrize("segment_size", [kc.MAX_SEGMENT, 7])
def test_commitment_compared_once_per_key(backend, provider, monkeypatch, segment_size):
    monkeypatch.setattr(kc, "MAX_SEGMENT", segment_size)  # 7: many segments (subkeys) per key
    a, b = kmsenv.JobKey.create(provider, encryption_context={"k": "a"}), kmsenv.JobKey.create(provider)
    ea = kc.encrypt_values([b"a%d" % i for i in range(40)], a, column="c")
    eb = kc.encrypt_values([b"b%d" % i for i in range(40)], b, column="c")
    mixed = [v for pair in zip(ea, eb) for v in pair]  # a, b, a, b, ...: 80 key switches
    store = DictKeyHeaderStore(a.headers + b.headers)
    before = kc.stats()["commitment_checks"]
    out = kc.decrypt_values(mixed, kmsenv.WorkerSpec.from_provider(provider), key_store=store, column="c")
    assert out == [p for pair in zip([b"a%d" % i for i in range(40)], [b"b%d" % i for i in range(40)]) for p in pair]
    assert kc.stats()["commitment_checks"] == before + 2


# ---------------------------------------------------------------- column binding


def users(n=20):
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "email": [f"user{i}@example.com" for i in range(n)],
            "phone": [f"1380000{i:04d}" for i in range(n)],
        }
    )


@pytest.mark.parametrize("bound", [False, True])
def test_a_value_moved_to_another_column_of_its_row_fails(backend, provider, bound):
    job = kmsenv.JobKey.create(provider, encryption_context={"table": "users"})  # one key for both columns
    aad = {"aad_column": "id"} if bound else {}
    enc = ka.encrypt_column(users(), "email", job, format="compact", **aad)
    enc = ka.encrypt_column(enc, "phone", job, format="compact", **aad)
    assert ka.decrypt_column(ka.decrypt_column(enc, "email", job, as_string=True), "phone", job, as_string=True).equals(
        users()
    )
    # Row 3's email value put in row 3's phone column: same key, same row id.
    phones = enc.column("phone").to_pylist()
    phones[3] = enc.column("email")[3].as_py()
    moved = enc.set_column(2, enc.schema.field("phone"), pa.array(phones, pa.binary()))
    with pytest.raises(AuthenticationError, match="value 3: authentication failed .*another row or column"):
        ka.decrypt_column(moved, "phone", job)


def test_a_renamed_column_is_read_with_its_original_name(provider, tmp_path):
    import pyarrow.parquet as pq

    job = kmsenv.JobKey.create(provider)
    enc = ka.encrypt_column(users(), "email", job, format="compact", output="email_enc").drop_columns(["email"])
    renamed = enc.rename_columns(["id", "phone", "mail"])
    pq.write_table(renamed, tmp_path / "t.parquet")
    back = pq.read_table(tmp_path / "t.parquet")
    with pytest.raises(AuthenticationError, match="read with the name it was written under"):
        ka.decrypt_column(back, "mail", job)
    dec = ka.decrypt_column(back, "mail", job, aad_name="email_enc", as_string=True)
    assert dec.column("mail").to_pylist() == users().column("email").to_pylist()
    # Written under an explicit name from the start.
    named = ka.encrypt_column(users(), "email", job, format="compact", aad_name="contact")
    assert ka.decrypt_column(named, "email", job, aad_name="contact", as_string=True).equals(users())
    with pytest.raises(AuthenticationError):
        ka.decrypt_column(named, "email", job)


def test_value_lists_bind_their_column(provider):
    store = DictKeyHeaderStore()
    values = [b"13800000000", None, b""]
    enc = kc.encrypt_values(values, provider, key_store=store, column="phone", rows=[b"1", b"2", b"3"])
    assert kc.decrypt_values(enc, provider, key_store=store, column="phone", rows=[b"1", b"2", b"3"]) == values
    for wrong in (None, "email", "phone "):
        with pytest.raises(AuthenticationError):
            kc.decrypt_values(enc, provider, key_store=store, column=wrong, rows=[b"1", b"2", b"3"])
    with pytest.raises(ConfigurationError, match="format='compact'"):
        kc.encrypt_values(values, provider, format="alibaba", column="phone")
    with pytest.raises(ConfigurationError, match="must be a str"):
        kc.encrypt_values(values, provider, key_store=store, column=b"phone")
    with pytest.raises(ConfigurationError, match="format='compact'"):
        ka.encrypt_column(users(), "email", provider, aad_name="x")


# ---------------------------------------------------------------- version 1 data


def v1_value(data_key, header: KeyHeader, plaintext: bytes, row: bytes | None = None) -> bytes:
    """A compact v1 value as kmsenv wrote it before format v2 (spec: the old §4.2)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    segment, iv = os.urandom(8), os.urandom(12)
    digest = hashlib.sha256(header.encoded).digest()
    sub = HKDF(hashes.SHA256(), 32, segment, b"kmsenv/compact/v1/key" + digest).derive(bytes(data_key))
    prefix = bytes([0xC3 if row is not None else 0xC1]) + digest[:8] + segment
    return prefix + iv + AESGCM(sub).encrypt(iv, plaintext, prefix + (row or b""))


def test_v1_data_is_refused_by_default_and_read_on_request(backend, local_kms, provider):
    dk = provider.generate_data_key(AES256, {"table": "old"})
    try:
        legacy = KeyHeader(AES256, {"table": "old"}, tuple(dk.encrypted_data_keys))
        values = [v1_value(dk.plaintext, legacy, b"old-%d" % i) for i in range(5)]
        bound = [v1_value(dk.plaintext, legacy, b"row-%d" % i, str(i).encode()) for i in range(5)]
        committed = KeyHeader.for_data_key(AES256, {"table": "old"}, tuple(dk.encrypted_data_keys), dk.plaintext)
        stray = v1_value(dk.plaintext, committed, b"v1 value, v2 header")
    finally:
        dk.wipe()
    store = DictKeyHeaderStore([legacy, committed])
    assert KeyHeader.decode(legacy.encoded).version == 1  # stores and metadata still parse v1 headers
    local_kms.reset_stats()
    with pytest.raises(MessageFormatError, match="value 0: a compact format v1 value.*allow_uncommitted=True"):
        kc.decrypt_values(values, provider, key_store=store)
    with pytest.raises(MessageFormatError, match="v1"):
        kc.decrypt_values([None] + bound, provider, key_store=store, rows=[None] + [b"%d" % i for i in range(5)])
    assert kms_calls(local_kms) == {}
    # Opted in: read unchanged (a column name is not part of a v1 value).
    assert kc.decrypt_values(values, provider, key_store=store, allow_uncommitted=True, column="any") == [
        b"old-%d" % i for i in range(5)
    ]
    rows = [b"%d" % i for i in range(5)]
    assert kc.decrypt_values(bound, provider, key_store=store, rows=rows, allow_uncommitted=True) == [
        b"row-%d" % i for i in range(5)
    ]
    with pytest.raises(AuthenticationError):  # v1 row binding still holds
        kc.decrypt_values(bound, provider, key_store=store, rows=rows[::-1], allow_uncommitted=True)
    # A v1 value never opens under a v2 header (or the other way round).
    with pytest.raises(MessageFormatError, match="v1 value refers to a version 2 key header"):
        kc.decrypt_values([stray], provider, key_store=store, allow_uncommitted=True)
    # v1 values among v2 ones of one column: the v2 ones alone would open, the v1 one is refused.
    fresh = kc.encrypt_values([b"new"], kmsenv.JobKey.create(provider, key_store=store), column="c")
    with pytest.raises(MessageFormatError, match="value 1: a compact format v1 value"):
        kc.decrypt_values(fresh + values[:1], provider, key_store=store, column="c")
    assert kc.decrypt_values(fresh + values[:1], provider, key_store=store, column="c", allow_uncommitted=True) == [
        b"new",
        b"old-0",
    ]


def test_v1_arrow_column_needs_the_opt_in(provider):
    dk = provider.generate_data_key(AES256, {})
    try:
        legacy = KeyHeader(AES256, {}, tuple(dk.encrypted_data_keys))
        table = pa.table({"email": pa.array([v1_value(dk.plaintext, legacy, b"a@x"), None], pa.binary())})
    finally:
        dk.wipe()
    import base64
    import json

    meta = {
        ka.METADATA_KEY: json.dumps([base64.b64encode(legacy.encoded).decode()]).encode(),
        ka.FORMAT_KEY: b"compact",
    }
    table = table.replace_schema_metadata(None).cast(pa.schema([pa.field("email", pa.binary(), metadata=meta)]))
    with pytest.raises(MessageFormatError, match="allow_uncommitted=True"):
        ka.decrypt_column(table, "email", provider)
    out = ka.decrypt_column(table, "email", provider, allow_uncommitted=True, as_string=True)
    assert out.column("email").to_pylist() == ["a@x", None]
