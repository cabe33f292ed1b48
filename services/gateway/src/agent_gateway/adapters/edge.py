"""Adapter: the outermost middleware — request ids, extra response headers, audit.

- Every request gets a request id: the caller's `X-Request-ID` when it is short and
  safe, else a new one. It is echoed in the response, set for logs, and passed on
  to the registry and executor with every gRPC call.
- Routes put headers they want on the answer (rate-limit headers, a run's id) in
  `request.state.response_headers` (`respond_with`); error answers carry them too.
- Every mutating `/v1` request yields exactly one audit entry when it ends —
  answered, refused before routing (413, 400), or cut off by the client — with what
  the routes noted in `request.state.audit`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

from agent_gateway.adapters.asgi import App, Message, Receive, Scope, Send, header
from agent_gateway.domain.audit import action_of, audited, outcome_of
from agentrt_kit.audit import AuditEvent
from agentrt_kit.context import (
    REQUEST_ID_HEADER,
    actor_var,
    clean_header_value,
    new_request_id,
    request_id_var,
)

log = logging.getLogger(__name__)


class AuditLog(Protocol):
    """Where audit entries go (JetStream and the structured log)."""

    def record(self, event: AuditEvent) -> None:
        """Keep an entry; never blocks."""
        ...


def note(state: Any, **fields: str) -> None:
    """Add what a route learned (agent_id, run_id, task_id, target) to its audit entry."""
    noted: dict[str, str] = getattr(state, "audit", None) or {}
    noted.update({k: v for k, v in fields.items() if v})
    state.audit = noted


def respond_with(state: Any, **headers: str) -> None:
    """Add headers to the request's answer, whatever it is (an error too)."""
    extra: dict[str, str] = dict(getattr(state, "response_headers", None) or {})
    extra.update(headers)
    state.response_headers = extra


class EdgeMiddleware:
    """Request id, extra response headers and the audit entry of each request."""

    def __init__(self, app: App, *, audit: AuditLog | None) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request with its id set; audit it when it ends."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = header(scope, REQUEST_ID_HEADER.encode())
        request_id = clean_header_value(given.decode("latin-1") if given else None) or (
            new_request_id()
        )
        state: dict[str, Any] = scope.setdefault("state", {})
        started = time.perf_counter()
        status = 0
        completed = False

        async def sending(message: Message) -> None:
            nonlocal status, completed
            if message["type"] == "http.response.start":
                status = int(message["status"])
                extra: Mapping[str, str] = state.get("response_headers") or {}
                added = [(k.lower().encode(), v.encode()) for k, v in extra.items()]
                added.append((b"x-request-id", request_id.encode()))
                names = {name for name, _ in added}
                headers = [h for h in message.get("headers", ()) if h[0].lower() not in names]
                message["headers"] = headers + added
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                completed = True
            await send(message)

        token = request_id_var.set(request_id)
        actor = actor_var.set(None)
        try:
            await self.app(scope, receive, sending)
        finally:
            actor_var.reset(actor)
            request_id_var.reset(token)
            if self.audit is not None and audited(scope["method"], scope["path"]):
                self._record(
                    scope,
                    state,
                    request_id=request_id,
                    status=status,
                    completed=completed,
                    started=started,
                )

    def _record(
        self,
        scope: Scope,
        state: Mapping[str, Any],
        *,
        request_id: str,
        status: int,
        completed: bool,
        started: float,
    ) -> None:
        assert self.audit is not None
        action, target = action_of(scope["method"], scope["path"])
        noted: Mapping[str, str] = state.get("audit") or {}
        principal = state.get("principal")
        if not completed:
            detail = "the client went away before the answer ended"
        else:
            detail = noted.get("detail") or f"HTTP {status}"
        try:
            self.audit.record(
                AuditEvent(
                    action=action,
                    request_id=request_id,
                    principal_id=principal.id if principal is not None else "anonymous",
                    target=noted.get("target") or target,
                    outcome=outcome_of(status or 500, bool(noted.get("failed")) or not completed),
                    detail=detail,
                    duration_ms=int((time.perf_counter() - started) * 1000),
                    agent_id=noted.get("agent_id") or target,
                    run_id=noted.get("run_id", ""),
                    task_id=noted.get("task_id", ""),
                )
            )
        except Exception:  # auditing must never break an answer
            log.exception("audit record failed")
