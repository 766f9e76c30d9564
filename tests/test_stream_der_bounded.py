"""format="alibaba" through the stream API in bounded memory (issue 18 §2).

The message is the official SDKs' one-shot DER message, byte for byte what
kmsenv.encrypt makes: its lengths are written first from the input file's
size (an input that grows or shrinks meanwhile is refused), or, for a pipe,
after spooling the ciphertext privately (one INFO line says so). Decryption
authenticates the header first, verifies the body's tag in a first pass
into a private spool and decrypts from the spool: nothing is released from
a truncated or altered message, and a file changed between the passes
cannot feed the second one."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading

import pytest

import kmsenv
from kmsenv import engine
from kmsenv.exceptions import (
    AuthenticationError,
    ConfigurationError,
    KmsEnvError,
    MessageFormatError,
    UnauthenticatedAlgorithmError,
)
from kmsenv.message import der
from kmsenv.stream import _rand, alibaba_stream, decrypt_stream, encrypt_stream
from kms_fixtures import *  # noqa: F401,F403
from kms_fixtures import kms_calls, kmsenv_import_root
from stream_helpers import FakeKmsProvider, ReadOnly, WriteOnly, spool, temp_dir  # noqa: F401 (fixtures)
from vectors import official_vectors

CHUNK = alibaba_stream.CHUNK
CTX = {"tenant": "t-1", "租户": "ａ"}
TAG_TLV = 2 + 16  # 04 10 <tag>: a GCM message's last bytes
VECTORS = official_vectors()


@pytest.fixture
def provider(kms, cmks):
    return kmsenv.KmsKeyProvider(cmks.hz, kms=kms)


def _feed_pipe(data: bytes):
    """A pipe's read end as a binary file, fed by a thread: no size, no seek."""
    rfd, wfd = os.pipe()

    def feed():
        with os.fdopen(wfd, "wb") as f:
            f.write(data)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    return os.fdopen(rfd, "rb"), t


def _source(kind: str, data: bytes, tmp_path):
    """(binary file object yielding ``data``, cleanup). ``file`` is a regular
    file opened with open() (length known); the others have no known length."""
    if kind == "bytesio":
        return io.BytesIO(data), lambda: None
    if kind == "file":
        path = tmp_path / "input.bin"
        path.write_bytes(data)
        f = open(path, "rb")  # noqa: SIM115 - closed by the cleanup
        return f, f.close
    if kind == "readonly":  # a duck-typed reader with short reads
        return ReadOnly(data, step=70_000), lambda: None
    if kind == "pipe":
        f, t = _feed_pipe(data)

        def done():
            f.close()
            t.join()

        return f, done
    raise AssertionError(kind)


def _stream_encrypt(kind: str, data: bytes, provider, tmp_path, **kw):
    if kind == "writer":  # kmsenv.open(..., "wb"): a push-style writer never knows the length
        out = io.BytesIO()
        with kmsenv.open(out, "wb", provider=provider, format="alibaba", **kw) as w:
            for pos in range(0, len(data), 100_000):
                w.write(data[pos : pos + 100_000])
        return out.getvalue(), w.result
    src, done = _source(kind, data, tmp_path)
    try:
        out = io.BytesIO()
        result = encrypt_stream(src, out, provider, format="alibaba", **kw)
    finally:
        done()
    return out.getvalue(), result


def _stream_decrypt(kind: str, message: bytes, provider, tmp_path, **kw) -> tuple[bytes, object]:
    src, done = _source(kind, message, tmp_path)
    sink = WriteOnly()
    try:
        result = decrypt_stream(src, sink, provider, **kw)
    finally:
        done()
    return sink.getvalue(), result


def _refused(message: bytes, provider, kind: str = "bytesio", **kw) -> type[BaseException]:
    """Decrypt through the stream, which must fail having released nothing;
    return the error's class."""
    src = io.BytesIO(message) if kind == "bytesio" else ReadOnly(message, step=1000)
    sink = WriteOnly()
    with pytest.raises(KmsEnvError) as err:
        decrypt_stream(src, sink, provider, **kw)
    assert sink.getvalue() == b"", "plaintext released from a message that failed"
    return type(err.value)


