"""Model providers: OpenAI-compatible servers (a local fake) and the offline model.

Every test stays on 127.0.0.1: the OpenAI-compatible provider talks to
`fake_openai.FakeOpenAI`, and the fallback is the offline model. Providers are
built the way the executor builds them — `parse_services_config` then
`ProviderModels.for_agent` — so these tests cover the sampling merge, retries,
failover and circuit breakers of `RoutedChatModel` over the real
langchain-openai client.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest
from fake_openai import DEFAULT_CONTENT, FakeOpenAI
from langchain_core.callbacks import get_usage_metadata_callback
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from pydantic import Field

from agent_executor.adapters import models as models_module
from agent_executor.adapters.memory import (
    InMemoryAgents,
    InMemoryRunStore,
    InMemoryTools,
    ListEventSink,
    LocalCancelBus,
)
from agent_executor.adapters.models import ProviderModels
from agent_executor.adapters.providers.offline import OfflineChatModel, ScriptStep
from agent_executor.application.builtin.conversation import Conversation
from agent_executor.application.context import RunContext, Sampling, current_run
from agent_executor.application.model import Route, RoutedChatModel, agent_sampling
from agent_executor.application.ports import ModelProblem
from agent_executor.application.runs import InputMessage, RunRequest, RunService
from agent_executor.application.templates import TemplateCatalog
from agent_executor.domain.agents import AgentSnapshot
from agent_executor.domain.limits import RunLimits
from agent_executor.domain.runs import MessageCompleted, MessageDelta, RunCompleted, RunStatus
from agent_executor.domain.services_config import parse_services_config
from agent_executor.errors import LimitExceeded, ProviderFailed
from agentrt_kit.concurrency import run_inline
from agentrt_kit.resilience import CircuitBreaker

AGENT = AgentSnapshot(
    id="agent-1", version=1, status="active", name="Agent", template_id="conversation"
)


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@tool
def shout(text: str) -> str:
    """Shout the text."""
    return text.upper()


def provider(server: FakeOpenAI, kind: str = "openai", **values: Any) -> dict[str, Any]:
    """A provider entry of the services config pointing at the fake server."""
    return {"type": kind, "model": "fake-model", "base_url": server.url, **values}


def routed(
    server: FakeOpenAI,
    *,
    kind: str = "openai",
    fallback: bool = False,
    env: Mapping[str, str] | None = None,
    timeout: float = 2.0,
    retries: int = 0,
    breaker_failures: int = 5,
    breaker_cooldown: float = 30.0,
    **values: Any,
) -> RoutedChatModel:
    """The agent's model over one OpenAI-compatible provider (and the offline fallback)."""
    providers: dict[str, Any] = {"primary": provider(server, kind, **values)}
    llm: dict[str, Any] = {"providers": providers, "default_provider": "primary"}
    if fallback:
        providers["backup"] = {"type": "offline"}
        llm["fallback_provider"] = "backup"
    config = parse_services_config({"llm": llm}, env or {})
    models = ProviderModels(
        config,
        timeout=timeout,
        retries=retries,
        breaker_failures=breaker_failures,
        breaker_cooldown=breaker_cooldown,
    )
    return models.for_agent(AGENT)


@contextmanager
def running(
    sampling: Sampling | None = None, conversation_config: Mapping[str, Any] | None = None
) -> Iterator[RunContext]:
    """Act as code inside a run with these request and agent sampling parameters."""
    ctx = RunContext(
        run_id="run-1",
        agent_id=AGENT.id,
        agent_version=1,
        task_id="task-1",
        workspace=AGENT.id,
        limits=RunLimits(),
        sampling=sampling or Sampling(),
        agent_sampling=agent_sampling(conversation_config or {}),
    )
    token = current_run.set(ctx)
    try:
        yield ctx
    finally:
        current_run.reset(token)


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [chunk async for chunk in stream]


