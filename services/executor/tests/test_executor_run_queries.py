"""Reading runs over gRPC: ListRuns and WaitRun on real servers, SQLite and PostgreSQL.

The listing scenarios run on both databases; WaitRun is shown on one replica, across
two replicas sharing PostgreSQL (the end is heard from the replica running the run),
and, with the application and in-memory twins, when no end is ever heard.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from executor_support import StartSystem, System, collect, offline, run_input, services_config

from agent_executor.adapters.memory import (
    InMemoryRunStore,
    ListEventSink,
    LocalRunEndings,
    MemoryRunEventLog,
)
from agent_executor.application.ports import Admission
from agent_executor.application.run_queries import RunQueries
from agent_executor.domain.runs import (
    MessageDelta,
    RunCompleted,
    RunEvent,
    RunRecord,
    RunStarted,
    RunStatus,
    Usage,
)
from agentrt.executor.v1 import executor_pb2 as pb
from agentrt_kit.concurrency import run_inline
from agentrt_kit.errors import AgentrtError, ResourceExhausted
from agentrt_kit.grpc.status import error_from_rpc

PLAIN = services_config(plain=offline({"content": "Plain words."}))  # never JSON
SLOW = offline({"content": " ".join(f"word{i}" for i in range(60))}, token_latency_ms=20)


@pytest.fixture(params=["sqlite", "postgres"])
def start_system(request: pytest.FixtureRequest) -> StartSystem:
    fixture = "make_system" if request.param == "sqlite" else "make_pg_system"
    start: StartSystem = request.getfixturevalue(fixture)
    return start


async def refused(call: Awaitable[Any]) -> AgentrtError:
    """The error a call was refused with (fails when it was not)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return error_from_rpc(caught.value)


def fields(error: AgentrtError) -> list[str]:
    return [v.field for v in error.violations]


async def six_runs(system: System) -> tuple[str, str, list[str]]:
    """Runs r1..r6 in this order: alice's agent a1 (t1, t1, t2, t2 failed), bob's b1 (t9 x2)."""
    alice = await system.create_agent(template_id="simple-test", owner_id="alice")
    bob = await system.create_agent(template_id="simple-test", owner_id="bob")
    run_ids = []
    for agent, task, fmt in (
        (alice, "t1", ""),
        (alice, "t1", ""),
        (alice, "t2", ""),
        (alice, "t2", "json_object"),  # the reply is not JSON: the run fails
        (bob, "t9", ""),
        (bob, "t9", ""),
    ):
        reply = await system.executor.Execute(
            pb.ExecuteRequest(
                input=run_input(
                    agent.id, "hi", task_id=task, response_format=pb.ResponseFormat(type=fmt)
                )
            )
        )
        assert reply.finish_reason == ("error" if fmt else "stop")
        run_ids.append(reply.run_id)
    return alice.id, bob.id, run_ids


async def list_ids(system: System, **request: Any) -> list[str]:
    reply = await system.executor.ListRuns(pb.ListRunsRequest(**request))
    assert reply.next_page_token == ""
    return [r.run_id for r in reply.runs]


async def test_list_runs_filters_combine_and_come_newest_first(start_system: StartSystem) -> None:
    system = await start_system(services_config=PLAIN)
    alice, bob, (r1, r2, r3, r4, r5, r6) = await six_runs(system)

    assert await list_ids(system) == [r6, r5, r4, r3, r2, r1]
    assert await list_ids(system, agent_id=alice) == [r4, r3, r2, r1]
    assert await list_ids(system, agent_id=alice, task_id="t2") == [r4, r3]
    assert await list_ids(system, task_id="t1") == [r2, r1]
    assert await list_ids(system, status="failed") == [r4]
    assert await list_ids(system, agent_id=alice, status="succeeded") == [r3, r2, r1]
    assert await list_ids(system, status="running") == []
    assert await list_ids(system, owner_id="bob") == [r6, r5]
    assert await list_ids(system, owner_id="alice", task_id="t1") == [r2, r1]
    assert await list_ids(system, owner_id="bob", agent_id=alice) == []
    runs = (await system.executor.ListRuns(pb.ListRunsRequest(agent_id=bob))).runs
    assert [(r.owner_id, r.attempts, r.status, r.task_id) for r in runs] == [
        ("bob", 1, "succeeded", "t9")
    ] * 2
    got = (await system.executor.GetRun(pb.GetRunRequest(run_id=r4))).run
    assert (got.owner_id, got.attempts, got.status) == ("alice", 1, "failed")