def _one_shot_error(message: bytes, provider, **kw) -> type[BaseException]:
    with pytest.raises(KmsEnvError) as err:
        kmsenv.decrypt(message, provider, **kw)
    return type(err.value)


# ---------------------------------------------------------------- interop


@pytest.mark.parametrize("size", [0, 1, CHUNK + 17])
@pytest.mark.parametrize("kind", ["bytesio", "file", "readonly", "writer"])
def test_stream_encrypted_message_is_read_by_kmsenv_decrypt(backend, provider, tmp_path, temp_dir, kind, size):
    data = os.urandom(size)
    message, result = _stream_encrypt(kind, data, provider, tmp_path, encryption_context=CTX)
    assert kmsenv.decrypt(message, provider, expected_encryption_context=CTX).plaintext == data
    assert result.format == "alibaba" and result.bytes_in == size and result.bytes_out == len(message)
    header = kmsenv.parse_header(message)
    assert result.header == header and result.header.encoded == header.encoded
    assert os.listdir(temp_dir) == []  # any spool is gone


@pytest.mark.parametrize(
    "alg", [kmsenv.Algorithm.AES_GCM_NOPADDING_128, kmsenv.Algorithm.SM4_GCM_NOPADDING_128], ids=lambda a: a.name
)
def test_other_gcm_algorithms(backend, kms, cmks, tmp_path, alg):
    cmk = cmks.sm4 if alg.info.cipher == "SM4" else cmks.hz
    provider = kmsenv.KmsKeyProvider(cmk, kms=kms, algorithm=alg)
    data = os.urandom(CHUNK + 3)
    for kind in ("file", "pipe"):
        message, _ = _stream_encrypt(kind, data, provider, tmp_path)
        assert kmsenv.parse_header(message).algorithm == alg
        assert kmsenv.decrypt(message, provider).plaintext == data
        assert _stream_decrypt(kind, message, provider, tmp_path)[0] == data


@pytest.mark.parametrize("size", [0, 1, 3 * CHUNK + 5])
@pytest.mark.parametrize("kind", ["bytesio", "file", "readonly", "pipe"])
def test_kmsenv_encrypt_message_is_read_by_the_stream(backend, provider, tmp_path, temp_dir, spool, kind, size):
    data = os.urandom(size)
    message = kmsenv.encrypt(data, provider, encryption_context=CTX).ciphertext
    plain, result = _stream_decrypt(kind, message, provider, tmp_path, expected_encryption_context=CTX)
    assert plain == data
    assert result.format == "alibaba" and result.bytes_in == len(message) and result.bytes_out == size
    with kmsenv.open(io.BytesIO(message), "rb", provider=provider) as r:
        assert r.read() == data
    assert os.listdir(temp_dir) == []


@pytest.mark.parametrize("kind", ["bytesio", "file", "readonly", "pipe", "writer"])
def test_same_bytes_as_kmsenv_encrypt(backend, kms, cmks, tmp_path, monkeypatch, kind):
    """With the IVs fixed (both the stream's and the one-shot's source) and
    one data key (a cache in front of LocalKms), the stream writes exactly
    the bytes kmsenv.encrypt does: same DER, same header fields."""
    ivs = hashlib.sha256(b"fixed ivs").digest()[:24]
    monkeypatch.setattr(engine, "_iv_pair", lambda: ivs)
    monkeypatch.setattr(_rand, "random_bytes", lambda n: ivs[:n])
    provider = kmsenv.CachingProvider(kmsenv.KmsKeyProvider(cmks.hz, cmks.bj, kms=kms), kmsenv.DataKeyCache())
    data = os.urandom(2 * CHUNK + 99)
    expected = kmsenv.encrypt(data, provider, encryption_context=CTX).ciphertext
    message, _ = _stream_encrypt(kind, data, provider, tmp_path, encryption_context=CTX)
    assert message == expected


