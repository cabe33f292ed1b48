"""Per-call context carried in contextvars: request id, acting principal and deadline.

Set by the gRPC server interceptor for every call, read by logging and passed
on by the gRPC client so a request id follows a request across services; the
deadline bounds the store work a call starts (`remaining_seconds`).
`asyncio.to_thread` copies contextvars, so synchronous code sees them too.
"""

from __future__ import annotations

import contextvars
import re
import time
import uuid
from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("agentrt_request_id", default=None)
actor_var: ContextVar[str | None] = ContextVar("agentrt_actor", default=None)
# `time.monotonic()` by which the call being served must be answered (None: no deadline).
deadline_var: ContextVar[float | None] = ContextVar("agentrt_deadline", default=None)

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


def remaining_seconds() -> float | None:
    """Seconds left before the deadline of the call being served (None: it has none).

    Negative once the deadline has passed: its caller has been answered, so work done
    for it now would be done for nobody (and a write would land after an error answer).
    """
    deadline = deadline_var.get()
    return None if deadline is None else deadline - time.monotonic()


def outliving_the_call() -> contextvars.Context:
    """A copy of the current context for work that goes on after the call is answered.

    Request id, actor and trace stay; the deadline goes, so a run started by a call
    can still record its end once that call's deadline has passed. Pass it to
    `asyncio.create_task(..., context=...)`.
    """
    ctx = contextvars.copy_context()
    ctx.run(deadline_var.set, None)
    return ctx
