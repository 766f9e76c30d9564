"""Errors of the instance-gateway protocol, and the protobuf ``Error`` body.

Every class derives from one of kmsenv's own exceptions, so existing handlers
(``except kmsenv.ConfigurationError``, ``except kmsenv.KmsEnvError``) keep working.
Messages never carry key material, passwords or request bodies.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..exceptions import ConfigurationError, KmsEnvError, MessageFormatError

__all__ = ["ProtobufError", "ClientKeyError", "AuthError", "ErrorBody"]


class ProtobufError(MessageFormatError):
    """A protobuf body is malformed: truncated, over a length limit, a wire type that
    does not match the field, a string that is not UTF-8, an int32 out of range."""


class ClientKeyError(ConfigurationError):
    """A ClientKey file or its password cannot be used (not JSON, missing fields,
    PKCS#12 that does not open with the password, not an RSA key)."""


class AuthError(KmsEnvError):
    """A request failed the gateway's authentication checks (spec §2.5).

    ``status``, ``code`` and ``message`` are what the gateway answers; the server side
    (LocalKms) raises it, a client never does.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ErrorBody:
    """The protobuf ``Error`` message of a 4xx/5xx answer (``StatusCode`` is informative:
    the official client reads the HTTP status instead)."""

    status_code: int
    error_code: str
    error_message: str
    request_id: str
