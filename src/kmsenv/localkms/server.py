"""HTTP front end: one loopback listener per region, and the ``LocalKms`` facade.

Requests carry no region (the client signs only ``host``), so the port *is* the region.
Each region has its own ``ThreadingHTTPServer`` so that "down" can genuinely close that
region's listening socket (clients see connection refused) and reopen the same port later.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import string
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Sequence
from urllib.parse import parse_qsl

from . import signing
from .actions import RegionActions
from .errors import KmsError, missing
from .faults import Faults
from .keystore import KEY_SPECS, KeyStore

log = logging.getLogger("kmsenv.localkms")

_ALNUM = string.ascii_letters + string.digits
_CONTENT_TYPE = b"Content-Type: application/json;charset=utf-8\r\n"


def _random_access_key() -> tuple[str, str]:
    key_id = "LTAI" + "".join(secrets.choice(_ALNUM) for _ in range(20))
    secret = "".join(secrets.choice(_ALNUM) for _ in range(30))
    return key_id, secret


def _random_account_uid() -> str:
    return str(secrets.choice(range(1, 10))) + "".join(secrets.choice(string.digits)
                                                       for _ in range(15))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the official client pools connections
    # Without TCP_NODELAY each response waits ~40 ms on Nagle + delayed ACK.
    disable_nagle_algorithm = True
    timeout = 300  # idle keep-alive connections release their thread eventually
    server: "_HttpServer"

    def setup(self) -> None:
        super().setup()
        self.server.region_server._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.region_server._track(self.connection, False)

    def do_POST(self) -> None:
        self.server.region_server.handle(self)

    do_GET = do_POST

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass  # RegionServer logs its own line, without parameters or signatures

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.server.region_server.region, *args)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    # Idle keep-alive connections would make server_close() wait for client timeouts;
    # RegionServer shuts connections down itself instead.
    block_on_close = False
    request_queue_size = 128  # socketserver's default of 5 drops bursts of new connections

    def __init__(self, address: tuple[str, int], region_server: "RegionServer") -> None:
        self.region_server = region_server
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Connections cut by "down" or stop() are expected; anything else goes to the log.
        log.debug("connection error from %s", client_address, exc_info=True)


class RegionServer:
    """One region's listener, fault settings and request counters."""

    def __init__(self, kms: "LocalKms", region: str, actions: RegionActions) -> None:
        self.kms = kms
        self.region = region
        self.actions = actions
        self.port = 0
        self.faults = Faults()
        self.counts: dict[str, int] = {}
        self._count_lock = threading.Lock()
        self._life_lock = threading.Lock()
        self._httpd: Optional[_HttpServer] = None
        self._thread: Optional[threading.Thread] = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._host_id = f"kms.{region}.aliyuncs.com"

    # -- listener lifecycle --------------------------------------------------------

    def open(self, host: str, port: int) -> None:
        with self._life_lock:
            if self._httpd is not None:
                return
            httpd = _HttpServer((host, port), self)
            self.port = httpd.server_address[1]
            self._httpd = httpd
            self._thread = threading.Thread(target=httpd.serve_forever, kwargs={
                "poll_interval": 0.05}, name=f"localkms-{self.region}", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Close the listening socket and cut every open connection."""
        with self._life_lock:
            httpd, self._httpd = self._httpd, None
            if httpd is None:
                return
            httpd.shutdown()
            httpd.server_close()
            with self._conns_lock:
                conns = list(self._conns)
            for conn in conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if self._thread is not None:
                self._thread.join(timeout=5)

    @property
    def listening(self) -> bool:
        return self._httpd is not None

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    # -- requests ------------------------------------------------------------------

    def _count(self, action: str) -> None:
        with self._count_lock:
            self.counts[action] = self.counts.get(action, 0) + 1

    def handle(self, h: _Handler) -> None:
        started = time.perf_counter()
        request_id = str(uuid.uuid4()).upper()
        faults = self.faults  # one consistent snapshot for the whole request
        action = "-"
        try:
            if faults.latency_ms:
                time.sleep(faults.latency_ms / 1000.0)
            try:
                length = int(h.headers.get("Content-Length") or 0)
            except ValueError:
                raise KmsError(400, "InvalidParameter", "Invalid Content-Length.") from None
            body = h.rfile.read(length) if length > 0 else b""
            path, _, raw_query = h.path.partition("?")
            query = parse_qsl(raw_query, keep_blank_values=True)
            form: list[tuple[str, str]] = []
            if body and "form-urlencoded" in (h.headers.get("Content-Type") or ""):
                form = parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
            headers = signing.lower_headers(h.headers.items())
            verified = signing.verify(h.command, path, query, form, headers, body,
                                      self.kms._secret_for, self.kms._nonces)
            action = verified.action
            if not action:
                raise missing("Action")
            if verified.version != signing.API_VERSION:
                raise KmsError(400, "InvalidVersion", "Specified parameter Version is not valid.")
            handler = self.actions.handlers.get(action)
            if handler is None:
                raise KmsError(404, "InvalidAction.NotFound",
                               "Specified api is not found, please check your url and method.")
            # Counted before fault injection: a throttled or failed attempt is still an
            # attempt, which is what retry tests want to count.
            self._count(action)
            injected = faults.injected_error()
            if injected is not None:
                raise injected
            params = dict(query)
            params.update(form)
            result = handler(params)
            result["RequestId"] = request_id
            status = 200
        except KmsError as exc:
            status = exc.status
            result = {"RequestId": request_id, "HostId": self._host_id, "Code": exc.code,
                      "Message": exc.message,
                      "Recommend": "https://api.aliyun.com/troubleshoot?q="
                                   f"{exc.code}&product=Kms&requestId={request_id}"}
        except Exception:
            log.exception("%s %s failed", self.region, action)
            status = 500
            result = {"RequestId": request_id, "HostId": self._host_id,
                      "Code": "InternalFailure", "Message": "Internal Failure."}
        body_out = json.dumps(result, separators=(",", ":")).encode("ascii")
        head = [f"HTTP/1.1 {status} {h.responses.get(status, ('',))[0]}\r\n".encode("ascii"),
                _CONTENT_TYPE,
                f"Content-Length: {len(body_out)}\r\nx-acs-request-id: {request_id}\r\n"
                .encode("ascii")]
        if h.close_connection:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        h.wfile.write(b"".join(head) + body_out)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %d %.1fms %s", self.region, action, status,
                      (time.perf_counter() - started) * 1000, request_id)


class LocalKms:
    """A local Alibaba Cloud KMS (API 2016-01-20) for the unmodified official clients.

    One loopback HTTP port per region.  Without ``state_dir`` everything lives in memory;
    with it, keys, aliases, the account UID, the access key pair and the ports are kept in
    ``<state_dir>/localkms.sqlite3`` (key material in clear: test use only).

    ``stats()`` counts, per region and action, every request that passed signature
    verification and named a known action -- including requests then answered with an
    injected throttling or 5xx fault.  Requests refused earlier (bad signature, unknown
    action, region down) are not counted.

    An instance is single-use: ``start()`` after ``stop()`` raises.
    """

    def __init__(self, regions: Sequence[str], state_dir: Optional[str] = None,
                 access_key_id: Optional[str] = None,
                 access_key_secret: Optional[str] = None,
                 port: Optional[int] = None, host: str = "127.0.0.1") -> None:
        regions = list(dict.fromkeys(regions))
        if not regions:
            raise ValueError("at least one region is required")
        for r in regions:
            if not r or not all(c.isalnum() or c == "-" for c in r):
                raise ValueError(f"invalid region name {r!r}")
        if (access_key_id is None) != (access_key_secret is None):
            raise ValueError("give both access_key_id and access_key_secret, or neither")
        self.regions: list[str] = regions
        self.state_dir = state_dir
        self._host = host
        self._base_port = port
        self._store = KeyStore(state_dir)
        self._nonces = signing.NonceCache()
        self._started = False
        self._stopped = False
        if access_key_id is None:
            # With a state dir the pair is created once and reused, so clients configured
            # against an earlier run keep working.
            generated = json.dumps(dict(zip(("id", "secret"), _random_access_key())))
            stored = json.loads(self._store.meta_setdefault("access_key", generated))
            access_key_id, access_key_secret = stored["id"], stored["secret"]
        self.access_key_id: str = access_key_id
        self.access_key_secret: str = access_key_secret  # type: ignore[assignment]
        self.account_uid: str = self._store.meta_setdefault("account_uid",
                                                            _random_account_uid())
        self._servers = {r: RegionServer(self, r, RegionActions(
            r, self.account_uid, self._store, lambda: list(self.regions))) for r in regions}

    def __repr__(self) -> str:  # never the secret
        return (f"LocalKms(regions={self.regions!r}, state_dir={self.state_dir!r}, "
                f"access_key_id={self.access_key_id!r})")

    def _secret_for(self, access_key_id: str) -> Optional[str]:
        return self.access_key_secret if access_key_id == self.access_key_id else None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> "LocalKms":
        if self._stopped:
            raise RuntimeError("LocalKms cannot be restarted; create a new instance")
        if self._started:
            return self
        remembered: dict[str, int] = json.loads(self._store.get_meta("ports") or "{}")
        try:
            for i, (region, server) in enumerate(self._servers.items()):
                if self._base_port is not None:
                    server.open(self._host, self._base_port + i if self._base_port else 0)
                    continue
                wanted = remembered.get(region, 0)
                try:
                    server.open(self._host, wanted)
                except OSError:
                    if not wanted:
                        raise
                    log.info("port %d for %s is taken; using another", wanted, region)
                    server.open(self._host, 0)
        except BaseException:
            for server in self._servers.values():
                server.close()
            raise
        for server in self._servers.values():
            if server.faults.down:  # set_fault(down=True) before start(): port known, closed
                server.close()
        if self._store.persistent:
            remembered.update({r: s.port for r, s in self._servers.items()})
            self._store.set_meta("ports", json.dumps(remembered, sort_keys=True))
        self._started = True
        return self

    def stop(self) -> None:
        """Close every listener and connection, and the state database.  Idempotent."""
        self._stopped = True
        for server in self._servers.values():
            server.close()
        self._store.close()

    def __enter__(self) -> "LocalKms":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses -----------------------------------------------------------------

    @property
    def endpoints(self) -> dict[str, str]:
        """``{region: "http://127.0.0.1:PORT"}``."""
        return {r: f"http://{self._host}:{s.port}" for r, s in self._servers.items()}

    @property
    def hosts(self) -> dict[str, str]:
        """``{region: "127.0.0.1:PORT"}``: the form ``Config(endpoint=...)`` wants."""
        return {r: f"{self._host}:{s.port}" for r, s in self._servers.items()}

    # -- keys ----------------------------------------------------------------------

    def _server(self, region: str) -> RegionServer:
        try:
            return self._servers[region]
        except KeyError:
            raise ValueError(f"region {region!r} is not served by this LocalKms") from None

    def create_key(self, region: str, key_spec: str = "Aliyun_AES_256",
                   description: str = "") -> str:
        """Create an enabled symmetric CMK; return its ARN."""
        if key_spec not in KEY_SPECS:
            raise ValueError(f"unsupported key spec {key_spec!r}; use one of {sorted(KEY_SPECS)}")
        actions = self._server(region).actions
        key = self._store.create_key(region, key_spec, description)
        return actions.key_arn(key.key_id)

    def create_alias(self, region: str, alias_name: str, key: str) -> None:
        """Point ``alias/...`` at a key (ID or ARN) in ``region``."""
        actions = self._server(region).actions
        actions.create_alias({"AliasName": alias_name, "KeyId": key})

    def _set_key_state(self, arn: str, state: str) -> None:
        parts = arn.split(":")
        if len(parts) < 5 or parts[:2] != ["acs", "kms"]:
            raise ValueError(f"not a KMS key ARN: {arn!r}")
        actions = self._server(parts[2]).actions
        try:
            key = actions.resolve(arn)
        except KmsError as exc:
            raise ValueError(f"{exc.code}: {arn}") from None
        self._store.set_state(actions.region, key.key_id, state)

    def disable_key(self, arn: str) -> None:
        self._set_key_state(arn, "Disabled")

    def enable_key(self, arn: str) -> None:
        self._set_key_state(arn, "Enabled")

    # -- faults and statistics -----------------------------------------------------

    def set_fault(self, region: str, down: bool = False, latency_ms: float = 0,
                  throttle_rate: float = 0.0, error_rate: float = 0.0,
                  error_code: str = "ServiceUnavailableTemporary") -> None:
        """Replace ``region``'s fault settings (call with only ``region`` to clear them).

        ``down`` closes the listening socket and open connections (connection refused);
        bringing it back reopens the same port.  ``throttle_rate`` answers that fraction of
        requests with 429 ``Rejected.Throttling``; ``error_rate`` answers that fraction with
        ``error_code``: ``ServiceUnavailableTemporary`` (503) or ``InternalFailure`` (500).
        """
        server = self._server(region)
        server.faults = Faults(down, float(latency_ms), float(throttle_rate),
                               float(error_rate), error_code)
        if down:
            server.close()
        elif self._started and not self._stopped and not server.listening:
            server.open(self._host, server.port)

    def stats(self) -> dict[str, dict[str, int]]:
        """``{region: {action: count}}`` (see the class docstring for what counts)."""
        result = {}
        for region, server in self._servers.items():
            with server._count_lock:
                result[region] = dict(server.counts)
        return result

    def reset_stats(self) -> None:
        for server in self._servers.values():
            with server._count_lock:
                server.counts.clear()
