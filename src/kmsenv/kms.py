"""A thin, thread-safe, retrying client for the regional Alibaba Cloud KMS API.

:class:`Kms` keeps one official ``alibabacloud-kms20160120`` client per region
(created lazily), talks raw bytes and dict encryption contexts, runs its own
retry loop (exponential backoff with full jitter) and turns every failure into
:class:`kmsenv.exceptions.KmsError` (or :class:`ConfigurationError` for local
configuration problems such as missing credentials).

Specs: kms-local-server.md sections 2, 6 and 8; alibaba-message-format.md
sections 8, 12 and 15.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import os
import random as _random
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple
from urllib.parse import urlsplit

from kmsenv import _process
from kmsenv._version import __version__
from kmsenv._wipe import wipe
from kmsenv.arn import Arn
from kmsenv.exceptions import ConfigurationError, KmsError, NoCredentialsError, SecretExistsError, SecretNotFoundError

__all__ = [
    "Kms",
    "InstanceEndpoint",
    "KeyVersion",
    "SecretValue",
    "SecretVersion",
    "ENDPOINTS_ENV",
    "INSTANCES_ENV",
    "RETRYABLE_CODES",
    "SECRET_NOT_FOUND_CODES",
    "SECRET_EXISTS_CODES",
    "NoCredentialsError",
]

# The codes under which KMS says a secret (or its CMK) does not exist (the Java
# SDK creates the secret on exactly these), and that one exists already.
SECRET_NOT_FOUND_CODES = frozenset({"Forbidden.ResourceNotFound", "Forbidden.KeyNotFound"})
SECRET_EXISTS_CODES = frozenset({"Rejected.ResourceExist"})

logger = logging.getLogger("kmsenv")


class _RedactPlaintext(logging.Filter):
    """The official client sends Encrypt's ``Plaintext`` (a base64 data key) in
    the URL query, and urllib3 logs request URLs at DEBUG. Redact the value
    wherever a record carries it, before any handler sees the record."""

    _PATTERN = re.compile(r"(Plaintext=)[^&\s\"']+")

    def _clean(self, value: Any) -> Any:
        return self._PATTERN.sub(r"\1<redacted>", value) if isinstance(value, str) and "Plaintext=" in value else value

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._clean(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: self._clean(v) for k, v in record.args.items()}
        return True


# Records are filtered on the logger that creates them, before they propagate.
# darabonba (the official client's core) traces each request's query on its own
# logger when DEBUG=sdk is set.
for _name in ("urllib3.connectionpool", "urllib3.connection", "urllib3.util.retry", "darabonba-core"):
    logging.getLogger(_name).addFilter(_RedactPlaintext())

ENDPOINTS_ENV = "KMSENV_KMS_ENDPOINTS"
INSTANCES_ENV = "KMSENV_KMS_INSTANCES"
#: The host names of KMS 3.0 instance gateways (kst-<id> + this).
INSTANCE_HOST_SUFFIX = ".cryptoservice.kms.aliyuncs.com"

#: KMS error codes worth retrying (Alibaba's own tools retry exactly the first
#: three; ``Throttling`` is the older spelling on some API pages).
RETRYABLE_CODES = frozenset({"Rejected.Throttling", "Throttling", "ServiceUnavailableTemporary", "InternalFailure"})

_CREDENTIALS_HELP = (
    "pass access_key_id/access_key_secret (plus security_token for STS) or credential= to kmsenv.Kms, "
    "or set the environment variables ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET "
    "(and ALIBABA_CLOUD_SECURITY_TOKEN for STS credentials), or configure a credentials profile, "
    "OIDC or an ECS RAM role"
)


# alibabacloud_credentials logs on this logger, and its modules each attach a
# StreamHandler to it at import: every ECS metadata probe that fails prints its
# traceback on stderr (three times), before the error kmsenv raises says the same.
_CREDENTIAL_CHAIN_LOGGER = "credentials"


class _CredentialChainToDebug(logging.Handler):
    """What the credential chain logs, as one DEBUG line on kmsenv's logger
    (``kmsenv.credentials``): no traceback, nothing on stderr unless the
    application asks for kmsenv's DEBUG output. Only WARNING and above reach it
    (the chain's logger is at INFO, and its DEBUG lines print credentials)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = (record.getMessage().splitlines() or [record.levelname])[0]
        except Exception:  # a broken record must not break a KMS call
            return
        logging.getLogger("kmsenv.credentials").debug("kmsenv: credential chain: %s", text)


def _quiet_credential_chain() -> None:
    """Replace the stderr handlers alibabacloud_credentials attached to its logger
    with :class:`_CredentialChainToDebug`. Only handlers like the package's own
    are removed (a bare ``StreamHandler()``: no formatter, no level; an
    application's configured handlers stay), and only when kmsenv itself builds
    the default chain. Idempotent."""
    chain = logging.getLogger(_CREDENTIAL_CHAIN_LOGGER)
    for handler in list(chain.handlers):
        if type(handler) is logging.StreamHandler and handler.formatter is None and handler.level == logging.NOTSET:
            chain.removeHandler(handler)
    if not any(isinstance(h, _CredentialChainToDebug) for h in chain.handlers):
        chain.addHandler(_CredentialChainToDebug())
    # Records still propagate: an application that configured logging sees them.


_REGION_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z")


# ---------------------------------------------------------------------------
# Endpoints
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Endpoint:
    protocol: str  # "http" | "https"
    host: str  # host[:port], as sent in the Host header

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.host}"

    @property
    def is_loopback(self) -> bool:
        hostname = urlsplit(self.url).hostname or ""
        if hostname == "localhost" or hostname.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(hostname).is_loopback
        except ValueError:
            return False


def _default_endpoint(region: str) -> _Endpoint:
    return _Endpoint("https", f"kms.{region}.aliyuncs.com")


