"""A real HTTP/1.1 server in a thread, for tests of code that calls out over HTTP.

`RecordingHttp` listens on a loopback address and a free port, records every
connection and every request (method, path, headers, body), and answers each path
from a script of replies, in order, the last one repeating. A reply may wait
before answering (to exercise timeouts); closing the server releases the wait.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering


@dataclass(frozen=True)
class Hit:
    """One request as it arrived (header names lower-case)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], outer: RecordingHttp) -> None:
        self.outer = outer
        super().__init__(address, _Handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self.outer.lock:
            self.outer.connections += 1
        return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        outer = self.server.outer
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        reply = outer.record(
            Hit(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body),
            path,
        )
        if reply.delay and outer.closed.wait(reply.delay):
            return
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it may
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


class RecordingHttp:
    """A threaded HTTP server on `host`, a free port; use it as a context manager."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.hits: list[Hit] = []
        self.connections = 0
        self._scripts: dict[str, list[Reply]] = {}
        self._server = _Server((host, 0), self)
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def script(self, path: str, *replies: Reply) -> None:
        """Answer `path` with `replies` in order, the last one repeating (default: 404)."""
        with self.lock:
            self._scripts[path] = list(replies)

    def record(self, hit: Hit, path: str) -> Reply:
        """Record a request; the reply it gets."""
        with self.lock:
            self.hits.append(hit)
            replies = self._scripts.get(path) or [Reply(404, b"no such path")]
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def url(self, path: str, host: str | None = None) -> str:
        """A URL of this server (`host` in place of its address, e.g. a name resolving to it)."""
        return f"http://{host or self.host}:{self.port}{path}"

    def __enter__(self) -> RecordingHttp:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
