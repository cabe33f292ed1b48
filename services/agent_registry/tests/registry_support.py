"""Helpers shared by the registry's tests (importable: tests dir is on pythonpath)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent_registry.config import Settings
from agent_registry.domain.agent import CommandContext
from agent_registry.domain.executors import ExecutorReport, SandboxRuntime
from agent_registry.domain.templates import TemplateDescriptor
from agent_registry.main import serve
from agentrt.registry.v1 import registry_pb2 as pb
from agentrt.registry.v1 import registry_pb2_grpc as pb_grpc
from agentrt_kit.grpc.structs import fill
from agentrt_testkit.inloop import InLoopService

SIMPLE = TemplateDescriptor(
    id="simple-test",
    version="1.0.0",
    name="Simple test",
    framework="langgraph",
    config_schema={
        "type": "object",
        "properties": {
            "response_prefix": {"type": "string", "maxLength": 50},
            "system_prompt": {"type": "string"},
        },
        "additionalProperties": False,
    },
)
WORKFLOW = TemplateDescriptor(
    id="langgraph-workflow",
    version="2.1.0",
    framework="langgraph",
    config_schema={
        "type": "object",
        "required": ["steps"],
        "properties": {
            "steps": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "prompt"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "prompt": {"type": "string"},
                        "timeout": {"type": "integer", "minimum": 1},
                    },
                },
            },
            "max_retries": {"type": "integer", "minimum": 0, "maximum": 10},
        },
    },
)
# Shaped like the executors' `langgraph-workflow` and `task` schemas: steps keyed by
# id, else name (a name may stand for its step), or by id, else `step_<n>`.
_STEP = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "id": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "null"}]},
        "name": {"type": "string", "minLength": 1},
        "depends_on": {"type": "array", "items": {"type": "string"}},
        "timeout": {
            "anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}],
            "x-agentrt-ceiling": "run_timeout_seconds",
        },
    },
}
FLOW = TemplateDescriptor(
    id="flow",
    version="1.0.0",
    framework="langgraph",
    config_schema={
        "type": "object",
        "required": ["steps"],
        "properties": {
            "steps": {
                "type": "array",
                "items": {"$ref": "#/$defs/Step"},
                "x-agentrt-acyclic": {"key": ["id", "name"], "aliases": ["name"]},
                "x-agentrt-ceiling": {"limit": "max_steps", "reserve": 3},
            },
            "step_timeout": {"type": "integer", "x-agentrt-ceiling": "run_timeout_seconds"},
        },
        "$defs": {"Step": _STEP},
    },
)
TASKS = TemplateDescriptor(
    id="tasks",
    version="1.0.0",
    config_schema={
        "type": "object",
        "properties": {
            "steps": {
                "type": "array",
                "items": {"anyOf": [{"type": "string"}, {"type": "object"}]},
                "x-agentrt-acyclic": {
                    "key": ["id"],
                    "depends_on": "depends_on",
                    "default_key": "step_{n}",
                    "reserved": ["synthesis"],
                },
            },
        },
    },
)
CTX = CommandContext(actor="tester", request_id="req-1")


class _CodeSource(BaseModel):
    type: Literal["inline", "file"]
    content: str
    entryPoint: str = "main"
    dependencies: list[str] = []


class _Runtime(BaseModel):
    language: Literal["python", "javascript"] = "python"
    version: str = ""
    timeout: int = Field(30, ge=1, le=300)
    memoryLimit: int = Field(256, ge=64, le=2048)


class _CustomConfig(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"x-agentrt-code": {"source": "codeSource", "runtime": "runtime"}}
    )
    codeSource: _CodeSource
    runtime: _Runtime = Field(default_factory=_Runtime)


# Shaped like the executors' `custom` template: the schema pydantic makes of its config.
CODE = TemplateDescriptor(
    id="custom", version="1.0.0", config_schema=_CustomConfig.model_json_schema()
)
# What a tools service's sandbox publishes (a few of the real modules).
PYTHON = SandboxRuntime("python", "3.11.2", frozenset({"json", "os", "re", "xml", "asyncio"}))
NODE = SandboxRuntime("javascript", "20.19.2", frozenset({"fs", "fs/promises", "path", "util"}))


def executor_report(
    executor_id: str = "exec-1",
    providers: tuple[str, ...] = ("offline", "gpt"),
    *,
    expires_in: float = 180.0,
    published_ago: float = 0.0,
    runtimes: tuple[SandboxRuntime, ...] = (),
    **limits: float,
) -> ExecutorReport:
    """An executor's catalogue entry, live for `expires_in` seconds from now."""
    now = time.time()
    return ExecutorReport(
        executor_id=executor_id,
        providers=frozenset(providers),
        expires_at=now + expires_in,
        published_at=now - published_ago,
        limits=limits or {"run_timeout_seconds": 300.0, "max_steps": 10.0},
        runtimes=runtimes,
    )


def executor_document(report: ExecutorReport) -> dict[str, Any]:
    """The entry as an executor publishes it."""
    return {
        "executor_id": report.executor_id,
        "providers": sorted(report.providers),
        "default_provider": "offline",
        "limits": dict(report.limits),
        "published_at": report.published_at,
        "expires_at": report.expires_at,
        "sandbox": {
            "available": bool(report.runtimes),
            "isolation": "bubblewrap" if report.runtimes else "",
            "reason": "" if report.runtimes else "bubblewrap is not installed",
            "runtimes": [
                {"language": r.language, "version": r.version, "modules": sorted(r.modules)}
                for r in report.runtimes
            ],
        },
    }


def spec(**overrides: Any) -> dict[str, Any]:
    """A valid spec for the simple-test template."""
    base: dict[str, Any] = {
        "name": "Support bot",
        "template_id": "simple-test",
        "template_config": {"response_prefix": ">> "},
    }
    base.update(overrides)
    return base


def proto_spec(**overrides: Any) -> pb.AgentSpec:
    """A proto spec built from `spec(**overrides)`."""
    return fill(pb.AgentSpec(), spec(**overrides))


class Registry(InLoopService[Settings, pb_grpc.AgentRegistryStub]):
    """A registry service running in the test's loop, and ways to talk to it."""

    serve = staticmethod(serve)
    stub_class = pb_grpc.AgentRegistryStub


def sqlite_registry(path: Path, nats_url: str, prefix: str) -> Registry:
    """A registry on SQLite at `path`, in the test's loop (call `start()`)."""
    return Registry(
        Settings(
            port=0,
            nats_url=nats_url,
            nats_prefix=prefix,
            service_token=None,
            persistence="sqlite",
            sqlite_path=path,
        )
    )