def _parse_endpoint(url: object, where: str) -> _Endpoint:
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"{where}: the endpoint must be a non-empty URL string")
    if url != url.strip() or any(c.isspace() for c in url):
        raise ConfigurationError(f"{where}: endpoint {url!r} contains whitespace")
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        if scheme not in ("http", "https"):
            raise ConfigurationError(
                f"{where}: endpoint {url!r} has scheme {scheme!r}; only http:// and https:// are supported"
            )
        full = scheme + url[len(scheme) :]
    else:
        scheme = "https"
        full = "https://" + url
    try:
        parts = urlsplit(full)
        port = parts.port
    except ValueError as e:
        raise ConfigurationError(f"{where}: malformed endpoint URL {url!r} ({e})") from None
    if not parts.hostname:
        raise ConfigurationError(f"{where}: endpoint {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(f"{where}: endpoint {url!r} must not contain user information")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigurationError(f"{where}: endpoint {url!r} must be scheme://host[:port] without a path or query")
    if port == 0:
        raise ConfigurationError(f"{where}: endpoint {url!r} has port 0")
    return _Endpoint(scheme, parts.netloc)


def _check_region(region: object, where: str) -> str:
    if not isinstance(region, str) or not _REGION_RE.match(region):
        raise ConfigurationError(f"{where}: invalid region {region!r}")
    return region


def parse_endpoints_env(value: str) -> dict[str, _Endpoint]:
    """Parse ``KMSENV_KMS_ENDPOINTS``: ``region=url[,region=url...]``.

    Whitespace around entries is ignored, and so are empty entries (a trailing
    comma); anything else malformed raises :class:`ConfigurationError`.
    """
    where = ENDPOINTS_ENV
    result: dict[str, _Endpoint] = {}
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        region, sep, url = item.partition("=")
        region, url = region.strip(), url.strip()
        if not sep:
            raise ConfigurationError(f"{where}: entry {item!r} is not of the form region=url")
        _check_region(region, where)
        if region in result:
            raise ConfigurationError(f"{where}: region {region!r} is listed twice")
        result[region] = _parse_endpoint(url, f"{where} ({region})")
    return result


def _parse_endpoints_arg(endpoints: Mapping[str, str]) -> dict[str, _Endpoint]:
    if not isinstance(endpoints, Mapping):
        raise ConfigurationError("endpoints must be a mapping {region: url}")
    result: dict[str, _Endpoint] = {}
    for region, url in endpoints.items():
        _check_region(region, "endpoints")
        result[region] = _parse_endpoint(url, f"endpoints[{region!r}]")
    return result


# ---------------------------------------------------------------------------
# KMS 3.0 instance gateways (issue 16; docs/kms-instances.md)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceEndpoint:
    """A region's KMS 3.0 instance gateway, reached with a ClientKey.

    ``endpoint``: ``kst-xxx.cryptoservice.kms.aliyuncs.com`` (``host[:port]``);
    ``client_key_file`` with ``password_file`` (or ``password``): the two files
    the console gives for an application access point; ``ca_file``: the
    instance's CA certificate (required: the gateway's certificate is checked
    against it and only it). ``server_hostname``: the name the certificate must
    carry when ``endpoint`` is an address. ``aad_rule``: how an encryption
    context becomes GCM AAD (``sha256``, dkms-transfer-python's and the Java
    transfer SDK's rule; see docs/kms-instances.md).
    ``insecure_skip_tls_verify_for_tests_only``: no certificate check at all;
    for tests against a throwaway gateway, and logged at every client creation.
    """

    endpoint: str
    client_key_file: str
    ca_file: str | None = None
    password_file: str | None = None
    password: str | None = field(default=None, repr=False)
    server_hostname: str | None = None
    aad_rule: str = "sha256"
    insecure_skip_tls_verify_for_tests_only: bool = False

    def __post_init__(self) -> None:
        for name in ("endpoint", "client_key_file"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigurationError(f"InstanceEndpoint.{name} must be a non-empty str")
        if (self.password is None) == (self.password_file is None):
            raise ConfigurationError("InstanceEndpoint needs exactly one of password= or password_file=")
        if self.ca_file is None and not self.insecure_skip_tls_verify_for_tests_only:
            raise ConfigurationError(
                "InstanceEndpoint needs ca_file= (the instance's CA certificate, PrivateKmsCA_kst-....pem)"
            )

    def client(self, region: str, **retry: Any) -> Any:
        """A new :class:`kmsenv.instance.client.InstanceClient` for this gateway."""
        from kmsenv.instance.client import InstanceClient

        return InstanceClient(
            self.endpoint,
            client_key_file=self.client_key_file,
            password=self.password,
            password_file=self.password_file,
            ca=self.ca_file,
            region=region,
            server_hostname=self.server_hostname,
            insecure_skip_tls_verify_for_tests_only=self.insecure_skip_tls_verify_for_tests_only,
            **retry,
        )


_INSTANCE_FIELDS = frozenset({"endpoint", "client_key_file", "ca_file", "password_file", "server_hostname", "aad_rule"})


def parse_instances_file(path: str) -> dict[str, InstanceEndpoint]:
    """``KMSENV_KMS_INSTANCES``: the path of a JSON file ``{region: {"endpoint": ...,
    "client_key_file": ..., "password_file": ..., "ca_file": ...}}`` (relative
    paths are relative to the file). Passwords are read from files only: an
    environment variable is no place for one."""
    import json

    where = f"{INSTANCES_ENV} ({path})"
    try:
        with open(path, encoding="utf-8") as f:
            data = json.loads(f.read(1 << 20))
    except (OSError, ValueError) as e:
        raise ConfigurationError(f"{where}: cannot read the instances file: {e}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{where}: the file must hold a JSON object {{region: {{...}}}}")
    base = os.path.dirname(os.path.abspath(path))
    out: dict[str, InstanceEndpoint] = {}
    for region, entry in data.items():
        _check_region(region, where)
        if not isinstance(entry, dict) or not set(entry) <= _INSTANCE_FIELDS or "endpoint" not in entry:
            raise ConfigurationError(
                f"{where}: {region!r} must be an object with endpoint, client_key_file, password_file and ca_file "
                f"(known fields: {', '.join(sorted(_INSTANCE_FIELDS))})"
            )
        values = {k: v for k, v in entry.items()}
        for name in ("client_key_file", "password_file", "ca_file"):
            if isinstance(values.get(name), str):
                values[name] = os.path.join(base, values[name])
        out[region] = InstanceEndpoint(**values)
    return out


def _parse_instances_arg(instances: Mapping[str, InstanceEndpoint]) -> dict[str, InstanceEndpoint]:
    if not isinstance(instances, Mapping):
        raise ConfigurationError("instances must be a mapping {region: InstanceEndpoint}")
    out: dict[str, InstanceEndpoint] = {}
    for region, entry in instances.items():
        _check_region(region, "instances")
        if not isinstance(entry, InstanceEndpoint):
            raise ConfigurationError(f"instances[{region!r}] must be a kmsenv.kms.InstanceEndpoint")
        out[region] = entry
    return out


# ---------------------------------------------------------------------------
# Proxy bypass for loopback endpoints (spec section 2.1, "proxy pitfall")
# ---------------------------------------------------------------------------

_bypass_lock = threading.Lock()
# Connection pools a forked child inherited: kept referenced, never used or
# closed (closing could end a TLS session its parent still uses).
_INHERITED_SESSIONS: list[Any] = []


def _forget_connections_after_fork() -> None:
    """A forked child must not share its parent's keep-alive sockets: two
    processes writing requests on one connection read each other's responses
    (a data key meant for one landing in the other). darabonba keeps one
    ``requests.Session`` per endpoint, class-wide; the child starts afresh."""
    global _bypass_lock
    _bypass_lock = _process.new_lock()
    core = sys.modules.get("darabonba.core")
    dara = getattr(core, "DaraCore", None)
    sessions = getattr(dara, "_sessions", None)
    if isinstance(sessions, dict) and sessions:
        _INHERITED_SESSIONS.extend(sessions.values())
        dara._sessions = {}  # type: ignore[union-attr]


_process.register(__name__, ("_bypass_lock", "_INHERITED_SESSIONS"), _forget_connections_after_fork)


def _direct_adapter_class() -> type:
    from requests.adapters import HTTPAdapter

    class _DirectAdapter(HTTPAdapter):
        """Never sends through a proxy: darabonba passes HTTP(S)_PROXY from the
        environment to ``Session.send`` itself, ignoring NO_PROXY."""

        def send(
            self,
            request: Any,
            stream: Any = False,
            timeout: Any = None,
            verify: Any = True,
            cert: Any = None,
            proxies: Any = None,
        ) -> Any:
            return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=None)

    return _DirectAdapter


_DirectAdapter: type | None = None


def _install_proxy_bypass(endpoint: _Endpoint, max_idle_conns: int) -> None:
    """Mount a proxy-free adapter on the session darabonba uses for ``endpoint``.

    darabonba keeps one ``requests.Session`` per ``protocol://host:port:pool=N``
    in ``DaraCore._sessions`` and always passes ``proxies`` explicitly, so the
    only hook is the session's adapter table.  This relies on darabonba-core
    1.0.x internals; if they change we log a warning (loopback endpoints then
    only work with HTTP(S)_PROXY unset).
    """
    global _DirectAdapter
    try:
        from darabonba.core import DaraCore

        with _bypass_lock:
            if _DirectAdapter is None:
                _DirectAdapter = _direct_adapter_class()
            pool = DaraCore._resolve_pool_maxsize({"maxIdleConns": max_idle_conns})
            key = f"{endpoint.protocol}://{endpoint.host}:80:pool={pool}"
            session = DaraCore._get_session(session_key=key, protocol=endpoint.protocol, verify=True, pool_size=pool)
            prefix = f"{endpoint.protocol}://{endpoint.host}/"
            if not isinstance(session.adapters.get(prefix), _DirectAdapter):
                session.mount(prefix, _DirectAdapter(pool_connections=1, pool_maxsize=pool))
    except Exception as e:  # pragma: no cover - depends on darabonba internals
        logger.warning(
            "kmsenv: could not disable proxies for loopback KMS endpoint %s (%s); "
            "unset HTTP_PROXY/HTTPS_PROXY if calls fail",
            endpoint.url,
            type(e).__name__,
        )


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _context_dict(encryption_context: object, what: str = "encryption_context") -> dict[str, str] | None:
    """Validate a context and return a plain dict, or None when empty.

    The official client must get a dict (a JSON string would be sent as
    ``null``, spec section 2.1), and an empty context is omitted.
    """
    if encryption_context is None:
        return None
    if not isinstance(encryption_context, Mapping):
        raise ConfigurationError(f"{what} must be a dict of str to str, not {type(encryption_context).__name__}")
    out: dict[str, str] = {}
    for k, v in encryption_context.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ConfigurationError(f"{what} keys and values must be str")
        out[k] = v
    return out or None


def _b64decode(text: object) -> bytes:
    if not isinstance(text, str) or not text:
        raise ValueError("missing")
    return base64.b64decode(text, validate=True)


def _clean_message(message: object, limit: int = 300) -> str:
    """A server message, without the echoed string-to-sign, bounded and printable."""
    if not isinstance(message, str) or not message or message == "None":
        return ""
    message = message.split("server string to sign is", 1)[0].rstrip(" :.")
    message = "".join(c if c.isprintable() else " " for c in message)
    if len(message) > limit:
        message = message[:limit] + "..."
    return message


def _none_if_null(value: object) -> str | None:
    if value is None:
        return None
    s = str(value)
    return None if s in ("", "None", "null") else s


_ERRNO_RE = re.compile(r"\[Errno -?\d+\] [A-Za-z][A-Za-z ,'-]{0,80}")


class _Retry(Exception):
    pass


# ---------------------------------------------------------------------------
# Kms
# ---------------------------------------------------------------------------


class Kms:
    """Regional KMS access for kmsenv.

    Credentials: explicit ``access_key_id``/``access_key_secret`` (optionally
    ``security_token``), or ``credential=`` (any ``alibabacloud_credentials``
    client), else ``ALIBABA_CLOUD_ACCESS_KEY_ID``/``ALIBABA_CLOUD_ACCESS_KEY_SECRET``
    (+ ``ALIBABA_CLOUD_SECURITY_TOKEN``) read at first use, else the
    ``alibabacloud_credentials`` default chain (profiles, OIDC, ECS RAM role).

    Endpoints: ``https://kms.<region>.aliyuncs.com`` unless overridden by
    ``endpoints={region: url}`` or, when that argument is not given, by the
    ``KMSENV_KMS_ENDPOINTS`` environment variable (``region=url,region=url``).
    The URL scheme selects HTTP or HTTPS.

    Retries: up to ``max_attempts`` attempts in total on throttling, 5xx,
    ``InternalFailure``/``ServiceUnavailableTemporary`` and network errors, with
    exponential backoff and full jitter: ``sleep(uniform(0, min(backoff_max,
    backoff_base * 2**retry)))`` (seconds).  ``connect_timeout`` and
    ``read_timeout`` (seconds) bound every attempt.

    KMS 3.0 instances (docs/kms-instances.md): ``instances={region:
    InstanceEndpoint(...)}`` (or ``KMSENV_KMS_INSTANCES``) sends a region's
    data-key calls to its instance gateway with a ClientKey; with RAM
    credentials, point ``endpoints`` at the instance
    (``https://kst-....cryptoservice.kms.aliyuncs.com``) and give its CA in
    ``ca``: one CA file for every endpoint, or ``{region: CA file}``.

    Instances are thread-safe and meant to be shared.
    """

    def __init__(
        self,
        *,
        access_key_id: str | None = None,
        access_key_secret: str | None = None,
        security_token: str | None = None,
        credential: Any = None,
        endpoints: Mapping[str, str] | None = None,
        max_attempts: int = 4,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        ca: str | Mapping[str, str] | None = None,
        sleep: Callable[[float], None] | None = None,
        random: _random.Random | None = None,
        instances: Mapping[str, InstanceEndpoint] | None = None,
    ) -> None:
        if credential is not None and (access_key_id or access_key_secret or security_token):
            raise ConfigurationError("pass either credential= or access_key_id/access_key_secret, not both")
        if bool(access_key_id) != bool(access_key_secret):
            raise ConfigurationError("access_key_id and access_key_secret must be given together")
        if security_token and not access_key_id:
            raise ConfigurationError("security_token needs access_key_id and access_key_secret")
        for name, value in (
            ("access_key_id", access_key_id),
            ("access_key_secret", access_key_secret),
            ("security_token", security_token),
        ):
            if value is not None and not isinstance(value, str):
                raise ConfigurationError(f"{name} must be a str")
        if credential is not None and not hasattr(credential, "get_credential"):
            raise ConfigurationError("credential must be an alibabacloud_credentials client (with get_credential())")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError("max_attempts must be an int >= 1")
        for seconds_name, seconds in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
                raise ConfigurationError(f"{seconds_name} must be a positive number of seconds")
        for seconds_name, seconds in (("backoff_base", backoff_base), ("backoff_max", backoff_max)):
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
                raise ConfigurationError(f"{seconds_name} must be a non-negative number of seconds")

        self._access_key_id = access_key_id or None
        self._access_key_secret = access_key_secret or None
        self._security_token = security_token or None
        self._credential = credential
        if endpoints is not None:
            self._endpoints = _parse_endpoints_arg(endpoints)
        else:
            self._endpoints = parse_endpoints_env(os.environ.get(ENDPOINTS_ENV, ""))
        #: The instances file this client's instances came from (KMSENV_KMS_INSTANCES),
        #: which KmsSpec hands to worker processes; None when given as objects.
        self.instances_file: str | None = None
        if instances is not None:
            self._instances = _parse_instances_arg(instances)
        elif os.environ.get(INSTANCES_ENV):
            self.instances_file = os.path.abspath(os.environ[INSTANCES_ENV])
            self._instances = parse_instances_file(self.instances_file)
        else:
            self._instances = {}
        self.max_attempts = max_attempts
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        if ca is not None and not isinstance(ca, (str, Mapping)):
            raise ConfigurationError("ca must be a CA file path, a mapping {region: CA file path}, or None")
        if isinstance(ca, Mapping):
            for region, path in ca.items():
                _check_region(region, "ca")
                if not isinstance(path, str) or not path:
                    raise ConfigurationError(f"ca[{region!r}] must be a CA file path")
        # One CA file for every endpoint, or per region (an instance gateway's private CA
        # beside the shared gateway's public ones).
        self._ca: str | dict[str, str] | None = dict(ca) if isinstance(ca, Mapping) else ca
        self._sleep = sleep if sleep is not None else time.sleep
        self._random = random if random is not None else _random.Random()
        self._max_idle_conns = 64

        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._instance_clients: dict[str, Any] = {}
        self._config_kwargs: dict[str, Any] | None = None
        self._runtime = None
        _process.track(self)

    def _after_fork_in_child(self) -> None:
        # Clients hold connection pools; a child builds its own (credentials stay).
        self._lock = _process.new_lock()
        self._clients = {}

    # -- configuration ------------------------------------------------------

    def endpoint_url(self, region: str) -> str:
        """The URL used for ``region`` (override or ``https://kms.<region>.aliyuncs.com``)."""
        _check_region(region, "region")
        return self._endpoint(region).url

    def _endpoint(self, region: str) -> _Endpoint:
        return self._endpoints.get(region) or _default_endpoint(region)

    def __repr__(self) -> str:
        overrides = {r: e.url for r, e in self._endpoints.items()}
        instances = {r: e.endpoint for r, e in self._instances.items()}
        more = f", instances={instances!r}" if instances else ""
        return f"Kms(endpoints={overrides!r}{more}, max_attempts={self.max_attempts})"

    # -- instance gateways --------------------------------------------------

    def is_instance(self, region: str) -> bool:
        """Whether ``region`` is served by a KMS 3.0 instance gateway: one given
        with a ClientKey (``instances=``), or an endpoint on an instance's host
        (``https://kst-....cryptoservice.kms.aliyuncs.com``, RAM credentials),
        where there is no ReEncrypt either."""
        if region in self._instances:
            return True
        endpoint = self._endpoints.get(region)
        return endpoint is not None and (urlsplit(endpoint.url).hostname or "").endswith(INSTANCE_HOST_SUFFIX)

    def _client_key_instance(self, region: str) -> bool:
        return region in self._instances

    def _instance(self, region: str) -> Any:
        """The region's instance client (one, built at first use; its
        connections are per thread and rebuilt after fork)."""
        client = self._instance_clients.get(region)
        if client is None:
            with self._lock:
                client = self._instance_clients.get(region)
                if client is None:
                    client = self._instances[region].client(
                        region,
                        max_attempts=self.max_attempts,
                        connect_timeout=self.connect_timeout,
                        read_timeout=self.read_timeout,
                        backoff_base=self.backoff_base,
                        backoff_max=self.backoff_max,
                        sleep=self._sleep,
                        random=self._random,
                    )
                    self._instance_clients[region] = client
        return client

    def _credential_kwargs(self) -> dict[str, Any]:
        """Resolve credentials once (under ``self._lock``)."""
        if self._config_kwargs is not None:
            return self._config_kwargs
        if self._credential is not None:
            kwargs: dict[str, Any] = {"credential": self._credential}
        elif self._access_key_id:
            kwargs = {"access_key_id": self._access_key_id, "access_key_secret": self._access_key_secret}
            if self._security_token:
                kwargs["security_token"] = self._security_token
        else:
            # Read the environment now: alibabacloud_credentials snapshots these
            # variables when it is imported, which surprises callers that set
            # them later.
            env_id = os.environ.get("ALIBABA_CLOUD_ACCESS_KEY_ID") or None
            env_secret = os.environ.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET") or None
            if env_id and env_secret:
                kwargs = {"access_key_id": env_id, "access_key_secret": env_secret}
                token = os.environ.get("ALIBABA_CLOUD_SECURITY_TOKEN") or None
                if token:
                    kwargs["security_token"] = token
            elif env_id or env_secret:
                missing = "ALIBABA_CLOUD_ACCESS_KEY_SECRET" if env_id else "ALIBABA_CLOUD_ACCESS_KEY_ID"
                raise NoCredentialsError(f"incomplete Alibaba Cloud credentials: {missing} is not set", missing)
            else:
                try:
                    from alibabacloud_credentials.client import Client as CredentialClient

                    _quiet_credential_chain()
                    kwargs = {"credential": CredentialClient()}
                except Exception as e:
                    raise NoCredentialsError(
                        f"cannot set up Alibaba Cloud credentials ({type(e).__name__}): {_CREDENTIALS_HELP}"
                    ) from None
        self._config_kwargs = kwargs
        return kwargs

    def _client(self, region: str) -> Any:
        client = self._clients.get(region)
        if client is not None:
            return client
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                client = self._new_client(region)
                self._clients[region] = client
        return client

    def _new_client(self, region: str) -> Any:
        from alibabacloud_kms20160120.client import Client

        try:
            from alibabacloud_tea_openapi.utils_models import Config
        except ImportError:  # tea-openapi 0.3.x
            from alibabacloud_tea_openapi.models import Config

        endpoint = self._endpoint(region)
        config = Config(
            endpoint=endpoint.host,
            protocol=endpoint.protocol,
            region_id=region,
            connect_timeout=max(1, int(round(self.connect_timeout * 1000))),
            read_timeout=max(1, int(round(self.read_timeout * 1000))),
            max_idle_conns=self._max_idle_conns,
            user_agent=f"kmsenv/{__version__}",
            **self._credential_kwargs(),
        )
        ca = self._ca.get(region) if isinstance(self._ca, dict) else self._ca
        if ca:
            config.ca = ca
        try:
            client = Client(config)
        except Exception as e:
            raise ConfigurationError(
                f"cannot create the KMS client for region {region!r} ({type(e).__name__}: {_clean_message(str(e))})"
            ) from None
        if endpoint.is_loopback:
            _install_proxy_bypass(endpoint, self._max_idle_conns)
        return client

    def _runtime_options(self) -> Any:
        if self._runtime is None:
            try:
                from darabonba.runtime import RuntimeOptions
            except ImportError:  # tea-openapi 0.3.x
                from alibabacloud_tea_util.models import RuntimeOptions
            self._runtime = RuntimeOptions(
                autoretry=False,
                max_attempts=1,
                connect_timeout=max(1, int(round(self.connect_timeout * 1000))),
                read_timeout=max(1, int(round(self.read_timeout * 1000))),
            )
        return self._runtime

    # -- retry loop and error mapping ---------------------------------------

    def _call(
        self, region: str, action: str, what: str, fn: Callable[[Any, Any], Any], max_attempts: int | None = None
    ) -> Any:
        """Run ``fn(client, runtime)`` with retries; return the response body."""
        limit = self.max_attempts if max_attempts is None else max(1, max_attempts)
        attempt = 0
        while True:
            attempt += 1
            client = self._client(region)
            error: BaseException | None = None
            retry_after: float | None = None
            try:
                response = fn(client, self._runtime_options())
            except Exception as e:  # translated below, outside the except block
                error, retry_after = self._translate(e, region, action, what)
                del e  # drop references to SDK request objects (they hold parameters)
            else:
                body = getattr(response, "body", None)
                if body is None:
                    raise KmsError(
                        f"KMS {action} {what} returned an empty response",
                        code="InvalidResponse",
                        region=region,
                        retryable=False,
                    )
                return body
            assert error is not None
            if not isinstance(error, KmsError) or not error.retryable or attempt >= limit:
                if isinstance(error, KmsError) and error.retryable and attempt > 1:
                    error.args = (f"{error.args[0]} (after {attempt} attempts)",)
                raise error from None
            delay = self._random.uniform(0.0, min(self.backoff_max, self.backoff_base * (2 ** min(attempt - 1, 60))))
            if retry_after is not None:
                delay = max(delay, min(self.backoff_max, retry_after))
            logger.debug(
                "kmsenv: KMS %s in %s failed with %s (attempt %d/%d); retrying in %.3fs",
                action,
                region,
                error.code,
                attempt,
                limit,
                delay,
            )
            if delay > 0:
                self._sleep(delay)

    def _translate(self, e: BaseException, region: str, action: str, what: str) -> tuple[BaseException, float | None]:
        from darabonba.exceptions import ResponseException

        prefix = f"KMS {action} {what}"
        if isinstance(e, ResponseException):
            status = getattr(e, "status_code", None)
            code = _none_if_null(getattr(e, "code", None))
            request_id = _none_if_null(getattr(e, "request_id", None))
            data = getattr(e, "data", None)
            server_msg = ""
            if isinstance(data, dict):
                request_id = request_id or _none_if_null(data.get("RequestId"))
                server_msg = _clean_message(data.get("Message") or data.get("message"))
            retry_after = getattr(e, "retry_after", None)
            retryable = (
                code in RETRYABLE_CODES
                or status == 429
                or (isinstance(status, int) and status >= 500)
                or type(e).__name__ == "ThrottlingException"
            )
            text = f"{prefix} failed: HTTP {status} {code or 'unknown error'}"
            if server_msg:
                text += f": {server_msg}"
            seconds = None
            if isinstance(retry_after, (int, float)) and retry_after > 0:
                seconds = retry_after / 1000.0
            return KmsError(text, code=code, region=region, request_id=request_id, retryable=retryable), seconds

        inner = getattr(e, "inner_exception", e)
        try:
            from alibabacloud_credentials.exceptions import CredentialException
        except ImportError:  # pragma: no cover
            CredentialException = ()
        if isinstance(inner, CredentialException):
            return NoCredentialsError(f"no usable Alibaba Cloud credentials for {prefix}: {_CREDENTIALS_HELP}"), None

        if type(inner).__name__ == "RetryError":
            # darabonba wraps requests' IOError as RetryError(str(e)); the
            # string contains the request URL and query (secrets!), so only
            # the original exception type and errno text are used.
            cause = inner.__context__ or inner.__cause__
            code, retryable, kind = "ConnectionError", True, "connection failed"
            try:
                import requests.exceptions as rx

                if isinstance(cause, rx.ConnectTimeout):
                    code, kind = "ConnectTimeout", f"connect timed out after {self.connect_timeout:g}s"
                elif isinstance(cause, rx.ReadTimeout):
                    code, kind = "ReadTimeout", f"no response within {self.read_timeout:g}s"
                elif isinstance(cause, rx.SSLError):
                    code, retryable, kind = "SSLError", False, "TLS handshake failed"
                elif isinstance(cause, rx.ProxyError):
                    code, kind = "ProxyError", "proxy error"
            except ImportError:  # pragma: no cover
                pass
            m = _ERRNO_RE.search(str(getattr(inner, "message", "")))
            if m and code == "ConnectionError":
                kind += f": {m.group(0).strip()}"
            url = self._endpoint(region).url
            if region not in self._endpoints:
                # Often the real cause: an endpoint the caller meant to set for this region.
                url += f", the default endpoint for {region} (none was configured for it)"
            return KmsError(
                f"{prefix} failed: cannot reach {url} ({kind})", code=code, region=region, retryable=retryable
            ), None

        if isinstance(inner, (ValueError, UnicodeDecodeError)) or (
            isinstance(inner, RuntimeError) and str(inner).startswith("Failed to parse the value as json")
        ):
            # e.g. a non-JSON error page from a load balancer or proxy
            return KmsError(
                f"{prefix} failed: the endpoint returned a response that is not KMS JSON",
                code="InvalidResponse",
                region=region,
                retryable=True,
            ), None

        return KmsError(
            f"{prefix} failed: {type(inner).__name__}", code="ClientError", region=region, retryable=False
        ), None

    # -- operations ---------------------------------------------------------

    @staticmethod
    def _arn(key_arn: object) -> Arn:
        return Arn.parse(key_arn)

    def generate_data_key(
        self,
        key_arn: str | Arn,
        *,
        key_spec: str | None = None,
        number_of_bytes: int | None = None,
        encryption_context: Mapping[str, str] | None = None,
    ) -> tuple[bytearray, bytes]:
        """GenerateDataKey under ``key_arn`` in its region.

        Returns ``(plaintext, ciphertext_blob)``: the data key as a bytearray (the
        caller wipes it) and the raw (base64-decoded) ``CiphertextBlob``.
        """
        from alibabacloud_kms20160120 import models

        arn = self._arn(key_arn)
        ctx = _context_dict(encryption_context)
        if key_spec is not None and key_spec not in ("AES_128", "AES_256"):
            raise ConfigurationError(f"key_spec must be 'AES_128' or 'AES_256', not {key_spec!r}")
        if number_of_bytes is not None and (
            isinstance(number_of_bytes, bool)
            or not isinstance(number_of_bytes, int)
            or not 1 <= number_of_bytes <= 1024
        ):
            raise ConfigurationError("number_of_bytes must be an int between 1 and 1024")
        if self._client_key_instance(arn.region):
            return self._instance_generate(arn, 16 if key_spec == "AES_128" else number_of_bytes or 32, ctx)
        request = models.GenerateDataKeyRequest(
            key_id=arn.key_id, key_spec=key_spec, number_of_bytes=number_of_bytes, encryption_context=ctx
        )
        body = self._call(
            arn.region, "GenerateDataKey", f"under {arn}", lambda c, rt: c.generate_data_key_with_options(request, rt)
        )
        try:
            plaintext = bytearray(_b64decode(body.plaintext))
            blob = _b64decode(body.ciphertext_blob)
        except (ValueError, binascii.Error):
            raise KmsError(
                f"KMS GenerateDataKey under {arn} returned a malformed Plaintext or CiphertextBlob",
                code="InvalidResponse",
                region=arn.region,
                request_id=_none_if_null(body.request_id),
            ) from None
        return plaintext, blob

    def _instance_unwrap(
        self, region: str, blob: bytes, ctx: dict[str, str] | None, max_attempts: int | None
    ) -> bytearray:
        """Decrypt a data key on an instance. The official adapters each turn a
        context into GCM AAD their own way (kms-instance-gateway.md §4.5): when
        the configured rule does not open the blob (``InvalidParameter``, what
        the gateway answers to a failed tag), the other rules are tried, so EDKs
        any adapter wrote are read. Without a context there is nothing to vary."""
        from kmsenv.instance.client import AAD_RULES

        client = self._instance(region)
        first_rule = self._instances[region].aad_rule
        rules = [first_rule] + ([r for r in AAD_RULES if r != first_rule] if ctx else [])
        first_error: KmsError | None = None
        for rule in rules:
            try:
                return bytearray(client.unwrap_data_key(blob, ctx, rule=rule, max_attempts=max_attempts))
            except KmsError as e:
                if e.code != "InvalidParameter":
                    raise
                first_error = first_error or e
        assert first_error is not None
        raise first_error

    def _instance_generate(self, arn: Arn, number_of_bytes: int, ctx: dict[str, str] | None) -> tuple[bytearray, bytes]:
        """GenerateDataKey as the transfer adapters do it on an instance (spec
        §4.4): the gateway's data key, then Encrypt of its base64 text (the
        classic-looking ``version || iv || ct`` blob every adapter reads); the
        gateway's own ciphertext of the key is not kept."""
        client = self._instance(arn.region)
        rule = self._instances[arn.region].aad_rule
        plaintext, _ = client.generate_data_key(arn.key_id, number_of_bytes)
        key = bytearray(plaintext)
        del plaintext
        try:
            blob = client.wrap_data_key(arn.key_id, bytes(key), ctx, rule=rule)
        except BaseException:
            wipe(key)
            raise
        return key, bytes(blob)

    def encrypt(
        self,
        key_arn: str | Arn,
        plaintext: bytes | bytearray | memoryview,
        encryption_context: Mapping[str, str] | None = None,
    ) -> bytes:
        """Encrypt ``plaintext`` (sent base64-encoded, as the official SDKs send
        data keys) under ``key_arn``; returns the raw ciphertext blob."""
        arn = self._arn(key_arn)
        return self.encrypt_in_region(arn.region, arn.key_id, plaintext, encryption_context, what=f"under {arn}")

    def encrypt_in_region(
        self,
        region: str,
        key_id: str,
        plaintext: bytes | bytearray | memoryview,
        encryption_context: Mapping[str, str] | None = None,
        *,
        what: str | None = None,
    ) -> bytes:
        """Encrypt under ``key_id`` in ``region``: a key ID, an alias
        (``alias/orders-pii``, which names a different key in each region) or an
        ARN. Returns the raw ciphertext blob (it names the key it was made with)."""
        from alibabacloud_kms20160120 import models

        _check_region(region, "region")
        if not isinstance(key_id, str) or not key_id or any(c.isspace() for c in key_id):
            raise ConfigurationError("key_id must be a key ID, alias or ARN without whitespace")
        ctx = _context_dict(encryption_context)
        if not isinstance(plaintext, (bytes, bytearray, memoryview)):
            raise ConfigurationError("plaintext must be bytes")
        what = what or f"under {key_id} in {region}"
        if self._client_key_instance(region):
            rule = self._instances[region].aad_rule
            return bytes(self._instance(region).wrap_data_key(key_id, bytes(plaintext), ctx, rule=rule))
        request = models.EncryptRequest(
            key_id=key_id, plaintext=base64.b64encode(plaintext).decode("ascii"), encryption_context=ctx
        )
        body = self._call(region, "Encrypt", what, lambda c, rt: c.encrypt_with_options(request, rt))
        try:
            return _b64decode(body.ciphertext_blob)
        except (ValueError, binascii.Error):
            raise KmsError(
                f"KMS Encrypt {what} returned a malformed CiphertextBlob",
                code="InvalidResponse",
                region=region,
                request_id=_none_if_null(body.request_id),
            ) from None

    def re_encrypt(
        self,
        ciphertext_blob: bytes | bytearray | memoryview,
        destination_key_arn: str | Arn,
        *,
        source_encryption_context: Mapping[str, str] | None = None,
        destination_encryption_context: Mapping[str, str] | None = None,
        region: str | None = None,
    ) -> bytes:
        """ReEncrypt a blob to ``destination_key_arn``.

        KMS is regional: the blob's key and the destination key must live in the
        same region, ``region`` (default: the destination ARN's region).
        """
        from alibabacloud_kms20160120 import models

        arn = self._arn(destination_key_arn)
        if region is None:
            region = arn.region
        _check_region(region, "region")
        if self.is_instance(region):
            raise ConfigurationError(
                f"ReEncrypt is not served by KMS instance gateways ({region}): encrypt the data key under {arn} "
                "instead (KmsKeyProvider does)"
            )
        if region != arn.region:
            raise ConfigurationError(f"ReEncrypt runs in one region: destination key {arn} is not in region {region!r}")
        if not isinstance(ciphertext_blob, (bytes, bytearray, memoryview)) or not len(ciphertext_blob):
            raise ConfigurationError("ciphertext_blob must be non-empty bytes")
        request = models.ReEncryptRequest(
            ciphertext_blob=base64.b64encode(ciphertext_blob).decode("ascii"),
            destination_key_id=arn.key_id,
            source_encryption_context=_context_dict(source_encryption_context, "source_encryption_context"),
            destination_encryption_context=_context_dict(
                destination_encryption_context, "destination_encryption_context"
            ),
        )
        body = self._call(region, "ReEncrypt", f"to {arn}", lambda c, rt: c.re_encrypt_with_options(request, rt))
        try:
            return _b64decode(body.ciphertext_blob)
        except (ValueError, binascii.Error):
            raise KmsError(
                f"KMS ReEncrypt to {arn} returned a malformed CiphertextBlob",
                code="InvalidResponse",
                region=region,
                request_id=_none_if_null(body.request_id),
            ) from None

    def decrypt(
        self,
        key_arn: str | Arn,
        ciphertext_blob: bytes | bytearray | memoryview,
        encryption_context: Mapping[str, str] | None = None,
        *,
        max_attempts: int | None = None,
    ) -> bytearray:
        """Decrypt a blob made under ``key_arn``; the call goes to that key's region.
        ``max_attempts`` overrides the client's retry budget for this call.

        The returned bytes are the base64-decoded ``Plaintext`` (the data key).
        KMS's answer must name ``key_arn``'s key ID (Decrypt takes no KeyId, so
        this catches a blob wrapped under a different key than its ARN claims).
        """
        arn = self._arn(key_arn)
        return self.decrypt_in_region(
            arn.region, ciphertext_blob, encryption_context, max_attempts=max_attempts, expect_key=arn
        )

    def decrypt_in_region(
        self,
        region: str,
        ciphertext_blob: bytes | bytearray | memoryview,
        encryption_context: Mapping[str, str] | None = None,
        *,
        max_attempts: int | None = None,
        expect_key: Arn | None = None,
    ) -> bytearray:
        """Decrypt a blob in ``region`` (the blob names its key). With
        ``expect_key``, KMS's answer must name that key. Returns the plaintext
        (a bytearray the caller wipes)."""
        from alibabacloud_kms20160120 import models

        _check_region(region, "region")
        ctx = _context_dict(encryption_context)
        if not isinstance(ciphertext_blob, (bytes, bytearray, memoryview)) or not len(ciphertext_blob):
            raise ConfigurationError("ciphertext_blob must be non-empty bytes")
        what = f"under {expect_key}" if expect_key is not None else f"in {region}"
        if self._client_key_instance(region):
            return self._instance_unwrap(region, bytes(ciphertext_blob), ctx, max_attempts)
        request = models.DecryptRequest(
            ciphertext_blob=base64.b64encode(ciphertext_blob).decode("ascii"), encryption_context=ctx
        )
        body = self._call(region, "Decrypt", what, lambda c, rt: c.decrypt_with_options(request, rt), max_attempts)
        request_id = _none_if_null(body.request_id)
        key_id = _none_if_null(body.key_id)
        if expect_key is not None and key_id is not None and key_id not in (expect_key.key_id, str(expect_key)):
            raise KmsError(
                f"KMS Decrypt {what}: the ciphertext blob belongs to key {key_id!r}, not to {expect_key.key_id!r}",
                code="KeyIdMismatch",
                region=region,
                request_id=request_id,
                retryable=False,
            )
        try:
            return bytearray(_b64decode(body.plaintext))
        except (ValueError, binascii.Error):
            raise KmsError(
                f"KMS Decrypt {what} returned a malformed Plaintext",
                code="InvalidResponse",
                region=region,
                request_id=request_id,
            ) from None

    # -- asymmetric keys (kms-local-server.md section 14.3-14.5) -------------

    @staticmethod
    def _version_id(key_version_id: object) -> str:
        if not isinstance(key_version_id, str) or not key_version_id or any(c.isspace() for c in key_version_id):
            raise ConfigurationError("key_version_id must be a non-empty key version ID without whitespace")
        return key_version_id

    @staticmethod
    def _digest_b64(digest: object, what: str = "digest") -> str:
        if not isinstance(digest, (bytes, bytearray, memoryview)) or len(digest) != 32:
            raise ConfigurationError(f"{what} must be 32 bytes (KMS signs a SHA-256 or SM3 digest)")
        return base64.b64encode(digest).decode("ascii")

    def asymmetric_sign(
        self,
        key_arn: str | Arn,
        key_version_id: str,
        algorithm: str,
        digest: bytes | bytearray | memoryview,
        *,
        max_attempts: int | None = None,
    ) -> bytes:
        """AsymmetricSign: ``key_arn``'s version ``key_version_id`` signs the
        32-byte ``digest`` (KMS never hashes: SHA-256(M), or SM3(Z || M) for
        SM2DSA) with ``algorithm`` (``RSA_PSS_SHA_256``, ``RSA_PKCS1_SHA_256``,
        ``ECDSA_SHA_256``, ``SM2DSA``). Returns the raw signature bytes (RSA:
        modulus length; ECDSA and SM2: DER)."""
        from alibabacloud_kms20160120 import models

        arn = self._arn(key_arn)
        request = models.AsymmetricSignRequest(
            key_id=arn.key_id,
            key_version_id=self._version_id(key_version_id),
            algorithm=str(algorithm),
            digest=self._digest_b64(digest),
        )
        what = f"with {arn} version {key_version_id}"
        body = self._call(
            arn.region, "AsymmetricSign", what, lambda c, rt: c.asymmetric_sign_with_options(request, rt), max_attempts
        )
        try:
            return _b64decode(body.value)
        except (ValueError, binascii.Error):
            raise KmsError(
                f"KMS AsymmetricSign {what} returned a malformed Value",
                code="InvalidResponse",
                region=arn.region,
                request_id=_none_if_null(body.request_id),
            ) from None

    def asymmetric_verify(
        self,
        key_arn: str | Arn,
        key_version_id: str,
        algorithm: str,
        digest: bytes | bytearray | memoryview,
        signature: bytes | bytearray | memoryview,
        *,
        max_attempts: int | None = None,
    ) -> bool:
        """AsymmetricVerify: whether ``signature`` is the key version's
        signature of ``digest``. A signature that does not verify is ``False``
        (HTTP 200), not an error."""
        from alibabacloud_kms20160120 import models

        arn = self._arn(key_arn)
        if not isinstance(signature, (bytes, bytearray, memoryview)) or not len(signature):
            raise ConfigurationError("signature must be non-empty bytes")
        request = models.AsymmetricVerifyRequest(
            key_id=arn.key_id,
            key_version_id=self._version_id(key_version_id),
            algorithm=str(algorithm),
            digest=self._digest_b64(digest),
            value=base64.b64encode(signature).decode("ascii"),
        )
        what = f"with {arn} version {key_version_id}"
        body = self._call(
            arn.region,
            "AsymmetricVerify",
            what,
            lambda c, rt: c.asymmetric_verify_with_options(request, rt),
            max_attempts,
        )
        # The official model copies Value without a type check: a string
        # "false" would be truthy (spec 14.1, item 7).
        if not isinstance(body.value, bool):
            raise KmsError(
                f"KMS AsymmetricVerify {what} returned a Value that is not a boolean",
                code="InvalidResponse",
                region=arn.region,
                request_id=_none_if_null(body.request_id),
            )
        return body.value

    def get_public_key(self, key_arn: str | Arn, key_version_id: str, *, max_attempts: int | None = None) -> str:
        """GetPublicKey: the key version's public key as PEM SubjectPublicKeyInfo
        (SM2: id-ecPublicKey + sm2p256v1)."""
        from alibabacloud_kms20160120 import models

        arn = self._arn(key_arn)
        request = models.GetPublicKeyRequest(key_id=arn.key_id, key_version_id=self._version_id(key_version_id))
        what = f"of {arn} version {key_version_id}"
        body = self._call(
            arn.region, "GetPublicKey", what, lambda c, rt: c.get_public_key_with_options(request, rt), max_attempts
        )
        pem = body.public_key
        if not isinstance(pem, str) or "-----BEGIN PUBLIC KEY-----" not in pem:
            raise KmsError(
                f"KMS GetPublicKey {what} returned no PEM public key",
                code="InvalidResponse",
                region=arn.region,
                request_id=_none_if_null(body.request_id),
            )
        return pem

    def list_key_versions(self, key_arn: str | Arn, *, max_attempts: int | None = None) -> list[KeyVersion]:
        """ListKeyVersions, every page: the key's versions as KMS lists them
        (oldest first on LocalKms; the order of real KMS is not documented)."""
        from alibabacloud_kms20160120 import models

        arn = self._arn(key_arn)
        versions: list[KeyVersion] = []
        page = 1
        while True:
            request = models.ListKeyVersionsRequest(key_id=arn.key_id, page_number=page, page_size=100)
            body = self._call(
                arn.region,
                "ListKeyVersions",
                f"of {arn}",
                lambda c, rt: c.list_key_versions_with_options(request, rt),
                max_attempts,
            )
            listed = getattr(body.key_versions, "key_version", None) or []
            for item in listed:
                version_id = _none_if_null(getattr(item, "key_version_id", None))
                if version_id is None:
                    raise KmsError(
                        f"KMS ListKeyVersions of {arn} returned a version without KeyVersionId",
                        code="InvalidResponse",
                        region=arn.region,
                        request_id=_none_if_null(body.request_id),
                    )
                versions.append(
                    KeyVersion(
                        key_id=_none_if_null(getattr(item, "key_id", None)) or arn.key_id,
                        key_version_id=version_id,
                        creation_date=_none_if_null(getattr(item, "creation_date", None)),
                    )
                )
            total = body.total_count
            if isinstance(total, str) and total.isdigit():  # the model does not type-check ints (spec 14.1)
                total = int(total)
            # Stop on a short or empty page as well as on TotalCount, so that a
            # server that miscounts cannot keep this loop going.
            if not listed or len(listed) < 100 or not isinstance(total, int) or len(versions) >= total:
                return versions
            page += 1

    # -- Secrets Manager -------------------------------------------------------

    def _secret_call(
        self, region: str, action: str, what: str, fn: Callable[[Any, Any], Any], max_attempts: int | None
    ) -> Any:
        """:meth:`_call`, with "not found" and "exists" as their own error types."""
        try:
            return self._call(region, action, what, fn, max_attempts)
        except KmsError as exc:
            kind: type[KmsError] | None = (
                SecretNotFoundError
                if exc.code in SECRET_NOT_FOUND_CODES
                else SecretExistsError
                if exc.code in SECRET_EXISTS_CODES
                else None
            )
            if kind is None or isinstance(exc, kind):
                raise
            raise kind(
                exc.args[0] if exc.args else str(exc),
                code=exc.code,
                region=exc.region,
                request_id=exc.request_id,
                retryable=False,
            ) from None

    def get_secret_value(
        self,
        region: str,
        name: str,
        version_id: str | None = None,
        version_stage: str | None = None,
        *,
        max_attempts: int | None = None,
    ) -> SecretValue:
        """GetSecretValue: the version ``version_id``, else the one holding
        ``version_stage``, else ACSCurrent. :class:`~kmsenv.SecretNotFoundError`
        when there is no such secret or version."""
        from alibabacloud_kms20160120 import models

        request = models.GetSecretValueRequest(secret_name=name, version_id=version_id, version_stage=version_stage)
        body = self._secret_call(
            region,
            "GetSecretValue",
            f"of secret {name!r}",
            lambda c, rt: c.get_secret_value_with_options(request, rt),
            max_attempts,
        )
        stages = getattr(body.version_stages, "version_stage", None) or []
        if not isinstance(body.secret_data, str) or not isinstance(body.version_id, str):
            raise KmsError(
                f"KMS GetSecretValue of secret {name!r} returned no SecretData or VersionId",
                code="InvalidResponse",
                region=region,
            )
        return SecretValue(body.secret_data, body.version_id, tuple(stages), body.secret_data_type or "text")

    def create_secret(
        self,
        region: str,
        name: str,
        value: str,
        version_id: str,
        *,
        encryption_key_id: str | None = None,
        max_attempts: int | None = None,
    ) -> None:
        """CreateSecret: a secret whose first version (ACSCurrent) is ``value``
        (``text``), encrypted under ``encryption_key_id`` (a CMK's key ID; None
        for Secrets Manager's service key). :class:`~kmsenv.SecretExistsError`
        when it exists."""
        from alibabacloud_kms20160120 import models

        request = models.CreateSecretRequest(
            secret_name=name,
            secret_data=value,
            secret_data_type="text",
            version_id=version_id,
            encryption_key_id=encryption_key_id,
        )
        self._secret_call(
            region, "CreateSecret", f"{name!r}", lambda c, rt: c.create_secret_with_options(request, rt), max_attempts
        )

    def put_secret_value(
        self, region: str, name: str, value: str, version_id: str, *, max_attempts: int | None = None
    ) -> None:
        """PutSecretValue: a new version that becomes ACSCurrent (the old
        current one ACSPrevious)."""
        from alibabacloud_kms20160120 import models

        request = models.PutSecretValueRequest(
            secret_name=name, secret_data=value, secret_data_type="text", version_id=version_id
        )
        self._secret_call(
            region,
            "PutSecretValue",
            f"of secret {name!r}",
            lambda c, rt: c.put_secret_value_with_options(request, rt),
            max_attempts,
        )

    def list_secret_versions(self, region: str, name: str, *, max_attempts: int | None = None) -> list[SecretVersion]:
        """ListSecretVersionIds, every page, deprecated versions (no stage) included."""
        from alibabacloud_kms20160120 import models

        out: list[SecretVersion] = []
        page = 1
        while True:
            request = models.ListSecretVersionIdsRequest(
                secret_name=name, include_deprecated="true", page_number=page, page_size=100
            )
            body = self._secret_call(
                region,
                "ListSecretVersionIds",
                f"of secret {name!r}",
                lambda c, rt: c.list_secret_version_ids_with_options(request, rt),
                max_attempts,
            )
            entries = getattr(getattr(body, "version_ids", None), "version_id", None) or []
            for v in entries:
                stages = getattr(v.version_stages, "version_stage", None) or []
                out.append(SecretVersion(v.version_id, tuple(stages), v.create_time or ""))
            total = body.total_count
            if isinstance(total, str) and total.isdigit():
                total = int(total)
            # A short or empty page ends the list too: a miscounting server cannot loop this.
            if not entries or len(entries) < 100 or not isinstance(total, int) or len(out) >= total:
                return out
            page += 1


@dataclass(frozen=True)
class KeyVersion:
    """One version of a KMS key, as ListKeyVersions lists it."""

    key_id: str
    key_version_id: str
    creation_date: str | None = None


class SecretValue(NamedTuple):
    """One secret version as read: its ``SecretData``, ``VersionId``, stages and
    ``SecretDataType``."""

    value: str
    version_id: str
    stages: tuple[str, ...] = ()
    data_type: str = "text"


class SecretVersion(NamedTuple):
    """One entry of a secret's version list."""

    version_id: str
    stages: tuple[str, ...] = ()
    create_time: str = ""
