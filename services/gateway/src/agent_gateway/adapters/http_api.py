"""Adapter: the HTTP API (FastAPI).

Every path is served with and without a trailing slash, without redirects, as old
clients call both. Every refusal has the COMPAT error body; nothing a client sends
produces a traceback. `/v1/*` needs a token; `/`, `/ping` and the probes do not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, Literal, Protocol

from annotated_types import Len
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, StringConstraints, field_validator
from starlette.exceptions import HTTPException

from agent_gateway.adapters.body_guard import BodyGuard
from agent_gateway.adapters.metrics import CONTENT_TYPE as METRICS_TYPE
from agent_gateway.adapters.metrics import MetricsMiddleware, RequestMetrics
from agent_gateway.domain.agents import (
    AgentChange,
    AgentRecord,
    agent_body,
    change_body,
    etag,
    expected_version,
)
from agent_gateway.domain.auth import Authenticator, Principal
from agent_gateway.domain.errors import ApiError, bad_if_match, invalid_token
from agentrt_kit.catalog import entry_key
from agentrt_kit.concurrency import wait_event

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[bool]]
TemplateView = dict[str, Any]
SYNC_WAIT_SECONDS = 2.0


class Agents(Protocol):
    """Where agents come from (the registry)."""

    async def get(self, agent_id: str, version: int = 0) -> AgentRecord:
        """One agent (raises ApiError)."""
        ...

    async def history(
        self, agent_id: str, *, page_size: int, page_token: str
    ) -> tuple[list[AgentChange], str]:
        """A page of the agent's events and the next token (raises ApiError)."""
        ...

    async def list(
        self, *, template_id: str, active_only: bool, limit: int, offset: int
    ) -> list[AgentRecord]:
        """A page of agents (raises ApiError)."""
        ...


class AgentWrites(Protocol):
    """Where agents are changed (the registry)."""

    async def create(
        self, agent_id: str, spec: Mapping[str, Any], status: str | None
    ) -> tuple[AgentRecord, list[str]]:
        """A new agent and warnings (raises ApiError)."""
        ...

    async def update(
        self, agent_id: str, changes: Mapping[str, Any], expected: int | None
    ) -> tuple[AgentRecord, list[str]]:
        """The updated agent and warnings (raises ApiError)."""
        ...

    async def set_status(self, agent_id: str, status: str, expected: int | None) -> AgentRecord:
        """The agent with its new status (raises ApiError)."""
        ...

    async def delete(self, agent_id: str, expected: int | None) -> None:
        """Delete the agent (raises ApiError)."""
        ...


Text = Annotated[str, StringConstraints(max_length=2_000)]
Name = Annotated[str, StringConstraints(max_length=128)]
Short = Annotated[str, StringConstraints(max_length=64)]
Prompt = Annotated[str, StringConstraints(max_length=32_000)]
AgentName = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Status = Literal["created", "active", "inactive", "error"]


def _printable(value: str | None) -> str | None:
    """A name: not blank, no control characters."""
    if value is not None:
        if not value.strip():
            raise ValueError("must not be blank")
        if any(not c.isprintable() for c in value):
            raise ValueError("must not contain control characters")
    return value


class Configuration(BaseModel):
    """The configuration keys: an update's `configuration` object, and top-level keys."""

    model_config = ConfigDict(extra="ignore")

    system_prompt: Prompt | None = None
    llm_config_id: Name | None = None
    conversation_config: dict[str, Any] | None = None
    toolsets: Annotated[list[Name], Len(0, 50)] | None = None
    template_config: dict[str, Any] | None = None


class AgentFields(Configuration):
    """The keys create and update bodies share; nulls mean "not given".

    Keys this API does not know are ignored: old clients send what they always sent.
    """

    description: Text | None = None
    avatar_url: Text | None = None
    type: Short | None = None
    template_id: Name | None = None
    template_version_id: Short | None = None
    agent_line_id: Name | None = None
    version_type: Short | None = None
    version_number: Short | None = None
    owner_id: Name | None = None
    metadata: dict[str, Any] | None = None


class AgentCreate(AgentFields):
    """The create body of COMPAT: every key optional but `name`."""

    id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    name: AgentName
    status: Status | None = None

    _printable_name = field_validator("name")(lambda cls, v: _printable(v))


class AgentUpdate(AgentFields):
    """A partial update (COMPAT): the keys given change, nulls and absent keys do not.

    Both shapes are taken: `configuration{...}` and the create-shaped top-level keys;
    where both give a value, `configuration` wins.
    """

    name: AgentName | None = None
    template_version: Short | None = None
    configuration: Configuration | None = None

    _printable_name = field_validator("name")(lambda cls, v: _printable(v))

    def changes(self) -> dict[str, Any]:
        """The AgentSpec fields to change and their new values."""
        given = self.model_dump(exclude={"configuration", "template_version"}, exclude_none=True)
        if self.template_version is not None:
            given.setdefault("template_version_id", self.template_version)
        if self.configuration is not None:
            given.update(self.configuration.model_dump(exclude_none=True))
        return given


