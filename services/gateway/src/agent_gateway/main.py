"""Composition root: settings → probes, catalogue watch, authenticator → the HTTP app.

uvicorn runs inside the service's own event loop (uvloop), started and stopped by
the kit's lifecycle: SIGTERM stops accepting connections and lets requests in
flight finish for `AGENTRT_SHUTDOWN_GRACE_SECONDS`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from importlib.metadata import version

import uvicorn

from agent_gateway.adapters.http_api import create_app
from agent_gateway.adapters.probes import GrpcHealthProbe
from agent_gateway.adapters.registry_client import RegistryAgents
from agent_gateway.config import Settings
from agent_gateway.domain.auth import Authenticator
from agent_gateway.domain.templates import template_view
from agentrt_kit.catalog import CatalogWatcher
from agentrt_kit.lifecycle import service_main, wait_for_shutdown
from agentrt_kit.nats import Names, NatsClient
from agentrt_kit.settings import ConfigError
from agentrt_kit.telemetry import setup_telemetry

log = logging.getLogger(__name__)


async def serve(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve HTTP until `stop` is set (or SIGTERM/SIGINT when `stop` is None).

    Raises:
        ConfigError: no runtime token is configured (the gateway never runs open).
    """
    digest = settings.runtime_token_sha256()
    if digest is None:
        raise ConfigError(
            "AGENTRT_RUNTIME_TOKEN (or RUNTIME_TOKEN) must be set: the gateway never runs open"
        )
    telemetry = setup_telemetry("gateway", settings.otel_exporter, settings.otel_endpoint)
    try:
        async with AsyncExitStack() as stack:
            probes = {
                name: GrpcHealthProbe(target, timeout=settings.probe_timeout_seconds)
                for name, target in (
                    ("registry", settings.registry_target),
                    ("executor", settings.executor_target),
                )
            }
            for probe in probes.values():
                stack.push_async_callback(probe.close)
            client = NatsClient(settings.nats_url, name="gateway")
            await client.start()
            stack.push_async_callback(client.close)
            templates = CatalogWatcher(client, Names(settings.nats_prefix), template_view)
            await templates.start()
            stack.push_async_callback(templates.stop)
            token = settings.service_token.get_secret_value() if settings.service_token else None
            agents = RegistryAgents(
                settings.registry_target,
                service_token=token,
                timeout=settings.client_timeout_seconds,
            )
            stack.push_async_callback(agents.close)
            app = create_app(
                Authenticator(digest),
                {name: probe.serving for name, probe in probes.items()},
                templates,
                agents,
                agents.writes,
                version=version("agentrt-gateway"),
                max_body_bytes=settings.max_body_bytes,
            )
            server = uvicorn.Server(
                uvicorn.Config(
                    app,
                    host=settings.host,
                    port=settings.port,
                    lifespan="off",
                    log_config=None,
                    access_log=False,
                    server_header=False,
                    timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
                )
            )
            # Server.serve() would also take over SIGINT/SIGTERM; the kit's lifecycle owns
            # them, so the server is driven through its public steps instead.
            server.config.load()
            server.lifespan = server.config.lifespan_class(server.config)
            await server.startup()
            port = int(server.servers[0].sockets[0].getsockname()[1])
            log.info("gateway listening", extra={"host": settings.host, "port": port})
            serving = asyncio.create_task(server.main_loop(), name="http-server")
            if on_ready is not None:
                on_ready(port)
            try:
                await wait_for_shutdown(stop)
            finally:
                server.should_exit = True
                await serving  # main_loop sees should_exit within 0.1 s
                await server.shutdown()
    finally:
        telemetry.shutdown()


def main() -> None:
    """Entry point: `python -m agent_gateway` / `agentrt-gateway`."""
    service_main("gateway", Settings, serve)