def joined(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


# ------------------------------------------------------- OpenAI-compatible: replies


async def test_openai_provider_answers_and_reports_the_servers_token_usage(
    server: FakeOpenAI,
) -> None:
    server.reply("The answer is 4.", prompt_tokens=21, completion_tokens=5)
    model = routed(server)

    with get_usage_metadata_callback() as usage:
        reply = await model.ainvoke([HumanMessage("What is 2 + 2?")])

    assert reply.content == "The answer is 4."
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["input_tokens"] == 21
    assert reply.usage_metadata["output_tokens"] == 5
    assert reply.usage_metadata["total_tokens"] == 26
    assert sum(u["total_tokens"] for u in usage.usage_metadata.values()) == 26
    (body,) = server.bodies
    assert body["model"] == "fake-model"
    assert body["messages"] == [{"role": "user", "content": "What is 2 + 2?"}]
    assert not body.get("stream")


async def test_openai_provider_streams_chunks_that_add_up_to_the_reply_with_usage(
    server: FakeOpenAI,
) -> None:
    server.reply("one two three four", prompt_tokens=9, completion_tokens=4)
    model = routed(server)

    chunks = await collect(model.astream("count"))

    texts = [c.content for c in chunks if c.content]
    assert len(texts) >= 4  # really streamed, not one block
    assert "".join(texts) == "one two three four"
    total = joined(chunks)
    assert total.usage_metadata is not None
    assert total.usage_metadata["input_tokens"] == 9
    assert total.usage_metadata["output_tokens"] == 4
    (body,) = server.bodies
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_openai_provider_returns_tool_calls_and_sends_the_tool_schemas(
    server: FakeOpenAI,
) -> None:
    call = {"name": "add", "arguments": {"a": 2, "b": 3}, "id": "call_42"}
    server.reply(None, tool_calls=[call])
    server.reply(None, tool_calls=[call])
    model = routed(server).bind_tools([add, shout], tool_choice="add")

    reply = await model.ainvoke("add 2 and 3")
    streamed = joined(await collect(model.astream("add 2 and 3")))

    for message in (reply, streamed):
        assert message.tool_calls == [
            {"name": "add", "args": {"a": 2, "b": 3}, "id": "call_42", "type": "tool_call"}
        ]
    for body in server.bodies:
        assert [t["function"]["name"] for t in body["tools"]] == ["add", "shout"]
        assert body["tools"][0]["function"]["parameters"]["required"] == ["a", "b"]
        assert body["tool_choice"] == {"type": "function", "function": {"name": "add"}}


async def test_a_tool_result_is_sent_back_in_the_openai_format(server: FakeOpenAI) -> None:
    model = routed(server)
    messages = [
        HumanMessage("add"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}]),
        ToolMessage("3", tool_call_id="c1", name="add"),
    ]

    await model.ainvoke(messages)

    sent = server.bodies[0]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "c1"
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"a": 1, "b": 2}
    assert sent[2] == {"role": "tool", "content": "3", "tool_call_id": "c1"}


# ------------------------------------------------------ OpenAI-compatible: sampling


async def test_sampling_precedence_is_request_over_agent_over_provider_defaults(
    server: FakeOpenAI,
) -> None:
    model = routed(server, temperature=0.1, max_tokens=100)
    agent = {"temperature": 0.5, "top_p": 0.9}
    request = Sampling(
        temperature=0.7, max_tokens=20, frequency_penalty=0.25, presence_penalty=-0.5
    )

    await model.ainvoke("provider defaults only")
    with running(conversation_config=agent):
        await model.ainvoke("agent over provider")
    with running(request, conversation_config=agent):
        await model.ainvoke("request over agent")

    keys = ("temperature", "max_completion_tokens", "top_p", "frequency_penalty")
    seen = [{k: b.get(k) for k in (*keys, "presence_penalty")} for b in server.bodies]
    assert seen == [
        {
            "temperature": 0.1,
            "max_completion_tokens": 100,
            "top_p": None,
            "frequency_penalty": None,
            "presence_penalty": None,
        },
        {
            "temperature": 0.5,
            "max_completion_tokens": 100,
            "top_p": 0.9,
            "frequency_penalty": None,
            "presence_penalty": None,
        },
        {
            "temperature": 0.7,
            "max_completion_tokens": 20,
            "top_p": 0.9,
            "frequency_penalty": 0.25,
            "presence_penalty": -0.5,
        },
    ]


async def test_request_sampling_reaches_a_streamed_call_too(server: FakeOpenAI) -> None:
    model = routed(server, temperature=0.1)

    with running(Sampling(temperature=1.5, top_p=0.2)):
        await collect(model.astream("hi"))

    (body,) = server.bodies
    assert body["temperature"] == 1.5
    assert body["top_p"] == 0.2


