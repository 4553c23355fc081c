"""The web view's HTTP server: a fixed set of routes on the standard library's ThreadingHTTPServer.

    GET  /  /app.js  /style.css   the page (static files of this package, nothing else is served)
    GET  /stream.mjpg             the frame the model last processed, as MJPEG (newest frame only)
    GET  /frame.jpg               the same frame, once
    GET  /events                  server-sent events: hello, record (caption/answer), status, end
    POST /ask                     {"question": "..."} -> the live loop's question queue (202)

Every request needs the token when there is one (?token=, X-Vrex-Token or Authorization: Bearer;
missing 401, wrong 403); without one, the Host header must name a loopback address (DNS
rebinding). Each connection has its own thread with a socket timeout, so a viewer that stalls
is dropped after `io_timeout_s` and never holds up the live loop; connections are capped.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import queue
import socket
import socketserver
import threading
import time
import unicodedata
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from vrex_edge.web.config import WebConfig
from vrex_edge.web.hub import Hub, RateGate

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
STATIC = {
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
}
API = {
    "/stream.mjpg": ("GET", "_stream_mjpg"),
    "/frame.jpg": ("GET", "_frame_jpg"),
    "/events": ("GET", "_events"),
    "/ask": ("POST", "_ask"),
}  # route -> (method, handler method)
BOUNDARY = b"vrexframe"
log = logging.getLogger("vrex_edge.web")
KEEPALIVE_S = 15.0
STREAM_SNDBUF = 256 * 1024  # bytes the kernel holds for one video viewer: a stalled one blocks (and times out) soon


def load_static(token: str | None) -> dict[str, tuple[bytes, str]]:
    """Route -> (body, content type), read once from the package; the page links its assets with the token."""
    files = resources.files("vrex_edge.web") / "static"
    query = f"?token={token}" if token else ""  # the token is URL-safe (config._TOKEN_RE)
    out = {}
    for route, (name, ctype) in STATIC.items():
        body = (files / name).read_text(encoding="utf-8").replace("__QUERY__", query)
        out[route] = (body.encode("utf-8"), ctype)
    return out


def clean_question(text: str) -> str:
    """Control and format characters -> spaces, runs of whitespace -> one space, stripped."""
    chars = (" " if unicodedata.category(c).startswith("C") else c for c in text)
    return " ".join("".join(chars).split())


def host_name(host_header: str) -> str:
    """A Host header without its port: '127.0.0.1:8080' -> '127.0.0.1', '[::1]:8080' -> '[::1]'."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h.partition("]")[0] + "]"
    return h.rpartition(":")[0] if ":" in h else h


