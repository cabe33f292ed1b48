"""Adapter: the one place refusals become HTTP answers, in the route's dialect.

The application and the service clients raise the kit's errors; `http_error` maps
each to a status and a code, and `render` writes the body:
- the agent routes (COMPAT): `{"error": CODE, "message", "details", "detail"}`;
- the OpenAI routes (`/v1/chat/completions`, `/v1/models`): OpenAI's
  `{"error": {"message", "type", "param", "code"}}`, plus COMPAT's `message`,
  `detail` and `details` (with the COMPAT code as `details.code`), so OpenAI clients
  get `e.code`/`e.param` and old clients still read `detail`.
Nothing a client sends produces a traceback: unexpected errors are logged and
answered 500 without detail.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from agent_gateway.adapters.asgi import App, Message, Receive, Scope, Send
from agent_gateway.adapters.edge import note
from agent_gateway.errors import GatewayStopping, RunFailed
from agentrt_kit.errors import AgentrtError, ErrorCode

log = logging.getLogger(__name__)

# A service's status → (HTTP status, COMPAT code); NOT_FOUND's code depends on the resource.
_BY_CODE: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.INVALID_ARGUMENT: (400, "VALIDATION_ERROR"),
    ErrorCode.OUT_OF_RANGE: (400, "VALIDATION_ERROR"),
    ErrorCode.ALREADY_EXISTS: (409, "CONFLICT"),
    ErrorCode.ABORTED: (409, "CONFLICT"),
    ErrorCode.FAILED_PRECONDITION: (409, "CONFLICT"),
    ErrorCode.RESOURCE_EXHAUSTED: (429, "RATE_LIMIT_EXCEEDED"),
    ErrorCode.DEADLINE_EXCEEDED: (408, "TIMEOUT_ERROR"),
    ErrorCode.UNAVAILABLE: (503, "SERVICE_UNAVAILABLE"),
    ErrorCode.PERMISSION_DENIED: (403, "FORBIDDEN"),
}
# Reasons whose answer differs from their status code's.
_BY_REASON: dict[tuple[ErrorCode, str], tuple[int, str]] = {
    (ErrorCode.ABORTED, "VERSION_MISMATCH"): (412, "PRECONDITION_FAILED"),  # If-Match
    (ErrorCode.FAILED_PRECONDITION, "VERSION_MISMATCH"): (409, "VERSION_MISMATCH"),  # schema
    (ErrorCode.INVALID_ARGUMENT, "UNKNOWN_FIELD"): (422, "VALIDATION_ERROR"),
    # An Idempotency-Key sent again with another request (the IETF draft's 422).
    (ErrorCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_REUSED"): (422, "VALIDATION_ERROR"),
}
# How a run that started ended without an answer (its error code) → HTTP.
_RUN_FAILED = {
    "TIMEOUT": (408, "TIMEOUT_ERROR"),
    "PROVIDER_ERROR": (502, "EXECUTION_ERROR"),
    "OUTPUT_INVALID": (502, "EXECUTION_ERROR"),
    "EXECUTOR_LOST": (502, "EXECUTION_ERROR"),
}
# COMPAT code → OpenAI's error `type` and `code`.
_OPENAI: dict[str, tuple[str, str | None]] = {
    "INVALID_TOKEN": ("authentication_error", "invalid_api_key"),
    "FORBIDDEN": ("permission_error", "insufficient_permissions"),
    "AGENT_NOT_FOUND": ("invalid_request_error", "model_not_found"),
    "NOT_FOUND": ("invalid_request_error", "not_found"),
    "RATE_LIMIT_EXCEEDED": ("rate_limit_error", "rate_limit_exceeded"),
    "REQUEST_TOO_LARGE": ("invalid_request_error", "request_too_large"),
    "METHOD_NOT_ALLOWED": ("invalid_request_error", "method_not_allowed"),
    "TIMEOUT_ERROR": ("timeout_error", "timeout"),
    "SERVICE_UNAVAILABLE": ("server_error", "service_unavailable"),
    "INTERNAL_ERROR": ("server_error", "internal_error"),
}
RUN_ID_HEADER = "X-Run-Id"  # the run a failed run's answer is about
_OPENAI_ROUTES = re.compile(r"^/v1/(chat/completions|models)(/|$)")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ApiError(Exception):
    """A refusal as HTTP answers it: status, code, message, details, headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})

    def body(self, dialect: str = "compat") -> dict[str, Any]:
        """The JSON body in the `compat` or `openai` dialect."""
        if dialect == "openai":
            kind, code = self._openai()
            return {
                "error": {
                    "message": self.message,
                    "type": kind,
                    "param": self._param(),
                    "code": code,
                },
                "message": self.message,
                "detail": self.message,
                "details": {**self.details, "code": self.code},
            }
        return {
            "error": self.code,
            "message": self.message,
            "details": self.details,
            "detail": self.message,
        }

    def _openai(self) -> tuple[str, str | None]:
        if self.code == "VALIDATION_ERROR":
            reason = self.details.get("reason") or ""
            return "invalid_request_error", (
                "unknown_parameter" if reason == "UNKNOWN_FIELD" else "invalid_value"
            )
        if self.code in _OPENAI:
            return _OPENAI[self.code]
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return kind, self.code.lower()

    def _param(self) -> str | None:
        """The first bad field in OpenAI's form (`messages[0].content`), if one is named."""
        fields = self.details.get("fields") or []
        if not fields:
            return None
        parts = str(fields[0].get("field", "")).split(".")
        if parts and parts[0] in ("body", "query", "header", "path"):
            parts = parts[1:]
        text = ""
        for part in parts:
            if part.isdigit():
                text += f"[{part}]"
            elif _NAME.match(part):
                text += f".{part}" if text else part
            # else a union branch pydantic names (`constrained-str`, `list[...]`): not a key
        return text or None

    def summary(self) -> str:
        """Why, as the request's audit entry says it: `403 FORBIDDEN: <message>`."""
        return f"{self.status} {self.code}: {self.message}"[:500]

    def response(self, request: Request) -> JSONResponse:
        """The answer, in the dialect of the request's route; its audit entry says why."""
        note(request.state, detail=self.summary())
        path = request.url.path
        return JSONResponse(
            self.body(dialect_of(path)), status_code=self.status, headers=self.headers
        )


