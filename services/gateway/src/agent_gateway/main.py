"""Composition root: settings → probes, catalogue watch, authenticator → the HTTP app.

uvicorn runs inside the service's own event loop (uvloop), started and stopped by
the kit's lifecycle: SIGTERM stops accepting connections, ends the run event
streams (`stopping`) and lets requests in flight finish for
`AGENTRT_SHUTDOWN_GRACE_SECONDS`. `AGENTRT_GATEWAY_DRAIN_MARGIN_SECONDS` before the
grace ends (`draining`), what still waits on a run is answered, naming the run, which
goes on: uvicorn's own hard stop, at the end of the grace, finds nothing left to cut.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from importlib.metadata import version
from typing import Any

import uvicorn

from agent_gateway.adapters.access import Access, Gate
from agent_gateway.adapters.catalogue import TemplateCatalogue
from agent_gateway.adapters.executor_client import ExecutorRuns
from agent_gateway.adapters.http_api import Services, create_app
from agent_gateway.adapters.probes import GrpcHealthProbe
from agent_gateway.adapters.registry_client import RegistryAgents
from agent_gateway.application.agents import Agents
from agent_gateway.application.chat import Chat, ChatLimits
from agent_gateway.application.models import Models
from agent_gateway.application.ports import Probe
from agent_gateway.application.runs import Runs
from agent_gateway.application.system import Catalogue, Checks, QueueWatch, System
from agent_gateway.config import Settings
from agent_gateway.domain.auth import (
    DIGEST_PREFIX,
    ROLES,
    ApiKey,
    Authenticator,
    digest_of,
    new_key,
)
from agent_gateway.domain.limits import RateLimiter, StreamSlots
from agent_gateway.domain.stats import ExecutionStats
from agent_gateway.domain.templates import template_view
from agentrt_kit.audit import AuditPublisher
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
    keys = settings.all_api_keys()
    if digest is None and not keys:
        raise ConfigError(
            "AGENTRT_RUNTIME_TOKEN (or RUNTIME_TOKEN) or AGENTRT_GATEWAY_API_KEYS must be set:"
            " the gateway never runs open"
        )
    gate = Gate(
        Authenticator(digest, keys),
        per_key=RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
        per_address=RateLimiter(
            settings.address_rate_limit_per_second, settings.address_rate_limit_burst
        ),
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
            audit = None
            if settings.audit:
                audit = AuditPublisher(
                    client,
                    Names(settings.nats_prefix),
                    "gateway",
                    limits=settings.audit_limits(),
                    log_records=True,
                )
                await audit.start()
                stack.push_async_callback(audit.stop)
            templates = CatalogWatcher(
                client, Names(settings.nats_prefix), template_view, limits=settings.catalog_limits()
            )
            await templates.start()
            stack.push_async_callback(templates.stop)
            token = settings.service_token.get_secret_value() if settings.service_token else None
            registry = RegistryAgents(
                settings.registry_target,
                service_token=token,
                timeout=settings.client_timeout_seconds,
            )
            stack.push_async_callback(registry.close)
            runner = ExecutorRuns(
                settings.executor_target,
                service_token=token,
                timeout=settings.client_timeout_seconds,
            )
            stack.push_async_callback(runner.close)

            async def nats_connected() -> bool:
                return client.connected

            stopping = asyncio.Event()  # set first on shutdown: run event streams end
            draining = asyncio.Event()  # set as the grace nearly ends: what waits is answered
            app = create_app(
                Access(gate),
                _services(
                    settings,
                    registry=registry,
                    runner=runner,
                    templates=templates,
                    probes=probes,
                    nats_connected=nats_connected,
                    draining=draining,
                ),
                version=version("agentrt-gateway"),
                max_body_bytes=settings.max_body_bytes,
                keepalive_seconds=settings.stream_keepalive_seconds,
                audit=audit,
                stopping=stopping,
                draining=draining,
            )
            await _serve_http(
                app, settings, stop=stop, on_ready=on_ready, stopping=stopping, draining=draining
            )
    finally:
        telemetry.shutdown()


async def _serve_http(
    app: Any,
    settings: Settings,
    *,
    stop: asyncio.Event | None,
    on_ready: Callable[[int], None] | None,
    stopping: asyncio.Event,
    draining: asyncio.Event,
) -> None:
    """Serve `app` with uvicorn until shutdown, then stop as the module docstring says."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            # Never before the grace (uvicorn takes a whole number of seconds).
            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
            # The client's address (rate limits, audit) comes from X-Forwarded-For
            # only when the peer is a proxy listed here; nobody by default.
            proxy_headers=bool(settings.forwarded_allow_ips),
            forwarded_allow_ips=settings.forwarded_allow_ips or None,
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
        stopping.set()
        drain = asyncio.get_running_loop().call_later(settings.drain_delay(), draining.set)
        server.should_exit = True
        await serving  # main_loop sees should_exit within 0.1 s
        await server.shutdown()
        drain.cancel()