async def test_list_runs_pages_through_every_run_once(start_system: StartSystem) -> None:
    system = await start_system(services_config=PLAIN)
    alice, _, (r1, r2, r3, r4, r5, r6) = await six_runs(system)

    pages: list[list[str]] = []
    token = ""
    while True:
        reply = await system.executor.ListRuns(pb.ListRunsRequest(page_size=4, page_token=token))
        pages.append([r.run_id for r in reply.runs])
        token = reply.next_page_token
        if not token:
            break
    assert pages == [[r6, r5, r4, r3], [r2, r1]]

    first = await system.executor.ListRuns(pb.ListRunsRequest(agent_id=alice, page_size=3))
    assert [r.run_id for r in first.runs] == [r4, r3, r2]
    rest = await system.executor.ListRuns(
        pb.ListRunsRequest(agent_id=alice, page_size=3, page_token=first.next_page_token)
    )
    assert ([r.run_id for r in rest.runs], rest.next_page_token) == ([r1], "")


async def test_list_runs_refuses_bad_input_naming_the_field(start_system: StartSystem) -> None:
    system = await start_system(services_config=PLAIN)
    alice, bob, _ = await six_runs(system)
    first = await system.executor.ListRuns(pb.ListRunsRequest(agent_id=alice, page_size=1))
    assert first.next_page_token

    other_filters = await refused(
        system.executor.ListRuns(
            pb.ListRunsRequest(agent_id=bob, page_size=1, page_token=first.next_page_token)
        )
    )
    assert other_filters.code == "INVALID_ARGUMENT"
    assert fields(other_filters) == ["page_token"]
    for request, field in (
        (pb.ListRunsRequest(page_token="not-a-token"), "page_token"),
        (pb.ListRunsRequest(page_size=1001), "page_size"),
        (pb.ListRunsRequest(page_size=-1), "page_size"),
        (pb.ListRunsRequest(status="done"), "status"),
    ):
        error = await refused(system.executor.ListRuns(request))
        assert (error.code, fields(error)) == ("INVALID_ARGUMENT", [field])
    full = await system.executor.ListRuns(pb.ListRunsRequest(page_size=1000))
    assert len(full.runs) == 6


# --------------------------------------------------------------------- WaitRun


async def test_wait_run_answers_at_once_for_an_ended_run(make_system: StartSystem) -> None:
    system = await make_system()
    agent = await system.create_agent(template_id="simple-test")
    reply = await system.executor.Execute(pb.ExecuteRequest(input=run_input(agent.id, "hi")))

    t0 = time.monotonic()
    waited = await system.executor.WaitRun(
        pb.WaitRunRequest(run_id=reply.run_id, timeout_seconds=60)
    )
    assert time.monotonic() - t0 < 5.0  # at once, not after the 60 s timeout
    assert waited.done
    assert (waited.run.run_id, waited.run.status) == (reply.run_id, "succeeded")


async def test_wait_run_answers_when_a_running_run_ends(make_system: StartSystem) -> None:
    # Re-reads only every 30 s: the run's end event is what answers the wait.
    system = await make_system(services_config=services_config(slow=SLOW), wait_poll_seconds=30)
    agent = await system.create_agent(template_id="conversation")
    call = system.executor.ExecuteStream(pb.ExecuteStreamRequest(input=run_input(agent.id, "go")))
    run_id = (await call.read()).run_started.run_id

    waiting = asyncio.ensure_future(
        system.executor.WaitRun(pb.WaitRunRequest(run_id=run_id, timeout_seconds=60))
    )
    await asyncio.sleep(0.2)
    assert not waiting.done()
    events = await collect(call)
    ended_at = time.monotonic()
    assert events[-1].HasField("run_completed")
    waited = await waiting
    assert time.monotonic() - ended_at < 10  # well before the 30 s re-read
    assert waited.done
    assert waited.run.status == "succeeded"
    assert waited.run.finished_at.seconds > 0


