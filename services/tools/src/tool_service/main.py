"""Composition root of the tools service: wires domain, application and adapters, runs them.

Start-up: telemetry → NATS (background; audit waits for it) → blocking-call pool →
ledger database → workspaces, fetcher, plugins, catalogue → audit publisher →
gRPC server. Shutdown: NOT_SERVING and a graceful stop first, queued audit
records published, NATS drained, telemetry flushed last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from agentrt.tools.v1 import tools_pb2, tools_pb2_grpc
from agentrt_kit.audit import AuditPublisher
from agentrt_kit.concurrency import BlockingRunner, wait_for_any
from agentrt_kit.grpc.server import GrpcServer, ServiceBinding
from agentrt_kit.lifecycle import serve_until_stopped, service_main
from agentrt_kit.nats import Names, NatsClient
from agentrt_kit.sql import SqlDatabase
from agentrt_kit.telemetry import setup_telemetry
from agentrt_kit.urls import NetworkPolicy
from tool_service.adapters.audit import SERVICE as AUDIT_SERVICE
from tool_service.adapters.audit import PublishedAuditSink
from tool_service.adapters.fetcher import FetchPolicy, HttpFetcher
from tool_service.adapters.grpc_api import ToolServiceServicer
from tool_service.adapters.ledger import SqlLedger
from tool_service.adapters.memory import ListAuditSink
from tool_service.adapters.plugins import load_plugins
from tool_service.adapters.sandbox import CodeSandbox, SandboxConfig, build_sandbox
from tool_service.adapters.workspace_fs import ConfinedWorkspaces
from tool_service.application.catalog import BUILTIN_TOOLS
from tool_service.application.code import AgentCode, RunCode
from tool_service.application.environment import Limits
from tool_service.application.ports import AuditSink, Tool
from tool_service.application.runner import ToolCatalog, ToolRunner
from tool_service.config import Settings
from tool_service.domain.sandbox import Limits as SandboxLimits
from tool_service.domain.sandbox import SandboxStatus

log = logging.getLogger(__name__)
SERVICE_NAME = tools_pb2.DESCRIPTOR.services_by_name["ToolService"].full_name


def fetch_policy(settings: Settings) -> FetchPolicy:
    """The fetch policy the settings describe."""
    return FetchPolicy(
        network=NetworkPolicy.of(
            allowed_networks=settings.fetch_allowed_networks,
            denied_networks=settings.fetch_denied_networks,
            allow_hosts=settings.fetch_allow_hosts,
            deny_hosts=settings.fetch_deny_hosts,
        ),
        max_redirects=settings.fetch_max_redirects,
        connect_timeout=settings.fetch_connect_timeout,
        read_timeout=settings.fetch_read_timeout,
        total_timeout=settings.fetch_total_timeout,
        max_bytes=settings.fetch_max_bytes,
        retries=settings.fetch_retries,
        breaker_failures=settings.fetch_breaker_failures,
        breaker_cooldown=settings.fetch_breaker_cooldown,
        verify_tls=settings.fetch_verify_tls,
    )


def limits(settings: Settings) -> Limits:
    """The tool limits the settings describe."""
    return Limits(
        max_read_bytes=settings.max_read_bytes,
        max_write_bytes=settings.max_write_bytes,
        max_lines=settings.max_lines,
        max_matches=settings.max_matches,
        max_pattern_chars=settings.max_pattern_chars,
        max_list_entries=settings.max_list_entries,
        max_content_chars=settings.max_content_chars,
        save_other_types=settings.fetch_save_other_types,
    )


def sandbox_config(settings: Settings) -> SandboxConfig:
    """The sandbox the settings describe."""
    return SandboxConfig(
        bwrap=settings.sandbox_bwrap,
        python=settings.sandbox_python,
        node=settings.sandbox_node,
        max_concurrent=settings.sandbox_max_concurrent,
        uid_base=settings.sandbox_uid_base,
        cgroups=settings.sandbox_cgroups,
        unsafe_unsandboxed=settings.unsafe_unsandboxed_code,
        defaults=SandboxLimits(
            pids=settings.sandbox_pids,
            open_files=settings.sandbox_open_files,
            file_size_mb=settings.sandbox_file_size_mb,
            output_bytes=settings.sandbox_output_bytes,
            captured_bytes=settings.sandbox_captured_bytes,
            scratch_mb=settings.sandbox_scratch_mb,
            output_dir_mb=settings.sandbox_output_dir_mb,
        ),
    )


async def open_sandbox(settings: Settings, run_blocking: BlockingRunner) -> CodeSandbox | None:
    """The code sandbox (None when turned off); its status says whether code can run."""
    if not settings.sandbox_enabled:
        return None
    sandbox = await run_blocking(build_sandbox, sandbox_config(settings))
    sandbox.forget_loop()
    status = sandbox.status
    if status.available:
        log.info(
            "code sandbox ready",
            extra={
                "isolation": status.isolation,
                "runtimes": [f"{r.language.value} {r.version}" for r in status.runtimes],
                "enforcement": list(status.enforcement),
            },
        )
    else:
        log.warning("run_code is not offered: no sandbox", extra={"reason": status.reason})
    return sandbox


async def _purge_forever(
    ledger: SqlLedger, run_blocking: BlockingRunner, retention: timedelta, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            purged = await run_blocking(ledger.purge, datetime.now(UTC) - retention)
            if purged:
                log.info("ledger entries purged", extra={"count": purged})
        except Exception:
            log.exception("ledger purge failed")
        await wait_for_any(stop, timeout=3600)


async def serve(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Run the tools service until `stop` is set (or SIGTERM/SIGINT when `stop` is None)."""
    telemetry = setup_telemetry("tools", settings.otel_exporter, settings.otel_endpoint)
    try:
        async with AsyncExitStack() as stack:
            client = NatsClient(settings.nats_url, name="tools")
            await client.start()
            stack.push_async_callback(client.close)

            run_blocking = BlockingRunner(settings.worker_threads, "tools")
            stack.callback(run_blocking.shutdown)

            db = SqlDatabase(
                settings.database_url.get_secret_value(), schema=settings.postgres_schema
            )
            await run_blocking(db.open)
            stack.callback(db.close)
            ledger = await run_blocking(SqlLedger, db)

            workspaces = ConfinedWorkspaces(
                settings.workspace_root, use_openat2=settings.use_openat2
            )
            stack.callback(workspaces.close)
            sandbox = await open_sandbox(settings, run_blocking)
            if sandbox is not None:
                stack.callback(sandbox.close)
            builtins: list[Tool] = list(BUILTIN_TOOLS)
            if sandbox is not None and sandbox.status.available:
                builtins.append(RunCode(sandbox, sandbox.config.defaults))
            plugin_tools, problems = load_plugins(
                [Path(p) for p in settings.plugin_dirs], [t.spec.name for t in builtins]
            )
            catalog = ToolCatalog([*builtins, *plugin_tools], problems)

            audit: AuditSink = ListAuditSink()
            if settings.audit_enabled:
                publisher = AuditPublisher(
                    client,
                    Names(settings.nats_prefix),
                    AUDIT_SERVICE,
                    limits=settings.audit_limits(),
                )
                await publisher.start()
                stack.push_async_callback(publisher.stop)
                audit = PublishedAuditSink(publisher)

            runner = ToolRunner(
                catalog,
                workspaces=workspaces,
                fetcher=HttpFetcher(fetch_policy(settings)),
                ledger=ledger,
                audit=audit,
                run_blocking=run_blocking,
                limits=limits(settings),
                in_flight_timeout=settings.in_flight_timeout_seconds,
            )
            background_stop = asyncio.Event()
            purge = asyncio.create_task(
                _purge_forever(
                    ledger,
                    run_blocking,
                    timedelta(days=settings.ledger_retention_days),
                    background_stop,
                )
            )

            async def stop_purge() -> None:
                background_stop.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await purge

            stack.push_async_callback(stop_purge)
            agent_code = None
            if sandbox is not None and sandbox.status.available:
                agent_code = AgentCode(
                    sandbox,
                    sandbox.config.defaults,
                    workspaces=workspaces,
                    run_blocking=run_blocking,
                    audit=audit,
                    max_read_bytes=settings.max_read_bytes,
                )
            servicer = ToolServiceServicer(
                runner,
                agent_code,
                sandbox.status
                if sandbox is not None
                else SandboxStatus(False, reason="turned off (AGENTRT_TOOLS_SANDBOX_ENABLED)"),
            )

            def register(server: grpc.aio.Server) -> None:
                tools_pb2_grpc.add_ToolServiceServicer_to_server(servicer, server)

            server = GrpcServer(
                [ServiceBinding(SERVICE_NAME, register)],
                host=settings.host,
                port=settings.port,
                service_token_sha256=settings.service_token_sha256(),
            )
            log.info(
                "tools service starting",
                extra={
                    "tools": len(catalog.specs()),
                    "plugin_problems": len(problems),
                    "openat2": workspaces.use_openat2,
                },
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
    """Entry point: `python -m tool_service` / `agentrt-tools`."""
    service_main("tools", Settings, serve)