@pytest.mark.parametrize(
    ("kind", "sent", "not_sent"),
    [
        ("openai", "max_completion_tokens", "max_tokens"),
        ("vllm", "max_tokens", "max_completion_tokens"),
        ("openai-compatible", "max_tokens", "max_completion_tokens"),
        ("ollama", "max_tokens", "max_completion_tokens"),
    ],
)
async def test_the_token_limit_parameter_matches_the_provider_type(
    server: FakeOpenAI, kind: str, sent: str, not_sent: str
) -> None:
    model = routed(server, kind=kind, max_tokens=64)

    await model.ainvoke("provider default")
    with running(Sampling(max_tokens=8)):
        await collect(model.astream("request limit, streamed"))

    assert [b.get(sent) for b in server.bodies] == [64, 8]
    assert all(not_sent not in b for b in server.bodies)


async def test_stop_sequences_reach_the_server_request_replacing_the_agents(
    server: FakeOpenAI,
) -> None:
    model = routed(server)

    await model.ainvoke("none")
    with running(conversation_config={"stop": ["AGENT-STOP"]}):
        await model.ainvoke("agent")
    with running(Sampling(stop=("REQ-1", "REQ-2")), conversation_config={"stop": ["AGENT-STOP"]}):
        await model.ainvoke("request", stop=["CALL"])

    first, agent_only, request = server.bodies
    assert first.get("stop") is None
    assert agent_only["stop"] == ["AGENT-STOP"]
    assert request["stop"] == ["REQ-1", "REQ-2", "CALL"]


def test_agent_sampling_keeps_only_valid_values_from_the_conversation_config() -> None:
    assert agent_sampling(
        {
            "temperature": 1,
            "top_p": True,  # a bool is not a number
            "frequency_penalty": float("nan"),
            "presence_penalty": "0.5",
            "max_tokens": 2.5,
            "stop": ["x", 3],
            "memory": True,
        }
    ) == {"temperature": 1.0}
    assert agent_sampling({"max_tokens": 12.0, "stop": ["END"], "presence_penalty": -1}) == {
        "max_tokens": 12,
        "stop": ["END"],
        "presence_penalty": -1.0,
    }
    assert agent_sampling({"max_tokens": 0}) == {}


# -------------------------------------------------------- OpenAI-compatible: keys


async def test_the_configured_api_key_is_sent_as_a_bearer_token_after_env_expansion(
    server: FakeOpenAI,
) -> None:
    model = routed(server, api_key="${FAKE_PROVIDER_KEY}", env={"FAKE_PROVIDER_KEY": "sk-from-env"})

    await model.ainvoke("hi")

    assert server.requests[0].headers["authorization"] == "Bearer sk-from-env"


async def test_api_key_defaults_come_from_the_provider_types_variable_or_none(
    server: FakeOpenAI,
) -> None:
    from_type_env = routed(server, kind="openai", env={"OPENAI_API_KEY": "sk-openai-env"})
    placeholder_default = routed(server, kind="vllm", api_key="${MISSING:-sk-default}")
    keyless_local = routed(server, kind="ollama", env={"OPENAI_API_KEY": "sk-not-for-ollama"})

    for model in (from_type_env, placeholder_default, keyless_local):
        await model.ainvoke("hi")

    assert [r.headers["authorization"] for r in server.requests] == [
        "Bearer sk-openai-env",
        "Bearer sk-default",
        "Bearer not-needed",
    ]


async def test_base_url_placeholders_and_default_headers_from_metadata_are_used(
    server: FakeOpenAI,
) -> None:
    config = parse_services_config(
        {
            "llm": {
                "providers": {
                    "local": {
                        "type": "openai-compatible",
                        "model": "m",
                        "base_url": "${FAKE_BASE}",
                        "metadata": {"default_headers": {"X-Team": "${TEAM:-blue}"}},
                    }
                }
            }
        },
        {"FAKE_BASE": server.url},
    )
    model = ProviderModels(config, timeout=2.0, retries=0).for_agent(AGENT)

    assert (await model.ainvoke("hi")).content == DEFAULT_CONTENT
    assert server.requests[0].headers["x-team"] == "blue"


# ------------------------------------------------ OpenAI-compatible: failures


async def test_transient_errors_are_retried_inside_the_provider(server: FakeOpenAI) -> None:
    server.fail(500)
    server.fail(503)
    server.reply("third time lucky")
    model = routed(server, fallback=True, retries=2)

    reply = await model.ainvoke("hi")

    assert reply.content == "third time lucky"
    assert len(server.requests) == 3
    assert [r.headers.get("x-stainless-retry-count") for r in server.requests] == ["0", "1", "2"]


