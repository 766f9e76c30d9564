"""alibaba-stream decryption: pass 2 decrypts the bytes pass 1 verified (a
private spool, or an io.BytesIO's immutable bytes), never the input again, so
an input that another writer changes between the passes releases only the
genuine plaintext. The spool is 0600, has no name, and is gone on every path."""

from __future__ import annotations

import io
import os
import stat
import threading

import pytest

import kmsenv
from kmsenv.exceptions import AuthenticationError
from kmsenv.stream import alibaba_stream
from kms_fixtures import *  # noqa: F401,F403
from stream_helpers import spool, temp_dir  # noqa: F401 (fixtures)

CHUNK = alibaba_stream.CHUNK
PROC_FD = "/proc/self/fd"
needs_proc = pytest.mark.skipif(not os.path.isdir(PROC_FD), reason="needs /proc/self/fd to see anonymous files")


@pytest.fixture
def provider(kms, cmks):
    return kmsenv.KmsKeyProvider(cmks.hz, kms=kms)


def _encrypt(provider, data: bytes) -> bytes:
    out = io.BytesIO()
    kmsenv.encrypt_stream(io.BytesIO(data), out, provider, format="alibaba-stream")
    return out.getvalue()


def _body_offset(message: bytes, data: bytes) -> int:
    return len(message) - len(data) - alibaba_stream.TAG_LEN  # GCM: ciphertext as long as the plaintext


def _flip_on_disk(path, offsets) -> None:
    """Another writer: flips a bit at each offset of the file, in place."""
    with open(path, "r+b") as f:
        for off in offsets:
            f.seek(off)
            byte = f.read(1)[0]
            f.seek(off)
            f.write(bytes([byte ^ 0x01]))


def _spool_fds(directory: str) -> list[str]:
    """This process's open descriptors on files in ``directory`` that no
    name in it leads to (a named file shows in os.listdir instead)."""
    named = {(st.st_dev, st.st_ino) for st in (os.stat(os.path.join(directory, n)) for n in os.listdir(directory))}
    found = []
    for fd in os.listdir(PROC_FD):
        link = os.path.join(PROC_FD, fd)
        try:
            target = os.readlink(link)
            st = os.stat(link)
        except OSError:  # the listing's own descriptor, already closed
            continue
        if target.startswith(directory + os.sep) and (st.st_dev, st.st_ino) not in named:
            found.append(fd)
    return found


def _check_private_spool(directory: str) -> None:
    """Exactly one anonymous spool in ``directory``: mode 0600, no links, no name."""
    fds = _spool_fds(directory)
    assert len(fds) == 1, fds
    st = os.stat(os.path.join(PROC_FD, fds[0]))
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_nlink == 0


@pytest.mark.parametrize("spot", ["first chunk", "last chunk"])
def test_open_reads_what_was_verified_when_the_file_changes_after_open(
    backend, provider, tmp_path, temp_dir, spool, spot
):
    data = os.urandom(3 * CHUNK + 123 if spool == "file" else 100_000)
    message = _encrypt(provider, data)
    path = tmp_path / "msg.kms"
    path.write_bytes(message)
    body = _body_offset(message, data)
    tampered = body + 10 if spot == "first chunk" else len(message) - 100
    with kmsenv.open(path, "rb", provider=provider) as r:
        # kmsenv.open verified the tag (pass 1); now another writer flips a
        # bit of the ciphertext (CTR: the same bit of the plaintext flips).
        _flip_on_disk(path, [tampered])
        assert path.read_bytes() != message
        first = r.read(CHUNK)
        assert first == data[:CHUNK]  # no plaintext of the tampered bytes, not even before an error
        assert first + r.read() == data


