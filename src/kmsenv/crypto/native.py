"""The native backend: the only module that touches ``kmsenv._native``.

It checks every length before calling C and turns status codes into kmsenv
exceptions. cffi releases the GIL during each call, so input buffers must not
be mutated by other threads while a call runs.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..exceptions import AuthenticationError, KmsEnvError, MessageFormatError, UnsupportedAlgorithmError
from . import interface as I

try:
    from .. import _native  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - exercised when the build is missing
    _native = None
    IMPORT_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    IMPORT_ERROR = None

ffi: Any = _native.ffi if _native is not None else None
lib: Any = _native.lib if _native is not None else None

_CIPHERS = {"AES": 1, "SM4": 2}
_MODES = {I.CBC: 1, I.CBC_PKCS7: 2, I.CTR: 3}


def _raise(status: int, what: str) -> None:
    if status == lib.KMSENV_E_AUTH:
        raise AuthenticationError("authentication tag mismatch")
    if status in (lib.KMSENV_E_PADDING, lib.KMSENV_E_FORMAT):
        raise MessageFormatError(f"{what}: {ffi.string(lib.kmsenv_strerror(status)).decode()}")
    if status == lib.KMSENV_E_UNSUPPORTED:
        raise UnsupportedAlgorithmError(f"{what}: not supported by the native core's OpenSSL")
    if status == lib.KMSENV_E_ARG:
        raise ValueError(f"{what}: {ffi.string(lib.kmsenv_strerror(status)).decode()}")
    raise KmsEnvError(f"{what} failed in the native core: {ffi.string(lib.kmsenv_strerror(status)).decode()}")


def version_info() -> dict[str, Any]:
    return {
        "compiled_version": ffi.string(lib.kmsenv_version()).decode(),
        "openssl_loaded": ffi.string(lib.kmsenv_openssl_version()).decode(),
        "openssl_built": ffi.string(lib.kmsenv_openssl_build_version()).decode(),
        "features": {
            name: bool(lib.kmsenv_features() & getattr(lib, f"KMSENV_FEATURE_{name}"))
            for name in ("SM4", "AESNI", "SM4_GFNI", "AES_VAES")
        },
    }


class NativeKey:
    __slots__ = ("_handle",)

    def __init__(self, cipher: str, key: bytes | bytearray):
        out = ffi.new("kmsenv_key **")
        status = lib.kmsenv_key_new(_CIPHERS[cipher], ffi.from_buffer(key), len(key), out)
        if status:
            _raise(status, "key setup")
        self._handle = out[0]

    def _h(self) -> Any:
        if self._handle is None:
            raise KmsEnvError("key used after close()")
        return self._handle

    def gcm_seal(self, iv: bytes, aad: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
        if len(iv) != I.GCM_IV_LEN:
            raise ValueError("GCM IV must be 12 bytes")
        n = len(plaintext)
        out = bytearray(n + I.GCM_TAG_LEN)
        buf = ffi.from_buffer(out, require_writable=True)
        status = lib.kmsenv_gcm_seal(
            self._h(), iv, aad, len(aad), ffi.from_buffer(plaintext), n, buf, buf + n
        )
        if status:
            _raise(status, "GCM seal")
        view = memoryview(out)
        return bytes(view[:n]), bytes(view[n:])

    def gcm_open(self, iv: bytes, aad: bytes, ciphertext: bytes, tag: bytes) -> bytes:
        if len(iv) != I.GCM_IV_LEN or len(tag) != I.GCM_TAG_LEN:
            raise MessageFormatError("GCM IV must be 12 bytes and the tag 16")
        n = len(ciphertext)
        out = bytearray(n)
        status = lib.kmsenv_gcm_open(
            self._h(), iv, aad, len(aad), ffi.from_buffer(ciphertext), n, tag,
            ffi.from_buffer(out, require_writable=True),
        )
        if status:
            _raise(status, "GCM open")
        return bytes(out)

    def _legacy(self, fn: Any, mode: str, iv: bytes, data: bytes, cap: int, what: str) -> bytes:
        if len(iv) != I.BLOCK_IV_LEN:
            raise MessageFormatError("the IV must be 16 bytes")
        out = bytearray(cap)
        outlen = ffi.new("size_t *")
        status = fn(
            self._h(), _MODES[mode], iv, ffi.from_buffer(data), len(data),
            ffi.from_buffer(out, require_writable=True), cap, outlen,
        )
        if status:
            if status == lib.KMSENV_E_ARG and mode != I.CTR and len(data) % 16:
                if what == "encrypt":
                    raise ValueError("CBC without padding needs a multiple of 16 bytes")
                raise MessageFormatError("CBC body is not a whole number of blocks")
            _raise(status, f"legacy {what}")
        return bytes(memoryview(out)[: outlen[0]])

    def legacy_encrypt(self, mode: str, iv: bytes, plaintext: bytes) -> bytes:
        cap = len(plaintext) + 16
        return self._legacy(lib.kmsenv_legacy_encrypt, mode, iv, plaintext, cap, "encrypt")

    def legacy_decrypt(self, mode: str, iv: bytes, ciphertext: bytes) -> bytes:
        return self._legacy(lib.kmsenv_legacy_decrypt, mode, iv, ciphertext, max(len(ciphertext), 1), "decrypt")

    def seal_messages(self, header: bytes, aad: bytes, plaintexts: Sequence[bytes]) -> list[bytes]:
        n = len(plaintexts)
        if n == 0:
            return []
        data = b"".join(plaintexts)
        in_offsets = ffi.new("size_t[]", n + 1)
        total = 0
        hlen = len(header)
        cap = 0
        for i, pt in enumerate(plaintexts):
            in_offsets[i] = total
            size = len(pt)
            total += size
            cap += lib.kmsenv_message_size(hlen, size)
        in_offsets[n] = total
        out = bytearray(cap)
        out_offsets = ffi.new("size_t[]", n + 1)
        status = lib.kmsenv_gcm_seal_messages(
            self._h(), header, hlen, aad, len(aad), n, ffi.from_buffer(data), in_offsets,
            ffi.NULL, ffi.from_buffer(out, require_writable=True), cap, out_offsets,
        )
        if status:
            _raise(status, "batch seal")
        view = memoryview(out)
        offs = ffi.unpack(out_offsets, n + 1)
        return [bytes(view[offs[i] : offs[i + 1]]) for i in range(n)]

    def open_messages(
        self, header: bytes, aad: bytes, messages: Sequence[bytes]
    ) -> tuple[list[bytes | None], list[int]]:
        n = len(messages)
        if n == 0:
            return [], []
        data = b"".join(messages)
        in_offsets = ffi.new("size_t[]", n + 1)
        total = 0
        for i, msg in enumerate(messages):
            in_offsets[i] = total
            total += len(msg)
        in_offsets[n] = total
        out = bytearray(max(total, 1))
        out_offsets = ffi.new("size_t[]", n + 1)
        statuses = ffi.new("int[]", n)
        lib.kmsenv_gcm_open_messages(
            self._h(), header, len(header), aad, len(aad), n, ffi.from_buffer(data), in_offsets,
            ffi.from_buffer(out, require_writable=True), len(out), out_offsets, statuses,
        )
        view = memoryview(out)
        offs = ffi.unpack(out_offsets, n + 1)
        st = ffi.unpack(statuses, n)
        return [bytes(view[offs[i] : offs[i + 1]]) if st[i] == 0 else None for i in range(n)], st

    def close(self) -> None:
        if self._handle is not None:
            lib.kmsenv_key_free(self._handle)
            self._handle = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class NativeBackend:
    name = "native"

    def new_key(self, cipher: str, key: bytes | bytearray) -> NativeKey:
        return NativeKey(cipher, key)

    def random(self, n: int) -> bytes:
        out = bytearray(n)
        if n:
            status = lib.kmsenv_random(ffi.from_buffer(out, require_writable=True), n)
            if status:
                _raise(status, "random")
        return bytes(out)
