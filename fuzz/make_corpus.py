"""Write seed corpora for the fuzz harnesses: ``python fuzz/make_corpus.py OUT_DIR``.

Seeds are generated, not committed: the official SDK's messages from
tests/data (every positive and negative record), plus messages sealed with
:data:`common.MASTER` for all 12 algorithms, with and without a context, with
one and several encrypted data keys, single and batched.  OUT_DIR/<target>/
receives one file per seed (named by its SHA-1, so reruns are idempotent).

To add a target: a ``seeds_<name>()`` function returning a list of bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import kmsenv  # noqa: E402

VECTORS = os.path.join(common.ROOT, "tests", "data", "alibaba-official-python.json")
ARNS3 = (
    common.FIXED_ARN,
    "acs:kms:cn-beijing:1234567890123456:key/key-fuzz-11111111-0000-0000-0000-000000000000",
    "acs:kms:cn-shanghai:1234567890123456:key/key-fuzz-22222222-0000-0000-0000-000000000000",
)


def official_messages() -> list[bytes]:
    with open(VECTORS, encoding="utf-8") as fh:
        return [base64.b64decode(r["message_b64"]) for r in json.load(fh)]


def fixed_messages() -> list[bytes]:
    out = []
    for alg in kmsenv.Algorithm:
        for ctx in (None, common.FIXED_CONTEXT):
            for pt in (b"", b"sixteen byte blk", bytes(range(48))):
                if alg.info.mode == "CBC" and len(pt) % 16:
                    continue
                out.append(
                    kmsenv.encrypt(
                        pt, common.FixedKeyProvider(), encryption_context=ctx, algorithm=alg, allow_unauthenticated=True
                    ).ciphertext
                )
    out.append(
        kmsenv.encrypt(
            b"three regions", common.FixedKeyProvider(ARNS3), encryption_context=common.FIXED_CONTEXT
        ).ciphertext
    )
    return out


def all_messages() -> list[bytes]:
    return official_messages() + fixed_messages()


def seeds_decode_message() -> list[bytes]:
    return [b"\x00" + m for m in all_messages()] + [b"\x01" + fixed_messages()[-1]]


def seeds_parse_header() -> list[bytes]:
    return [bytes((i % 4,)) + m for i, m in enumerate(all_messages())]


def seeds_decrypt() -> list[bytes]:
    out = []
    for m in all_messages():
        alg = kmsenv.parse_header(m).algorithm if _parses(m) else None
        flags = 0 if alg is None or alg.authenticated else 1
        out.append(bytes((flags,)) + m)
        if _parses(m) and kmsenv.parse_header(m).encryption_context:
            out.append(bytes((flags | 2,)) + m)
    return out


def _parses(m: bytes) -> bool:
    try:
        kmsenv.parse_header(m)
        return True
    except kmsenv.KmsEnvError:
        return False


def _batches() -> list[list[bytes]]:
    p = common.FixedKeyProvider()
    b1 = kmsenv.encrypt_many([b"", b"alice@example.com", b"x" * 40], p, encryption_context=common.FIXED_CONTEXT)
    b2 = kmsenv.encrypt_many([b"one", b"two"], p, algorithm=kmsenv.Algorithm.SM4_GCM_NOPADDING_128)
    b3 = kmsenv.encrypt_many([b"a", b"b"], p, algorithm=kmsenv.Algorithm.AES_GCM_NOPADDING_128)
    single = kmsenv.encrypt(b"single", p).ciphertext
    legacy = kmsenv.encrypt(
        b"legacy", p, algorithm=kmsenv.Algorithm.AES_CTR_NOPADDING_256, allow_unauthenticated=True
    ).ciphertext
    official = official_messages()
    tampered = bytearray(b1[1])
    tampered[-1] ^= 1
    return [
        b1,
        b2,
        b3,
        b1 + b2,
        [single] + b1,
        b1 + [single, b1[0]],
        [legacy, legacy],
        [b1[0], bytes(tampered)],
        official[:3],
        [official[0], b1[0]],
        [],
        [b"\x30\x00"],
    ]


def seeds_decrypt_many() -> list[bytes]:
    out = []
    for batch in _batches():
        out.append(b"\x00" + common.join_items(batch))
        out.append(b"\x01" + common.join_items(batch))
    out.append(b"\x02" + common.join_items(_batches()[0]))
    return out


def seeds_native_open_messages() -> list[bytes]:
    from fuzz_native_open_messages import AAD, HEADERS, KEYS
    from kmsenv.crypto import native

    out = []
    for i, (cipher, keylen) in enumerate(KEYS):
        key = native.NativeBackend().new_key(cipher, common.fixed_key(keylen))
        try:
            batch = key.seal_messages(HEADERS[i], AAD, [b"", b"a", bytes(range(40))])
            empty_aad = key.seal_messages(HEADERS[i], b"", [b"no aad"])
        finally:
            key.close()
        out.append(bytes((i,)) + common.join_items(batch))
        out.append(bytes((i | 4,)) + common.join_items(batch[1:]))
        out.append(bytes((i | 8,)) + common.join_items(empty_aad + batch[:1]))
    return out


def _seal_v1(header, key, col, rows=None) -> list:
    """Compact format v1 values (as kmsenv wrote them before v2; it no longer
    does): subkey "kmsenv/compact/v1/key", AAD = prefix || row id."""
    import struct

    from kmsenv import columns
    from kmsenv.crypto.pure import PureBackend

    segment, out = b"\x01" * 8, []
    sub = columns.subkey(header.algorithm, key, header, segment)
    cipher = PureBackend().new_key(header.algorithm.info.cipher, bytes(sub))
    try:
        for i in range(col.length):
            value = col.value(i)
            if value is None:
                out.append(None)
                continue
            prefix = bytes([0xC3 if rows is not None else 0xC1]) + header.ref + segment
            iv = struct.pack(">4xQ", i + 1)
            aad = prefix + (bytes(rows.value(i)) if rows is not None else b"")
            ct, tag = cipher.gcm_seal(iv, aad, bytes(value))
            out.append(prefix + iv + ct + tag)
    finally:
        cipher.close()
    return out


def seeds_open_columns() -> list[bytes]:
    from fuzz_open_columns import COLUMN, HEADERS, LEGACY_HEADERS

    from kmsenv import columns

    out = []
    values = [b"", b"a", bytes(range(40)), None]
    for i, header in enumerate(HEADERS):
        key = common.fixed_key(header.algorithm.key_len)
        col = columns.Column.from_values(values)
        rows = columns.Column.from_values([f"row-{j}".encode() for j in range(len(values))])
        legacy = LEGACY_HEADERS[i]
        for flags, sealed in (
            (i, columns.seal_compact(header.algorithm, key, header, col).values(col)),
            (i | 4, columns.seal_compact(header.algorithm, key, header, col, rows).values(col)),
            (i | 128, columns.seal_compact(header.algorithm, key, header, col, column=COLUMN).values(col)),
            (i | 4 | 128, columns.seal_compact(header.algorithm, key, header, col, rows, column=COLUMN).values(col)),
            (i | 8, columns.seal_alibaba(header.algorithm, key, header, col).values(col)),
            (i | 32 | 64, _seal_v1(legacy, key, col)),
            (i | 4 | 32 | 64, _seal_v1(legacy, key, col, rows)),
            (i | 32, _seal_v1(legacy, key, col)),  # refused: no allow_uncommitted
        ):
            items = [v for v in sealed if v is not None]  # a null is what flag 16 makes
            out.append(bytes((flags,)) + common.join_items(items))
            out.append(bytes((flags | 16,)) + common.join_items(items))
            if i == 0 and not flags & 8:
                out.append(bytes((flags | 3,)) + common.join_items(items))  # read with another key
    return out


def seeds_decrypt_stream() -> list[bytes]:
    import io

    from kmsenv import stream

    out = []
    for fmt, algs in (
        (
            "framed",
            [
                kmsenv.Algorithm.AES_GCM_NOPADDING_256,
                kmsenv.Algorithm.AES_GCM_NOPADDING_128,
                kmsenv.Algorithm.SM4_GCM_NOPADDING_128,
            ],
        ),
        (
            "alibaba-stream",
            [
                kmsenv.Algorithm.AES_GCM_NOPADDING_256,
                kmsenv.Algorithm.SM4_GCM_NOPADDING_128,
                kmsenv.Algorithm.AES_CTR_NOPADDING_128,
            ],
        ),
        ("alibaba", [kmsenv.Algorithm.AES_GCM_NOPADDING_256]),
    ):
        for alg in algs:
            for pt, frame in ((b"", 0), (b"stream " * 40, 0), (bytes(range(256)) * 3, 64)):
                src, dst = io.BytesIO(pt), io.BytesIO()
                kwargs = {"frame_size": max(frame, stream.MIN_FRAME_SIZE)} if fmt == "framed" and frame else {}
                if not alg.authenticated and fmt != "alibaba-stream":
                    continue
                try:
                    stream.encrypt_stream(
                        src,
                        dst,
                        common.FixedKeyProvider(),
                        algorithm=alg,
                        format=fmt,
                        encryption_context=common.FIXED_CONTEXT,
                        threads=1,
                        **kwargs,
                    )
                except kmsenv.KmsEnvError:
                    continue
                flags = 0 if alg.authenticated else 1
                out.append(bytes((flags,)) + dst.getvalue())
                out.append(bytes((flags | 4 | 8,)) + dst.getvalue())
    out += [b"\x00" + m for m in official_messages()[:8]]
    out += [b"\x00KMSF", b"\x00\x00\x00\x00\x01", b"\x000\x84\xff\xff\xff\xff"]
    return out


def main(out_dir: str) -> None:
    for name in common.TARGETS:
        seeds = globals()[f"seeds_{name}"]()
        d = os.path.join(out_dir, name)
        os.makedirs(d, exist_ok=True)
        for s in seeds:
            with open(os.path.join(d, "seed-" + hashlib.sha1(s).hexdigest()), "wb") as fh:
                fh.write(s)
        print(f"{name}: {len(seeds)} seeds, {sum(map(len, seeds))} bytes -> {d}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