def test_legacy_algorithms(backend, provider, tmp_path):
    """CBC/CTR: not written by the stream API (as before); read whole, as
    before, and only with allow_unauthenticated."""
    with pytest.raises(ConfigurationError):
        _stream_encrypt("bytesio", b"x", provider, tmp_path, algorithm=kmsenv.Algorithm.AES_CBC_PKCS5_256)
    data = os.urandom(50_000)
    message = kmsenv.encrypt(
        data, provider, algorithm=kmsenv.Algorithm.AES_CTR_NOPADDING_256, allow_unauthenticated=True
    ).ciphertext
    for kind in ("bytesio", "pipe"):
        assert _refused(message, provider) is UnauthenticatedAlgorithmError
        assert _stream_decrypt(kind, message, provider, tmp_path, allow_unauthenticated=True)[0] == data
    assert _refused(message + b"\x00", provider, allow_unauthenticated=True) is MessageFormatError


@pytest.mark.parametrize("v", VECTORS, ids=[v["description"] + " " + str(v.get("tamper", "")) for v in VECTORS])
def test_official_vectors_through_the_stream(v, backend):
    """Every message of Alibaba's Python SDK behaves through decrypt_stream
    (in memory and from a reader) as kmsenv_expect says of kmsenv.decrypt."""
    expect = v["kmsenv_expect"]
    arns = [v["decrypt_with_arn"]] if v.get("decrypt_with_arn") else v["cmk_arns"]
    errors = {
        "error:authentication": AuthenticationError,
        "error:format": MessageFormatError,
        "error:no-usable-key": kmsenv.NoUsableKeyError,
    }
    for kind in ("bytesio", "readonly"):
        provider = FakeKmsProvider(*arns)  # the vectors' EDKs are wrapped the FakeKms way
        src = io.BytesIO(v["message"]) if kind == "bytesio" else ReadOnly(v["message"], step=7)
        if expect in ("ok", "ok-unauthenticated"):
            if expect == "ok-unauthenticated":
                assert _refused(v["message"], provider, kind) is UnauthenticatedAlgorithmError
                assert provider.decrypt_calls == 0
            out = io.BytesIO()
            r = decrypt_stream(src, out, provider, allow_unauthenticated=expect != "ok")
            assert out.getvalue() == v["plaintext"] and int(r.header.algorithm) == v["algorithm"]["id"]
            assert dict(r.header.encryption_context) == v["encryption_context"]
        else:
            assert issubclass(_refused(v["message"], provider, kind, allow_unauthenticated=True), errors[expect])


# ---------------------------------------------------------------- damaged messages


def test_every_truncation_is_refused_with_nothing_released(backend, provider):
    message = kmsenv.encrypt(os.urandom(40), provider, encryption_context={"k": "v"}).ciphertext
    for cut in range(len(message)):
        for kind in ("bytesio", "readonly"):
            assert _refused(message[:cut], provider, kind) is MessageFormatError, cut


@pytest.mark.parametrize("kind", ["bytesio", "readonly"])
def test_truncated_or_extended_large_message(backend, provider, temp_dir, spool, kind):
    data = os.urandom(3 * CHUNK + 7)
    message = kmsenv.encrypt(data, provider).ciphertext
    ct_start = len(message) - TAG_TLV - len(data)
    for cut in (ct_start + 1, ct_start + CHUNK, ct_start + len(data) - 1, len(message) - TAG_TLV, len(message) - 1):
        assert _refused(message[:cut], provider, kind) is MessageFormatError
    assert _refused(message + b"\x00", provider, kind) is MessageFormatError  # trailing data
    assert os.listdir(temp_dir) == []


def test_every_bit_flip_is_refused_as_kmsenv_decrypt_refuses_it(backend, provider):
    """A flipped bit anywhere (header, framing, IVs, ciphertext, tags) is
    refused with the error kmsenv.decrypt gives and nothing is released."""
    message = kmsenv.encrypt(os.urandom(40), provider, encryption_context={"k": "v"}).ciphertext
    for pos in range(len(message)):
        damaged = bytearray(message)
        damaged[pos] ^= 1 << (pos % 8)
        damaged = bytes(damaged)
        assert _refused(damaged, provider) is _one_shot_error(damaged, provider), pos


@pytest.mark.parametrize("kind", ["bytesio", "readonly"])
def test_bit_flips_in_a_large_body(backend, provider, temp_dir, spool, kind):
    data = os.urandom(3 * CHUNK + 7)
    message = kmsenv.encrypt(data, provider).ciphertext
    ct_start = len(message) - TAG_TLV - len(data)
    for pos in (ct_start, ct_start + CHUNK, ct_start + len(data) - 1, len(message) - 1):
        damaged = bytearray(message)
        damaged[pos] ^= 0x80
        assert _refused(bytes(damaged), provider, kind) is AuthenticationError
    assert os.listdir(temp_dir) == []


