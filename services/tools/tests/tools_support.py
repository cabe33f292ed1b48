"""Helpers shared by the tools service's tests (importable: tests dir is on pythonpath)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc

from agentrt.tools.v1 import tools_pb2 as pb
from agentrt.tools.v1 import tools_pb2_grpc as pb_grpc
from agentrt_kit.grpc.client import create_channel
from tool_service.config import Settings
from tool_service.main import serve


def invoke_request(
    tool: str,
    *,
    agent_id: str = "agent-1",
    workspace: str = "",
    key: str = "",
    task_id: str = "",
    run_id: str = "",
    **arguments: Any,
) -> pb.InvokeToolRequest:
    """An InvokeToolRequest for `tool` with keyword arguments as its arguments."""
    request = pb.InvokeToolRequest(
        tool_name=tool,
        context=pb.InvocationContext(
            agent_id=agent_id,
            workspace=workspace,
            idempotency_key=key,
            task_id=task_id,
            run_id=run_id,
        ),
    )
    request.arguments.update(arguments)
    return request


@dataclass
class ToolsService:
    """The tools service running in the test's loop, and ways to talk to it."""

    settings: Settings
    port: int = 0
    task: asyncio.Task[None] | None = None
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    async def start(self) -> ToolsService:
        self.stop_event = asyncio.Event()
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(
            serve(self.settings, stop=self.stop_event, on_ready=ready.set_result)
        )
        done, _ = await asyncio.wait({ready, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            self.task.result()
        self.port = ready.result()
        return self

    async def stop(self) -> None:
        for channel in self.channels:
            await channel.close()
        self.channels.clear()
        self.stop_event.set()
        if self.task is not None:
            await self.task

    def stub(self, token: str | None = None) -> pb_grpc.ToolServiceStub:
        channel = create_channel(f"127.0.0.1:{self.port}", service_token=token)
        self.channels.append(channel)
        return pb_grpc.ToolServiceStub(channel)
