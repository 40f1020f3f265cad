"""The dashboard's HTTP server: the stdlib's ThreadingHTTPServer in a daemon thread, safe by default.

Every request passes, in this order:

1. the Host header must name this machine's loopback (127.0.0.1, localhost, ::1) or the host the caller chose to
   listen on: a page of another site whose name resolves to 127.0.0.1 (DNS rebinding) is refused;
2. the method: the page's endpoints are read-only (GET); the one endpoint that takes data, /api/publish, takes only
   POST;
3. the credentials, compared in constant time: for the page, the token of the printed URL (``?token=``, which is
   then swapped for an HttpOnly SameSite=Strict cookie and dropped from the address by a redirect) or that cookie;
   for /api/publish, the key of connected processes in the X-Parallelize-Dashboard-Key header, with a JSON body.

Nothing is ever unpickled: the only data that comes in is JSON, checked field by field (_registry.clean).
"""

from __future__ import annotations

import hmac
import http.server
import ipaddress
import json
import socket
import threading
from collections.abc import Iterable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ._registry import PublishError, Registry

KEY_HEADER = "X-Parallelize-Dashboard-Key"
PUBLISH_PATH = "/api/publish"
MAX_BODY = 1 << 20  # bytes of one post from a connected process
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
           "/app.js": ("app.js", "text/javascript; charset=utf-8"),
           "/app.css": ("app.css", "text/css; charset=utf-8")}
_SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_names(bound: str) -> frozenset[str]:
    """The names a Host header may give for a server listening on *bound*: loopback names always; the address or
    name the caller chose; for every interface (0.0.0.0, ::), this machine's names too."""
    names = set(LOOPBACK_NAMES)
    if bound in ("", "0.0.0.0", "::"):
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    else:
        names.add(bound.lower())
    return frozenset(names)


def _host_of(header: str) -> str:
    """The name in a Host header, without its port; IPv6 addresses come in brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _same(given: str, secret: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret.encode())


class _Server(http.server.ThreadingHTTPServer):

    def __init__(self, address: tuple[str, int], registry: Registry, token: str, key: str,
                 allowed_hosts: Iterable[str], process: dict[str, Any]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.registry = registry
        self.token = token
        self.key = key
        self.allowed_hosts = frozenset(allowed_hosts)
        self.process = process
        self.cookie_name = f"parallelize_dashboard_{self.server_address[1]}"  # cookies ignore ports: one per port
        package = resources.files(__package__)
        self.static = {path: ((package / "static" / name).read_bytes(), kind) for path, (name, kind) in _STATIC.items()}

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per request, as ThreadingHTTPServer does, but named as the package's threads are, so a fork
        pool does not take it for a thread of the program (ForkAfterThreadsWarning), and a daemon: a browser
        that keeps a request open never holds up a stop."""
        threading.Thread(target=self.process_request_thread, args=(request, client_address),
                         name="parallelize-dashboard-request", daemon=True).start()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    server_version = "parallelize-dashboard"
    sys_version = ""
    timeout = 30  # seconds a client may take to send its request: a stalled one does not hold a thread for ever

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_OPTIONS(self) -> None:
        self._handle("OPTIONS")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a request line holds the token, and a dashboard must not write over the program's output."""

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        if _host_of(self.headers.get("Host", "")) not in self.server.allowed_hosts:
            self._text(403, "parallelize dashboard: this Host is not allowed (open the URL that was printed)")
        elif url.path == PUBLISH_PATH:
            self._publish(method)
        elif method not in ("GET", "HEAD"):
            self._text(405, "parallelize dashboard: read-only", {"Allow": "GET"})
        elif "token" in parse_qs(url.query):
            self._enter(url.path, parse_qs(url.query)["token"][0])
        elif not self._has_cookie():
            self._text(403, "parallelize dashboard: open the URL with the token that was printed when the dashboard "
                            "started")
        else:
            self._page(url.path)

    def _enter(self, path: str, token: str) -> None:
        """The printed URL: its token becomes a cookie, and the browser is sent on to the address without it."""
        if not _same(token, self.server.token):
            self._text(403, "parallelize dashboard: wrong token")
            return
        self._send(303, b"", "text/plain", {
            "Location": path or "/",
            "Set-Cookie": f"{self.server.cookie_name}={self.server.token}; HttpOnly; SameSite=Strict; Path=/",
        })

    def _has_cookie(self) -> bool:
        for part in self.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == self.server.cookie_name and _same(value, self.server.token):
                return True
        return False

    def _page(self, path: str) -> None:
        if path == "/api/calls":
            body = json.dumps({"process": self.server.process, "calls": self.server.registry.snapshot()})
            self._send(200, body.encode(), "application/json")
        elif path in self.server.static:
            self._send(200, *self.server.static[path])
        else:
            self._text(404, "parallelize dashboard: no such page")

    def _publish(self, method: str) -> None:
        """A connected process posts its calls: {"source": its id, "calls": {call id: fields}}, as JSON."""
        if method != "POST":
            self._text(405, "parallelize dashboard: POST only", {"Allow": "POST"})
            return
        if not _same(self.headers.get(KEY_HEADER, ""), self.server.key):
            self._text(403, "parallelize dashboard: wrong or missing key")
            return
        if self.headers.get_content_type() != "application/json":
            self._text(415, "parallelize dashboard: send JSON")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._text(411, "parallelize dashboard: Content-Length needed")
            return
        if not 0 <= length <= MAX_BODY:
            self._text(413, f"parallelize dashboard: at most {MAX_BODY} bytes")
            return
        try:
            post = json.loads(self.rfile.read(length))
            source, calls = post["source"], post["calls"]
            if not isinstance(source, str) or not isinstance(calls, dict) or len(source) > 200:
                raise PublishError("expected a source name and an object of calls")
            registry = self.server.registry
            registry.heard_from(source)
            for call_id, fields in calls.items():
                registry.publish(f"{source}/{call_id}", fields, source=source)
        except (ValueError, KeyError, TypeError) as exc:  # (json's and PublishError are ValueErrors)
            self._text(400, f"parallelize dashboard: {exc}")
            return
        self._send(204, b"", "text/plain")

    def _text(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, (message + "\n").encode(), "text/plain; charset=utf-8", headers)

    def _send(self, status: int, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {**_SECURITY_HEADERS, "Content-Type": kind, "Content-Length": str(len(body)),
                            **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class Server:
    """A listening dashboard server: started by the constructor, until stop()."""

    def __init__(self, registry: Registry, host: str, port: int, token: str, key: str,
                 process: dict[str, Any]) -> None:
        self._server = _Server((host, port), registry, token, key, host_names(host), process)
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="parallelize-dashboard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
