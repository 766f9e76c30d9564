"""HTTP front end: one loopback listener per region, and the ``LocalKms`` facade.

Requests carry no region (the client signs only ``host``), so the port *is* the region.
Each region has its own ``ThreadingHTTPServer`` so that "down" can genuinely close that
region's listening socket (clients see connection refused) and reopen the same port later.

Everything before authentication is bounded, because anyone who can reach the port can
send it: request line, headers and body sizes (checked before anything is read into
memory), the number of parameters, the connections served at once, and the time one
request may take to arrive (a per-request deadline, not a per-``recv`` timeout,
so a client dribbling one byte at a time cannot hold a connection either).
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import re
import secrets
import socket
import string
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Sequence, TextIO
from urllib.parse import parse_qsl

from . import admin, asymmetric, signing
from .actions import RegionActions
from .errors import KmsError, http_error, missing, server_error
from .faults import Faults
from .instance import InstanceGateway, InstanceGateways, InstancesArg
from .keystore import KEY_SPECS, Key, KeyStore
from .listener import Listener, declared_body_length

log = logging.getLogger("kmsenv.localkms")

_ALNUM = string.ascii_letters + string.digits
_CONTENT_TYPE = b"Content-Type: application/json;charset=utf-8\r\n"

# Request size limits.  The largest legitimate request parameters are CreateKey's
# Description (8192 characters: up to 96 KiB percent-encoded) and SecretData (30 KiB of
# UTF-8, ~90 KiB encoded), which the V3 client sends in the query (request line) or the
# form body and the V1 SDK in the query; Encrypt's Plaintext is at most 6 KiB.  The spec
# asks for request lines of at least 256 KiB (kms-local-server.md §14.1, §14.12).
MAX_REQUEST_LINE = 256 * 1024
MAX_HEADER_BYTES = 64 * 1024  # all header lines together; the clients send ~1 KiB
MAX_BODY_BYTES = 256 * 1024
MAX_PARAMETERS = 512  # query plus form; real requests carry fewer than 30
DEFAULT_MAX_CONNECTIONS = 128  # all regions together; idle ones make room for new ones
DEFAULT_READ_TIMEOUT = 60.0  # seconds: keep-alive idle wait, then again for one request


_LOGGABLE_ACTION = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")


def _loggable_action(action: str) -> str:
    """The action name as logged: a verified request may still name anything."""
    return action if _LOGGABLE_ACTION.fullmatch(action) else "?"


def _claims_admin(headers: dict[str, str], query: Sequence[tuple[str, str]], form: Sequence[tuple[str, str]]) -> bool:
    """Whether an (unverified) request names the control call: V3 in a header, V1 as a
    parameter."""
    if headers.get("x-acs-action") == admin.ACTION:
        return True
    return any(k == "Action" and v == admin.ACTION for k, v in (*query, *form))


def _json_response(status: int, reason: str, result: dict[str, Any], request_id: str, close: bool) -> bytes:
    body = json.dumps(result, separators=(",", ":")).encode("ascii")
    head = [
        f"HTTP/1.1 {status} {reason}\r\n".encode("ascii"),
        _CONTENT_TYPE,
        f"Content-Length: {len(body)}\r\nx-acs-request-id: {request_id}\r\n".encode("ascii"),
    ]
    if close:
        head.append(b"Connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + body


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _random_access_key() -> tuple[str, str]:
    key_id = "LTAI" + "".join(secrets.choice(_ALNUM) for _ in range(20))
    secret = "".join(secrets.choice(_ALNUM) for _ in range(30))
    return key_id, secret


def _random_account_uid() -> str:
    return str(secrets.choice(range(1, 10))) + "".join(secrets.choice(string.digits) for _ in range(15))


class _DeadlineReader(io.RawIOBase):
    """Socket reads under one deadline per request rather than one timeout per ``recv``:
    a client sending a byte every few seconds (slowloris) still runs out of time."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.deadline = 0.0  # time.monotonic() value; set before every request

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request not received in time")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buf)


