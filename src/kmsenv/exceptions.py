"""Every error kmsenv raises derives from :class:`KmsEnvError`.

Messages never contain key material, plaintext or secrets: they name what went
wrong and, where it helps, what to do about it.
"""

from __future__ import annotations

__all__ = [
    "KmsEnvError",
    "MessageFormatError",
    "AuthenticationError",
    "HeaderAuthenticationError",
    "NoUsableKeyError",
    "UnauthenticatedAlgorithmError",
    "EncryptionContextMismatchError",
    "UnsupportedAlgorithmError",
    "KmsError",
    "SecretNotFoundError",
    "SecretExistsError",
    "ConfigurationError",
    "WipedKeyError",
    "InputChangedError",
    "NoCredentialsError",
]


class KmsEnvError(Exception):
    """Root of every kmsenv error."""


class MessageFormatError(KmsEnvError, ValueError):
    """The input is not a well-formed kmsenv/Alibaba message (truncated, trailing
    bytes, bad lengths, unknown algorithm, too many encrypted data keys, ...)."""


class AuthenticationError(KmsEnvError):
    """A header or body authentication tag did not verify: the message was
    altered, or the data key is not the one it was sealed with."""


class HeaderAuthenticationError(AuthenticationError):
    """The header's tag did not verify: the header (CMKs, context, algorithm)
    was altered, or the data key is not the one it was written with. Raised
    before any body byte is looked at."""


class NoUsableKeyError(KmsEnvError):
    """None of the message's encrypted data keys could be decrypted by the provider.

    ``errors`` lists, per CMK tried, what went wrong (empty when no encrypted data
    key named a CMK the provider may use).
    """

    def __init__(self, message: str, errors: list[tuple[str, BaseException]] | None = None):
        super().__init__(message)
        self.errors: list[tuple[str, BaseException]] = list(errors or [])


class UnauthenticatedAlgorithmError(KmsEnvError):
    """The message uses a legacy CBC/CTR algorithm whose body nothing authenticates;
    pass ``allow_unauthenticated=True`` to accept that risk."""


class EncryptionContextMismatchError(KmsEnvError):
    """The message's encryption context does not contain the expected entries."""


class UnsupportedAlgorithmError(KmsEnvError, ValueError):
    """The algorithm is known but cannot be used here (e.g. not for new messages,
    or not with this provider / backend)."""


class ConfigurationError(KmsEnvError, ValueError):
    """Invalid arguments: malformed ARNs, duplicate CMKs, bad limits, ..."""


class KmsError(KmsEnvError):
    """A KMS call failed.

    Attributes: ``code`` (KMS error code, e.g. ``Rejected.Throttling``),
    ``region``, ``request_id`` and ``retryable``.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        region: str | None = None,
        request_id: str | None = None,
        retryable: bool = False,
    ):
        super().__init__(message)
        self.code = code
        self.region = region
        self.request_id = request_id
        self.retryable = retryable

    def __str__(self) -> str:
        parts = [super().__str__()]
        details = [
            f"{name}={value}"
            for name, value in (("code", self.code), ("region", self.region), ("request_id", self.request_id))
            if value
        ]
        if details:
            parts.append("(" + ", ".join(details) + ")")
        return " ".join(parts)


class SecretNotFoundError(KmsError):
    """A Secrets Manager secret (or the version asked for) does not exist."""


class SecretExistsError(KmsError):
    """A Secrets Manager secret (or a version ID) of that name exists already."""


class WipedKeyError(KmsEnvError, RuntimeError):
    """A cached data key was used after it had been wiped (evicted, expired,
    cleared). kmsenv's caches never hand out such a key; seeing this error
    means a caller kept a cache entry past its life."""


class InputChangedError(KmsEnvError):
    """A stream's input yielded more or fewer bytes than its size said when the
    message's lengths were written (another writer changed the file while it
    was being encrypted). The partial output is not a readable message."""


class NoCredentialsError(ConfigurationError):
    """No usable Alibaba Cloud credentials: none configured, an incomplete pair in
    the environment (``missing`` names the variable that is not set), or the
    default credential chain found nothing. A :class:`ConfigurationError`, so
    existing handlers keep working; its own type lets a front end (the ``kmsenv``
    command) say what to set in its own terms."""

    def __init__(self, message: str, missing: str | None = None):
        super().__init__(message)
        self.missing = missing
