"""A fake OpenAI-compatible server for tests: `POST /v1/chat/completions` on 127.0.0.1.

    with FakeOpenAI() as server:
        server.reply("Hi there", prompt_tokens=12, completion_tokens=3)
        server.fail(500)                       # then an HTTP error
        server.reply(tool_calls=[{"name": "add", "arguments": {"a": 1}}])
        ... point a client at server.url ...
        server.requests[0].body["temperature"]

Every request is recorded (headers with lower-case names, and the JSON body).
Each request takes the next scripted behaviour from the queue; with the queue
empty the server answers `DEFAULT_CONTENT`. A behaviour may wait first
(`delay=`), and a streamed reply may break off with an error event after some
chunks (`break_stream`). `"stream": true` is answered with server-sent events
(`data: {chunk}` ... `data: [DONE]`), with a last usage chunk when
`stream_options.include_usage` is set. Errors carry `retry-after-ms: 1` so
client retries do not sleep.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

DEFAULT_CONTENT = "Hello from the fake server."
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}


@dataclass(frozen=True)
class Recorded:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Behaviour:
    """How the server answers one request."""

    content: str | None = DEFAULT_CONTENT
    tool_calls: Sequence[Mapping[str, Any]] = ()
    prompt_tokens: int = 11
    completion_tokens: int = 7
    finish_reason: str | None = None  # None: "tool_calls" with calls, else "stop"
    status: int = 200
    error_message: str = ""
    error_code: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    break_after: int | None = None  # streamed: content chunks sent before an error event


def _pieces(text: str) -> list[str]:
    """`text` in small chunks (words with their leading space)."""
    words = text.split(" ")
    return [w if i == 0 else f" {w}" for i, w in enumerate(words)] if text else []


class FakeOpenAI:
    """The server; a context manager. `url` is the base URL a client takes (`.../v1`)."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ scripting

    def reply(
        self,
        content: str | None = DEFAULT_CONTENT,
        *,
        tool_calls: Sequence[Mapping[str, Any]] = (),
        prompt_tokens: int = 11,
        completion_tokens: int = 7,
        finish_reason: str | None = None,
        delay: float = 0.0,
    ) -> None:
        """Queue a normal reply. A tool call is `{name, arguments (dict or JSON text), id?}`."""
        self.push(
            Behaviour(
                content=content,
                tool_calls=tool_calls,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                finish_reason=finish_reason,
                delay=delay,
            )
        )

    def fail(
        self,
        status: int,
        message: str = "",
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Queue an HTTP error with an OpenAI-style error body."""
        self.push(
            Behaviour(
                status=status,
                error_message=message or f"fake error {status}",
                error_code=code,
                headers={"retry-after-ms": "1", **(headers or {})},
                delay=delay,
            )
        )

    def break_stream(
        self, content: str, *, after: int, message: str = "upstream broke off"
    ) -> None:
        """Queue a streamed reply that sends `after` content chunks, then an error event."""
        self.push(Behaviour(content=content, break_after=after, error_message=message))

    def delay(self, seconds: float) -> None:
        """Queue the default reply, sent after `seconds`."""
        self.push(Behaviour(delay=seconds))

    def push(self, behaviour: Behaviour) -> None:
        """Queue any behaviour."""
        with self._lock:
            self._queue.append(behaviour)

    @property
    def pending(self) -> int:
        """Behaviours not used yet."""
        with self._lock:
            return len(self._queue)

    @property
    def bodies(self) -> list[Any]:
        """The JSON bodies of the chat requests, in order."""
        return [r.body for r in self.requests if r.path.endswith("/chat/completions")]

    # -------------------------------------------------------------- serving

    @property
    def url(self) -> str:
        """The base URL (`http://127.0.0.1:<port>/v1`)."""
        assert self._server is not None, "the server is not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                fake._handle(self)

            def do_GET(self) -> None:
                fake._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _next(self) -> tuple[Behaviour, int]:
        with self._lock:
            self._counter += 1
            behaviour = self._queue.popleft() if self._queue else Behaviour()
            return behaviour, self._counter

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            self.requests.append(Recorded(handler.command, handler.path, headers, body))
        try:
            if handler.command != "POST" or handler.path.rstrip("/") != "/v1/chat/completions":
                self._send_json(handler, 404, _error(404, f"no route {handler.path}", None))
                return
            behaviour, n = self._next()
            if behaviour.delay:
                time.sleep(behaviour.delay)
            if behaviour.status != 200:
                self._send_json(
                    handler,
                    behaviour.status,
                    _error(behaviour.status, behaviour.error_message, behaviour.error_code),
                    behaviour.headers,
                )
                return
            request = body if isinstance(body, dict) else {}
            model = str(request.get("model", "fake-model"))
            if request.get("stream"):
                include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
                self._send_stream(handler, behaviour, n, model, include_usage)
            else:
                self._send_json(handler, 200, _completion(behaviour, n, model))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout)

    @staticmethod
    def _send_json(
        handler: BaseHTTPRequestHandler,
        status: int,
        doc: Any,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        data = json.dumps(doc).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Connection", "close")
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()

    @staticmethod
    def _send_stream(
        handler: BaseHTTPRequestHandler,
        behaviour: Behaviour,
        n: int,
        model: str,
        include_usage: bool,
    ) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Connection", "close")
        handler.end_headers()

        def send(doc: Any) -> None:
            text = doc if isinstance(doc, str) else json.dumps(doc)
            handler.wfile.write(f"data: {text}\n\n".encode())
            handler.wfile.flush()

        base = {"id": f"chatcmpl-{n}", "object": "chat.completion.chunk", "created": 0}
        base["model"] = model

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        pieces = _pieces(behaviour.content or "")
        if behaviour.break_after is not None:
            for piece in pieces[: behaviour.break_after]:
                send(chunk({"role": "assistant", "content": piece}))
            send(_error(500, behaviour.error_message, None))
            return
        send(chunk({"role": "assistant", "content": ""}))
        for piece in pieces:
            send(chunk({"content": piece}))
        for i, call in enumerate(_calls(behaviour.tool_calls)):
            arguments = call["function"]["arguments"]
            half = len(arguments) // 2
            head = {"index": i, "id": call["id"], "type": "function"}
            head["function"] = {"name": call["function"]["name"], "arguments": arguments[:half]}
            send(chunk({"tool_calls": [head]}))
            send(chunk({"tool_calls": [{"index": i, "function": {"arguments": arguments[half:]}}]}))
        send(chunk({}, _finish(behaviour)))
        if include_usage:
            send({**base, "choices": [], "usage": _usage(behaviour)})
        send("[DONE]")


def _calls(tool_calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, call in enumerate(tool_calls):
        arguments = call.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        out.append(
            {
                "id": call.get("id", f"call_fake_{i}"),
                "type": "function",
                "function": {"name": call["name"], "arguments": arguments},
            }
        )
    return out


def _finish(behaviour: Behaviour) -> str:
    if behaviour.finish_reason:
        return behaviour.finish_reason
    return "tool_calls" if behaviour.tool_calls else "stop"


def _usage(behaviour: Behaviour) -> dict[str, int]:
    return {
        "prompt_tokens": behaviour.prompt_tokens,
        "completion_tokens": behaviour.completion_tokens,
        "total_tokens": behaviour.prompt_tokens + behaviour.completion_tokens,
    }


def _completion(behaviour: Behaviour, n: int, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": behaviour.content}
    calls = _calls(behaviour.tool_calls)
    if calls:
        message["tool_calls"] = calls
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": _finish(behaviour)}],
        "usage": _usage(behaviour),
    }


def _error(status: int, message: str, code: str | None) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
