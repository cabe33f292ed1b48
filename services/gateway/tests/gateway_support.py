"""Helpers shared by the gateway's tests (importable: the tests dir is on pythonpath)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from executor_support import System
from registry_support import Registry, proto_spec

from agent_gateway.config import Settings
from agent_gateway.domain.auth import new_key
from agent_gateway.main import serve
from agentrt.registry.v1 import registry_pb2 as rpb

TOKEN = "runtime-token-for-tests"
ERROR_KEYS = {"error", "message", "details", "detail"}


@contextlib.asynccontextmanager
async def running_gateway(
    stop: asyncio.Event | None = None, **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway served on a free port, and an HTTP client to it; setting `stop` stops it."""
    values: dict[str, Any] = {"port": 0, "runtime_token": TOKEN, "probe_timeout_seconds": 0.5}
    values.update(overrides)
    stop = stop or asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(Settings(**values), stop=stop, on_ready=ready.set_result))
    try:
        done, _ = await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ready.result()}") as client:
            yield client
    finally:
        stop.set()
        await task


def code_of(body: dict[str, Any]) -> str:
    """A refusal's COMPAT code, in either dialect (OpenAI's routes keep it in `details`)."""
    error = body["error"]
    return error if isinstance(error, str) else str(body["details"]["code"])


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"X-Runtime-Token": token}


@dataclass
class World:
    client: httpx.AsyncClient
    registry: Registry

    async def create(self, name: str, **spec: Any) -> rpb.Agent:
        spec.setdefault("template_id", "simple-test")
        status = spec.pop("status", rpb.AGENT_STATUS_ACTIVE)
        for _ in range(100):  # until the registry has seen the catalogue entry
            try:
                reply = await self.registry.stub().CreateAgent(
                    rpb.CreateAgentRequest(spec=proto_spec(name=name, **spec), status=status)
                )
                return reply.agent
            except Exception:
                await asyncio.sleep(0.05)
        raise AssertionError("the registry never accepted the agent")


@dataclass
class Stack:
    """Registry, tools, executor and the gateway in front of them, all in the test's loop."""

    client: httpx.AsyncClient
    system: System

    async def agent(self, **values: Any) -> str:
        """Create an active agent (offline provider by default); its id."""
        values.setdefault("template_id", "simple-test")
        return (await self.system.create_agent(**values)).id


AGENT_KEYS = {
    "id",
    "name",
    "template_id",
    "template_version",
    "status",
    "configuration",
    "created_at",
    "updated_at",
    "metadata",
}
CONFIGURATION_KEYS = {
    "system_prompt",
    "llm_config_id",
    "conversation_config",
    "toolsets",
    "template_config",
}
# A run as /v1/runs answers it.
RUN_KEYS = {
    "run_id",
    "agent_id",
    "agent_version",
    "status",
    "task_id",
    "context_id",
    "created_at",
    "started_at",
    "finished_at",
    "usage",
    "tool_calls",
    "error",
    "executor_id",
    "attempts",
    "queued",
    "metadata",
    "multitask_strategy",
    "output",
    "finish_reason",
    "rolled_back",
}
TEMPLATE_KEYS = {"id", "framework", "name", "description", "version", "config"}


def keyring(**roles: tuple[str, str | None]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Fresh keys by name, and their `AGENTRT_GATEWAY_API_KEYS` entries (digests only)."""
    keys: dict[str, str] = {}
    entries: list[dict[str, Any]] = []
    for name, (role, owner) in roles.items():
        key, digest = new_key()
        keys[name] = key
        entries.append({"id": name, "sha256": digest, "role": role, "owner": owner})
    return keys, entries


def frames(text: str) -> list[Any]:
    """The data payloads of an event stream, `[DONE]` as a string."""
    found: list[Any] = []
    for block in text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            payload = block.removeprefix("data: ")
            found.append(payload if payload == "[DONE]" else json.loads(payload))
    return found
