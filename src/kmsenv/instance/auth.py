"""Request signing of the instance gateway, both sides (spec §2.3-§2.5).

A request is signed with the ClientKey's RSA key (PKCS#1 v1.5, SHA-256) over::

    POST\\n{content-sha256}\\n{content-type}\\n{date}\\n{x-kms-* headers, sorted, "k:v\\n"}/

sent as ``Authorization: Bearer <base64>``.  The ClientKey ID travels in
``x-kms-acccesskeyid`` (three c's, as the official client spells it).  No nonce, host,
path or query is signed: the body is bound only through ``content-sha256``, and replay
within the 15-minute Date window is possible by design of the protocol.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import time
from typing import Callable, Iterable, Mapping, Optional

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .clientkey import ClientKey
from .errors import AuthError

__all__ = [
    "API_VERSION",
    "SIGNATURE_METHOD",
    "CONTENT_TYPE",
    "KEY_ID_HEADER",
    "VERSION_HEADER",
    "content_sha256",
    "string_to_sign",
    "signed_headers",
    "verify_request",
]

API_VERSION = "dkms-gcs-0.2"
SIGNATURE_METHOD = "RSA_PKCS1_SHA_256"
CONTENT_TYPE = "application/x-protobuf"
KEY_ID_HEADER = "x-kms-acccesskeyid"  # sic: three c's
VERSION_HEADER = "x-kms-migrationkeyversionid"
MAX_SKEW_SECONDS = 15 * 60
_MAX_SIGNATURE_B64 = 2048  # RSA-8192 is 1368 base64 characters
_MAX_HEADER_VALUE = 1024


def content_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest().upper()


def string_to_sign(headers: Mapping[str, str]) -> str:
    """The official client's ``get_string_to_sign``: header names compared case-sensitively,
    only lowercase ``x-kms-*`` names signed, values stripped, resource always ``/``."""
    signed = "".join(f"{k}:{headers[k].strip()}\n" for k in sorted(headers) if k.startswith("x-kms-"))
    return (
        "POST\n"
        f"{headers.get('content-sha256', '')}\n"
        f"{headers.get('content-type', '')}\n"
        f"{headers.get('date', '')}\n"
        f"{signed}/"
    )


def signed_headers(
    client_key: ClientKey,
    api_name: str,
    body: bytes,
    *,
    extra: Optional[Mapping[str, str]] = None,
    now: Optional[float] = None,
) -> dict[str, str]:
    """Every header the gateway needs for one call, ``authorization`` included.

    ``extra`` headers (e.g. ``x-kms-migrationkeyversionid``) are signed when their name is
    a lowercase ``x-kms-*`` one, as in the official client.
    """
    headers = dict(extra or {})
    headers.update(
        {
            "accept": CONTENT_TYPE,
            "date": email.utils.formatdate(time.time() if now is None else now, usegmt=True),
            "x-kms-apiversion": API_VERSION,
            "x-kms-apiname": api_name,
            "x-kms-signaturemethod": SIGNATURE_METHOD,
            KEY_ID_HEADER: client_key.key_id,
            "content-type": CONTENT_TYPE,
            "content-sha256": content_sha256(body),
        }
    )
    signature = client_key.sign(string_to_sign(headers).encode("utf-8"))
    headers["authorization"] = "Bearer " + base64.b64encode(signature).decode("ascii")
    return headers


def _invalid_param(name: str, extra: str = "") -> AuthError:
    return AuthError(400, "InvalidParam", f"The Param {name} is invalid.{extra}")


def unauthorized() -> AuthError:
    # The adapters map this code to InvalidAccessKeyId.NotFound; 401 is the emulator's choice.
    return AuthError(401, "Unauthorized", "The request is unauthorized.")


def verify_request(
    raw_headers: Iterable[tuple[str, str]],
    body: bytes,
    public_key_for: Callable[[str], Optional[rsa.RSAPublicKey]],
    *,
    now: Optional[float] = None,
) -> tuple[str, dict[str, str]]:
    """Check a request as a gateway would (spec §2.5); return ``(ClientKey ID, headers)``.

    ``raw_headers`` are the names as received (case kept: only lowercase ``x-kms-*`` names
    are signed).  ``public_key_for`` returns the key registered for a ClientKey ID, or
    ``None`` for an unknown, expired or revoked one.  Raises :class:`AuthError` with the
    gateway's code.  The returned headers map lowercased names to values.
    """
    exact: dict[str, str] = {}
    for name, value in raw_headers:
        if len(value) > _MAX_HEADER_VALUE and (name.lower().startswith("x-kms-") or name.lower() == "authorization"):
            raise AuthError(400, "InvalidParam", f"The Param {name} is invalid.")
        if name in exact and name.startswith("x-kms-"):
            # Two values for a signed header: which one was signed is ambiguous.
            raise _invalid_param(name)
        exact[name] = value
    lower = {k.lower(): v for k, v in exact.items()}

    version = lower.get("x-kms-apiversion")
    if version != API_VERSION:
        raise AuthError(400, "InvalidApiVersion", f'The ApiVersion "{(version or "")[:64]}" is invalid.')
    method = lower.get("x-kms-signaturemethod")
    if not method:
        raise _invalid_param("x-kms-signaturemethod")
    if method != SIGNATURE_METHOD:
        raise _invalid_param("x-kms-signaturemethod", f' message:"{method[:64]}".')
    key_id = lower.get(KEY_ID_HEADER)
    if not key_id:
        raise AuthError(400, "MissingParameter", f"Parameter {KEY_ID_HEADER} does not exist in http header or body.")
    date = lower.get("date", "")
    try:
        sent = email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        raise _invalid_param("Date") from None
    if abs((time.time() if now is None else now) - sent) > MAX_SKEW_SECONDS:
        raise AuthError(400, "RequestTimeTooSkewed", "Request time exceeds server time more than 15 minutes.")
    if lower.get("content-sha256") != content_sha256(body):
        # Undocumented on the real gateway (spec §2.5 item 5): the signature would not
        # cover this body, so the emulator answers as for a bad signature.
        raise unauthorized()
    auth = lower.get("authorization", "")
    if not auth.startswith("Bearer ") or len(auth) > len("Bearer ") + _MAX_SIGNATURE_B64:
        raise _invalid_param("Authorization")
    try:
        signature = base64.b64decode(auth[len("Bearer ") :], validate=True)
    except (binascii.Error, ValueError):
        raise _invalid_param("Authorization") from None
    public_key = public_key_for(key_id)
    if public_key is None:
        raise unauthorized()
    try:
        public_key.verify(signature, string_to_sign(exact).encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise unauthorized() from None
    return key_id, lower
