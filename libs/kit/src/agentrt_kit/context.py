"""Per-call context carried in contextvars: request id and acting principal.

Set by the gRPC server interceptor for every call, read by logging and passed
on by the gRPC client so a request id follows a request across services.
`asyncio.to_thread` copies contextvars, so synchronous code sees them too.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("agentrt_request_id", default=None)
actor_var: ContextVar[str | None] = ContextVar("agentrt_actor", default=None)

REQUEST_ID_HEADER = "x-request-id"
ACTOR_HEADER = "x-actor"

_SAFE = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def new_request_id() -> str:
    """A fresh request id."""
    return uuid.uuid4().hex


def clean_header_value(value: str | None) -> str | None:
    """Accept a caller-supplied id only when it is short and printable-safe.

    Request ids and actor names end up in logs and in the event store, so anything
    with control characters, spaces or excessive length is dropped, not stored.
    """
    # fullmatch: with match, `$` also accepts a trailing newline ("id\n").
    if value and _SAFE.fullmatch(value):
        return value
    return None


def current_request_id() -> str | None:
    """The request id of the call being served, if any."""
    return request_id_var.get()


def current_actor() -> str | None:
    """The principal acting in the call being served, if any."""
    return actor_var.get()