def _services(
    settings: Settings,
    *,
    registry: RegistryAgents,
    runner: ExecutorRuns,
    templates: CatalogWatcher[dict[str, Any]],
    probes: dict[str, GrpcHealthProbe],
    nats_connected: Probe,
    draining: asyncio.Event,
) -> Services:
    """The application services, wired to their adapters; `draining` ends their waits."""
    agents = Agents(registry)
    stats = ExecutionStats()
    limits = ChatLimits(
        run_timeout=settings.run_timeout_seconds,
        max_messages=settings.max_messages,
        max_message_chars=settings.max_message_chars,
    )
    serving: dict[str, Probe] = {name: probe.serving for name, probe in probes.items()}
    streams = StreamSlots(settings.max_streams_per_key)  # streamed chats and run followers
    queue = QueueWatch(runner, timeout=settings.probe_timeout_seconds)
    return Services(
        agents=agents,
        chat=Chat(
            agents, runner, runner, slots=streams, stats=stats, limits=limits, draining=draining
        ),
        models=Models(agents),
        system=System(
            Catalogue(TemplateCatalogue(templates)),
            Checks({**serving, "nats": nats_connected}),  # reported, not needed to serve
            stats,
            version=version("agentrt-gateway"),
            limits=limits,
            max_concurrent_runs=settings.max_concurrent_runs,
            queue=queue,
        ),
        readiness=Checks(serving),
        runs=Runs(
            runner,
            waits=StreamSlots(settings.max_waits_per_key),
            streams=streams,
            draining=draining,
        ),
        queue=queue,
    )


def keys_command(argv: list[str], read: Callable[[], str] = sys.stdin.readline) -> str:
    """What `agentrt-gateway new-key|hash-key` prints.

    `new-key --id ID [--role R] [--owner O]` makes a random key and prints it once with the
    `AGENTRT_GATEWAY_API_KEYS` entry that holds its digest; `hash-key --id ID ...` reads a
    key of your own from standard input instead. The gateway is only ever given the entry.

    Raises:
        SystemExit: bad arguments (argparse prints why).
    """
    parser = argparse.ArgumentParser(prog=f"agentrt-gateway {argv[0]}")
    parser.add_argument("--id", required=True, help="a name for the key (shown in audit records)")
    parser.add_argument("--role", choices=ROLES, default="operator")
    parser.add_argument("--owner", default=None, help="bind the key to this owner's agents")
    options = parser.parse_args(argv[1:])
    if argv[0] == "new-key":
        key, digest = new_key()
    else:
        key = read().strip()
        if not key:
            parser.error("no key on standard input")
        digest = DIGEST_PREFIX + digest_of(key).hex()
    entry = ApiKey(options.id, digest, options.role, options.owner)  # validates
    lines = [f"key:   {key}"] if argv[0] == "new-key" else []
    lines.append(f"entry: {json.dumps(dataclasses.asdict(entry))}")
    return "\n".join(lines)


def main() -> None:
    """Entry point: `python -m agent_gateway` / `agentrt-gateway [new-key|hash-key ...]`."""
    if len(sys.argv) > 1 and sys.argv[1] in ("new-key", "hash-key"):
        print(keys_command(sys.argv[1:]))
        return
    service_main("gateway", Settings, serve)