def public_name(name: str) -> str:
    """A source name fit to show viewers: a URL loses its user:password and query."""
    if "://" not in name:
        return name
    parts = urlsplit(name)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class _Server(ThreadingHTTPServer):
    """Carries what the handlers need, counts connections and viewers, and can cut every connection."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[Any, ...],
        family: int,
        *,
        hub: Hub,
        config: WebConfig,
        questions: queue.Queue[str],
        title: str,
    ):
        self.address_family = family
        super().__init__(address, _Handler, bind_and_activate=False)
        self.hub, self.config, self.limits, self.questions, self.title = hub, config, config.limits, questions, title
        self.static = load_static(config.token)
        self.gate = RateGate(config.limits.question_burst, config.limits.question_every_s)
        self.max_connections = 2 * config.limits.viewers + 16
        self.lock = threading.Condition()
        self.connections: set[socket.socket] = set()
        self.viewers = {"stream": 0, "events": 0}
        self.dropped = 0  # viewers cut off by a timeout or a reset
        self.errors = 0  # handler exceptions other than a viewer going away (a bug)
        self.closing = False
        host = str(address[0]).lower()
        self.allowed_hosts = {"127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host}

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would look up an FQDN (DNS, slow offline)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self.lock:
            if self.closing or len(self.connections) >= self.max_connections:
                return False
            self.connections.add(request)
            return True

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            self.connections.discard(request)
            self.lock.notify_all()
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A handler failed (a bug, not a viewer going away): counted, logged at debug level, never printed."""
        self.errors += 1
        log.debug("web view: request from %s failed", client_address, exc_info=True)

    def cut_all(self, timeout: float) -> None:
        """Shut every open connection (a blocked send returns at once) and wait for their threads."""
        with self.lock:
            self.closing = True
            for conn in self.connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.lock.wait_for(lambda: not self.connections, timeout)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection; streams end when the connection does
    server_version = "vrex-edge"
    sys_version = ""

    def setup(self) -> None:
        self.timeout = self.server.limits.io_timeout_s  # applies to every read and write of this connection
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the library never prints

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    # ------------------------------------------------------------------ plumbing

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            if not self._authorized(url.query):
                return
            if url.path in self.server.static and method == "GET":
                body, ctype = self.server.static[url.path]
                extra = {"Content-Security-Policy": PAGE_CSP} if ctype.startswith("text/html") else {}
                self._send(200, body, ctype, extra)
            elif url.path in API and API[url.path][0] == method:
                getattr(self, API[url.path][1])()
            elif url.path in API or url.path in self.server.static:
                allow = API[url.path][0] if url.path in API else "GET"
                self._json(405, {"error": f"{method} is not allowed here"}, {"Allow": allow})
            else:
                self._json(404, {"error": "not found"})
        except OSError:  # the viewer went away, stalled past the timeout, or the server is closing
            self.close_connection = True
            with self.server.lock:
                self.server.dropped += 1

    def _send(self, code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, payload: dict[str, Any], extra: dict[str, str] | None = None) -> None:
        self._send(code, json.dumps(payload).encode(), "application/json", extra)

    def _start_stream(self, ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        self.end_headers()

    def _authorized(self, query: str) -> bool:
        token = self.server.config.token
        if token is None:  # loopback without a token: refuse pages reached through another name
            host = self.headers.get("Host")
            if host is not None and host_name(host) not in self.server.allowed_hosts:
                self._json(403, {"error": "this server answers only to a loopback host name"})
                return False
            return True
        given = (parse_qs(query).get("token") or [None])[0] or self.headers.get("X-Vrex-Token")
        auth = self.headers.get("Authorization") or ""
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given:
            self._json(
                401,
                {"error": "a token is needed: open the link printed at start"},
                {"WWW-Authenticate": 'Bearer realm="vrex-edge"'},
            )
            return False
        if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode()):
            self._json(403, {"error": "wrong token"})
            return False
        return True

    def _viewer(self, kind: str, delta: int) -> bool:
        with self.server.lock:
            if delta > 0 and self.server.viewers[kind] >= self.server.limits.viewers:
                return False
            self.server.viewers[kind] += delta
            return True

    # ------------------------------------------------------------------ routes

    def _frame_jpg(self) -> None:
        jpeg = self.server.hub.jpeg()
        if jpeg is None or not jpeg.data:
            self._json(404, {"error": "no frame yet"})
            return
        self._send(200, jpeg.data, "image/jpeg", {"X-Stream-Time": f"{jpeg.t:.3f}", "X-Frame-Seq": str(jpeg.seq)})

    def _stream_mjpg(self) -> None:
        if not self._viewer("stream", +1):
            self._json(503, {"error": "too many viewers"}, {"Retry-After": "5"})
            return
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
            self._start_stream(f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
            self.wfile.write(b"--" + BOUNDARY + b"\r\n")
            hub, sent, next_at = self.server.hub, 0, 0.0
            period = 1.0 / self.server.limits.stream_fps
            while not hub.closed:
                if not hub.wait_frame(sent, KEEPALIVE_S):
                    continue
                delay = next_at - time.monotonic()
                if delay > 0 and hub.sleep(delay):  # the rate cap (True: the hub closed meanwhile)
                    break
                jpeg = hub.jpeg()
                if jpeg is None or not jpeg.data:
                    sent = jpeg.seq if jpeg is not None else sent
                    continue
                # the next boundary goes right after the image, so the browser shows it without waiting
                head = b"Content-Type: image/jpeg\r\nContent-Length: %d\r\nX-Stream-Time: %.3f\r\n\r\n" % (
                    len(jpeg.data),
                    jpeg.t,
                )
                self.wfile.write(head + jpeg.data + b"\r\n--" + BOUNDARY + b"\r\n")
                sent, next_at = jpeg.seq, time.monotonic() + period
        finally:
            self._viewer("stream", -1)

    def _events(self) -> None:
        if not self._viewer("events", +1):
            self._json(503, {"error": "too many viewers"}, {"Retry-After": "5"})
            return
        try:
            self._start_stream("text/event-stream; charset=utf-8")
            hub, limits = self.server.hub, self.server.limits
            last = self.headers.get("Last-Event-ID", "")
            last_id = int(last) if last.isdigit() else 0  # a reconnecting EventSource gets only what it missed
            hello = {"title": self.server.title, "question_chars": limits.question_chars}
            self.wfile.write(b"retry: 2000\n\n" + _sse("hello", hello))
            seen_status, next_status, last_write = -1, 0.0, time.monotonic()
            while True:
                hub.wait_news(last_id, seen_status, next_status, KEEPALIVE_S)
                chunks = []
                for r in hub.records_after(last_id):
                    chunks.append(_sse("record", r.json(), r.id))
                    last_id = r.id
                now = time.monotonic()
                if now >= next_status:
                    seq, status = hub.status()
                    if seq > seen_status:
                        chunks.append(_sse("status", status))
                        seen_status, next_status = seq, now + 1.0 / limits.status_hz
                if hub.closed:
                    self.wfile.write(b"".join(chunks) + _sse("end", {}))
                    return
                if not chunks and now - last_write >= KEEPALIVE_S:
                    chunks.append(b": keepalive\n\n")
                if chunks:
                    self.wfile.write(b"".join(chunks))
                    last_write = now
        finally:
            self._viewer("events", -1)

    def _ask(self) -> None:
        limits = self.server.limits
        if not (self.headers.get("Content-Type") or "").lower().startswith("application/json"):
            self._json(415, {"error": 'send JSON: {"question": "..."}'})
            return
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc.lower() != (self.headers.get("Host") or "").lower():
            self._json(403, {"error": "cross-origin questions are refused"})
            return
        length_s = self.headers.get("Content-Length")
        if length_s is None or not length_s.isdigit():
            self._json(411, {"error": "Content-Length is required"})
            return
        if int(length_s) > limits.body_bytes:
            self.close_connection = True  # the body is left unread
            self._json(413, {"error": f"request body over {limits.body_bytes} bytes"})
            return
        try:
            payload = json.loads(self.rfile.read(int(length_s)).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            payload = None
        raw = payload.get("question") if isinstance(payload, dict) else None
        if not isinstance(raw, str):
            self._json(400, {"error": 'send JSON: {"question": "..."}'})
            return
        question = clean_question(raw)
        if not question:
            self._json(400, {"error": "the question is empty"})
        elif len(question) > limits.question_chars:
            self._json(400, {"error": f"a question has at most {limits.question_chars} characters"})
        elif self.server.questions.qsize() >= limits.pending_questions:
            self._json(429, {"error": "the model has questions waiting; ask again in a moment"}, {"Retry-After": "2"})
        elif (wait := self.server.gate.take()) > 0:
            self._json(
                429,
                {"error": f"too many questions; ask again in {math.ceil(wait)} s"},
                {"Retry-After": str(math.ceil(wait))},
            )
        else:
            self.server.questions.put(question)
            self._json(202, {"question": question})


def _sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()  # json.dumps: one line, ASCII


def bind(config: WebConfig, *, hub: Hub, questions: queue.Queue[str], title: str) -> _Server:
    """Open the listening socket (ConfigError for a name that does not resolve, a port in use, no permission)."""
    from vrex_edge.errors import ConfigError

    where = f"[{config.host}]:{config.port}" if ":" in config.host else f"{config.host}:{config.port}"
    try:
        infos = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"--web {where}: cannot resolve {config.host!r} ({e.strerror})") from None
    family, _, _, _, address = infos[0]
    server = _Server(address, family, hub=hub, config=config, questions=questions, title=title)
    try:
        server.server_bind()
        server.server_activate()
    except OSError as e:
        server.server_close()
        import errno

        if e.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"--web {where}: port {config.port} is in use (choose another, or 0 for any free port)"
            ) from None
        if e.errno == errno.EACCES:
            raise ConfigError(
                f"--web {where}: no permission to bind port {config.port} (use a port above 1023)"
            ) from None
        raise ConfigError(f"--web {where}: cannot listen there ({e.strerror})") from None
    return server