async def test_a_rate_limit_is_retried(server: FakeOpenAI) -> None:
    server.fail(429, "slow down")
    server.reply("ok now")
    model = routed(server, retries=1)

    assert (await model.ainvoke("hi")).content == "ok now"
    assert len(server.requests) == 2


async def test_when_retries_run_out_the_fallback_answers(server: FakeOpenAI) -> None:
    server.fail(500)
    server.fail(500)
    model = routed(server, fallback=True, retries=1)

    reply = await model.ainvoke("hi")

    assert reply.content == "You said: hi"  # the offline fallback
    assert len(server.requests) == 2


async def test_without_a_fallback_a_provider_outage_fails_the_call(server: FakeOpenAI) -> None:
    server.fail(502, "bad gateway")
    model = routed(server, retries=0)

    with pytest.raises(ProviderFailed, match="primary") as caught:
        await model.ainvoke("hi")

    assert "502" in caught.value.message
    assert caught.value.code == "PROVIDER_ERROR"


async def test_a_bad_request_is_neither_retried_nor_failed_over(server: FakeOpenAI) -> None:
    server.fail(400, "temperature is out of range", code="invalid_value")
    server.fail(400, "still bad")
    model = routed(server, fallback=True, retries=3, breaker_failures=1)

    with pytest.raises(ProviderFailed, match="temperature is out of range"):
        await model.ainvoke("hi")
    with pytest.raises(ProviderFailed, match="still bad"):
        await model.ainvoke("hi")  # the breaker did not count the first one

    assert len(server.requests) == 2


async def test_a_refused_key_fails_over_without_retrying(server: FakeOpenAI) -> None:
    server.fail(401, "invalid api key")
    model = routed(server, fallback=True, retries=3)

    reply = await model.ainvoke("hi")

    assert reply.content == "You said: hi"
    assert len(server.requests) == 1


