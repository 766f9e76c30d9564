"""Verification of the two request signatures the official clients produce.

* ``ACS3-HMAC-SHA256`` (V3): default of alibabacloud-kms20160120 / tea-openapi.
* RPC ``HMAC-SHA1`` / SignatureVersion 1.0: aliyun-python-sdk-core (legacy client) and
  the new client with ``signature_algorithm="v2"``.

Both canonical forms are rebuilt from *decoded* parameters and re-encoded with RFC 3986
rules: the raw query string is never signed as-is, because the clients encode with
``quote_plus`` while the signature uses ``%20``.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import heapq
import hmac
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional, Sequence
from urllib.parse import quote

from .errors import KmsError

MAX_SKEW_SECONDS = 15 * 60
API_VERSION = "2016-01-20"
# Nonces live until their request's timestamp expires; at the server's ceiling (~1100
# signed requests/s on 2 cores) that is ~1M live nonces at ~100 bytes each.
DEFAULT_MAX_NONCES = 1_000_000
# ASCII digits only: ``\d`` and int() would also take other scripts' digits.
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# Headers whose absence from SignedHeaders would let a replayed or redirected request pass.
_V3_REQUIRED_SIGNED = (
    "host",
    "x-acs-action",
    "x-acs-version",
    "x-acs-date",
    "x-acs-signature-nonce",
    "x-acs-content-sha256",
)


@dataclass(frozen=True)
class VerifiedRequest:
    access_key_id: str
    action: str
    version: str


def pct(value: str) -> str:
    """RFC 3986 encoding of UTF-8, leaving only ``A-Z a-z 0-9 - _ . ~`` unescaped."""
    return quote(value, safe="")


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{pct(k)}={pct(v)}" for k, v in sorted(params))


def _incomplete(detail: str = "") -> KmsError:
    msg = "The request signature does not conform to Aliyun standards."
    return KmsError(400, "IncompleteSignature", msg + (f" {detail}" if detail else ""))


def _mismatch(string_to_sign: str) -> KmsError:
    # The legacy SDK compares the text after "server string to sign is:" with its own
    # string-to-sign and, if equal, reports InvalidAccessKeySecret: keep this exact form.
    return KmsError(
        400,
        "SignatureDoesNotMatch",
        f"Specified signature is not matched with our calculation. server string to sign is:{string_to_sign}",
    )


def _signature_matches(expected: str, given: str) -> bool:
    """Constant-time comparison that also takes non-ASCII input (a forged header or a
    percent-encoded query value): ``compare_digest`` raises TypeError on non-ASCII str."""
    return hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8", errors="surrogatepass"))


def _unknown_key() -> KmsError:
    return KmsError(404, "InvalidAccessKeyId.NotFound", "The Access Key ID provided does not exist in our records.")


def _check_timestamp(value: Optional[str], name: str, now: float) -> int:
    """Refuse a missing, malformed or out-of-window timestamp; return it in epoch seconds."""
    if not value:
        raise KmsError(
            400,
            "IllegalTimestamp",
            f'The input parameter "{name}" that is mandatory for processing this request is not supplied.',
        )
    try:  # strptime would cost more than the whole signature check
        if not _TIMESTAMP.fullmatch(value):
            raise ValueError(value)
        ts = calendar.timegm(
            (
                int(value[0:4]),
                int(value[5:7]),
                int(value[8:10]),
                int(value[11:13]),
                int(value[14:16]),
                int(value[17:19]),
                0,
                0,
                0,
            )
        )
    except ValueError:
        raise KmsError(400, "IllegalTimestamp", f'The specified parameter "{name}" is not valid.') from None
    if abs(now - ts) > MAX_SKEW_SECONDS:
        raise KmsError(400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")
    return ts


class NonceCache:
    """Remembers accepted (access key, nonce) pairs to refuse replays.

    A request stays acceptable to the timestamp check until ``timestamp + MAX_SKEW_SECONDS``
    -- up to twice the skew window after receipt when its timestamp is in the future -- so
    each nonce is kept exactly that long, not for a fixed time after receipt.

    Bounded: with ``max_entries`` nonces still live, a new request is refused with 429
    ``Rejected.Throttling`` (clients retry it later) instead of forgetting a live nonce,
    which would reopen the replay window.  Entries are 16-byte digests, so a huge nonce
    costs no more memory than a short one.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_NONCES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._seen: set[bytes] = set()
        # expiry second -> digests that expire then; a heap of those seconds finds the
        # oldest bucket without scanning.
        self._buckets: dict[int, list[bytes]] = {}
        self._expiries: list[int] = []
        self._max = max_entries
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_add(self, access_key_id: str, nonce: str, timestamp: int, now: float) -> None:
        """Record the nonce of a request signed at ``timestamp`` (epoch seconds), or raise
        ``SignatureNonceUsed`` if it is live already, or ``Rejected.Throttling`` if full."""
        digest = hashlib.blake2b(f"{access_key_id}\n{nonce}".encode("utf-8", "surrogatepass"), digest_size=16).digest()
        expires = timestamp + MAX_SKEW_SECONDS
        with self._lock:
            self._forget_expired(now)
            if digest in self._seen:
                raise KmsError(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
            if len(self._seen) >= self._max:
                raise KmsError(
                    429,
                    "Rejected.Throttling",
                    f"QPS Limit Exceeded. localkms remembers at most {self._max} "
                    "signature nonces until their timestamps expire; retry later.",
                )
            self._seen.add(digest)
            bucket = self._buckets.get(expires)
            if bucket is None:
                bucket = self._buckets[expires] = []
                heapq.heappush(self._expiries, expires)
            bucket.append(digest)

    def _forget_expired(self, now: float) -> None:
        # A request signed at ts is refused as expired once now > ts + MAX_SKEW_SECONDS.
        expiries, seen = self._expiries, self._seen
        while expiries and expiries[0] < now:
            for digest in self._buckets.pop(heapq.heappop(expiries)):
                seen.discard(digest)


def lower_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Header name (lowercased) -> trimmed value; repeated headers are sorted and joined
    with ``,`` as the V3 canonical form requires."""
    out: dict[str, str] = {}
    repeated: dict[str, list[str]] = {}
    for name, value in items:
        name, value = name.lower(), value.strip()
        if name in out:
            repeated.setdefault(name, [out[name]]).append(value)
        out[name] = value
    for name, values in repeated.items():
        out[name] = ",".join(sorted(values))
    return out


def verify(
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    form: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
    secret_for: Callable[[str], Optional[str]],
    nonces: Optional[NonceCache] = None,
    now: Optional[float] = None,
) -> VerifiedRequest:
    """Authenticate a request; return who sent it and which action it names.

    ``headers`` maps lowercase names to values (see :func:`lower_headers`);
    ``secret_for`` maps an AccessKeyId to its secret, or None if unknown.
    Raises :class:`KmsError` with the real KMS code and status on any failure.
    """
    now = time.time() if now is None else now
    authorization = headers.get("authorization", "")
    if authorization:
        return _verify_v3(method, path, query, headers, body, authorization, secret_for, nonces, now)
    params = list(query) + list(form)
    if any(k == "Signature" for k, _ in params):
        return _verify_rpc_v1(method, params, secret_for, nonces, now)
    raise _incomplete("The request is not signed.")


def _verify_v3(
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
    authorization: str,
    secret_for: Callable[[str], Optional[str]],
    nonces: Optional[NonceCache],
    now: float,
) -> VerifiedRequest:
    algorithm, _, rest = authorization.partition(" ")
    if algorithm != "ACS3-HMAC-SHA256":
        raise _incomplete(f"Unsupported signature algorithm {algorithm!r}.")
    fields = {}
    for part in rest.split(","):
        k, sep, v = part.strip().partition("=")
        if sep:
            fields[k] = v
    ak, signed, signature = (fields.get("Credential"), fields.get("SignedHeaders"), fields.get("Signature"))
    if not ak or not signed or not signature:
        raise _incomplete()
    secret = secret_for(ak)
    if secret is None:
        raise _unknown_key()
    payload_hash = hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA256
    if headers.get("x-acs-content-sha256", "") != payload_hash:
        raise _incomplete("x-acs-content-sha256 does not match the body.")
    signed_names = signed.split(";")
    if any(h not in signed_names for h in _V3_REQUIRED_SIGNED):
        raise _incomplete("Required headers are not signed.")
    timestamp = _check_timestamp(headers.get("x-acs-date", ""), "x-acs-date", now)

    canonical_headers = "".join(f"{h}:{headers.get(h, '')}\n" for h in signed_names)
    canonical_request = "\n".join(
        (method, path or "/", canonical_query(query), canonical_headers, signed, payload_hash)
    )
    string_to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    expected = hmac.new(secret.encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    if not _signature_matches(expected, signature.lower()):
        raise _mismatch(string_to_sign)
    if nonces is not None:
        nonces.check_and_add(ak, headers.get("x-acs-signature-nonce", ""), timestamp, now)
    return VerifiedRequest(ak, headers.get("x-acs-action", ""), headers.get("x-acs-version", ""))


def _verify_rpc_v1(
    method: str,
    params: Sequence[tuple[str, str]],
    secret_for: Callable[[str], Optional[str]],
    nonces: Optional[NonceCache],
    now: float,
) -> VerifiedRequest:
    single = dict(params)
    if single.get("SignatureMethod") != "HMAC-SHA1" or single.get("SignatureVersion") != "1.0":
        raise _incomplete("Only HMAC-SHA1 with SignatureVersion 1.0 is supported.")
    ak = single.get("AccessKeyId")
    if not ak:
        raise KmsError(400, "MissingParameter", 'The parameter "AccessKeyId" is needed but not provided.')
    secret = secret_for(ak)
    if secret is None:
        raise _unknown_key()
    timestamp = _check_timestamp(single.get("Timestamp"), "Timestamp", now)
    canonical = canonical_query((k, v) for k, v in params if k != "Signature")
    string_to_sign = f"{method}&{pct('/')}&{pct(canonical)}"
    expected = base64.b64encode(
        hmac.new((secret + "&").encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha1).digest()
    ).decode("ascii")
    if not _signature_matches(expected, single["Signature"]):
        raise _mismatch(string_to_sign)
    if nonces is not None:
        nonces.check_and_add(ak, single.get("SignatureNonce", ""), timestamp, now)
    return VerifiedRequest(ak, single.get("Action", ""), single.get("Version", ""))
