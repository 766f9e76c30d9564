"""The native backend: the only module that touches ``kmsenv._native``.

It checks every length before calling C and turns status codes into kmsenv
exceptions. cffi releases the GIL during each call, so input buffers must not
be mutated by other threads while a call runs.
"""

from __future__ import annotations

import importlib
import sys
from itertools import accumulate
from typing import Any, Callable, Sequence

from .. import _process
from ..exceptions import (
    AuthenticationError,
    ConfigurationError,
    HeaderAuthenticationError,
    KmsEnvError,
    MessageFormatError,
    UnsupportedAlgorithmError,
)
from . import interface as I
from .interface import BytesLike

try:
    # By full name: during kmsenv's own import, `from .. import _native` would
    # report a missing module as a "circular import".
    _native: Any = importlib.import_module("kmsenv._native")
except ImportError as exc:  # pragma: no cover - exercised when the build is missing
    _native = None
    IMPORT_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    IMPORT_ERROR = None

if _native is not None and not hasattr(_native.lib, "kmsenv_kernel_name"):
    # Built from older sources with the same version string (a development
    # tree): treat it as missing, so kmsenv falls back to pure and says why,
    # instead of failing here at import.
    IMPORT_ERROR = "the native core predates kmsenv_kernel_name; rebuild it (csrc/build_native.py)"
    _native = None

ffi: Any = _native.ffi if _native is not None else None
lib: Any = _native.lib if _native is not None else None

_CIPHERS = {"AES": 1, "SM4": 2}

# A fresh ``bytes(n)`` (n > 0) is a new, unshared object on CPython, so the
# core may fill it in place before anyone else sees it, as a C extension does
# with PyBytes_FromStringAndSize(NULL, n). That saves the second allocation and
# copy a bytearray would need, which for large messages (page faults on fresh
# memory) costs as much as the encryption. Sealed messages are made this way at
# every size, and a message is opened straight into its final object (its
# size known from the caller's parse).
_FILL_BYTES_IN_PLACE = sys.implementation.name == "cpython"


def _uninitialized_bytes_maker() -> Any:
    """CPython's PyBytes_FromStringAndSize(NULL, n): a bytes object whose
    content is not initialised. ``bytes(n)`` zeroes its memory, and for a large
    block that glibc hands back from the heap (it raises its mmap threshold
    after the first free) the zeroing costs a quarter of AES-GCM on a core
    with 512-bit VAES: 1 MiB seals at 6.5 GB/s into ``bytes(n)`` and 8.3 GB/s
    into an uninitialised object (measured here; ``AESGCM.encrypt`` uses
    the latter). Only for outputs the core writes in full before anyone sees
    them; None where ctypes cannot provide it."""
    if not _FILL_BYTES_IN_PLACE:
        return None
    try:
        import ctypes

        make = ctypes.pythonapi.PyBytes_FromStringAndSize
        make.restype = ctypes.py_object
        make.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
        probe = make(None, 3)
        if type(probe) is not bytes or len(probe) != 3:
            return None
    except Exception:  # no ctypes, no pythonapi: zeroed objects, as before
        return None
    return make


_uninitialized_bytes = _uninitialized_bytes_maker()
_UNINIT_MIN = 64 * 1024  # below this the ctypes call costs more than the zeroing


def _fresh_bytes(n: int) -> tuple[Any, Any]:
    """(result object, the argument to pass as the C output pointer) for n > 0
    output bytes that the core writes in full (or wipes on failure). cffi
    passes a ``bytes`` argument as a pointer to its own buffer, so the fresh
    object needs no ffi.from_buffer wrapper."""
    if _FILL_BYTES_IN_PLACE:
        if n >= _UNINIT_MIN and _uninitialized_bytes is not None:
            out = _uninitialized_bytes(None, n)
        else:
            out = bytes(n)
        return out, out
    buf = bytearray(n)
    return buf, ffi.from_buffer(buf, require_writable=True)


# Bound once: attribute lookups on ffi/lib are a measurable part of a 1 KiB message.
_from_buffer: Any = ffi.from_buffer if ffi is not None else None
_seal_with: Any = lib.kmsenv_seal_with if lib is not None else None
_open: Any = lib.kmsenv_open_message_ex if lib is not None else None
_WIPE_KEY: int = lib.KMSENV_WIPE_KEY if lib is not None else 0