def test_the_header_is_authenticated_before_any_ciphertext_is_read(backend, provider, tmp_path):
    data = os.urandom(CHUNK + 1)
    message = bytearray(kmsenv.encrypt(data, provider).ciphertext)
    header = kmsenv.parse_header(bytes(message))
    message[4 + len(header.encoded) - 1] ^= 1  # the header tag's last byte
    path = tmp_path / "msg"
    path.write_bytes(message)
    seen: list[int] = []
    with open(path, "rb") as src, pytest.raises(AuthenticationError, match="header"):
        decrypt_stream(src, WriteOnly(), provider, progress=seen.append)
    assert seen[-1] == len(message) - TAG_TLV - len(data)  # up to the ciphertext, not one byte of it


@pytest.mark.parametrize("claim", [b"\x30\x84\xff\xff\xff\xff", b"\x30\x85\x01\x00\x00\x00\x00", b"\x30\x80"])
def test_hostile_lengths_are_refused_before_any_allocation(provider, claim):
    assert _refused(claim + b"\x30\x84\x7f\xff\xff\xff", provider) is MessageFormatError


def test_header_larger_than_the_edk_limit_allows(provider):
    """A header claiming more than max_encrypted_data_keys EDKs could fill is
    refused from its length, before it is read."""
    big = 3 * (2048 + 65536 + 32) + (1 << 20) + 1
    head = b"\x30" + der.encode_length(big + 100) + b"\x30" + der.encode_length(big)
    sink = WriteOnly()
    with pytest.raises(MessageFormatError, match="max_encrypted_data_keys"):
        decrypt_stream(io.BytesIO(head + bytes(64)), sink, provider, max_encrypted_data_keys=3)


# ---------------------------------------------------------------- inputs that change


