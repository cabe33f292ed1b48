"""Helpers shared by the tools service's tests (importable: tests dir is on pythonpath)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agentrt.tools.v1 import tools_pb2 as pb
from agentrt.tools.v1 import tools_pb2_grpc as pb_grpc
from agentrt_testkit.inloop import InLoopService
from tool_service.adapters.workspace_fs import openat2_available
from tool_service.config import Settings
from tool_service.main import serve


def invoke_request(
    tool: str,
    *,
    agent_id: str = "agent-1",
    workspace: str = "",
    key: str = "",
    task_id: str = "",
    run_id: str = "",
    **arguments: Any,
) -> pb.InvokeToolRequest:
    """An InvokeToolRequest for `tool` with keyword arguments as its arguments."""
    request = pb.InvokeToolRequest(
        tool_name=tool,
        context=pb.InvocationContext(
            agent_id=agent_id,
            workspace=workspace,
            idempotency_key=key,
            task_id=task_id,
            run_id=run_id,
        ),
    )
    request.arguments.update(arguments)
    return request


class ToolsService(InLoopService[Settings, pb_grpc.ToolServiceStub]):
    """The tools service running in the test's loop, and ways to talk to it."""

    serve = staticmethod(serve)
    stub_class = pb_grpc.ToolServiceStub


@contextlib.asynccontextmanager
async def sandboxed_service(
    root: Path, nats_url: str, sandbox_uid_base: int
) -> AsyncIterator[ToolsService]:
    """The real tools service on SQLite under `root`, its sandboxes under uids of their own."""
    (root / "workspaces").mkdir()
    settings = Settings(
        port=0,
        nats_url=nats_url,
        nats_prefix=f"t{uuid.uuid4().hex[:10]}",
        service_token=None,
        workspace_root=root / "workspaces",
        database_url=f"sqlite:///{root / 'tools.sqlite3'}",
        use_openat2=openat2_available(),
        sandbox_uid_base=sandbox_uid_base,
    )
    running = await ToolsService(settings).start()
    try:
        yield running
    finally:
        await running.stop()


class Canary:
    """A TCP listener on every local address (dual-stack) that counts connections."""

    def __init__(self) -> None:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0))
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("0.0.0.0", 0))
        sock.listen(64)
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.connections: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.05)
            if ready:
                conn, peer = self.sock.accept()
                self.connections.append((peer, conn.getsockname()))
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


class LocalHttp:
    """A tiny HTTP/1.1 server in a thread; routes by path, records every request."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.routes: dict[str, Callable[[Any], None]] = {}
        self.hits: list[tuple[str, dict[str, str]]] = []
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def start(self, status: int, ctype: str = "text/plain", **headers: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Connection", "close")
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.end_headers()
                self.close_connection = True

            def reply(
                self, status: int, body: bytes = b"", ctype: str = "text/plain", **headers: str
            ) -> None:
                self.start(status, ctype, Content_Length=str(len(body)), **headers)
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                outer.hits.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                route = outer.routes.get(path)
                try:
                    if route is None:
                        self.reply(404, b"no such page")
                    else:
                        route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up, as it should

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.host = host
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [p for p, _ in self.hits]

    def __enter__(self) -> LocalHttp:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
