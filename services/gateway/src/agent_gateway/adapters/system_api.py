"""Adapter: the routes about the runtime itself — open routes, health, queues, schema, templates.

`/`, `/ping`, `/metrics`, `/healthz` and `/readyz` are open; `/v1/health`,
`/v1/schema`, `/v1/whoami` and `/v1/templates` need a token, `/v1/queues` the admin role.
"""

# No `from __future__ import annotations`: the route signatures use dependencies
# built when the routes are (FastAPI evaluates annotations against module globals).

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic.json_schema import SkipJsonSchema

from agent_gateway.adapters.access import Access
from agent_gateway.adapters.metrics import CONTENT_TYPE as METRICS_TYPE
from agent_gateway.adapters.metrics import RequestMetrics
from agent_gateway.adapters.openapi import (
    Alive,
    Health,
    Pong,
    QueueList,
    Readiness,
    RootInfo,
    RuntimeSchema,
    Template,
    TemplateList,
    WhoAmI,
    documented,
)
from agent_gateway.adapters.routing import both
from agent_gateway.application.ports import TemplateView
from agent_gateway.application.system import Checks, System
from agent_gateway.domain.agents import iso
from agent_gateway.domain.auth import Principal
from agent_gateway.domain.queues import queues_body


def open_routes(
    router: APIRouter, metrics: RequestMetrics, readiness: Checks, version: str
) -> None:
    """Add the routes that need no token to `router`."""

    @router.get("/", **documented(RootInfo, open_route=True, op="root", tag="system"))
    async def root() -> dict[str, str]:
        """What this is."""
        return {"name": "Agent Runtime", "version": version, "docs": "/docs"}

    @both(router, "/ping", **documented(Pong, open_route=True, op="ping", tag="system"))
    async def ping() -> dict[str, str]:
        """Liveness for old clients."""
        return {"status": "ok", "message": "pong"}

    @both(
        router,
        "/metrics",
        response_class=PlainTextResponse,
        **documented(
            None,
            open_route=True,
            description="Prometheus text format.",
            op="metrics",
            tag="system",
        ),
    )
    async def prometheus() -> Response:
        """Request counts and latencies, and the queues' figures (Prometheus text)."""
        return Response(await metrics.scrape(), media_type=METRICS_TYPE)

    @both(router, "/healthz", **documented(Alive, open_route=True, op="healthz", tag="system"))
    async def healthz() -> dict[str, str]:
        """Liveness probe: the process serves HTTP."""
        return {"status": "ok"}

    @both(
        router,
        "/readyz",
        **documented(
            Readiness,
            open_route=True,
            description="Every dependency serves.",
            unavailable="A dependency does not serve.",
            op="readyz",
            tag="system",
        ),
    )
    async def readyz() -> JSONResponse:
        """Readiness probe: 200 when every dependency of the gateway serves, else 503."""
        ready, checks = await readiness.ready()
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )


SchemaVersion = Annotated[
    str | SkipJsonSchema[None],
    Header(
        max_length=32,
        description="The API version the client was written for (409 if not served).",
        # `System.schema` checks it (400 when it is not a version).
        json_schema_extra={"pattern": r"^v?[0-9]+(\.[0-9]+)?(\.[0-9]+)?$"},
    ),
]


def system_routes(v1: APIRouter, access: Access, system: System) -> None:
    """Add health, queues, schema, whoami and the template routes to `v1`."""
    Caller = Annotated[Principal, Depends(access.caller)]
    Admin = Annotated[Principal, Depends(access.admin)]

    @both(
        v1,
        "/health",
        **documented(
            Health,
            description="Every dependency is up.",
            unavailable="A dependency is down.",
            op="getHealth",
            tag="system",
        ),
    )
    async def health() -> JSONResponse:
        """Checks, execution numbers, run queue and code sandbox; 503 if a dependency is down."""
        healthy, facts = await system.health()
        body = {
            "status": facts["status"],
            "timestamp": iso(datetime.now(UTC)),
            "version": facts["version"],
            "uptime_seconds": facts["uptime_seconds"],
            "checks": facts["checks"],
            "metrics": facts["metrics"],
            "queue": facts["queue"],
            "sandbox": facts["sandbox"],
        }
        return JSONResponse(body, status_code=200 if healthy else 503)

    @both(
        v1,
        "/queues",
        **documented(
            QueueList,
            403,
            503,
            description="Every queue's figures (at most a second old).",
            op="listQueues",
            tag="system",
        ),
    )
    async def list_queues(caller: Admin) -> dict[str, Any]:
        """Every queue's figures and status; 503 when the executor cannot be asked."""
        return queues_body(await system.queues())

    @both(
        v1,
        "/schema",
        **documented(RuntimeSchema, 400, 409, 422, 503, op="getSchema", tag="system"),
    )
    async def schema(x_schema_version: SchemaVersion = None) -> dict[str, Any]:
        """What this runtime supports; an incompatible `X-Schema-Version` is a 409."""
        return await system.schema(x_schema_version)

    @both(v1, "/whoami", **documented(WhoAmI, op="whoami", tag="system"))
    async def whoami(caller: Caller) -> dict[str, str | None]:
        """The authenticated caller's id, role and owner (never the token)."""
        return {"id": caller.id, "role": caller.role, "owner": caller.owner}

    @both(v1, "/templates", **documented(TemplateList, 503, op="listTemplates", tag="templates"))
    async def list_templates(framework: str | None = None) -> dict[str, list[TemplateView]]:
        """Every template served, optionally of one framework."""
        return {"templates": await system.catalogue.templates(framework)}

    @both(
        v1,
        "/templates/{template_id}",
        **documented(Template, 404, 503, op="getTemplate", tag="templates"),
    )
    async def get_template(template_id: str) -> TemplateView:
        """One template."""
        return await system.catalogue.get(template_id)