class StatusChange(BaseModel):
    """The PATCH status body."""

    model_config = ConfigDict(extra="forbid")

    status: Status


class Templates(Protocol):
    """Where template objects come from (the catalogue, kept current)."""

    synced: asyncio.Event

    def latest(self) -> dict[str, TemplateView]:
        """The latest object of every template, by id."""
        ...

    async def lookup(self, key: str) -> TemplateView | None:
        """One template read from the source itself (it may be newer than the copy held)."""
        ...


CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


def create_app(
    authenticator: Authenticator,
    readiness: Mapping[str, Probe],
    templates: Templates,
    agents: Agents,
    writes: AgentWrites,
    *,
    version: str,
    max_body_bytes: int = 1024 * 1024,
) -> FastAPI:
    """The gateway's HTTP application."""
    app = FastAPI(
        title="Agent Runtime gateway",
        version=version,
        redirect_slashes=False,
        docs_url=None,
        redoc_url=None,
    )
    app.state.authenticator = authenticator
    app.add_middleware(BodyGuard, max_bytes=max_body_bytes)
    metrics = RequestMetrics()
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: sees every answer
    _errors(app)

    open_routes = APIRouter()

    @open_routes.get("/", include_in_schema=True)
    async def root() -> dict[str, str]:
        """What this is."""
        return {"name": "Agent Runtime", "version": version, "docs": "/openapi.json"}

    @_both(open_routes, "/ping")
    async def ping() -> dict[str, str]:
        """Liveness for old clients."""
        return {"status": "ok", "message": "pong"}

    @_both(open_routes, "/metrics")
    async def prometheus() -> Response:
        """Request counts and latencies (Prometheus text format)."""
        return Response(metrics.exposition(), media_type=METRICS_TYPE)

    @_both(open_routes, "/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness probe: the process serves HTTP."""
        return {"status": "ok"}

    @_both(open_routes, "/readyz")
    async def readyz() -> JSONResponse:
        """Readiness probe: 200 when every service behind the gateway serves, else 503."""
        names = list(readiness)
        results = await asyncio.gather(*(readiness[n]() for n in names))
        checks = {n: "ok" if up else "down" for n, up in zip(names, results, strict=True)}
        ready = all(results)
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(current_principal)])

    @_both(v1, "/whoami")
    async def whoami(caller: Caller) -> dict[str, str]:
        """The authenticated caller's id and role (never the token)."""
        return {"id": caller.id, "role": caller.role}

    async def catalogue() -> dict[str, TemplateView]:
        if not await wait_event(templates.synced, SYNC_WAIT_SECONDS):
            raise ApiError(
                503, "SERVICE_UNAVAILABLE", "the template catalogue is not available yet"
            )
        return templates.latest()

    @_both(v1, "/templates")
    async def list_templates(framework: str | None = None) -> dict[str, list[TemplateView]]:
        """Every template served, optionally of one framework."""
        known = await catalogue()
        return {
            "templates": [
                known[key]
                for key in sorted(known)
                if framework is None or known[key]["framework"] == framework
            ]
        }

    @_both(v1, "/templates/{template_id}")
    async def get_template(template_id: str) -> TemplateView:
        """One template."""
        found = (await catalogue()).get(template_id)
        key = entry_key(template_id)
        if found is None and key is not None:
            found = await templates.lookup(key)  # written a moment ago, perhaps
        if found is None:
            raise ApiError(
                404,
                "TEMPLATE_NOT_FOUND",
                f"template {template_id[:200]!r} is not served",
                details={"template_id": template_id[:200]},
            )
        return found

    _agent_routes(v1, agents, writes)
    app.include_router(open_routes)
    app.include_router(v1)
    return app


