"""OpenAI parity through the gateway: models, parameters, errors, client tools, formats,
progress events and keepalives — over a real registry, tools service and executor."""

from __future__ import annotations

import json
from typing import Any

import pytest
from executor_support import offline, services_config
from gateway_support import Stack, auth, code_of


def chat(agent_id: str, *texts: str, **extra: Any) -> dict[str, Any]:
    return {"model": agent_id, "messages": [{"role": "user", "content": t} for t in texts], **extra}


def events(text: str) -> list[tuple[str | None, Any]]:
    """(event name, data) of each SSE event; comment lines are left out."""
    found: list[tuple[str | None, Any]] = []
    for block in text.split("\n\n"):
        name, data = None, None
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                payload = line.removeprefix("data: ")
                data = payload if payload == "[DONE]" else json.loads(payload)
        if data is not None:
            found.append((name, data))
    return found


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


async def test_models_are_the_runnable_agents_in_openais_shape(stack: Stack) -> None:
    running = await stack.agent(name="runnable")
    paused = await stack.agent(name="paused")
    await stack.client.patch(
        f"/v1/agents/{paused}/status", json={"status": "inactive"}, headers=auth()
    )
    listed = await stack.client.get("/v1/models", headers=auth())
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert running in ids
    assert paused not in ids
    model = next(m for m in body["data"] if m["id"] == running)
    assert set(model) == {"id", "object", "created", "owned_by"}
    assert model["object"] == "model"
    one = await stack.client.get(f"/v1/models/{running}", headers=auth())
    assert one.json() == model
    missing = await stack.client.get(f"/v1/models/{paused}", headers=auth())
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    assert code_of(missing.json()) == "AGENT_NOT_FOUND"


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"colour": "red"}, "colour", "unknown_parameter"),
        ({"logit_bias": {"abc": 1}}, "logit_bias", "invalid_value"),
        ({"logit_bias": {"50256": 101}}, "logit_bias.50256", "invalid_value"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs", "invalid_value"),
        ({"n": 2}, "n", "invalid_value"),
        ({"logit_bias": {"50256": 5}}, "logit_bias", "invalid_value"),
        ({"seed": 7}, "seed", "invalid_value"),
        ({"logprobs": True}, "logprobs", "invalid_value"),
        ({"parallel_tool_calls": False, "tools": [WEATHER]}, "parallel_tool_calls", None),
        ({"reasoning_effort": "high"}, "reasoning_effort", "invalid_value"),
    ],
)
async def test_openai_parameters_are_honoured_or_refused_naming_them(
    stack: Stack, extra: dict[str, Any], param: str, code: str | None
) -> None:
    agent_id = await stack.agent(name=f"params-{param}")
    reply = await stack.client.post(
        "/v1/chat/completions", json=chat(agent_id, "hi", **extra), headers=auth()
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert param in reply.text
    if code is not None:
        assert error["code"] == code
    assert reply.json()["detail"] == error["message"]


async def test_tool_choice_must_name_a_tool_that_was_given(stack: Stack) -> None:
    agent_id = await stack.agent(name="choice")
    reply = await stack.client.post(
        "/v1/chat/completions",
        json=chat(
            agent_id,
            "hi",
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        ),
        headers=auth(),
    )
    assert reply.status_code == 400
    assert "get_time" in reply.json()["error"]["message"]


async def test_openai_routes_answer_refusals_in_openais_body(stack: Stack) -> None:
    reply = await stack.client.post("/v1/chat/completions", json=chat("x", "hi"))
    assert reply.status_code == 401
    body = reply.json()
    assert body["error"]["type"] == "authentication_error"
    assert body["error"]["code"] == "invalid_api_key"
    assert body["detail"] == body["error"]["message"]
    missing = await stack.client.post(
        "/v1/chat/completions", json=chat("no-such-agent", "hi"), headers=auth()
    )
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    # The agent routes keep COMPAT's body.
    agent = await stack.client.get("/v1/agents/no-such-agent", headers=auth())
    assert agent.json()["error"] == "AGENT_NOT_FOUND"


async def test_a_client_tool_call_ends_the_run_and_the_tool_result_continues_it(
    stack: Stack,
) -> None:
    agent_id = await stack.agent(name="weather")
    first = await stack.client.post(
        "/v1/chat/completions",
        json=chat(agent_id, "Paris", tools=[WEATHER], tool_choice="required"),
        headers=auth(),
    )
    assert first.status_code == 200, first.text
    body = first.json()
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    follow_up = {
        "model": agent_id,
        "messages": [
            {"role": "user", "content": "Paris"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"},
        ],
        "tools": [WEATHER],
        "metadata": {"task_id": body["metadata"]["task_id"]},
    }
    second = await stack.client.post("/v1/chat/completions", json=follow_up, headers=auth())
    assert second.status_code == 200, second.text
    (choice,) = second.json()["choices"]
    assert choice["finish_reason"] == "stop"
    assert "sunny, 21 C" in choice["message"]["content"]


async def test_streamed_client_tool_calls_come_in_openais_chunk_shape(stack: Stack) -> None:
    agent_id = await stack.agent(name="weather-stream")
    reply = await stack.client.post(
        "/v1/chat/completions",
        json=chat(agent_id, "Paris", tools=[WEATHER], tool_choice="required", stream=True),
        headers=auth(),
    )
    assert reply.status_code == 200, reply.text
    chunks = [data for _, data in events(reply.text) if data != "[DONE]"]
    calls = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("tool_calls")]
    (named,), (arguments,) = (c["choices"][0]["delta"]["tool_calls"] for c in calls)
    # As OpenAI streams a call: a chunk that names it, then its arguments.
    assert named["index"] == arguments["index"] == 0
    assert named["id"].startswith("call")
    assert named["function"] == {"name": "get_weather", "arguments": ""}
    assert set(arguments) == {"index", "function"}
    assert json.loads(arguments["function"]["arguments"]) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_a_json_schema_answer_is_enforced(stack: Stack) -> None:
    agent_id = await stack.agent(name="structured")
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    reply = await stack.client.post(
        "/v1/chat/completions",
        json=chat(
            agent_id,
            "hello",
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": schema, "strict": True},
            },
        ),
        headers=auth(),
    )
    assert reply.status_code == 200, reply.text
    answer = json.loads(reply.json()["choices"][0]["message"]["content"])
    assert set(answer) == {"answer"}


