"""Shared helpers for the tests/test_stream_*.py modules."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile

import pytest

import kmsenv
from kmsenv.stream import alibaba_stream
from helpers import ARN_BJ, ARN_HZ, FakeKmsProvider, wrap

GCM_ALGS = [
    kmsenv.Algorithm.AES_GCM_NOPADDING_128,
    kmsenv.Algorithm.AES_GCM_NOPADDING_256,
    kmsenv.Algorithm.SM4_GCM_NOPADDING_128,
]


class FixedKeyProvider(FakeKmsProvider):
    """A FakeKmsProvider whose data key is chosen by the test."""

    def __init__(self, key: bytes, *arns: str):
        super().__init__(*arns)
        self.key = key

    def generate_data_key(self, algorithm, encryption_context):
        self.generate_calls += 1
        key = self.key[: kmsenv.Algorithm(algorithm).key_len]
        edks = [kmsenv.EncryptedDataKey(a, wrap(a, encryption_context, key)) for a in self.arns]
        return kmsenv.DataKey(key, edks)


class ReadOnly:
    """A source with read() only: no seek, tell, readinto."""

    def __init__(self, data: bytes, step: int | None = None):
        self._f = io.BytesIO(data)
        self._step = step

    def read(self, n: int = -1) -> bytes:
        if self._step is not None and (n < 0 or n > self._step):
            n = self._step  # short reads, like a pipe
        return self._f.read(n)


class WriteOnly:
    """A sink with write() only, returning None like many duck-typed writers."""

    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, b) -> None:
        self.parts.append(bytes(b))

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


class Generated:
    """A non-seekable reader yielding ``size`` deterministic pseudo-random
    bytes without holding them, hashing what it hands out."""

    def __init__(self, size: int, seed: bytes = b"kmsenv"):
        self.left = size
        self.block = hashlib.shake_256(seed).digest(1 << 20)
        self.counter = 0
        self.sha = hashlib.sha256()

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        n = min(len(view), self.left)
        done = 0
        while done < n:
            off = (self.counter + done) % len(self.block)
            step = min(n - done, len(self.block) - off)
            view[done : done + step] = self.block[off : off + step]
            done += step
        self.sha.update(view[:n])
        self.counter += n
        self.left -= n
        return n

    def read(self, n: int = -1) -> bytes:
        buf = bytearray(n if n >= 0 else self.left)
        got = self.readinto(buf)
        return bytes(buf[:got])


class HashingWriter:
    def __init__(self):
        self.sha = hashlib.sha256()
        self.count = 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.count += len(b)
        return len(b)


def counter_random():
    """A deterministic stand-in for the CSPRNG (for cross-backend byte checks)."""
    state = {"n": 0}

    def rnd(n: int) -> bytes:
        state["n"] += 1
        return hashlib.shake_256(b"rng%d" % state["n"]).digest(n)

    return rnd


__all__ = [
    "ARN_BJ",
    "ARN_HZ",
    "FakeKmsProvider",
    "FixedKeyProvider",
    "GCM_ALGS",
    "Generated",
    "HashingWriter",
    "ReadOnly",
    "WriteOnly",
    "counter_random",
    "wrap",
    "os",
]


# ---------------------------------------------------------------- spool fixtures
# (import them by name into a test module that uses them)


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    """A dedicated, empty temp dir (what TMPDIR names) for any spool."""
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return str(path)


@pytest.fixture(params=["memory", "file"])
def spool(request, monkeypatch):
    """Where spools live: in memory (the whole body fits), or (past 64 KiB) an anonymous file."""
    if request.param == "file":
        monkeypatch.setattr(alibaba_stream, "SPOOL_MEMORY", 64 * 1024)
    return request.param
