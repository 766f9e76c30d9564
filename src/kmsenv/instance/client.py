"""kmsenv's own client for KMS 3.0 instance gateways (ClientKey authentication).

Speaks the protocol of ``alibabacloud-dkms-gcs`` (kms-instance-gateway.md) without
depending on it: :mod:`.proto` bodies, :mod:`.auth` signatures, ``http.client`` over TLS.

* **TLS**: the instance CA is required and is the *only* trust anchor (a private CA has
  no business validating public names, and public CAs none validating the instance);
  hostname checking is on.  ``insecure_skip_tls_verify_for_tests_only=True`` turns both
  off and logs a warning at every client creation.
* **Errors**: every failure is a :class:`kmsenv.exceptions.KmsError` with ``code``,
  ``region``, ``request_id`` and ``retryable``, retried with :class:`kmsenv.Kms`'s rules:
  up to ``max_attempts`` attempts on throttling, 5xx, ``InternalFailure`` /
  ``ServiceUnavailableTemporary`` and network errors, sleeping
  ``uniform(0, min(backoff_max, backoff_base * 2**retry))`` seconds in between.
  A TLS verification failure is final.
* **Connections**: one keep-alive connection per thread (thread-safe; rebuilt after fork).

Blob conventions (spec §4.3-§4.5) for envelope encryption are at the end:
:func:`pack_transfer_blob` (``version[36] || iv[12] || ct||tag``, the blob the official
transfer adapters write) and :func:`context_aad` (each adapter's context-to-AAD rule).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import json
import logging
import random as _random
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union
from urllib.parse import urlsplit

from .. import _process
from ..exceptions import ConfigurationError, KmsError
from ..kms import RETRYABLE_CODES
from . import auth, proto
from .clientkey import ClientKey, load_client_key, read_password_file
from .errors import ProtobufError

__all__ = [
    "InstanceClient",
    "Ciphertext",
    "pack_transfer_blob",
    "unpack_transfer_blob",
    "context_aad",
    "AAD_RULES",
]

logger = logging.getLogger("kmsenv")

VERSION_ID_LEN = 36
IV_LEN = 12
TAG_LEN = 16
ADVANCE_HEADER = b"$\x00\x02"
MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # the gateway's own request limit is 3 MB
_MAX_ERROR_TEXT = 300


@dataclass(frozen=True)
class Ciphertext:
    """What Encrypt / GenerateDataKey return: the ciphertext (``ct||tag``; for Advance
    calls the self-describing ``'$' 00 02 || version || iv || ct||tag``), its ``iv``, and
    the key version used (``x-kms-migrationkeyversionid`` or the Advance body)."""

    key_id: str
    version_id: str
    iv: bytes
    ciphertext_blob: bytes
    request_id: str = ""
    algorithm: str = "AES_GCM"

    def transfer_blob(self) -> bytes:
        """The classic-looking blob the transfer adapters write: ``version || iv || ct``."""
        if self.ciphertext_blob[:3] == ADVANCE_HEADER:
            return self.ciphertext_blob[3:]
        return pack_transfer_blob(self.version_id, self.iv, self.ciphertext_blob)


@dataclass
class _Endpoint:
    host: str
    port: int
    hostname: str  # for SNI and the certificate check
    text: str = field(default="")


def _parse_endpoint(endpoint: str) -> _Endpoint:
    """``host[:port]`` (the official client's form) or ``https://host[:port][/]``."""
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise ConfigurationError(
            "the instance endpoint must be a non-empty str such as kst-xxx.cryptoservice.kms.aliyuncs.com"
        )
    text = endpoint.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    if parts.scheme != "https":
        raise ConfigurationError(f"instance endpoint {endpoint!r}: instance gateways are HTTPS only")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError(f"instance endpoint {endpoint!r}: give host[:port] only")
    try:
        port = parts.port or 443
    except ValueError:
        raise ConfigurationError(f"instance endpoint {endpoint!r}: bad port") from None
    if not parts.hostname:
        raise ConfigurationError(f"instance endpoint {endpoint!r}: no host")
    return _Endpoint(parts.hostname, port, parts.hostname, f"{parts.hostname}:{port}")


def _clean(text: str) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text[:_MAX_ERROR_TEXT]


class InstanceClient:
    """One KMS instance gateway, authenticated with a ClientKey.

    ``endpoint``: ``kst-xxx.cryptoservice.kms.aliyuncs.com`` (or ``host:port``);
    ``client_key`` (a loaded :class:`ClientKey`) or ``client_key_file`` /
    ``client_key_content`` with ``password`` or ``password_file``; ``ca``: the instance
    CA file (``PrivateKmsCA_kst-....pem``) or ``ca_pem``: its text.  ``region`` names the
    instance's region in errors.  ``server_hostname`` overrides the name the certificate
    must carry (connect to an IP, check the instance's name).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        client_key: Optional[ClientKey] = None,
        client_key_file: Optional[str] = None,
        client_key_content: Optional[str] = None,
        password: Union[str, bytes, None] = None,
        password_file: Optional[str] = None,
        ca: Optional[str] = None,
        ca_pem: Union[str, bytes, None] = None,
        region: Optional[str] = None,
        server_hostname: Optional[str] = None,
        max_attempts: int = 4,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        sleep: Optional[Callable[[float], None]] = None,
        random: Optional[_random.Random] = None,
        insecure_skip_tls_verify_for_tests_only: bool = False,
    ) -> None:
        self._endpoint = _parse_endpoint(endpoint)
        if server_hostname is not None:
            self._endpoint.hostname = server_hostname
        self.region = region
        self._client_key = self._load_key(client_key, client_key_file, client_key_content, password, password_file)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError("max_attempts must be an int >= 1")
        for name, seconds in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        for name, seconds in (("backoff_base", backoff_base), ("backoff_max", backoff_max)):
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
                raise ConfigurationError(f"{name} must be a non-negative number of seconds")
        self.max_attempts = max_attempts
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self._sleep = sleep if sleep is not None else time.sleep
        self._random = random if random is not None else _random.Random()
        self._ssl = self._tls_context(ca, ca_pem, insecure_skip_tls_verify_for_tests_only)
        self._local = threading.local()
        _process.track(self)

    def __repr__(self) -> str:
        return f"InstanceClient({self._endpoint.text!r}, client_key_id={self._client_key.key_id!r})"

    @property
    def endpoint(self) -> str:
        return self._endpoint.text

    @property
    def client_key_id(self) -> str:
        return self._client_key.key_id

    def _after_fork_in_child(self) -> None:
        self._local = threading.local()  # the parent's sockets are not ours to use

    @staticmethod
    def _load_key(
        client_key: Optional[ClientKey],
        path: Optional[str],
        content: Optional[str],
        password: Union[str, bytes, None],
        password_file: Optional[str],
    ) -> ClientKey:
        given = sum(x is not None for x in (client_key, path, content))
        if given != 1:
            raise ConfigurationError("give exactly one of client_key=, client_key_file= and client_key_content=")
        if client_key is not None:
            if not isinstance(client_key, ClientKey):
                raise ConfigurationError("client_key must be a kmsenv.instance.ClientKey")
            return client_key
        if password is not None and password_file is not None:
            raise ConfigurationError("give password= or password_file=, not both")
        if password_file is not None:
            password = read_password_file(password_file)
        return load_client_key(path=path, content=content, password=password)

    @staticmethod
    def _tls_context(ca: Optional[str], ca_pem: Union[str, bytes, None], insecure: bool) -> ssl.SSLContext:
        if insecure:
            if ca is not None or ca_pem is not None:
                raise ConfigurationError(
                    "insecure_skip_tls_verify_for_tests_only=True ignores the CA: give one or the other"
                )
            logger.warning(
                "kmsenv: TLS verification of a KMS instance gateway is OFF "
                "(insecure_skip_tls_verify_for_tests_only=True): anyone on the path can read and change the traffic"
            )
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        if ca is not None and ca_pem is not None:
            raise ConfigurationError("give ca= (a file) or ca_pem= (its text), not both")
        if ca is None and ca_pem is None:
            raise ConfigurationError(
                "the KMS instance's CA certificate is required: pass ca= (the PrivateKmsCA_kst-....pem file "
                "downloaded from the console) or ca_pem= (its text)"
            )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            if ca is not None:
                ctx.load_verify_locations(cafile=ca)
            else:
                text = ca_pem.decode("ascii") if isinstance(ca_pem, bytes) else ca_pem
                ctx.load_verify_locations(cadata=text)
        except (OSError, ssl.SSLError, UnicodeDecodeError, TypeError) as exc:
            where = f"file {ca}" if ca is not None else "text"
            raise ConfigurationError(f"cannot load the instance CA {where}: {type(exc).__name__}") from None
        return ctx

    # -- transport -----------------------------------------------------------------

    def _connection(self) -> http.client.HTTPSConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(
                self._endpoint.host, self._endpoint.port, timeout=self.connect_timeout, context=self._ssl
            )
            if self._endpoint.hostname != self._endpoint.host:
                # SNI and the certificate check use the instance's name; the socket goes to host.
                hostname = self._endpoint.hostname
                ctx = self._ssl

                def connect(c: http.client.HTTPSConnection = conn) -> None:
                    sock = socket.create_connection((c.host, c.port), self.connect_timeout)
                    c.sock = ctx.wrap_socket(sock, server_hostname=hostname)

                conn.connect = connect  # type: ignore[method-assign]
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def _round_trip(self, api: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes, dict[str, str]]:
        reused = getattr(getattr(self._local, "conn", None), "sock", None) is not None
        try:
            return self._exchange(body, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            # The gateway closed an idle keep-alive connection: one fresh try, not an attempt.
            return self._exchange(body, headers)

    def _exchange(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes, dict[str, str]]:
        conn = self._connection()
        try:
            if conn.sock is None:
                conn.connect()
            assert conn.sock is not None
            conn.sock.settimeout(self.read_timeout)
            conn.request("POST", "/", body=body, headers={"host": self._endpoint.text, **headers})
            response = conn.getresponse()
            length = response.getheader("Content-Length")
            if length is not None and (not length.isdigit() or int(length) > MAX_RESPONSE_BYTES):
                raise _BadResponse("the response is over the size limit")
            data = response.read(MAX_RESPONSE_BYTES + 1)
            if len(data) > MAX_RESPONSE_BYTES:
                raise _BadResponse("the response is over the size limit")
            response_headers = {k.lower(): v for k, v in response.getheaders()}
            if response.will_close:
                self._drop_connection()
            return response.status, data, response_headers
        except BaseException:
            self._drop_connection()
            raise

    # -- one call, with retries ----------------------------------------------------

    def call(
        self,
        api: str,
        request: Mapping[str, Any],
        *,
        headers: Optional[Mapping[str, str]] = None,
        max_attempts: Optional[int] = None,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Run one API (``Encrypt``, ...) with retries; return the decoded response message
        and the response headers (lowercased names)."""
        body = proto.encode(api + "Request", request)
        limit = self.max_attempts if max_attempts is None else max(1, max_attempts)
        attempt = 0
        while True:
            attempt += 1
            signed = auth.signed_headers(self._client_key, api, body, extra=headers)
            try:
                status, data, response_headers = self._round_trip(api, body, signed)
                return self._result(api, status, data, response_headers), response_headers
            except KmsError as exc:
                error = exc
            except ssl.SSLCertVerificationError:
                raise KmsError(
                    f"KMS instance {api} at {self.endpoint} failed: the gateway's certificate does not verify "
                    "against the instance CA (wrong CA file, or a host name the certificate does not carry)",
                    code="SSLError",
                    region=self.region,
                    retryable=False,
                ) from None
            except _BadResponse as exc:
                error = KmsError(
                    f"KMS instance {api} at {self.endpoint} failed: {exc}",
                    code="InvalidResponse",
                    region=self.region,
                    retryable=True,
                )
            except (OSError, http.client.HTTPException) as exc:
                kind = "timed out" if isinstance(exc, (TimeoutError, socket.timeout)) else type(exc).__name__
                error = KmsError(
                    f"KMS instance {api} at {self.endpoint} failed: cannot reach the gateway ({kind})",
                    code="ReadTimeout" if kind == "timed out" else "ConnectionError",
                    region=self.region,
                    retryable=True,
                )
            if not error.retryable or attempt >= limit:
                if error.retryable and attempt > 1:
                    error.args = (f"{error.args[0]} (after {attempt} attempts)",)
                raise error
            delay = self._random.uniform(0.0, min(self.backoff_max, self.backoff_base * (2 ** min(attempt - 1, 60))))
            logger.debug(
                "kmsenv: KMS instance %s at %s failed with %s (attempt %d/%d); retrying in %.3fs",
                api,
                self.endpoint,
                error.code,
                attempt,
                limit,
                delay,
            )
            if delay > 0:
                self._sleep(delay)

    def _result(self, api: str, status: int, data: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        if 200 <= status < 300:
            try:
                return proto.decode(api + "Response", data)
            except ProtobufError:
                raise _BadResponse("the response is not a valid protobuf message") from None
        try:
            err = proto.decode_error(data)
            code, message, request_id = err.error_code, err.error_message, err.request_id
        except ProtobufError:
            code, message, request_id = "", "", ""
        code = code or f"HTTP{status}"
        retryable = code in RETRYABLE_CODES or status == 429 or status >= 500
        text = f"KMS instance {api} at {self.endpoint} failed: HTTP {status} {_clean(code)}"
        if message:
            text += f": {_clean(message)}"
        raise KmsError(text, code=code, region=self.region, request_id=request_id or None, retryable=retryable)

    # -- the API ---------------------------------------------------------------------

    @staticmethod
    def _ciphertext(response: Mapping[str, Any], version_id: str) -> Ciphertext:
        return Ciphertext(
            key_id=response["KeyId"],
            version_id=version_id,
            iv=response["Iv"],
            ciphertext_blob=response["CiphertextBlob"],
            request_id=response["RequestId"],
            algorithm=response.get("Algorithm") or "AES_GCM",
        )

    def _version_header(self, api: str, headers: Mapping[str, str]) -> str:
        version_id = headers.get(auth.VERSION_HEADER, "")
        if len(version_id) != VERSION_ID_LEN or not version_id.isascii():
            raise KmsError(
                f"KMS instance {api} at {self.endpoint} answered without a usable x-kms-migrationkeyversionid header",
                code="InvalidResponse",
                region=self.region,
                retryable=False,
            )
        return version_id

    def encrypt(
        self, key_id: str, plaintext: bytes, aad: bytes = b"", *, max_attempts: Optional[int] = None
    ) -> Ciphertext:
        """Encrypt (the key's initial version); the version comes from the response header."""
        response, headers = self.call(
            "Encrypt", {"KeyId": key_id, "Plaintext": plaintext, "Aad": aad}, max_attempts=max_attempts
        )
        return self._ciphertext(response, self._version_header("Encrypt", headers))

    def decrypt(
        self,
        ciphertext_blob: bytes,
        iv: bytes,
        *,
        key_id: str = "",
        version_id: str = "",
        aad: bytes = b"",
        max_attempts: Optional[int] = None,
    ) -> bytes:
        """Decrypt a plain ciphertext, located by ``version_id`` (sent as the
        ``x-kms-migrationkeyversionid`` header, as the transfer adapters do) or ``key_id``."""
        if not key_id and not version_id:
            raise ConfigurationError("decrypt needs key_id= or version_id=")
        headers = {auth.VERSION_HEADER: version_id} if version_id else None
        response, _ = self.call(
            "Decrypt",
            {"CiphertextBlob": ciphertext_blob, "Iv": iv, "KeyId": key_id, "Aad": aad},
            headers=headers,
            max_attempts=max_attempts,
        )
        return bytes(response["Plaintext"])

    def generate_data_key(
        self, key_id: str, number_of_bytes: int = 32, aad: bytes = b"", *, max_attempts: Optional[int] = None
    ) -> tuple[bytes, Ciphertext]:
        response, headers = self.call(
            "GenerateDataKey",
            {"KeyId": key_id, "NumberOfBytes": number_of_bytes, "Aad": aad},
            max_attempts=max_attempts,
        )
        return bytes(response["Plaintext"]), self._ciphertext(
            response, self._version_header("GenerateDataKey", headers)
        )

    def advance_encrypt(
        self, key_id: str, plaintext: bytes, aad: bytes = b"", *, max_attempts: Optional[int] = None
    ) -> Ciphertext:
        """AdvanceEncrypt (the primary version; rotation-proof, self-describing blob)."""
        response, _ = self.call(
            "AdvanceEncrypt", {"KeyId": key_id, "Plaintext": plaintext, "Aad": aad}, max_attempts=max_attempts
        )
        return self._ciphertext(response, response["KeyVersionId"])

    def advance_decrypt(
        self, ciphertext_blob: bytes, aad: bytes = b"", *, key_id: str = "", max_attempts: Optional[int] = None
    ) -> bytes:
        iv = ciphertext_blob[3 + VERSION_ID_LEN : 3 + VERSION_ID_LEN + IV_LEN]
        response, _ = self.call(
            "AdvanceDecrypt",
            {"CiphertextBlob": ciphertext_blob, "KeyId": key_id, "Aad": aad, "Iv": iv},
            max_attempts=max_attempts,
        )
        return bytes(response["Plaintext"])

    def advance_generate_data_key(
        self, key_id: str, number_of_bytes: int = 32, aad: bytes = b"", *, max_attempts: Optional[int] = None
    ) -> tuple[bytes, Ciphertext]:
        response, _ = self.call(
            "AdvanceGenerateDataKey",
            {"KeyId": key_id, "NumberOfBytes": number_of_bytes, "Aad": aad},
            max_attempts=max_attempts,
        )
        return bytes(response["Plaintext"]), self._ciphertext(response, response["KeyVersionId"])

    def generate_random(self, length: int, *, max_attempts: Optional[int] = None) -> bytes:
        response, _ = self.call("GenerateRandom", {"Length": length}, max_attempts=max_attempts)
        return bytes(response["Random"])

    # -- the transfer adapters' convention (spec §4.3-§4.4) --------------------------

    def encrypt_transfer(
        self,
        key_id: str,
        plaintext: bytes,
        context: Optional[Mapping[str, str]] = None,
        *,
        rule: str = "sha256",
        max_attempts: Optional[int] = None,
    ) -> bytes:
        """Encrypt as dkms-transfer-python does: the classic-looking ``version || iv || ct``
        blob (raw bytes, not base64), AAD from ``context`` by ``rule``."""
        aad = context_aad(context, rule)
        return self.encrypt(key_id, plaintext, aad, max_attempts=max_attempts).transfer_blob()

    def decrypt_transfer(
        self,
        blob: bytes,
        context: Optional[Mapping[str, str]] = None,
        *,
        rule: str = "sha256",
        advance: bool = False,
        max_attempts: Optional[int] = None,
    ) -> bytes:
        """Decrypt a transfer blob: Decrypt with the version header and no KeyId, as
        dkms-transfer-python does, or with ``advance=True`` AdvanceDecrypt of
        ``'$' 00 02 || blob``, as kms-python-sdk does (software instances only, but it also
        takes versions other than the key's initial one)."""
        version_id, iv, ciphertext = unpack_transfer_blob(blob)
        aad = context_aad(context, rule)
        if advance:
            wrapped = ADVANCE_HEADER + pack_transfer_blob(version_id, iv, ciphertext)
            return self.advance_decrypt(wrapped, aad, max_attempts=max_attempts)
        return self.decrypt(ciphertext, iv, version_id=version_id, aad=aad, max_attempts=max_attempts)

    def wrap_data_key(
        self,
        key_id: str,
        data_key: bytes,
        context: Optional[Mapping[str, str]] = None,
        *,
        rule: str = "sha256",
        max_attempts: Optional[int] = None,
    ) -> bytes:
        """A data key as the transfer adapters' GenerateDataKey stores it: Encrypt of the
        key's **base64 text** (108-byte blob for 32 bytes), AAD by ``rule`` (default: raw
        SHA-256 of the sorted context, dkms-transfer-python 0.1.3 and Java transfer >= 0.0.9)."""
        text = base64.b64encode(data_key)
        return self.encrypt_transfer(key_id, text, context, rule=rule, max_attempts=max_attempts)

    def unwrap_data_key(
        self,
        blob: bytes,
        context: Optional[Mapping[str, str]] = None,
        *,
        rule: str = "sha256",
        advance: bool = False,
        max_attempts: Optional[int] = None,
    ) -> bytes:
        """The data key in a :meth:`wrap_data_key` blob.  Also reads the Java transfer
        <= 0.0.7 form (the raw key, 96/80-byte blobs)."""
        plaintext = self.decrypt_transfer(blob, context, rule=rule, advance=advance, max_attempts=max_attempts)
        if len(plaintext) in (16, 32):  # raw key: Java transfer <= 0.0.7 (spec §4.4)
            return plaintext
        try:
            return base64.b64decode(plaintext, validate=True)
        except (binascii.Error, ValueError):
            raise KmsError(
                "the decrypted data key is neither a raw key nor its base64 text",
                code="InvalidResponse",
                region=self.region,
                retryable=False,
            ) from None


class _BadResponse(Exception):
    """A 2xx answer that is not the API's message, or too large."""


def pack_transfer_blob(version_id: str, iv: bytes, ciphertext: bytes) -> bytes:
    vid = version_id.encode("ascii")
    if len(vid) != VERSION_ID_LEN or len(iv) != IV_LEN or len(ciphertext) < TAG_LEN:
        raise ConfigurationError("a transfer blob needs a 36-character version ID, a 12-byte IV and ct||tag")
    return vid + iv + ciphertext


def unpack_transfer_blob(blob: bytes) -> tuple[str, bytes, bytes]:
    """``(version ID, iv, ct||tag)`` of a transfer blob (raw bytes; a leading Advance
    header is accepted and dropped)."""
    if blob[:3] == ADVANCE_HEADER and len(blob) > 3 + VERSION_ID_LEN + IV_LEN + TAG_LEN:
        blob = blob[3:]
    if len(blob) < VERSION_ID_LEN + IV_LEN + TAG_LEN:
        raise ConfigurationError("not an instance transfer blob: too short")
    try:
        version_id = blob[:VERSION_ID_LEN].decode("ascii")
    except UnicodeDecodeError:
        raise ConfigurationError("not an instance transfer blob: the version ID is not ASCII") from None
    return version_id, blob[VERSION_ID_LEN : VERSION_ID_LEN + IV_LEN], blob[VERSION_ID_LEN + IV_LEN :]


def _sorted_pairs(context: Mapping[str, str]) -> bytes:
    for k, v in context.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ConfigurationError("encryption context keys and values must be str")
    return "&".join(f"{k}={context[k]}" for k in sorted(context)).encode("utf-8")


#: How each official adapter turns an encryption context into GCM AAD (spec §4.5).
AAD_RULES = {
    # dkms-transfer-python 0.1.3; Java transfer >= 0.0.9
    "sha256": lambda ctx: hashlib.sha256(_sorted_pairs(ctx)).digest(),
    # kms-python-sdk 1.1.3 (Advance, its default)
    "sha256-hex": lambda ctx: hashlib.sha256(_sorted_pairs(ctx)).hexdigest().encode("ascii"),
    # kms-python-sdk low-version mode; Java transfer <= 0.0.8 (compact JSON, insertion order)
    "json": lambda ctx: json.dumps(dict(ctx), separators=(",", ":"), ensure_ascii=False).encode("utf-8"),
}


def context_aad(context: Optional[Mapping[str, str]], rule: str = "sha256") -> bytes:
    """The AAD an adapter derives from ``context`` (empty context: no AAD)."""
    if rule not in AAD_RULES:
        raise ConfigurationError(f"unknown context-to-AAD rule {rule!r}; use one of {sorted(AAD_RULES)}")
    if not context:
        return b""
    aad: bytes = AAD_RULES[rule](context)
    return aad
