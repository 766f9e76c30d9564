"""kmsenv.arrow / kmsenv.columns: column encryption over Arrow buffers.

Both formats, both backends (byte-identical given the same randomness), nulls,
slices, chunked and large arrays, row binding, tampering, and the compact
format against an independent reference written here with `cryptography`.
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
from kmsenv.algorithms import Algorithm  # noqa: E402
from kmsenv.exceptions import (  # noqa: E402
    AuthenticationError,
    ConfigurationError,
    EncryptionContextMismatchError,
    KmsEnvError,
    MessageFormatError,
)
from kmsenv.keyheader import DictKeyHeaderStore, KeyHeader  # noqa: E402
from kmsenv.model import EncryptedDataKey  # noqa: E402
from kmsenv.providers import KmsKeyProvider  # noqa: E402
from kms_fixtures import *  # noqa: E402,F401,F403


def emails(n: int, start: int = 0) -> list[str]:
    return [f"user{i:07d}.{(i * 2654435761) % 100000:05d}@example.com" for i in range(start, start + n)]


pytestmark = pytest.mark.usefixtures("worker_env")


@pytest.fixture(scope="module")
def sm4_provider(local_kms, cmks):
    return KmsKeyProvider(
        cmks.sm4, cmks.sm4_bj, kms=kmsenv.Kms(**kms_options(local_kms)), algorithm=Algorithm.SM4_GCM_NOPADDING_128
    )


def a_header(algorithm=Algorithm.AES_GCM_NOPADDING_256, context=None, key=None):
    """A version 2 key header committing to ``key`` (EDKs are random stand-ins)."""
    return KeyHeader.for_data_key(
        algorithm,
        context or {"table": "users"},
        (
            EncryptedDataKey("acs:kms:cn-hangzhou:123:key/k1", os.urandom(40)),
            EncryptedDataKey("acs:kms:cn-beijing:123:key/k2", os.urandom(40)),
        ),
        key if key is not None else os.urandom(algorithm.key_len),
    )


# ---------------------------------------------------------------- the compact format, byte by byte


def _hkdf(algorithm, length, salt, info, ikm):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    hash_cls = hashes.SM3 if algorithm.info.cipher == "SM4" else hashes.SHA256
    return HKDF(hash_cls(), length, salt, info).derive(bytes(ikm))


def reference_commitment(algorithm, data_key, encoded):
    """docs/format.md §4.1: HKDF(data key, no salt, label || SHA-256(version .. context fields))."""
    assert encoded[0] == 0x30 and encoded[-34:-32] == b"\x04\x20"  # SEQUENCE { ..., OCTET STRING (32) }
    head = 2 if encoded[1] < 0x80 else 2 + (encoded[1] & 0x7F)
    fields = encoded[head:-34]
    return _hkdf(algorithm, 32, None, b"kmsenv/compact/v2/commitment" + hashlib.sha256(fields).digest(), data_key)


def reference_compact(algorithm, data_key, header, value, segment, iv, row=None, column=b""):
    """docs/format.md §4 "Compact column values" (v2), written from the spec with `cryptography`."""
    digest = hashlib.sha256(header.encoded).digest()
    sub = _hkdf(algorithm, algorithm.key_len, segment, b"kmsenv/compact/v2/key" + digest, data_key)
    prefix = bytes([0xC7 if row is not None else 0xC5]) + digest[:8] + segment
    aad = prefix + struct.pack(">I", len(column)) + column + (row or b"")
    if algorithm.info.cipher == "SM4":
        from kmsenv.crypto.sm4_gcm_fallback import Sm4Fallback  # gmssl's SM4 + Python GCM

        ct, tag = Sm4Fallback(bytes(sub)).gcm_seal(iv, aad, value)
        return prefix + iv + ct + tag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return prefix + iv + AESGCM(sub).encrypt(iv, value, aad)


@pytest.mark.parametrize("algorithm", [Algorithm.AES_GCM_NOPADDING_256, Algorithm.AES_GCM_NOPADDING_128])
@pytest.mark.parametrize("bound", [False, True])
@pytest.mark.parametrize("column", [None, "email", "ü" * 200])
def test_compact_matches_the_spec(backend, algorithm, bound, column):
    key = bytearray(os.urandom(algorithm.key_len))
    header = a_header(algorithm, key=key)
    values = [os.urandom(i % 40) for i in range(200)]
    rows = [str(i).encode() for i in range(200)] if bound else None
    segment, ivs = os.urandom(8), os.urandom(12 * 200)
    col = kc.Column.from_values(values)
    out = kc.seal_compact(
        algorithm,
        key,
        header,
        col,
        kc.Column.from_values(rows) if rows else None,
        segments=[segment],
        ivs=ivs,
        column=column,
    ).values(col)
    name = (column or "").encode()
    for i, v in enumerate(values):
        want = reference_compact(
            algorithm, key, header, v, segment, ivs[12 * i : 12 * i + 12], rows[i] if rows else None, name
        )
        assert out[i] == want
        assert len(out[i]) == len(v) + 45


def test_compact_sm4_matches_the_spec(backend):
    algorithm = Algorithm.SM4_GCM_NOPADDING_128
    key = bytearray(os.urandom(16))
    header = a_header(algorithm, key=key)
    values = [os.urandom(i % 33) for i in range(50)]
    segment, ivs = os.urandom(8), os.urandom(12 * 50)
    col = kc.Column.from_values(values)
    out = kc.seal_compact(algorithm, key, header, col, segments=[segment], ivs=ivs, column="phone").values(col)
    for i, v in enumerate(values):
        assert out[i] == reference_compact(
            algorithm, key, header, v, segment, ivs[12 * i : 12 * i + 12], column=b"phone"
        )


@pytest.mark.parametrize(
    "algorithm", [Algorithm.AES_GCM_NOPADDING_256, Algorithm.AES_GCM_NOPADDING_128, Algorithm.SM4_GCM_NOPADDING_128]
)
def test_key_header_commitment_matches_the_spec(backend, algorithm):
    key = bytearray(os.urandom(algorithm.key_len))
    header = a_header(algorithm, {"table": "users", "column": "email"}, key=key)
    assert header.version == 2 and header.encoded[-34:-32] == b"\x04\x20"
    assert header.commitment == header.encoded[-32:] == reference_commitment(algorithm, key, header.encoded)
    again = KeyHeader.decode(header.encoded)
    assert again == header and again.commitment == header.commitment and again.fields_digest == header.fields_digest
    again.check_data_key(key)
    with pytest.raises(AuthenticationError, match="key commitment mismatch"):
        again.check_data_key(bytearray(os.urandom(algorithm.key_len)))
    # New values are never sealed under a version 1 (uncommitted) header.
    legacy = KeyHeader(algorithm, {"table": "users"}, header.encrypted_data_keys)
    assert legacy.version == 1 and KeyHeader.decode(legacy.encoded).version == 1
    with pytest.raises(ConfigurationError, match="version 2 key header"):
        kc.seal_compact(algorithm, key, legacy, kc.Column.from_values([b"x"]))


def test_native_and_pure_agree_on_both_formats():
    if not kmsenv.native_available():
        pytest.skip("native core not built")
    from kmsenv import crypto

    key = bytearray(os.urandom(32))
    header = a_header(key=key)
    values = [None if i % 7 == 3 else os.urandom(i % 90) for i in range(500)]
    rows = [struct.pack(">Q", i) for i in range(500)]
    segment, ivs = os.urandom(8), os.urandom(12 * 500)
    col, rcol = kc.Column.from_values(values), kc.Column.from_values(rows)
    sealed = {}
    for name in ("native", "pure"):
        crypto.set_backend(name)
        try:
            sealed[name] = kc.seal_compact(
                header.algorithm, key, header, col, rcol, segments=[segment], ivs=ivs, column="c"
            ).values(col)
            opened = kc.open_compact(
                kc.Column.from_values(sealed[name]), lambda r: header, lambda h: bytearray(key), rcol, column="c"
            )
            assert opened.values(col) == values
        finally:
            crypto.set_backend("native")
    assert sealed["native"] == sealed["pure"]


# ---------------------------------------------------------------- arrays


@pytest.mark.parametrize("fmt", ["alibaba", "compact"])
@pytest.mark.parametrize("typ", ["string", "large_string", "binary", "large_binary", "string_view"])
def test_round_trip_types_nulls_and_slices(backend, provider, fmt, typ):
    values = emails(40) + [None, "", "ü-ñ"]
    arr = pa.array(values, getattr(pa, typ)()).slice(3, 37)  # a sliced array: offsets and validity shifted
    job = kmsenv.JobKey.create(provider, encryption_context={"col": "email"})
    enc = ka.encrypt_array(arr, job, format=fmt)
    assert enc.type in (pa.binary(), pa.large_binary())
    assert enc.null_count == arr.null_count and len(enc) == len(arr)
    assert enc.is_null().equals(arr.is_null())
    dec = ka.decrypt_array(enc, job, as_string="string" in typ)
    assert dec.to_pylist() == arr.to_pylist()


def test_alibaba_values_are_standalone_official_messages(provider):
    arr = pa.array(emails(5))
    enc = ka.encrypt_array(arr, provider, encryption_context={"purpose": "crm"})
    for value, plain in zip(enc.to_pylist(), arr.to_pylist()):
        result = kmsenv.decrypt(value, provider)
        assert result.plaintext == plain.encode()
        assert dict(result.header.encryption_context) == {"purpose": "crm"}
        assert len(result.header.encrypted_data_keys) == 3


def test_chunked_arrays_stay_chunked(provider):
    store = DictKeyHeaderStore()
    arr = pa.chunked_array([pa.array(emails(10)), pa.array(emails(5, 10)), pa.array([], pa.string())])
    enc = ka.encrypt_array(arr, provider, format="compact", key_store=store)
    assert isinstance(enc, pa.ChunkedArray) and enc.num_chunks == 3
    assert len(store) == 3  # one data key per chunk with a plain provider
    dec = ka.decrypt_array(enc, provider, key_store=store, as_string=True)
    assert dec.to_pylist() == arr.to_pylist()


def test_compact_is_small(provider):
    job = kmsenv.JobKey.create(provider, encryption_context={"table": "users", "column": "email"})
    arr = pa.array(emails(1000))
    enc = ka.encrypt_array(arr, job, format="compact")
    sizes = {len(v) for v in enc.to_pylist()}
    assert sizes == {29 + 45}  # under the 80 bytes for a 29-byte field
    alibaba = ka.encrypt_array(arr, job, format="alibaba")
    assert min(len(v) for v in alibaba.to_pylist()) > 600  # three regions' EDKs in every value


def test_all_null_and_empty_arrays(provider):
    job = kmsenv.JobKey.create(provider)
    for arr in (pa.array([None, None], pa.string()), pa.array([], pa.string()), pa.nulls(3)):
        for fmt in ("alibaba", "compact"):
            enc = ka.encrypt_array(arr, job, format=fmt)
            assert enc.null_count == arr.null_count
            assert ka.decrypt_array(enc, job, format=fmt).to_pylist() == arr.to_pylist()


def test_sm4_columns(backend, sm4_provider):
    job = kmsenv.JobKey.create(sm4_provider)
    assert job.headers[0].algorithm == Algorithm.SM4_GCM_NOPADDING_128
    arr = pa.array(emails(300))
    for fmt in ("alibaba", "compact"):
        enc = ka.encrypt_array(arr, job, format=fmt)
        assert ka.decrypt_array(enc, job, as_string=True).equals(arr)


def test_large_output_switches_to_large_binary(provider):
    job = kmsenv.JobKey.create(provider)
    kc_cap = kc._new_output(1, 2**31)
    assert kc_cap.width == 8  # past 2 GiB the offsets are int64 (no 2 GiB array built here)
    enc = ka.encrypt_array(pa.array([b"x" * 10], pa.large_binary()), job, format="compact")
    assert ka.decrypt_array(enc, job).to_pylist() == [b"x" * 10]


# ---------------------------------------------------------------- tables and row binding


def users(n=50):
    return pa.table({"id": pa.array(range(n), pa.int64()), "email": pa.array(emails(n)), "plan": ["free"] * n})


@pytest.mark.parametrize("fmt", ["alibaba", "compact"])
def test_encrypt_column_round_trip_keeps_other_columns(provider, fmt):
    table = users()
    enc = ka.encrypt_column(table, "email", provider, format=fmt, encryption_context={"t": "users"})
    assert enc.column_names == table.column_names
    assert enc.column("id").equals(table.column("id")) and enc.column("plan").equals(table.column("plan"))
    assert enc.schema.field("email").metadata[b"kmsenv.format"] == fmt.encode()
    dec = ka.decrypt_column(enc, "email", provider, as_string=True, expected_encryption_context={"t": "users"})
    assert dec.column("email").to_pylist() == table.column("email").to_pylist()
    with pytest.raises(EncryptionContextMismatchError):
        ka.decrypt_column(enc, "email", provider, expected_encryption_context={"t": "orders"})


def test_compact_headers_survive_parquet(provider, tmp_path):
    import pyarrow.parquet as pq

    table = users()
    enc = ka.encrypt_column(table, "email", provider, format="compact", aad_column="id", output="email_enc")
    enc = enc.drop_columns(["email"])
    pq.write_table(enc, tmp_path / "u.parquet")
    back = pq.read_table(tmp_path / "u.parquet")
    assert ka.key_headers(back.schema.field("email_enc"))  # in the footer's Arrow schema
    dec = ka.decrypt_column(back, "email_enc", provider, as_string=True)  # aad column from the metadata
    assert dec.column("email_enc").to_pylist() == table.column("email").to_pylist()


def test_row_binding_catches_swapped_values(provider):
    table = users(20)
    enc = ka.encrypt_column(table, "email", provider, format="compact", aad_column="id")
    values = enc.column("email").to_pylist()
    values[3], values[4] = values[4], values[3]
    swapped = enc.set_column(1, enc.schema.field("email"), pa.array(values, pa.binary()))
    with pytest.raises(AuthenticationError, match="value 3: .*moved to another row"):
        ka.decrypt_column(swapped, "email", provider)
    # Without binding the same swap goes unnoticed: that is what aad_column is for.
    plain = ka.encrypt_column(table, "email", provider, format="compact")
    values = plain.column("email").to_pylist()
    values[3], values[4] = values[4], values[3]
    swapped = plain.set_column(1, plain.schema.field("email"), pa.array(values, pa.binary()))
    assert ka.decrypt_column(swapped, "email", provider, as_string=True).column("email")[3].as_py() == emails(20)[4]


def test_row_binding_needs_matching_rows(provider):
    table = users(10)
    enc = ka.encrypt_column(table, "email", provider, format="compact", aad_column="id")
    arr = enc.column("email")
    store = DictKeyHeaderStore(ka.key_headers(enc.schema.field("email")))
    with pytest.raises(MessageFormatError, match="bound to a row id"):
        ka.decrypt_array(arr, provider, key_store=store)
    with pytest.raises(AuthenticationError):
        ka.decrypt_array(arr, provider, key_store=store, rows=pa.array(range(1, 11)))
    assert ka.decrypt_array(
        arr, provider, key_store=store, rows=pa.array(range(10)), column="email", as_string=True
    ).to_pylist() == emails(10)
    # An unbound value where bound ones are expected is refused (no downgrade).
    unbound = ka.encrypt_array(pa.array(emails(10)), provider, format="compact", key_store=store)
    with pytest.raises(MessageFormatError, match="not bound"):
        ka.decrypt_array(unbound, provider, key_store=store, rows=pa.array(range(10)))
    with pytest.raises(ConfigurationError, match="row id"):
        ka.encrypt_array(pa.array(["a", "b"]), provider, format="compact", key_store=store, rows=pa.array([1, None]))
    with pytest.raises(ConfigurationError, match="compact"):
        ka.encrypt_array(pa.array(["a"]), provider, rows=pa.array([1]))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("fmt", ["alibaba", "compact"])
def test_every_flipped_byte_and_truncation_fails_cleanly(backend, provider, fmt):
    job = kmsenv.JobKey.create(provider)
    enc = ka.encrypt_array(pa.array(["secret-a", "secret-b", "secret-c"]), job, format=fmt)
    values = enc.to_pylist()
    target = bytearray(values[1])
    positions = range(len(target)) if fmt == "compact" else range(0, len(target), 7)
    for pos in positions:
        bad = bytearray(target)
        bad[pos] ^= 0x01
        arr = pa.array([values[0], bytes(bad), values[2]], pa.binary())
        with pytest.raises(KmsEnvError) as info:
            ka.decrypt_array(arr, job, format=fmt)
        assert "value 1" in str(info.value) or "value" in str(info.value)
        assert "secret" not in str(info.value)
    for cut in (0, 1, 10, len(target) - 1):
        arr = pa.array([values[0], bytes(target[:cut])], pa.binary())
        with pytest.raises((MessageFormatError, AuthenticationError)):
            ka.decrypt_array(arr, job, format=fmt)


def test_unknown_key_header_and_wrong_format(provider):
    job = kmsenv.JobKey.create(provider)
    enc = ka.encrypt_array(pa.array(["a"]), provider, format="compact", key_store=DictKeyHeaderStore())
    with pytest.raises(KmsEnvError, match="key header .* was not found"):
        ka.decrypt_array(enc, job)
    der = ka.encrypt_array(pa.array(["a"]), job)
    with pytest.raises(MessageFormatError, match="Alibaba-format message"):
        ka.decrypt_array(der, job, format="compact")
    with pytest.raises(ConfigurationError, match="format"):
        ka.encrypt_array(pa.array(["a"]), job, format="zip")
    with pytest.raises(ConfigurationError, match="key_store"):
        ka.encrypt_array(pa.array(["a"]), provider, format="compact")
    with pytest.raises(ConfigurationError, match="binary or string"):
        ka.encrypt_array(pa.array([1, 2]), job)
    with pytest.raises(ConfigurationError, match="can only decrypt"):
        ka.encrypt_array(pa.array(["a"]), job.spec)


def test_mixed_keys_in_one_column(provider):
    a = kmsenv.JobKey.create(provider, encryption_context={"k": "a"})
    b = kmsenv.JobKey.create(provider, encryption_context={"k": "b"})
    store = DictKeyHeaderStore()
    a.save(store)
    b.save(store)
    for fmt in ("alibaba", "compact"):
        ea = ka.encrypt_array(pa.array(["a1", "a2"]), a, format=fmt)
        eb = ka.encrypt_array(pa.array(["b1", None, "b2"]), b, format=fmt)
        mixed = pa.array(ea.to_pylist()[:1] + eb.to_pylist() + ea.to_pylist()[1:], pa.binary())
        out = ka.decrypt_array(mixed, kmsenv.WorkerSpec.from_provider(provider), key_store=store, as_string=True)
        assert out.to_pylist() == ["a1", "b1", None, "b2", "a2"]


# ---------------------------------------------------------------- lists (no Arrow needed)


def test_value_lists_for_row_stores(provider):
    store = DictKeyHeaderStore()
    values = [b"13800000000", None, b"", "中文".encode()]
    enc = kc.encrypt_values(values, provider, key_store=store, rows=[b"1", b"2", b"3", b"4"])
    assert enc[1] is None and all(len(v) == len(p) + 45 for v, p in zip(enc, values) if p is not None)
    assert kc.decrypt_values(enc, provider, key_store=store, rows=[b"1", b"2", b"3", b"4"]) == values
    with pytest.raises(ConfigurationError, match="str"):
        kc.encrypt_values(["text"], provider, key_store=store)


def test_importing_kmsenv_imports_no_engine():
    """The engines are optional extras: `import kmsenv` (and its column core
    without Arrow) must not pull in pyarrow, pandas, dask, pyspark or ray."""
    import subprocess
    import sys

    code = (
        "import sys, kmsenv, kmsenv.columns, kmsenv.jobkey, kmsenv.keyheader\n"
        "heavy = [m for m in ('pyarrow', 'pandas', 'dask', 'distributed', 'pyspark', 'ray') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("bad", [{"format": "nope"}, {"aad_name": 7}, {"column": ""}])
def test_decrypt_column_front_ends_share_one_argument_check(bad):
    """arrow, dask, spark and ray check a decrypt_column call through one
    function (kmsenv.jobkey.reader): the same error for the same mistake."""
    from kmsenv.jobkey import reader

    args = {"format": None, "aad_name": None, "allow_uncommitted": False}
    column = bad.pop("column", "email")
    args.update(bad)
    with pytest.raises(ConfigurationError):
        reader(kmsenv.WorkerSpec(), column, **args)
    table = pa.table({"email": pa.array([b"x"], pa.binary())})
    if column:
        with pytest.raises(ConfigurationError):
            ka.decrypt_column(table, column, kmsenv.WorkerSpec(), **args)


def test_reader_ships_a_spec_never_a_provider(local_kms, cmks, kms):
    from kmsenv.jobkey import reader
    from kmsenv.providers import KmsKeyProvider

    provider = KmsKeyProvider(cmks.hz, kms=kms)
    shipped = reader(provider, "c", format=None, aad_name=None, allow_uncommitted=0)
    assert isinstance(shipped.key, kmsenv.WorkerSpec) and shipped.aad_name == "c" and shipped.allow_uncommitted is False
    assert reader(provider, "c", format="compact", aad_name="old", allow_uncommitted=1, ship=False).key is provider
