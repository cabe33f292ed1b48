"""Composition root of the agent registry: wires domain, application and adapters, runs them.

Roles (`AGENTRT_REGISTRY_ROLE`): `all` serves the API and runs the background work (the
listing follower and the relay); `api` only serves the API (lists still catch the projection
up themselves); `worker` only runs the background work, with a health-only gRPC server, so
API replicas can scale with traffic while the background work stays out of their way.

Start-up order: telemetry → NATS connection (background, the registry serves
without it) → blocking-call pool → template catalogue watch → event-sourced
application and read model → projection follower and relay → gRPC server.
Shutdown runs the same stack backwards: NOT_SERVING and a graceful server stop
first, NATS drained last, telemetry flushed after everything.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from contextlib import AsyncExitStack

import grpc

from agent_registry.adapters.grpc_api import AgentRegistryServicer
from agent_registry.adapters.nats_catalog import NatsTemplateCatalog
from agent_registry.adapters.nats_publisher import JetStreamPublisher
from agent_registry.adapters.persistence import eventsourcing_env
from agent_registry.adapters.read_model import read_model_for
from agent_registry.application.listing import AgentListing, follow
from agent_registry.application.registry import AgentRegistry
from agent_registry.application.relay import Relay
from agent_registry.config import Settings
from agentrt.registry.v1 import registry_pb2, registry_pb2_grpc
from agentrt_kit.concurrency import BlockingRunner
from agentrt_kit.grpc.server import GrpcServer, ServiceBinding
from agentrt_kit.lifecycle import serve_until_stopped, service_main
from agentrt_kit.nats import Names, NatsClient
from agentrt_kit.telemetry import setup_telemetry

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["AgentRegistry"].full_name


async def _stop_tasks(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    stop.set()
    for task in tasks:
        try:
            await asyncio.wait_for(task, timeout=5)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def serve(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Run the registry until `stop` is set (or SIGTERM/SIGINT when `stop` is None)."""
    telemetry = setup_telemetry("agent-registry", settings.otel_exporter, settings.otel_endpoint)
    try:
        async with AsyncExitStack() as stack:
            names = Names(settings.nats_prefix)
            client = NatsClient(settings.nats_url, name="agent-registry")
            await client.start()
            stack.push_async_callback(client.close)

            run_blocking = BlockingRunner(settings.worker_threads, "registry")
            stack.callback(run_blocking.shutdown)

            catalog = NatsTemplateCatalog(client, names, limits=settings.catalog_limits())
            await catalog.start()
            stack.push_async_callback(catalog.stop)

            app = await run_blocking(
                AgentRegistry,
                eventsourcing_env(settings),
                catalog,
                snapshot_interval=settings.snapshot_interval,
            )
            stack.callback(app.close)
            store = await run_blocking(read_model_for, app.recorder, app.name)
            listing = AgentListing(app, store, settings.listing_batch_size)

            background_stop, projection_wake = asyncio.Event(), asyncio.Event()
            tasks: list[asyncio.Task[None]] = []
            relay: Relay | None = None
            if settings.role != "api":
                tasks.append(
                    asyncio.create_task(
                        follow(
                            lambda: run_blocking(listing.catch_up), projection_wake, background_stop
                        )
                    )
                )
                if settings.relay_enabled:
                    publisher = JetStreamPublisher(client, names, limits=settings.stream_limits())
                    relay = Relay(
                        app, publisher, store, run_blocking, batch_size=settings.relay_batch_size
                    )
                    tasks.append(asyncio.create_task(relay.run(background_stop)))
            stack.push_async_callback(_stop_tasks, background_stop, tasks)

            def on_change() -> None:
                projection_wake.set()
                if relay is not None:
                    relay.wake.set()

            servicer = AgentRegistryServicer(app, listing, run_blocking, on_change)

            def register(server: grpc.aio.Server) -> None:
                registry_pb2_grpc.add_AgentRegistryServicer_to_server(servicer, server)

            bindings = [] if settings.role == "worker" else [ServiceBinding(SERVICE_NAME, register)]
            server = GrpcServer(
                bindings,
                host=settings.host,
                port=settings.port,
                service_token_sha256=settings.service_token_sha256(),
            )
            await serve_until_stopped(
                stack,
                server,
                grace=settings.shutdown_grace_seconds,
                delay=settings.shutdown_delay_seconds,
                on_ready=on_ready,
                stop=stop,
            )
    finally:
        telemetry.shutdown()


def main() -> None:
    """Entry point: `python -m agent_registry` / `agentrt-registry`."""
    service_main("agent-registry", Settings, serve)
