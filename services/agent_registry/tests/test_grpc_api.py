"""Every RPC and every error over real gRPC, on SQLite and on PostgreSQL, with real NATS."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from nats.js.kv import KeyValue
from registry_support import executor_document, executor_report, proto_spec

from agentrt.registry.v1 import registry_pb2 as pb
from agentrt_kit.catalog import publish_executor
from agentrt_kit.errors import AgentrtError
from agentrt_kit.grpc.status import error_from_rpc


async def refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, AgentrtError]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), error_from_rpc(info.value)


def fields(err: AgentrtError) -> list[str]:
    return [v.field for v in err.violations]


async def create(stub: Any, agent_id: str = "a1", **spec: Any) -> pb.Agent:
    reply = await stub.CreateAgent(
        pb.CreateAgentRequest(agent_id=agent_id, spec=proto_spec(**spec))
    )
    return reply.agent


async def test_create_then_get_returns_every_field(stub: Any) -> None:
    message = proto_spec(
        name="Support bot",
        description="helps",
        avatar_url="https://example.com/a.png",
        type="assistant",
        template_version_id="1.0.0",
        system_prompt="be nice",
        conversation_config={"temperature": 0.5, "max_tokens": 200, "historyLength": 10},
        toolsets=["custom", "files"],
        llm_config_id="offline",
        agent_line_id="line-1",
        version_type="major",
        version_number="1.2",
        owner_id="team-a",
        metadata={"tier": "gold", "n": 3},
    )
    created = await stub.CreateAgent(pb.CreateAgentRequest(agent_id="bot-1", spec=message))
    assert created.agent.version == 1
    assert created.agent.status == pb.AGENT_STATUS_CREATED
    got = (await stub.GetAgent(pb.GetAgentRequest(agent_id="bot-1"))).agent
    assert got.spec == message
    assert got.spec.conversation_config["max_tokens"] == 200
    assert got.created_at.seconds > 0
    assert got.created_by == "anonymous"


async def test_create_without_id_generates_one(stub: Any) -> None:
    reply = await stub.CreateAgent(pb.CreateAgentRequest(spec=proto_spec()))
    assert len(reply.agent.id) == 36
    assert any("latest version" in w for w in reply.warnings)


async def test_actor_and_request_id_are_recorded(stub: Any) -> None:
    metadata = (("x-actor", "alice"), ("x-request-id", "req-42"))
    await stub.CreateAgent(
        pb.CreateAgentRequest(agent_id="a1", spec=proto_spec()), metadata=metadata
    )
    history = await stub.ListAgentEvents(pb.ListAgentEventsRequest(agent_id="a1"))
    assert history.events[0].actor == "alice"
    assert history.events[0].request_id == "req-42"


async def test_create_reports_every_bad_field(stub: Any) -> None:
    code, err = await refused(
        stub.CreateAgent(
            pb.CreateAgentRequest(
                agent_id="bad id!",
                spec=proto_spec(
                    name=" ",
                    avatar_url="ftp://x",
                    conversation_config={"temperature": 3, "max_tokens": 0},
                    toolsets=["a", "a"],
                ),
            )
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.reason == "VALIDATION_ERROR"
    assert set(fields(err)) == {
        "agent_id",
        "spec.name",
        "spec.avatar_url",
        "spec.conversation_config.temperature",
        "spec.conversation_config.max_tokens",
        "spec.toolsets[1]",
    }


async def test_an_agent_may_start_in_any_status(stub: Any) -> None:
    for status in (pb.AGENT_STATUS_ACTIVE, pb.AGENT_STATUS_INACTIVE, pb.AGENT_STATUS_ERROR):
        reply = await stub.CreateAgent(
            pb.CreateAgentRequest(
                spec=proto_spec(name=f"starts-{status}", template_id="simple-test"), status=status
            )
        )
        assert reply.agent.status == status


async def test_unknown_template_and_version_are_refused(stub: Any) -> None:
    _, err = await refused(create(stub, template_id="no-such-template"))
    assert fields(err) == ["spec.template_id"]
    _, err = await refused(create(stub, template_version_id="9.9.9"))
    assert fields(err) == ["spec.template_version_id"]
    assert "no version '9.9.9'" in err.violations[0].description


async def test_config_breaking_the_schema_names_the_paths(stub: Any) -> None:
    code, err = await refused(
        create(
            stub,
            template_id="langgraph-workflow",
            template_config={
                "steps": [{"name": "", "prompt": "p"}, {"prompt": 1}],
                "max_retries": 99,
            },
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(fields(err)) == {
        "spec.template_config.max_retries",
        "spec.template_config.steps[0].name",
        "spec.template_config.steps[1]",
        "spec.template_config.steps[1].prompt",
    }


async def test_duplicate_id_and_duplicate_name_are_conflicts(stub: Any) -> None:
    await create(stub, "a1", name="Bot")
    code, err = await refused(create(stub, "a1", name="Other"))
    assert (code, err.reason) == (grpc.StatusCode.ALREADY_EXISTS, "AGENT_ALREADY_EXISTS")
    code, err = await refused(create(stub, "a2", name="  bot "))
    assert (code, err.reason) == (grpc.StatusCode.ALREADY_EXISTS, "NAME_TAKEN")
    assert fields(err) == ["spec.name"]


async def test_get_at_a_past_version_and_errors(stub: Any) -> None:
    await create(stub, "a1", description="one")
    await stub.UpdateAgent(
        pb.UpdateAgentRequest(
            agent_id="a1",
            spec=pb.AgentSpec(description="two"),
            update_mask={"paths": ["description"]},
        )
    )
    old = await stub.GetAgent(pb.GetAgentRequest(agent_id="a1", version=1))
    assert (old.agent.version, old.agent.spec.description) == (1, "one")
    code, err = await refused(stub.GetAgent(pb.GetAgentRequest(agent_id="a1", version=3)))
    assert (code, err.reason) == (grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND")
    code, _ = await refused(stub.GetAgent(pb.GetAgentRequest(agent_id="a1", version=-1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await refused(stub.GetAgent(pb.GetAgentRequest(agent_id="nope")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, err = await refused(stub.GetAgent(pb.GetAgentRequest(agent_id="")))
    assert (code, fields(err)) == (grpc.StatusCode.INVALID_ARGUMENT, ["agent_id"])


async def test_update_is_partial_and_versioned(stub: Any) -> None:
    await create(stub, "a1", system_prompt="keep me", conversation_config={"temperature": 1})
    reply = await stub.UpdateAgent(
        pb.UpdateAgentRequest(
            agent_id="a1",
            spec=pb.AgentSpec(name="Renamed", description="new"),
            expected_version=1,
        )
    )
    agent = reply.agent
    assert (agent.version, agent.spec.name, agent.spec.description) == (2, "Renamed", "new")
    assert agent.spec.system_prompt == "keep me"
    history = await stub.ListAgentEvents(pb.ListAgentEventsRequest(agent_id="a1"))
    assert list(history.events[1].changed_fields) == ["description", "name"]
    assert history.events[1].changes["name"] == "Renamed"


async def test_update_errors(stub: Any) -> None:
    await create(stub, "a1", name="One")
    await create(stub, "a2", name="Two")
    code, err = await refused(
        stub.UpdateAgent(
            pb.UpdateAgentRequest(agent_id="a1", spec=pb.AgentSpec(name="x"), expected_version=7)
        )
    )
    assert (code, err.reason) == (grpc.StatusCode.ABORTED, "VERSION_MISMATCH")
    assert err.metadata == {"agent_id": "a1", "expected": "7", "actual": "1"}
    code, err = await refused(
        stub.UpdateAgent(
            pb.UpdateAgentRequest(agent_id="a1", update_mask={"paths": ["name", "nonsense"]})
        )
    )
    assert (code, fields(err)) == (grpc.StatusCode.INVALID_ARGUMENT, ["update_mask.paths[1]"])
    code, err = await refused(
        stub.UpdateAgent(pb.UpdateAgentRequest(agent_id="a1", spec=pb.AgentSpec(name="two")))
    )
    assert (code, err.reason) == (grpc.StatusCode.ALREADY_EXISTS, "NAME_TAKEN")
    bad = pb.AgentSpec()
    bad.template_config.update({"response_prefix": 5})
    code, err = await refused(stub.UpdateAgent(pb.UpdateAgentRequest(agent_id="a1", spec=bad)))
    assert fields(err) == ["spec.template_config.response_prefix"]
    code, _ = await refused(
        stub.UpdateAgent(pb.UpdateAgentRequest(agent_id="ghost", spec=pb.AgentSpec(name="z")))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    still = await stub.GetAgent(pb.GetAgentRequest(agent_id="a1"))
    assert (still.agent.version, still.agent.spec.name) == (1, "One")


async def test_rename_frees_the_old_name(stub: Any) -> None:
    await create(stub, "a1", name="Alpha")
    await stub.UpdateAgent(pb.UpdateAgentRequest(agent_id="a1", spec=pb.AgentSpec(name="Beta")))
    assert (await create(stub, "a2", name="alpha")).spec.name == "alpha"
    code, err = await refused(create(stub, "a3", name="BETA"))
    assert err.reason == "NAME_TAKEN"


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        (["active", "inactive", "active"], True),
        (["error", "inactive", "error", "active"], True),
        (["inactive"], False),
        (["active", "created"], False),
        (["error", "created"], False),
    ],
)
async def test_status_lifecycle(stub: Any, path: list[str], allowed: bool) -> None:
    await create(stub, "a1")
    values = {
        s: getattr(pb, f"AGENT_STATUS_{s.upper()}")
        for s in ("created", "active", "inactive", "error")
    }
    previous = "created"
    for i, status in enumerate(path):
        request = pb.SetAgentStatusRequest(agent_id="a1", status=values[status], reason="test")
        if allowed or i < len(path) - 1:
            reply = await stub.SetAgentStatus(request)
            assert reply.agent.status == values[status]
        else:
            code, err = await refused(stub.SetAgentStatus(request))
            assert (code, err.reason) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "ILLEGAL_STATUS_TRANSITION",
            )
            assert f"'{previous}'" in err.message
            assert f"'{status}'" in err.message
        previous = status


async def test_setting_the_same_status_records_nothing(stub: Any) -> None:
    await create(stub, "a1")
    reply = await stub.SetAgentStatus(
        pb.SetAgentStatusRequest(agent_id="a1", status=pb.AGENT_STATUS_CREATED)
    )
    assert reply.agent.version == 1


async def test_status_errors(stub: Any) -> None:
    await create(stub, "a1")
    code, err = await refused(stub.SetAgentStatus(pb.SetAgentStatusRequest(agent_id="a1")))
    assert (code, fields(err)) == (grpc.StatusCode.INVALID_ARGUMENT, ["status"])
    code, _ = await refused(
        stub.SetAgentStatus(
            pb.SetAgentStatusRequest(
                agent_id="a1", status=pb.AGENT_STATUS_ACTIVE, expected_version=5
            )
        )
    )
    assert code == grpc.StatusCode.ABORTED
    code, _ = await refused(
        stub.SetAgentStatus(pb.SetAgentStatusRequest(agent_id="zz", status=pb.AGENT_STATUS_ACTIVE))
    )
    assert code == grpc.StatusCode.NOT_FOUND


async def test_delete_keeps_history_and_frees_the_name(stub: Any) -> None:
    await create(stub, "a1", name="Gone")
    reply = await stub.DeleteAgent(pb.DeleteAgentRequest(agent_id="a1", expected_version=1))
    assert reply.version == 2
    code, _ = await refused(stub.GetAgent(pb.GetAgentRequest(agent_id="a1")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await refused(stub.DeleteAgent(pb.DeleteAgentRequest(agent_id="a1")))
    assert code == grpc.StatusCode.NOT_FOUND
    history = await stub.ListAgentEvents(pb.ListAgentEventsRequest(agent_id="a1"))
    assert [e.type for e in history.events] == ["registered", "deleted"]
    assert (
        await stub.GetAgent(pb.GetAgentRequest(agent_id="a1", version=1))
    ).agent.spec.name == "Gone"
    assert (await create(stub, "a2", name="gone")).id == "a2"
    listed = await stub.ListAgents(pb.ListAgentsRequest())
    assert [a.id for a in listed.agents] == ["a2"]


async def test_recreating_a_deleted_id_continues_its_stream(stub: Any) -> None:
    await create(stub, "a1", name="First")
    await stub.DeleteAgent(pb.DeleteAgentRequest(agent_id="a1"))
    again = await create(stub, "a1", name="Second")
    assert (again.version, again.spec.name, again.status) == (3, "Second", pb.AGENT_STATUS_CREATED)
    history = await stub.ListAgentEvents(pb.ListAgentEventsRequest(agent_id="a1"))
    assert [e.type for e in history.events] == ["registered", "deleted", "reregistered"]
    assert (
        await stub.GetAgent(pb.GetAgentRequest(agent_id="a1", version=1))
    ).agent.spec.name == "First"


async def test_delete_with_a_stale_version_changes_nothing(stub: Any) -> None:
    await create(stub, "a1")
    code, err = await refused(
        stub.DeleteAgent(pb.DeleteAgentRequest(agent_id="a1", expected_version=3))
    )
    assert (code, err.reason) == (grpc.StatusCode.ABORTED, "VERSION_MISMATCH")
    assert (await stub.GetAgent(pb.GetAgentRequest(agent_id="a1"))).agent.version == 1


async def test_history_pages_and_errors(stub: Any) -> None:
    await create(stub, "a1")
    for i in range(4):
        await stub.UpdateAgent(
            pb.UpdateAgentRequest(agent_id="a1", spec=pb.AgentSpec(description=f"d{i}"))
        )
    first = await stub.ListAgentEvents(pb.ListAgentEventsRequest(agent_id="a1", page_size=2))
    second = await stub.ListAgentEvents(
        pb.ListAgentEventsRequest(agent_id="a1", page_size=2, page_token=first.next_page_token)
    )
    third = await stub.ListAgentEvents(
        pb.ListAgentEventsRequest(agent_id="a1", page_size=2, page_token=second.next_page_token)
    )
    versions = [e.version for page in (first, second, third) for e in page.events]
    assert versions == [1, 2, 3, 4, 5]
    assert third.next_page_token == ""
    code, _ = await refused(stub.ListAgentEvents(pb.ListAgentEventsRequest(agent_id="nobody")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, err = await refused(
        stub.ListAgentEvents(pb.ListAgentEventsRequest(agent_id="a1", page_token="garbage!"))
    )
    assert (code, fields(err)) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])


async def test_list_filters_and_pages(stub: Any) -> None:
    for i in range(7):
        await create(
            stub,
            f"a{i}",
            name=f"agent {i}",
            owner_id="even" if i % 2 == 0 else "odd",
            **(
                {
                    "template_id": "langgraph-workflow",
                    "template_config": {"steps": [{"name": "s", "prompt": "p"}]},
                }
                if i == 3
                else {}
            ),
        )
    await stub.SetAgentStatus(
        pb.SetAgentStatusRequest(agent_id="a5", status=pb.AGENT_STATUS_ACTIVE)
    )
    ids: list[str] = []
    token = ""
    while True:
        page = await stub.ListAgents(pb.ListAgentsRequest(page_size=3, page_token=token))
        ids += [a.id for a in page.agents]
        token = page.next_page_token
        if not token:
            break
    assert ids == [f"a{i}" for i in range(7)]
    by_owner = await stub.ListAgents(pb.ListAgentsRequest(owner_id="odd"))
    assert [a.id for a in by_owner.agents] == ["a1", "a3", "a5"]
    by_template = await stub.ListAgents(pb.ListAgentsRequest(template_id="langgraph-workflow"))
    assert [a.id for a in by_template.agents] == ["a3"]
    by_status = await stub.ListAgents(pb.ListAgentsRequest(status=pb.AGENT_STATUS_ACTIVE))
    assert [(a.id, a.version) for a in by_status.agents] == [("a5", 2)]
    first = await stub.ListAgents(pb.ListAgentsRequest(page_size=2))
    code, err = await refused(
        stub.ListAgents(
            pb.ListAgentsRequest(page_size=2, owner_id="odd", page_token=first.next_page_token)
        )
    )
    assert (code, fields(err)) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])
    code, _ = await refused(stub.ListAgents(pb.ListAgentsRequest(page_size=-1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_right_after_a_write_sees_it(stub: Any) -> None:
    for i in range(20):
        await create(stub, f"a{i}", name=f"agent {i}")
        listed = await stub.ListAgents(pb.ListAgentsRequest(page_size=1000))
        assert f"a{i}" in [a.id for a in listed.agents]
        await stub.SetAgentStatus(
            pb.SetAgentStatusRequest(agent_id=f"a{i}", status=pb.AGENT_STATUS_ACTIVE)
        )
        active = await stub.ListAgents(
            pb.ListAgentsRequest(status=pb.AGENT_STATUS_ACTIVE, page_size=1000)
        )
        assert len(active.agents) == i + 1


async def test_stale_list_answers_without_waiting(stub: Any) -> None:
    await create(stub, "a1")
    await stub.ListAgents(pb.ListAgentsRequest())
    listed = await stub.ListAgents(pb.ListAgentsRequest(allow_stale=True))
    assert [a.id for a in listed.agents] == ["a1"]


FLOW_STEPS = [{"name": "a"}, {"name": "b", "depends_on": ["a"]}, {"name": "c", "depends_on": ["b"]}]


async def test_what_would_fail_at_run_time_is_refused_at_create_and_update(
    stub: Any, catalog_kv: KeyValue
) -> None:
    flow = {"template_id": "flow", "template_version_id": "1.0.0"}
    reply = await stub.CreateAgent(
        pb.CreateAgentRequest(
            agent_id="f1",
            spec=proto_spec(llm_config_id="claude", template_config={"steps": FLOW_STEPS}, **flow),
        )
    )
    # No executor has published yet: accepted, but never silently.
    assert reply.warnings == [
        "llm_config_id 'claude' was not checked: no executor has published its model providers yet",
        "the limits in template_config were not checked against the executors' ceilings: "
        "no executor has published them yet",
    ]
    report = executor_report(providers=("offline", "gpt"), run_timeout_seconds=300, max_steps=10)
    await publish_executor(catalog_kv, executor_document(report))

    async def update(**spec: Any) -> Any:
        return await stub.UpdateAgent(
            pb.UpdateAgentRequest(
                agent_id="f1", spec=proto_spec(**spec), update_mask={"paths": list(spec)}
            )
        )

    # The registry's watch sees the executor's entry a moment later.
    for _ in range(250):
        try:
            await update(llm_config_id="claude")
        except grpc.aio.AioRpcError:
            break
        await asyncio.sleep(0.02)
    code, err = await refused(update(llm_config_id="claude"))
    assert (code, fields(err)) == (grpc.StatusCode.INVALID_ARGUMENT, ["spec.llm_config_id"])
    assert "known provider ids: gpt, offline" in err.violations[0].description

    cyclic = [{"name": "a", "depends_on": ["c"]}, *FLOW_STEPS[1:]]
    code, err = await refused(update(template_config={"steps": cyclic}))
    assert (code, fields(err)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["spec.template_config.steps[1].depends_on[0]"],
    )
    assert err.violations[0].description == (
        "steps depend on each other in a cycle: a -> c -> b -> a"
    )
    too_slow = {"steps": [{"name": "a", "timeout": 301}]}
    code, err = await refused(create(stub, "f2", name="F2", template_config=too_slow, **flow))
    assert fields(err) == ["spec.template_config.steps[0].timeout"]
    assert "ceiling of 300" in err.violations[0].description
    code, err = await refused(
        create(
            stub, "f3", name="F3", llm_config_id="nope", template_config={"steps": cyclic}, **flow
        )
    )
    assert set(fields(err)) == {
        "spec.llm_config_id",
        "spec.template_config.steps[1].depends_on[0]",
    }
    reply = await update(llm_config_id="gpt", template_config={"steps": FLOW_STEPS[:2]})
    assert list(reply.warnings) == []
