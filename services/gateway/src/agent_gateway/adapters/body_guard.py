"""Adapter: an ASGI middleware that checks request bodies before any route runs.

A body larger than `max_bytes` is refused with 413 while it is being read (never held
whole); a JSON body must be strict JSON (`domain.json_input`). The body is then
handed on unchanged.
"""

from __future__ import annotations

from agent_gateway.adapters.asgi import App, Message, Receive, Scope, Send, header
from agent_gateway.adapters.http_errors import ApiError, send_error
from agent_gateway.domain.json_input import BadJson, check_json


class BodyGuard:
    """Size cap and strict JSON for every request body."""

    def __init__(self, app: App, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the body of a request that has one, then hand the request on."""
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await send_error(scope, send, self._too_large())
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await send_error(scope, send, self._too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and _is_json(scope):
            try:
                check_json(body)
            except BadJson as e:
                await send_error(scope, send, ApiError(400, "VALIDATION_ERROR", str(e)))
                return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _too_large(self) -> ApiError:
        return ApiError(
            413, "REQUEST_TOO_LARGE", f"the request body exceeds {self.max_bytes} bytes"
        )


def _content_length(scope: Scope) -> int | None:
    value = header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


def _is_json(scope: Scope) -> bool:
    value = (header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
    return value == b"application/json" or value.endswith(b"+json")
