"""The framed format's in-memory fast path (an io.BytesIO is sealed and opened
where it lies) and its reusable batch buffers: same bytes as the buffered
path, the source left as a read would leave it, and no plaintext kept."""

from __future__ import annotations

import io
import os

import pytest

import kmsenv
from kmsenv.exceptions import AuthenticationError, MessageFormatError
from kmsenv.stream import _buffers, _rand, decrypt_stream, encrypt_stream, framed
from stream_helpers import FakeKmsProvider, FixedKeyProvider, counter_random

FS = 1024
CTX = {"tenant": "acme"}
MARK = b"kmsenv-plaintext-marker!"  # what must never be found in a kept buffer


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(framed, "BATCH_BYTES", 4 * FS)
    _buffers.release()
    yield
    _buffers.release()


def _encrypt(src, key: bytes, monkeypatch, **kw) -> bytes:
    monkeypatch.setattr(_rand, "random_bytes", counter_random())
    out = io.BytesIO()
    encrypt_stream(src, out, FixedKeyProvider(key), encryption_context=CTX, frame_size=FS, **kw)
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, FS, 4 * FS - 1, 4 * FS, 4 * FS + 1, 8 * FS, 8 * FS + 5, 13 * FS + 77])
@pytest.mark.parametrize("threads", [1, 2])
def test_in_place_and_buffered_write_the_same_bytes(backend, small_batches, monkeypatch, size, threads):
    key = os.urandom(32)
    data = os.urandom(size)
    in_place = _encrypt(io.BytesIO(data), key, monkeypatch, threads=threads)
    buffered = _encrypt(io.BufferedReader(io.BytesIO(data)), key, monkeypatch, threads=threads)
    assert in_place == buffered
    for src in (io.BytesIO(in_place), io.BufferedReader(io.BytesIO(in_place))):
        out = io.BytesIO()
        decrypt_stream(src, out, FixedKeyProvider(key), threads=threads)
        assert out.getvalue() == data


def test_source_is_left_as_a_read_leaves_it(backend, small_batches):
    provider = FakeKmsProvider()
    data = os.urandom(9 * FS + 3)
    src = io.BytesIO(b"skip me" + data)
    src.seek(7)
    seen: list[int] = []
    out = io.BytesIO()
    r = encrypt_stream(src, out, provider, encryption_context=CTX, frame_size=FS, progress=seen.append)
    assert r.bytes_in == len(data) and src.tell() == 7 + len(data)
    assert seen == sorted(seen) and seen[-1] == len(data) and len(seen) >= 3  # one report per batch
    src.write(b"still writable")  # no buffer export left behind

    message = out.getvalue()
    msrc = io.BytesIO(message + b"next record")
    plain = io.BytesIO()
    with pytest.raises(MessageFormatError, match="trailing data"):
        decrypt_stream(msrc, plain, provider)
    msrc = io.BytesIO(message)
    plain = io.BytesIO()
    seen.clear()
    r = decrypt_stream(msrc, plain, provider, progress=seen.append)
    assert plain.getvalue() == data and msrc.tell() == len(message) and seen[-1] == len(message)
    msrc.write(b"x")


def test_in_place_decrypt_releases_only_verified_batches(backend, small_batches):
    provider = FakeKmsProvider()
    data = os.urandom(10 * FS)
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, provider, encryption_context=CTX, frame_size=FS)
    message = bytearray(out.getvalue())
    message[-(3 * FS)] ^= 1  # inside the last batch
    plain = io.BytesIO()
    with pytest.raises(AuthenticationError):
        decrypt_stream(io.BytesIO(bytes(message)), plain, provider)
    released = plain.getvalue()
    assert released == data[: len(released)] and 0 < len(released) <= 8 * FS


def _kept_buffers() -> list[bytearray]:
    with _buffers._lock:
        return list(_buffers._free)


@pytest.mark.parametrize("in_memory", [True, False])
def test_kept_buffers_hold_no_plaintext(backend, small_batches, in_memory):
    provider = FakeKmsProvider()
    data = MARK * (30 * FS // len(MARK))
    wrap = io.BytesIO if in_memory else (lambda b: io.BufferedReader(io.BytesIO(b)))
    out = io.BytesIO()
    encrypt_stream(wrap(data), out, provider, encryption_context=CTX, frame_size=FS)
    plain = io.BytesIO()
    decrypt_stream(wrap(out.getvalue()), plain, provider)
    assert plain.getvalue() == data
    kept = _kept_buffers()
    assert kept and _buffers.held() == sum(map(len, kept)) <= _buffers.MAX_KEPT_BYTES
    assert not any(MARK in bytes(buf) for buf in kept)
    assert kmsenv.stream.release_buffers() > 0 and _buffers.held() == 0


def test_buffer_a_sink_kept_a_view_of_is_not_reused(backend, small_batches):
    class Hoarder:
        def __init__(self):
            self.views = []

        def write(self, b):
            self.views.append(b)  # keeps the view itself, not a copy
            return len(b)

    provider = FakeKmsProvider()
    sink = Hoarder()
    encrypt_stream(io.BytesIO(os.urandom(5 * FS)), sink, provider, encryption_context=CTX, frame_size=FS)
    kept_ids = {id(b.obj) for b in sink.views if isinstance(b, memoryview)}
    assert kept_ids and not kept_ids & {id(b) for b in _kept_buffers()}


def test_buffers_are_reused_and_bounded(backend, small_batches):
    provider = FakeKmsProvider()
    for _ in range(6):
        out = io.BytesIO()
        encrypt_stream(
            io.BufferedReader(io.BytesIO(os.urandom(6 * FS))), out, provider, encryption_context=CTX, frame_size=FS
        )
        decrypt_stream(io.BufferedReader(io.BytesIO(out.getvalue())), io.BytesIO(), provider)
    kept = _kept_buffers()
    assert 0 < len(kept) <= _buffers.MAX_KEPT_BUFFERS
    first = kept[0]
    taken = _buffers.take(len(first))
    assert taken is first  # a stream of the same shape gets it back
    _buffers.give_back(taken)
    _buffers.give_back(taken)  # twice is harmless
    assert sum(b is taken for b in _kept_buffers()) == 1


def test_open_reader_keeps_the_source_writable(backend):
    """kmsenv.open reads through the batch buffers: the caller's BytesIO is
    not pinned while the reader is open."""
    provider = FakeKmsProvider()
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(b"abc" * 1000), out, provider, encryption_context=CTX)
    src = io.BytesIO(out.getvalue())
    with kmsenv.stream.open(src, "rb", provider=provider) as reader:
        assert reader.read(3) == b"abc"
        src.seek(0, io.SEEK_END)
        src.write(b"")  # no export, no BufferError


