"""The envelope's shared steps: check the arguments, get a data key from a
provider or give one back, set a backend key up, build and verify a header.

The one-shot engine (:mod:`kmsenv.engine`), the stream formats, the column
formats and job keys all call these; each of them decides the order of the
steps for its own format. Every error that leaves a step is a
:class:`KmsEnvError`.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping, Protocol, Sequence

from ._wipe import wipe
from .algorithms import Algorithm
from .crypto import get_backend
from .crypto.interface import CipherKey
from .exceptions import (
    AuthenticationError,
    ConfigurationError,
    EncryptionContextMismatchError,
    HeaderAuthenticationError,
    KmsEnvError,
    UnauthenticatedAlgorithmError,
    UnsupportedAlgorithmError,
)
from .message import der
from .message.codec import MAX_CONTEXT_BYTES, MessageBody, MessageHeader, context_parts, header_parts
from .model import DataKey, DataKeyProvider, EncryptedDataKey, algorithm_argument, context_argument

__all__ = [
    "DEFAULT_ALGORITHM",
    "ALG_FACTS",
    "KeyRequest",
    "BackendKey",
    "context_argument",
    "choose_algorithm",
    "check_new_algorithm",
    "check_expected_context",
    "check_readable",
    "context_bytes_for_encrypt",
    "generate",
    "unwrap",
    "build_header",
    "verify_header",
]

DEFAULT_ALGORITHM = Algorithm.AES_GCM_NOPADDING_256
# (cipher, authenticated, key length) per algorithm: the per-message path reads
# these once from a dict instead of through three enum properties each time.
ALG_FACTS: dict[Algorithm, tuple[str, bool, int]] = {
    a: (a.info.cipher, a.info.authenticated, a.info.key_len) for a in Algorithm
}


class KeyRequest(Protocol):
    """What :func:`unwrap` reads from a header (a message header, a framed or
    key header): the EDKs, the algorithm and the context."""

    @property
    def encrypted_data_keys(self) -> Sequence[EncryptedDataKey]: ...

    @property
    def algorithm(self) -> Algorithm: ...

    @property
    def encryption_context(self) -> Mapping[str, str]: ...


# ---------------------------------------------------------------- arguments


def choose_algorithm(provider: Any, algorithm: object) -> Algorithm:
    """The algorithm of a new message: ``algorithm``, else the provider's
    ``algorithm`` attribute, else AES-256-GCM. An unknown one is an
    :class:`UnsupportedAlgorithmError`."""
    if type(algorithm) is Algorithm:
        return algorithm
    if algorithm is None:
        algorithm = getattr(provider, "algorithm", None) or DEFAULT_ALGORITHM
        if type(algorithm) is Algorithm:  # the usual case: no conversion
            return algorithm
    return algorithm_argument(algorithm, UnsupportedAlgorithmError)


def check_new_algorithm(
    algorithm: Algorithm,
    allow_unauthenticated: bool = False,
    *,
    what: str | None = None,
    error: type[KmsEnvError] = UnauthenticatedAlgorithmError,
) -> None:
    """Refuse a legacy CBC/CTR algorithm for new data unless
    ``allow_unauthenticated``. ``what`` names a format that never takes one
    (the stream and column formats), whose callers have always raised their
    own ``error`` type for it (ConfigurationError or UnsupportedAlgorithmError)."""
    if algorithm.authenticated or allow_unauthenticated:
        return
    if what is not None:
        raise error(f"{what} takes GCM algorithms only (AES-128/256-GCM, SM4-GCM), not {algorithm.name}")
    raise error(
        f"{algorithm.name} leaves the message body unauthenticated; new messages should use a GCM "
        "algorithm (pass allow_unauthenticated=True only for legacy interoperability)"
    )


def check_readable(header: KeyRequest, allow_unauthenticated: bool) -> None:
    """Refuse to read a legacy CBC/CTR message unless ``allow_unauthenticated``."""
    if not header.algorithm.authenticated and not allow_unauthenticated:
        raise UnauthenticatedAlgorithmError(
            f"the message uses {header.algorithm.name}, whose body nothing authenticates; "
            "pass allow_unauthenticated=True to decrypt it anyway"
        )


def check_expected_context(actual: Mapping[str, str], expected: Mapping[str, str] | None) -> None:
    """Every entry of ``expected`` must be in the message's context ``actual``."""
    if not expected:
        return
    missing = [k for k, v in context_argument(expected).items() if actual.get(k) != v]
    if missing:
        raise EncryptionContextMismatchError(
            "the message's encryption context does not contain the expected value for key(s): "
            + ", ".join(sorted(repr(k) for k in missing))
        )


def context_bytes_for_encrypt(ctx: Mapping[str, str]) -> bytes:
    """The context's serialisation (which checks it is str to str), refused
    past what Java readers of the official SDK can parse."""
    cb = context_parts(ctx)[0]
    if len(cb) > MAX_CONTEXT_BYTES:
        raise ConfigurationError(
            f"the serialized encryption context is {len(cb)} bytes; the limit is {MAX_CONTEXT_BYTES} "
            "(Java readers of the official SDK cannot parse more)"
        )
    return cb


# ---------------------------------------------------------------- providers


