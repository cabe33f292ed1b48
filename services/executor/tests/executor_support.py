"""Helpers shared by the executor's tests (importable: tests dir is on pythonpath).

`System` runs the real registry, tools service and executor in the test's event
loop, over real gRPC channels, with a real NATS server and SQLite (or
PostgreSQL) storage of the test's own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from registry_support import Registry, sqlite_registry
from tools_support import ToolsService

from agent_executor.config import Settings
from agent_executor.main import serve
from agentrt.executor.v1 import executor_pb2 as pb
from agentrt.executor.v1 import executor_pb2_grpc as pb_grpc
from agentrt.registry.v1 import registry_pb2 as rpb
from agentrt.registry.v1 import registry_pb2_grpc as rpb_grpc
from agentrt_kit.grpc.status import error_from_rpc
from agentrt_kit.grpc.structs import fill
from agentrt_testkit.inloop import InLoopService
from tool_service.config import Settings as ToolsSettings


class ExecutorService(InLoopService[Settings, pb_grpc.ExecutorStub]):
    """The executor running in the test's loop, and ways to talk to it."""

    serve = staticmethod(serve)
    stub_class = pb_grpc.ExecutorStub


def services_config(**providers: dict[str, Any]) -> str:
    """A services configuration (JSON) with these providers; the first is the default."""
    return json.dumps({"llm": {"providers": providers, "default_provider": next(iter(providers))}})


def offline(*steps: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    """An offline provider following `steps`."""
    return {
        "type": "offline",
        "model": "offline-test",
        "metadata": {"script": list(steps), **metadata},
    }


def run_input(agent_id: str, *texts: str, **fields: Any) -> pb.RunInput:
    """A RunInput with one user message per text."""
    sampling = fields.pop("sampling", None)
    message = pb.RunInput(
        agent_id=agent_id,
        messages=[pb.ChatMessage(role="user", content=t) for t in texts],
        **fields,
    )
    if sampling is not None:
        message.sampling.CopyFrom(sampling)
    return message


def spec(**values: Any) -> rpb.AgentSpec:
    """An AgentSpec from plain values (dicts and lists go to Struct and repeated fields)."""
    return fill(rpb.AgentSpec(), values)


async def eventually(
    check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll `check` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


@dataclass
class System:
    """Registry, tools service and executor(s), started in order."""

    tmp: Path
    nats_url: str
    prefix: str
    database_url: str
    sessions_url: str
    postgres_schema: str = "public"
    registry: Registry | None = None
    tools: ToolsService | None = None
    executors: list[ExecutorService] = field(default_factory=list)

    @classmethod
    def on_sqlite(cls, tmp: Path, nats_url: str, prefix: str) -> System:
        """A system whose executor keeps runs and sessions in SQLite files under `tmp`."""
        return cls(
            tmp=tmp,
            nats_url=nats_url,
            prefix=prefix,
            database_url=f"sqlite:///{tmp / 'executor.sqlite3'}",
            sessions_url=f"sqlite:///{tmp / 'sessions.sqlite3'}",
        )

    async def start(self, **executor_overrides: Any) -> System:
        """Start the registry, the tools service and one executor."""
        self.registry = await sqlite_registry(
            self.tmp / "registry.sqlite3", self.nats_url, self.prefix
        ).start()
        (self.tmp / "workspaces").mkdir(exist_ok=True)
        self.tools = await ToolsService(
            ToolsSettings(
                port=0,
                nats_url=self.nats_url,
                nats_prefix=self.prefix,
                service_token=None,
                workspace_root=self.tmp / "workspaces",
                database_url=f"sqlite:///{self.tmp / 'tools.sqlite3'}",
            )
        ).start()
        await self.add_executor(**executor_overrides)
        return self

    def executor_settings(self, **overrides: Any) -> Settings:
        """Executor settings pointing at this system's registry, tools and storage."""
        assert self.registry is not None
        assert self.tools is not None
        values: dict[str, Any] = {
            "port": 0,
            "nats_url": self.nats_url,
            "nats_prefix": self.prefix,
            "service_token": None,
            "registry_target": f"127.0.0.1:{self.registry.port}",
            "tools_target": f"127.0.0.1:{self.tools.port}",
            "database_url": self.database_url,
            "sessions_url": self.sessions_url,
            "postgres_schema": self.postgres_schema,
            "heartbeat_seconds": 0.2,
            "shutdown_grace_seconds": 2.0,
        }
        values.update(overrides)
        return Settings(**values)

    async def add_executor(self, **overrides: Any) -> ExecutorService:
        """Start one more executor replica."""
        executor = await ExecutorService(self.executor_settings(**overrides)).start()
        self.executors.append(executor)
        return executor

    @property
    def executor(self) -> pb_grpc.ExecutorStub:
        """A stub to the first executor."""
        return self.executors[0].stub()

    @property
    def agents(self) -> rpb_grpc.AgentRegistryStub:
        """A stub to the registry."""
        assert self.registry is not None
        return self.registry.stub()

    async def create_agent(
        self, *, status: int = rpb.AGENT_STATUS_ACTIVE, **values: Any
    ) -> rpb.Agent:
        """Create an agent, waiting until the registry knows its template."""
        values.setdefault("name", f"agent {time.monotonic_ns()}")
        stub = self.agents
        deadline = time.monotonic() + 10
        while True:
            try:
                reply = await stub.CreateAgent(
                    rpb.CreateAgentRequest(spec=spec(**values), status=status)
                )
                return reply.agent
            except grpc.aio.AioRpcError as e:
                error = error_from_rpc(e)
                unknown = any(v.field == "spec.template_id" for v in error.violations)
                if not unknown or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop everything, executors first."""
        for executor in reversed(self.executors):
            await executor.stop()
        if self.tools is not None:
            await self.tools.stop()
        if self.registry is not None:
            await self.registry.stop()


async def collect(call: Any) -> list[pb.ExecuteStreamResponse]:
    """Every event of a streaming call."""
    return [event async for event in call]


def kinds(events: list[pb.ExecuteStreamResponse]) -> list[str]:
    """The event kinds, in order."""
    return [str(e.WhichOneof("event")) for e in events]


StartSystem = Callable[..., Coroutine[Any, Any, System]]
