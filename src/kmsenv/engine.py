"""The envelope pipeline: provider -> data key -> header tag -> body -> message.

This module knows the order of the steps of a one-shot message, in both
directions; the steps themselves (arguments, data keys, backend keys,
headers) are :mod:`kmsenv._envelope`'s, shared with the stream and column
formats. Every error that leaves it is a :class:`KmsEnvError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from . import _process
from ._envelope import (
    ALG_FACTS as _ALG_FACTS,
    DEFAULT_ALGORITHM,  # noqa: F401  (still kmsenv.engine.DEFAULT_ALGORITHM)
    BackendKey,
    build_header,
    check_expected_context,
    check_new_algorithm,
    check_readable,
    choose_algorithm,
    context_argument,
    context_bytes_for_encrypt,
    generate,
    open_body,
    seal_body,
    unwrap,
    verify_header,
)
from ._wipe import wipe
from .algorithms import Algorithm
from . import crypto as _crypto
from .crypto import get_backend
from .crypto.interface import STATUS_AUTH, STATUS_OK, CipherKey
from .exceptions import (
    AuthenticationError,
    ConfigurationError,
    HeaderAuthenticationError,
    KmsEnvError,
    MessageFormatError,
)
from .message import der
from .message.codec import (
    DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
    MAX_CONTEXT_BYTES,
    MessageBody,
    MessageHeader,
    context_bytes,
    context_parts,
    decode_message,
    encode_message,
    header_parts,
    parse_message,
)
from .model import DataKey, DataKeyProvider

__all__ = [
    "EncryptResult",
    "DecryptResult",
    "encrypt",
    "decrypt",
    "encrypt_many",
    "decrypt_many",
    "parse_header",
]

# Random 96-bit IVs: stay far below NIST SP 800-38D's 2^32 invocations per key.
MAX_MESSAGES_PER_DATA_KEY = 2**28


class EncryptResult:
    """The message and its header (parsed from the message on first access)."""

    __slots__ = ("ciphertext", "_header")

    def __init__(self, ciphertext: bytes, header: MessageHeader | None = None):
        self.ciphertext = ciphertext
        self._header = header

    @property
    def header(self) -> MessageHeader:
        if self._header is None:
            self._header = decode_message(self.ciphertext)[0]
        return self._header

    def __repr__(self) -> str:
        return f"EncryptResult(ciphertext=<{len(self.ciphertext)} bytes>, header={self.header!r})"


@dataclass(frozen=True)
class DecryptResult:
    plaintext: bytes
    header: MessageHeader

    def __repr__(self) -> str:
        return f"DecryptResult(plaintext=<{len(self.plaintext)} bytes>, header={self.header!r})"


_new_object = object.__new__


def _decrypt_result(plaintext: bytes, header: MessageHeader) -> DecryptResult:
    """DecryptResult(plaintext, header), filled directly: the frozen
    dataclass's __init__ (two object.__setattr__ calls) costs 0.8 us, a
    seventh of a whole 1 KiB decrypt. The same object: equal, hashable,
    immutable."""
    result = _new_object(DecryptResult)
    fields = result.__dict__
    fields["plaintext"] = plaintext
    fields["header"] = header
    return result


# ---------------------------------------------------------------- IVs

# Pre-drawn (header IV, body IV) pairs. The pool belongs to the process that
# drew it: a forked child that used its parent's pairs would repeat GCM nonces
# under the data keys both processes hold (a cached key). The at-fork reset
# empties it; the pid check covers a fork that ran no Python handler.
_IV_POOL: list[bytes] = []
_IV_BATCH = 256
_iv_pop = _IV_POOL.pop  # bound once: this runs per message
_IV_PID = os.getpid()
_getpid = os.getpid


def _iv_pair() -> bytes:
    """24 fresh random bytes: a header IV and a body IV. Drawn from the CSPRNG
    in bulk (one call per 256 pairs); ``list.pop`` is atomic, so each pair is
    handed out exactly once, whatever the threads; and only ever in the
    process that drew it."""
    if _IV_PID != _getpid():
        _reset_iv_pool()
    try:
        return _iv_pop()
    except IndexError:
        pool = get_backend().random(24 * _IV_BATCH)
        _IV_POOL.extend(pool[i : i + 24] for i in range(0, len(pool), 24))
        return _iv_pop()


def _reset_iv_pool() -> None:
    global _IV_PID
    _IV_POOL.clear()
    _IV_PID = os.getpid()


_process.register(__name__, ("_IV_POOL", "_IV_PID"), _reset_iv_pool)


def _iv() -> bytes:
    return _iv_pair()[:12]


# ---------------------------------------------------------------- arguments


def _as_bytes(data: Any, what: str) -> bytes | bytearray | memoryview:
    """``data`` as something whose len() counts bytes: a memoryview's len()
    counts items (4 bytes each for ``array('i')``), and the backends size
    their work with len()."""
    if isinstance(data, (bytes, bytearray)):
        return data
    if isinstance(data, memoryview):
        if data.itemsize == 1 and data.ndim == 1 and data.c_contiguous:
            return data
        return data.cast("B") if data.c_contiguous else data.tobytes()
    raise ConfigurationError(f"{what} must be bytes-like, not {type(data).__name__}")


# ---------------------------------------------------------------- public API


def encrypt(
    plaintext: bytes | bytearray | memoryview,
    provider: DataKeyProvider,
    *,
    encryption_context: Mapping[str, str] | None = None,
    algorithm: Algorithm | int | None = None,
    allow_unauthenticated: bool = False,
) -> EncryptResult:
    """Encrypt ``plaintext`` into one Alibaba-format message under a fresh data key.

    ``algorithm=None`` uses the provider's ``algorithm`` attribute, else AES-256-GCM.
    Legacy CBC/CTR algorithms need ``allow_unauthenticated=True``.
    """
    # The common argument types take the short way: this path is per message.
    data = plaintext if type(plaintext) is bytes else _as_bytes(plaintext, "plaintext")
    if encryption_context is None:
        ctx: dict[str, str] = {}
    elif type(encryption_context) is dict:
        ctx = encryption_context.copy()
    else:
        ctx = context_argument(encryption_context)
    alg = algorithm if type(algorithm) is Algorithm else choose_algorithm(provider, algorithm)
    cipher, authenticated, _ = _ALG_FACTS[alg]
    if not authenticated:
        check_new_algorithm(alg, allow_unauthenticated)
    ctx_bytes = context_parts(ctx)[0]  # memoized; validates the context
    if len(ctx_bytes) > MAX_CONTEXT_BYTES:
        context_bytes_for_encrypt(ctx)  # raises, saying why
    data_key = generate(provider, alg, ctx, len(data))
    if authenticated:
        # This is the per-message path of a 1 KiB message, where each Python
        # call costs 0.1-0.3 us of about 8: the steps that are one line each
        # (the backend, DataKey's buffer, the result) are inline. The IVs keep
        # their one home, _iv_pair (fork checks; tests fix the IVs there), and
        # what a spent key's buffer becomes keeps its, DataKey._spent.
        try:
            # One native call: key setup, header tag, body, framing; it also
            # zeroes the data key's buffer (saving a wipe call per message).
            fields, auth, _ = header_parts(alg, data_key.encrypted_data_keys, ctx)  # checks the EDKs
            # DataKey's own buffer without its property (a subclass may hand out another)
            raw = data_key._key if type(data_key) is DataKey else data_key.plaintext
            backend = _crypto._backend or get_backend()
            message = backend.seal_message(cipher, raw, fields, auth, ctx_bytes, data, _iv_pair(), True)
        except BaseException as exc:
            data_key.wipe()
            if isinstance(exc, ValueError):
                raise ConfigurationError(str(exc)) from None
            raise
        data_key._spent(raw)
        result = _new_object(EncryptResult)  # EncryptResult(message), without the __init__ call
        result.ciphertext = message
        result._header = None
        return result
    try:
        with BackendKey(alg, data_key.plaintext) as key:
            header = build_header(key, alg, data_key.encrypted_data_keys, ctx, _iv())
            iv = get_backend().random(alg.info.iv_len)
            message = encode_message(header, seal_body(key, alg, ctx_bytes, data, iv))
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    finally:
        data_key.wipe()
    return EncryptResult(message)


def decrypt(
    ciphertext: bytes | bytearray | memoryview,
    provider: DataKeyProvider,
    *,
    expected_encryption_context: Mapping[str, str] | None = None,
    allow_unauthenticated: bool = False,
    max_encrypted_data_keys: int = DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
) -> DecryptResult:
    """Decrypt one message. Nothing is returned unless the header tag and (for
    GCM) the body tag verify. The provider is never modified."""
    data = ciphertext
    if type(data) is not bytes:
        # Parse and authenticate one immutable snapshot: a mutable buffer could
        # change between the Python header parse and the native checks.
        data = bytes(_as_bytes(ciphertext, "ciphertext"))
    # The one parse: the outer layout (exact framing, the body's fields and
    # their lengths) and the header (memoized); the backend gets the layout.
    header, layout = parse_message(data, max_encrypted_data_keys)
    cipher, authenticated, _ = _ALG_FACTS[header.algorithm]
    if expected_encryption_context:
        check_expected_context(header.encryption_context, expected_encryption_context)
    if not authenticated:
        check_readable(header, allow_unauthenticated)
    # Everything that could raise comes before the key exists.
    auth, ctx_bytes = header._parts()
    backend = get_backend()
    key_bytes = unwrap(provider, header)
    if authenticated:
        # One backend call: header tag, body tag (the core bounds-checks the
        # framing again); it zeroes key_bytes whatever happens (saving a wipe
        # call per message).
        try:
            plaintext = backend.open_message(cipher, key_bytes, auth, ctx_bytes, data, True, layout)
        except HeaderAuthenticationError:
            raise HeaderAuthenticationError(
                "header authentication failed: the header was altered or the data key is not its own"
            ) from None
        except AuthenticationError:
            raise AuthenticationError("message body authentication failed: the body was altered") from None
    else:
        try:
            body = MessageBody(
                data[layout.iv_start : layout.iv_start + layout.iv_len],
                data[layout.ct_start : layout.ct_start + layout.ct_len],
                b"",
            )
            with BackendKey(header.algorithm, key_bytes) as key:
                verify_header(key, header)
                plaintext = open_body(key, header.algorithm, body, ctx_bytes)
        finally:
            wipe(key_bytes)
    return _decrypt_result(plaintext, header)


def parse_header(
    ciphertext: bytes | bytearray | memoryview,
    *,
    max_encrypted_data_keys: int = DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
) -> MessageHeader:
    """Parse and return a message's header without any KMS call or decryption.

    Nothing in it is authenticated until the message is decrypted."""
    return decode_message(_as_bytes(ciphertext, "ciphertext"), max_encrypted_data_keys)[0]


def encrypt_many(
    plaintexts: Iterable[bytes | bytearray | memoryview],
    provider: DataKeyProvider,
    *,
    encryption_context: Mapping[str, str] | None = None,
    algorithm: Algorithm | int | None = None,
) -> list[bytes]:
    """Encrypt many small values under one data key, in one native call.

    Each output is a complete standalone message. The messages of one batch share
    their header (EDKs, context, header IV and tag: the same bytes authenticated
    the same way); every body has its own random IV."""
    items = list(plaintexts)
    sizes = []
    for i, item in enumerate(items):
        if type(item) is bytes:  # the common case, first: this loop runs per value
            sizes.append(len(item))
        elif isinstance(item, (bytes, bytearray, memoryview)):
            sizes.append(memoryview(item).nbytes)
        else:
            raise ConfigurationError(f"plaintexts[{i}] must be bytes-like, not {type(item).__name__}")
    ctx = context_argument(encryption_context)
    alg = choose_algorithm(provider, algorithm)
    check_new_algorithm(alg)
    ctx_bytes = context_bytes_for_encrypt(ctx)
    out: list[bytes] = []
    for start in range(0, len(items), MAX_MESSAGES_PER_DATA_KEY):
        chunk = items[start : start + MAX_MESSAGES_PER_DATA_KEY]
        data_key = generate(provider, alg, ctx, sum(sizes[start : start + MAX_MESSAGES_PER_DATA_KEY]), len(chunk))
        try:
            with BackendKey(alg, data_key.plaintext) as key:
                header = build_header(key, alg, data_key.encrypted_data_keys, ctx, _iv())
                out += key.seal_messages(header, ctx_bytes, chunk)
        finally:
            data_key.wipe()
    return out


def _header_bytes(message: bytes | bytearray | memoryview) -> bytes:
    """The header TLV of a message, for grouping (no validation beyond bounds)."""
    layout = der.message_layout(message)
    return bytes(message[layout.header_start : layout.header_end])


def decrypt_many(
    ciphertexts: Iterable[bytes | bytearray | memoryview],
    provider: DataKeyProvider,
    *,
    expected_encryption_context: Mapping[str, str] | None = None,
    allow_unauthenticated: bool = False,
    max_encrypted_data_keys: int = DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
) -> list[bytes]:
    """Decrypt many messages; all or nothing (the first failure raises, naming its index).

    Messages that share a header (as ``encrypt_many`` makes them) are opened in
    one native call after one header check; the provider is asked once per
    distinct set of encrypted data keys."""
    items = list(ciphertexts)
    for i, item in enumerate(items):
        if type(item) is bytes:
            continue
        if not isinstance(item, (bytes, bytearray, memoryview)):
            raise ConfigurationError(f"ciphertexts[{i}] must be bytes-like, not {type(item).__name__}")
        if type(item) is memoryview and (item.itemsize != 1 or item.ndim != 1):
            items[i] = item.tobytes()  # the DER reader indexes bytes, not wider items
    results: list[bytes | None] = [None] * len(items)
    keys: dict[tuple[Any, ...], bytearray] = {}
    try:
        if items:
            leftover = _decrypt_group(
                items,
                list(range(len(items))),
                provider,
                keys,
                results,
                expected_encryption_context,
                allow_unauthenticated,
                max_encrypted_data_keys,
            )
            groups: dict[bytes, list[int]] = {}
            for i in leftover:
                try:
                    groups.setdefault(_header_bytes(items[i]), []).append(i)
                except MessageFormatError as exc:
                    raise MessageFormatError(f"message {i}: {exc}") from None
            for indices in groups.values():
                rest = _decrypt_group(
                    items,
                    indices,
                    provider,
                    keys,
                    results,
                    expected_encryption_context,
                    allow_unauthenticated,
                    max_encrypted_data_keys,
                )
                if rest:
                    raise MessageFormatError(f"message {rest[0]}: malformed message")
    finally:
        for k in keys.values():
            wipe(k)
    return results  # type: ignore[return-value]  # every slot is filled: a failure raised above


def _decrypt_group(
    items: list[Any],
    indices: list[int],
    provider: DataKeyProvider,
    keys: dict[tuple[Any, ...], bytearray],
    results: list[bytes | None],
    expected: Mapping[str, str] | None,
    allow_unauthenticated: bool,
    max_edks: int,
) -> list[int]:
    """Decrypt every message in ``indices`` that shares the first one's header;
    return the indices left over (other headers)."""
    first = indices[0]
    try:
        header, body = decode_message(items[first], max_edks)
        check_expected_context(header.encryption_context, expected)
        check_readable(header, allow_unauthenticated)
    except KmsEnvError as exc:
        raise type(exc)(f"message {first}: {exc}") from None
    cache_key = (header.algorithm, header.encrypted_data_keys, tuple(sorted(header.encryption_context.items())))
    key_bytes = keys.get(cache_key)
    if key_bytes is None:
        key_bytes = keys[cache_key] = unwrap(provider, header)
    ctx_bytes = context_bytes(header.encryption_context)
    with BackendKey(header.algorithm, key_bytes) as key:
        try:
            verify_header(key, header)
        except AuthenticationError as exc:
            raise type(exc)(f"message {first}: {exc}") from None
        if not header.algorithm.authenticated:
            return _open_legacy_group(key, header, body, ctx_bytes, items, indices, results, max_edks)
        plaintexts, statuses = key.open_messages(header.encoded, ctx_bytes, [items[i] for i in indices])
    leftover = []
    for i, pt, status in zip(indices, plaintexts, statuses):
        if status == STATUS_OK:
            results[i] = pt
        elif status == STATUS_AUTH:
            raise AuthenticationError(f"message {i}: message body authentication failed")
        elif i == first:
            raise MessageFormatError(f"message {i}: malformed message body")
        else:
            leftover.append(i)
    return leftover


def _open_legacy_group(
    key: CipherKey,
    header: MessageHeader,
    body: MessageBody,
    ctx_bytes: bytes,
    items: list[Any],
    indices: list[int],
    results: list[bytes | None],
    max_edks: int,
) -> list[int]:
    """Legacy CBC/CTR messages have no batch call: open, one by one, every
    message of ``indices`` whose header is the first one's (already verified);
    return the others. (Returning all but the first made a third copy of one
    message look like a lone malformed message.)"""
    leftover = []
    for i in indices:
        try:
            other, other_body = (header, body) if i == indices[0] else decode_message(items[i], max_edks)
            if other.encoded != header.encoded:
                leftover.append(i)
                continue
            results[i] = open_body(key, other.algorithm, other_body, ctx_bytes)
        except KmsEnvError as exc:
            raise type(exc)(f"message {i}: {exc}") from None
    return leftover
