"""The executor end to end: registry, tools service, NATS and executor over real gRPC."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
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
from agentrt.registry.v1 import registry_pb2 as rpb
from agentrt_kit.grpc.status import error_from_rpc

WRITE_THEN_ANSWER = offline(
    {
        "content": "",
        "tool_calls": [
            {"name": "create_file", "args": {"filename": "notes/hello.txt", "content": "hi there"}}
        ],
    },
    {
        "content": "",
        "tool_calls": [{"name": "read_lines", "args": {"filename": "notes/hello.txt"}}],
    },
    {"content": "The file says: {tool_result}"},
)


async def test_simple_test_agent_calls_tools_on_the_tools_service(
    make_system: StartSystem, tmp_path: Path
) -> None:
    system = await make_system(services_config=services_config(scripted=WRITE_THEN_ANSWER))
    agent = await system.create_agent(
        template_id="simple-test",
        template_config={"response_prefix": "Bot: "},
        toolsets=["custom"],
    )
    reply = await system.executor.Execute(pb.ExecuteRequest(input=run_input(agent.id, "write it")))
    assert reply.finish_reason == "stop"
    assert reply.message.content.startswith("Bot: The file says:")
    assert "hi there" in reply.message.content
    assert reply.agent_version == agent.version
    assert (tmp_path / "workspaces" / agent.id / "notes" / "hello.txt").read_text() == "hi there"
    run = (await system.executor.GetRun(pb.GetRunRequest(run_id=reply.run_id))).run
    assert run.status == "succeeded"
    assert run.tool_calls == 2
    assert run.usage.total_tokens == reply.usage.total_tokens > 0


async def test_stream_events_arrive_in_order_and_end_with_run_completed(
    make_system: StartSystem,
) -> None:
    system = await make_system(
        services_config=services_config(
            scripted=offline(
                {
                    "content": "Looking",
                    "tool_calls": [
                        {"name": "parse_url", "args": {"url": "https://example.com/a?b=1"}}
                    ],
                },
                {"content": "Parsed: {tool_result}"},
            )
        )
    )
    agent = await system.create_agent(template_id="conversation", toolsets=["parse_url"])
    events = await collect(
        system.executor.ExecuteStream(pb.ExecuteStreamRequest(input=run_input(agent.id, "parse")))
    )
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    order = kinds(events)
    assert order[0] == "run_started"
    assert order[-1] == "run_completed"
    first_tool = order.index("tool_call_started")
    assert order[first_tool + 1] == "tool_call_finished"
    assert "message_delta" in order[:first_tool]  # "Looking" streamed before the call
    assert order.index("message_completed") < first_tool
    tail = order[first_tool + 2 :]
    assert tail[-2] == "message_completed"
    assert set(tail[:-2]) == {"message_delta"}
    finished = events[first_tool + 1].tool_call_finished
    assert finished.ok
    assert "example.com" in finished.result_preview
    deltas = "".join(
        e.message_delta.content for e in events[first_tool + 2 :] if e.HasField("message_delta")
    )
    assert deltas == events[-2].message_completed.message.content
    assert events[0].run_started.agent_version == agent.version
    assert events[-1].run_completed.usage.total_tokens > 0


async def test_unknown_inactive_and_malformed_runs_are_refused_with_precise_errors(
    make_system: StartSystem,
) -> None:
    system = await make_system()
    agent = await system.create_agent(template_id="conversation", status=rpb.AGENT_STATUS_INACTIVE)
    cases: list[tuple[pb.RunInput, grpc.StatusCode, str]] = [
        (run_input("no-such-agent", "hi"), grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND"),
        (run_input(agent.id, "hi"), grpc.StatusCode.FAILED_PRECONDITION, "AGENT_INACTIVE"),
        (run_input(agent.id), grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_ERROR"),
    ]
    for message, code, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await system.executor.Execute(pb.ExecuteRequest(input=message))
        assert caught.value.code() == code
        assert error_from_rpc(caught.value).reason == reason
    bad = run_input(agent.id, "hi")
    bad.messages.add(role="robot", content="x")
    bad.sampling.temperature = 3.0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.executor.ExecuteStream(pb.ExecuteStreamRequest(input=bad)).read()
    fields = {v.field for v in error_from_rpc(caught.value).violations}
    assert fields == {"input.messages[1].role", "input.sampling.temperature"}


async def test_run_records_are_read_from_storage_by_any_replica(make_system: StartSystem) -> None:
    system = await make_system()
    agent = await system.create_agent(template_id="conversation")
    reply = await system.executor.Execute(pb.ExecuteRequest(input=run_input(agent.id, "hello")))
    other = await system.add_executor()
    run = (await other.stub().GetRun(pb.GetRunRequest(run_id=reply.run_id))).run
    assert (run.status, run.agent_id, run.agent_version) == ("succeeded", agent.id, agent.version)
    assert run.finished_at.ToDatetime() >= run.started_at.ToDatetime()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await other.stub().GetRun(pb.GetRunRequest(run_id="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_templates_are_listed_and_published_to_the_catalogue(
    make_system: StartSystem,
) -> None:
    system = await make_system()
    listed = await system.executor.ListTemplates(pb.ListTemplatesRequest())
    ids = {t.id for t in listed.templates}
    assert {"simple-test", "conversation"} <= ids
    simple = next(t for t in listed.templates if t.id == "simple-test")
    assert [f["key"] for f in simple.config_fields] == ["response_prefix", "system_prompt"]
    assert (
        await system.executor.ListTemplates(pb.ListTemplatesRequest(framework="other"))
    ).templates == []


SLOW = offline({"content": " ".join(f"word{i}" for i in range(200))}, token_latency_ms=20)


async def test_cancel_run_stops_a_stream_promptly_and_records_it(make_system: StartSystem) -> None:
    system = await make_system(services_config=services_config(slow=SLOW))
    agent = await system.create_agent(template_id="conversation")
    call = system.executor.ExecuteStream(pb.ExecuteStreamRequest(input=run_input(agent.id, "go")))
    started = await call.read()
    run_id = started.run_started.run_id
    assert (await call.read()).HasField("message_delta")
    t0 = asyncio.get_running_loop().time()
    cancelled = await system.executor.CancelRun(pb.CancelRunRequest(run_id=run_id))
    assert cancelled.cancelled
    rest = await collect(call)
    assert asyncio.get_running_loop().time() - t0 < 1.0
    assert rest[-1].run_failed.code == "CANCELLED"
    run = (await system.executor.GetRun(pb.GetRunRequest(run_id=run_id))).run
    assert run.status == "cancelled"
    again = await system.executor.CancelRun(pb.CancelRunRequest(run_id=run_id))
    assert not again.cancelled  # it had ended
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.executor.CancelRun(pb.CancelRunRequest(run_id="unknown-run"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_stream_whose_caller_goes_away_is_cancelled(make_system: StartSystem) -> None:
    system = await make_system(services_config=services_config(slow=SLOW))
    agent = await system.create_agent(template_id="conversation")
    call = system.executor.ExecuteStream(pb.ExecuteStreamRequest(input=run_input(agent.id, "go")))
    run_id = (await call.read()).run_started.run_id
    call.cancel()

    async def recorded() -> bool:
        run = (await system.executor.GetRun(pb.GetRunRequest(run_id=run_id))).run
        return run.status == "cancelled"

    try:
        await eventually(recorded, timeout=5)
    except AssertionError:
        run = (await system.executor.GetRun(pb.GetRunRequest(run_id=run_id))).run
        raise AssertionError(f"{run}") from None


async def run_of(system: Any, run_id: str) -> pb.Run:
    return (await system.executor.GetRun(pb.GetRunRequest(run_id=run_id))).run


async def ended(system: Any, run_id: str, timeout: float = 20) -> pb.Run:
    """The run once it has ended (its record is read until then)."""

    async def check() -> pb.Run | None:
        run = await run_of(system, run_id)
        return run if run.status not in ("queued", "running") else None

    found: pb.Run = await eventually(check, timeout=timeout)
    return found


async def admitted(system: Any, run_id: str) -> None:
    """Wait until the run has a record (it was admitted)."""

    async def check() -> bool:
        try:
            await run_of(system, run_id)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return False
        return True

    await eventually(check, timeout=20)


async def test_a_detached_stream_whose_caller_goes_away_runs_to_its_end(
    make_system: StartSystem,
) -> None:
    system = await make_system(services_config=services_config(slow=SLOW))
    agent = await system.create_agent(template_id="conversation")
    call = system.executor.ExecuteStream(
        pb.ExecuteStreamRequest(input=run_input(agent.id, "go"), detach_on_disconnect=True)
    )
    run_id = (await call.read()).run_started.run_id
    assert (await call.read()).HasField("message_delta")
    call.cancel()
    run = await ended(system, run_id)
    assert run.status == "succeeded", run
    assert "word199" in run.output.content
    # Nobody listened: its events were kept for whoever follows it.
    events = await collect(
        system.executor.StreamRunEvents(pb.StreamRunEventsRequest(run_id=run_id))
    )
    assert kinds(events)[0] == "run_started"
    assert kinds(events)[-1] == "run_completed"


async def test_a_detached_execute_whose_caller_goes_away_runs_to_its_end(
    make_system: StartSystem,
) -> None:
    system = await make_system(
        services_config=services_config(slow=offline({"content": "late"}, latency_ms=1500))
    )
    agent = await system.create_agent(template_id="conversation")
    run_id = "detached-execute"
    call = system.executor.Execute(
        pb.ExecuteRequest(input=run_input(agent.id, "go", run_id=run_id), detach_on_disconnect=True)
    )
    await admitted(system, run_id)
    call.cancel()
    await asyncio.sleep(0.2)
    assert (await run_of(system, run_id)).status == "running"
    run = await ended(system, run_id)
    assert (run.status, run.output.content) == ("succeeded", "late")


async def test_a_detached_calls_deadline_still_cancels_its_run(make_system: StartSystem) -> None:
    system = await make_system(
        services_config=services_config(slow=offline({"content": "late"}, latency_ms=5000))
    )
    agent = await system.create_agent(template_id="conversation")
    run_id = "detached-deadline"
    call = system.executor.Execute(
        pb.ExecuteRequest(
            input=run_input(agent.id, "go", run_id=run_id), detach_on_disconnect=True
        ),
        timeout=2.0,
    )
    await admitted(system, run_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    run = await ended(system, run_id)
    assert (run.status, run.error_code) == ("cancelled", "CANCELLED")


async def test_cancel_reaches_the_replica_running_the_run(make_system: StartSystem) -> None:
    system = await make_system(services_config=services_config(slow=SLOW))
    other = await system.add_executor(services_config=services_config(slow=SLOW))
    agent = await system.create_agent(template_id="conversation")
    call = system.executor.ExecuteStream(pb.ExecuteStreamRequest(input=run_input(agent.id, "go")))
    run_id = (await call.read()).run_started.run_id
    await asyncio.sleep(0.1)  # the other replica's cancel subscription is up
    assert (await other.stub().CancelRun(pb.CancelRunRequest(run_id=run_id))).cancelled
    rest = await asyncio.wait_for(collect(call), timeout=5)
    assert rest[-1].run_failed.code == "CANCELLED"


async def test_run_timeout_ends_the_run_as_timed_out(make_system: StartSystem) -> None:
    system = await make_system(services_config=services_config(slow=offline(latency_ms=3000)))
    agent = await system.create_agent(
        template_id="conversation", conversation_config={"limits": {"timeout_seconds": 0.3}}
    )
    t0 = asyncio.get_running_loop().time()
    reply = await system.executor.Execute(pb.ExecuteRequest(input=run_input(agent.id, "hi")))
    assert asyncio.get_running_loop().time() - t0 < 2.0
    assert reply.finish_reason == "error"
    assert reply.error.code == "TIMEOUT"
    run = (await system.executor.GetRun(pb.GetRunRequest(run_id=reply.run_id))).run
    assert (run.status, run.error_code) == ("timed_out", "TIMEOUT")


async def test_concurrency_limits_refuse_with_resource_exhausted(make_system: StartSystem) -> None:
    slow = services_config(slow=offline(latency_ms=2000))
    system = await make_system(services_config=slow, max_concurrent_runs=2)
    other = await system.add_executor(services_config=slow)
    agent = await system.create_agent(template_id="conversation")
    calls = [
        system.executor.ExecuteStream(pb.ExecuteStreamRequest(input=run_input(agent.id, "a")))
        for _ in range(2)
    ]
    for call in calls:
        assert (await call.read()).HasField("run_started")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.executor.Execute(pb.ExecuteRequest(input=run_input(agent.id, "b")))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_from_rpc(caught.value).reason == "EXECUTOR_BUSY"
    # An agent's own limit holds across replicas: the other executor is idle.
    limited = await system.create_agent(
        template_id="conversation", conversation_config={"limits": {"max_concurrent_runs": 1}}
    )
    first = other.stub().ExecuteStream(pb.ExecuteStreamRequest(input=run_input(limited.id, "a")))
    assert (await first.read()).HasField("run_started")
    third = await system.add_executor(services_config=slow)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await third.stub().Execute(pb.ExecuteRequest(input=run_input(limited.id, "b")))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_from_rpc(caught.value).reason == "AGENT_RUN_LIMIT"
    for call in [*calls, first]:
        call.cancel()


async def test_tool_call_and_step_budgets_end_the_run(make_system: StartSystem) -> None:
    loop = offline(
        *[
            {
                "content": "",
                "tool_calls": [{"name": "parse_url", "args": {"url": "https://a.example/"}}],
            }
        ]
        * 5
    )
    system = await make_system(services_config=services_config(loop=loop), max_tool_calls=2)
    agent = await system.create_agent(template_id="conversation", toolsets=["custom"])
    reply = await system.executor.Execute(pb.ExecuteRequest(input=run_input(agent.id, "go")))
    assert (reply.finish_reason, reply.error.code) == ("error", "LIMIT_EXCEEDED")
    assert "max tool calls (2)" in reply.error.message
    run = (await system.executor.GetRun(pb.GetRunRequest(run_id=reply.run_id))).run
    assert (run.status, run.tool_calls) == ("failed", 2)
    steps = await system.create_agent(
        template_id="conversation",
        toolsets=["custom"],
        conversation_config={"limits": {"max_steps": 3}},
    )
    reply = await system.executor.Execute(pb.ExecuteRequest(input=run_input(steps.id, "go")))
    assert reply.error.code == "LIMIT_EXCEEDED"
    assert "max graph steps (3)" in reply.error.message


async def test_misconfigured_agents_are_refused_naming_the_field(make_system: StartSystem) -> None:
    system = await make_system()
    # An unknown provider never gets this far: the registry refuses it, from the
    # providers this executor published to the catalogue.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await system.create_agent(template_id="conversation", llm_config_id="gpt-nowhere")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error_from_rpc(refused.value).violations] == ["spec.llm_config_id"]
    assert "known provider ids: offline" in error_from_rpc(refused.value).violations[0].description
    cases = [
        ({"toolsets": ["no_such_tool"]}, "toolsets[0]"),
        (
            {"conversation_config": {"limits": {"timeout_seconds": -1}}},
            "conversation_config.limits.timeout_seconds",
        ),
    ]
    for values, field in cases:
        agent = await system.create_agent(template_id="conversation", **values)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await system.executor.Execute(pb.ExecuteRequest(input=run_input(agent.id, "hi")))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert [v.field for v in error_from_rpc(caught.value).violations] == [field]
