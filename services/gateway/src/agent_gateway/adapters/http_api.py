"""Adapter: the HTTP application (FastAPI) — middlewares, error handlers, routers.

Every path is served with and without a trailing slash, without redirects, as old
clients call both. Every refusal has the body of its route's dialect
(`adapters.http_errors`); nothing a client sends produces a traceback. `/v1/*` needs
a token (`adapters.access`); `/`, `/ping`, `/metrics`, the probes, `/openapi.json`
and `/docs` do not.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from agent_gateway.adapters.access import Access
from agent_gateway.adapters.agents_api import agent_routes
from agent_gateway.adapters.body_guard import BodyGuard
from agent_gateway.adapters.chat_api import chat_routes
from agent_gateway.adapters.edge import AuditLog, EdgeMiddleware
from agent_gateway.adapters.http_errors import Failsafe, install_handlers
from agent_gateway.adapters.metrics import MetricsMiddleware, RequestMetrics
from agent_gateway.adapters.models_api import model_routes
from agent_gateway.adapters.openapi import install
from agent_gateway.adapters.routing import Methods
from agent_gateway.adapters.runs_api import run_routes
from agent_gateway.adapters.system_api import open_routes, system_routes
from agent_gateway.application.agents import Agents
from agent_gateway.application.chat import Chat
from agent_gateway.application.models import Models
from agent_gateway.application.runs import Runs
from agent_gateway.application.system import Checks, QueueWatch, System


@dataclass(frozen=True)
class Services:
    """The application services the routes call."""

    agents: Agents
    chat: Chat
    models: Models
    system: System
    runs: Runs
    readiness: Checks
    queue: QueueWatch | None = None  # the queues' figures, for /metrics


def create_app(
    access: Access,
    services: Services,
    *,
    version: str,
    max_body_bytes: int = 1024 * 1024,
    keepalive_seconds: float = 15.0,
    audit: AuditLog | None = None,
    stopping: asyncio.Event | None = None,
    draining: asyncio.Event | None = None,
) -> FastAPI:
    """The gateway's HTTP application.

    `stopping`, once set, ends the run event streams; `draining`, once set, ends the
    streamed completions (the gateway's shutdown grace is nearly over).
    """
    app = FastAPI(
        title="Agent Runtime gateway",
        version=version,
        redirect_slashes=False,
        docs_url=None,
        redoc_url=None,
        openapi_tags=TAGS,
    )
    app.add_middleware(Failsafe)  # innermost: errors no handler takes, in the request's context
    app.add_middleware(BodyGuard, max_bytes=max_body_bytes)
    metrics = RequestMetrics(services.queue)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(EdgeMiddleware, audit=audit)  # outermost: ids and audit of everything
    unauthenticated = APIRouter()
    open_routes(unauthenticated, metrics, services.readiness, version)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(access.caller)])
    # Routes are matched in order: the busiest (chat completions) first.
    chat_routes(
        v1,
        access,
        services.chat,
        keepalive=keepalive_seconds,
        draining=draining or asyncio.Event(),
    )
    agent_routes(v1, access, services.agents)
    model_routes(v1, access, services.models)
    run_routes(
        v1,
        access,
        services.runs,
        services.chat,
        keepalive=keepalive_seconds,
        stopping=stopping or asyncio.Event(),
    )
    system_routes(v1, access, services.system)
    app.include_router(v1)
    app.include_router(unauthenticated)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        """Interactive documentation of `/openapi.json`."""
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Agent Runtime gateway")

    methods = Methods(v1, unauthenticated)
    install_handlers(app, authenticated=access.authenticated, allowed=methods.allowed)
    install(app)
    return app


TAGS = [
    {"name": "agents", "description": "Agents: create, read, change, delete (COMPAT)."},
    {"name": "openai", "description": "OpenAI-compatible chat completions and models."},
    {
        "name": "runs",
        "description": "Runs (every chat completion is one): start in the background, read, "
        "join, follow, cancel.",
    },
    {"name": "templates", "description": "The templates agents are made from."},
    {"name": "system", "description": "Health, schema, identity, probes and metrics."},
]
