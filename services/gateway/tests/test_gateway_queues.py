"""The queues' figures: `GET /v1/queues`, the run queue in `GET /v1/health`, `/metrics`.

Against the real executor and its NATS run queue: runs started in the background wait
when the executor's slots are taken, and health, metrics and `/v1/queues` say so.
Against a fake executor (a real gRPC server answering `ListQueues` as told): a broker
that does not tell a figure (RabbitMQ without its management API) gives null and no
gauge, a broker that is down shows as an unavailable queue — never as an unhealthy
gateway — and an executor that cannot be asked makes `/v1/queues` a 503.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import httpx
from executor_support import eventually, offline, services_config
from gateway_support import ERROR_KEYS, Stack, World, auth, code_of, keyring, running_gateway
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import aio as grpc_health_aio

from agentrt.executor.v1 import executor_pb2 as pb
from agentrt.executor.v1 import executor_pb2_grpc as pb_grpc

MakeStack = Callable[..., Awaitable[Stack]]
SLOW = services_config(slow=offline(latency_ms=1000))
FIGURES = ("depth", "pending", "oldest_age_seconds", "redelivered", "dead_letters")
SAMPLE = re.compile(r"^(agentrt_queue_\w+)\{([^}]*)\} (\S+)$", re.MULTILINE)
LABEL = re.compile(r'(\w+)="([^"]*)"')
KEYS, ENTRIES = keyring(admin=("admin", None), operator=("operator", None), viewer=("viewer", None))

Samples = dict[tuple[str, str, str], float]


async def gauges(client: httpx.AsyncClient) -> Samples:
    """The queues' samples on `/metrics`, by (name, queue, backend)."""
    reply = await client.get("/metrics")
    assert reply.status_code == 200
    found: Samples = {}
    for name, labels, value in SAMPLE.findall(reply.text):
        named = dict(LABEL.findall(labels))
        assert set(named) == {"queue", "backend"}, labels
        found[name, named["queue"], named["backend"]] = float(value)
    return found