async def test_wait_run_answers_running_when_the_timeout_passes(make_system: StartSystem) -> None:
    system = await make_system(services_config=services_config(slow=SLOW))
    agent = await system.create_agent(template_id="conversation")
    call = system.executor.ExecuteStream(pb.ExecuteStreamRequest(input=run_input(agent.id, "go")))
    run_id = (await call.read()).run_started.run_id

    t0 = time.monotonic()
    waited = await system.executor.WaitRun(pb.WaitRunRequest(run_id=run_id, timeout_seconds=0.3))
    assert 0.3 <= time.monotonic() - t0 < 10  # the timeout, not the run's end
    assert not waited.done
    assert waited.run.status == "running"
    at_once = await system.executor.WaitRun(pb.WaitRunRequest(run_id=run_id))
    assert (at_once.done, at_once.run.status) == (False, "running")
    call.cancel()


async def test_wait_run_refuses_unknown_runs_and_bad_timeouts(make_system: StartSystem) -> None:
    system = await make_system()
    unknown = await refused(
        system.executor.WaitRun(pb.WaitRunRequest(run_id="no-such-run", timeout_seconds=5))
    )
    assert (unknown.code, unknown.reason) == ("NOT_FOUND", "RUN_NOT_FOUND")
    for timeout in (-1.0, 300.5, float("inf"), float("nan")):
        error = await refused(
            system.executor.WaitRun(
                pb.WaitRunRequest(run_id="no-such-run", timeout_seconds=timeout)
            )
        )
        assert (error.code, fields(error)) == ("INVALID_ARGUMENT", ["timeout_seconds"])
    missing = await refused(system.executor.WaitRun(pb.WaitRunRequest(timeout_seconds=1)))
    assert fields(missing) == ["run_id"]


async def test_wait_run_is_bounded_by_the_call_deadline(make_system: StartSystem) -> None:
    system = await make_system(services_config=services_config(slow=SLOW))
    agent = await system.create_agent(template_id="conversation")
    call = system.executor.ExecuteStream(pb.ExecuteStreamRequest(input=run_input(agent.id, "go")))
    run_id = (await call.read()).run_started.run_id

    t0 = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.executor.WaitRun(
            pb.WaitRunRequest(run_id=run_id, timeout_seconds=60), timeout=0.3
        )
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 10  # the deadline, not the 60 s timeout
    call.cancel()


async def test_wait_run_hears_a_run_end_on_another_replica(make_pg_system: StartSystem) -> None:
    # The waiting replica re-reads records only every 60 s: only the run's last event,
    # published by the replica running it, can answer the wait in time. It admits one
    # run at a time: a run starting there while the wait is pending shows the wait
    # holds no run slot.
    system = await make_pg_system(
        services_config=services_config(slow=SLOW),
        wait_poll_seconds=60,
        max_concurrent_runs=1,
        executor_id="replica-a",
    )
    other = await system.add_executor(
        services_config=services_config(slow=SLOW), executor_id="replica-b"
    )
    agent = await system.create_agent(template_id="conversation")
    call = other.stub().ExecuteStream(pb.ExecuteStreamRequest(input=run_input(agent.id, "go")))
    run_id = (await call.read()).run_started.run_id

    waiting = asyncio.ensure_future(
        system.executor.WaitRun(pb.WaitRunRequest(run_id=run_id, timeout_seconds=30))
    )
    await asyncio.sleep(0.2)
    quick = await system.create_agent(template_id="simple-test")
    here = await system.executor.Execute(pb.ExecuteRequest(input=run_input(quick.id, "hi")))
    assert here.finish_reason == "stop"
    assert not waiting.done()
    events = await collect(call)
    ended_at = time.monotonic()
    assert events[-1].HasField("run_completed")
    waited = await waiting
    assert time.monotonic() - ended_at < 5.0
    assert waited.done
    assert waited.run.status == "succeeded"
    assert (
        waited.run.executor_id
        == other.settings.executor_id
        != system.executors[0].settings.executor_id
    )


