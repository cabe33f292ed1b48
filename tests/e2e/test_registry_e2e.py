"""End to end: the registry as a real process, driven by a Node.js gRPC client and by Python."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest

from agentrt.registry.v1 import registry_pb2 as pb
from agentrt.registry.v1 import registry_pb2_grpc as pb_grpc
from agentrt_kit.catalog import open_bucket, publish_descriptor
from agentrt_kit.nats import Names
from agentrt_kit.settings import ServiceSettings
from agentrt_testkit.processes import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "e2e" / "node"
SIMPLE = {
    "id": "simple-test",
    "version": "1.0.0",
    "name": "Simple test",
    "framework": "langgraph",
    "config_schema": {
        "type": "object",
        "properties": {"response_prefix": {"type": "string"}},
        "additionalProperties": False,
    },
    "config_fields": [{"key": "response_prefix", "type": "string"}],
}


async def publish_templates(nats_server: Any, prefix: str) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await publish_descriptor(
            await open_bucket(nc.jetstream(), Names(prefix), ServiceSettings().catalog_limits()),
            SIMPLE,
        )
    finally:
        await nc.close()


def node_modules() -> Path:
    """Install the client's npm packages (from package-lock.json) once."""
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").exists():
        npm = shutil.which("npm")
        assert npm, "npm is required for the Node.js client test"
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=NODE_DIR,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return NODE_DIR / "node_modules"


def googleapis_protos() -> Path:
    """The directory holding google/rpc/*.proto (shipped by googleapis-common-protos)."""
    from google.rpc import error_details_pb2

    return Path(error_details_pb2.__file__).resolve().parents[2]


async def test_node_client_drives_the_registry_and_reads_error_details(
    registry_process: ServiceProcess, nats_server: Any, nats_prefix: str
) -> None:
    await publish_templates(nats_server, nats_prefix)
    node_modules()
    node = shutil.which("node")
    assert node, "node is required for this test"
    run = subprocess.run(
        [
            node,
            str(NODE_DIR / "registry_client.js"),
            registry_process.address,
            "e2e-token",
            str(ROOT / "protos"),
            str(googleapis_protos()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr + registry_process.log()
    result = json.loads(run.stdout)
    assert result["created"] == {"id": "node-1", "version": 1, "status": "AGENT_STATUS_CREATED"}
    assert result["updated"] == {"version": 2, "description": "updated from node"}
    assert result["got"] == {"name": "Node agent", "prefix": "node> ", "created_by": "node-client"}
    assert result["listed"] == ["node-1"]
    assert result["history"] == [
        [1, "registered", "node-client"],
        [2, "configuration_changed", "node-client"],
    ]
    refused = result["refused"]
    assert refused["grpc_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert refused["reason"] == "VALIDATION_ERROR"
    assert {v["field"] for v in refused["violations"]} == {"spec.name", "spec.template_id"}
    stale = result["stale"]
    assert stale["grpc_code"] == grpc.StatusCode.ABORTED.value[0]
    assert stale["reason"] == "VERSION_MISMATCH"


async def test_process_refuses_calls_without_token_and_stops_cleanly(
    registry_process: ServiceProcess, nats_server: Any, nats_prefix: str
) -> None:
    await publish_templates(nats_server, nats_prefix)
    async with grpc.aio.insecure_channel(registry_process.address) as channel:
        stub = pb_grpc.AgentRegistryStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListAgents(pb.ListAgentsRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        md = (("authorization", "Bearer e2e-token"),)
        spec = pb.AgentSpec(name="Process agent", template_id="simple-test")
        await stub.CreateAgent(
            pb.CreateAgentRequest(agent_id="p1", spec=spec), metadata=md, timeout=5
        )
    assert registry_process.stop() == 0
    assert "shutting down" in registry_process.log()


async def test_crashed_registry_restarts_with_its_state(
    registry_process: ServiceProcess, nats_server: Any, nats_prefix: str
) -> None:
    await publish_templates(nats_server, nats_prefix)
    md = (("authorization", "Bearer e2e-token"),)
    async with grpc.aio.insecure_channel(registry_process.address) as channel:
        stub = pb_grpc.AgentRegistryStub(channel)
        spec = pb.AgentSpec(name="Survivor", template_id="simple-test")
        await stub.CreateAgent(
            pb.CreateAgentRequest(agent_id="s1", spec=spec), metadata=md, timeout=5
        )
    registry_process.kill()
    registry_process.start()
    async with grpc.aio.insecure_channel(registry_process.address) as channel:
        stub = pb_grpc.AgentRegistryStub(channel)
        got = await stub.GetAgent(pb.GetAgentRequest(agent_id="s1"), metadata=md, timeout=5)
        listed = await stub.ListAgents(pb.ListAgentsRequest(), metadata=md, timeout=5)
    assert got.agent.spec.name == "Survivor"
    assert [a.id for a in listed.agents] == ["s1"]