class _HeaderBudget:
    """The ``readline`` that ``http.client.parse_headers`` uses, with one byte budget for
    all header lines: the stdlib alone allows 100 lines of 64 KiB (6.5 MB a request)."""

    def __init__(self, inner: "io.BufferedReader[Any]", budget: int) -> None:
        self._inner = inner
        self._remaining = budget

    def readline(self, limit: int = -1) -> bytes:
        cap = self._remaining + 1 if limit < 0 else min(limit, self._remaining + 1)
        line = self._inner.readline(cap)
        if len(line) > self._remaining:  # parse_request answers 431 to this
            raise http.client.LineTooLong(f"request headers over {MAX_HEADER_BYTES} bytes")
        self._remaining -= len(line)
        return line


class _Slot:
    """One admitted connection's place under the connection bound."""

    __slots__ = ("sock", "evicted")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.evicted = False


class _ConnectionSlots:
    """At most ``limit`` connections served at once, across all regions (each holds a
    thread and, mid-request, up to ~1 MiB of request being parsed).

    When every slot is taken, the connection idle longest between requests (holding
    nothing) is closed to make room: pooled keep-alive connections and silent ones then
    never lock clients out.  Only when every connection is mid-request is a newcomer
    refused, with 503 ``ServiceUnavailableTemporary`` (clients retry it).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._active = 0
        self._idle: dict[_Slot, None] = {}  # insertion order: idle longest first

    def admit(self, sock: socket.socket) -> Optional[_Slot]:
        victim = None
        with self._lock:
            if self._active < self.limit:
                self._active += 1
            elif self._idle:
                victim = next(iter(self._idle))
                del self._idle[victim]
                victim.evicted = True  # its place passes to the newcomer
            else:
                return None
        if victim is not None:
            try:
                victim.sock.shutdown(socket.SHUT_RDWR)  # its handler sees EOF and ends
            except OSError:
                pass
        return _Slot(sock)

    def idle(self, slot: _Slot) -> None:
        with self._lock:
            if not slot.evicted:
                self._idle[slot] = None

    def busy(self, slot: _Slot) -> bool:
        """Leave the idle list as a request starts; False if evicted meanwhile."""
        with self._lock:
            self._idle.pop(slot, None)
            return not slot.evicted

    def release(self, slot: _Slot) -> None:
        with self._lock:
            self._idle.pop(slot, None)
            if not slot.evicted:
                self._active -= 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the official client pools connections
    # Without TCP_NODELAY each response waits ~40 ms on Nagle + delayed ACK.
    disable_nagle_algorithm = True
    server: "_HttpServer"

    def setup(self) -> None:
        # typeshed declares ``timeout`` a ClassVar, but StreamRequestHandler.setup() reads it
        # per instance, and the timeout is this server's setting, not the class's.
        self.timeout = self.server.region_server.read_timeout  # type: ignore[misc]  # writes; reads: below
        self._slot = self.server.slot_of(self.request)
        super().setup()
        self.rfile.close()  # replaced by a reader that enforces the per-request deadline
        self._reader = _DeadlineReader(self.connection)
        self._buffered = io.BufferedReader(self._reader)
        self.rfile = self._buffered
        self.server.region_server._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.region_server._track(self.connection, False)

    def handle_one_request(self) -> None:
        """The stdlib's, with the size limits and deadlines above, and KMS-style errors."""
        read_timeout = self.server.region_server.read_timeout
        try:
            # An idle keep-alive connection may wait read_timeout for its next request;
            # once a request starts, it gets read_timeout to arrive completely.
            self._reader.deadline = time.monotonic() + read_timeout
            slots = self.server.slots
            slots.idle(self._slot)
            if not self._buffered.peek(1) or not slots.busy(self._slot):
                self.close_connection = True  # client closed, or evicted to make room
                return
            self._reader.deadline = time.monotonic() + read_timeout
            self.raw_requestline = self._buffered.readline(MAX_REQUEST_LINE + 1)
            if len(self.raw_requestline) > MAX_REQUEST_LINE:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            # parse_request() reads the headers through self.rfile.readline only; typeshed
            # wants a BufferedIOBase there, _HeaderBudget provides just that method.
            self.rfile = _HeaderBudget(self._buffered, MAX_HEADER_BYTES)  # type: ignore[assignment]
            try:
                parsed = self.parse_request()
            finally:
                self.rfile = self._buffered
            if not parsed:
                return  # parse_request has answered
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self.send_error(HTTPStatus.NOT_IMPLEMENTED)
                return
            method()
            self.wfile.flush()
        except TimeoutError:
            # Too slow (or idle too long): drop the connection without an answer, as the
            # stdlib does; the thread and the connection slot are released.
            self.close_connection = True

    def handle_expect_100(self) -> bool:
        # Refuse an oversized body before the client is invited to send it.
        try:
            self.server.region_server.body_length(self)
        except KmsError as exc:
            self.server.region_server.answer_error(self, exc)
            return False
        return super().handle_expect_100()

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """The stdlib's protocol-level errors (bad request line, headers too large, ...)
        as KMS JSON errors.  Its message quotes the request line, which may carry a
        Plaintext: neither echoed back nor logged."""
        log.debug("%s: refused malformed request: HTTP %d", self.server.region_server.region, code)
        self.server.region_server.answer_error(self, http_error(int(code)))

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
        self.slots: _ConnectionSlots = region_server.kms._slots
        self._slot_of: dict[socket.socket, _Slot] = {}
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # ThreadingMixIn's, with a connection slot taken before the thread starts.
        slot = self.slots.admit(request)
        if slot is None:
            # Every slot is mid-request: answer 503 at once rather than queue behind
            # requests that may be slow on purpose.  This is the accept thread: no waiting.
            self.region_server.refuse_busy(request)
            self.shutdown_request(request)
            return
        self._slot_of[request] = slot
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address, slot), daemon=True)
        try:
            thread.start()
        except BaseException:
            self._slot_of.pop(request, None)
            self.slots.release(slot)
            raise

    def slot_of(self, request: socket.socket) -> _Slot:
        return self._slot_of[request]

    def _serve_connection(self, request: Any, client_address: Any, slot: _Slot) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self._slot_of.pop(request, None)
            self.slots.release(slot)
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Connections cut by "down" or stop() are expected; anything else goes to the log.
        log.debug("connection error from %s", client_address, exc_info=True)