# ------------------------------------------------------------- application tier


def running(run_id: str) -> RunRecord:
    now = datetime.now(UTC)
    return RunRecord(run_id, "agent-a", 1, RunStatus.RUNNING, now, started_at=now)


async def test_a_wait_whose_end_is_never_heard_sees_it_by_re_reading() -> None:
    store = InMemoryRunStore()
    store.admit(running("run-1"), Admission())
    queries = RunQueries(
        store=store, endings=LocalRunEndings(), call_store=run_inline, poll_seconds=0.05
    )

    async def finish_later() -> None:
        await asyncio.sleep(0.2)
        store.finish(
            "run-1", RunStatus.CANCELLED, finished_at=datetime.now(UTC), usage=Usage(), tool_calls=0
        )

    finisher = asyncio.ensure_future(finish_later())
    record, done = await queries.wait("run-1", 10)
    await finisher
    assert done
    assert record.status is RunStatus.CANCELLED


async def test_a_heard_end_answers_a_wait_without_re_reading() -> None:
    store = InMemoryRunStore()
    store.admit(running("run-1"), Admission())
    endings = LocalRunEndings()
    queries = RunQueries(store=store, endings=endings, call_store=run_inline, poll_seconds=60)

    async def finish_later() -> None:
        await asyncio.sleep(0.1)
        store.finish(
            "run-1", RunStatus.SUCCEEDED, finished_at=datetime.now(UTC), usage=Usage(), tool_calls=0
        )
        endings.ended("run-1")

    finisher = asyncio.ensure_future(finish_later())
    t0 = time.monotonic()
    record, done = await queries.wait("run-1", 30)
    await finisher
    assert time.monotonic() - t0 < 2
    assert (done, record.status) == (True, RunStatus.SUCCEEDED)
    assert endings.watchers == {"run-1": []}  # the wait stopped listening


async def test_ids_and_filters_no_run_can_have_are_refused_not_queried(
    start_system: StartSystem,
) -> None:
    system = await start_system(services_config=PLAIN)
    for call in (
        system.executor.GetRun(pb.GetRunRequest(run_id="a\x00b")),
        system.executor.WaitRun(pb.WaitRunRequest(run_id="a\x00b", timeout_seconds=1)),
        system.executor.CancelRun(pb.CancelRunRequest(run_id="a\x00b")),
    ):
        error = await refused(call)
        assert (error.code, error.reason) == ("NOT_FOUND", "RUN_NOT_FOUND")
    for request, field in (
        (pb.ListRunsRequest(agent_id="a\x00"), "agent_id"),
        (pb.ListRunsRequest(task_id="x" * 129), "task_id"),
        (pb.ListRunsRequest(owner_id="o\n"), "owner_id"),
        (pb.ListRunsRequest(page_token="W" * 1025), "page_token"),
    ):
        error = await refused(system.executor.ListRuns(request))
        assert (error.code, fields(error)) == ("INVALID_ARGUMENT", [field])


async def test_a_replica_holds_at_most_max_waits_open() -> None:
    store = InMemoryRunStore()
    store.admit(running("run-1"), Admission())
    queries = RunQueries(store=store, endings=LocalRunEndings(), call_store=run_inline, max_waits=1)
    first = asyncio.ensure_future(queries.wait("run-1", 5))
    await asyncio.sleep(0.05)
    with pytest.raises(ResourceExhausted):
        await queries.wait("run-1", 5)
    store.finish(
        "run-1", RunStatus.SUCCEEDED, finished_at=datetime.now(UTC), usage=Usage(), tool_calls=0
    )
    queries.endings.ended("run-1")  # type: ignore[attr-defined]
    assert (await first)[1] is True
    store.admit(running("run-2"), Admission())
    record, done = await queries.wait("run-2", 0.05)  # the slot was given back
    assert (record.status, done) == (RunStatus.RUNNING, False)