# The last header's sealing template (kmsenv_seal_tpl: cipher, fields, auth
# and AAD copied into the core once), with the bytes objects it was made from.
# The engine passes the very objects its header memo holds, so consecutive
# messages under one header find it with three identity checks, and the seal
# call then takes 9 arguments instead of 16 (each cffi argument conversion
# costs about as much as the AES-GCM of 64 bytes). Holding the objects keeps
# their identities from being reused. Replaced as a whole tuple: threads never
# see a torn entry, and a template is read-only once made.
_LAST_TPL: tuple[Any, ...] = (None, None, None, None, None, 0)


def _forget_template_after_fork() -> None:
    # Only public header bytes live in it, but a child starts clean like every
    # other per-process memo.
    global _LAST_TPL
    _LAST_TPL = (None, None, None, None, None, 0)


_process.register(__name__, ("_LAST_TPL",), _forget_template_after_fork)


def _der_len_octets(n: int) -> int:
    """Octets of a DER length n (the core's kmsenv__der_put_len)."""
    return 1 if n < 0x80 else 1 + (n.bit_length() + 7) // 8


def _seal_template(cipher: str, fields: bytes, auth: bytes, aad: bytes) -> tuple[Any, int]:
    """(template, header TLV size) for these header inputs, made and kept as
    the last one."""
    global _LAST_TPL
    out = ffi.new("kmsenv_seal_tpl **")
    status = lib.kmsenv_seal_tpl_new(_CIPHERS[cipher], fields, len(fields), auth, len(auth), aad, len(aad), out)
    if status:
        _raise(status, "seal")
    tpl = ffi.gc(out[0], lib.kmsenv_seal_tpl_free)
    content = len(fields) + 2 + I.GCM_IV_LEN + 2 + I.GCM_TAG_LEN  # fields, 04 0c hiv, 04 10 htag
    header = 1 + _der_len_octets(content) + content
    _LAST_TPL = (cipher, fields, auth, aad, tpl, header)
    return tpl, header


def _wipe(buf: bytearray) -> None:
    """Zero a key buffer that a failed call may not have reached."""
    if buf:
        lib.kmsenv_wipe(_from_buffer(buf), len(buf))


def cleanse(buf: Any) -> None:
    """Zero a writable buffer with OPENSSL_cleanse (kmsenv._wipe's fast path)."""
    lib.kmsenv_wipe(ffi.from_buffer(buf, require_writable=True), len(buf))


def _layout(message: Any) -> I.MessageParts:
    """Where a message's parts lie, for a caller that did not parse it (the
    engine always passes its parse)."""
    # Imported here: loading the core for kmsenv._wipe must not load the
    # message layer above it.
    from ..message import der

    return der.message_layout(message)


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


_KERNEL_FAMILIES = (("aes_gcm", 0), ("sm4", 1))


def kernels() -> dict[str, dict[str, str]]:
    """The kernel each family uses in this process, chosen once by the core
    (csrc/kernels.c): its name ("evp" = OpenSSL) and why it was chosen."""
    out = {}
    for family, code in _KERNEL_FAMILIES:
        out[family] = {
            "name": ffi.string(lib.kmsenv_kernel_name(code)).decode(),
            "reason": ffi.string(lib.kmsenv_kernel_reason(code)).decode(),
        }
        warning = ffi.string(lib.kmsenv_kernel_warning(code)).decode().strip().rstrip(";")
        if warning:
            out[family]["warning"] = warning
    return out


def _warn_about_kernels() -> None:
    # Once per process, at load: a kernel that failed its self-test (or a
    # forced kernel this CPU cannot run) is a fact the user should see, even
    # though every byte still comes from a kernel that passed.
    import warnings

    for family, info in kernels().items():
        if "warning" in info:
            warnings.warn(
                f"kmsenv native core ({family}): {info['warning']}; using {info['name']}",
                RuntimeWarning,
                stacklevel=3,
            )


