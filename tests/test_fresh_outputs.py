"""Large outputs are written into uninitialised bytes objects (no zeroing):
every byte of a sealed message and of an opened plaintext must come from the
core, whatever the memory held before."""

from __future__ import annotations

import os

import pytest

import kmsenv
from helpers import ARN_BJ, ARN_HZ, FakeKmsProvider
from kmsenv.crypto import native
from kmsenv.message.codec import context_parts, header_parts

pytestmark = pytest.mark.skipif(native.lib is None, reason="native core not built")


def _parts() -> tuple[bytes, bytes, bytes]:
    alg, ctx = kmsenv.Algorithm.AES_GCM_NOPADDING_256, {"t": "1"}
    dk = FakeKmsProvider(ARN_BJ, ARN_HZ).generate_data_key(alg, ctx)
    fields, auth, _ = header_parts(alg, dk.encrypted_data_keys, ctx)
    return fields, auth, context_parts(ctx)[0]


def _dirty_heap(n: int) -> None:
    # Leave freed blocks full of a pattern where the next allocation may land.
    blocks = [bytes([0xA5]) * n for _ in range(4)]
    del blocks


@pytest.mark.parametrize("size", [native._UNINIT_MIN, (1 << 20) + 7, 3 << 20, (9 << 20) + 4097])
def test_sealed_message_is_the_same_in_fresh_and_zeroed_memory(size: int, monkeypatch) -> None:
    if native._uninitialized_bytes is None:
        pytest.skip("this interpreter offers no uninitialised bytes objects")
    be = native.NativeBackend()
    key = os.urandom(32)
    (fields, auth, aad), ivs = _parts(), os.urandom(24)
    pt = os.urandom(size)
    _dirty_heap(size + 512)
    fresh = be.seal_message("AES", bytearray(key), fields, auth, aad, pt, ivs)
    monkeypatch.setattr(native, "_uninitialized_bytes", None)  # the zeroed path
    monkeypatch.setattr(native, "_UNINIT_MIN", 1 << 62)
    zeroed = be.seal_message("AES", bytearray(key), fields, auth, aad, pt, ivs)
    assert fresh == zeroed
    _dirty_heap(size + 512)
    monkeypatch.undo()
    assert be.open_message("AES", bytearray(key), auth, aad, fresh) == pt


def test_the_hugepage_hint_changes_no_byte(monkeypatch) -> None:
    # Outputs of 8 MiB and more are advised for transparent huge pages before
    # the core writes them (csrc/core.c); KMSENV_HUGEPAGES=0 turns that off.
    be = native.NativeBackend()
    key = os.urandom(32)
    (fields, auth, aad), ivs = _parts(), os.urandom(24)
    pt = os.urandom((12 << 20) + 3)
    hinted = be.seal_message("AES", bytearray(key), fields, auth, aad, pt, ivs)
    monkeypatch.setenv("KMSENV_HUGEPAGES", "0")
    plain = be.seal_message("AES", bytearray(key), fields, auth, aad, pt, ivs)
    assert hinted == plain
    assert be.open_message("AES", bytearray(key), auth, aad, hinted) == pt
    monkeypatch.delenv("KMSENV_HUGEPAGES")
    assert be.open_message("AES", bytearray(key), auth, aad, plain) == pt


def test_a_failed_open_returns_nothing(monkeypatch) -> None:
    if native._uninitialized_bytes is None:
        pytest.skip("this interpreter offers no uninitialised bytes objects")
    be = native.NativeBackend()
    key = os.urandom(32)
    fields, auth, aad = _parts()
    msg = be.seal_message("AES", bytearray(key), fields, auth, aad, os.urandom(1 << 20), os.urandom(24))
    bad = bytearray(msg)
    bad[-1] ^= 1  # the body tag
    with pytest.raises(Exception) as info:
        be.open_message("AES", bytearray(key), auth, aad, bytes(bad))
    assert "tag" in str(info.value) or "authentic" in str(info.value).lower()
