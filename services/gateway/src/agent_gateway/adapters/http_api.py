"""Adapter: the HTTP API (FastAPI) — the application and its open and `/v1` routes.

Every path is served with and without a trailing slash, without redirects, as old
clients call both. Every refusal has the COMPAT error body; nothing a client sends
produces a traceback. `/v1/*` needs a token (`adapters.access`); `/`, `/ping`,
`/metrics` and the probes do not.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from pydantic.json_schema import SkipJsonSchema
from starlette.exceptions import HTTPException

from agent_gateway.adapters.access import Caller, Gate, authenticated, current_principal
from agent_gateway.adapters.agents_api import Agents, AgentWrites, agent_routes
from agent_gateway.adapters.body_guard import BodyGuard
from agent_gateway.adapters.chat_api import Runs, chat_routes
from agent_gateway.adapters.edge import AuditLog, EdgeMiddleware
from agent_gateway.adapters.metrics import CONTENT_TYPE as METRICS_TYPE
from agent_gateway.adapters.metrics import MetricsMiddleware, RequestMetrics
from agent_gateway.adapters.openapi import (
    Alive,
    Health,
    Pong,
    Readiness,
    RootInfo,
    RuntimeSchema,
    Template,
    TemplateList,
    WhoAmI,
    documented,
    install,
)
from agent_gateway.domain.errors import ApiError, field_error, invalid_token
from agent_gateway.domain.stats import ExecutionStats
from agentrt_kit.catalog import entry_key
from agentrt_kit.concurrency import wait_event

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[bool]]
TemplateView = dict[str, Any]
SYNC_WAIT_SECONDS = 2.0
SCHEMA_VERSION = "1.0.0"
SCHEMA_MAJOR, SCHEMA_MINOR = 1, 0
SCHEMA_UPDATED = "2026-11-25T00:00:00Z"
_SEMVER = re.compile(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?$")


@dataclass(frozen=True)
class ApiOptions:
    """The HTTP API's settings."""

    version: str
    max_body_bytes: int = 1024 * 1024
    run_timeout: float = 300.0
    max_messages: int = 100
    max_message_chars: int = 32_000
    max_concurrent_runs: int = 64


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


@dataclass(frozen=True)
class Backends:
    """What the HTTP API serves from."""

    readiness: Mapping[str, Probe]  # the services requests need (gate /readyz)
    templates: Templates
    agents: Agents
    writes: AgentWrites
    runs: Runs
    health_only: Mapping[str, Probe] = field(default_factory=dict)  # reported by /v1/health


def create_app(
    gate: Gate, backends: Backends, *, options: ApiOptions, audit: AuditLog | None = None
) -> FastAPI:
    """The gateway's HTTP application."""
    app = FastAPI(
        title="Agent Runtime gateway",
        version=options.version,
        redirect_slashes=False,
        docs_url=None,
        redoc_url=None,
    )
    app.state.gate = gate
    app.add_middleware(BodyGuard, max_bytes=options.max_body_bytes)
    metrics = RequestMetrics()
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(EdgeMiddleware, audit=audit)  # outermost: ids and audit of everything
    _errors(app)
    stats = ExecutionStats()
    readiness = Checks(backends.readiness)
    checks = Checks({**backends.readiness, **backends.health_only})
    catalogue = Catalogue(backends.templates)
    open_routes = APIRouter()
    _open_routes(open_routes, metrics, readiness, options.version)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(current_principal)])
    # Routes are matched in order: the busiest (chat completions) first.
    chat_routes(
        v1,
        backends.runs,
        backends.agents,
        stats,
        run_timeout=options.run_timeout,
        max_messages=options.max_messages,
        max_message_chars=options.max_message_chars,
        both=_both,
    )
    agent_routes(v1, backends.agents, backends.writes, _both)
    _info_routes(v1, checks, stats, catalogue, options)
    _template_routes(v1, catalogue)
    app.include_router(v1)
    app.include_router(open_routes)
    app.state.methods = Methods(v1, open_routes)
    install(app)
    return app


