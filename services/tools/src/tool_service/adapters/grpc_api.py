"""Adapter: the `agentrt.tools.v1.ToolService` gRPC servicer.

Translation only: proto → plain values → one application call → proto.
"""

from __future__ import annotations

import grpc

from agentrt.tools.v1 import tools_pb2, tools_pb2_grpc
from agentrt_kit.errors import invalid
from agentrt_kit.grpc.structs import dict_to_struct, struct_to_dict
from tool_service.application.runner import ToolRunner
from tool_service.domain.tools import InvocationContext, SideEffect, ToolResult, ToolSpec

SIDE_EFFECTS = {
    SideEffect.READ_ONLY: tools_pb2.SIDE_EFFECT_READ_ONLY,
    SideEffect.IDEMPOTENT: tools_pb2.SIDE_EFFECT_IDEMPOTENT,
    SideEffect.AT_MOST_ONCE: tools_pb2.SIDE_EFFECT_AT_MOST_ONCE,
}


def descriptor(spec: ToolSpec) -> tools_pb2.ToolDescriptor:
    """The proto of a tool spec."""
    return tools_pb2.ToolDescriptor(
        name=spec.name,
        description=spec.description,
        arguments_schema=dict_to_struct(dict(spec.arguments_schema)),
        side_effect=SIDE_EFFECTS[spec.side_effect],
        version=spec.version,
        source=spec.source,
    )


def context_of(message: tools_pb2.InvocationContext) -> InvocationContext:
    """The domain context of a proto context."""
    return InvocationContext(
        agent_id=message.agent_id,
        task_id=message.task_id,
        run_id=message.run_id,
        workspace=message.workspace,
        idempotency_key=message.idempotency_key,
    )


def response_of(result: ToolResult, replayed: bool) -> tools_pb2.InvokeToolResponse:
    """The proto of a tool result."""
    return tools_pb2.InvokeToolResponse(
        content=result.content,
        data=dict_to_struct(dict(result.data)),
        artifacts=[
            tools_pb2.Artifact(
                kind=a.kind, location=a.location, media_type=a.media_type, size_bytes=a.size_bytes
            )
            for a in result.artifacts
        ],
        error=tools_pb2.ToolError(code=result.error_code, message=result.error_message)
        if result.failed
        else None,
        replayed=replayed,
    )


class ToolServiceServicer(tools_pb2_grpc.ToolServiceServicer):
    """gRPC face of the tool runner."""

    def __init__(self, runner: ToolRunner) -> None:
        self.runner = runner

    async def ListTools(
        self, request: tools_pb2.ListToolsRequest, context: grpc.aio.ServicerContext
    ) -> tools_pb2.ListToolsResponse:
        """Every tool and every plugin problem."""
        catalog = self.runner.catalog
        return tools_pb2.ListToolsResponse(
            tools=[descriptor(spec) for spec in catalog.specs()],
            plugin_problems=[
                tools_pb2.PluginProblem(plugin=plugin, error=error)
                for plugin, error in catalog.problems
            ],
        )

    async def InvokeTool(
        self, request: tools_pb2.InvokeToolRequest, context: grpc.aio.ServicerContext
    ) -> tools_pb2.InvokeToolResponse:
        """Run one tool."""
        if not request.tool_name:
            raise invalid("tool_name", "is required")
        result, replayed = await self.runner.invoke(
            request.tool_name, struct_to_dict(request.arguments), context_of(request.context)
        )
        return response_of(result, replayed)