def stored_events(sink: ListEventSink, run_id: str, *bodies: Any) -> None:
    for n, body in enumerate(bodies, 1):
        sink.publish(RunEvent(run_id, n, datetime.now(UTC), body), "agent-a", 1)


async def test_the_events_of_an_ended_run_end_at_its_last_stored_one() -> None:
    store, sink = InMemoryRunStore(), ListEventSink()
    store.admit(running("run-1"), Admission())
    store.finish(
        "run-1", RunStatus.FAILED, finished_at=datetime.now(UTC), usage=Usage(), tool_calls=0
    )
    # Its last event was never stored (a full publisher queue): the read must still end.
    stored_events(sink, "run-1", RunStarted("run-1", "agent-a", 1, "t", ""), MessageDelta("hi"))
    queries = RunQueries(
        store=store,
        endings=LocalRunEndings(),
        call_store=run_inline,
        event_log=MemoryRunEventLog(sink),
        tail_seconds=0.05,
    )
    assert [e.sequence async for e in queries.events("run-1", 0)] == [1, 2]
    assert [e.sequence async for e in queries.events("run-1", 1)] == [2]
    assert [e.sequence async for e in queries.events("run-1", 2)] == []


async def test_an_ended_runs_last_event_still_being_stored_is_waited_for() -> None:
    store, sink = InMemoryRunStore(), ListEventSink()
    store.admit(running("run-1"), Admission())
    store.finish(
        "run-1", RunStatus.SUCCEEDED, finished_at=datetime.now(UTC), usage=Usage(), tool_calls=0
    )
    stored_events(sink, "run-1", RunStarted("run-1", "agent-a", 1, "t", ""))
    queries = RunQueries(
        store=store,
        endings=LocalRunEndings(),
        call_store=run_inline,
        event_log=MemoryRunEventLog(sink),
        tail_seconds=10.0,
    )

    async def store_the_end() -> None:
        await asyncio.sleep(0.1)
        sink.publish(
            RunEvent("run-1", 2, datetime.now(UTC), RunCompleted("stop", Usage())), "agent-a", 1
        )

    storing = asyncio.ensure_future(store_the_end())
    assert [type(e.body) async for e in queries.events("run-1", 0)] == [RunStarted, RunCompleted]
    await storing
    # Once it is stored, a reader at the end is done at once.
    assert [e async for e in queries.events("run-1", 2)] == []


async def test_the_events_of_a_run_are_refused_when_unknown_gone_or_asked_badly() -> None:
    store, sink = InMemoryRunStore(), ListEventSink()
    store.admit(running("run-1"), Admission())
    store.finish(
        "run-1", RunStatus.SUCCEEDED, finished_at=datetime.now(UTC), usage=Usage(), tool_calls=0
    )
    queries = RunQueries(
        store=store,
        endings=LocalRunEndings(),
        call_store=run_inline,
        event_log=MemoryRunEventLog(sink),
    )
    with pytest.raises(AgentrtError) as gone:
        _ = [e async for e in queries.events("run-1", 0)]
    assert gone.value.reason == "RUN_EVENTS_EXPIRED"
    with pytest.raises(AgentrtError) as unknown:
        _ = [e async for e in queries.events("nope", 0)]
    assert unknown.value.reason == "RUN_NOT_FOUND"
    with pytest.raises(AgentrtError) as negative:
        _ = [e async for e in queries.events("run-1", -1)]
    assert negative.value.reason == "VALIDATION_ERROR"
    without = RunQueries(store=store, endings=LocalRunEndings(), call_store=run_inline)
    with pytest.raises(AgentrtError) as unavailable:
        _ = [e async for e in without.events("run-1", 0)]
    assert unavailable.value.code == "UNAVAILABLE"
