"""A first look over real gRPC: every built-in tool answers."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from tools_support import invoke_request

from agentrt.tools.v1 import tools_pb2 as pb
from agentrt_kit.grpc.status import error_from_rpc


async def test_list_tools_describes_every_builtin(stub: Any) -> None:
    reply = await stub.ListTools(pb.ListToolsRequest())
    tools = {t.name: t for t in reply.tools}
    assert set(tools) == {
        "read_lines",
        "grep_file",
        "create_file",
        "delete_file",
        "list_files",
        "fetch_url",
        "parse_url",
        "run_code",
    }
    assert tools["create_file"].side_effect == pb.SIDE_EFFECT_AT_MOST_ONCE
    assert tools["read_lines"].side_effect == pb.SIDE_EFFECT_READ_ONLY
    assert tools["fetch_url"].side_effect == pb.SIDE_EFFECT_IDEMPOTENT
    assert tools["read_lines"].arguments_schema["required"] == ["filename"]


async def test_create_then_read_grep_list_delete(stub: Any) -> None:
    created = await stub.InvokeTool(
        invoke_request("create_file", key="k1", filename="notes/a.txt", content="one\ntwo\nthree\n")
    )
    assert not created.HasField("error")
    assert created.artifacts[0].location == "notes/a.txt"
    read = await stub.InvokeTool(invoke_request("read_lines", filename="notes/a.txt", start=2))
    assert read.content == "two\nthree"
    grep = await stub.InvokeTool(invoke_request("grep_file", filename="notes/a.txt", pattern="^t"))
    assert grep.content == "2:two\n3:three"
    listed = await stub.InvokeTool(invoke_request("list_files", path="notes"))
    assert listed.content == "a.txt (14 bytes)"
    deleted = await stub.InvokeTool(
        invoke_request("delete_file", key="k2", filename="notes/a.txt", confirm=True)
    )
    assert deleted.content == "deleted notes/a.txt"
    missing = await stub.InvokeTool(invoke_request("read_lines", filename="notes/a.txt"))
    assert missing.error.code == "NOT_FOUND"


async def test_escaping_paths_are_permission_denied(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.InvokeTool(invoke_request("read_lines", filename="../../etc/passwd"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_from_rpc(info.value).reason == "PATH_OUTSIDE_WORKSPACE"
