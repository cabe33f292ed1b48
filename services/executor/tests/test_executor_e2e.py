"""End to end through every built-in template, sessions across restarts, agent updates,
template hot reload and run events on JetStream — real registry, tools, NATS and gRPC."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import grpc
import nats
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

from agentrt.events.v1 import run_events_pb2
from agentrt.executor.v1 import executor_pb2 as pb
from agentrt.registry.v1 import registry_pb2 as rpb
from agentrt_kit.grpc.status import error_from_rpc
from agentrt_kit.nats import Names

PARSE = {"name": "parse_url", "args": {"url": "https://docs.example.org/guide?page=2"}}


async def test_workflow_template_runs_steps_with_tools_on_the_tools_service(
    make_system: StartSystem,
) -> None:
    system = await make_system(
        services_config=services_config(
            scripted=offline(
                {"content": "Looking.", "tool_calls": [PARSE]},
                {"content": "Host: {tool_result}\nSUCCESS"},
            )
        )
    )
    agent = await system.create_agent(
        template_id="langgraph-workflow",
        toolsets=["custom"],
        template_config={
            "steps": [
                {"id": "find", "name": "Find", "prompt": "Parse the URL.", "tools": ["parse_url"]},
                {
                    "id": "report",
                    "name": "Report",
                    "prompt": "Report the host.",
                    "tools": ["parse_url"],
                    "depends_on": ["find"],
                },
            ]
        },
    )
    events = await collect(
        system.executor.ExecuteStream(pb.ExecuteStreamRequest(input=run_input(agent.id, "go")))
    )
    progress = [
        (e.step_progress.step_id, e.step_progress.state)
        for e in events
        if e.HasField("step_progress")
    ]
    assert progress == [
        ("find", "started"),
        ("find", "succeeded"),
        ("report", "started"),
        ("report", "succeeded"),
    ]
    tools = [e.tool_call_finished for e in events if e.HasField("tool_call_finished")]
    assert len(tools) == 2
    assert all(t.ok and "docs.example.org" in t.result_preview for t in tools)
    final = events[-2].message_completed.message.content
    assert final.startswith("Host: ")
    assert "docs.example.org" in final
    assert "SUCCESS" not in final
    assert kinds(events)[-1] == "run_completed"


async def test_task_template_steps_call_tools_and_return_structured_output(
    make_system: StartSystem,
) -> None:
    system = await make_system(
        services_config=services_config(
            scripted=offline(
                {"content": "Summary so far.", "tool_calls": [PARSE]},
                {"content": "Parsed {tool_result}"},
            )
        )
    )
    agent = await system.create_agent(
        template_id="task",
        toolsets=["parse_url"],
        template_config={
            "steps": ["Parse the URL", {"id": "check", "instruction": "Check it"}],
            "parallelExecution": True,
            "outputFormat": "structured",
        },
    )
    reply = await system.executor.Execute(pb.ExecuteRequest(input=run_input(agent.id, "do it")))
    assert reply.finish_reason == "stop"
    report = json.loads(reply.message.content)
    assert report["task"] == "do it"
    assert [s["status"] for s in report["steps"]] == ["succeeded", "succeeded"]
    assert all("docs.example.org" in s["result"] for s in report["steps"])
    run = (await system.executor.GetRun(pb.GetRunRequest(run_id=reply.run_id))).run
    assert run.tool_calls == 2


MEMORY = offline({"content": "first={first_input} count={message_count}"})


async def test_server_side_memory_survives_an_executor_restart(make_system: StartSystem) -> None:
    system = await make_system(services_config=services_config(memory=MEMORY))
    agent = await system.create_agent(
        template_id="conversation", conversation_config={"memory": True}
    )
    first = await system.executor.Execute(
        pb.ExecuteRequest(input=run_input(agent.id, "remember apples", task_id="t-1"))
    )
    assert first.message.content == "first=remember apples count=1"
    await system.executors[0].stop()
    system.executors.clear()
    await system.add_executor(services_config=services_config(memory=MEMORY))
    second = await system.executor.Execute(
        pb.ExecuteRequest(input=run_input(agent.id, "what did I say?", task_id="t-1"))
    )
    assert second.task_id == "t-1"
    assert second.message.content == "first=remember apples count=3"
    # An old client resending the whole conversation adds only its new turn.
    resend = run_input(agent.id, "remember apples", task_id="t-1")
    resend.messages.add(role="assistant", content=first.message.content)
    resend.messages.add(role="user", content="and now?")
    third = await system.executor.Execute(pb.ExecuteRequest(input=resend))
    assert third.message.content == "first=remember apples count=5"
    other = await system.executor.Execute(
        pb.ExecuteRequest(input=run_input(agent.id, "new topic", task_id="t-2"))
    )
    assert other.message.content == "first=new topic count=1"


async def test_memory_lives_in_postgresql_when_configured(make_pg_system: StartSystem) -> None:
    system = await make_pg_system(services_config=services_config(memory=MEMORY))
    agent = await system.create_agent(
        template_id="conversation", conversation_config={"memory": True}
    )
    await system.executor.Execute(
        pb.ExecuteRequest(input=run_input(agent.id, "remember pears", task_id="pg"))
    )
    await system.executors[0].stop()
    system.executors.clear()
    await system.add_executor(services_config=services_config(memory=MEMORY))
    reply = await system.executor.Execute(
        pb.ExecuteRequest(input=run_input(agent.id, "again", task_id="pg"))
    )
    assert reply.message.content == "first=remember pears count=3"
    run = (await system.executor.GetRun(pb.GetRunRequest(run_id=reply.run_id))).run
    assert run.status == "succeeded"


async def test_a_session_takes_one_run_at_a_time(make_system: StartSystem) -> None:
    slow = offline({"content": "done"}, latency_ms=1500)
    system = await make_system(services_config=services_config(slow=slow))
    agent = await system.create_agent(
        template_id="conversation", conversation_config={"memory": True}
    )
    call = system.executor.ExecuteStream(
        pb.ExecuteStreamRequest(input=run_input(agent.id, "one", task_id="busy"))
    )
    assert (await call.read()).HasField("run_started")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.executor.Execute(
            pb.ExecuteRequest(input=run_input(agent.id, "two", task_id="busy"))
        )
    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert error_from_rpc(caught.value).reason == "SESSION_BUSY"
    call.cancel()


async def test_the_next_run_after_an_agent_update_uses_the_new_version(
    make_system: StartSystem,
) -> None:
    system = await make_system()
    agent = await system.create_agent(
        template_id="simple-test", template_config={"response_prefix": "v1: "}
    )
    before = await system.executor.Execute(pb.ExecuteRequest(input=run_input(agent.id, "hi")))
    assert (before.agent_version, before.message.content) == (agent.version, "v1: You said: hi")
    nc = await nats.connect(system.nats_url)
    seen: list[int] = []

    async def on_event(msg: Any) -> None:
        seen.append(1)

    await nc.subscribe(Names(system.prefix).subject("registry", "agent", ">"), cb=on_event)
    updated = await system.agents.UpdateAgent(
        rpb.UpdateAgentRequest(
            agent_id=agent.id,
            spec=rpb.AgentSpec(template_config={"response_prefix": "v2: "}),
        )
    )
    await eventually(lambda: seen)
    await nc.close()

    # The executor hears the event on its own connection, maybe a moment after this test
    # did; the cache has no expiry, so only the event can make it serve version 2.
    async def run_on_new_version() -> Any:
        reply = await system.executor.Execute(pb.ExecuteRequest(input=run_input(agent.id, "hi")))
        return reply if reply.agent_version == updated.agent.version else None

    after = await eventually(run_on_new_version, timeout=2)
    assert after.agent_version == agent.version + 1
    assert after.message.content == "v2: You said: hi"
    await system.agents.SetAgentStatus(
        rpb.SetAgentStatusRequest(agent_id=agent.id, status=rpb.AGENT_STATUS_INACTIVE)
    )

    async def refused() -> bool:
        try:
            await system.executor.Execute(pb.ExecuteRequest(input=run_input(agent.id, "hi")))
        except grpc.aio.AioRpcError as e:
            return e.code() == grpc.StatusCode.FAILED_PRECONDITION
        return False

    await eventually(refused, timeout=5)


PLUGIN = """
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from pydantic import BaseModel