class Checks:
    """Every dependency's check, timed."""

    def __init__(self, probes: Mapping[str, Probe]) -> None:
        self._probes = probes

    async def run(self) -> dict[str, dict[str, Any]]:
        """Each dependency's status (`ok` or `down`) and response time."""

        async def timed(probe: Probe) -> dict[str, Any]:
            began = time.perf_counter()
            up = await probe()
            elapsed = round((time.perf_counter() - began) * 1000, 2)
            return {"status": "ok" if up else "down", "response_time_ms": elapsed}

        names = list(self._probes)
        results = await asyncio.gather(*(timed(self._probes[n]) for n in names))
        return dict(zip(names, results, strict=True))


class Catalogue:
    """The templates, once the catalogue is in sync (503 until then)."""

    def __init__(self, templates: Templates) -> None:
        self.templates = templates

    async def latest(self) -> dict[str, TemplateView]:
        """The latest object of every template, by id.

        Raises:
            ApiError: 503 while the catalogue has not been read yet.
        """
        if not await wait_event(self.templates.synced, SYNC_WAIT_SECONDS):
            raise ApiError(
                503, "SERVICE_UNAVAILABLE", "the template catalogue is not available yet"
            )
        return self.templates.latest()


def _open_routes(router: APIRouter, metrics: RequestMetrics, checks: Checks, version: str) -> None:
    @router.get("/", **documented(RootInfo, open_route=True))
    async def root() -> dict[str, str]:
        """What this is."""
        return {"name": "Agent Runtime", "version": version, "docs": "/openapi.json"}

    @_both(router, "/ping", **documented(Pong, open_route=True))
    async def ping() -> dict[str, str]:
        """Liveness for old clients."""
        return {"status": "ok", "message": "pong"}

    @_both(
        router,
        "/metrics",
        response_class=PlainTextResponse,
        **documented(None, open_route=True, description="Prometheus text format."),
    )
    async def prometheus() -> Response:
        """Request counts and latencies (Prometheus text format)."""
        return Response(metrics.exposition(), media_type=METRICS_TYPE)

    @_both(router, "/healthz", **documented(Alive, open_route=True))
    async def healthz() -> dict[str, str]:
        """Liveness probe: the process serves HTTP."""
        return {"status": "ok"}

    @_both(
        router,
        "/readyz",
        **documented(
            Readiness,
            open_route=True,
            description="Every dependency serves.",
            unavailable="A dependency does not serve.",
        ),
    )
    async def readyz() -> JSONResponse:
        """Readiness probe: 200 when every dependency of the gateway serves, else 503."""
        found = await checks.run()
        ready = all(c["status"] == "ok" for c in found.values())
        return JSONResponse(
            {
                "status": "ready" if ready else "not ready",
                "checks": {n: c["status"] for n, c in found.items()},
            },
            status_code=200 if ready else 503,
        )


def _info_routes(
    v1: APIRouter, checks: Checks, stats: ExecutionStats, catalogue: Catalogue, options: ApiOptions
) -> None:
    started = time.monotonic()

    @_both(
        v1,
        "/health",
        **documented(
            Health,
            description="Every dependency is up.",
            unavailable="A dependency is down.",
        ),
    )
    async def health() -> JSONResponse:
        """Each dependency's check and this replica's execution numbers; 503 when one is down."""
        found = await checks.run()
        healthy = all(c["status"] == "ok" for c in found.values())
        body = {
            "status": "healthy" if healthy else "unhealthy",
            "timestamp": _now(),
            "version": options.version,
            "uptime_seconds": round(time.monotonic() - started, 3),
            "checks": found,
            "metrics": stats.snapshot(),
        }
        return JSONResponse(body, status_code=200 if healthy else 503)

    @_both(v1, "/schema", **documented(RuntimeSchema, 400, 409, 422, 503))
    async def schema(
        x_schema_version: Annotated[
            str | SkipJsonSchema[None],
            Header(
                max_length=32,
                description="The API version the client was written for (409 if not served).",
                # `_compatible` checks it (400 when it is not a version).
                json_schema_extra={"pattern": r"^v?[0-9]+(\.[0-9]+)?(\.[0-9]+)?$"},
            ),
        ] = None,
    ) -> dict[str, Any]:
        """What this runtime supports; an incompatible `X-Schema-Version` is a 409."""
        if x_schema_version is not None:
            _compatible(x_schema_version)
        known = await catalogue.latest()
        return {
            "version": SCHEMA_VERSION,
            "lastUpdated": SCHEMA_UPDATED,
            "supportedAgentTemplates": [known[key] for key in sorted(known)],
            "capabilities": {
                "streaming": True,
                "toolCalling": True,
                "multimodal": False,
                "codeExecution": False,
            },
            "limits": {
                "maxConcurrentAgents": options.max_concurrent_runs,
                "maxMessageLength": options.max_message_chars,
                "maxConversationHistory": options.max_messages,
            },
        }

    @_both(v1, "/whoami", **documented(WhoAmI))
    async def whoami(caller: Caller) -> dict[str, str | None]:
        """The authenticated caller's id, role and owner (never the token)."""
        return {"id": caller.id, "role": caller.role, "owner": caller.owner}


