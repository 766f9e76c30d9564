"""encrypt_stream / decrypt_stream / open: file objects, pipes, progress,
format detection, and bounded memory on large inputs."""

from __future__ import annotations

import dataclasses
import io
import os
import threading
import tracemalloc

import pytest

import kmsenv
from kmsenv.exceptions import ConfigurationError, MessageFormatError
from kmsenv.stream import StreamResult, decrypt_stream, encrypt_stream
from kmsenv.stream import open as kopen
from stream_helpers import GCM_ALGS, FakeKmsProvider, Generated, HashingWriter, ReadOnly, WriteOnly

FORMATS = ["framed", "alibaba-stream", "alibaba"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("alg", GCM_ALGS, ids=lambda a: a.name)
def test_files_round_trip(backend, tmp_path, fmt, alg):
    provider = FakeKmsProvider()
    data = os.urandom(200_003)
    path = tmp_path / "msg.bin"
    with kopen(
        path, "wb", provider=provider, format=fmt, algorithm=alg, frame_size=4096, encryption_context={"k": "v"}
    ) as w:
        for i in range(0, len(data), 7777):
            assert w.write(data[i : i + 7777]) == len(data[i : i + 7777])
    assert w.result.format == fmt and w.result.bytes_in == len(data)
    assert w.result.bytes_out == path.stat().st_size
    with kopen(str(path), "rb", provider=provider, expected_encryption_context={"k": "v"}) as r:
        assert r.format == fmt and r.header.algorithm == alg
        parts = []
        while True:
            piece = r.read(5000)
            if not piece:
                break
            parts.append(piece)
    assert b"".join(parts) == data
    with kopen(path, "rb", provider=provider) as r:
        assert r.read() == data  # readall through io.RawIOBase


@pytest.mark.parametrize("size", [0, 1])
def test_open_tiny(backend, size):
    provider = FakeKmsProvider()
    buf = io.BytesIO()
    with kopen(buf, "wb", provider=provider) as w:
        w.write(b"z" * size)
    assert not buf.closed  # a file object passed in is left open
    buf.seek(0)
    with kopen(buf, "rb", provider=provider) as r:
        assert r.read() == b"z" * size


def test_writer_exception_leaves_unreadable_message():
    provider = FakeKmsProvider()
    buf = io.BytesIO()
    with pytest.raises(RuntimeError):
        with kopen(buf, "wb", provider=provider, frame_size=1024) as w:
            w.write(os.urandom(5000))
            raise RuntimeError("boom")
    # No final frame was written: the prefix must not pass for a whole message.
    with pytest.raises(MessageFormatError, match="final frame"):
        decrypt_stream(io.BytesIO(buf.getvalue()), io.BytesIO(), provider)


def test_unclosed_writer_is_not_completed_by_gc():
    provider = FakeKmsProvider()
    buf = io.BytesIO()
    w = kopen(buf, "wb", provider=provider, frame_size=1024)
    w.write(os.urandom(3000))
    del w
    with pytest.raises(MessageFormatError):
        decrypt_stream(io.BytesIO(buf.getvalue()), io.BytesIO(), provider)


@pytest.mark.parametrize("fmt", FORMATS)
def test_pipes_both_ends(backend, fmt):
    """src and dst are OS pipes (not seekable), fed and drained by threads."""
    provider = FakeKmsProvider()
    data = os.urandom(3 * 1024 * 1024 + 11)
    ct_r, ct_w = os.pipe()
    pt_r, pt_w = os.pipe()
    in_r, in_w = os.pipe()
    got: dict[str, object] = {}

    def feed():
        with os.fdopen(in_w, "wb") as f:
            f.write(data)

    def encrypt():
        with os.fdopen(in_r, "rb") as src, os.fdopen(ct_w, "wb") as dst:
            got["enc"] = encrypt_stream(src, dst, provider, format=fmt, frame_size=65536)

    def drain():
        with os.fdopen(pt_r, "rb") as f:
            got["plain"] = f.read()

    threads = [threading.Thread(target=t) for t in (feed, encrypt, drain)]
    for t in threads:
        t.start()
    with os.fdopen(ct_r, "rb") as src, os.fdopen(pt_w, "wb") as dst:
        got["dec"] = decrypt_stream(src, dst, provider)
    for t in threads:
        t.join()
    assert got["plain"] == data
    assert got["dec"].format == fmt and got["dec"].bytes_in == got["enc"].bytes_out


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrappers_without_seek_and_short_reads(backend, fmt):
    provider = FakeKmsProvider()
    data = os.urandom(100_000)
    sink = WriteOnly()
    encrypt_stream(ReadOnly(data, step=999), sink, provider, format=fmt, frame_size=1024)
    out = WriteOnly()
    decrypt_stream(ReadOnly(sink.getvalue(), step=333), out, provider)
    assert out.getvalue() == data


@pytest.mark.parametrize("fmt", FORMATS)
def test_progress_and_result(fmt):
    provider = FakeKmsProvider()
    data = os.urandom(2_500_000)
    seen: list[int] = []
    out = io.BytesIO()
    r = encrypt_stream(io.BytesIO(data), out, provider, format=fmt, progress=seen.append)
    assert seen and seen == sorted(seen) and seen[-1] == len(data) == r.bytes_in
    assert isinstance(r, StreamResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.bytes_in = 0  # type: ignore[misc]
    seen2: list[int] = []
    r2 = decrypt_stream(io.BytesIO(out.getvalue()), io.BytesIO(), provider, progress=seen2.append)
    assert seen2 == sorted(seen2) and seen2[-1] == len(out.getvalue()) == r2.bytes_in
    assert r2.bytes_out == len(data) and r2.format == fmt
    if fmt == "framed":
        assert isinstance(r2.header, kmsenv.stream.FramedHeader)
    else:
        assert isinstance(r2.header, kmsenv.MessageHeader)


def test_reads_one_shot_der_messages():
    provider = FakeKmsProvider()
    message = kmsenv.encrypt(b"one shot", provider).ciphertext
    out = io.BytesIO()
    r = decrypt_stream(io.BytesIO(message), out, provider)
    assert out.getvalue() == b"one shot" and r.format == "alibaba"
    with pytest.raises(MessageFormatError, match="trailing"):
        decrypt_stream(io.BytesIO(message + b"\x00"), io.BytesIO(), provider)
    with pytest.raises(MessageFormatError):
        decrypt_stream(io.BytesIO(message[:-1]), io.BytesIO(), provider)


@pytest.mark.parametrize("junk", [b"", b"K", b"KMS", b"\x00\x00\x00\x02", b"PK\x03\x04", b"\x00\x00"])
def test_unknown_or_empty_input(junk):
    with pytest.raises(MessageFormatError):
        decrypt_stream(io.BytesIO(junk), io.BytesIO(), FakeKmsProvider())


def test_argument_errors():
    p = FakeKmsProvider()
    with pytest.raises(ConfigurationError):
        encrypt_stream(io.BytesIO(b""), io.BytesIO(), p, format="zip")
    with pytest.raises(ConfigurationError):
        encrypt_stream(io.BytesIO(b""), io.BytesIO(), p, threads=0)
    with pytest.raises(ConfigurationError):
        encrypt_stream(io.StringIO("text"), io.BytesIO(), p)
    with pytest.raises(ConfigurationError):
        kopen(io.BytesIO(), "w", provider=p)
    with pytest.raises(ConfigurationError):
        encrypt_stream(io.BytesIO(b""), io.BytesIO(), p, progress=42)


def _large_round_trip(size: int, fmt: str) -> tuple[int, int]:
    """Encrypt a generated input into a pipe, decrypt from it into a hashing
    writer; return (tracemalloc peak, bytes decrypted) and check the hashes."""
    provider = FakeKmsProvider()
    gen = Generated(size)
    sink = HashingWriter()
    rfd, wfd = os.pipe()
    errors: list[BaseException] = []

    def encrypt():
        try:
            with os.fdopen(wfd, "wb") as dst:
                encrypt_stream(gen, dst, provider, format=fmt)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    tracemalloc.start()
    try:
        t = threading.Thread(target=encrypt)
        t.start()
        with os.fdopen(rfd, "rb") as src:
            decrypt_stream(src, sink, provider)
        t.join()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not errors
    assert sink.count == size and sink.sha.digest() == gen.sha.digest()
    return peak, sink.count


def test_256_mib_bounded_memory():
    peak, n = _large_round_trip(256 << 20, "framed")
    # Batches of 8 MiB in and out on each side: far below the 256 MiB streamed.
    assert peak < 64 << 20, peak


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["framed", "alibaba-stream", "alibaba"])
def test_2_gib_bounded_memory(fmt):
    peak, n = _large_round_trip(2 << 30, fmt)
    assert peak < 64 << 20, peak