def test_decrypt_stream_writes_what_was_verified_when_the_file_changes_between_passes(
    backend, provider, tmp_path, temp_dir, spool
):
    data = os.urandom(3 * CHUNK + 123 if spool == "file" else 100_000)
    message = _encrypt(provider, data)
    path = tmp_path / "msg.kms"
    path.write_bytes(message)
    body = _body_offset(message, data)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    seen = {}

    def another_writer(consumed: int) -> None:
        # Called as the input is read: once pass 1 has read it all, the file changes.
        if consumed == len(message) and not seen:
            seen["listing"] = sorted(os.listdir(out_dir)) + sorted(os.listdir(temp_dir))
            _flip_on_disk(path, [body + 10, body + len(data) // 2, len(message) - 100])

    with open(path, "rb") as src, open(out_dir / "plain", "wb") as dst:
        r = kmsenv.decrypt_stream(src, dst, provider, progress=another_writer)
    assert seen["listing"] == ["plain"]  # the spool, if on disk, has no name
    assert (out_dir / "plain").read_bytes() == data
    assert r.bytes_out == len(data) and r.bytes_in == len(message)
    assert sorted(os.listdir(out_dir)) == ["plain"] and os.listdir(temp_dir) == []


def test_bytesio_changed_after_open_still_reads_what_was_verified(backend, provider, temp_dir):
    data = os.urandom(2 * CHUNK + 5)
    message = _encrypt(provider, data)
    src = io.BytesIO(message)
    with kmsenv.open(src, "rb", provider=provider) as r:
        src.seek(_body_offset(message, data) + 3)
        src.write(b"\xff\xff")  # the BytesIO copies its buffer first: the verified bytes stay as they were
        assert r.read() == data
    assert os.listdir(temp_dir) == []


@needs_proc
def test_spool_is_private_and_named_nowhere_while_reading(backend, provider, tmp_path, temp_dir, monkeypatch):
    monkeypatch.setattr(alibaba_stream, "SPOOL_MEMORY", 64 * 1024)
    data = os.urandom(2 * CHUNK + 77)
    path = tmp_path / "msg.kms"
    path.write_bytes(_encrypt(provider, data))
    assert _spool_fds(temp_dir) == []
    with kmsenv.open(path, "rb", provider=provider) as r:
        _check_private_spool(temp_dir)
        assert os.listdir(temp_dir) == []
        assert r.read(CHUNK) == data[:CHUNK]
        _check_private_spool(temp_dir)
        assert r.read() == data[CHUNK:]
        assert _spool_fds(temp_dir) == []  # the end of the stream closed it
    assert _spool_fds(temp_dir) == [] and os.listdir(temp_dir) == []


@needs_proc
def test_decrypt_stream_spools_privately_next_to_a_named_destination(
    backend, provider, tmp_path, temp_dir, monkeypatch
):
    monkeypatch.setattr(alibaba_stream, "SPOOL_MEMORY", 64 * 1024)
    data = os.urandom(2 * CHUNK + 77)
    path = tmp_path / "msg.kms"
    path.write_bytes(_encrypt(provider, data))
    out_dir = str(tmp_path / "out")
    os.mkdir(out_dir)
    writes = []

    class Watched(io.FileIO):
        def write(self, b):
            if not writes:  # pass 2 has begun: the spool is in use
                _check_private_spool(out_dir)
                writes.append(sorted(os.listdir(out_dir)))
            return super().write(b)

    with open(path, "rb") as src, Watched(os.path.join(out_dir, "plain"), "wb") as dst:
        kmsenv.decrypt_stream(src, dst, provider)
    assert writes == [["plain"]]
    assert _spool_fds(out_dir) == [] and _spool_fds(temp_dir) == []
    with open(os.path.join(out_dir, "plain"), "rb") as f:
        assert f.read() == data


@needs_proc
@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_a_destination_that_is_no_regular_file_spools_in_the_temp_dir(
    backend, provider, tmp_path, temp_dir, monkeypatch
):
    monkeypatch.setattr(alibaba_stream, "SPOOL_MEMORY", 64 * 1024)
    data = os.urandom(2 * CHUNK)
    message = _encrypt(provider, data)
    path = tmp_path / "msg.kms"
    path.write_bytes(message)
    spooled = []

    def at_the_end_of_pass_1(consumed: int) -> None:
        if consumed == len(message):
            spooled.append(len(_spool_fds(temp_dir)))

    with open(path, "rb") as src, open("/dev/null", "wb") as dst:  # not next to it, in /dev
        r = kmsenv.decrypt_stream(src, dst, provider, progress=at_the_end_of_pass_1)
    assert spooled == [1] and r.bytes_out == len(data)
    assert _spool_fds(temp_dir) == [] and os.listdir(temp_dir) == []


@needs_proc
def test_spool_gone_after_close_mid_stream(backend, provider, tmp_path, temp_dir, monkeypatch):
    monkeypatch.setattr(alibaba_stream, "SPOOL_MEMORY", 64 * 1024)
    data = os.urandom(3 * CHUNK)
    path = tmp_path / "msg.kms"
    path.write_bytes(_encrypt(provider, data))
    r = kmsenv.open(path, "rb", provider=provider)
    assert r.read(1000) == data[:1000]
    _check_private_spool(temp_dir)
    r.close()
    assert _spool_fds(temp_dir) == [] and os.listdir(temp_dir) == []


@needs_proc
def test_spool_gone_after_a_body_that_fails_its_tag(backend, provider, tmp_path, temp_dir, monkeypatch):
    monkeypatch.setattr(alibaba_stream, "SPOOL_MEMORY", 64 * 1024)
    data = os.urandom(2 * CHUNK)
    message = bytearray(_encrypt(provider, data))
    message[-1000] ^= 0x01
    path = tmp_path / "msg.kms"
    path.write_bytes(bytes(message))
    with pytest.raises(AuthenticationError, match="body was altered"):
        kmsenv.open(path, "rb", provider=provider)
    assert _spool_fds(temp_dir) == [] and os.listdir(temp_dir) == []
    out = tmp_path / "plain"
    spooled = []

    def at_the_end_of_pass_1(consumed: int) -> None:
        if consumed == len(message):
            spooled.append(len(_spool_fds(str(tmp_path))))  # next to the destination

    with open(path, "rb") as src, open(out, "wb") as dst, pytest.raises(AuthenticationError, match="body was altered"):
        kmsenv.decrypt_stream(src, dst, provider, progress=at_the_end_of_pass_1)
    assert spooled == [1]
    assert out.read_bytes() == b""  # no plaintext at all
    assert _spool_fds(str(tmp_path)) == [] and sorted(os.listdir(tmp_path)) == ["msg.kms", "plain", "tmp"]


@needs_proc
def test_tag_rechecked_at_the_end_and_spool_gone_if_the_spool_itself_changes(
    backend, provider, tmp_path, temp_dir, monkeypatch
):
    """Defence in depth: the spool is out of every other user's reach, but a
    change to it (here: by this process, through /proc) still fails the
    end-of-stream tag check, and the spool is closed on that path too."""
    monkeypatch.setattr(alibaba_stream, "SPOOL_MEMORY", 64 * 1024)
    data = os.urandom(2 * CHUNK + 9)
    path = tmp_path / "msg.kms"
    path.write_bytes(_encrypt(provider, data))
    r = kmsenv.open(path, "rb", provider=provider)
    try:
        (fd,) = _spool_fds(temp_dir)
        with open(os.path.join(PROC_FD, fd), "r+b") as spool:
            spool.seek(2 * CHUNK + 3)
            byte = spool.read(1)
            spool.seek(2 * CHUNK + 3)
            spool.write(bytes([byte[0] ^ 0x01]))
        with pytest.raises(AuthenticationError, match="changed between the verification and decryption passes"):
            r.read()
        assert _spool_fds(temp_dir) == []
    finally:
        r.close()
    assert _spool_fds(temp_dir) == [] and os.listdir(temp_dir) == []


@needs_proc
def test_pipe_input_spooled_privately_and_removed(backend, provider, tmp_path, temp_dir, monkeypatch):
    monkeypatch.setattr(alibaba_stream, "SPOOL_MEMORY", 64 * 1024)
    data = os.urandom(CHUNK + 4321)
    message = _encrypt(provider, data)
    rfd, wfd = os.pipe()

    def feed() -> None:
        with os.fdopen(wfd, "wb") as w:
            w.write(message)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        with os.fdopen(rfd, "rb") as src, kmsenv.open(src, "rb", provider=provider) as r:
            _check_private_spool(temp_dir)
            assert r.read() == data
    finally:
        feeder.join()
    assert _spool_fds(temp_dir) == [] and os.listdir(temp_dir) == []


def test_unwritable_spool_dir_falls_back_to_the_temp_dir(temp_dir):
    f = alibaba_stream._private_file(os.path.join(temp_dir, "missing"))
    try:
        if os.path.isdir(PROC_FD):
            assert os.readlink(os.path.join(PROC_FD, str(f.fileno()))).startswith(temp_dir + os.sep)
        assert alibaba_stream._is_private(f) and os.listdir(temp_dir) == []
    finally:
        f.close()