class RegionServer(Listener):
    """One region's listener, fault settings and request counters."""

    def __init__(
        self, kms: "LocalKms", region: str, actions: RegionActions, read_timeout: float = DEFAULT_READ_TIMEOUT
    ) -> None:
        self.kms = kms
        self.region = region
        self.actions = actions
        self.read_timeout = read_timeout
        self.port = 0
        self.faults = Faults()
        # A timed fault's restoring timer, and a count of fault changes: the timer clears
        # the faults only if no change came after the one that set it.
        self.fault_timer: Optional[threading.Timer] = None
        self.fault_generation = 0
        self.counts: dict[str, int] = {}
        self._count_lock = threading.Lock()
        self._init_listener()
        self._host_id = f"kms.{region}.aliyuncs.com"

    # -- listener lifecycle (close, listening, _track: listener.Listener) ----------

    def open(self, host: str, port: int) -> None:
        with self._life_lock:
            if self._httpd is None:
                self._serve(_HttpServer((host, port), self), f"localkms-{self.region}")

    # -- requests ------------------------------------------------------------------

    def _count(self, action: str) -> None:
        with self._count_lock:
            self.counts[action] = self.counts.get(action, 0) + 1

    def body_length(self, h: _Handler) -> int:
        return declared_body_length(h, MAX_BODY_BYTES)

    def handle(self, h: _Handler) -> None:
        started = time.perf_counter()
        request_id = str(uuid.uuid4()).upper()
        faults = self.faults  # one consistent snapshot for the whole request
        action = "-"
        after_answer: Optional[Callable[[], None]] = None
        try:
            # The body is read first: the read deadline covers receiving the request, not
            # the latency injected before answering it.
            length = self.body_length(h)
            body = h.rfile.read(length) if length > 0 else b""
            if len(body) != length:  # the client left mid-body: nobody to answer
                h.close_connection = True
                return
            path, _, raw_query = h.path.partition("?")
            try:
                query = parse_qsl(raw_query, keep_blank_values=True, max_num_fields=MAX_PARAMETERS)
                form: list[tuple[str, str]] = []
                if body and "form-urlencoded" in (h.headers.get("Content-Type") or ""):
                    form = parse_qsl(
                        body.decode("utf-8", errors="replace"),
                        keep_blank_values=True,
                        max_num_fields=MAX_PARAMETERS - len(query),
                    )
            except ValueError:  # max_num_fields exceeded
                raise KmsError(
                    400, "InvalidParameter", f"The request has more than {MAX_PARAMETERS} parameters."
                ) from None
            headers = signing.lower_headers(h.headers.items())
            # The control call is exempt from injected latency, so a slowed region can be
            # repaired promptly.  Only the claimed action is known here; the signature is
            # checked next either way.
            if faults.latency_ms and not _claims_admin(headers, query, form):
                time.sleep(faults.latency_ms / 1000.0)
            verified = signing.verify(
                h.command,
                path,
                query,
                form,
                headers,
                body,
                self.kms._secret_for,
                self.kms._nonces,
                now=self.kms._clock(),
            )
            if not verified.action:
                raise missing("Action")
            action = _loggable_action(verified.action)
            if verified.version != signing.API_VERSION:
                raise KmsError(400, "InvalidVersion", "Specified parameter Version is not valid.")
            params = dict(query)
            params.update(form)
            if verified.action == admin.ACTION:
                # Not counted, and no injected faults: see kmsenv.localkms.admin.
                result, after_answer = self.kms._admin_set_fault(admin.parse_request(params), self.region)
                if after_answer is not None:
                    h.close_connection = True  # this very port closes once answered
            else:
                result = self._run_action(verified.action, params, faults)
            result["RequestId"] = request_id
            status = 200
        except KmsError as exc:
            status = exc.status
            result = self._error_result(exc, request_id)
        except (TimeoutError, ConnectionError):
            h.close_connection = True  # too slow, or gone: nothing to answer
            return
        except Exception:
            log.exception("%s %s failed", self.region, action)
            status = 500
            result = {
                "RequestId": request_id,
                "HostId": self._host_id,
                "Code": "InternalFailure",
                "Message": "Internal Failure.",
            }
        try:
            self._answer(h, status, result, request_id, action, started)
        finally:
            if after_answer is not None:
                after_answer()  # even if the client left: the change was accepted

    def _run_action(self, action: str, params: dict[str, str], faults: Faults) -> dict[str, Any]:
        handler = self.actions.handlers.get(action)
        if handler is None:
            raise KmsError(
                404, "InvalidAction.NotFound", "Specified api is not found, please check your url and method."
            )
        # Counted before fault injection: a throttled or failed attempt is still an
        # attempt, which is what retry tests want to count.
        self._count(action)
        injected = faults.injected_error()
        if injected is not None:
            raise injected
        return handler(params)

    def _answer(
        self, h: _Handler, status: int, result: dict[str, Any], request_id: str, action: str, started: float
    ) -> None:
        self._write(h, _json_response(status, _reason(status), result, request_id, h.close_connection))
        self.kms._request_done(self.region, action, status, (time.perf_counter() - started) * 1000, request_id)

    def _error_result(self, exc: KmsError, request_id: str) -> dict[str, Any]:
        return {
            "RequestId": request_id,
            "HostId": self._host_id,
            "Code": exc.code,
            "Message": exc.message,
            "Recommend": f"https://api.aliyun.com/troubleshoot?q={exc.code}&product=Kms&requestId={request_id}",
        }

    def _write(self, h: _Handler, response: bytes) -> None:
        h.connection.settimeout(self.read_timeout)  # the reader left its own deadline there
        h.wfile.write(response)

    def answer_error(self, h: _Handler, exc: KmsError) -> None:
        """Answer an error found before the request reached :meth:`handle`, and close."""
        started = time.perf_counter()
        h.close_connection = True
        request_id = str(uuid.uuid4()).upper()
        try:
            self._write(
                h,
                _json_response(
                    exc.status, _reason(exc.status), self._error_result(exc, request_id), request_id, close=True
                ),
            )
        except OSError:
            return  # the client is gone or stuck; the connection is closed next anyway
        self.kms._request_done(self.region, "-", exc.status, (time.perf_counter() - started) * 1000, request_id)

    def refuse_busy(self, sock: socket.socket) -> None:
        """503 to a connection over the bound, without reading from or waiting on it."""
        request_id = str(uuid.uuid4()).upper()
        exc = server_error("ServiceUnavailableTemporary")
        log.debug("%s: all %d connections mid-request; refusing another", self.region, self.kms._slots.limit)
        try:
            sock.setblocking(False)  # a fresh socket's send buffer takes ~400 bytes at once
            sock.send(
                _json_response(
                    exc.status, _reason(exc.status), self._error_result(exc, request_id), request_id, close=True
                )
            )
        except OSError:
            return
        self.kms._request_done(self.region, "-", exc.status, 0.0, request_id)


