"""Composition root of the executor: wires domain, application and adapters, runs them.

Start-up: telemetry → NATS (background) → blocking-call threads → tools client →
templates (built-ins, plugins, their watcher and the catalogue publisher) → run
records database → sessions checkpointer → registry client → run events,
cancel bus → run service and its maintenance, run queries → compose service →
gRPC server.
Shutdown: NOT_SERVING and a graceful stop first (streams get `grace` seconds),
runs still going are cancelled and recorded, event acknowledgements awaited,
then everything else in reverse, telemetry flushed last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from agent_executor.adapters.catalog_publisher import CatalogPublisher, executor_entry
from agent_executor.adapters.checkpointer import open_checkpointer, session_history
from agent_executor.adapters.grpc_api import ExecutorServicer
from agent_executor.adapters.models import ProviderModels
from agent_executor.adapters.nats_queue import JetStreamRunQueue
from agent_executor.adapters.nats_runs import (
    JetStreamRunEventLog,
    JetStreamRunEvents,
    NatsCancelBus,
    NatsRunEndings,
)
from agent_executor.adapters.plugins import TemplatePlugins
from agent_executor.adapters.proto_mapping import ProtoRequestCodec
from agent_executor.adapters.registry_client import RegistryAgents
from agent_executor.adapters.run_store import SqlRunStore
from agent_executor.adapters.tools_client import GrpcTools
from agent_executor.adapters.webhooks import HttpWebhookSender
from agent_executor.application.builtin.conversation import Conversation
from agent_executor.application.builtin.custom import Custom
from agent_executor.application.builtin.simple_test import SimpleTest
from agent_executor.application.builtin.task import Task
from agent_executor.application.builtin.workflow import Workflow
from agent_executor.application.compose import ComposeService
from agent_executor.application.ports import (
    CancelBus,
    RunEndings,
    RunEventLog,
    RunEventSink,
    RunQueue,
)
from agent_executor.application.queued_runs import QueuedRuns, QueueSettings
from agent_executor.application.run_queries import RunQueries
from agent_executor.application.runs import RunService, RunSettings
from agent_executor.application.templates import LoadedTemplate, TemplateCatalog
from agent_executor.application.webhooks import WebhookWorker
from agent_executor.config import Settings, load_services_config
from agent_executor.domain.services_config import ServicesConfig
from agentrt.executor.v1 import executor_pb2, executor_pb2_grpc
from agentrt_kit.concurrency import BlockingRunner
from agentrt_kit.grpc.server import GrpcServer, ServiceBinding
from agentrt_kit.lifecycle import serve_until_stopped, service_main
from agentrt_kit.nats import Names, NatsClient
from agentrt_kit.sql import SqlDatabase
from agentrt_kit.telemetry import setup_telemetry

log = logging.getLogger(__name__)
SERVICE_NAME = executor_pb2.DESCRIPTOR.services_by_name["Executor"].full_name
BUILTINS = (SimpleTest, Conversation, Workflow, Task)


async def _background(
    stack: AsyncExitStack, name: str, job: Callable[[asyncio.Event], Coroutine[Any, Any, None]]
) -> None:
    """Run `job(stop)` as a task until the stack unwinds."""
    stop = asyncio.Event()
    task = asyncio.create_task(job(stop), name=name)

    async def finish() -> None:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=5)

    stack.push_async_callback(finish)


def _models(settings: Settings, services: ServicesConfig) -> ProviderModels:
    return ProviderModels(
        services,
        timeout=settings.provider_timeout_seconds,
        retries=settings.provider_retries,
        breaker_failures=settings.provider_breaker_failures,
        breaker_cooldown=settings.provider_breaker_cooldown_seconds,
    )


def _tools(settings: Settings) -> GrpcTools:
    token = settings.service_token.get_secret_value() if settings.service_token else None
    return GrpcTools(
        settings.tools_target,
        service_token=token,
        timeout=settings.client_timeout_seconds,
        invoke_timeout=settings.tool_timeout_seconds,
        list_ttl=settings.tools_list_ttl_seconds,
    )


def _run_settings(settings: Settings) -> RunSettings:
    return RunSettings(
        limits=settings.run_limits(),
        max_concurrent_runs=settings.max_concurrent_runs,
        lease_seconds=settings.lease_seconds,
        heartbeat_seconds=settings.heartbeat_seconds,
        executor_id=settings.executor_id,
        queued_lost_seconds=settings.queue_ack_wait_seconds * (settings.queue_max_attempts + 1)
        + settings.lease_seconds,
        session_checkpoints_kept=settings.session_checkpoints_kept,
    )


async def _templates(
    stack: AsyncExitStack,
    settings: Settings,
    client: NatsClient,
    names: Names,
    run_blocking: BlockingRunner,
    *,
    services: ServicesConfig,
    tools: GrpcTools,
) -> TemplateCatalog:
    """Built-in and plugin templates, published to the catalogue and kept current."""
    catalog = TemplateCatalog([*BUILTINS, Custom(tools)])  # custom runs code on the tools service
    publisher = CatalogPublisher(
        client,
        names,
        catalog.templates,
        limits=settings.catalog_limits(),
        executor=executor_entry(settings.executor_id, services, settings.published_limits()),
        sandbox=tools.sandbox,
        interval=settings.catalog_publish_interval_seconds,
    )

    def changed(added: Sequence[LoadedTemplate], removed: Sequence[str]) -> None:
        publisher.changed(removed)

    plugins = TemplatePlugins(
        [Path(d) for d in settings.plugin_dirs],
        catalog,
        run_blocking=run_blocking,
        on_change=changed,
    )
    await plugins.load_all()
    if settings.watch_plugins and settings.plugin_dirs:
        await _background(stack, "plugin-watch", plugins.watch)
    await publisher.start()
    stack.push_async_callback(publisher.stop)
    return catalog


class ManagedCancelBus(CancelBus, Protocol):
    """A cancel bus as the composition root drives it."""

    async def start(self, on_cancel: Callable[[str], bool]) -> None:
        """Start hearing cancel requests; `on_cancel(run_id)` for each."""
        ...

    async def close(self) -> None:
        """Stop hearing them."""
        ...


@dataclass(frozen=True)
class Bus:
    """Where run events, cancel requests and run endings travel."""

    backend: str
    events: RunEventSink
    log: RunEventLog
    cancel: ManagedCancelBus
    endings: RunEndings


async def _bus(stack: AsyncExitStack, settings: Settings, client: NatsClient) -> Bus:
    """The event bus on the configured backend, started now and stopped with the stack."""
    if settings.bus_backend == "redis":
        from agent_executor.adapters.redis_runs import RedisBus

        redis = await stack.enter_async_context(
            RedisBus(
                settings.bus_broker_url(),
                prefix=settings.nats_prefix,
                retention_seconds=settings.run_events_retention_seconds,
                max_bytes=settings.run_events_max_bytes,
            )
        )
        return Bus("redis", redis.events, redis.log, redis.cancel, redis.endings)
    names = Names(settings.nats_prefix)
    events = JetStreamRunEvents(client, names, limits=settings.run_events_limits())
    await events.start()
    stack.push_async_callback(events.stop)
    return Bus(
        "nats",
        events,
        JetStreamRunEventLog(client, names),
        NatsCancelBus(client, names),
        NatsRunEndings(client, names),
    )


class ManagedQueue(RunQueue, Protocol):
    """A run-queue adapter as the composition root drives it."""

    async def start(self) -> None:
        """Connect and declare what the queue needs (a broker that is down is retried)."""
        ...

    async def close(self) -> None:
        """Stop taking deliveries and disconnect."""
        ...


async def _queue(
    stack: AsyncExitStack,
    settings: Settings,
    client: NatsClient,
    *,
    name: str,
    ack_wait: float,
    max_attempts: int,
    max_deliver: int | None = None,
) -> ManagedQueue:
    """A queue on the configured broker, started now and closed with the stack.

    The Redis and RabbitMQ clients are imported only when chosen.
    """
    queue: ManagedQueue
    if settings.queue_backend == "redis":
        from agent_executor.adapters.redis_queue import RedisRunQueue

        queue = RedisRunQueue(
            settings.queue_broker_url(),
            prefix=settings.nats_prefix,
            ack_wait=ack_wait,
            max_attempts=max_attempts,
            max_deliver=max_deliver,
            max_age=settings.queue_max_age_seconds,
            max_len=settings.queue_max_length or None,
            name=name,
        )
    elif settings.queue_backend == "rabbitmq":
        from agent_executor.adapters.rabbitmq_queue import RabbitRunQueue

        management = settings.queue_management_url
        queue = RabbitRunQueue(
            settings.queue_broker_url(),
            prefix=settings.nats_prefix,
            ack_wait=ack_wait,
            max_attempts=max_attempts,
            max_deliver=max_deliver,
            max_length=settings.queue_max_length or None,
            name=name,
            management_url=management.get_secret_value() if management else None,
        )
    else:
        queue = JetStreamRunQueue(
            client,
            Names(settings.nats_prefix),
            ack_wait=ack_wait,
            max_attempts=max_attempts,
            max_deliver=max_deliver,
            limits=settings.queue_limits(),
            dead_letter_limits=settings.dead_letter_limits(),
            name=name,
        )
    await queue.start()
    stack.push_async_callback(queue.close)
    return queue


async def _webhooks(
    stack: AsyncExitStack,
    settings: Settings,
    *,
    client: NatsClient,
    store: SqlRunStore,
    call_store: Callable[..., Any],
) -> RunQueue | None:
    """The queue of runs whose webhook is due and its worker (None: no webhook secret)."""
    if settings.webhook_secret is None:
        return None
    queue = await _queue(
        stack,
        settings,
        client,
        name="webhook",
        # An attempt is not extended while it runs: the ack-wait outlasts its timeout.
        ack_wait=settings.webhook_timeout_seconds + 30.0,
        max_attempts=settings.webhook_max_attempts,
    )
    sender = HttpWebhookSender(
        settings.webhook_secret.get_secret_value(),
        timeout=settings.webhook_timeout_seconds,
        allowed_networks=settings.webhook_allowed_networks,
        denied_networks=settings.webhook_denied_networks,
        allow_hosts=settings.webhook_allow_hosts,
    )
    worker = WebhookWorker(
        queue=queue,
        store=store,
        call_store=call_store,
        sender=sender,
        concurrency=settings.webhook_concurrency,
    )
    await _background(stack, "webhooks", worker.run)
    return queue


async def _run_service(
    stack: AsyncExitStack,
    settings: Settings,
    *,
    services: ServicesConfig,
    models: ProviderModels,
    catalog: TemplateCatalog,
    client: NatsClient,
    run_blocking: BlockingRunner,
    tools: GrpcTools,
) -> tuple[RunService, RunQueries, QueuedRuns, str]:
    """The run service, the queued runs, the run queries and the bus backend's name."""
    token = settings.service_token.get_secret_value() if settings.service_token else None
    names = Names(settings.nats_prefix)
    db = SqlDatabase(settings.database_url.get_secret_value(), schema=settings.postgres_schema)
    await run_blocking(db.open)
    stack.callback(db.close)
    store = await run_blocking(SqlRunStore, db, lease_seconds=settings.lease_seconds)
    checkpointer = await stack.enter_async_context(
        open_checkpointer(settings.sessions_url.get_secret_value(), schema=settings.postgres_schema)
    )
    agents = RegistryAgents(
        settings.registry_target,
        client,
        names,
        service_token=token,
        timeout=settings.client_timeout_seconds,
    )
    await agents.start()
    stack.push_async_callback(agents.close)
    bus = await _bus(stack, settings, client)
    events, event_log, cancel_bus = bus.events, bus.log, bus.cancel
    runs = RunService(
        agents=agents,
        catalog=catalog,
        models=models,
        tools=tools,
        store=store,
        events=events,
        cancel_bus=cancel_bus,
        services=services,
        call_store=db.calls(run_blocking),
        checkpointer=checkpointer,
        history=session_history(checkpointer),
        event_log=event_log,
        settings=_run_settings(settings),
    )
    await cancel_bus.start(runs.cancel_local)
    stack.push_async_callback(cancel_bus.close)
    await _background(stack, "run-maintenance", runs.maintain)
    queue = await _queue(
        stack,
        settings,
        client,
        name="run",
        ack_wait=settings.queue_ack_wait_seconds,
        max_attempts=settings.queue_max_attempts,
        max_deliver=-1,  # the run store counts starts; waiting for a turn is not one
    )
    webhooks = await _webhooks(
        stack, settings, client=client, store=store, call_store=db.calls(run_blocking)
    )
    queued = QueuedRuns(
        runs,
        queue=queue,
        event_log=event_log,
        codec=ProtoRequestCodec(),
        webhooks=webhooks,
        settings=QueueSettings(
            sweep_after_seconds=settings.queue_sweep_seconds,
            checkpoint=settings.queue_checkpoint_runs,
        ),
    )
    # Stops pulling before the run service drains (the stack unwinds in reverse).
    await _background(stack, "run-queue", queued.consume)
    await _background(stack, "run-queue-sweep", queued.maintain)
    queries = RunQueries(
        store=store,
        endings=bus.endings,
        call_store=db.calls(run_blocking),
        event_log=event_log,
        poll_seconds=settings.wait_poll_seconds,
        max_waits=settings.max_waits,
    )
    return runs, queries, queued, bus.backend


