"""Chat completions through the gateway, over a real registry, tools service and executor."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from executor_support import eventually, offline, services_config
from gateway_support import ERROR_KEYS, Stack, auth, code_of, frames

from agentrt.executor.v1 import executor_pb2 as pb

MakeStack = Callable[..., Awaitable[Stack]]
SLOW = services_config(slow=offline(latency_ms=400, token_latency_ms=60))


def chat(agent_id: str, *texts: str, **extra: Any) -> dict[str, Any]:
    return {"model": agent_id, "messages": [{"role": "user", "content": t} for t in texts], **extra}


async def test_a_completion_has_the_openai_shape_real_usage_and_the_task(stack: Stack) -> None:
    agent_id = await stack.agent(name="echo")
    reply = await stack.client.post(
        "/v1/chat/completions",
        json=chat(agent_id, "hello there", metadata={"context_id": "ctx-1"}),
        headers=auth(),
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == agent_id
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert "hello there" in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    meta = body["metadata"]
    assert len(meta["task_id"]) == 32
    assert meta["context_id"] == "ctx-1"
    run = await stack.system.executor.GetRun(pb.GetRunRequest(run_id=meta["run_id"]))
    assert (run.run.task_id, run.run.context_id) == (meta["task_id"], "ctx-1")


async def test_the_task_id_given_is_echoed_and_sampling_reaches_the_model(stack: Stack) -> None:
    agent_id = await stack.agent(name="sampled")
    reply = await stack.client.post(
        "/v1/chat/completions/",
        json=chat(
            agent_id, "one two three four five six", max_tokens=2, metadata={"task_id": "t-42"}
        ),
        headers=auth(),
    )
    body = reply.json()
    assert reply.status_code == 200, body
    assert body["metadata"]["task_id"] == "t-42"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] <= 2


async def test_an_integral_number_is_an_integer_as_in_json_schema(stack: Stack) -> None:
    agent_id = await stack.agent(name="integral")
    reply = await stack.client.post(
        "/v1/chat/completions",
        json=chat(agent_id, "one two three four five six", max_tokens=2.0),
        headers=auth(),
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["finish_reason"] == "length"


async def test_a_stream_relays_chunks_with_role_first_and_done_last(stack: Stack) -> None:
    agent_id = await stack.agent(name="streamer")
    request = chat(agent_id, "stream me please", metadata={"context_id": "c9"})
    plain = (await stack.client.post("/v1/chat/completions", json=request, headers=auth())).json()
    reply = await stack.client.post(
        "/v1/chat/completions", json={**request, "stream": True}, headers=auth()
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    found = frames(reply.text)
    assert found[-1] == "[DONE]"
    chunks = found[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert all(c["metadata"]["context_id"] == "c9" for c in chunks)
    assert len({c["metadata"]["task_id"] for c in chunks}) == 1
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == plain["choices"][0]["message"]["content"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert "usage" not in chunks[-1]


async def test_include_usage_adds_a_usage_chunk_before_done(stack: Stack) -> None:
    agent_id = await stack.agent(name="usage")
    reply = await stack.client.post(
        "/v1/chat/completions",
        json=chat(agent_id, "count me", stream=True, stream_options={"include_usage": True}),
        headers=auth(),
    )
    found = frames(reply.text)
    assert found[-1] == "[DONE]"
    last = found[-2]
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] > 0
    assert last["usage"]["total_tokens"] == (
        last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"]
    )
    assert all(c["usage"] is None for c in found[:-2])


@pytest.mark.parametrize("stream", [False, True])
async def test_an_unknown_agent_is_a_404_before_any_streaming(stack: Stack, stream: bool) -> None:
    reply = await stack.client.post(
        "/v1/chat/completions", json=chat("nobody", "hi", stream=stream), headers=auth()
    )
    assert reply.status_code == 404
    assert reply.headers["content-type"] == "application/json"
    assert set(reply.json()) == ERROR_KEYS
    assert code_of(reply.json()) == "AGENT_NOT_FOUND"


async def test_an_inactive_agent_is_refused_with_a_conflict(stack: Stack) -> None:
    agent_id = await stack.agent(name="sleeping", status=3)  # AGENT_STATUS_INACTIVE
    reply = await stack.client.post(
        "/v1/chat/completions", json=chat(agent_id, "hi"), headers=auth()
    )
    assert reply.status_code == 409, reply.text
    assert reply.json()["details"]["reason"] == "AGENT_INACTIVE"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "a", "messages": []}, "body.messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, "body.model"),
        ({"model": "a", "messages": [{"role": "robot", "content": "x"}]}, "body.messages.0"),
        ({"model": "a", "messages": [{"role": "system", "content": "x"}]}, "body"),
        (
            {"model": "a", "messages": [{"role": "user", "content": "x" * 32_001}]},
            "body.messages.0",
        ),
        (
            {"model": "a", "messages": [{"role": "user", "content": "x"}], "temperature": 3},
            "body.temperature",
        ),
        ({"model": "a", "messages": [{"role": "user", "content": "x"}], "n": 2}, "body.n"),
        (
            {"model": "a", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "body.messages.0",
        ),
        (
            {"model": "a", "messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5},
            "body.stop",
        ),
        # Types are as the OpenAPI document says: no 0 for false, no "5" for 5.
        (
            {
                "model": "a",
                "messages": [{"role": "user", "content": "x"}],
                "stream_options": {"include_usage": 0},
            },
            "body.stream_options.include_usage",
        ),
        (
            {"model": "a", "messages": [{"role": "user", "content": "x"}], "stream": "true"},
            "body.stream",
        ),
        (
            {"model": "a", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"},
            "body.max_tokens",
        ),
        (
            {"model": "a", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2.5},
            "body.max_tokens",
        ),
    ],
)
async def test_bad_chat_input_is_a_400_naming_the_field(
    stack: Stack, body: dict[str, Any], field: str
) -> None:
    reply = await stack.client.post("/v1/chat/completions", json=body, headers=auth())
    assert reply.status_code == 400, reply.text
    error = reply.json()
    assert set(error) == ERROR_KEYS
    assert code_of(error) == "VALIDATION_ERROR"
    assert any(f["field"].startswith(field) for f in error["details"]["fields"]), error


async def test_message_count_and_length_limits_are_settings(make_stack: MakeStack) -> None:
    stack = await make_stack(max_messages=2, max_message_chars=10)
    agent_id = await stack.agent(name="limited")
    too_many = await stack.client.post(
        "/v1/chat/completions", json=chat(agent_id, "a", "b", "c"), headers=auth()
    )
    assert too_many.status_code == 400
    assert too_many.json()["details"]["fields"][0]["field"] == "body.messages"
    too_long = await stack.client.post(
        "/v1/chat/completions", json=chat(agent_id, "x" * 11), headers=auth()
    )
    assert too_long.status_code == 400
    assert too_long.json()["details"]["fields"][0]["field"] == "body.messages.0.content"


async def test_text_parts_and_developer_messages_are_taken(stack: Stack) -> None:
    agent_id = await stack.agent(name="parts")
    reply = await stack.client.post(
        "/v1/chat/completions",
        json={
            "model": agent_id,
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "split "},
                        {"type": "text", "text": "text"},
                    ],
                },
            ],
        },
        headers=auth(),
    )
    assert reply.status_code == 200, reply.text
    assert "split text" in reply.json()["choices"][0]["message"]["content"]


async def test_a_failure_after_streaming_began_ends_with_an_error_chunk(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack({"services_config": SLOW, "run_timeout_seconds": 0.5})
    agent_id = await stack.agent(name="too slow", llm_config_id="slow")
    reply = await stack.client.post(
        "/v1/chat/completions",
        json=chat(agent_id, " ".join(["word"] * 40), stream=True),
        headers=auth(),
    )
    assert reply.status_code == 200
    found = frames(reply.text)
    assert found[-1] == "[DONE]"
    last = found[-2]["choices"][0]
    assert last["finish_reason"] == "error"
    assert "TIMEOUT" in last["delta"]["content"]


async def test_a_timed_out_completion_is_a_408(make_stack: MakeStack) -> None:
    stack = await make_stack({"services_config": SLOW, "run_timeout_seconds": 0.3})
    agent_id = await stack.agent(name="too slow", llm_config_id="slow")
    reply = await stack.client.post(
        "/v1/chat/completions", json=chat(agent_id, " ".join(["word"] * 40)), headers=auth()
    )
    assert reply.status_code == 408, reply.text
    error = reply.json()
    assert code_of(error) == "TIMEOUT_ERROR"
    assert error["details"]["reason"] == "TIMEOUT"


async def test_equal_timeouts_report_the_runs_own_timeout_with_its_ids(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(
        {"services_config": SLOW, "run_timeout_seconds": 0.3}, run_timeout_seconds=0.3
    )
    agent_id = await stack.agent(name="same deadline", llm_config_id="slow")
    reply = await stack.client.post(
        "/v1/chat/completions", json=chat(agent_id, " ".join(["word"] * 40)), headers=auth()
    )
    assert reply.status_code == 408, reply.text
    details = reply.json()["details"]
    assert details["reason"] == "TIMEOUT"
    run = await stack.system.executor.GetRun(pb.GetRunRequest(run_id=details["run_id"]))
    assert run.run.status == "timed_out"
    assert reply.headers["x-should-retry"] == "false"  # a run may have had side effects


async def test_a_client_that_goes_away_cancels_the_run(make_stack: MakeStack) -> None:
    stack = await make_stack({"services_config": SLOW})
    agent_id = await stack.agent(name="abandoned", llm_config_id="slow")
    request = chat(agent_id, " ".join(["word"] * 200), stream=True)
    async with stack.client.stream(
        "POST", "/v1/chat/completions", json=request, headers=auth()
    ) as reply:
        lines = reply.aiter_lines()
        first = json.loads((await anext(lines)).removeprefix("data: "))
    run_id = first["metadata"]["run_id"]

    async def cancelled() -> bool:
        run = (await stack.system.executor.GetRun(pb.GetRunRequest(run_id=run_id))).run
        return run.status == "cancelled"

    await eventually(cancelled, timeout=10)


async def test_health_reports_checks_and_execution_numbers(stack: Stack) -> None:
    agent_id = await stack.agent(name="counted")
    await stack.client.post("/v1/chat/completions", json=chat(agent_id, "hi"), headers=auth())
    await stack.client.post("/v1/chat/completions", json=chat("nobody", "hi"), headers=auth())
    for path in ("/v1/health", "/v1/health/"):
        reply = await stack.client.get(path, headers=auth())
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["status"] == "healthy"
        assert set(body) == {
            "status",
            "timestamp",
            "version",
            "uptime_seconds",
            "checks",
            "metrics",
            "queue",
            "sandbox",
        }
        assert set(body["checks"]) == {"registry", "executor", "nats"}
        assert body["queue"]["status"] == "ok"  # the run queue's figures (test_gateway_queues)
        # Whatever this machine's tools service can do, reported (test_gateway_http).
        assert isinstance(body["sandbox"]["available"], bool)
        assert all(
            c["status"] == "ok" and c["response_time_ms"] >= 0 for c in body["checks"].values()
        )
        metrics = body["metrics"]
        assert metrics["total_executions"] == 2
        assert metrics["error_rate"] == 0.5
        assert metrics["active_agents"] == 0
        assert metrics["average_response_time_ms"] > 0


async def test_health_is_503_with_the_same_body_when_a_dependency_is_down(stack: Stack) -> None:
    await stack.system.executors[0].stop()
    reply = await stack.client.get("/v1/health", headers=auth())
    assert reply.status_code == 503
    body = reply.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["executor"]["status"] == "down"
    assert body["checks"]["registry"]["status"] == "ok"
    assert body["queue"] == {"status": "unavailable"}
    stack.system.executors.clear()


async def test_an_executor_that_is_down_is_a_503_not_a_500(stack: Stack) -> None:
    agent_id = await stack.agent(name="orphan")
    await stack.system.executors[0].stop()
    stack.system.executors.clear()
    reply = await stack.client.post(
        "/v1/chat/completions", json=chat(agent_id, "hi"), headers=auth()
    )
    assert reply.status_code == 503, reply.text
    assert code_of(reply.json()) == "SERVICE_UNAVAILABLE"


async def test_concurrent_completions_each_get_their_own_answer(stack: Stack) -> None:
    agent_id = await stack.agent(name="busy")
    replies = await asyncio.gather(
        *(
            stack.client.post(
                "/v1/chat/completions", json=chat(agent_id, f"message {i}"), headers=auth()
            )
            for i in range(10)
        )
    )
    for i, reply in enumerate(replies):
        assert f"message {i}" in reply.json()["choices"][0]["message"]["content"]