@pytest.mark.parametrize("opened", ["decrypt_stream", "open"])
def test_a_file_changed_between_the_passes_releases_only_what_was_verified(
    backend, provider, tmp_path, temp_dir, spool, opened
):
    data = os.urandom(3 * CHUNK + 123)
    message = kmsenv.encrypt(data, provider).ciphertext
    path = tmp_path / "msg.kms"
    path.write_bytes(message)
    ct_start = len(message) - TAG_TLV - len(data)
    spots = [ct_start + 10, ct_start + len(data) // 2, len(message) - TAG_TLV - 1]

    def another_writer() -> None:
        # Flips bits in place (CTR would flip the same plaintext bits).
        with open(path, "r+b") as f:
            for off in spots:
                f.seek(off)
                byte = f.read(1)[0]
                f.seek(off)
                f.write(bytes([byte ^ 1]))

    if opened == "open":
        with kmsenv.open(path, "rb", provider=provider) as r:  # pass 1 is done when open returns
            another_writer()
            assert r.read() == data
    else:

        def progress(consumed: int) -> None:
            if consumed == len(message):  # pass 1 has read everything
                another_writer()

        out = tmp_path / "plain"
        with open(path, "rb") as src, open(out, "wb") as dst:
            decrypt_stream(src, dst, provider, progress=progress)
        assert out.read_bytes() == data
    assert path.read_bytes() != message
    assert os.listdir(temp_dir) == []


@pytest.mark.parametrize("change", ["grows", "shrinks"])
def test_an_input_file_that_changes_size_while_encrypted_is_refused(backend, provider, tmp_path, change):
    from kmsenv import InputChangedError

    size = 3 * CHUNK
    path = tmp_path / "input.bin"
    path.write_bytes(os.urandom(size))

    def another_writer(consumed: int) -> None:
        if consumed == CHUNK:  # after the first read: the size was announced already
            with open(path, "r+b") as f:
                if change == "grows":
                    f.seek(0, os.SEEK_END)
                    f.write(b"more")
                else:
                    f.truncate(2 * CHUNK)

    out = io.BytesIO()
    said = {"grows": "grew", "shrinks": "shrank"}[change]
    with open(path, "rb") as src, pytest.raises(InputChangedError, match=said):
        encrypt_stream(src, out, provider, format="alibaba", progress=another_writer)
    partial = out.getvalue()
    # Everything up to the change, and nothing after: the body's lengths
    # announce the whole file, the ciphertext stops where the input changed,
    # and the tag (the message's last bytes) was never written.
    prefix, announced = _body_prefix_len(partial)
    assert announced == size
    assert len(partial) == prefix + (size if change == "grows" else 2 * CHUNK)
    for reader in (
        lambda m: kmsenv.decrypt(m, provider),
        lambda m: decrypt_stream(io.BytesIO(m), WriteOnly(), provider),
    ):
        with pytest.raises(MessageFormatError):
            reader(partial)


def _body_prefix_len(message: bytes) -> tuple[int, int]:
    """(bytes before the ciphertext, the ciphertext length announced) of a
    possibly incomplete DER message: outer TL, header, body TL, IV, ciphertext TL."""

    def tl(pos: int) -> tuple[int, int]:
        first = message[pos + 1]
        if first < 0x80:
            return 2, first
        n = first & 0x7F
        return 2 + n, int.from_bytes(message[pos + 2 : pos + 2 + n], "big")

    pos = tl(0)[0]
    head, header_len = tl(pos)
    pos += head + header_len
    pos += tl(pos)[0]  # the body's tag and length
    head, iv_len = tl(pos)
    pos += head + iv_len
    head, ct_len = tl(pos)
    return pos + head, ct_len


def test_a_too_large_input_is_refused_before_any_kms_call(provider, local_kms, tmp_path):
    from kmsenv.stream import der_stream

    path = tmp_path / "sparse.bin"
    with open(path, "wb") as f:
        f.truncate(der_stream.MAX_DER_LENGTH + 1)  # sparse: no disk used
    before = kms_calls(local_kms)
    out = io.BytesIO()
    with open(path, "rb") as src, pytest.raises(ConfigurationError, match="framed or alibaba-stream"):
        encrypt_stream(src, out, provider, format="alibaba")
    assert out.getvalue() == b"" and kms_calls(local_kms) == before


# ---------------------------------------------------------------- pipes: spooled, one line


def test_a_pipe_is_spooled_and_said_so_in_one_line(backend, provider, tmp_path, temp_dir, monkeypatch, caplog):
    from kmsenv.stream.der_stream import UNKNOWN_LENGTH_NOTE

    monkeypatch.setattr(alibaba_stream, "SPOOL_MEMORY", 64 * 1024)  # the spool goes to a file
    data = os.urandom(3 * CHUNK + 1)
    listings = []
    caplog.set_level(logging.INFO, logger="kmsenv")
    src, t = _feed_pipe(data)
    out = io.BytesIO()
    with src:
        encrypt_stream(
            src,
            out,
            provider,
            format="alibaba",
            progress=lambda n: listings.append(os.listdir(temp_dir)) if n > CHUNK else None,
        )
    t.join()
    notes = [r for r in caplog.records if r.name == "kmsenv" and r.levelno == logging.INFO]
    assert [r.getMessage() for r in notes] == [UNKNOWN_LENGTH_NOTE]
    assert "\n" not in UNKNOWN_LENGTH_NOTE
    assert listings and all(listing == [] for listing in listings)  # the spool has no name
    assert os.listdir(temp_dir) == []
    assert kmsenv.decrypt(out.getvalue(), provider).plaintext == data

    caplog.clear()
    path = tmp_path / "in.bin"
    path.write_bytes(data)
    with open(path, "rb") as f:  # a regular file: its length is known, nothing to say
        encrypt_stream(f, io.BytesIO(), provider, format="alibaba")
    assert not [r for r in caplog.records if r.name == "kmsenv"]


def test_input_length_is_trusted_only_for_plain_files(tmp_path):
    from kmsenv.stream.der_stream import input_length

    path = tmp_path / "f"
    path.write_bytes(b"x" * 1000)
    with open(path, "rb") as f:
        f.read(10)
        assert input_length(f) == 990
    with open(path, "rb", buffering=0) as f:
        assert input_length(f) == 1000
    with open(path, "r+b") as f:
        assert input_length(f) == 1000
    import gzip

    with gzip.open(tmp_path / "g.gz", "wb") as g:
        g.write(b"y" * 5000)
    with gzip.open(tmp_path / "g.gz", "rb") as g:  # its fileno() is the compressed file's
        assert input_length(g) is None
    (tmp_path / "empty").write_bytes(b"")
    with open(tmp_path / "empty", "rb") as f:  # procfs files are regular files of size 0 with content
        assert input_length(f) is None
    rfd, wfd = os.pipe()
    with os.fdopen(rfd, "rb") as r, os.fdopen(wfd, "wb"):
        assert input_length(r) is None


# ---------------------------------------------------------------- memory

_CHILD = textwrap.dedent("""
    import io, json, os, resource, sys, threading
    import kmsenv
    from kmsenv.kms import Kms

    def hwm():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) * 1024

    info = json.loads(os.environ["DER_TEST_KMS"])
    kms = Kms(access_key_id=info["id"], access_key_secret=info["secret"], endpoints=info["endpoints"])
    provider = kmsenv.KmsKeyProvider(info["arn"], kms=kms)
    plain, message, out = sys.argv[1:4]
    warm = io.BytesIO()
    kmsenv.encrypt_stream(io.BytesIO(b"warm"), warm, provider, format="alibaba")
    kmsenv.decrypt_stream(io.BytesIO(warm.getvalue()), io.BytesIO(), provider)
    ready = hwm()
    peaks = {}
    with open(plain, "rb") as src, open(message, "wb") as dst:
        kmsenv.encrypt_stream(src, dst, provider, format="alibaba")
    peaks["encrypt file"] = hwm() - ready
    with open(message, "rb") as src, open(out, "wb") as dst:
        kmsenv.decrypt_stream(src, dst, provider)
    peaks["decrypt file"] = hwm() - ready
    rfd, wfd = os.pipe()
    def feed():
        with open(plain, "rb") as f, os.fdopen(wfd, "wb") as w:
            while chunk := f.read(1 << 20):
                w.write(chunk)
    t = threading.Thread(target=feed)
    t.start()
    with os.fdopen(rfd, "rb") as src, open(message, "wb") as dst:
        kmsenv.encrypt_stream(src, dst, provider, format="alibaba")
    t.join()
    peaks["encrypt pipe"] = hwm() - ready
    print(json.dumps(peaks))
""")


@pytest.mark.slow
def test_512_mib_in_bounded_memory(local_kms, cmks, tmp_path):
    """A fresh process encrypts and decrypts 512 MiB file to file (and
    encrypts it from a pipe): its peak RSS grows by far less than the data
    (the old in-memory path took about 3x the input)."""
    size = 512 << 20
    plain, message, out = tmp_path / "plain", tmp_path / "message", tmp_path / "out"
    try:
        sha = hashlib.sha256()
        block = bytearray(os.urandom(1 << 20))
        with open(plain, "wb") as f:
            for i in range(size >> 20):
                block[:4] = i.to_bytes(4, "little")
                f.write(block)
                sha.update(block)
        env = dict(
            os.environ,
            DER_TEST_KMS=json.dumps(
                {
                    "id": local_kms.access_key_id,
                    "secret": local_kms.access_key_secret,
                    "endpoints": local_kms.endpoints,
                    "arn": cmks.hz,
                }
            ),
        )
        root = kmsenv_import_root()
        if root:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env["TMPDIR"] = str(tmp_path)  # the pipe's ciphertext spool
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(plain), str(message), str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr
        peaks = json.loads(proc.stdout)
        assert set(peaks) == {"encrypt file", "encrypt pipe", "decrypt file"}
        for step, growth in peaks.items():
            assert growth < 100 * 1000 * 1000, (step, growth)
        digest = hashlib.sha256()
        with open(out, "rb") as f:
            while chunk := f.read(8 << 20):
                digest.update(chunk)
        assert digest.digest() == sha.digest()
        assert size < os.path.getsize(message) < size + 4096  # the pipe's message, written whole
    finally:  # pytest keeps the last runs' tmp_path: not 1.5 GB of them
        for path in (plain, message, out):
            path.unlink(missing_ok=True)