def dialect_of(path: str) -> str:
    """`openai` for the OpenAI-compatible routes, else `compat`."""
    return "openai" if _OPENAI_ROUTES.match(path) else "compat"


def http_error(error: AgentrtError) -> ApiError:
    """A kit error as the HTTP API answers it."""
    if isinstance(error, RunFailed):
        status, code = _RUN_FAILED.get(error.reason, (500, "EXECUTION_ERROR"))
    elif error.code == ErrorCode.NOT_FOUND:
        reason = error.reason
        status, code = 404, reason if reason.endswith("_NOT_FOUND") else "NOT_FOUND"
    elif (error.code, error.reason) in _BY_REASON:
        status, code = _BY_REASON[error.code, error.reason]
    elif error.code in _BY_CODE:
        status, code = _BY_CODE[error.code]
    else:  # the gateway's own fault (e.g. a service token mismatch): no detail leaks
        log.error("refused by a service", extra={"code": str(error.code), "reason": error.reason})
        return ApiError(
            500,
            "INTERNAL_ERROR",
            "the gateway could not complete the request",
            headers=_retry(500),
        )
    details: dict[str, Any] = {"reason": error.reason, **error.metadata}
    if error.violations:
        details["fields"] = [
            {"field": v.field, "description": v.description} for v in error.violations
        ]
    headers = _retry(status)
    if isinstance(error, RunFailed) and error.metadata.get("run_id"):
        headers[RUN_ID_HEADER] = error.metadata["run_id"]
    if isinstance(error, GatewayStopping) and error.run_id:
        headers[RUN_ID_HEADER] = error.run_id
        headers["Location"] = f"/v1/runs/{error.run_id}"
        if not error.retry_joins:  # an OpenAI client's own retry would run it a second time
            headers["x-should-retry"] = "false"
    return ApiError(status, code, error.message, details=details, headers=headers)


