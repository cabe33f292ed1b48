"""Durable runs through the gateway: background starts, idempotency keys, event streams.

`POST /v1/runs` and background chat completions queue runs on the real executor;
`GET /v1/runs/{id}/events` follows their stored events as server-sent events;
`Idempotency-Key` makes run-starting requests safe to retry.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from executor_support import eventually, offline, services_config
from gateway_support import (
    ERROR_KEYS,
    RUN_KEYS,
    Stack,
    auth,
    code_of,
    frames,
    keyring,
    running_gateway,
)
from starlette.requests import Request

from agent_gateway.adapters.run_request import prefers_async
from agentrt_testkit.http import RecordingHttp, Reply
from agentrt_testkit.sse import events_of

MakeStack = Callable[..., Awaitable[Stack]]
SLOW = services_config(slow=offline(latency_ms=1500))
WEBHOOK_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
EVENT_TYPES = {
    "run_started",
    "message_delta",
    "tool_call_started",
    "tool_call_finished",
    "step_progress",
    "message_completed",
    "run_completed",
    "run_failed",
}


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def start(stack: Stack, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    return await stack.client.post("/v1/runs", json=body, headers=headers or auth())


async def finished(stack: Stack, run_id: str, headers: dict[str, str] | None = None) -> Any:
    reply = await stack.client.get(f"/v1/runs/{run_id}/wait?timeout=60", headers=headers or auth())
    assert reply.status_code == 200, reply.text
    run = reply.json()
    assert run["status"] not in ("queued", "running"), run
    return run


async def all_events(stack: Stack, run_id: str, headers: dict[str, str] | None = None) -> Any:
    reply = await stack.client.get(f"/v1/runs/{run_id}/events", headers=headers or auth())
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/event-stream")
    return events_of(reply.text)


async def test_a_started_run_is_accepted_at_once_and_succeeds_with_its_output(
    stack: Stack,
) -> None:
    agent_id = await stack.agent(name="durable-start")
    reply = await start(
        stack,
        agent_id=agent_id,
        input="hello there",
        metadata={"ticket": "T-1"},
        context_id="ctx-1",
    )
    assert reply.status_code == 202, reply.text
    run = reply.json()
    assert set(run) == RUN_KEYS
    assert reply.headers["location"] == f"/v1/runs/{run['run_id']}"
    assert "idempotent-replayed" not in reply.headers
    assert (run["agent_id"], run["queued"], run["multitask_strategy"]) == (
        agent_id,
        True,
        "reject",
    )
    assert (run["metadata"], run["context_id"]) == ({"ticket": "T-1"}, "ctx-1")
    assert run["status"] in ("queued", "running", "succeeded")
    done = await finished(stack, run["run_id"])
    assert done["status"] == "succeeded", done
    assert done["finish_reason"] == "stop"
    assert done["output"]["role"] == "assistant"
    assert "hello there" in done["output"]["content"]
    assert done["usage"]["total_tokens"] > 0
    assert done["metadata"] == {"ticket": "T-1"}
    # The same run as GET answers it, and listed with the chat completions.
    read = (await stack.client.get(reply.headers["location"], headers=auth())).json()
    assert read == done
    listed = (await stack.client.get(f"/v1/runs?agent_id={agent_id}", headers=auth())).json()
    assert [r["run_id"] for r in listed["runs"]] == [run["run_id"]]


async def test_a_run_takes_a_conversation_and_chat_sampling_parameters(stack: Stack) -> None:
    agent_id = await stack.agent(name="durable-messages")
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "one two three four five six seven"},
    ]
    reply = await start(stack, agent_id=agent_id, messages=messages, max_tokens=2, task_id="t-7")
    assert reply.status_code == 202, reply.text
    done = await finished(stack, reply.json()["run_id"])
    assert (done["status"], done["task_id"]) == ("succeeded", "t-7")
    assert done["finish_reason"] == "length"  # max_tokens reached the model
    listed = await start(stack, agent_id=agent_id, input=user("as a list"))
    assert listed.status_code == 202, listed.text
    assert "as a list" in (await finished(stack, listed.json()["run_id"]))["output"]["content"]


async def test_bad_start_bodies_are_refused_naming_each_field(stack: Stack) -> None:
    agent_id = await stack.agent(name="durable-bad")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input": "hi"}, "body.agent_id"),
        ({"agent_id": agent_id}, "body.input"),
        ({"agent_id": agent_id, "input": "hi", "messages": user("hi")}, "body.input"),
        ({"agent_id": agent_id, "messages": [{"role": "system", "content": "x"}]}, "body.messages"),
        (
            {"agent_id": agent_id, "input": "hi", "multitask_strategy": "queue"},
            "body.multitask_strategy",
        ),
        ({"agent_id": agent_id, "input": "hi", "metadata": {"n": 1}}, "body.metadata.n"),
        ({"agent_id": agent_id, "input": "hi", "metadata": {"k": "v" * 513}}, "body.metadata.k"),
        (
            {"agent_id": agent_id, "input": "hi", "metadata": {f"k{i}": "v" for i in range(17)}},
            "body.metadata",
        ),
        (
            {"agent_id": agent_id, "input": "hi", "webhook": "ftp://example.com/hook"},
            "body.webhook",
        ),
        ({"agent_id": agent_id, "input": "hi", "webhook": "hooks.example.com"}, "body.webhook"),
        (
            {"agent_id": agent_id, "input": "hi", "webhook": "https://e.com/" + "a" * 2048},
            "body.webhook",
        ),
        ({"agent_id": agent_id, "input": "hi", "task_id": "-bad"}, "body.task_id"),
        ({"agent_id": agent_id, "input": "hi", "temperature": 3}, "body.temperature"),
    ]
    for body, field in cases:
        reply = await start(stack, **body)
        assert reply.status_code == 422, (body, reply.text)
        error = reply.json()
        assert set(error) == ERROR_KEYS
        assert error["error"] == "VALIDATION_ERROR"
        assert field in [f["field"] for f in error["details"]["fields"]], (field, error)
    unknown = await start(
        stack, agent_id=agent_id, input="hi", tools=[], webhook_url="https://x.io"
    )
    assert unknown.status_code == 422
    named = {f["field"] for f in unknown.json()["details"]["fields"]}
    assert named == {"body.tools", "body.webhook_url"}
    assert unknown.json()["details"]["reason"] == "UNKNOWN_FIELD"
    missing = await start(stack, agent_id="no-such-agent", input="hi")
    assert (missing.status_code, code_of(missing.json())) == (404, "AGENT_NOT_FOUND")
    # The webhook reaches the executor, which has no secret to sign webhooks with here.
    unsigned = await start(stack, agent_id=agent_id, input="hi", webhook="https://e.com/h")
    assert (unsigned.status_code, code_of(unsigned.json())) == (409, "CONFLICT")
    assert unsigned.json()["details"]["reason"] == "WEBHOOKS_DISABLED"
    # Nothing was started by any of them.
    listed = (await stack.client.get(f"/v1/runs?agent_id={agent_id}", headers=auth())).json()
    assert listed["runs"] == []


async def test_runs_are_started_and_seen_only_within_their_owner(make_stack: MakeStack) -> None:
    keys, entries = keyring(
        acme=("operator", "acme"), globex=("operator", "globex"), viewer=("viewer", None)
    )
    stack = await make_stack({"services_config": SLOW}, api_keys=entries)
    acme_agent = await stack.agent(name="acme-durable", owner_id="acme", llm_config_id="slow")
    globex_agent = await stack.agent(name="globex-durable", owner_id="globex")
    acme, globex = bearer(keys["acme"]), bearer(keys["globex"])
    hidden = await start(stack, acme, agent_id=globex_agent, input="hi")
    assert (hidden.status_code, code_of(hidden.json())) == (404, "AGENT_NOT_FOUND")
    viewer = await start(stack, bearer(keys["viewer"]), agent_id=acme_agent, input="hi")
    assert (viewer.status_code, code_of(viewer.json())) == (403, "FORBIDDEN")
    reply = await start(stack, acme, agent_id=acme_agent, input="hi")
    assert reply.status_code == 202, reply.text
    run_id = reply.json()["run_id"]
    for method, path in (
        ("GET", f"/v1/runs/{run_id}"),
        ("GET", f"/v1/runs/{run_id}/wait?timeout=0"),
        ("GET", f"/v1/runs/{run_id}/events"),
        ("POST", f"/v1/runs/{run_id}/cancel"),
    ):
        refused = await stack.client.request(method, path, headers=globex)
        assert (refused.status_code, code_of(refused.json())) == (404, "RUN_NOT_FOUND"), path
    listed = (await stack.client.get("/v1/runs", headers=globex)).json()
    assert listed["runs"] == []
    # Its owner can cancel it (it is slow); the record says so once it has stopped.
    cancelled = await stack.client.post(f"/v1/runs/{run_id}/cancel", headers=acme)
    assert cancelled.status_code == 202, cancelled.text
    assert (await finished(stack, run_id, acme))["status"] == "cancelled"


async def test_an_owner_bound_start_runs_the_agent_version_it_just_wrote(
    make_stack: MakeStack,
) -> None:
    keys, entries = keyring(acme=("admin", "acme"))
    stack = await make_stack(api_keys=entries)
    acme = bearer(keys["acme"])
    agent_id = await stack.agent(name="acme-ryw", owner_id="acme")
    for prompt in ("first", "second", "third"):
        changed = await stack.client.put(
            f"/v1/agents/{agent_id}", json={"system_prompt": prompt}, headers=acme
        )
        assert changed.status_code == 200, changed.text
        version = int(changed.headers["etag"].strip('"'))
        reply = await start(stack, acme, agent_id=agent_id, input="hi")
        assert reply.status_code == 202, reply.text
        done = await finished(stack, reply.json()["run_id"], acme)
        assert (done["status"], done["agent_version"]) == ("succeeded", version)


async def test_an_idempotency_key_makes_a_start_safe_to_retry(make_stack: MakeStack) -> None:
    keys, entries = keyring(one=("operator", None), two=("operator", None))
    stack = await make_stack(api_keys=entries)
    agent_id = await stack.agent(name="durable-idem")
    one = {**bearer(keys["one"]), "Idempotency-Key": "order-42"}
    body = {"agent_id": agent_id, "input": "pay order 42", "metadata": {"order": "42"}}
    first = await start(stack, one, **body)
    assert first.status_code == 202, first.text
    run_id = first.json()["run_id"]
    assert first.headers["x-run-id"] == run_id
    assert "idempotent-replayed" not in first.headers
    await finished(stack, run_id)
    again = await start(stack, one, **body)
    assert again.status_code == 202, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == f"/v1/runs/{run_id}"
    assert again.json()["run_id"] == run_id
    assert again.json()["status"] == "succeeded"  # the first run, as it is now
    listed = (await stack.client.get(f"/v1/runs?agent_id={agent_id}", headers=auth())).json()
    assert [r["run_id"] for r in listed["runs"]] == [run_id]
    # The same key with another body is refused, naming the header and the run.
    other = await start(stack, one, **{**body, "input": "pay order 43"})
    assert other.status_code == 422, other.text
    assert other.json()["details"]["fields"][0]["field"] == "header.idempotency-key"
    assert other.headers["x-run-id"] == run_id
    # Another caller's key of the same text is another run.
    theirs = await start(stack, {**bearer(keys["two"]), "Idempotency-Key": "order-42"}, **body)
    assert theirs.status_code == 202, theirs.text
    assert theirs.json()["run_id"] != run_id
    assert "idempotent-replayed" not in theirs.headers
    for bad in ("", "x" * 256, "caf\xe9", "tab\there"):
        refused = await stack.client.post(
            "/v1/runs",
            json=body,
            headers=[*auth().items(), ("Idempotency-Key", bad.encode("latin-1"))],
        )
        assert refused.status_code == 400, (bad, refused.text)
        assert refused.json()["details"]["fields"][0]["field"] == "header.idempotency-key"
    listed = (await stack.client.get(f"/v1/runs?agent_id={agent_id}", headers=auth())).json()
    assert len(listed["runs"]) == 2


async def test_a_chat_completion_runs_in_the_background_when_asked(stack: Stack) -> None:
    agent_id = await stack.agent(name="durable-chat-bg")
    chat = {"model": agent_id, "messages": user("in the background")}
    preferred = await stack.client.post(
        "/v1/chat/completions",
        json={**chat, "metadata": {"tag": "a"}},
        headers={**auth(), "Prefer": "wait=5, respond-async"},
    )
    assert preferred.status_code == 202, preferred.text
    assert preferred.headers["preference-applied"] == "respond-async"
    run = preferred.json()
    assert set(run) == RUN_KEYS
    assert preferred.headers["location"] == f"/v1/runs/{run['run_id']}"
    assert (run["queued"], run["metadata"]) == (True, {"tag": "a"})
    run_ids = [run["run_id"]]
    for flag in (True, "true"):
        tagged = await stack.client.post(
            "/v1/chat/completions",
            json={**chat, "metadata": {"background": flag, "task_id": f"bg-{flag}"}},
            headers=auth(),
        )
        assert tagged.status_code == 202, tagged.text
        assert "preference-applied" not in tagged.headers
        assert tagged.json()["task_id"] == f"bg-{flag}"
        run_ids.append(tagged.json()["run_id"])
    for run_id in run_ids:
        done = await finished(stack, run_id)
        assert done["status"] == "succeeded", done
        assert "in the background" in done["output"]["content"]
    # Not in the background: the ordinary completion.
    foreground = await stack.client.post(
        "/v1/chat/completions", json={**chat, "metadata": {"background": "false"}}, headers=auth()
    )
    assert foreground.status_code == 200, foreground.text
    assert foreground.json()["object"] == "chat.completion"
    assert foreground.headers["x-run-id"] == foreground.json()["metadata"]["run_id"]
    streamed = await stack.client.post(
        "/v1/chat/completions",
        json={**chat, "stream": True},
        headers={**auth(), "Prefer": "respond-async"},
    )
    assert streamed.status_code == 400
    assert streamed.json()["error"]["param"] == "stream"


async def test_a_background_chat_completion_with_a_key_is_started_once(stack: Stack) -> None:
    agent_id = await stack.agent(name="durable-chat-bg-idem")
    chat = {"model": agent_id, "messages": user("once"), "metadata": {"background": True}}
    headers = {**auth(), "Idempotency-Key": "bg-once"}
    first = await stack.client.post("/v1/chat/completions", json=chat, headers=headers)
    again = await stack.client.post("/v1/chat/completions", json=chat, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202), again.text
    assert first.json()["run_id"] == again.json()["run_id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = await stack.client.post(
        "/v1/chat/completions", json={**chat, "messages": user("twice")}, headers=headers
    )
    assert other.status_code == 422, other.text
    assert other.json()["details"]["fields"][0]["field"] == "header.idempotency-key"


async def test_run_events_stream_in_order_and_resume_after_the_last_event_read(
    stack: Stack,
) -> None:
    agent_id = await stack.agent(name="durable-events")
    reply = await start(stack, agent_id=agent_id, input="stream these words to me")
    run_id = reply.json()["run_id"]
    events = await all_events(stack, run_id)  # followed live or read back: the same events
    assert events[0]["event"] == "run_started"
    assert events[-1]["event"] == "run_completed"
    assert {e["event"] for e in events} <= EVENT_TYPES
    sequences = [int(e["id"]) for e in events]
    assert sequences == list(range(1, len(events) + 1))
    for event in events:
        data = event["data"]
        assert (data["type"], data["run_id"], data["sequence"]) == (
            event["event"],
            run_id,
            int(event["id"]),
        )
        assert data["occurred_at"]
    started, completed = events[0]["data"], events[-1]["data"]
    assert (started["agent_id"], started["task_id"]) == (agent_id, reply.json()["task_id"])
    assert completed["finish_reason"] == "stop"
    assert completed["usage"]["total_tokens"] > 0
    done = await finished(stack, run_id)
    whole = [e for e in events if e["event"] == "message_completed"]
    assert whole[-1]["data"]["message"] == done["output"]
    assert whole[-1]["data"]["message_id"]
    deltas = [e["data"] for e in events if e["event"] == "message_delta"]
    if deltas:  # a run that streams its text: the deltas add up to the message
        assert "".join(d["content"] for d in deltas) == done["output"]["content"]
    # Resuming after any event gives exactly the events after it, by header or query.
    for last in (1, len(events) // 2, len(events) - 1, len(events)):
        resumed = await stack.client.get(
            f"/v1/runs/{run_id}/events", headers={**auth(), "Last-Event-ID": str(last)}
        )
        assert resumed.status_code == 200
        assert events_of(resumed.text) == events[last:], last
    queried = await stack.client.get(f"/v1/runs/{run_id}/events?after=2", headers=auth())
    assert events_of(queried.text) == events[2:]
    # An EventSource resumes with the URL it began with: the header wins.
    both = await stack.client.get(
        f"/v1/runs/{run_id}/events?after=1", headers={**auth(), "Last-Event-ID": "3"}
    )
    assert events_of(both.text) == events[3:]


async def test_a_late_joiner_gets_every_event_of_a_chat_completion(stack: Stack) -> None:
    agent_id = await stack.agent(name="durable-events-chat")
    reply = await stack.client.post(
        "/v1/chat/completions",
        json={"model": agent_id, "messages": user("late joiner"), "stream": True},
        headers=auth(),
    )
    chunks = [f for f in frames(reply.text) if f != "[DONE]"]
    run_id = chunks[0]["metadata"]["run_id"]
    events = await all_events(stack, run_id)
    assert (events[0]["event"], events[-1]["event"]) == ("run_started", "run_completed")
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    followed = "".join(e["data"]["content"] for e in events if e["event"] == "message_delta")
    assert followed == streamed


async def test_event_streams_of_unknown_runs_and_bad_positions_are_refused(stack: Stack) -> None:
    missing = await stack.client.get("/v1/runs/no-such-run/events", headers=auth())
    assert (missing.status_code, code_of(missing.json())) == (404, "RUN_NOT_FOUND")
    assert missing.headers["content-type"].startswith("application/json")
    for path, headers in (
        ("/v1/runs/x/events?after=-1", {}),
        ("/v1/runs/x/events", {"Last-Event-ID": "abc"}),
    ):
        bad = await stack.client.get(path, headers={**auth(), **headers})
        assert bad.status_code == 422, bad.text
    unauthorised = await stack.client.get("/v1/runs/no-such-run/events")
    assert unauthorised.status_code == 401


async def test_a_failed_run_ends_its_event_stream_with_run_failed(make_stack: MakeStack) -> None:
    stack = await make_stack({"services_config": SLOW})
    agent_id = await stack.agent(name="durable-fail", llm_config_id="slow")
    run_id = (await start(stack, agent_id=agent_id, input="stop me")).json()["run_id"]
    follower = asyncio.create_task(all_events(stack, run_id))
    for _ in range(200):  # until it runs
        if (await stack.client.get(f"/v1/runs/{run_id}", headers=auth())).json()["status"] == (
            "running"
        ):
            break
        await asyncio.sleep(0.05)
    await stack.client.post(f"/v1/runs/{run_id}/cancel", headers=auth())
    events = await follower
    assert events[-1]["event"] == "run_failed"
    assert events[-1]["data"]["code"] == "CANCELLED"
    assert (await finished(stack, run_id))["status"] == "cancelled"


@pytest.mark.parametrize("action", ["interrupt", "rollback"])
async def test_a_cancel_says_whether_the_run_is_rolled_back(
    make_stack: MakeStack, action: str
) -> None:
    stack = await make_stack({"services_config": SLOW})
    agent_id = await stack.agent(
        name=f"durable-{action}", llm_config_id="slow", conversation_config={"memory": True}
    )
    run_id = (await start(stack, agent_id=agent_id, input="hi", task_id="t-1")).json()["run_id"]
    for _ in range(200):  # until it runs
        reply = await stack.client.get(f"/v1/runs/{run_id}", headers=auth())
        if reply.json()["status"] == "running":
            break
        await asyncio.sleep(0.05)
    reply = await stack.client.post(f"/v1/runs/{run_id}/cancel?action={action}", headers=auth())
    assert reply.status_code == 202, reply.text
    run = await finished(stack, run_id)
    assert run["status"] == "cancelled"
    assert run["rolled_back"] is (action == "rollback")
    bad = await stack.client.post(f"/v1/runs/{run_id}/cancel?action=undo", headers=auth())
    assert bad.status_code == 422
    assert "action" in bad.text


async def test_a_foreground_completion_with_a_key_answers_a_retry_with_the_first_run(
    stack: Stack,
) -> None:
    agent_id = await stack.agent(name="durable-chat-idem")
    chat = {"model": agent_id, "messages": user("say it once")}
    headers = {**auth(), "Idempotency-Key": "chat-once"}
    first = await stack.client.post("/v1/chat/completions", json=chat, headers=headers)
    again = await stack.client.post("/v1/chat/completions", json=chat, headers=headers)
    assert (first.status_code, again.status_code) == (200, 200), again.text
    one, two = first.json(), again.json()
    assert two["id"] == one["id"]
    assert two["choices"] == one["choices"]
    assert two["usage"] == one["usage"]
    assert two["metadata"] == one["metadata"]
    assert first.headers["x-run-id"] == again.headers["x-run-id"] == one["metadata"]["run_id"]
    listed = (await stack.client.get(f"/v1/runs?agent_id={agent_id}", headers=auth())).json()
    assert [r["run_id"] for r in listed["runs"]] == [one["metadata"]["run_id"]]
    # Streamed, the retry replays the first run's stream.
    streamed = await stack.client.post(
        "/v1/chat/completions", json={**chat, "stream": True}, headers=headers
    )
    assert streamed.status_code == 200, streamed.text
    chunks = [f for f in frames(streamed.text) if f != "[DONE]"]
    assert {c["id"] for c in chunks} == {one["id"]}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == one["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # The key with another request (here: another conversation) is refused.
    other = await stack.client.post(
        "/v1/chat/completions",
        json={**chat, "metadata": {"task_id": "another"}},
        headers=headers,
    )
    assert other.status_code == 422, other.text
    assert other.json()["details"]["fields"][0]["field"] == "header.idempotency-key"
    listed = (await stack.client.get(f"/v1/runs?agent_id={agent_id}", headers=auth())).json()
    assert len(listed["runs"]) == 1


async def test_a_stopping_gateway_ends_event_streams_with_an_error_event(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack({"services_config": SLOW})
    agent_id = await stack.agent(name="durable-stop", llm_config_id="slow")
    run_id = (await start(stack, agent_id=agent_id, input="outlive the gateway")).json()["run_id"]
    stop = asyncio.Event()
    system = stack.system
    assert system.registry is not None
    async with (
        running_gateway(
            stop,
            nats_url=system.nats_url,
            nats_prefix=system.prefix,
            registry_target=f"127.0.0.1:{system.registry.port}",
            executor_target=f"127.0.0.1:{system.executors[0].port}",
        ) as other,
        other.stream("GET", f"/v1/runs/{run_id}/events", headers=auth()) as reply,
    ):
        assert reply.status_code == 200
        text = ""
        async for chunk in reply.aiter_text():
            text += chunk
            if "event: run_started" in text and text.endswith("\n\n"):
                stop.set()  # the gateway stops while the run goes on
        events = events_of(text)
    assert events[0]["event"] == "run_started"
    assert events[-1]["event"] == "error"
    assert events[-1]["data"]["run_id"] == run_id
    assert events[-1]["data"]["code"] == "GATEWAY_STOPPING"
    assert "id" not in events[-1]
    # The run did not notice; a client resumes on another gateway where it left off.
    done = await finished(stack, run_id)
    assert done["status"] == "succeeded"
    rest = await stack.client.get(
        f"/v1/runs/{run_id}/events",
        headers={**auth(), "Last-Event-ID": events[-2]["id"]},
    )
    assert events_of(rest.text)[0]["id"] == str(int(events[-2]["id"]) + 1)
    assert events_of(rest.text)[-1]["event"] == "run_completed"


async def test_a_started_run_calls_its_webhook_when_it_has_ended(make_stack: MakeStack) -> None:
    stack = await make_stack(
        {"webhook_secret": WEBHOOK_SECRET, "webhook_allowed_networks": ["127.0.0.0/8"]}
    )
    agent_id = await stack.agent(name="durable-webhook")
    with RecordingHttp() as receiver:
        receiver.script("/hook", Reply(204))
        reply = await start(
            stack,
            agent_id=agent_id,
            input="call me back",
            webhook=receiver.url("/hook?source=test"),
            metadata={"order": "42"},
        )
        assert reply.status_code == 202, reply.text
        run_id = reply.json()["run_id"]
        await eventually(lambda: receiver.hits, timeout=30)
        hit = receiver.hits[0]
    assert (hit.method, hit.path) == ("POST", "/hook?source=test")
    assert hit.headers["webhook-id"].startswith(run_id)
    body = json.loads(hit.body)
    assert body["data"]["run_id"] == run_id


def test_prefer_respond_async_is_read_among_other_preferences() -> None:
    def asked(*values: str) -> bool:
        headers = [(b"prefer", value.encode()) for value in values]
        return prefers_async(Request({"type": "http", "headers": headers}))

    assert asked("respond-async")
    assert asked("wait=10, Respond-Async")
    assert asked("handling=lenient", "respond-async; note=x")
    assert not asked("return=minimal")
    assert not asked("respond-asynchronously")
    assert not asked()
