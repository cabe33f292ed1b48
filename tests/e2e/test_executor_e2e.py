"""End to end: registry, tools service and executor as real processes, with a service token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentrt.executor.v1 import executor_pb2 as pb
from agentrt.executor.v1 import executor_pb2_grpc as pb_grpc
from agentrt.registry.v1 import registry_pb2 as rpb
from agentrt.registry.v1 import registry_pb2_grpc as rpb_grpc
from agentrt_testkit.ports import free_port
from agentrt_testkit.processes import ServiceProcess

TOKEN = (("authorization", "Bearer e2e-token"),)
SLOW = {
    "llm": {
        "providers": {
            "offline": {"type": "offline"},
            "slow": {"type": "offline", "metadata": {"token_latency_ms": 50}},
        },
        "default_provider": "offline",
    }
}


@pytest.fixture
def processes(
    nats_server: Any, nats_prefix: str, tmp_path: Path
) -> Iterator[dict[str, ServiceProcess]]:
    """Registry, tools and executor processes sharing this test's NATS prefix."""
    common = {
        "AGENTRT_NATS_URL": nats_server.url,
        "AGENTRT_NATS_PREFIX": nats_prefix,
        "AGENTRT_SERVICE_TOKEN": "e2e-token",
    }
    ports = {name: free_port() for name in ("registry", "tools", "executor")}
    started: dict[str, ServiceProcess] = {}
    try:
        started["registry"] = ServiceProcess(
            "agent_registry",
            {
                **common,
                "AGENTRT_REGISTRY_PORT": str(ports["registry"]),
                "AGENTRT_REGISTRY_SQLITE_PATH": str(tmp_path / "registry.sqlite3"),
            },
            ports["registry"],
        ).start()
        started["tools"] = ServiceProcess(
            "tool_service",
            {
                **common,
                "AGENTRT_TOOLS_PORT": str(ports["tools"]),
                "AGENTRT_TOOLS_WORKSPACE_ROOT": str(tmp_path / "workspaces"),
                "AGENTRT_TOOLS_DATABASE_URL": f"sqlite:///{tmp_path / 'tools.sqlite3'}",
            },
            ports["tools"],
        ).start()
        started["executor"] = ServiceProcess(
            "agent_executor",
            {
                **common,
                "SERVICES_CONFIG": json.dumps(SLOW),  # the variable old deployments set
                "AGENTRT_EXECUTOR_PORT": str(ports["executor"]),
                "AGENTRT_EXECUTOR_REGISTRY_TARGET": started["registry"].address,
                "AGENTRT_EXECUTOR_TOOLS_TARGET": started["tools"].address,
                "AGENTRT_EXECUTOR_DATABASE_URL": f"sqlite:///{tmp_path / 'executor.sqlite3'}",
                "AGENTRT_EXECUTOR_SESSIONS_URL": f"sqlite:///{tmp_path / 'sessions.sqlite3'}",
                "AGENTRT_SHUTDOWN_GRACE_SECONDS": "0.5",
            },
            ports["executor"],
        ).start()
        yield started
    finally:
        for process in reversed(list(started.values())):
            process.kill()


async def create_agent(channel: grpc.aio.Channel, **spec: Any) -> str:
    stub = rpb_grpc.AgentRegistryStub(channel)
    message = rpb.AgentSpec(name=f"e2e {spec.get('llm_config_id', '')}", template_id="conversation")
    for key, value in spec.items():
        if isinstance(value, list):
            getattr(message, key).extend(value)
        else:
            setattr(message, key, value)
    for _ in range(100):  # until the executor's templates reached the registry
        try:
            reply = await stub.CreateAgent(
                rpb.CreateAgentRequest(spec=message, status=rpb.AGENT_STATUS_ACTIVE),
                metadata=TOKEN,
                timeout=5,
            )
            return reply.agent.id
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("the registry never learned the executor's templates")


async def test_runs_go_through_every_process_and_sigterm_records_runs_in_flight(
    processes: dict[str, ServiceProcess], tmp_path: Path
) -> None:
    async with (
        grpc.aio.insecure_channel(processes["registry"].address) as registry,
        grpc.aio.insecure_channel(processes["executor"].address) as channel,
    ):
        agent_id = await create_agent(registry, toolsets=["custom"])
        executor = pb_grpc.ExecutorStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await executor.ListTemplates(pb.ListTemplatesRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        request = pb.ExecuteStreamRequest(
            input=pb.RunInput(
                agent_id=agent_id,
                messages=[
                    pb.ChatMessage(
                        role="user",
                        content='/create_file {"filename": "e2e.txt", "content": "made by a run"}',
                    )
                ],
            )
        )
        events = [e async for e in executor.ExecuteStream(request, metadata=TOKEN, timeout=20)]
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds[0] == "run_started"
        assert kinds[-1] == "run_completed"
        assert "tool_call_finished" in kinds
        assert (tmp_path / "workspaces" / agent_id / "e2e.txt").read_text() == "made by a run"

        # SIGTERM while a slow run streams: the run is cancelled and recorded as such.
        slow_agent = await create_agent(registry, llm_config_id="slow")
        call = executor.ExecuteStream(
            pb.ExecuteStreamRequest(
                input=pb.RunInput(
                    agent_id=slow_agent,
                    messages=[pb.ChatMessage(role="user", content=" ".join(["word"] * 500))],
                )
            ),
            metadata=TOKEN,
            timeout=30,
        )
        run_id = (await call.read()).run_started.run_id
        assert (await call.read()).HasField("message_delta")
        code = await asyncio.to_thread(processes["executor"].stop)
        assert code == 0
        last = None
        with contextlib.suppress(grpc.aio.AioRpcError):
            while (event := await call.read()) is not grpc.aio.EOF:
                last = event
        assert last is not None
        assert last.run_failed.code == "CANCELLED"
        assert "shutting down" in last.run_failed.message
    with sqlite3.connect(tmp_path / "executor.sqlite3") as db:
        status, error = db.execute(
            "SELECT status, error_code FROM executor_runs WHERE run_id = ?", (run_id,)
        ).fetchone()
    assert (status, error) == ("cancelled", "CANCELLED")
