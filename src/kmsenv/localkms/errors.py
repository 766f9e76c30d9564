"""Server-side KMS errors, with the codes and HTTP statuses real KMS uses.

Defined here rather than imported from ``kmsenv`` so the server stays independent
of the SDK's own exception hierarchy (and imports while that is still in flux).
"""

from __future__ import annotations


class KmsError(Exception):
    """An error answered to the client as ``{"Code": ..., "Message": ...}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def missing(name: str) -> KmsError:
    return KmsError(400, "MissingParameter", f'The parameter "{name}" is needed but not provided.')


def invalid(name: str, detail: str = "") -> KmsError:
    msg = f'The specified parameter "{name}" is not valid.'
    return KmsError(400, "InvalidParameter", msg + (f" {detail}" if detail else ""))


def key_not_found() -> KmsError:
    return KmsError(404, "Forbidden.KeyNotFound", "The specified Key is not found.")


def alias_not_found() -> KmsError:
    return KmsError(404, "Forbidden.AliasNotFound", "The specified Alias is not found.")


def key_state(state: str) -> KmsError:
    return KmsError(409, f"Rejected.{state}", f"The request was rejected because the key state is {state}.")


def throttled() -> KmsError:
    return KmsError(429, "Rejected.Throttling", "QPS Limit Exceeded")


# Fault-injected server errors use the two 5xx codes real KMS documents.
SERVER_ERRORS = {
    "InternalFailure": (500, "Internal Failure."),
    "ServiceUnavailableTemporary": (503, "Service Unavailable Temporary."),
}


def server_error(code: str) -> KmsError:
    status, message = SERVER_ERRORS[code]
    return KmsError(status, code, message)


# Protocol-level refusals (malformed HTTP, sizes over the server's limits).  KMS documents
# no codes for these; these names are localkms's choice.  All are 4xx/5xx non-throttling
# statuses, so clients (kmsenv included) treat them as final instead of retrying.
_HTTP_ERRORS = {
    400: ("InvalidParameter", "The request is not well-formed HTTP."),
    411: ("MissingContentLength", "Send the request body with Content-Length."),
    413: ("RequestEntityTooLarge", "The request body is too large."),
    414: ("RequestURITooLong", "The request line is too long."),
    431: ("RequestHeaderFieldsTooLarge", "The request headers are too large."),
    501: ("UnsupportedHTTPMethod", "Only POST and GET are supported."),
    505: ("HTTPVersionNotSupported", "Only HTTP/1.0 and HTTP/1.1 are supported."),
}


def http_error(status: int) -> KmsError:
    code, message = _HTTP_ERRORS.get(status, _HTTP_ERRORS[400])
    return KmsError(status if status in _HTTP_ERRORS else 400, code, message)