def _template_routes(v1: APIRouter, catalogue: Catalogue) -> None:
    @_both(v1, "/templates", **documented(TemplateList, 503))
    async def list_templates(framework: str | None = None) -> dict[str, list[TemplateView]]:
        """Every template served, optionally of one framework."""
        known = await catalogue.latest()
        return {
            "templates": [
                known[key]
                for key in sorted(known)
                if framework is None or known[key]["framework"] == framework
            ]
        }

    @_both(v1, "/templates/{template_id}", **documented(Template, 404, 503))
    async def get_template(template_id: str) -> TemplateView:
        """One template."""
        found = (await catalogue.latest()).get(template_id)
        key = entry_key(template_id)
        if found is None and key is not None:
            found = await catalogue.templates.lookup(key)  # written a moment ago, perhaps
        if found is None:
            raise ApiError(
                404,
                "TEMPLATE_NOT_FOUND",
                f"template {template_id[:200]!r} is not served",
                details={"template_id": template_id[:200]},
            )
        return found


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _compatible(requested: str) -> None:
    """Refuse an `X-Schema-Version` this API does not serve (another major version).

    Raises:
        ApiError: 400 when it is not a version, 409 VERSION_MISMATCH when incompatible.
    """
    found = _SEMVER.match(requested.strip())
    if found is None:
        raise field_error(
            "header.x-schema-version",
            "not a version",
            "X-Schema-Version must be a version such as 1 or 1.0",
        )
    major, minor = int(found.group(1)), int(found.group(2) or 0)
    if major != SCHEMA_MAJOR or minor > SCHEMA_MINOR:
        raise ApiError(
            409,
            "VERSION_MISMATCH",
            f"schema version {requested[:32]!r} is not served; this API serves {SCHEMA_VERSION}",
            details={"requested": requested[:32], "supported": SCHEMA_VERSION},
        )


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


class Methods:
    """Every method each path is served with, for the `Allow` of a 405 (RFC 9110).

    Each method has a route of its own, so the router's 405 names only the methods of
    the first route whose path matched.
    """

    def __init__(self, *routers: APIRouter) -> None:
        self._routes = [
            (route.path_regex, route.methods or set())
            for router in routers
            for route in router.routes
            if isinstance(route, APIRoute)
        ]

    def allowed(self, path: str) -> str:
        """The methods `path` is served with, as an `Allow` value."""
        found: set[str] = set()
        for pattern, methods in self._routes:
            if pattern.match(path):
                found |= methods
        return ", ".join(sorted(found))


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if request.url.path.startswith("/v1") and not authenticated(request):
            # Which /v1 routes exist is only told to callers with a token.
            return await api_error(request, invalid_token())
        code = CODES.get(error.status_code, "HTTP_ERROR")
        message = "no such route" if error.status_code == 404 else str(error.detail)
        headers = dict(error.headers or {})
        if error.status_code == 405:
            headers["Allow"] = request.app.state.methods.allowed(request.url.path)
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
        # OpenAI's API answers bad chat input with 400, and its clients expect that.
        status = 400 if request.url.path.startswith("/v1/chat/") else 422
        named = "; ".join(f"{f['field']}: {f['description']}" for f in fields[:3])
        return JSONResponse(
            ApiError(
                status,
                "VALIDATION_ERROR",
                f"invalid request: {named}"[:1000],
                details={"fields": fields},
            ).body(),
            status_code=status,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("request failed", extra={"path": request.url.path})
        return JSONResponse(
            ApiError(500, "INTERNAL_ERROR", "the gateway failed; see its log").body(),
            status_code=500,
        )