class LocalKms:
    """A local Alibaba Cloud KMS (API 2016-01-20) for the unmodified official clients.

    One loopback HTTP port per region.  Without ``state_dir`` everything lives in memory;
    with it, keys, aliases, secrets, the account UID, the access key pair and the ports are
    kept in ``<state_dir>/localkms.sqlite3`` (key material in clear: test use only; secret
    values sealed under their CMK).

    Keys are symmetric (``Aliyun_AES_256``, ...) or asymmetric (``RSA_2048``, ``RSA_3072``,
    ``EC_P256``, ``EC_P256K``, ``EC_SM2``: key versions, GetPublicKey, AsymmetricSign/Verify,
    AsymmetricEncrypt/Decrypt); Secrets Manager's generic secrets are served too
    (kms-local-server.md §14).  ``strict_version_interval`` enforces KMS 1.0's 7 days
    between versions of a key in CreateKeyVersion (off: tests rotate often).

    ``stats()`` counts, per region and action, every request that passed signature
    verification and named a known action -- including requests then answered with an
    injected throttling or 5xx fault.  Requests refused earlier (bad signature, unknown
    action, region down) are not counted.

    An instance is single-use: ``start()`` after ``stop()`` raises.

    A ``state_dir`` is created 0700 (database 0600); one that another user owns or could
    write is refused with :class:`~kmsenv.exceptions.ConfigurationError`.

    Limits (see the module docstring): ``max_connections`` connections served at once,
    all regions together (idle keep-alive ones are closed to make room; when all are
    mid-request, more are answered 503 ``ServiceUnavailableTemporary``); ``read_timeout``
    seconds for an idle keep-alive connection's next request and again for that request
    to arrive in full; ``max_nonces`` live signature nonces (more requests are answered
    429 ``Rejected.Throttling``).  ``clock`` returns the time signatures are checked
    against (epoch seconds; tests move it instead of sleeping).

    ``request_log``, a text stream, gets one line per answered request: UTC time, region,
    action (``-`` before one was verified), HTTP status, latency and request ID; nothing
    else from the request.  Faults can also be changed over HTTP by whoever holds the
    access key: the ``KmsenvSetFault`` call (:mod:`kmsenv.localkms.admin`), which
    ``kmsenv kms fault`` sends.

    ``instances`` adds KMS 3.0 instance gateways: ``{instance ID: region}`` or
    ``{instance ID: InstanceSpec(region, replica_of=primary ID)}``, each an HTTPS port
    under a private CA speaking the instance protocol (:mod:`kmsenv.localkms.instance`);
    ``instances[ID]`` gives its endpoint, CA file, ClientKey, faults and statistics.
    """

    def __init__(
        self,
        regions: Sequence[str],
        state_dir: Optional[str] = None,
        access_key_id: Optional[str] = None,
        access_key_secret: Optional[str] = None,
        port: Optional[int] = None,
        host: str = "127.0.0.1",
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        max_nonces: int = signing.DEFAULT_MAX_NONCES,
        clock: Callable[[], float] = time.time,
        request_log: Optional[TextIO] = None,
        strict_version_interval: bool = False,
        instances: Optional[InstancesArg] = None,
    ) -> None:
        regions = list(dict.fromkeys(regions))
        if not regions:
            raise ValueError("at least one region is required")
        for r in regions:
            if not r or not all(c.isalnum() or c == "-" for c in r):
                raise ValueError(f"invalid region name {r!r}")
        if (access_key_id is None) != (access_key_secret is None):
            raise ValueError("give both access_key_id and access_key_secret, or neither")
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        if not read_timeout > 0:
            raise ValueError("read_timeout must be > 0")
        self.regions: list[str] = regions
        self.state_dir = state_dir
        self._host = host
        self._base_port = port
        self._clock = clock
        self._slots = _ConnectionSlots(max_connections)
        self._request_log = request_log
        self._request_log_lock = threading.Lock()
        # Serializes fault changes (set_fault, the control call, timed restores) with stop().
        self._fault_lock = threading.RLock()
        self._nonces = signing.NonceCache(max_nonces)
        self._store = KeyStore(state_dir)
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
        self.account_uid: str = self._store.meta_setdefault("account_uid", _random_account_uid())
        self._servers = {
            r: RegionServer(
                self,
                r,
                RegionActions(
                    r,
                    self.account_uid,
                    self._store,
                    lambda: list(self.regions),
                    strict_version_interval=strict_version_interval,
                ),
                float(read_timeout),
            )
            for r in regions
        }
        # KMS 3.0 instance gateways (HTTPS, ClientKeys): kmsenv.localkms.instance.
        self._instances = InstanceGateways(self, instances or {}, host)

    def __repr__(self) -> str:  # never the secret
        return f"LocalKms(regions={self.regions!r}, state_dir={self.state_dir!r}, access_key_id={self.access_key_id!r})"

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
            self._instances.start()
        except BaseException:
            for server in self._servers.values():
                server.close()
            self._instances.stop()
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
        with self._fault_lock:  # no timed restore or control call reopens a port after this
            self._stopped = True
            for server in self._servers.values():
                if server.fault_timer is not None:
                    server.fault_timer.cancel()
                    server.fault_timer = None
        for server in self._servers.values():
            server.close()
        self._instances.stop()
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
    def instances(self) -> dict[str, InstanceGateway]:
        """``{instance ID: InstanceGateway}`` (see :mod:`kmsenv.localkms.instance`)."""
        return self._instances.gateways

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

    def create_key(
        self, region: str, key_spec: str = "Aliyun_AES_256", description: str = "", key_usage: Optional[str] = None
    ) -> str:
        """Create an enabled CMK; return its ARN.

        ``key_spec`` is a symmetric spec (``Aliyun_AES_256``, ...) or an asymmetric one
        (``RSA_2048``, ``RSA_3072``, ``EC_P256``, ``EC_P256K``, ``EC_SM2``); ``key_usage``
        defaults as CreateKey's does: ``SIGN/VERIFY`` for specs that can sign, else
        ``ENCRYPT/DECRYPT``.  An asymmetric key's first version ID is the only item of
        :meth:`key_versions`.
        """
        specs = sorted(KEY_SPECS) + list(asymmetric.ASYMMETRIC_SPECS)
        if key_spec not in specs:
            raise ValueError(f"unsupported key spec {key_spec!r}; use one of {specs}")
        allowed = asymmetric.usages(key_spec) if key_spec in asymmetric.ASYMMETRIC_SPECS else ("ENCRYPT/DECRYPT",)
        usage = key_usage or allowed[0]
        if usage not in allowed:
            raise ValueError(f"key usage {usage!r} is not valid for {key_spec}; use one of {list(allowed)}")
        actions = self._server(region).actions
        key = self._store.create_key(region, key_spec, description, usage)
        return actions.key_arn(key.key_id)

    def key_versions(self, arn: str) -> list[str]:
        """The version IDs of a key (its ARN or alias ARN), oldest first."""
        actions, key = self._resolve_arn(arn)
        return [v.version_id for v in self._store.list_versions(actions.region, key.key_id)]

    def create_key_version(self, arn: str) -> str:
        """Add a version to a key (by ARN): a new key pair, or a new primary version for a
        symmetric key; return its ID."""
        actions, key = self._resolve_arn(arn)
        return self._store.create_version(actions.region, key.key_id)[1].version_id

    def create_alias(self, region: str, alias_name: str, key: str) -> None:
        """Point ``alias/...`` at a key (ID or ARN) in ``region``."""
        actions = self._server(region).actions
        actions.create_alias({"AliasName": alias_name, "KeyId": key})

    def _resolve_arn(self, arn: str) -> tuple[RegionActions, Key]:
        parts = arn.split(":")
        if len(parts) < 5 or parts[:2] != ["acs", "kms"]:
            raise ValueError(f"not a KMS key ARN: {arn!r}")
        actions = self._server(parts[2]).actions
        try:
            return actions, actions.resolve(arn)
        except KmsError as exc:
            raise ValueError(f"{exc.code}: {arn}") from None

    def _set_key_state(self, arn: str, state: str) -> None:
        actions, key = self._resolve_arn(arn)
        self._store.set_state(actions.region, key.key_id, state)

    def disable_key(self, arn: str) -> None:
        self._set_key_state(arn, "Disabled")

    def enable_key(self, arn: str) -> None:
        self._set_key_state(arn, "Enabled")

    # -- faults and statistics -----------------------------------------------------

    def set_fault(
        self,
        region: str,
        down: bool = False,
        latency_ms: float = 0,
        throttle_rate: float = 0.0,
        error_rate: float = 0.0,
        error_code: str = "ServiceUnavailableTemporary",
        *,
        duration: Optional[float] = None,
    ) -> None:
        """Replace ``region``'s fault settings (call with only ``region`` to clear them).

        ``down`` closes the listening socket and open connections (connection refused);
        bringing it back reopens the same port.  ``latency_ms`` delays every answer.
        ``throttle_rate`` answers that fraction of requests with 429 ``Rejected.Throttling``;
        ``error_rate`` answers that fraction with ``error_code``:
        ``ServiceUnavailableTemporary`` (503) or ``InternalFailure`` (500).  With
        ``duration`` (seconds) the settings are cleared again after that long, unless
        another change to the region came first.
        """
        self._apply_faults(
            region, Faults(down, float(latency_ms), float(throttle_rate), float(error_rate), error_code), duration
        )

    def _apply_faults(self, region: str, faults: Faults, duration: Optional[float], defer_close: bool = False) -> None:
        """Install ``faults`` (with ``defer_close`` a region going down keeps its port open
        for now: the caller closes it)."""
        server = self._server(region)
        if duration is not None and not duration > 0:
            raise ValueError("duration must be > 0 seconds")
        with self._fault_lock:
            server.fault_generation += 1
            if server.fault_timer is not None:
                server.fault_timer.cancel()
                server.fault_timer = None
            server.faults = faults
            if faults.down:
                if not defer_close:
                    server.close()
            elif self._started and not self._stopped and not server.listening:
                server.open(self._host, server.port)
            if duration is not None and faults != Faults() and not self._stopped:
                timer = threading.Timer(duration, self._restore, (region, server.fault_generation))
                timer.daemon = True
                timer.name = f"localkms-restore-{region}"
                server.fault_timer = timer
                timer.start()

    def _restore(self, region: str, generation: int) -> None:
        """End a timed fault: clear the region's settings unless they changed since."""
        with self._fault_lock:
            server = self._servers[region]
            if server.fault_generation != generation or self._stopped:
                return
            try:
                self._apply_faults(region, Faults(), None)
            except OSError as exc:  # the port was taken meanwhile: nothing to answer to
                log.warning("%s: cannot listen on port %d again: %s", region, server.port, exc)

    def _admin_set_fault(
        self, change: "admin.FaultChange", serving_region: str
    ) -> tuple[dict[str, Any], Optional[Callable[[], None]]]:
        """Carry out a ``KmsenvSetFault`` call that arrived on ``serving_region``'s port.

        Returns the answer and, when the call takes that very port down, the closing to do
        once the answer is sent (closing first would cut the connection carrying it).
        """
        if change.instance_id is not None:  # an instance gateway's faults: its own port only
            return admin.set_instance_fault(self, change), None
        if change.region not in self._servers:
            raise KmsError(
                404,
                "Kmsenv.RegionNotServed",
                f"This localkms does not serve region {change.region}; it serves {', '.join(self.regions)}.",
            )
        server = self._servers[change.region]
        with self._fault_lock:
            try:
                new = change.apply_to(server.faults)
            except ValueError as exc:
                raise KmsError(400, "InvalidParameter", str(exc)) from None
            if (
                new.down
                and change.duration is None
                and not any(not other.faults.down for name, other in self._servers.items() if name != change.region)
            ):
                # Refused: with every port closed, nothing could receive the call that
                # brings a region back.
                raise KmsError(
                    409,
                    "Kmsenv.LastRegionUp",
                    f"Taking {change.region} down would close this server's last "
                    "listening port, leaving nowhere to send the call that brings it "
                    "back: give a duration (DurationSeconds, `kmsenv kms fault "
                    "--for SECONDS`) or serve a second region.",
                )
            closes_own_port = new.down and change.region == serving_region
            try:
                self._apply_faults(change.region, new, change.duration, defer_close=closes_own_port)
            except OSError as exc:
                raise KmsError(500, "InternalFailure", f"Cannot listen on port {server.port} again: {exc}") from None
            generation = server.fault_generation
            result = admin.describe(change.region, new, server.listening and not closes_own_port)

        def close_own_port() -> None:
            with self._fault_lock:
                if server.fault_generation == generation and server.faults.down:
                    server.close()

        return result, close_own_port if closes_own_port else None

    # -- request log ---------------------------------------------------------------

    def _request_done(self, region: str, action: str, status: int, latency_ms: float, request_id: str) -> None:
        """One line per answered request in the request log, and at DEBUG in the logger.
        Nothing from the request but its verified action name: no parameters, no
        signatures, no key material."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %d %.1fms %s", region, action, status, latency_ms, request_id)
        stream = self._request_log
        if stream is None:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        line = f"{stamp} {region} {action} {status} {latency_ms:.1f}ms {request_id}\n"
        with self._request_log_lock:
            try:
                stream.write(line)
                stream.flush()
            except (OSError, ValueError) as exc:  # full disk, closed stream: keep serving
                self._request_log = None
                log.warning("request log disabled after a write failed: %s", exc)

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
