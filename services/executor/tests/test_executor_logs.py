"""What the executor logs when runs fail, providers fall back and circuits open.

Real runs through `RunService` over providers built the way the executor builds
them (`ProviderModels`): the offline model, and an OpenAI-compatible provider
served by `fake_openai.FakeOpenAI` on 127.0.0.1. The log lines are read back
from pytest's `caplog` with their structured fields.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from fake_openai import FakeOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph

from agent_executor.adapters.memory import (
    InMemoryAgents,
    InMemoryRunStore,
    InMemoryTools,
    ListEventSink,
    LocalCancelBus,
)
from agent_executor.adapters.models import ProviderModels
from agent_executor.application.builtin.conversation import Conversation
from agent_executor.application.runs import InputMessage, RunRequest, RunService
from agent_executor.application.templates import AgentTemplate, AgentView, TemplateCatalog
from agent_executor.domain.agents import AgentSnapshot
from agent_executor.domain.runs import RunCompleted, RunFailed
from agent_executor.domain.services_config import parse_services_config
from agentrt_kit.concurrency import run_inline

RUNS_LOGGER = "agent_executor.application.run_driver"
MODEL_LOGGER = "agent_executor.application.model"
BREAKER_LOGGER = "agentrt_kit.resilience"


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)


def agent(**values: Any) -> AgentSnapshot:
    return AgentSnapshot(
        id="agent-7",
        version=3,
        status="active",
        name="Logged",
        **{"template_id": "conversation", **values},
    )


def service(
    llm: dict[str, Any], snapshot: AgentSnapshot, *templates: type[AgentTemplate]
) -> RunService:
    """A run service over the providers of `llm`; one failure opens a provider's circuit."""
    config = parse_services_config({"llm": llm}, {})
    return RunService(
        agents=InMemoryAgents(snapshot),
        catalog=TemplateCatalog(list(templates) or [Conversation]),
        models=ProviderModels(config, timeout=2.0, retries=0, breaker_failures=1),
        tools=InMemoryTools(),
        store=InMemoryRunStore(),
        events=ListEventSink(),
        cancel_bus=LocalCancelBus(),
        services=config,
        call_store=run_inline,
    )


async def run(svc: RunService, text: str = "hello") -> tuple[str, Any]:
    """Run the agent to its end: (run id, last event body)."""
    handle = await svc.start(RunRequest("agent-7", [InputMessage("user", text)]))
    bodies = [event.body async for event in handle]
    return handle.run_id, bodies[-1]


def logged(caplog: pytest.LogCaptureFixture, logger: str, message: str) -> list[dict[str, Any]]:
    """The `message` lines `logger` wrote, each as its attributes (extra fields included)."""
    return [vars(r) for r in caplog.records if r.name == logger and r.getMessage() == message]


def openai(server: FakeOpenAI) -> dict[str, Any]:
    return {"type": "openai", "model": "fake-model", "base_url": server.url}


async def test_a_timed_out_run_logs_one_warning_with_code_agent_and_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    svc = service(
        {"providers": {"slow": {"type": "offline", "metadata": {"latency_ms": 3000}}}},
        agent(conversation_config={"limits": {"timeout_seconds": 0.2}}),
    )

    run_id, last = await run(svc)

    assert isinstance(last, RunFailed)
    (line,) = logged(caplog, RUNS_LOGGER, "run failed")
    fields = ("levelname", "error_code", "agent_id", "agent_version", "run_id")
    assert [line[k] for k in fields] == ["WARNING", "TIMEOUT", "agent-7", 3, run_id]


async def test_a_provider_error_fails_the_run_with_one_warning(
    server: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    server.fail(500)
    svc = service({"providers": {"primary": openai(server)}}, agent())

    run_id, last = await run(svc)

    assert isinstance(last, RunFailed)
    (line,) = logged(caplog, RUNS_LOGGER, "run failed")
    assert [line[k] for k in ("levelname", "error_code", "run_id")] == [
        "WARNING",
        "PROVIDER_ERROR",
        run_id,
    ]


class Crashing(AgentTemplate):
    """A template whose graph raises what no one expects."""

    id = "crashing"
    name = "Crashing"
    version = "1.0.0"

    def build(self, agent: AgentView, model: Any, tools: Any) -> Any:
        def crash(state: MessagesState) -> dict[str, Any]:
            raise RuntimeError("a bug in the template")

        graph = StateGraph(MessagesState)
        graph.add_node("crash", crash)
        graph.add_edge(START, "crash")
        graph.add_edge("crash", END)
        return graph.compile()


async def test_an_unexpected_error_is_logged_once_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    svc = service(
        {"providers": {"offline": {"type": "offline"}}}, agent(template_id="crashing"), Crashing
    )

    run_id, last = await run(svc)

    assert isinstance(last, RunFailed)
    (line,) = logged(caplog, RUNS_LOGGER, "run failed")
    fields = ("levelname", "error_code", "agent_id", "agent_version", "run_id")
    assert [line[k] for k in fields] == ["ERROR", "INTERNAL", "agent-7", 3, run_id]
    assert "a bug in the template" in str(line["exc_info"][1])


async def test_a_cancelled_run_is_not_logged_as_failed(caplog: pytest.LogCaptureFixture) -> None:
    svc = service(
        {"providers": {"slow": {"type": "offline", "metadata": {"latency_ms": 3000}}}}, agent()
    )
    handle = await svc.start(RunRequest("agent-7", [InputMessage("user", "hi")]))
    await asyncio.sleep(0.1)

    assert await svc.cancel(handle.run_id)
    bodies = [event.body async for event in handle]

    assert isinstance(bodies[-1], RunFailed)
    assert bodies[-1].code == "CANCELLED"
    assert logged(caplog, RUNS_LOGGER, "run failed") == []


async def test_a_fallback_logs_both_providers_the_reason_and_the_agent(
    server: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    server.fail(500)
    llm = {
        "providers": {"primary": openai(server), "backup": {"type": "offline"}},
        "default_provider": "primary",
        "fallback_provider": "backup",
    }
    svc = service(llm, agent())

    first_run, first = await run(svc, "one")
    second_run, second = await run(svc, "two")  # the primary's circuit is open now

    assert isinstance(first, RunCompleted)
    assert isinstance(second, RunCompleted)
    assert len(server.requests) == 1
    fallbacks = logged(caplog, MODEL_LOGGER, "model provider fallback used")
    fields = ("levelname", "provider", "fallback_provider", "agent_id", "run_id")
    assert [[line[k] for k in fields] for line in fallbacks] == [
        ["WARNING", "primary", "backup", "agent-7", first_run],
        ["WARNING", "primary", "backup", "agent-7", second_run],
    ]
    assert fallbacks[0]["reason"].endswith("(HTTP 500)")  # the error's type, not its text
    assert fallbacks[1]["reason"] == "circuit open"
    assert logged(caplog, RUNS_LOGGER, "run failed") == []


async def test_a_circuit_opening_logs_the_provider_and_the_failure_count(
    server: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    server.fail(500)
    server.fail(500)
    svc = service({"providers": {"primary": openai(server)}}, agent())

    await run(svc)
    await run(svc)  # refused by the open circuit: no second opening

    (line,) = logged(caplog, BREAKER_LOGGER, "circuit opened")
    assert [line[k] for k in ("levelname", "dependency", "failures")] == ["WARNING", "primary", 1]
    assert len(server.requests) == 1


async def test_a_successful_run_logs_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    svc = service({"providers": {"offline": {"type": "offline"}}}, agent())

    _, last = await run(svc)

    assert isinstance(last, RunCompleted)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