def _agent_routes(v1: APIRouter, agents: Agents, writes: AgentWrites) -> None:
    @_both(v1, "/agents")
    async def list_agents(
        template_id: Annotated[str, Query(max_length=128)] = "",
        active_only: bool = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> list[dict[str, Any]]:
        """Agents as a bare JSON array (COMPAT), in the registry's order."""
        found = await agents.list(
            template_id=template_id, active_only=active_only, limit=limit, offset=offset
        )
        return [agent_body(a) for a in found]

    @_both(v1, "/agents/{agent_id}")
    async def get_agent(
        agent_id: AgentId,
        version: Annotated[int, Query(ge=1)] | None = None,
    ) -> JSONResponse:
        """One agent, latest or as of `?version=N`; its version is the `ETag`."""
        agent = await agents.get(agent_id, version or 0)
        return JSONResponse(agent_body(agent), headers={"ETag": etag(agent)})

    @_both(v1, "/agents/{agent_id}/history")
    async def agent_history(
        agent_id: AgentId,
        page_size: Annotated[int, Query(ge=1, le=1000)] = 100,
        page_token: Annotated[str, Query(max_length=512)] = "",
    ) -> dict[str, Any]:
        """The agent's recorded events, oldest first, paged (an addition)."""
        events, next_token = await agents.history(
            agent_id, page_size=page_size, page_token=page_token
        )
        return {"events": [change_body(e) for e in events], "next_page_token": next_token or None}

    @_both(v1, "/agents", "POST", status_code=201)
    async def create_agent(body: AgentCreate) -> JSONResponse:
        """Create an agent (201); the registry validates its template config."""
        values = body.model_dump(exclude={"id", "status"}, exclude_none=True)
        agent, warnings = await writes.create(body.id or "", values, body.status)
        return JSONResponse(
            {
                "success": True,
                "agent_id": agent.id,
                "message": "Agent created",
                "validation_results": {"valid": True, "warnings": warnings},
            },
            status_code=201,
            headers={"ETag": etag(agent), "Location": f"/v1/agents/{agent.id}"},
        )

    @_both(v1, "/agents/{agent_id}", "PUT")
    async def update_agent(
        agent_id: AgentId,
        body: AgentUpdate,
        if_match: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """Change the given fields; `If-Match` makes it conditional (412 when stale)."""
        agent, _ = await writes.update(agent_id, body.changes(), _pinned(if_match))
        return JSONResponse(agent_body(agent), headers={"ETag": etag(agent)})

    @_both(v1, "/agents/{agent_id}/status", "PATCH")
    async def set_status(
        agent_id: AgentId,
        body: StatusChange,
        if_match: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """Set the agent's status; `If-Match` makes it conditional (412 when stale)."""
        agent = await writes.set_status(agent_id, body.status, _pinned(if_match))
        return JSONResponse(agent_body(agent), headers={"ETag": etag(agent)})

    @_both(v1, "/agents/{agent_id}", "DELETE")
    async def delete_agent(
        agent_id: AgentId, if_match: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Delete the agent; `If-Match` makes it conditional (412 when stale)."""
        await writes.delete(agent_id, _pinned(if_match))
        return {"success": True, "agent_id": agent_id, "message": "Agent deleted"}


async def current_principal(
    request: Request,
    x_runtime_token: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    """The authenticated caller (a dependency of every `/v1` route).

    Raises:
        ApiError: 401 INVALID_TOKEN without an accepted token.
    """
    authenticator: Authenticator = request.app.state.authenticator
    found = authenticator.authenticate(x_runtime_token, authorization)
    if found is None:
        raise invalid_token()
    return found


Caller = Annotated[Principal, Depends(current_principal)]
AgentId = Annotated[str, Path(min_length=1, max_length=128)]


def _pinned(if_match: str | None) -> int | None:
    try:
        return expected_version(if_match)
    except ValueError:
        raise bad_if_match(if_match or "") from None


def _authenticated(request: Request) -> bool:
    authenticator: Authenticator = request.app.state.authenticator
    headers = request.headers
    found = authenticator.authenticate(headers.get("x-runtime-token"), headers.get("authorization"))
    return found is not None


def _both(
    router: APIRouter, path: str, method: str = "GET", **options: Any
) -> Callable[[Any], Any]:
    """Register a route at `path` and at `path/` (the latter left out of the schema)."""

    def register(handler: Any) -> Any:
        router.add_api_route(path, handler, methods=[method], **options)
        router.add_api_route(
            path + "/", handler, methods=[method], include_in_schema=False, **options
        )
        return handler

    return register


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if request.url.path.startswith("/v1") and not _authenticated(request):
            # Which /v1 routes exist is only told to callers with a token.
            return await api_error(request, invalid_token())
        code = CODES.get(error.status_code, "HTTP_ERROR")
        message = "no such route" if error.status_code == 404 else str(error.detail)
        headers = dict(error.headers or {})
        return JSONResponse(
            ApiError(error.status_code, code, message).body(),
            status_code=error.status_code,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        fields = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "description": e.get("msg", "")}
            for e in error.errors()
        ]
        return JSONResponse(
            ApiError(
                422, "VALIDATION_ERROR", "the request is not valid", details={"fields": fields}
            ).body(),
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("request failed", extra={"path": request.url.path})
        return JSONResponse(
            ApiError(500, "INTERNAL_ERROR", "the gateway failed; see its log").body(),
            status_code=500,
        )
