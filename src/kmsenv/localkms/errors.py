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
    return KmsError(409, f"Rejected.{state}",
                    f"The request was rejected because the key state is {state}.")


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
