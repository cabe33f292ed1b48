"""Adapter: the tools service over gRPC.

The tool list is cached for `list_ttl` seconds (concurrent refreshes share one
call) so admitting a run costs no round trip. Invocations carry the run's
context and idempotency key; the channel retries them on UNAVAILABLE, which the
tools service's ledger makes safe even for at-most-once tools.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from agent_executor.application.ports import ToolCallContext, ToolOutcome, ToolSpec
from agent_executor.errors import ToolsUnavailable
from agentrt.tools.v1 import tools_pb2, tools_pb2_grpc
from agentrt_kit.grpc.client import create_channel, retry_service_config
from agentrt_kit.grpc.status import error_from_rpc
from agentrt_kit.grpc.structs import dict_to_struct, struct_to_dict

TOOLS_SERVICE = "agentrt.tools.v1.ToolService"
SIDE_EFFECTS = {
    tools_pb2.SIDE_EFFECT_READ_ONLY: "read_only",
    tools_pb2.SIDE_EFFECT_IDEMPOTENT: "idempotent",
    tools_pb2.SIDE_EFFECT_AT_MOST_ONCE: "at_most_once",
}


class GrpcTools:
    """The `ToolGateway` port over the tools service."""

    def __init__(
        self,
        target: str,
        *,
        service_token: str | None = None,
        timeout: float = 5.0,
        invoke_timeout: float = 120.0,
        list_ttl: float = 30.0,
    ) -> None:
        self._channel = create_channel(
            target,
            service_token=service_token,
            default_timeout=timeout,
            service_config=retry_service_config(TOOLS_SERVICE, ["ListTools", "InvokeTool"]),
        )
        self._stub = tools_pb2_grpc.ToolServiceStub(self._channel)
        self._invoke_timeout = invoke_timeout
        self._ttl = list_ttl
        self._specs: tuple[ToolSpec, ...] | None = None
        self._fetched_at = 0.0
        self._refresh: asyncio.Task[tuple[ToolSpec, ...]] | None = None

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def list_tools(self) -> Sequence[ToolSpec]:
        """Every tool offered (cached)."""
        if self._specs is not None and time.monotonic() - self._fetched_at < self._ttl:
            return self._specs
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(self._fetch())
        try:
            return await asyncio.shield(self._refresh)
        except ToolsUnavailable:
            if self._specs is not None:
                return self._specs  # a stale list beats refusing every run
            raise

    async def _fetch(self) -> tuple[ToolSpec, ...]:
        try:
            reply = await self._stub.ListTools(tools_pb2.ListToolsRequest())
        except grpc.aio.AioRpcError as e:
            raise ToolsUnavailable(f"tools service: {error_from_rpc(e).message}") from None
        specs = tuple(
            ToolSpec.of(
                t.name,
                t.description,
                struct_to_dict(t.arguments_schema),
                SIDE_EFFECTS.get(t.side_effect, "read_only"),
            )
            for t in reply.tools
        )
        if specs != self._specs:
            self._specs = specs
        self._fetched_at = time.monotonic()
        return self._specs or ()

    async def invoke(
        self, name: str, arguments: Mapping[str, Any], context: ToolCallContext
    ) -> ToolOutcome:
        """Invoke a tool; a refusal raises the tools service's error."""
        request = tools_pb2.InvokeToolRequest(
            tool_name=name,
            arguments=dict_to_struct(dict(arguments)),
            context=tools_pb2.InvocationContext(
                agent_id=context.agent_id,
                task_id=context.task_id,
                run_id=context.run_id,
                workspace=context.workspace,
                idempotency_key=context.idempotency_key,
            ),
        )
        try:
            reply = await self._stub.InvokeTool(request, timeout=self._invoke_timeout)
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from None
        return ToolOutcome(
            content=reply.content,
            data=struct_to_dict(reply.data) if reply.HasField("data") else None,
            artifacts=tuple(a.location for a in reply.artifacts),
            error_code=reply.error.code if reply.HasField("error") else "",
            error_message=reply.error.message if reply.HasField("error") else "",
            replayed=reply.replayed,
        )