async def test_a_slow_provider_times_out_and_the_fallback_answers(server: FakeOpenAI) -> None:
    server.delay(2.0)
    model = routed(server, fallback=True, timeout=0.2, retries=0)

    started = time.monotonic()
    reply = await model.ainvoke("hi")

    assert reply.content == "You said: hi"
    assert time.monotonic() - started < 1.5


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The clock of every circuit breaker ProviderModels makes."""
    fake = Clock()

    def breaker(threshold: int, cooldown: float, name: str = "") -> CircuitBreaker:
        return CircuitBreaker(threshold, cooldown, name=name, clock=fake)

    monkeypatch.setattr(models_module, "CircuitBreaker", breaker)
    return fake


async def test_an_open_circuit_skips_the_primary_until_the_cooldown_passes(
    server: FakeOpenAI, clock: Clock
) -> None:
    model = routed(server, fallback=True, retries=0, breaker_failures=2, breaker_cooldown=30)
    server.fail(500)
    server.fail(500)

    answers = [(await model.ainvoke("hi")).content for _ in range(2)]
    assert answers == ["You said: hi", "You said: hi"]
    assert len(server.requests) == 2  # now the circuit is open

    assert (await model.ainvoke("open")).content == "You said: open"
    clock.now += 29
    assert (await model.ainvoke("still open")).content == "You said: still open"
    assert len(server.requests) == 2

    clock.now += 2
    server.reply("primary is back")
    assert (await model.ainvoke("trial")).content == "primary is back"
    assert (await model.ainvoke("closed")).content == DEFAULT_CONTENT
    assert len(server.requests) == 4


async def test_a_failed_trial_reopens_the_circuit_for_another_cooldown(
    server: FakeOpenAI, clock: Clock
) -> None:
    model = routed(server, fallback=True, retries=0, breaker_failures=2, breaker_cooldown=10)
    for _ in range(3):
        server.fail(500)

    await model.ainvoke("a")
    await model.ainvoke("b")
    clock.now += 11
    assert (await model.ainvoke("trial")).content == "You said: trial"
    assert len(server.requests) == 3
    assert (await model.ainvoke("reopened")).content == "You said: reopened"
    assert len(server.requests) == 3


async def test_a_success_resets_the_failure_count(server: FakeOpenAI, clock: Clock) -> None:
    model = routed(server, fallback=True, retries=0, breaker_failures=2)
    server.fail(500)
    server.reply("fine")
    server.fail(500)

    await model.ainvoke("fails")
    await model.ainvoke("succeeds")
    await model.ainvoke("fails once more")
    await model.ainvoke("goes to the primary")

    assert len(server.requests) == 4  # two failures, but not in a row


async def test_with_every_circuit_open_calls_fail_fast(server: FakeOpenAI, clock: Clock) -> None:
    model = routed(server, retries=0, breaker_failures=1)
    server.fail(500)

    with pytest.raises(ProviderFailed):
        await model.ainvoke("down")
    with pytest.raises(ProviderFailed, match="circuit open"):
        await model.ainvoke("refused")
    with pytest.raises(ProviderFailed, match="circuit open"):
        await collect(model.astream("refused"))

    assert len(server.requests) == 1


async def test_at_half_open_one_call_tries_the_primary_while_the_others_fall_back(
    server: FakeOpenAI, clock: Clock
) -> None:
    model = routed(server, fallback=True, retries=0, breaker_failures=1, breaker_cooldown=10)
    server.fail(500)
    await model.ainvoke("opens the circuit")
    clock.now += 11
    server.reply("primary is back", delay=0.3)  # the trial is still running as others call

    answers = await asyncio.gather(*(model.ainvoke(f"q{i}") for i in range(5)))

    contents = [str(a.content) for a in answers]
    assert contents.count("primary is back") == 1
    assert sum(c.startswith("You said: q") for c in contents) == 4  # the offline fallback
    assert len(server.requests) == 2  # the opening failure and the one trial
    assert (await model.ainvoke("closed")).content == DEFAULT_CONTENT


class Outcomes(OfflineChatModel):
    """A model answering from a list: an exception is raised, a string is the reply."""

    outcomes: list[Any] = Field(default_factory=list)

    async def _agenerate(self, *args: Any, **kwargs: Any) -> ChatResult:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return ChatResult(generations=[ChatGeneration(message=AIMessage(outcome))])


async def test_a_fallback_past_its_cooldown_keeps_its_trial_for_a_call_that_needs_it() -> None:
    now = [0.0]
    first = Outcomes(outcomes=[ConnectionError("1"), "first is back", ConnectionError("3")])
    second = Outcomes(outcomes=[ConnectionError("1"), "second answers"])
    model = RoutedChatModel.over(
        [
            Route("first", first, CircuitBreaker(1, 10, clock=lambda: now[0])),
            Route("second", second, CircuitBreaker(1, 10, clock=lambda: now[0])),
        ],
        transient=lambda e: isinstance(e, ConnectionError),
    )
    with pytest.raises(ProviderFailed):
        await model.ainvoke("both fail: both circuits open")
    now[0] += 10

    # The first's trial answers: the second's breaker is not asked, so its trial is
    # still there when the first fails again.
    assert (await model.ainvoke("a")).content == "first is back"
    assert (await model.ainvoke("b")).content == "second answers"
    assert (first.outcomes, second.outcomes) == ([], [])


def test_synchronous_calls_retry_and_fail_over_the_same_way(server: FakeOpenAI) -> None:
    server.fail(500)
    server.reply("sync answer")
    server.fail(500)
    server.fail(500)
    model = routed(server, fallback=True, retries=1)

    assert model.invoke("first").content == "sync answer"
    assert model.invoke("second").content == "You said: second"
    assert len(server.requests) == 4


async def test_a_failing_stream_without_a_fallback_fails_the_call(server: FakeOpenAI) -> None:
    server.fail(503, "overloaded")
    model = routed(server, retries=0)

    with pytest.raises(ProviderFailed, match="overloaded"):
        await collect(model.astream("hi"))


async def test_a_run_failure_raised_by_a_provider_is_passed_on_unchanged() -> None:
    class Exhausted(OfflineChatModel):
        async def _agenerate(self, *args: Any, **kwargs: Any) -> Any:
            raise LimitExceeded("budget gone")

    model = RoutedChatModel.over(
        [
            Route("first", Exhausted(), CircuitBreaker(1, 30)),
            Route("second", OfflineChatModel(), CircuitBreaker(1, 30)),
        ],
        transient=lambda e: True,
    )

    for _ in range(2):  # neither failed over nor counted by the breaker (threshold 1)
        with pytest.raises(LimitExceeded, match="budget gone"):
            await model.ainvoke("hi")


async def test_a_stream_that_fails_before_its_first_chunk_fails_over(server: FakeOpenAI) -> None:
    model = routed(server, fallback=True, retries=0)
    server.fail(500)  # the HTTP request itself fails
    server.break_stream("never sent", after=0)  # 200, then an error event first

    for _ in range(2):
        chunks = await collect(model.astream("hi"))
        assert "".join(c.content for c in chunks) == "You said: hi"
    assert len(server.requests) == 2


async def test_a_stream_that_fails_after_producing_chunks_does_not_fail_over(
    server: FakeOpenAI,
) -> None:
    model = routed(server, fallback=True, retries=0)
    server.break_stream("one two three", after=2, message="connection lost")

    received: list[str] = []

    async def consume() -> None:
        async for chunk in model.astream("hi"):
            received.append(str(chunk.content))

    with pytest.raises(ProviderFailed, match="connection lost"):
        await consume()

    assert "".join(received) == "one two"  # no offline text mixed in
    assert len(server.requests) == 1


# ------------------------------------------------------- ProviderModels wiring


def test_an_agent_naming_an_unknown_provider_is_a_model_problem() -> None:
    models = ProviderModels(parse_services_config({}, {}))
    agent = AgentSnapshot(
        id="a", version=1, status="active", name="A", template_id="t", llm_config_id="gpt-9"
    )

    with pytest.raises(ModelProblem, match=r"'gpt-9'.*known: offline"):
        models.for_agent(agent)


def test_a_provider_the_adapter_cannot_build_is_a_model_problem_naming_it() -> None:
    config = parse_services_config(
        {"llm": {"providers": {"odd": {"type": "offline", "metadata": {"script": [{"x": 1}]}}}}},
        {},
    )

    with pytest.raises(ModelProblem, match=r"llm\.providers\.odd"):
        ProviderModels(config)


async def test_an_agent_on_its_own_provider_uses_the_fallback_only_as_second_route(
    server: FakeOpenAI,
) -> None:
    config = parse_services_config(
        {
            "llm": {
                "providers": {"main": provider(server), "spare": {"type": "offline"}},
                "fallback_provider": "spare",
            }
        },
        {},
    )
    models = ProviderModels(config, timeout=2.0, retries=0)
    on_spare = AgentSnapshot(
        id="b", version=1, status="active", name="B", template_id="t", llm_config_id="spare"
    )
    server.fail(500)

    assert (await models.for_agent(AGENT).ainvoke("hi")).content == "You said: hi"
    assert (await models.for_agent(on_spare).ainvoke("direct")).content == "You said: direct"
    assert len(server.requests) == 1  # the spare agent never touched the main provider


async def test_a_run_streams_an_openai_reply_with_the_requests_sampling(
    server: FakeOpenAI,
) -> None:
    server.reply("Streaming from the provider.", prompt_tokens=30, completion_tokens=6)
    config = parse_services_config(
        {"llm": {"providers": {"main": provider(server, temperature=0.2)}}}, {}
    )
    agent = AgentSnapshot(
        id="agent-1",
        version=1,
        status="active",
        name="A",
        template_id="conversation",
        system_prompt="Be brief.",
        conversation_config={"temperature": 0.9, "top_p": 0.5},
    )
    store = InMemoryRunStore()
    service = RunService(
        agents=InMemoryAgents(agent),
        catalog=TemplateCatalog([Conversation]),
        models=ProviderModels(config, timeout=2.0, retries=0),
        tools=InMemoryTools(),
        store=store,
        events=ListEventSink(),
        cancel_bus=LocalCancelBus(),
        services=config,
        call_store=run_inline,
    )

    handle = await service.start(
        RunRequest(
            "agent-1",
            [InputMessage("user", "hello")],
            sampling=Sampling(temperature=0.3, max_tokens=9, stop=("END",)),
        )
    )
    bodies = [e.body async for e in handle]

    deltas = [b.content for b in bodies if isinstance(b, MessageDelta)]
    assert len(deltas) > 1
    assert "".join(deltas) == "Streaming from the provider."
    assert [b.content for b in bodies if isinstance(b, MessageCompleted)] == [
        "Streaming from the provider."
    ]
    done = bodies[-1]
    assert isinstance(done, RunCompleted)
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (30, 6)
    record = store.get(handle.run_id)
    assert record is not None
    assert record.status is RunStatus.SUCCEEDED
    assert record.usage.total_tokens == 36
    (body,) = server.bodies
    assert body["temperature"] == 0.3
    assert body["top_p"] == 0.5
    assert body["max_completion_tokens"] == 9
    assert body["stop"] == ["END"]
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}


# ------------------------------------------------------------- offline model


def steps(*values: str | dict[str, Any]) -> list[ScriptStep]:
    return [
        ScriptStep(content=v) if isinstance(v, str) else ScriptStep.model_validate(v)
        for v in values
    ]


async def test_offline_model_echoes_the_latest_user_message() -> None:
    model = OfflineChatModel()

    reply = await model.ainvoke([HumanMessage("first"), AIMessage("x"), HumanMessage("second")])
    empty = await model.ainvoke([AIMessage("only the assistant spoke")])

    assert reply.content == "You said: second"
    assert reply.response_metadata["finish_reason"] == "stop"
    assert reply.tool_calls == []
    assert empty.content == "Hello."


async def test_offline_model_reads_the_text_parts_of_a_multipart_message() -> None:
    message = HumanMessage(content=[{"type": "text", "text": "look at "}, "this"])

    assert (await OfflineChatModel().ainvoke([message])).content == "You said: look at this"


async def test_offline_tool_directive_calls_a_bound_tool_only() -> None:
    model = OfflineChatModel()
    directive = [HumanMessage('/add {"a": 1, "b": 2}')]

    bound = await model.bind_tools([add]).ainvoke(directive)
    unbound = await model.ainvoke(directive)
    other_tool = await model.bind_tools([shout]).ainvoke(directive)

    assert bound.content == ""
    assert bound.tool_calls == [
        {"name": "add", "args": {"a": 1, "b": 2}, "id": "call_0_0", "type": "tool_call"}
    ]
    assert bound.response_metadata["finish_reason"] == "tool_calls"
    assert unbound.tool_calls == []
    assert unbound.content == 'You said: /add {"a": 1, "b": 2}'
    assert other_tool.tool_calls == []


async def test_offline_tool_directive_wraps_arguments_that_are_not_an_object() -> None:
    model = OfflineChatModel().bind_tools([shout])

    text = await model.ainvoke([HumanMessage("/shout hello there")])
    number = await model.ainvoke([HumanMessage("/shout 42")])
    bare = await model.ainvoke([HumanMessage("/shout")])

    assert text.tool_calls[0]["args"] == {"input": "hello there"}
    assert number.tool_calls[0]["args"] == {"input": 42}
    assert bare.tool_calls[0]["args"] == {}


async def test_offline_model_reports_a_tool_result_and_does_not_call_again() -> None:
    model = OfflineChatModel().bind_tools([add])
    messages = [
        HumanMessage('/add {"a": 1, "b": 2}'),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c"}]),
        ToolMessage("3", tool_call_id="c", name="add"),
    ]

    reply = await model.ainvoke(messages)

    assert reply.content == "add returned: 3"
    assert reply.tool_calls == []


async def test_offline_script_steps_follow_the_latest_user_message_with_placeholders() -> None:
    model = OfflineChatModel(
        script=steps(
            {"content": "Looking up {input}", "tool_calls": [{"name": "add", "args": {"a": 5}}]},
            "Got {tool_result} for {first_input}; I saw {message_count} messages",
        )
    ).bind_tools([add])
    first_turn = [HumanMessage("the start")]
    history = [*first_turn, AIMessage("earlier"), HumanMessage("sum it")]

    step_one = await model.ainvoke(history)
    step_two = await model.ainvoke(
        [
            *history,
            step_one,
            ToolMessage("5", tool_call_id=step_one.tool_calls[0]["id"], name="add"),
        ]
    )
    after_script = await model.ainvoke([*history, step_one, AIMessage("two"), HumanMessage("z")])

    assert step_one.content == "Looking up sum it"
    assert step_one.tool_calls == [
        {"name": "add", "args": {"a": 5}, "id": "call_1_0", "type": "tool_call"}
    ]
    assert step_two.content == "Got 5 for the start; I saw 5 messages"
    assert step_two.tool_calls == []
    assert after_script.content == "Looking up z"  # a new user message restarts the script


async def test_offline_script_tool_calls_come_only_when_tools_are_bound() -> None:
    script = steps({"content": "Calling", "tool_calls": [{"name": "add", "args": {}}]})

    bare = await OfflineChatModel(script=script).ainvoke("x")
    bound = await OfflineChatModel(script=script).bind_tools([shout]).ainvoke("x")

    assert bare.content == "Calling"
    assert bare.tool_calls == []
    assert bare.response_metadata["finish_reason"] == "stop"
    assert [c["name"] for c in bound.tool_calls] == ["add"]  # any bound tool unlocks calls


async def test_offline_model_answers_normally_once_the_script_runs_out() -> None:
    model = OfflineChatModel(script=steps("only step"))
    messages = [HumanMessage("hi"), AIMessage("only step")]

    assert (await model.ainvoke(messages)).content == "You said: hi"


async def test_offline_max_tokens_cuts_the_reply_with_finish_reason_length() -> None:
    model = OfflineChatModel(script=steps("one two three four five"))

    cut = await model.ainvoke("x", max_tokens=3)
    exact = await model.ainvoke("x", max_tokens=5)
    streamed = joined(await collect(model.astream("x", max_tokens=2)))

    assert cut.content == "one two three"
    assert cut.response_metadata["finish_reason"] == "length"
    assert cut.usage_metadata is not None
    assert cut.usage_metadata["output_tokens"] == 3
    assert exact.content == "one two three four five"
    assert exact.response_metadata["finish_reason"] == "stop"
    assert streamed.content == "one two"
    assert streamed.response_metadata["finish_reason"] == "length"


async def test_offline_stop_sequences_end_the_reply_at_the_first_match() -> None:
    model = OfflineChatModel(script=steps("alpha beta END gamma STOP delta"))

    at_end = await model.ainvoke("x", stop=["STOP", "END"])
    not_found = await model.ainvoke("x", stop=["OMEGA", ""])

    assert at_end.content == "alpha beta "
    assert at_end.response_metadata["finish_reason"] == "stop"
    assert not_found.content == "alpha beta END gamma STOP delta"


async def test_offline_usage_counts_words_of_prompt_and_reply() -> None:
    model = OfflineChatModel()

    reply = await model.ainvoke([HumanMessage("one two three")])
    call = await model.bind_tools([add]).ainvoke([HumanMessage('/add {"a": 1}')])

    # prompt: 3 words + 4 per message; reply "You said: one two three": 5 words
    assert reply.usage_metadata == {"input_tokens": 7, "output_tokens": 5, "total_tokens": 12}
    # a call costs its JSON arguments' length / 4, plus one
    assert call.usage_metadata is not None
    assert call.usage_metadata["output_tokens"] == len(json.dumps({"a": 1})) // 4 + 1


async def test_offline_streaming_gives_the_same_reply_as_a_single_call() -> None:
    model = OfflineChatModel(
        script=steps(
            {"content": "Calling now", "tool_calls": [{"name": "add", "args": {"a": 1, "b": 2}}]}
        )
    ).bind_tools([add])

    single = await model.ainvoke("go")
    chunks = await collect(model.astream("go"))
    streamed = joined(chunks)

    assert [c.content for c in chunks if c.content] == ["Calling", " now"]
    assert streamed.content == single.content == "Calling now"
    assert streamed.tool_calls == single.tool_calls
    assert streamed.usage_metadata == single.usage_metadata
    assert streamed.response_metadata["finish_reason"] == "tool_calls"


async def test_offline_latency_delays_the_reply_and_each_streamed_token() -> None:
    slow = OfflineChatModel(latency_ms=60)
    drip = OfflineChatModel(script=steps("a b c d"), latency_ms=20, token_latency_ms=20)

    started = time.monotonic()
    await slow.ainvoke("hi")
    replied = time.monotonic() - started
    started = time.monotonic()
    await collect(drip.astream("hi"))
    streamed = time.monotonic() - started

    assert replied >= 0.055
    assert streamed >= 0.095  # 20 ms first, then four tokens 20 ms apart


async def test_offline_provider_from_the_services_config_applies_request_sampling() -> None:
    config = parse_services_config(
        {
            "llm": {
                "providers": {
                    "scripted": {
                        "type": "offline",
                        "model": "offline-test",
                        "max_tokens": 50,
                        "metadata": {"script": [{"content": "a b c d e f"}]},
                    }
                }
            }
        },
        {},
    )
    model = ProviderModels(config).for_agent(AGENT)

    with running(Sampling(max_tokens=2, temperature=0.4)):
        reply = await model.ainvoke("x")
    unlimited = await model.ainvoke("x")

    assert reply.content == "a b"
    assert reply.response_metadata["finish_reason"] == "length"
    assert reply.response_metadata["model_name"] == "offline-test"
    assert reply.response_metadata["sampling"]["temperature"] == 0.4
    assert unlimited.content == "a b c d e f"