def _retry(status: int) -> dict[str, str]:
    """Whether a client should try again: only over a limit or while a service is down.

    OpenAI's client libraries retry 408, 409 and 5xx by themselves unless told not to; a
    run that failed or timed out may have had side effects (tool calls), and a conflict
    or a gateway fault does not go away by asking again.
    """
    if status in (429, 503):
        return {"Retry-After": "1"}
    return {"x-should-retry": "false"}


def invalid_token() -> ApiError:
    """401: no token, or not one this gateway accepts (never says which)."""
    return ApiError(
        401,
        "INVALID_TOKEN",
        "a valid X-Runtime-Token or Authorization: Bearer token is required",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def send_error(scope: Scope, send: Send, error: ApiError) -> None:
    """Answer with `error` from ASGI code (outside FastAPI's handlers); audit says why."""
    noted = scope.setdefault("state", {}).setdefault("audit", {})
    noted["detail"] = error.summary()
    body = json.dumps(error.body(dialect_of(scope["path"]))).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers.extend((k.lower().encode(), v.encode()) for k, v in error.headers.items())
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Failsafe:
    """The innermost middleware: no route for odd paths, and 500 for unexpected errors.

    A path with a control character names no route: 404 before routing, since route
    patterns end in `$`, which also matches before a final newline (`/v1/agents/%0A`
    would be answered by `/v1/agents/`). Starlette hands exceptions no handler takes to
    its outermost middleware, after the request's id and audit entry are gone; caught
    here, the error is logged with the request's id, and the answer carries it and is
    audited like any other.
    """

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request; answer 500 for an error no handler took."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _CONTROL.search(scope["path"]):
            await send_error(scope, send, ApiError(404, "NOT_FOUND", "no such route"))
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            log.exception("request failed", extra={"path": scope["path"]})
            if started:  # the answer is under way: nothing more can be said
                raise
            failed = ApiError(
                500, "INTERNAL_ERROR", "the gateway failed; see its log", headers=_retry(500)
            )
            await send_error(scope, send, failed)


_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


def install_handlers(app: FastAPI, *, authenticated: Any, allowed: Any) -> None:
    """Answer every refusal with the route's error body.

    Args:
        app: the application.
        authenticated: `request → bool`; a `/v1` 404/405 is a 401 without a token
            (which routes exist is only told to callers with one).
        allowed: `path → str`, the methods a path is served with (for `Allow`).
    """

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response(request)

    @app.exception_handler(AgentrtError)
    async def refused(request: Request, error: AgentrtError) -> JSONResponse:
        if run_id := error.metadata.get("run_id"):  # a failed or stopped run: audited with it
            note(request.state, run_id=run_id)
        return http_error(error).response(request)

    @app.exception_handler(HTTPException)
    async def routing(request: Request, error: HTTPException) -> JSONResponse:
        path = request.url.path
        if path.startswith("/v1") and not authenticated(request):
            return invalid_token().response(request)
        code = _HTTP_CODES.get(error.status_code, "HTTP_ERROR")
        message = "no such route" if error.status_code == 404 else str(error.detail)
        headers = dict(error.headers or {})
        if error.status_code == 405:
            headers["Allow"] = allowed(path)
        return ApiError(error.status_code, code, message, headers=headers).response(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        path = request.url.path
        fields = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "description": e.get("msg", "")}
            for e in error.errors()
        ]
        unknown = any(e.get("type") == "extra_forbidden" for e in error.errors())
        # OpenAI's API answers bad chat input with 400, and its clients expect that; the
        # agent routes answer 422, as the old runtime did.
        status = 400 if dialect_of(path) == "openai" else 422
        named = "; ".join(f"{f['field']}: {f['description']}" for f in fields[:3])
        details: dict[str, Any] = {"fields": fields}
        if unknown:
            details["reason"] = "UNKNOWN_FIELD"
        return ApiError(
            status, "VALIDATION_ERROR", f"invalid request: {named}"[:1000], details=details
        ).response(request)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # Only errors of the middlewares outside `Failsafe` get here.
        log.exception("request failed", extra={"path": request.url.path})
        failed = ApiError(
            500, "INTERNAL_ERROR", "the gateway failed; see its log", headers=_retry(500)
        )
        return failed.response(request)
