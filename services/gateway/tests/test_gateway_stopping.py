"""A gateway that is stopping: what still waits on a run is answered, and the run goes on.

Each test stops a second gateway in front of the same system while a run is in flight,
and reads the run through the first one (as a client would through another replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from executor_support import eventually, offline, services_config
from gateway_support import Stack, auth, frames, running_gateway

from agent_gateway.adapters.http_errors import http_error
from agent_gateway.application.draining import Drained, unless_drained
from agent_gateway.config import Settings
from agent_gateway.errors import GatewayStopping

MakeStack = Callable[..., Awaitable[Stack]]
# A model that answers after 4 s, and one that streams 60 words at 50 ms a word.
LATE = services_config(late=offline(latency_ms=4000), wordy=offline(token_latency_ms=50))
GRACE = 2.0  # the stopping gateway answers what still waits 1 s after it was told to stop
WORDS = " ".join(f"w{n}" for n in range(60))


def chat(agent_id: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": agent_id, "messages": [{"role": "user", "content": text}], **extra}


@contextlib.asynccontextmanager
async def stopping_gateway(stack: Stack, stop: asyncio.Event) -> AsyncIterator[httpx.AsyncClient]:
    """Another gateway in front of the stack's services; setting `stop` stops it."""
    system = stack.system
    assert system.registry is not None
    async with running_gateway(
        stop,
        nats_url=system.nats_url,
        nats_prefix=system.prefix,
        registry_target=f"127.0.0.1:{system.registry.port}",
        executor_target=f"127.0.0.1:{system.executors[0].port}",
        shutdown_grace_seconds=GRACE,
    ) as client:
        yield client


async def running_run(stack: Stack, agent_id: str) -> dict[str, Any]:
    """The agent's run once it is running."""

    async def found() -> dict[str, Any] | None:
        listed = await stack.client.get(f"/v1/runs?agent_id={agent_id}", headers=auth())
        runs = listed.json()["runs"]
        return runs[0] if runs and runs[0]["status"] == "running" else None

    run: dict[str, Any] = await eventually(found, timeout=20)
    return run


async def ended(stack: Stack, run_id: str) -> dict[str, Any]:
    reply = await stack.client.get(f"/v1/runs/{run_id}/wait?timeout=60", headers=auth())
    assert reply.status_code == 200, reply.text
    run: dict[str, Any] = reply.json()
    assert run["status"] not in ("queued", "running"), run
    return run