def generate(
    provider: DataKeyProvider, algorithm: Algorithm, ctx: Mapping[str, str], plaintext_size: int = 0, messages: int = 1
) -> DataKey:
    """A fresh data key for ``algorithm`` from the provider, its size checked
    (a wrong one is wiped before the error)."""
    try:
        if getattr(provider, "accepts_plaintext_size", False):
            # Caching providers count bytes and messages against their limits.
            data_key = provider.generate_data_key(  # type: ignore[call-arg]  # CachingProvider's extra keywords, announced by accepts_plaintext_size
                algorithm, dict(ctx), plaintext_size=plaintext_size, message_count=messages
            )
        else:
            data_key = provider.generate_data_key(algorithm, dict(ctx))
    except KmsEnvError:
        raise
    except Exception as exc:
        raise KmsEnvError(f"the data key provider failed ({type(exc).__name__})") from exc
    if type(data_key) is DataKey:
        key = data_key._key  # its own buffer without the property (a Python call per message)
    elif isinstance(data_key, DataKey):
        key = data_key.plaintext
    else:
        raise KmsEnvError("the data key provider did not return a kmsenv.DataKey")
    try:
        size = len(key)
        if size != ALG_FACTS[algorithm][2]:
            raise KmsEnvError(
                f"the data key provider returned a {size}-byte key; {algorithm.name} needs {algorithm.key_len}"
            )
    except Exception:
        data_key.wipe()
        raise
    return data_key


def _context_copy(context: Mapping[str, str]) -> dict[str, str]:
    """A dict the provider may keep or change. Parsed headers hold a read-only
    proxy of a dict, whose copy() is a plain dict copy (dict() of a proxy walks
    it key by key, several times slower)."""
    if type(context) is MappingProxyType:
        copied = context.copy()
        if type(copied) is dict:
            return copied
    return dict(context)


def unwrap(provider: DataKeyProvider, header: KeyRequest) -> bytearray:
    """The plaintext data key of ``header`` from the provider: a bytearray the
    caller wipes. A key of the wrong size is a HeaderAuthenticationError."""
    try:
        key = provider.decrypt_data_key(
            list(header.encrypted_data_keys), header.algorithm, _context_copy(header.encryption_context)
        )
    except KmsEnvError:
        raise
    except Exception as exc:
        raise KmsEnvError(f"the data key provider failed ({type(exc).__name__})") from exc
    # A bytearray from the provider is ours to use and wipe; bytes we copy.
    if type(key) is bytearray:
        owned = key
    elif isinstance(key, (bytes, bytearray)):
        owned = key if isinstance(key, bytearray) else bytearray(key)
    else:
        raise KmsEnvError("the data key provider did not return bytes")
    if len(owned) != ALG_FACTS[header.algorithm][2]:
        wipe(owned)
        # A key of the wrong size cannot be the one this header was sealed with
        # (e.g. an algorithm ID swapped after encryption).
        raise HeaderAuthenticationError(
            f"header authentication failed: the data key does not fit {header.algorithm.name}"
        )
    return owned


# ---------------------------------------------------------------- keys and headers


class BackendKey:
    """A backend key for one data key, closed (and wiped) on exit."""

    __slots__ = ("key",)

    def __init__(self, algorithm: Algorithm, key: bytes | bytearray):
        try:
            self.key: CipherKey = get_backend().new_key(algorithm.info.cipher, key)
        except KmsEnvError:
            raise
        except Exception as exc:
            raise UnsupportedAlgorithmError(f"{algorithm.name} is not available: {exc}") from None

    def __enter__(self) -> CipherKey:
        return self.key

    def __exit__(self, *exc: object) -> None:
        self.key.close()


def build_header(
    key: CipherKey,
    algorithm: Algorithm,
    edks: Sequence[EncryptedDataKey],
    ctx: Mapping[str, str],
    header_iv: bytes | None = None,
) -> bytes:
    """The encoded header TLV, its tag computed with ``key`` under
    ``header_iv`` (default: 12 fresh random bytes)."""
    if header_iv is None:
        header_iv = get_backend().random(12)
    fields, auth, _ = header_parts(algorithm, edks, ctx)
    _, tag = key.gcm_seal(header_iv, auth, b"")
    return der.header_tlv(fields, header_iv, tag)


def verify_header(key: CipherKey, header: MessageHeader) -> None:
    """Check a message header's tag (HeaderAuthenticationError)."""
    try:
        key.gcm_open(header.header_iv, header.auth_fields(), b"", header.header_auth_tag)
    except AuthenticationError:
        raise HeaderAuthenticationError(
            "header authentication failed: the header was altered or the data key is not its own"
        ) from None


def seal_body(key: CipherKey, algorithm: Algorithm, ctx_bytes: bytes, data: Any, iv: bytes) -> bytes:
    """The DER body of ``data`` sealed under ``key`` (the context bytes as GCM AAD)."""
    info = algorithm.info
    if info.authenticated:
        ct, tag = key.gcm_seal(iv, ctx_bytes, data)
        return der.body_tlv(iv, ct, tag)
    try:
        ct = key.legacy_encrypt(info.mode, iv, data)
    except ValueError as exc:  # CBC without padding and a length that is not a multiple of 16
        raise ConfigurationError(str(exc)) from None
    return der.body_tlv(iv, ct, b"")


def open_body(
    key: CipherKey,
    algorithm: Algorithm,
    body: MessageBody,
    ctx_bytes: bytes,
    *,
    altered: str = "the body was altered",
) -> bytes:
    """The plaintext of a parsed body; a GCM body is returned only once its tag verified.
    ``altered`` ends the error text (what a failed tag means to the caller)."""
    info = algorithm.info
    if info.authenticated:
        try:
            return key.gcm_open(body.iv, ctx_bytes, body.ciphertext, body.auth_tag)
        except AuthenticationError:
            raise AuthenticationError(f"message body authentication failed: {altered}") from None
    return key.legacy_decrypt(info.mode, body.iv, body.ciphertext)