from agent_executor.application.templates import AgentTemplate


class Config(BaseModel):
    greeting: str = "hello"


class Echo(AgentTemplate):
    id = "echo-plugin"
    name = "Echo"
    version = "{version}"
    Config = Config

    def build(self, agent, model, tools):
        greeting = agent.config.greeting

        def reply(state):
            text = next(m.content for m in reversed(state["messages"]) if isinstance(m, HumanMessage))
            return {{"messages": [AIMessage("{label} " + greeting + " " + text)]}}

        graph = StateGraph(MessagesState)
        graph.add_node("reply", reply)
        graph.add_edge(START, "reply")
        graph.add_edge("reply", END)
        return graph.compile()


__agents__ = [Echo]
"""


def write_plugin(folder: Path, version: str, label: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text(
        textwrap.dedent(PLUGIN).format(version=version, label=label)
    )


async def test_template_plugins_reload_without_a_restart(
    make_system: StartSystem, tmp_path: Path
) -> None:
    plugins = tmp_path / "plugins"
    write_plugin(plugins / "echo", "1.0.0", "v1")
    system = await make_system(plugin_dirs=[str(plugins)])

    async def served() -> dict[str, str]:
        listed = await system.executor.ListTemplates(pb.ListTemplatesRequest())
        return {t.id: t.version for t in listed.templates}

    assert (await served())["echo-plugin"] == "1.0.0"
    agent = await system.create_agent(
        template_id="echo-plugin", template_config={"greeting": "hey"}
    )

    async def answer() -> str:
        reply = await system.executor.Execute(pb.ExecuteRequest(input=run_input(agent.id, "you")))
        return reply.message.content

    assert await answer() == "v1 hey you"
    write_plugin(plugins / "echo", "2.0.0", "v2")
    await eventually(lambda: _version_is(served, "2.0.0"), timeout=10)
    assert await answer() == "v2 hey you"
    pinned = await system.create_agent(template_id="echo-plugin", template_version_id="2.0.0")
    assert pinned.spec.template_version_id == "2.0.0"  # the registry saw the new version

    (plugins / "echo" / "__init__.py").write_text("this is not python")

    async def problem_reported() -> bool:
        listed = await system.executor.ListTemplates(pb.ListTemplatesRequest())
        return any("import failed" in p.error for p in listed.problems)

    await eventually(problem_reported, timeout=10)
    assert await answer() == "v2 hey you"  # the last good version keeps serving
    (plugins / "echo" / "__init__.py").unlink()
    await eventually(lambda: _gone(served), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await answer()
    assert error_from_rpc(caught.value).reason == "TEMPLATE_NOT_AVAILABLE"


async def test_a_plugin_dropped_into_a_plugin_dir_that_was_empty_at_start_is_served(
    make_system: StartSystem, tmp_path: Path
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()  # what `make run` leaves: the folder, nothing in it
    system = await make_system(plugin_dirs=[str(plugins)])

    async def served() -> dict[str, str]:
        listed = await system.executor.ListTemplates(pb.ListTemplatesRequest())
        return {t.id: t.version for t in listed.templates}

    assert "echo-plugin" not in await served()
    write_plugin(plugins / "echo", "1.0.0", "new")  # a new folder, then its file
    await eventually(lambda: _version_is(served, "1.0.0"), timeout=10)
    agent = await system.create_agent(template_id="echo-plugin")
    reply = await system.executor.Execute(pb.ExecuteRequest(input=run_input(agent.id, "you")))
    assert reply.message.content == "new hello you"


async def _version_is(served: Any, version: str) -> bool:
    return (await served()).get("echo-plugin") == version


async def _gone(served: Any) -> bool:
    return "echo-plugin" not in await served()


async def test_run_events_are_published_to_jetstream_in_order(make_system: StartSystem) -> None:
    system = await make_system(
        services_config=services_config(
            scripted=offline({"content": "", "tool_calls": [PARSE]}, {"content": "done"})
        )
    )
    agent = await system.create_agent(template_id="conversation", toolsets=["custom"])
    streamed = await collect(
        system.executor.ExecuteStream(pb.ExecuteStreamRequest(input=run_input(agent.id, "go")))
    )
    run_id = streamed[0].run_started.run_id
    nc = await nats.connect(system.nats_url)
    js = nc.jetstream()
    names = Names(system.prefix)
    sub = await js.subscribe(names.subject("runs", "events", run_id), ordered_consumer=True)
    stored: list[run_events_pb2.RunEvent] = []
    while len(stored) < len(streamed):
        msg = await asyncio.wait_for(sub.next_msg(), timeout=5)
        stored.append(run_events_pb2.RunEvent.FromString(msg.data))
        assert msg.headers is not None
        assert msg.headers["Nats-Msg-Id"] == f"{run_id}:{stored[-1].sequence}"
    await nc.close()
    assert [e.sequence for e in stored] == [e.sequence for e in streamed]
    assert [e.event for e in stored] == streamed
    assert {e.agent_version for e in stored} == {agent.version}
    assert stored[-1].type == "run_completed"