async def test_a_waiting_completion_is_answered_503_naming_its_run_which_goes_on(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack({"services_config": LATE})
    agent_id = await stack.agent(name="stop-json", llm_config_id="late")
    stop = asyncio.Event()
    async with stopping_gateway(stack, stop) as other:
        asked = asyncio.create_task(
            other.post("/v1/chat/completions", json=chat(agent_id, "outlive it"), headers=auth())
        )
        run = await running_run(stack, agent_id)
        stop.set()
        began = time.monotonic()
        reply = await asked
        waited = time.monotonic() - began
    assert reply.status_code == 503, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    run_id = run["run_id"]
    assert body["error"]["type"] == "server_error"
    assert body["error"]["code"] == "service_unavailable"
    assert body["details"]["reason"] == "GATEWAY_STOPPING"
    assert (body["details"]["run_id"], body["details"]["task_id"]) == (run_id, run["task_id"])
    assert f"/v1/runs/{run_id}/wait" in body["error"]["message"]
    assert reply.headers["x-run-id"] == run_id
    assert reply.headers["location"] == f"/v1/runs/{run_id}"
    assert reply.headers["retry-after"] == "1"
    # Sent again without a key, the request would run the agent a second time.
    assert reply.headers["x-should-retry"] == "false"
    assert 0.5 < waited < GRACE + 5  # answered at the drain point, not cut at the hard stop
    # The run was not cancelled: it is joined through the other gateway.
    done = await ended(stack, run_id)
    assert done["status"] == "succeeded", done
    assert done["output"]["content"].endswith("outlive it")


async def test_a_keyed_completion_is_joined_by_its_retry_after_the_gateway_stopped(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack({"services_config": LATE})
    agent_id = await stack.agent(name="stop-keyed", llm_config_id="late")
    headers = {**auth(), "Idempotency-Key": "stop-keyed-1"}
    stop = asyncio.Event()
    async with stopping_gateway(stack, stop) as other:
        asked = asyncio.create_task(
            other.post("/v1/chat/completions", json=chat(agent_id, "once"), headers=headers)
        )
        await running_run(stack, agent_id)
        stop.set()
        reply = await asked
    assert reply.status_code == 503, reply.text
    assert "x-should-retry" not in reply.headers  # a retry joins the run: OpenAI's may retry
    assert "Idempotency-Key" in reply.json()["error"]["message"]
    run_id = reply.headers["x-run-id"]
    again = await stack.client.post(
        "/v1/chat/completions", json=chat(agent_id, "once"), headers=headers
    )
    assert again.status_code == 200, again.text
    assert again.json()["metadata"]["run_id"] == run_id
    assert again.json()["choices"][0]["message"]["content"].endswith("once")
    listed = await stack.client.get(f"/v1/runs?agent_id={agent_id}", headers=auth())
    assert [r["run_id"] for r in listed.json()["runs"]] == [run_id]  # run once


async def test_an_open_stream_ends_with_an_error_chunk_naming_its_run_which_goes_on(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack({"services_config": LATE})
    agent_id = await stack.agent(name="stop-stream", llm_config_id="wordy")
    stop = asyncio.Event()
    request = chat(agent_id, WORDS, stream=True, stream_options={"include_usage": True})
    async with (
        stopping_gateway(stack, stop) as other,
        other.stream("POST", "/v1/chat/completions", json=request, headers=auth()) as reply,
    ):
        assert reply.status_code == 200
        text = ""
        async for chunk in reply.aiter_text():
            text += chunk
            if '"delta":{"content":"' in text:  # the first piece of text
                stop.set()  # the gateway stops while the run streams
    found = frames(text)
    assert found[-1] == "[DONE]"
    usage, closing = found[-2], found[-3]
    assert (usage["choices"], usage["usage"]["total_tokens"]) == ([], 0)
    run_id = closing["metadata"]["run_id"]
    assert closing["choices"][0]["finish_reason"] == "error"
    said = closing["choices"][0]["delta"]["content"]
    assert said.startswith("[GATEWAY_STOPPING]")
    assert f"/v1/runs/{run_id}/events" in said
    assert f"/v1/runs/{run_id}/wait" in said
    resume = closing["agentrt"]
    assert (resume["type"], resume["run_id"]) == ("gateway_stopping", run_id)
    assert f"Last-Event-ID: {resume['last_event_id']}" in said
    relayed = "".join(
        c["choices"][0]["delta"].get("content", "") for c in found[1:-3] if c["choices"]
    )
    # The run goes on; its events after the last one relayed hold the rest of its text.
    done = await ended(stack, run_id)
    assert done["status"] == "succeeded", done
    rest = await stack.client.get(
        f"/v1/runs/{run_id}/events",
        headers={**auth(), "Last-Event-ID": str(resume["last_event_id"])},
    )
    later = [
        json.loads(line.removeprefix("data: "))
        for line in rest.text.splitlines()
        if line.startswith("data: ")
    ]
    assert later[0]["sequence"] == resume["last_event_id"] + 1
    assert later[-1]["type"] == "run_completed"
    deltas = "".join(e["content"] for e in later if e["type"] == "message_delta")
    assert relayed + deltas == done["output"]["content"]
    assert relayed  # cut mid-answer
    assert deltas


async def test_a_waiting_join_is_answered_with_the_run_as_it_is(make_stack: MakeStack) -> None:
    stack = await make_stack({"services_config": LATE})
    agent_id = await stack.agent(name="stop-wait", llm_config_id="late")
    started = await stack.client.post(
        "/v1/runs", json={"agent_id": agent_id, "input": "in the background"}, headers=auth()
    )
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]
    await running_run(stack, agent_id)
    stop = asyncio.Event()
    async with stopping_gateway(stack, stop) as other:
        joined = asyncio.create_task(
            other.get(f"/v1/runs/{run_id}/wait?timeout=60", headers=auth())
        )
        await asyncio.sleep(0.2)
        stop.set()
        reply = await joined
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "running"  # join it again elsewhere
    assert (await ended(stack, run_id))["status"] == "succeeded"  # a background run goes on


def test_the_drain_point_is_the_grace_less_the_margin_at_most_half_the_grace() -> None:
    def delay(grace: float, margin: float = 1.0) -> float:
        settings = Settings(
            runtime_token="t", shutdown_grace_seconds=grace, drain_margin_seconds=margin
        )
        return settings.drain_delay()

    assert delay(10) == 9
    assert delay(10, margin=3) == 7
    assert delay(1) == 0.5  # at most half the grace
    assert delay(0) == 0
    assert delay(10, margin=0) == 10


@pytest.mark.parametrize(
    ("path", "dialect"), [("/v1/chat/completions", "openai"), ("/v1/agents/compose", "compat")]
)
def test_a_stopping_answer_names_the_run_in_either_dialect(path: str, dialect: str) -> None:
    from agent_gateway.adapters.http_errors import dialect_of

    error = http_error(GatewayStopping("r-1", "t-1"))
    assert dialect_of(path) == dialect
    body = error.body(dialect)
    assert error.status == 503
    assert error.headers == {
        "Retry-After": "1",
        "X-Run-Id": "r-1",
        "Location": "/v1/runs/r-1",
        "x-should-retry": "false",
    }
    if dialect == "openai":
        assert body["error"]["code"] == "service_unavailable"
        details = body["details"]
    else:
        assert body["error"] == "SERVICE_UNAVAILABLE"
        details = body["details"]
    assert details["reason"] == "GATEWAY_STOPPING"
    assert (details["run_id"], details["task_id"]) == ("r-1", "t-1")
    # Nothing started (refused while draining, or a compose): no run to name.
    nothing = http_error(GatewayStopping())
    assert nothing.headers == {"Retry-After": "1"}
    assert "run_id" not in nothing.body(dialect)["details"]


async def test_work_is_cancelled_when_the_gateway_drains_first() -> None:
    draining = asyncio.Event()
    assert await unless_drained(draining, asyncio.sleep(0, "done")) == "done"
    with pytest.raises(ZeroDivisionError):
        await unless_drained(draining, _fails())
    slow = asyncio.ensure_future(asyncio.sleep(30))
    asyncio.get_running_loop().call_later(0.05, draining.set)
    with pytest.raises(Drained):
        await unless_drained(draining, slow)
    assert slow.cancelled()


async def _fails() -> None:
    raise ZeroDivisionError