def version_info() -> dict[str, Any]:
    return {
        "compiled_version": ffi.string(lib.kmsenv_version()).decode(),
        "openssl_loaded": ffi.string(lib.kmsenv_openssl_version()).decode(),
        "openssl_built": ffi.string(lib.kmsenv_openssl_build_version()).decode(),
        "features": {
            name: bool(lib.kmsenv_features() & getattr(lib, f"KMSENV_FEATURE_{name}"))
            for name in ("SM4", "AESNI", "SM4_GFNI", "SM4_GFNI256", "SM4_AVX2", "AES_VAES", "AES_VAES512")
        },
        "kernels": kernels(),
    }


class NativeKey:
    __slots__ = ("_handle", "_scratch")

    def __init__(self, cipher: str, key: bytes | bytearray):
        out = ffi.new("kmsenv_key **")
        status = lib.kmsenv_key_new(_CIPHERS[cipher], ffi.from_buffer(key), len(key), out)
        if status:
            _raise(status, "key setup")
        self._handle = out[0]
        # Offsets and a status word for the one-message calls, allocated once per key.
        self._scratch = ffi.new("size_t[4]")

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
        status = lib.kmsenv_gcm_seal(self._h(), iv, aad, len(aad), ffi.from_buffer(plaintext), n, buf, buf + n)
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
            self._h(),
            iv,
            aad,
            len(aad),
            ffi.from_buffer(ciphertext),
            n,
            tag,
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
            self._h(),
            _MODES[mode],
            iv,
            ffi.from_buffer(data),
            len(data),
            ffi.from_buffer(out, require_writable=True),
            cap,
            outlen,
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

    def seal_one(self, header: bytes, aad: bytes, plaintext: bytes, iv: bytes) -> bytes:
        n = len(plaintext)
        hlen = len(header)
        size = lib.kmsenv_message_size(hlen, n)
        out = bytearray(size)
        offs = self._scratch
        offs[0] = 0
        offs[1] = n
        status = lib.kmsenv_gcm_seal_messages(
            self._h(),
            header,
            hlen,
            aad,
            len(aad),
            1,
            ffi.from_buffer(plaintext),
            offs,
            iv,
            ffi.from_buffer(out, require_writable=True),
            size,
            offs + 2,
        )
        if status:
            _raise(status, "GCM seal")
        return bytes(out)

    def open_one(self, header: bytes, aad: bytes, message: bytes) -> bytes:
        n = len(message)
        out = bytearray(n or 1)
        offs = self._scratch
        offs[0] = 0
        offs[1] = n
        status = ffi.new("int *")
        lib.kmsenv_gcm_open_messages(
            self._h(),
            header,
            len(header),
            aad,
            len(aad),
            1,
            ffi.from_buffer(message),
            offs,
            ffi.from_buffer(out, require_writable=True),
            len(out),
            offs + 2,
            status,
        )
        if status[0]:
            _raise(status[0], "message body")
        return bytes(memoryview(out)[offs[2] : offs[3]])

    def seal_messages(self, header: bytes, aad: bytes, plaintexts: Sequence[BytesLike]) -> list[bytes]:
        # Per value here costs as much as the AES-GCM of 100 bytes, so the
        # loops stay in C where they can: the offsets come from accumulate,
        # the output room from one size call (a message's overhead grows with
        # its length, so the longest value's bounds every other), and the
        # results are slices of one bytes object filled in place.
        n = len(plaintexts)
        if n == 0:
            return []
        data = b"".join(plaintexts)
        # bytes-length of each value (a memoryview's len counts items, not bytes)
        sizes = [len(pt) if type(pt) is bytes else memoryview(pt).nbytes for pt in plaintexts]
        in_offsets = ffi.new("size_t[]", [0, *accumulate(sizes)])
        hlen = len(header)
        longest = max(sizes)
        total = len(data)
        cap = n * (lib.kmsenv_message_size(hlen, longest) - longest) + total
        # zeroed, not _fresh_bytes: cap is a bound and its tail stays unwritten
        result: Any
        result = out = bytes(cap) if _FILL_BYTES_IN_PLACE else None
        if out is None:
            result, out = _fresh_bytes(cap)
        out_offsets = ffi.new("size_t[]", n + 1)
        status = lib.kmsenv_gcm_seal_messages(
            self._h(),
            header,
            hlen,
            aad,
            len(aad),
            n,
            _from_buffer(data),
            in_offsets,
            ffi.NULL,
            out,
            cap,
            out_offsets,
        )
        if status:
            _raise(status, "batch seal")
        offs = ffi.unpack(out_offsets, n + 1)
        if type(result) is not bytes:
            result = bytes(result)
        return [result[a:b] for a, b in zip(offs, offs[1:])]

    def open_messages(
        self, header: bytes, aad: bytes, messages: Sequence[bytes]
    ) -> tuple[list[bytes | None], list[int]]:
        n = len(messages)
        if n == 0:
            return [], []
        data = b"".join(messages)
        # bytes-length of each message (a memoryview's len counts items, not bytes)
        sizes = [len(m) if type(m) is bytes else memoryview(m).nbytes for m in messages]
        in_offsets = ffi.new("size_t[]", [0, *accumulate(sizes)])
        total = len(data)
        out = bytearray(max(total, 1))
        out_offsets = ffi.new("size_t[]", n + 1)
        statuses = ffi.new("int[]", n)
        lib.kmsenv_gcm_open_messages(
            self._h(),
            header,
            len(header),
            aad,
            len(aad),
            n,
            ffi.from_buffer(data),
            in_offsets,
            ffi.from_buffer(out, require_writable=True),
            len(out),
            out_offsets,
            statuses,
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


# ---------------------------------------------------------------- streaming (kmsenv.stream)

_HASHES = {"SHA256": 1, "SM3": 2}


class NativeGcmStream:
    """kmsenv_gcm_stream_*: incremental GCM; see interface.GcmStream."""

    __slots__ = ("_handle",)

    def __init__(self, cipher: str, key: Any, iv: bytes, decrypt: bool):
        if len(iv) != I.GCM_IV_LEN:
            raise MessageFormatError("GCM IV must be 12 bytes")
        out = ffi.new("kmsenv_gcm_stream **")
        status = lib.kmsenv_gcm_stream_new(_CIPHERS[cipher], ffi.from_buffer(key), len(key), iv, int(decrypt), out)
        if status:
            _raise(status, "GCM stream setup")
        self._handle = out[0]

    def _h(self) -> Any:
        if self._handle is None:
            raise KmsEnvError("GCM stream used after close()")
        return self._handle

    def aad(self, data: bytes) -> None:
        status = lib.kmsenv_gcm_stream_aad(self._h(), data, len(data))
        if status:
            _raise(status, "GCM stream AAD")

    def update_into(self, data: Any, out: Any) -> None:
        n = len(data)
        if len(out) < n:
            raise ValueError("output buffer too small")
        if n == 0:
            return
        status = lib.kmsenv_gcm_stream_update(
            self._h(), ffi.from_buffer(data), n, ffi.from_buffer(out, require_writable=True)
        )
        if status:
            if status == lib.KMSENV_E_ARG:
                raise MessageFormatError("the stream is longer than GCM allows (2^36 - 32 bytes)")
            _raise(status, "GCM stream update")

    def final(self) -> bytes:
        tag = bytearray(I.GCM_TAG_LEN)
        status = lib.kmsenv_gcm_stream_final(self._h(), ffi.from_buffer(tag, require_writable=True))
        if status:
            _raise(status, "GCM stream final")
        return bytes(tag)

    def verify(self, tag: bytes) -> None:
        if len(tag) != I.GCM_TAG_LEN:
            raise MessageFormatError("the GCM tag must be 16 bytes")
        status = lib.kmsenv_gcm_stream_verify(self._h(), bytes(tag))
        if status:
            _raise(status, "GCM stream verify")

    def close(self) -> None:
        if self._handle is not None:
            lib.kmsenv_gcm_stream_free(self._handle)
            self._handle = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _frame_args(cipher: str, key: Any, base_iv: bytes, msgid: bytes) -> tuple[int, Any, int]:
    if len(base_iv) != I.GCM_IV_LEN or len(msgid) != I.FRAME_MSGID_LEN:
        raise ValueError("base IV must be 12 bytes and the message id 32")
    return _CIPHERS[cipher], ffi.from_buffer(key), len(key)


def _native_hkdf(hash_name: str, ikm: Any, salt: bytes, info: bytes, length: int) -> bytearray:
    out = bytearray(length)
    status = lib.kmsenv_hkdf(
        _HASHES[hash_name],
        ffi.from_buffer(ikm),
        len(ikm),
        salt,
        len(salt),
        info,
        len(info),
        ffi.from_buffer(out, require_writable=True),
        length,
    )
    if status:
        _raise(status, f"HKDF-{hash_name}")
    return out


def _native_frames_seal(
    cipher: str,
    key: Any,
    base_iv: bytes,
    msgid: bytes,
    first_seq: int,
    frame_size: int,
    final: bool,
    data: Any,
    out: bytearray,
    nthreads: int,
) -> int:
    c, k, klen = _frame_args(cipher, key, base_iv, msgid)
    need = I.frames_sealed_size(frame_size, len(data), final)
    if len(out) < need:
        raise ValueError("output buffer too small")
    if need == 0:
        return 0
    outlen = ffi.new("size_t *")
    status = lib.kmsenv_frames_seal(
        c,
        k,
        klen,
        base_iv,
        msgid,
        first_seq,
        frame_size,
        int(final),
        ffi.from_buffer(data),
        len(data),
        ffi.from_buffer(out, require_writable=True),
        len(out),
        outlen,
        nthreads,
    )
    if status:
        _raise(status, "frame seal")
    return int(outlen[0])


def _native_frames_open(
    cipher: str,
    key: Any,
    base_iv: bytes,
    msgid: bytes,
    first_seq: int,
    frame_size: int,
    data: Any,
    out: bytearray,
    nthreads: int,
) -> tuple[int, int, bool]:
    c, k, klen = _frame_args(cipher, key, base_iv, msgid)
    if len(data) == 0:
        return 0, 0, False
    outlen = ffi.new("size_t *")
    nframes = ffi.new("size_t *")
    final = ffi.new("int *")
    failed = ffi.new("size_t *")
    status = lib.kmsenv_frames_open(
        c,
        k,
        klen,
        base_iv,
        msgid,
        first_seq,
        frame_size,
        ffi.from_buffer(data),
        len(data),
        ffi.from_buffer(out, require_writable=True),
        len(out),
        outlen,
        nframes,
        final,
        failed,
        nthreads,
    )
    if status in (lib.KMSENV_E_AUTH, lib.KMSENV_E_FORMAT):
        raise I.FrameBatchError(status, int(failed[0]))
    if status:
        _raise(status, "frame open")
    return int(outlen[0]), int(nframes[0]), bool(final[0])


# ---------------------------------------------------------------- columns (kmsenv.columns)
# One C call per batch over Arrow's buffers (kmsenv_core.h: compact.c, arrow.c).

_COLUMN_STOPS = (I.STATUS_OK, I.STATUS_OTHER_KEY, I.STATUS_AUTH)


def _binview(col: I.ColumnView, keep: list[Any], start: int = 0, stop: int | None = None) -> Any:
    """A kmsenv_binview of values start..stop-1; ``keep`` holds the buffers alive."""
    stop = col.length if stop is None else stop
    v = ffi.new("kmsenv_binview *")
    v.length = stop - start
    size = memoryview(col.data).nbytes
    data = ffi.from_buffer(col.data) if size else ffi.NULL
    offs = ffi.from_buffer(memoryview(col.offsets)[start * col.width : (stop + 1) * col.width])
    keep += [data, offs]
    v.data, v.data_len, v.offsets, v.offset_width = data, size, offs, col.width
    if col.validity is not None:
        bits = ffi.from_buffer(col.validity)
        keep.append(bits)
        v.validity = bits
        v.validity_offset = col.validity_offset + start
    return v


def _binout(out: I.ColumnOutput, keep: list[Any], start: int = 0) -> Any:
    """A kmsenv_binout whose offsets[0] is ``out.offsets[start]``: where to write."""
    o = ffi.new("kmsenv_binout *")
    odata = ffi.from_buffer(out.data, require_writable=True)
    ooffs = ffi.from_buffer(memoryview(out.offsets)[start * out.width :], require_writable=True)
    keep += [odata, ooffs]
    o.data, o.capacity, o.offsets, o.offset_width = odata, len(out.data), ooffs, out.width
    return o


def _native_compact_subkey(version: int, cipher: str, key: Any, header_hash: bytes, segment: bytes) -> bytearray:
    out = bytearray(len(key))
    status = lib.kmsenv_compact_subkey(
        version,
        _CIPHERS[cipher],
        ffi.from_buffer(key),
        len(key),
        header_hash,
        segment,
        ffi.from_buffer(out, require_writable=True),
    )
    if status:
        _raise(status, "compact subkey")
    return out


def _native_compact_seal(
    cipher: str,
    key: Any,
    header_hash: bytes,
    segment: bytes,
    name: bytes,
    col: I.ColumnView,
    rows: I.ColumnView | None,
    start: int,
    stop: int,
    ivs: bytes | None,
    out: I.ColumnOutput,
) -> None:
    keep: list[Any] = []
    v = _binview(col, keep, start, stop)
    r = _binview(rows, keep, start, stop) if rows is not None else ffi.NULL
    o = _binout(out, keep, start)
    status = lib.kmsenv_compact_seal(
        _CIPHERS[cipher],
        ffi.from_buffer(key),
        len(key),
        header_hash,
        segment,
        name,
        len(name),
        v,
        r,
        ivs if ivs is not None else ffi.NULL,
        o,
    )
    del keep
    if status:
        _raise(status, "compact seal")


def _native_compact_open(
    version: int,
    cipher: str,
    key: Any,
    header_hash: bytes,
    name: bytes,
    col: I.ColumnView,
    rows: I.ColumnView | None,
    start: int,
    out: I.ColumnOutput,
) -> tuple[int, int]:
    keep: list[Any] = []
    v = _binview(col, keep)
    r = _binview(rows, keep) if rows is not None else ffi.NULL
    o = _binout(out, keep)
    stopped = ffi.new("size_t *")
    status = lib.kmsenv_compact_open(
        version,
        _CIPHERS[cipher],
        ffi.from_buffer(key),
        len(key),
        header_hash,
        name,
        len(name),
        v,
        r,
        start,
        stopped,
        o,
    )
    del keep
    if status not in _COLUMN_STOPS and status != I.STATUS_FORMAT:
        _raise(status, "compact open")
    return status, stopped[0]


def _native_alibaba_column_seal(
    key: NativeKey, header: bytes, aad: bytes, col: I.ColumnView, new_output: Callable[[int], I.ColumnOutput]
) -> I.ColumnOutput:
    keep: list[Any] = []
    v = _binview(col, keep)
    size = lib.kmsenv_arrow_messages_size(len(header), v)
    if size == 0 and col.present():
        raise ConfigurationError("a value is too large for an Alibaba-format message")
    out = new_output(size)
    o = _binout(out, keep)
    status = lib.kmsenv_arrow_seal_messages(key._h(), header, len(header), aad, len(aad), v, ffi.NULL, o)
    del keep
    if status:
        _wipe(out.data)  # nothing half-sealed is handed back
        _raise(status, "column seal")
    return out


def _native_alibaba_column_open(
    key: NativeKey, header: bytes, aad: bytes, col: I.ColumnView, start: int, out: I.ColumnOutput
) -> tuple[int, int]:
    keep: list[Any] = []
    v = _binview(col, keep)
    o = _binout(out, keep)
    stopped = ffi.new("size_t *")
    status = lib.kmsenv_arrow_open_messages(key._h(), header, len(header), aad, len(aad), v, start, stopped, o)
    del keep
    if status not in _COLUMN_STOPS:
        _raise(status, "column open")
    return status, stopped[0]


class NativeBackend:
    name = "native"

    def seal_message(
        self,
        cipher: str,
        key: bytearray,
        fields: bytes,
        auth: bytes,
        aad: bytes,
        plaintext: Any,
        ivs: bytes,
        wipe_key: bool = False,
    ) -> bytes:
        # Per message: each Python-level step here costs a fair share of the
        # AES-GCM of 1 KiB, so names are bound at import, bytes go to C as they
        # are, and ffi.from_buffer gets no keyword (cffi parses those slowly).
        try:
            c, f, a, d, tpl, header = _LAST_TPL  # _seal_template's common case, inline
            if f is not fields or a is not auth or d is not aad or c != cipher:
                if type(fields) is not bytes or type(auth) is not bytes or type(aad) is not bytes:
                    # Other buffers (never the template's own objects): immutable copies.
                    fields, auth, aad = bytes(fields), bytes(auth), bytes(aad)
                tpl, header = _seal_template(cipher, fields, auth, aad)
            if type(plaintext) is bytes:
                n = len(plaintext)
                src = plaintext
            else:
                n = memoryview(plaintext).nbytes
                src = _from_buffer(plaintext)
            # The size, as kmsenv_sealed_size computes it: here it saves a call.
            # 30 L { header , 30 L { 04 0c iv , 04 L ct , 04 10 tag } }: each
            # TLV adds its tag and length octets; below 64 KiB the chained
            # comparisons cost less than a call of _der_len_octets.
            body = n + (34 if n < 0x80 else 35 if n < 0x100 else 36 if n < 0x10000 else 33 + _der_len_octets(n))
            inner = (
                header
                + body
                + (2 if body < 0x80 else 3 if body < 0x100 else 4 if body < 0x10000 else 1 + _der_len_octets(body))
            )
            cap = inner + (
                2 if inner < 0x80 else 3 if inner < 0x100 else 4 if inner < 0x10000 else 1 + _der_len_octets(inner)
            )
            if _FILL_BYTES_IN_PLACE and n < _UNINIT_MIN:  # _fresh_bytes, inlined
                result = out = bytes(cap)
            else:
                result, out = _fresh_bytes(cap)
            got = _seal_with(
                tpl,
                _from_buffer(key),
                len(key),
                src,
                n,
                ivs,
                out,
                cap,
                _WIPE_KEY if wipe_key else 0,
            )
        except BaseException:
            if wipe_key:
                _wipe(key)
            raise
        if got != cap:
            if got >= 0:  # the sizes above and the core's disagree: never expected
                raise KmsEnvError(f"native seal wrote {got} bytes, {cap} expected")
            _raise(got, "seal")
        return result if _FILL_BYTES_IN_PLACE else bytes(result)  # else a bytearray

    def open_message(
        self,
        cipher: str,
        key: bytearray,
        auth: bytes,
        aad: bytes,
        message: Any,
        wipe_key: bool = False,
        parts: I.MessageParts | None = None,
    ) -> bytes:
        # The plaintext goes straight into its final object, sized from the
        # caller's parse; the core checks the framing and bounds again.
        try:
            size = (parts if parts is not None else _layout(message)).ct_len
            if not size:
                result, out = b"", ffi.NULL
            elif _FILL_BYTES_IN_PLACE and size < _UNINIT_MIN:  # _fresh_bytes, inlined
                result = out = bytes(size)
            else:
                result, out = _fresh_bytes(size)
            got = _open(
                _CIPHERS[cipher],
                _from_buffer(key),
                len(key),
                auth,
                len(auth),
                aad,
                len(aad),
                message if type(message) is bytes else _from_buffer(message),
                len(message),
                out,
                size,
                _WIPE_KEY if wipe_key else 0,
            )
        except BaseException:
            if wipe_key:
                _wipe(key)
            raise
        if got < 0:
            if got == lib.KMSENV_E_HEADER_AUTH:
                raise HeaderAuthenticationError("header authentication failed")
            _raise(got, "message")
        if type(result) is not bytes:
            result = bytes(result)
        return result if got == size else result[:got]

    def new_key(self, cipher: str, key: bytes | bytearray) -> NativeKey:
        return NativeKey(cipher, key)

    def random(self, n: int) -> bytes:
        out = bytearray(n)
        if n:
            status = lib.kmsenv_random(ffi.from_buffer(out, require_writable=True), n)
            if status:
                _raise(status, "random")
        return bytes(out)

    def random_into(self, buf: bytearray) -> None:
        if buf:
            status = lib.kmsenv_random(ffi.from_buffer(buf, require_writable=True), len(buf))
            if status:
                _raise(status, "random")

    # Streaming: frames, HKDF and incremental GCM (see kmsenv.stream).
    hkdf = staticmethod(_native_hkdf)
    frames_seal = staticmethod(_native_frames_seal)
    frames_open = staticmethod(_native_frames_open)
    gcm_stream = staticmethod(NativeGcmStream)

    # Columns (see kmsenv.columns).
    compact_subkey = staticmethod(_native_compact_subkey)
    compact_seal = staticmethod(_native_compact_seal)
    compact_open = staticmethod(_native_compact_open)
    alibaba_column_seal = staticmethod(_native_alibaba_column_seal)
    alibaba_column_open = staticmethod(_native_alibaba_column_open)


if lib is not None:
    _warn_about_kernels()