async def health(client: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    reply = await client.get("/v1/health", headers=auth())
    return reply.status_code, reply.json()


async def queues(client: httpx.AsyncClient, key: str | None = None) -> httpx.Response:
    headers = auth(key) if key is not None else auth()
    return await client.get("/v1/queues", headers=headers)


async def test_health_metrics_and_queues_report_runs_waiting_for_a_slot(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack({"services_config": SLOW, "max_concurrent_runs": 1})
    status, body = await health(stack.client)
    assert (status, body["status"]) == (200, "healthy")
    assert body["queue"] == {
        "status": "ok",
        "backend": "nats",
        "bus_backend": "nats",
        "depth": 0,
        "pending": 0,
        "oldest_age_seconds": 0.0,
        "redelivered": 0,
        "dead_letters": 0,
        "free_slots": 1,
    }
    idle = await queues(stack.client)
    assert idle.status_code == 200, idle.text
    assert idle.json()["bus_backend"] == "nats"
    assert idle.json()["free_slots"] == 1
    assert idle.json()["queues"][0] == {
        "name": "run",
        "backend": "nats",
        "status": "ok",
        **dict.fromkeys(FIGURES, 0),
    }
    run_labels = ("run", "nats")
    found = await gauges(stack.client)
    assert found[("agentrt_queue_up", *run_labels)] == 1.0
    assert {f: found[(f"agentrt_queue_{f}", *run_labels)] for f in FIGURES} == dict.fromkeys(
        FIGURES, 0.0
    )

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
        return found if found.get(("agentrt_queue_pending", *run_labels), 0) >= 1 else None

    busy_gauges = await eventually(scraped)
    assert busy_gauges[("agentrt_queue_up", *run_labels)] == 1.0
    assert busy_gauges[("agentrt_queue_depth", *run_labels)] >= 2
    listed = (await queues(stack.client)).json()["queues"][0]
    assert (listed["name"], listed["status"]) == ("run", "ok")
    assert listed["depth"] >= 1

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
    # This gateway's "executor" is the registry: it serves gRPC health, not ListQueues.
    async def checked() -> Any:
        found = await health(world.client)  # once every check answered (a cold start)
        return found if all(c["status"] == "ok" for c in found[1]["checks"].values()) else None

    status, body = await eventually(checked)
    assert (status, body["status"]) == (200, "healthy")
    assert body["queue"] == {"status": "unavailable"}
    assert body["checks"]["executor"]["status"] == "ok"
    assert await gauges(world.client) == {("agentrt_queue_up", "run", ""): 0.0}
    refused = await queues(world.client)
    assert refused.status_code == 503
    assert set(refused.json()) == ERROR_KEYS
    assert code_of(refused.json()) == "SERVICE_UNAVAILABLE"
    assert refused.headers["Retry-After"] == "1"


# ---- against a fake executor -----------------------------------------------------------


class FakeExecutor(pb_grpc.ExecutorServicer):
    """Answers `ListQueues` with `reply`; every other RPC is UNIMPLEMENTED."""

    def __init__(self, reply: pb.ListQueuesResponse) -> None:
        self.reply = reply

    async def ListQueues(
        self, request: pb.ListQueuesRequest, context: Any
    ) -> pb.ListQueuesResponse:
        return self.reply


@contextlib.asynccontextmanager
async def fake_executor(reply: pb.ListQueuesResponse) -> AsyncIterator[tuple[grpc.aio.Server, str]]:
    """A gRPC server on a free port answering `ListQueues` and gRPC health (SERVING)."""
    server = grpc.aio.server()
    pb_grpc.add_ExecutorServicer_to_server(FakeExecutor(reply), server)
    health_pb2_grpc.add_HealthServicer_to_server(grpc_health_aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@contextlib.asynccontextmanager
async def gateway_before(
    reply: pb.ListQueuesResponse, nats_url: str, prefix: str
) -> AsyncIterator[tuple[grpc.aio.Server, httpx.AsyncClient]]:
    """The gateway in front of a fake executor (which is its registry too), with keys."""
    async with (
        fake_executor(reply) as (server, target),
        running_gateway(
            nats_url=nats_url,
            nats_prefix=prefix,
            registry_target=target,
            executor_target=target,
            api_keys=ENTRIES,
        ) as client,
    ):
        yield server, client


RABBIT_RUNS_REDIS_DOWN = pb.ListQueuesResponse(
    queues=[
        # RabbitMQ without its management API: depth, age and redeliveries are not told.
        pb.QueueFigures(name="run", backend="rabbitmq", available=True, pending=2, dead_letters=1),
        pb.QueueFigures(
            name="webhook",
            backend="redis",
            available=False,
            error="redis at redis:6379 refused the connection",
        ),
    ],
    bus_backend="redis",
    free_slots=3,
)


async def test_queues_show_figures_not_told_as_null_and_a_broker_down_as_unavailable(
    nats_server: Any, nats_prefix: str
) -> None:
    async with gateway_before(RABBIT_RUNS_REDIS_DOWN, nats_server.url, nats_prefix) as (
        _,
        client,
    ):
        reply = await queues(client, KEYS["admin"])
        assert reply.status_code == 200, reply.text
        assert reply.json() == {
            "bus_backend": "redis",
            "free_slots": 3,
            "queues": [
                {
                    "name": "run",
                    "backend": "rabbitmq",
                    "status": "ok",
                    "depth": None,
                    "pending": 2,
                    "oldest_age_seconds": None,
                    "redelivered": None,
                    "dead_letters": 1,
                },
                {
                    "name": "webhook",
                    "backend": "redis",
                    "status": "unavailable",
                    "error": "redis at redis:6379 refused the connection",
                    **dict.fromkeys(FIGURES),
                },
            ],
        }
        _, body = await health(client)
        assert body["queue"] == {
            "status": "ok",
            "backend": "rabbitmq",
            "bus_backend": "redis",
            "depth": None,
            "pending": 2,
            "oldest_age_seconds": None,
            "redelivered": None,
            "dead_letters": 1,
            "free_slots": 3,
        }
        # A figure not told is left out, not 0; an unavailable queue is down, figureless.
        assert await gauges(client) == {
            ("agentrt_queue_up", "run", "rabbitmq"): 1.0,
            ("agentrt_queue_pending", "run", "rabbitmq"): 2.0,
            ("agentrt_queue_dead_letters", "run", "rabbitmq"): 1.0,
            ("agentrt_queue_up", "webhook", "redis"): 0.0,
        }


async def test_a_run_queue_broker_that_is_down_is_reported_not_judged(
    nats_server: Any, nats_prefix: str
) -> None:
    down = pb.ListQueuesResponse(
        queues=[pb.QueueFigures(name="run", backend="redis", available=False, error="gone")],
        bus_backend="nats",
        free_slots=0,
    )
    async with gateway_before(down, nats_server.url, nats_prefix) as (_, client):

        async def checked() -> Any:
            found = await health(client)
            return found if all(c["status"] == "ok" for c in found[1]["checks"].values()) else None

        status, body = await eventually(checked)
        assert (status, body["status"]) == (200, "healthy")
        assert body["queue"] == {
            "status": "unavailable",
            "backend": "redis",
            "bus_backend": "nats",
            **dict.fromkeys(FIGURES),
            "free_slots": 0,
        }
        listed = (await queues(client)).json()["queues"]
        assert [(q["name"], q["status"], q["error"]) for q in listed] == [
            ("run", "unavailable", "gone")
        ]
        assert await gauges(client) == {("agentrt_queue_up", "run", "redis"): 0.0}


async def test_queues_need_the_admin_role(nats_server: Any, nats_prefix: str) -> None:
    async with gateway_before(RABBIT_RUNS_REDIS_DOWN, nats_server.url, nats_prefix) as (
        _,
        client,
    ):
        assert (await queues(client, KEYS["admin"])).status_code == 200
        assert (await queues(client)).status_code == 200  # the runtime token is admin
        slashed = await client.get("/v1/queues/", headers=auth())
        assert [q["name"] for q in slashed.json()["queues"]] == ["run", "webhook"]
        for role in ("operator", "viewer"):
            refused = await queues(client, KEYS[role])
            assert refused.status_code == 403, refused.text
            assert code_of(refused.json()) == "FORBIDDEN"
            assert refused.json()["details"]["required_role"] == "admin"
        anonymous = await client.get("/v1/queues")
        assert anonymous.status_code == 401
        assert code_of(anonymous.json()) == "INVALID_TOKEN"


async def test_queues_are_a_503_soon_after_the_executor_goes_away(
    nats_server: Any, nats_prefix: str
) -> None:
    async with gateway_before(RABBIT_RUNS_REDIS_DOWN, nats_server.url, nats_prefix) as (
        server,
        client,
    ):
        assert (await queues(client)).status_code == 200
        await server.stop(None)

        async def refused() -> httpx.Response | None:
            reply = await queues(client)
            return reply if reply.status_code != 200 else None

        # Figures are kept at most a second: well within the wait, the executor is asked.
        reply = await eventually(refused, timeout=5)
        assert reply.status_code == 503, reply.text
        assert set(reply.json()) == ERROR_KEYS
        assert code_of(reply.json()) == "SERVICE_UNAVAILABLE"
        assert await gauges(client) == {("agentrt_queue_up", "run", ""): 0.0}
