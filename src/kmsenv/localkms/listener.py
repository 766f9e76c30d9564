"""What a region's shared gateway and an instance gateway both are: one listening
socket served by its own thread, its open connections tracked so that ``close()``
can cut them, and a request body whose size is decided from the headers alone.
"""

from __future__ import annotations

import re
import socket
import threading
from typing import Any, Optional

from .errors import KmsError

__all__ = ["Listener", "declared_body_length"]

_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")  # int() would take "+1", "1_0", " 1 ", "²"


class Listener:
    """A listening socket and its serving thread (``open`` in the subclass makes the
    server and calls :meth:`_serve`); ``close()`` also cuts every open connection."""

    port: int

    def _init_listener(self) -> None:
        self._life_lock = threading.Lock()
        self._httpd: Optional[Any] = None
        self._thread: Optional[threading.Thread] = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    def _serve(self, httpd: Any, name: str) -> None:
        """Start serving ``httpd`` (the caller holds ``_life_lock``)."""
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )
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
                except (OSError, ValueError):  # ValueError: a TLS socket already detached
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


def declared_body_length(h: Any, limit: int) -> int:
    """The request's declared body size, refused (connection closed) when unusable or
    over ``limit``: decided from the headers alone, before reading the body."""
    if h.headers.get("Transfer-Encoding") is not None:
        h.close_connection = True
        raise KmsError(411, "MissingContentLength", "Transfer-Encoding is not supported; send Content-Length.")
    values = h.headers.get_all("Content-Length") or []
    if not values:
        return 0
    if len(set(values)) != 1 or not _CONTENT_LENGTH.fullmatch(values[0].strip()):
        h.close_connection = True  # where this body ends is unknown
        raise KmsError(400, "InvalidParameter", "Invalid Content-Length.")
    length = int(values[0])
    if length > limit:
        h.close_connection = True
        raise KmsError(413, "RequestEntityTooLarge", f"The request body is larger than {limit} bytes.")
    return length
