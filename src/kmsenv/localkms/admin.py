"""LocalKms's own control call, ``KmsenvSetFault``, and the client ``kmsenv kms fault`` uses.

The call is an ordinary KMS request (API version 2016-01-20) signed with the server's
access key, so only whoever holds the server's credentials can change its faults.  Every
region's port serves it for every region: a region taken down has no port left, so the
call that brings it back up goes to another region's port.  It changes only the settings
it names (``Clear=true`` resets the others first), is not counted in ``stats()``, and is
exempt from the faults themselves (latency, throttling, 5xx), so a region answering every
request with an error can still be repaired.

Parameters: ``Region`` (required), ``Down``, ``LatencyMs``, ``ThrottleRate``,
``ErrorRate``, ``ErrorCode``, ``Clear``, ``DurationSeconds`` (then the region's faults
are cleared, unless another call changed them meanwhile).  The answer carries the
region's resulting settings.

``InstanceId`` instead of ``Region`` changes a KMS 3.0 instance gateway's faults
(:mod:`kmsenv.localkms.instance`) with the same parameters; the answer then names the
instance and its region.  Taking an instance down never closes a region's port, so no
"last port" rule applies.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence
from urllib.parse import urlsplit

from .errors import KmsError, invalid, missing
from .faults import Faults
from .signing import API_VERSION, canonical_query

if TYPE_CHECKING:
    from .server import LocalKms

ACTION = "KmsenvSetFault"
MAX_DURATION_SECONDS = 24 * 3600

# Parameter name -> Faults field.
_FIELDS = {
    "Down": "down",
    "LatencyMs": "latency_ms",
    "ThrottleRate": "throttle_rate",
    "ErrorRate": "error_rate",
    "ErrorCode": "error_code",
}


@dataclass(frozen=True)
class FaultChange:
    """A decoded ``KmsenvSetFault``: which region (or instance: ``instance_id`` set,
    ``region`` empty), which settings, for how long."""

    region: str
    changes: Mapping[str, Any]
    clear: bool = False
    duration: Optional[float] = None
    instance_id: Optional[str] = None

    def apply_to(self, current: Faults) -> Faults:
        """The region's new settings (ValueError if out of range)."""
        base = asdict(Faults() if self.clear else current)
        base.update(self.changes)
        return Faults(**base)


def _bool(params: Mapping[str, str], name: str) -> Optional[bool]:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    lowered = raw.lower()
    if lowered not in ("true", "false"):
        raise invalid(name, "It must be true or false.")
    return lowered == "true"


def _number(params: Mapping[str, str], name: str) -> Optional[float]:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise invalid(name) from None
    if not math.isfinite(value):
        raise invalid(name)
    return value


def parse_request(params: Mapping[str, str]) -> FaultChange:
    """Decode and range-check the call's parameters (KmsError 400 on a bad one)."""
    region = params.get("Region") or ""
    instance_id = params.get("InstanceId") or None
    if region and instance_id:
        raise invalid("InstanceId", "Give Region or InstanceId, not both.")
    if not region and not instance_id:
        raise missing("Region")
    changes: dict[str, Any] = {}
    for name, field_name in _FIELDS.items():
        if name == "Down":
            value: Any = _bool(params, name)
        elif name == "ErrorCode":
            value = params.get(name) or None
        else:
            value = _number(params, name)
        if value is not None:
            changes[field_name] = value
    duration = _number(params, "DurationSeconds")
    if duration is not None and not 0 < duration <= MAX_DURATION_SECONDS:
        raise invalid("DurationSeconds", f"It must be within (0, {MAX_DURATION_SECONDS}].")
    change = FaultChange(region, changes, bool(_bool(params, "Clear")), duration, instance_id)
    try:
        change.apply_to(Faults())  # the range checks of Faults, before anything changes
    except ValueError as exc:
        raise KmsError(400, "InvalidParameter", _parameter_names(str(exc))) from None
    return change


def _parameter_names(message: str) -> str:
    """A Faults error in the call's terms: ``ThrottleRate``, not ``throttle_rate``."""
    for name, field_name in _FIELDS.items():
        message = message.replace(field_name, name)
    return message


def describe(region: str, faults: Faults, listening: bool) -> dict[str, Any]:
    """The answer's body (without RequestId)."""
    return {
        "Region": region,
        "Listening": listening,
        "Faults": {
            "Down": faults.down,
            "LatencyMs": faults.latency_ms,
            "ThrottleRate": faults.throttle_rate,
            "ErrorRate": faults.error_rate,
            "ErrorCode": faults.error_code,
        },
    }


def set_instance_fault(kms: "LocalKms", change: FaultChange) -> dict[str, Any]:
    """Carry out a ``KmsenvSetFault`` naming ``InstanceId``; return the answer's body.

    The gateway's own ``set_fault`` replaces all its settings, so the change is applied
    to the current ones first (under the fault lock, like a region's)."""
    gateway = kms.instances.get(change.instance_id or "")
    if gateway is None:
        served = ", ".join(kms.instances) or "none"
        raise KmsError(
            404,
            "Kmsenv.InstanceNotServed",
            f"This localkms serves no instance {str(change.instance_id)[:64]}; it serves: {served}.",
        )
    with kms._fault_lock:
        try:
            new = change.apply_to(gateway.faults)
        except ValueError as exc:
            raise KmsError(400, "InvalidParameter", _parameter_names(str(exc))) from None
        try:
            gateway.set_fault(**asdict(new), duration=change.duration)
        except OSError as exc:
            raise KmsError(500, "InternalFailure", f"Cannot listen on port {gateway.port} again: {exc}") from None
        answer = describe(gateway.region, new, gateway.listening)
    answer["InstanceId"] = gateway.instance_id
    return answer