async def test_progress_events_are_opt_in_and_leave_the_chunks_unchanged(stack: Stack) -> None:
    agent_id = await stack.agent(name="tooled", toolsets=["parse_url"])
    ask = '/parse_url {"url": "https://example.com/a?b=1"}'
    plain = await stack.client.post(
        "/v1/chat/completions", json=chat(agent_id, ask, stream=True), headers=auth()
    )
    with_progress = await stack.client.post(
        "/v1/chat/completions",
        json=chat(agent_id, ask, stream=True),
        headers={**auth(), "X-Agentrt-Progress": "true"},
    )
    assert plain.status_code == with_progress.status_code == 200
    assert all(name is None for name, _ in events(plain.text))
    named = [(n, d) for n, d in events(with_progress.text) if n is not None]
    kinds = [n for n, _ in named]
    assert "agentrt.tool_call_started" in kinds
    assert "agentrt.tool_call_finished" in kinds
    for _, data in named:
        assert data["object"] == "chat.completion.chunk"
        assert data["choices"] == []
        assert data["agentrt"]["type"] in ("tool_call_started", "tool_call_finished")
    started = next(d for n, d in named if n == "agentrt.tool_call_started")
    assert started["agentrt"]["tool_name"] == "parse_url"
    finished = next(d for n, d in named if n == "agentrt.tool_call_finished")
    # Every field of the event, also those at their zero value.
    assert set(finished["agentrt"]) == {
        "type",
        "tool_call_id",
        "tool_name",
        "ok",
        "result_preview",
    }

    def text(reply: Any) -> str:
        return "".join(
            d["choices"][0]["delta"].get("content") or ""
            for n, d in events(reply.text)
            if n is None and d != "[DONE]" and d["choices"]
        )

    assert text(plain) == text(with_progress)


async def test_a_quiet_stream_gets_keepalive_comments(make_stack: Any) -> None:
    slow = services_config(slow=offline(latency_ms=400))
    stack = await make_stack({"services_config": slow}, stream_keepalive_seconds=0.05)
    agent_id = await stack.agent(name="quiet", llm_config_id="slow")
    reply = await stack.client.post(
        "/v1/chat/completions", json=chat(agent_id, "hi", stream=True), headers=auth()
    )
    assert reply.status_code == 200
    assert ": keepalive\n\n" in reply.text
    assert reply.text.rstrip().endswith("data: [DONE]")


async def test_an_answer_off_its_format_is_an_error_the_client_sees(make_stack: Any) -> None:
    off = services_config(off=offline({"content": "sure, here it is: {}"}))
    stack = await make_stack({"services_config": off})
    agent_id = await stack.agent(name="off-format", llm_config_id="off")
    wanted = {"response_format": {"type": "json_object"}}
    reply = await stack.client.post(
        "/v1/chat/completions", json=chat(agent_id, "hi", **wanted), headers=auth()
    )
    assert reply.status_code == 502, reply.text
    body = reply.json()
    assert body["details"]["reason"] == "OUTPUT_INVALID"
    assert body["error"]["type"] == "server_error"
    assert "JSON" in body["error"]["message"]
    streamed = await stack.client.post(
        "/v1/chat/completions", json=chat(agent_id, "hi", stream=True, **wanted), headers=auth()
    )
    chunks = [d for _, d in events(streamed.text) if d != "[DONE]"]
    last = chunks[-1]["choices"][0]
    assert last["finish_reason"] == "error"
    assert "OUTPUT_INVALID" in last["delta"]["content"]


async def test_user_and_context_take_free_text_but_no_control_characters(stack: Stack) -> None:
    agent_id = await stack.agent(name="labels")
    fine = chat(
        agent_id, "hi", user="Jane Doe <jane@example.com>", metadata={"context_id": "ctx é 1"}
    )
    reply = await stack.client.post("/v1/chat/completions", json=fine, headers=auth())
    assert reply.status_code == 200, reply.text
    assert reply.json()["metadata"]["context_id"] == "ctx é 1"
    bad = chat(agent_id, "hi", user="line\nbreak")
    refused = await stack.client.post("/v1/chat/completions", json=bad, headers=auth())
    assert (refused.status_code, refused.json()["error"]["param"]) == (400, "user")
