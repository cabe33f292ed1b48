"""Adapter: the ASGI callable types and helpers the gateway's middlewares share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def header(scope: Scope, name: bytes) -> bytes | None:
    """A request header's value (`name` in lower case, as ASGI servers give names)."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None