# -- the client side (``kmsenv kms fault``) ---------------------------------------------


class AdminCallError(Exception):
    """The call could not be delivered, or the server refused it (``code`` set)."""

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code


def _utc_timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def sign_v3(
    host: str,
    action: str,
    params: Mapping[str, str],
    access_key_id: str,
    access_key_secret: str,
    now: Optional[float] = None,
    nonce: Optional[str] = None,
) -> tuple[str, dict[str, str]]:
    """An ACS3-HMAC-SHA256 POST with the parameters in the query and no body, as the
    official client sends RPC-style calls; return the request target and headers."""
    query = canonical_query(params.items())
    body_hash = hashlib.sha256(b"").hexdigest()
    headers = {
        "host": host,
        "x-acs-action": action,
        "x-acs-version": API_VERSION,
        "x-acs-date": _utc_timestamp(time.time() if now is None else now),
        "x-acs-signature-nonce": nonce or uuid.uuid4().hex,
        "x-acs-content-sha256": body_hash,
    }
    signed = ";".join(sorted(headers))
    canonical_headers = "".join(f"{name}:{headers[name]}\n" for name in sorted(headers))
    canonical_request = "\n".join(("POST", "/", query, canonical_headers, signed, body_hash))
    string_to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    signature = hmac.new(access_key_secret.encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"ACS3-HMAC-SHA256 Credential={access_key_id},SignedHeaders={signed},Signature={signature}"
    )
    return "/?" + query if query else "/", headers


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme != "http" or not parts.hostname or not parts.port:
        raise AdminCallError(f"endpoint {url!r}: localkms serves plain http://HOST:PORT")
    return parts.hostname, parts.port


def call(
    endpoints: Sequence[str],
    params: Mapping[str, str],
    access_key_id: str,
    access_key_secret: str,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Send ``KmsenvSetFault`` to the first endpoint that accepts a connection.

    Only a refused or failed *connection* moves on to the next endpoint (a region that
    is down); once a request was sent, its answer is final.
    """
    failures = []
    for url in endpoints:
        host, port = _host_port(url)
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            try:
                conn.connect()
            except OSError as exc:
                failures.append(f"{host}:{port}: {exc.strerror or exc}")
                continue
            target, headers = sign_v3(f"{host}:{port}", ACTION, params, access_key_id, access_key_secret)
            try:
                conn.request("POST", target, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException) as exc:
                raise AdminCallError(f"{host}:{port}: no answer ({exc})") from None
        finally:
            conn.close()
        return _decode(response.status, raw, f"{host}:{port}")
    raise AdminCallError(
        "no localkms port accepted a connection (" + "; ".join(failures) + "): is `kmsenv kms serve` running?"
    )


def _decode(status: int, raw: bytes, where: str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise AdminCallError(f"{where}: HTTP {status} with a body that is not KMS JSON; is this a localkms port?")
    if status != 200:
        code = str(body.get("Code", ""))
        hint = {
            "InvalidAction.NotFound": " (a server without KmsenvSetFault: not localkms, or an older kmsenv)",
            "InvalidAccessKeyId.NotFound": " (these are not the server's credentials)",
            "SignatureDoesNotMatch": " (wrong access key secret)",
        }.get(code, "")
        raise AdminCallError(
            f"{where}: HTTP {status} {_printable(code)}: {_printable(str(body.get('Message', '')))}{hint}", code
        )
    return body


def _printable(text: str, limit: int = 400) -> str:
    """A server's message for a terminal: without the echoed string-to-sign, control
    characters or unbounded length."""
    text = text.split(" server string to sign is", 1)[0]
    return "".join(c if c.isprintable() else "?" for c in text)[:limit]


def endpoints_from_env(value: str) -> dict[str, str]:
    """``region=url,...`` as ``kmsenv kms serve`` prints it in KMSENV_KMS_ENDPOINTS."""
    result = {}
    for item in value.split(","):
        region, sep, url = item.strip().partition("=")
        if sep and region and url:
            result[region.strip()] = url.strip()
    return result


def ordered_endpoints(region: str, by_region: Mapping[str, str]) -> list[str]:
    """Every known port, the target region's last: taking a region down through its own
    port works too, but another port keeps the answer clear of the closing connection."""
    others = [url for r, url in by_region.items() if r != region]
    own = [by_region[region]] if region in by_region else []
    return list(dict.fromkeys(others + own))


def credentials_from_env(environ: Optional[Mapping[str, str]] = None) -> tuple[Optional[str], Optional[str]]:
    env = os.environ if environ is None else environ
    return (env.get("ALIBABA_CLOUD_ACCESS_KEY_ID") or None, env.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET") or None)
