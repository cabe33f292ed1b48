"""Runs as resources through the gateway (`/v1/runs`): read, list, join, cancel, owners."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from executor_support import offline, services_config
from gateway_support import ERROR_KEYS, RUN_KEYS, Stack, auth, code_of, keyring

MakeStack = Callable[..., Awaitable[Stack]]
SLOW = services_config(slow=offline(latency_ms=1500))


def chat(agent_id: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": agent_id, "messages": [{"role": "user", "content": text}], **extra}


async def completed(stack: Stack, agent_id: str, **extra: Any) -> dict[str, Any]:
    reply = await stack.client.post(
        "/v1/chat/completions", json=chat(agent_id, **extra), headers=auth()
    )
    assert reply.status_code == 200, reply.text
    return dict(reply.json()["metadata"])


async def test_a_chat_completion_is_a_run_that_can_be_read(stack: Stack) -> None:
    agent_id = await stack.agent(name="runs-read")
    meta = await completed(stack, agent_id, metadata={"context_id": "ctx-9"})
    reply = await stack.client.get(f"/v1/runs/{meta['run_id']}", headers=auth())
    assert reply.status_code == 200, reply.text
    run = reply.json()
    assert set(run) == RUN_KEYS
    assert (run["run_id"], run["agent_id"], run["status"]) == (
        meta["run_id"],
        agent_id,
        "succeeded",
    )
    assert (run["task_id"], run["context_id"]) == (meta["task_id"], "ctx-9")
    assert run["agent_version"] >= 1
    assert run["usage"]["total_tokens"] > 0
    assert run["error"] is None
    assert run["executor_id"]
    assert run["attempts"] == 1
    assert run["created_at"] <= run["started_at"] <= run["finished_at"]
    # A chat completion is a foreground run: not queued, no metadata or strategy of its own.
    assert (run["queued"], run["metadata"], run["multitask_strategy"]) == (False, {}, None)
    missing = await stack.client.get("/v1/runs/no-such-run", headers=auth())
    assert missing.status_code == 404
    assert set(missing.json()) == ERROR_KEYS
    assert code_of(missing.json()) == "RUN_NOT_FOUND"


async def test_runs_are_listed_newest_first_filtered_and_paged(stack: Stack) -> None:
    first = await stack.agent(name="runs-list-a")
    second = await stack.agent(name="runs-list-b")
    ids = [(await completed(stack, first))["run_id"] for _ in range(3)]
    other = (await completed(stack, second, metadata={"task_id": "t-other"}))["run_id"]
    listed = await stack.client.get(f"/v1/runs?agent_id={first}&limit=2", headers=auth())
    assert listed.status_code == 200, listed.text
    page = listed.json()
    assert [r["run_id"] for r in page["runs"]] == ids[::-1][:2]
    token = page["next_page_token"]
    assert token
    rest = (
        await stack.client.get(
            f"/v1/runs?agent_id={first}&limit=2&page_token={token}", headers=auth()
        )
    ).json()
    assert [r["run_id"] for r in rest["runs"]] == ids[:1]
    assert rest["next_page_token"] is None
    by_task = (await stack.client.get("/v1/runs?task_id=t-other", headers=auth())).json()
    assert [r["run_id"] for r in by_task["runs"]] == [other]
    failed = (await stack.client.get("/v1/runs?status=failed", headers=auth())).json()
    assert failed["runs"] == []
    bad = await stack.client.get("/v1/runs?status=asleep", headers=auth())
    assert bad.status_code == 422
    assert bad.json()["details"]["fields"][0]["field"] == "query.status"


async def test_waiting_joins_a_running_run_and_cancel_stops_it(make_stack: MakeStack) -> None:
    stack = await make_stack({"services_config": SLOW})
    agent_id = await stack.agent(name="runs-wait", llm_config_id="slow")
    running = asyncio.create_task(
        stack.client.post("/v1/chat/completions", json=chat(agent_id), headers=auth())
    )
    run_id = ""
    for _ in range(100):  # until the run is recorded
        found = (await stack.client.get(f"/v1/runs?agent_id={agent_id}", headers=auth())).json()
        if found["runs"]:
            run_id = found["runs"][0]["run_id"]
            break
        await asyncio.sleep(0.05)
    assert run_id
    early = await stack.client.get(f"/v1/runs/{run_id}/wait?timeout=0.1", headers=auth())
    assert (early.status_code, early.json()["status"]) == (200, "running")
    joined = await stack.client.get(f"/v1/runs/{run_id}/wait?timeout=30", headers=auth())
    assert joined.json()["status"] == "succeeded"
    assert (await running).status_code == 200
    # A finished run: cancelling is a no-op that says so.
    late = await stack.client.post(f"/v1/runs/{run_id}/cancel", headers=auth())
    assert late.status_code == 202, late.text
    assert late.json()["cancelled"] is False
    assert late.json()["run"]["status"] == "succeeded"
    # A running one is stopped and recorded as cancelled.
    second = asyncio.create_task(
        stack.client.post("/v1/chat/completions", json=chat(agent_id), headers=auth())
    )
    for _ in range(100):
        found = (await stack.client.get(f"/v1/runs?agent_id={agent_id}", headers=auth())).json()
        if found["runs"][0]["run_id"] != run_id:
            break
        await asyncio.sleep(0.05)
    target = found["runs"][0]["run_id"]
    stopped = await stack.client.post(f"/v1/runs/{target}/cancel", headers=auth())
    assert (stopped.status_code, stopped.json()["cancelled"]) == (202, True)
    ended = await stack.client.get(f"/v1/runs/{target}/wait?timeout=30", headers=auth())
    assert ended.json()["status"] == "cancelled"
    await second


async def test_owner_bound_keys_see_only_their_owners_runs(make_stack: MakeStack) -> None:
    keys, entries = keyring(
        acme=("operator", "acme"), globex=("operator", "globex"), viewer=("viewer", None)
    )
    stack = await make_stack(api_keys=entries)
    acme_agent = await stack.agent(name="acme-runs", owner_id="acme")
    globex_agent = await stack.agent(name="globex-runs", owner_id="globex")
    acme_run = (await completed(stack, acme_agent))["run_id"]
    globex_run = (await completed(stack, globex_agent))["run_id"]
    acme = {"Authorization": f"Bearer {keys['acme']}"}
    listed = (await stack.client.get("/v1/runs", headers=acme)).json()
    assert [r["run_id"] for r in listed["runs"]] == [acme_run]
    assert (await stack.client.get(f"/v1/runs/{acme_run}", headers=acme)).status_code == 200
    for path in (f"/v1/runs/{globex_run}", f"/v1/runs/{globex_run}/wait?timeout=0"):
        hidden = await stack.client.get(path, headers=acme)
        assert (hidden.status_code, code_of(hidden.json())) == (404, "RUN_NOT_FOUND")
    cancel = await stack.client.post(f"/v1/runs/{globex_run}/cancel", headers=acme)
    assert cancel.status_code == 404
    refused = await stack.client.post(
        f"/v1/runs/{acme_run}/cancel", headers={"Authorization": f"Bearer {keys['viewer']}"}
    )
    assert (refused.status_code, code_of(refused.json())) == (403, "FORBIDDEN")


async def test_joins_are_bounded_per_key_and_odd_ids_are_bad_input(make_stack: MakeStack) -> None:
    stack = await make_stack({"services_config": SLOW}, max_waits_per_key=1)
    agent_id = await stack.agent(name="runs-joins", llm_config_id="slow")
    running = asyncio.create_task(
        stack.client.post("/v1/chat/completions", json=chat(agent_id), headers=auth())
    )
    found: dict[str, Any] = {"runs": []}
    for _ in range(100):
        found = (await stack.client.get(f"/v1/runs?agent_id={agent_id}", headers=auth())).json()
        if found["runs"]:
            break
        await asyncio.sleep(0.05)
    run_id = found["runs"][0]["run_id"]
    first = asyncio.create_task(
        stack.client.get(f"/v1/runs/{run_id}/wait?timeout=30", headers=auth())
    )
    await asyncio.sleep(0.2)
    second = await stack.client.get(f"/v1/runs/{run_id}/wait?timeout=30", headers=auth())
    assert (second.status_code, second.json()["details"]["scope"]) == (429, "waits")
    assert (await first).json()["status"] == "succeeded"
    await running
    again = await stack.client.get(f"/v1/runs/{run_id}/wait?timeout=30", headers=auth())
    assert again.status_code == 200  # the slot was given back (and an ended run takes none)
    for path, status in (
        ("/v1/runs/-x/wait", 422),  # no run has such an id
        ("/v1/runs/a%20b", 422),
        ("/v1/runs?agent_id=a%00", 422),
        ("/v1/runs/a%00b", 404),  # a control character in the path: no route
    ):
        reply = await stack.client.get(path, headers=auth())
        assert reply.status_code == status, (path, reply.text)
