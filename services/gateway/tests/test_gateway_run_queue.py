"""The run queue's figures in `GET /v1/health` and as gauges on `/metrics`.

Against the real executor and its NATS run queue: runs started in the background wait
when the executor's slots are taken, and health and metrics say so; figures that cannot
be asked leave health as the dependency checks make it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from executor_support import eventually, offline, services_config
from gateway_support import Stack, World, auth

MakeStack = Callable[..., Awaitable[Stack]]
SLOW = services_config(slow=offline(latency_ms=1000))
FIGURES = ("depth", "pending", "oldest_age_seconds", "redelivered", "dead_letters")
SAMPLE = re.compile(r"^(agentrt_run_queue_\w+) (\S+)$", re.MULTILINE)


async def gauges(client: httpx.AsyncClient) -> dict[str, float]:
    """The run queue's samples on `/metrics`, by name."""
    reply = await client.get("/metrics")
    assert reply.status_code == 200
    return {name: float(value) for name, value in SAMPLE.findall(reply.text)}


async def health(client: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    reply = await client.get("/v1/health", headers=auth())
    return reply.status_code, reply.json()


async def test_health_and_metrics_report_runs_waiting_for_a_slot(make_stack: MakeStack) -> None:
    stack = await make_stack({"services_config": SLOW, "max_concurrent_runs": 1})
    status, body = await health(stack.client)
    assert (status, body["status"]) == (200, "healthy")
    assert body["queue"] == {
        "status": "ok",
        "backend": "nats",
        "depth": 0,
        "pending": 0,
        "oldest_age_seconds": 0.0,
        "redelivered": 0,
        "dead_letters": 0,
        "free_slots": 1,
    }
    idle = await gauges(stack.client)
    assert idle == {"agentrt_run_queue_up": 1.0, **{f"agentrt_run_queue_{f}": 0.0 for f in FIGURES}}

    agent_id = await stack.agent(name="queued", llm_config_id="slow")
    runs = []
    for n in range(3):  # one runs, the others wait: the executor has one slot
        reply = await stack.client.post(
            "/v1/runs", json={"agent_id": agent_id, "input": f"run {n}"}, headers=auth()
        )
        assert reply.status_code == 202, reply.text
        runs.append(reply.json()["run_id"])

    async def waiting() -> Any:
        _, found = await health(stack.client)
        queue = found["queue"]
        return found if queue["pending"] >= 1 and queue["free_slots"] == 0 else None

    busy = await eventually(waiting)
    assert busy["status"] == "healthy"  # a deep queue is load, not a fault
    queue = busy["queue"]
    assert queue["depth"] >= queue["pending"] + 1  # the one running is not acknowledged yet
    assert queue["oldest_age_seconds"] >= 0

    async def scraped() -> Any:
        found = await gauges(stack.client)
        return found if found.get("agentrt_run_queue_pending", 0) >= 1 else None

    busy_gauges = await eventually(scraped)
    assert busy_gauges["agentrt_run_queue_up"] == 1.0
    assert busy_gauges["agentrt_run_queue_depth"] >= 2
    assert set(busy_gauges) == {
        "agentrt_run_queue_up",
        *(f"agentrt_run_queue_{f}" for f in FIGURES),
    }

    for run_id in runs:
        done = await stack.client.get(f"/v1/runs/{run_id}/wait?timeout=60", headers=auth())
        assert done.json()["status"] == "succeeded", done.text

    async def drained() -> Any:
        _, found = await health(stack.client)
        return found["queue"]["depth"] == 0 and found["queue"]["free_slots"] == 1

    await eventually(drained)


async def test_figures_that_cannot_be_asked_leave_health_as_the_checks_make_it(
    world: World,
) -> None:
    # This gateway's "executor" is the registry: it serves gRPC health, not GetRunQueue.
    async def checked() -> Any:
        found = await health(world.client)  # once every check answered (a cold start)
        return found if all(c["status"] == "ok" for c in found[1]["checks"].values()) else None

    status, body = await eventually(checked)
    assert (status, body["status"]) == (200, "healthy")
    assert body["queue"] == {"status": "unavailable"}
    assert body["checks"]["executor"]["status"] == "ok"
    assert await gauges(world.client) == {"agentrt_run_queue_up": 0.0}
