"""Queued runs end to end: StartRun, the run queue, resumable events — real NATS, gRPC."""

from __future__ import annotations

import base64
from typing import Any

import grpc
import pytest
import standardwebhooks
from executor_support import (
    StartSystem,
    collect,
    eventually,
    kinds,
    offline,
    run_input,
    services_config,
)

from agentrt.executor.v1 import executor_pb2 as pb
from agentrt_kit.grpc.status import error_from_rpc
from agentrt_kit.grpc.structs import dict_to_struct
from agentrt_testkit.http import RecordingHttp, Reply


@pytest.fixture(params=["nats", "redis", "rabbitmq"])
def brokers(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Executor settings for each queue broker: NATS; Redis for the queue and the event
    bus; RabbitMQ for the queue (its events on NATS). Servers are the run's own."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url()
        return {"queue_backend": "redis", "queue_url": url, "bus_backend": "redis", "bus_url": url}
    if request.param == "rabbitmq":
        server = request.getfixturevalue("rabbitmq_server")
        return {"queue_backend": "rabbitmq", "queue_url": server.url}
    return {}


async def test_a_started_run_is_queued_then_runs_and_its_events_replay(
    make_system: StartSystem, brokers: dict[str, Any]
) -> None:
    system = await make_system(
        services_config=services_config(scripted=offline({"content": "Hi there"})), **brokers
    )
    agent = await system.create_agent(template_id="conversation")
    started = await system.executor.StartRun(pb.StartRunRequest(input=run_input(agent.id, "hello")))
    assert started.created
    assert started.run.status == "queued"
    assert started.run.queued
    done = await system.executor.WaitRun(
        pb.WaitRunRequest(run_id=started.run.run_id, timeout_seconds=20)
    )
    assert done.done, done
    assert done.run.status == "succeeded", done.run
    assert done.run.output.content == "Hi there"
    assert done.run.attempts == 1
    events = await collect(
        system.executor.StreamRunEvents(pb.StreamRunEventsRequest(run_id=started.run.run_id))
    )
    assert kinds(events)[0] == "run_started"
    assert kinds(events)[-1] == "run_completed"
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    rest = await collect(
        system.executor.StreamRunEvents(
            pb.StreamRunEventsRequest(run_id=started.run.run_id, after_sequence=1)
        )
    )
    assert [e.sequence for e in rest] == list(range(2, len(events) + 1))


async def test_a_run_handed_over_at_shutdown_resumes_elsewhere_from_its_checkpoint(
    make_system: StartSystem, brokers: dict[str, Any]
) -> None:
    create = {"name": "create_file", "args": {"filename": "a.txt", "content": "once"}}
    script = offline(
        {"content": "", "tool_calls": [create]},
        {"content": "Wrote it: {tool_result}"},
        latency_ms=600,
    )
    config = services_config(scripted=script)
    timings = {"queue_ack_wait_seconds": 2.0, "lease_seconds": 2.0, **brokers}
    system = await make_system(services_config=config, shutdown_grace_seconds=0.1, **timings)
    second = await system.add_executor(executor_id="executor-b", services_config=config, **timings)
    agent = await system.create_agent(template_id="conversation", toolsets=["create_file"])
    first = system.executors[0]
    # Only the first replica pulls until it is stopped: the second starts pulling later.
    await second.stop()
    started = await first.stub().StartRun(pb.StartRunRequest(input=run_input(agent.id, "write")))
    run_id = started.run.run_id
    stream = first.stub().StreamRunEvents(pb.StreamRunEventsRequest(run_id=run_id))
    seen = []
    async for event in stream:
        seen.append(event)
        if event.WhichOneof("event") == "tool_call_finished":
            break
    stream.cancel()
    await first.stop()  # mid-way through the second model call: handed over
    third = await system.add_executor(executor_id="executor-c", services_config=config, **timings)
    done = await third.stub().WaitRun(pb.WaitRunRequest(run_id=run_id, timeout_seconds=30))
    assert done.run.status == "succeeded", done.run
    assert done.run.attempts == 2
    assert done.run.executor_id == "executor-c"
    assert done.run.tool_calls == 1  # made by the first attempt, counted by the second
    assert "Wrote it" in done.run.output.content
    events = await collect(third.stub().StreamRunEvents(pb.StreamRunEventsRequest(run_id=run_id)))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    names = kinds(events)
    assert names.count("run_started") == 1
    assert names.count("tool_call_started") == 1  # resumed after the tool step, not before
    assert names[-1] == "run_completed"


async def test_a_queued_runs_webhook_is_called_signed_once_it_has_ended(
    make_system: StartSystem,
) -> None:
    secret = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    with RecordingHttp() as http:
        http.script("/hook", Reply(204))
        system = await make_system(
            services_config=services_config(scripted=offline({"content": "Done"})),
            webhook_secret=secret,
            webhook_allowed_networks=["127.0.0.0/8"],
        )
        agent = await system.create_agent(template_id="conversation")
        started = await system.executor.StartRun(
            pb.StartRunRequest(
                input=run_input(agent.id, "go"),
                webhook_url=http.url("/hook"),
                metadata=dict_to_struct({"ticket": "T-1"}),
            )
        )
        await eventually(lambda: http.hits, timeout=20)
        (hit,) = http.hits
        body = standardwebhooks.Webhook(secret).verify(hit.body, hit.headers)
        assert body["type"] == "run.succeeded"
        assert body["data"]["run_id"] == started.run.run_id
        assert body["data"]["metadata"] == {"ticket": "T-1"}


async def test_a_webhook_is_refused_where_no_secret_signs_it(make_system: StartSystem) -> None:
    system = await make_system()
    agent = await system.create_agent(template_id="conversation")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.executor.StartRun(
            pb.StartRunRequest(
                input=run_input(agent.id, "go"), webhook_url="https://hooks.example.com/x"
            )
        )
    assert error_from_rpc(caught.value).reason == "WEBHOOKS_DISABLED"


async def test_the_run_queue_reports_its_figures(
    make_system: StartSystem, brokers: dict[str, Any]
) -> None:
    system = await make_system(max_concurrent_runs=3, **brokers)
    answer = await system.executor.ListQueues(pb.ListQueuesRequest())
    assert [q.name for q in answer.queues] == ["run"]
    figures = answer.queues[0]
    backend = brokers.get("queue_backend", "nats")
    assert (figures.backend, figures.available, figures.error) == (backend, True, "")
    assert (figures.pending, figures.dead_letters) == (0, 0)
    # RabbitMQ does not tell these without its management API (the run's node has it, but
    # this executor is not given its address): unset, never a made-up zero.
    told = backend != "rabbitmq"
    assert figures.HasField("depth") is told
    assert figures.HasField("oldest_age_seconds") is told
    assert figures.HasField("redelivered") is told
    if told:
        assert (figures.depth, figures.oldest_age_seconds, figures.redelivered) == (0, 0, 0)
    assert (answer.bus_backend, answer.free_slots) == (brokers.get("bus_backend", "nats"), 3)
