"""End to end: the tools service as a real process, with a service token and audit on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import nats
import pytest

from agentrt.events.v1 import audit_events_pb2
from agentrt.tools.v1 import tools_pb2 as pb
from agentrt.tools.v1 import tools_pb2_grpc as pb_grpc
from agentrt_kit.nats import Names
from agentrt_testkit.ports import free_port
from agentrt_testkit.processes import ServiceProcess

TOKEN = (("authorization", "Bearer e2e-token"),)


def request(tool: str, key: str = "", **arguments: Any) -> pb.InvokeToolRequest:
    message = pb.InvokeToolRequest(
        tool_name=tool,
        context=pb.InvocationContext(agent_id="agent-e2e", run_id="run-1", idempotency_key=key),
    )
    message.arguments.update(arguments)
    return message


async def test_tools_process_serves_confines_audits_and_stops_cleanly(
    nats_server: Any, nats_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    process = ServiceProcess(
        "tool_service",
        {
            "AGENTRT_NATS_URL": nats_server.url,
            "AGENTRT_NATS_PREFIX": nats_prefix,
            "AGENTRT_SERVICE_TOKEN": "e2e-token",
            "AGENTRT_TOOLS_PORT": str(port),
            "AGENTRT_TOOLS_WORKSPACE_ROOT": str(tmp_path / "workspaces"),
            "AGENTRT_TOOLS_DATABASE_URL": f"sqlite:///{tmp_path / 'tools.sqlite3'}",
        },
        port,
    ).start()
    try:
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = pb_grpc.ToolServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListTools(pb.ListToolsRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            created = await stub.InvokeTool(
                request(
                    "create_file", key="run-1:c1", filename="a.txt", content="SENTINEL-CONTENT\n"
                ),
                metadata=TOKEN,
                timeout=5,
            )
            assert created.artifacts[0].location == "a.txt"
            again = await stub.InvokeTool(
                request(
                    "create_file", key="run-1:c1", filename="a.txt", content="SENTINEL-CONTENT\n"
                ),
                metadata=TOKEN,
                timeout=5,
            )
            assert again.replayed
            read = await stub.InvokeTool(request("read_lines", filename="a.txt"), metadata=TOKEN)
            assert read.content == "SENTINEL-CONTENT"
            with pytest.raises(grpc.aio.AioRpcError) as escaped:
                await stub.InvokeTool(request("read_lines", filename="../x"), metadata=TOKEN)
            assert escaped.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (tmp_path / "workspaces" / "agent-e2e" / "a.txt").read_text() == "SENTINEL-CONTENT\n"
    finally:
        assert process.stop() == 0  # SIGTERM: drains, publishes queued audit records
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        stream = Names(nats_prefix).stream("audit")
        info = await js.stream_info(stream)
        records = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            batch = audit_events_pb2.AuditBatch()
            batch.ParseFromString((await js.get_msg(stream, seq=seq)).data)
            records.extend(batch.records)
    finally:
        await nc.close()
    assert [(r.target, r.outcome) for r in records] == [
        ("create_file", "succeeded"),
        ("create_file", "replayed"),
        ("read_lines", "succeeded"),
        ("read_lines", "refused"),
    ]
    assert all(r.agent_id == "agent-e2e" and r.run_id == "run-1" for r in records)
    assert all(b"SENTINEL" not in r.SerializeToString() for r in records)