class FailingSink:
    """Accepts ``ok`` writes, then fails like a full disk; records the thread
    of each write. It claims an OS file descriptor (as a socket or pipe
    wrapper would), which is what makes kmsenv write on a helper thread."""

    def __init__(self, ok: int):
        self.ok = ok
        self.parts: list[bytes] = []
        self.threads: set[str] = set()

    def fileno(self) -> int:
        return 2

    def write(self, b):
        import threading

        self.threads.add(threading.current_thread().name)
        if len(self.parts) >= self.ok:
            raise OSError(28, "No space left on device")
        self.parts.append(bytes(b))
        return len(b)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("in_memory", [True, False])
def test_write_errors_surface_and_order_is_kept(backend, small_batches, threads, in_memory):
    provider = FakeKmsProvider()
    data = os.urandom(20 * FS + 9)
    wrap = io.BytesIO if in_memory else (lambda b: io.BufferedReader(io.BytesIO(b)))
    sink = FailingSink(ok=10**6)
    encrypt_stream(wrap(data), sink, provider, encryption_context=CTX, frame_size=FS, threads=threads)
    message = b"".join(sink.parts)
    assert len(sink.parts) == 1 + 6  # the header, then 6 batches of up to 4 frames, in order
    assert any(t.startswith("kmsenv-writer") for t in sink.threads) == (threads > 1)
    plain = FailingSink(ok=10**6)
    decrypt_stream(wrap(message), plain, provider, threads=threads)
    assert b"".join(plain.parts) == data
    assert any(t.startswith("kmsenv-writer") for t in plain.threads) == (threads > 1)

    for ok in (0, 1, 3, 6):
        with pytest.raises(OSError, match="No space"):
            encrypt_stream(
                wrap(data), FailingSink(ok), provider, encryption_context=CTX, frame_size=FS, threads=threads
            )
    for ok in (0, 2, 5):
        short = FailingSink(ok)
        with pytest.raises(OSError, match="No space"):
            decrypt_stream(wrap(message), short, provider, threads=threads)
        assert b"".join(short.parts) == data[: 4 * FS * ok]
    assert not any(MARK in bytes(buf) for buf in _kept_buffers())


def test_bytesio_subclass_is_read_through_its_own_read(backend):
    class Upper(io.BytesIO):
        def readinto(self, b):
            n = super().readinto(b)
            b[:n] = bytes(b[:n]).upper()
            return n

        def read(self, n=-1):
            return super().read(n).upper()

    provider = FakeKmsProvider()
    out = io.BytesIO()
    encrypt_stream(Upper(b"abc" * 5000), out, provider, encryption_context=CTX)
    plain = io.BytesIO()
    decrypt_stream(io.BytesIO(out.getvalue()), plain, provider)
    assert plain.getvalue() == b"ABC" * 5000


def test_helper_thread_only_for_os_level_sinks(backend, tmp_path):
    from kmsenv.stream._writer import writes_release_gil

    provider = FakeKmsProvider()
    data = os.urandom(3 * framed.BATCH_BYTES + 5)
    with open(tmp_path / "m", "wb") as f:
        assert writes_release_gil(f)
        encrypt_stream(io.BytesIO(data), f, provider, encryption_context=CTX, threads=2)
    with open(tmp_path / "m", "rb") as f, open(tmp_path / "p", "wb") as out:
        decrypt_stream(f, out, provider, threads=2)
    assert (tmp_path / "p").read_bytes() == data
    for sink in (io.BytesIO(), io.BufferedWriter(io.BytesIO()), object()):
        assert not writes_release_gil(sink)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_starts_with_a_fresh_pool(backend, small_batches):
    provider = FakeKmsProvider()
    encrypt_stream(
        io.BufferedReader(io.BytesIO(os.urandom(6 * FS))), io.BytesIO(), provider, encryption_context=CTX, frame_size=FS
    )
    assert _buffers.held() > 0
    with _buffers._lock:  # as if another thread were inside take() when fork() ran
        pid = os.fork()
        if pid == 0:  # child: must neither deadlock nor inherit the parent's buffers
            import signal

            signal.signal(signal.SIGALRM, lambda *_: os._exit(2))  # a deadlock fails, never hangs
            signal.alarm(10)
            ok = _buffers.held() == 0
            _buffers.give_back(bytearray(16))
            os._exit(0 if ok and _buffers.held() == 16 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