async def serve(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Run the executor until `stop` is set (or SIGTERM/SIGINT when `stop` is None)."""
    services = load_services_config(settings, os.environ)
    for path in services.unset_variables:
        log.warning("services config placeholder not set; left empty", extra={"key": path})
    telemetry = setup_telemetry("executor", settings.otel_exporter, settings.otel_endpoint)
    try:
        async with AsyncExitStack() as stack:
            client = NatsClient(settings.nats_url, name="executor")
            await client.start()
            stack.push_async_callback(client.close)
            run_blocking = BlockingRunner(settings.worker_threads, "executor")
            stack.callback(run_blocking.shutdown)
            tools = _tools(settings)
            stack.push_async_callback(tools.close)
            catalog = await _templates(
                stack,
                settings,
                client,
                Names(settings.nats_prefix),
                run_blocking,
                services=services,
                tools=tools,
            )
            models = _models(settings, services)
            runs, queries, queued, bus_backend = await _run_service(
                stack,
                settings,
                services=services,
                models=models,
                catalog=catalog,
                client=client,
                run_blocking=run_blocking,
                tools=tools,
            )
            # Compose drafts with the runs' models and tools: the same breakers and caches.
            composer = ComposeService(
                catalog=catalog, models=models, tools=runs.tools, services=services
            )
            servicer = ExecutorServicer(
                runs, queries, catalog, composer, queued, bus_backend=bus_backend
            )

            def register(server: grpc.aio.Server) -> None:
                executor_pb2_grpc.add_ExecutorServicer_to_server(servicer, server)

            server = GrpcServer(
                [ServiceBinding(SERVICE_NAME, register)],
                host=settings.host,
                port=settings.port,
                service_token_sha256=settings.service_token_sha256(),
            )
            log.info(
                "executor starting",
                extra={
                    "templates": len(catalog.templates()),
                    "template_problems": len(catalog.problems()),
                    "providers": sorted(services.providers),
                    "executor_id": settings.executor_id,
                },
            )
            await serve_until_stopped(
                stack,
                server,
                grace=settings.shutdown_grace_seconds,
                delay=settings.shutdown_delay_seconds,
                on_ready=on_ready,
                stop=stop,
                drain=runs.shutdown,
            )
    finally:
        telemetry.shutdown()


def main() -> None:
    """Entry point: `python -m agent_executor` / `agentrt-executor`."""
    service_main("executor", Settings, serve)
