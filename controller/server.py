"""The HTTP endpoint (stdlib http.server in a daemon thread): /metrics, /healthz, /readyz, and the routes given
as `pages` (the status page `/` and `/api/groups`, controller.status_page).

Bounded against idle or hostile clients: at most `max_connections` connections are served at once (one thread
each); a connection beyond that is answered 503 and closed at once, without a thread. A connection that sends
nothing for `idle_timeout_seconds` (idle, or a half-sent request) is closed, and any connection still open
`request_deadline_seconds` after it was accepted (a client trickling a byte at a time) is shut down.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

#: A check returns (ok, details for the JSON body).
Check = Callable[[], tuple[bool, dict]]
#: A page takes the query string and returns (status code, content type, body, extra headers).
Page = Callable[[str], tuple[int, str, bytes, dict[str, str]]]
log = logging.getLogger("fleetpilot.server")

#: Connections served at once (a Prometheus server or two, kubelet probes, a curl: a handful in practice).
MAX_CONNECTIONS = 32
#: A connection silent this long is closed (seconds).
IDLE_TIMEOUT_SECONDS = 10.0
#: A connection open this long is shut down, however busy it looks (seconds).
REQUEST_DEADLINE_SECONDS = 30.0
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _BoundedHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a burst of connections waits in the kernel (no thread), not in SYN retries

    def __init__(self, address, handler, max_connections: int, deadline_seconds: float):
        self.max_connections = max_connections
        self.deadline_seconds = deadline_seconds
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: dict[socket.socket, float] = {}
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):  # full: answer 503 without a thread and close
            try:
                request.setblocking(False)
                request.send(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self._open_lock:
            self._open[request] = time.monotonic()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done(request)
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(request)

    def _done(self, request) -> None:
        with self._open_lock:
            if self._open.pop(request, None) is None:
                return
        self._slots.release()

    def handle_error(self, request, client_address) -> None:
        """A client that went away (or was shut down) mid-request: a DEBUG line, never a raw traceback on the
        daemon's stderr (which carries JSON log lines only)."""
        log.debug("connection from %s failed", client_address[0] if client_address else "?", exc_info=True)

    def service_actions(self) -> None:
        """Between polls of the listening socket (every 0.5 s): shut down connections past the deadline."""
        now = time.monotonic()
        with self._open_lock:
            late = [sock for sock, t in self._open.items() if now - t > self.deadline_seconds]
        for sock in late:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the handler's blocked read returns; its thread ends
            except OSError:
                pass


class StatusServer:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        healthz: Check,
        readyz: Check,
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout_seconds: float = IDLE_TIMEOUT_SECONDS,
        request_deadline_seconds: float = REQUEST_DEADLINE_SECONDS,
        pages: Mapping[str, Page] | None = None,
    ):
        registry_, checks = registry, {"/healthz": healthz, "/readyz": readyz}
        pages_ = dict(pages or {})
        known = ", ".join(["/metrics", "/healthz", "/readyz", *pages_])
        self.max_connections = max_connections

        class Handler(BaseHTTPRequestHandler):
            timeout = idle_timeout_seconds  # socket timeout of every read and write

            def do_GET(self):  # noqa: N802 (http.server API)
                path, _, query = self.path.partition("?")
                headers: dict[str, str] = {}
                if path in pages_:
                    try:
                        code, ctype, body, headers = pages_[path](query)
                    except Exception:  # a page bug is a 500 and a log line, never a dropped connection
                        log.exception("page failed", extra={"path": path})
                        body, ctype, code = b'{"error": "internal error; see the daemon log"}', "application/json", 500
                elif path == "/metrics":
                    body, ctype, code = generate_latest(registry_), CONTENT_TYPE_LATEST, 200
                elif path in checks:
                    ok, details = checks[path]()
                    body = json.dumps({"ok": ok, **details}).encode()
                    ctype, code = "application/json", 200 if ok else 503
                else:
                    body, ctype, code = f"not found: try {known}\n".encode(), "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):  # scrapes are not worth a log line each
                pass

        self.httpd = _BoundedHTTPServer((host, port), Handler, max_connections, request_deadline_seconds)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fleetpilot-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
