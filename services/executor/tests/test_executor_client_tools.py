"""Client-side function tools and response formats, end to end over real gRPC.

The registry, tools service, NATS and executor run for real; the model is the
offline provider (its client-tool rules), a scripted offline model, or a fake
OpenAI-compatible server whose recorded requests show what a provider is sent.
The offline model's rules and the format checks are also tested on their own.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from executor_support import StartSystem, collect, kinds, offline, run_input, services_config
from fake_openai import FakeOpenAI
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from agent_executor.adapters.providers.offline import OfflineChatModel, ScriptStep
from agent_executor.domain.client_tools import ResponseFormat, minimal_instance
from agentrt.executor.v1 import executor_pb2 as pb
from agentrt_kit.grpc.status import error_from_rpc
from agentrt_kit.grpc.structs import dict_to_struct

WEATHER_ARGS = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "units": {"type": "string", "enum": ["metric", "imperial"]},
    },
    "required": ["city", "units"],
}
TIME_ARGS = {"type": "object", "properties": {"zone": {"type": "string"}}}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "temperature": {"type": "number"},
        "sunny": {"type": "boolean"},
    },
    "required": ["city", "temperature", "sunny"],
    "additionalProperties": False,
}


def client_tool(name: str, parameters: dict[str, Any] | None = None) -> pb.ClientTool:
    tool_ = pb.ClientTool(name=name, description=f"The {name} function")
    if parameters is not None:
        tool_.parameters.CopyFrom(dict_to_struct(parameters))
    return tool_


TOOLS = [client_tool("get_weather", WEATHER_ARGS), client_tool("get_time", TIME_ARGS)]


def schema_format(schema: dict[str, Any], name: str = "weather") -> pb.ResponseFormat:
    fmt = pb.ResponseFormat(type="json_schema", name=name)
    fmt.schema.CopyFrom(dict_to_struct(schema))
    return fmt


async def execute(system: Any, message: pb.RunInput) -> pb.ExecuteResponse:
    return await system.executor.Execute(pb.ExecuteRequest(input=message))


async def refusal(system: Any, message: pb.RunInput) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await execute(system, message)
    return caught.value


def fake_provider(server: FakeOpenAI) -> str:
    return services_config(fake={"type": "openai", "model": "fake-model", "base_url": server.url})


# ------------------------------------------------------------ calling tools


async def test_required_tool_choice_ends_the_run_with_a_call_of_the_first_client_tool(
    make_system: StartSystem,
) -> None:
    system = await make_system()
    agent = await system.create_agent(template_id="conversation")
    reply = await execute(
        system,
        run_input(agent.id, "Oslo", client_tools=TOOLS, tool_choice=pb.ToolChoice(mode="required")),
    )
    assert reply.finish_reason == "tool_calls"
    assert reply.message.role == "assistant"
    (call,) = reply.message.tool_calls
    assert call.name == "get_weather"
    assert call.id
    # Only the required properties, the enum's first value.
    assert json.loads(call.arguments_json) == {"city": "Oslo", "units": "metric"}
    run = (await system.executor.GetRun(pb.GetRunRequest(run_id=reply.run_id))).run
    assert (run.status, run.error_code, run.tool_calls) == ("succeeded", "", 0)


async def test_a_function_tool_choice_calls_that_tool_and_the_stream_ends_with_the_calls(
    make_system: StartSystem,
) -> None:
    system = await make_system()
    agent = await system.create_agent(template_id="simple-test")
    events = await collect(
        system.executor.ExecuteStream(
            pb.ExecuteStreamRequest(
                input=run_input(
                    agent.id,
                    "UTC",
                    client_tools=TOOLS,
                    tool_choice=pb.ToolChoice(mode="function", function_name="get_time"),
                )
            )
        )
    )
    order = kinds(events)
    assert order[-2:] == ["message_completed", "run_completed"]
    assert order.count("message_completed") == 1
    assert events[-1].run_completed.finish_reason == "tool_calls"
    message = events[-2].message_completed.message
    assert [(c.name, json.loads(c.arguments_json)) for c in message.tool_calls] == [
        ("get_time", {"zone": "UTC"})  # no property is required: all of them
    ]


async def test_with_auto_a_client_tool_is_called_only_when_the_user_names_it(
    make_system: StartSystem,
) -> None:
    system = await make_system()
    agent = await system.create_agent(template_id="conversation")
    named = await execute(system, run_input(agent.id, "use get_time please", client_tools=TOOLS))
    assert named.finish_reason == "tool_calls"
    assert [c.name for c in named.message.tool_calls] == ["get_time"]
    plain = await execute(system, run_input(agent.id, "hello there", client_tools=TOOLS))
    assert (plain.finish_reason, plain.message.content) == ("stop", "You said: hello there")
    assert not plain.message.tool_calls


async def test_tool_choice_none_hides_client_tools_but_the_agents_own_tools_still_run(
    make_system: StartSystem,
) -> None:
    system = await make_system()
    agent = await system.create_agent(template_id="conversation", toolsets=["parse_url"])
    none = pb.ToolChoice(mode="none")
    hidden = await execute(
        system, run_input(agent.id, "call get_weather", client_tools=TOOLS, tool_choice=none)
    )
    assert (hidden.finish_reason, hidden.message.content) == ("stop", "You said: call get_weather")
    own = await execute(
        system,
        run_input(
            agent.id,
            '/parse_url {"url": "https://docs.example.org/a"}',
            client_tools=TOOLS,
            tool_choice=none,
        ),
    )
    assert own.finish_reason == "stop"
    assert "docs.example.org" in own.message.content
    run = (await system.executor.GetRun(pb.GetRunRequest(run_id=own.run_id))).run
    assert run.tool_calls == 1


# --------------------------------------------------------------- round trips


async def test_a_stateless_round_trip_answers_with_the_tool_result(
    make_system: StartSystem,
) -> None:
    system = await make_system()
    agent = await system.create_agent(template_id="conversation")
    required = pb.ToolChoice(mode="required")
    first = await execute(
        system, run_input(agent.id, "Oslo", client_tools=TOOLS, tool_choice=required)
    )
    (call,) = first.message.tool_calls
    second = run_input(agent.id, "Oslo", client_tools=TOOLS, tool_choice=required)
    second.messages.add(role="assistant", content="", tool_calls=[call])
    second.messages.add(role="tool", tool_call_id=call.id, content="Sunny, 21 C")
    reply = await execute(system, second)
    assert reply.finish_reason == "stop"
    assert reply.message.content == "get_weather returned: Sunny, 21 C"
    assert reply.task_id != first.task_id  # no session: each request stands alone


async def test_a_session_round_trip_answers_each_pending_call_once(
    make_system: StartSystem, server: FakeOpenAI
) -> None:
    system = await make_system(services_config=fake_provider(server))
    agent = await system.create_agent(
        template_id="conversation", conversation_config={"memory": True}
    )
    server.reply(None, tool_calls=[{"id": "call_w1", "name": "get_weather", "arguments": {}}])
    first = await execute(
        system,
        run_input(
            agent.id,
            "Weather in Oslo?",
            task_id="s1",
            client_tools=TOOLS,
            tool_choice=pb.ToolChoice(mode="required"),
        ),
    )
    assert [c.id for c in first.message.tool_calls] == ["call_w1"]
    sent = server.bodies[0]
    assert sent["tool_choice"] == "required"
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather", "get_time"]
    assert sent["tools"][0]["function"]["parameters"] == WEATHER_ARGS

    # The session holds the call: the client sends only the result.
    server.reply("It is sunny in Oslo.")
    answer = run_input(agent.id, task_id="s1", client_tools=TOOLS)
    answer.messages.add(role="tool", tool_call_id="call_w1", content="Sunny, 21 C")
    second = await execute(system, answer)
    assert (second.finish_reason, second.message.content) == ("stop", "It is sunny in Oslo.")
    roles = [m["role"] for m in server.bodies[1]["messages"]]
    assert roles == ["user", "assistant", "tool"]
    assert server.bodies[1]["messages"][2] == {
        "role": "tool",
        "tool_call_id": "call_w1",
        "content": "Sunny, 21 C",
    }

    # An old-style client resends everything: nothing is added twice.
    server.reply("You are welcome.")
    resend = run_input(agent.id, "Weather in Oslo?", task_id="s1", client_tools=TOOLS)
    resend.messages.add(
        role="assistant", tool_calls=[pb.ToolCall(id="call_w1", name="get_weather")]
    )
    resend.messages.add(role="tool", tool_call_id="call_w1", content="Sunny, 21 C")
    resend.messages.add(role="assistant", content="It is sunny in Oslo.")
    resend.messages.add(role="user", content="thanks")
    await execute(system, resend)
    roles = [m["role"] for m in server.bodies[2]["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "user"]

    # A retried answer to a call the session has answered already is not added again.
    server.reply("Still sunny.")
    retry = run_input(agent.id, "Weather in Oslo?", task_id="s1", client_tools=TOOLS)
    retry.messages.add(role="assistant", tool_calls=[pb.ToolCall(id="call_w1", name="get_weather")])
    retry.messages.add(role="tool", tool_call_id="call_w1", content="Sunny, 21 C")
    await execute(system, retry)
    roles = [m["role"] for m in server.bodies[3]["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "user", "assistant"]


async def test_a_new_turn_leaving_a_session_call_unanswered_sends_an_error_result(
    make_system: StartSystem, server: FakeOpenAI
) -> None:
    system = await make_system(services_config=fake_provider(server))
    agent = await system.create_agent(
        template_id="conversation", conversation_config={"memory": True}
    )
    server.reply(None, tool_calls=[{"id": "call_t1", "name": "get_time", "arguments": {}}])
    await execute(system, run_input(agent.id, "time?", task_id="s2", client_tools=TOOLS))
    server.reply("Never mind then.")
    reply = await execute(system, run_input(agent.id, "forget it", task_id="s2"))
    assert reply.message.content == "Never mind then."
    messages = server.bodies[1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "user"]
    assert messages[2]["tool_call_id"] == "call_t1"
    assert "no result" in messages[2]["content"]


MIXED = offline(
    {
        "content": "Checking.",
        "tool_calls": [
            {"name": "parse_url", "args": {"url": "https://docs.example.org/x"}},
            {"name": "get_time", "args": {"zone": "CET"}},
        ],
    },
    {"content": "Done: {tool_result}"},
)


async def test_a_message_calling_both_kinds_runs_the_server_tools_then_ends_with_the_client_calls(
    make_system: StartSystem,
) -> None:
    system = await make_system(services_config=services_config(mixed=MIXED))
    agent = await system.create_agent(
        template_id="conversation", toolsets=["parse_url"], conversation_config={"memory": True}
    )
    events = await collect(
        system.executor.ExecuteStream(
            pb.ExecuteStreamRequest(
                input=run_input(agent.id, "go", task_id="m1", client_tools=TOOLS)
            )
        )
    )
    order = kinds(events)
    assert order.index("tool_call_finished") < order.index("message_completed")
    assert order[-2:] == ["message_completed", "run_completed"]
    assert events[-1].run_completed.finish_reason == "tool_calls"
    final = events[-2].message_completed.message
    assert final.content == "Checking."
    assert [c.name for c in final.tool_calls] == ["get_time"]  # the server call is not the client's
    finished = next(e.tool_call_finished for e in events if e.HasField("tool_call_finished"))
    assert finished.ok
    assert "docs.example.org" in finished.result_preview
    run_id = events[0].run_started.run_id
    run = (await system.executor.GetRun(pb.GetRunRequest(run_id=run_id))).run
    assert (run.status, run.tool_calls) == ("succeeded", 1)

    answer = run_input(agent.id, task_id="m1", client_tools=TOOLS)
    answer.messages.add(role="tool", tool_call_id=final.tool_calls[0].id, content="12:00 CET")
    reply = await execute(system, answer)
    assert (reply.finish_reason, reply.message.content) == ("stop", "Done: 12:00 CET")


# ----------------------------------------------------------------- refusals


async def test_bad_client_tools_tool_choices_and_tool_messages_are_refused_by_field(
    make_system: StartSystem,
) -> None:
    system = await make_system()
    agent = await system.create_agent(template_id="conversation", toolsets=["parse_url"])
    call = pb.ToolCall(id="c1", name="get_time", arguments_json="{}")

    def with_history(*extra: pb.ChatMessage) -> pb.RunInput:
        message = run_input(agent.id, "hi", client_tools=TOOLS)
        message.messages.extend(extra)
        return message

    cases: list[tuple[pb.RunInput, list[str]]] = [
        (
            run_input(agent.id, "hi", client_tools=[TOOLS[0], client_tool("bad name!")]),
            ["input.client_tools[1].name"],
        ),
        (
            run_input(agent.id, "hi", client_tools=[TOOLS[0], client_tool("get_weather")]),
            ["input.client_tools[1].name"],
        ),
        (
            run_input(agent.id, "hi", client_tools=[client_tool("x", {"type": "nope"})]),
            ["input.client_tools[0].parameters"],
        ),
        (
            run_input(agent.id, "hi", client_tools=[client_tool("x", {"type": "string"})]),
            ["input.client_tools[0].parameters.type"],
        ),
        (
            run_input(agent.id, "hi", client_tools=TOOLS, tool_choice=pb.ToolChoice(mode="often")),
            ["input.tool_choice.mode"],
        ),
        (
            run_input(
                agent.id,
                "hi",
                client_tools=TOOLS,
                tool_choice=pb.ToolChoice(mode="function", function_name="nope"),
            ),
            ["input.tool_choice.function_name"],
        ),
        (
            run_input(agent.id, "hi", tool_choice=pb.ToolChoice(mode="required")),
            ["input.tool_choice.mode"],
        ),
        (
            with_history(
                pb.ChatMessage(role="assistant", tool_calls=[call]),
                pb.ChatMessage(role="tool", tool_call_id="c2", content="x"),
            ),
            ["input.messages[2].tool_call_id", "input.messages[1].tool_calls[0]"],
        ),
        (
            with_history(
                pb.ChatMessage(
                    role="assistant",
                    tool_calls=[pb.ToolCall(id="c1", name="get_time", arguments_json="[1]")],
                ),
                pb.ChatMessage(role="tool", tool_call_id="c1", content="x"),
                pb.ChatMessage(role="tool", tool_call_id="c1", content="again"),
            ),
            ["input.messages[1].tool_calls[0].arguments_json", "input.messages[3].tool_call_id"],
        ),
        (
            with_history(pb.ChatMessage(role="user", content="x", tool_calls=[call])),
            ["input.messages[1].tool_calls"],
        ),
        (
            run_input(agent.id, "hi", response_format=pb.ResponseFormat(type="yaml")),
            ["input.response_format.type"],
        ),
        (
            run_input(agent.id, "hi", response_format=pb.ResponseFormat(type="json_schema")),
            ["input.response_format.schema"],
        ),
        (
            run_input(agent.id, "hi", response_format=schema_format({"type": 5})),
            ["input.response_format.schema"],
        ),
        # Named like one of the agent's own tools.
        (
            run_input(agent.id, "hi", client_tools=[client_tool("parse_url")]),
            ["input.client_tools[0].name"],
        ),
    ]
    for message, fields in cases:
        error = await refusal(system, message)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert [v.field for v in error_from_rpc(error).violations] == fields


async def test_templates_without_client_tools_refuse_them_naming_the_template(
    make_system: StartSystem,
) -> None:
    system = await make_system()
    agent = await system.create_agent(
        template_id="langgraph-workflow",
        template_config={"steps": [{"name": "One", "prompt": "Do it."}]},
    )
    error = await refusal(system, run_input(agent.id, "hi", client_tools=TOOLS))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = error_from_rpc(error)
    assert details.reason == "CLIENT_TOOLS_UNSUPPORTED"
    assert details.metadata["template_id"] == "langgraph-workflow"
    assert "langgraph-workflow" in details.message


# ------------------------------------------------------------ response formats


async def test_json_object_and_json_schema_answers_of_the_offline_model_validate(
    make_system: StartSystem,
) -> None:
    system = await make_system()
    agent = await system.create_agent(template_id="conversation")
    obj = await execute(
        system, run_input(agent.id, "hi", response_format=pb.ResponseFormat(type="json_object"))
    )
    assert obj.finish_reason == "stop"
    assert json.loads(obj.message.content) == {"answer": "You said: hi"}
    events = await collect(
        system.executor.ExecuteStream(
            pb.ExecuteStreamRequest(
                input=run_input(agent.id, "Oslo", response_format=schema_format(ANSWER_SCHEMA))
            )
        )
    )
    assert events[-1].run_completed.finish_reason == "stop"
    answer = json.loads(events[-2].message_completed.message.content)
    assert answer == {"city": "You said: Oslo", "temperature": 1, "sunny": True}


async def test_an_answer_off_the_schema_fails_the_run_with_output_invalid(
    make_system: StartSystem, server: FakeOpenAI
) -> None:
    system = await make_system(services_config=fake_provider(server))
    agent = await system.create_agent(template_id="conversation")
    server.reply('{"city": "Oslo", "temperature": "warm", "sunny": true}')
    reply = await execute(
        system, run_input(agent.id, "weather?", response_format=schema_format(ANSWER_SCHEMA))
    )
    assert server.bodies[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": ANSWER_SCHEMA},
    }
    assert (reply.finish_reason, reply.error.code) == ("error", "OUTPUT_INVALID")
    assert "at $.temperature" in reply.error.message
    assert "'warm' is not of type 'number'" in reply.error.message
    assert not reply.message.content  # never passed through
    run = (await system.executor.GetRun(pb.GetRunRequest(run_id=reply.run_id))).run
    assert (run.status, run.error_code) == ("failed", "OUTPUT_INVALID")

    server.reply("Sure! Here it is.")
    plain = await execute(
        system, run_input(agent.id, "x", response_format=pb.ResponseFormat(type="json_object"))
    )
    assert plain.error.code == "OUTPUT_INVALID"
    assert "not JSON" in plain.error.message
    assert server.bodies[1]["response_format"] == {"type": "json_object"}


async def test_the_response_format_applies_to_a_workflow_answer_too(
    make_system: StartSystem,
) -> None:
    system = await make_system(
        services_config=services_config(steps=offline({"content": "Plain words.\nSUCCESS"}))
    )
    agent = await system.create_agent(
        template_id="langgraph-workflow",
        template_config={"steps": [{"name": "One", "prompt": "Do it."}]},
    )
    reply = await execute(
        system, run_input(agent.id, "go", response_format=pb.ResponseFormat(type="json_object"))
    )
    assert (reply.finish_reason, reply.error.code) == ("error", "OUTPUT_INVALID")


# ------------------------------------------------------- the offline model


@tool
def lookup(query: str) -> str:
    """Look something up (an agent's own tool)."""
    return query


def bound(model: OfflineChatModel, tool_choice: str | None = None, **kwargs: Any) -> Any:
    functions = [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_ARGS}},
        {"type": "function", "function": {"name": "get_time", "parameters": TIME_ARGS}},
    ]
    return model.bind_tools([*functions, lookup], tool_choice=tool_choice).bind(**kwargs)


async def test_offline_required_and_function_choices_call_client_tools() -> None:
    model = OfflineChatModel()
    first = await bound(model, "required").ainvoke([HumanMessage("Bergen")])
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [
        ("get_weather", {"city": "Bergen", "units": "metric"})
    ]
    named = await bound(model, "get_time").ainvoke([HumanMessage("UTC")])
    assert [(c["name"], c["args"]) for c in named.tool_calls] == [("get_time", {"zone": "UTC"})]


async def test_offline_auto_calls_only_a_client_tool_the_user_names() -> None:
    model = OfflineChatModel()
    named = await bound(model).ainvoke([HumanMessage("please get_time")])
    assert [c["name"] for c in named.tool_calls] == ["get_time"]
    # The agent's own tool is not called for being named (only `/lookup {...}` calls it).
    own = await bound(model).ainvoke([HumanMessage("lookup cats")])
    assert (own.tool_calls, own.content) == ([], "You said: lookup cats")


async def test_offline_answers_with_each_tool_result_after_tool_messages() -> None:
    model = OfflineChatModel()
    reply = await bound(model, "required").ainvoke(
        [
            HumanMessage("go"),
            AIMessage(
                "",
                tool_calls=[
                    {"id": "a", "name": "get_weather", "args": {}},
                    {"id": "b", "name": "get_time", "args": {}},
                ],
            ),
            ToolMessage("Rain", tool_call_id="a", name="get_weather"),
            ToolMessage("09:00", tool_call_id="b", name="get_time"),
        ]
    )
    assert reply.tool_calls == []
    assert reply.content == "get_weather returned: Rain\nget_time returned: 09:00"


async def test_offline_shapes_its_own_answers_but_not_scripted_ones_to_the_format() -> None:
    json_object = {"type": "json_object"}
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": ANSWER_SCHEMA}}
    model = OfflineChatModel()
    obj = await model.bind(response_format=json_object).ainvoke([HumanMessage("hi")])
    assert json.loads(obj.content) == {"answer": "You said: hi"}
    shaped = await model.bind(response_format=schema).ainvoke([HumanMessage("hi")])
    assert json.loads(shaped.content) == {"city": "You said: hi", "temperature": 1, "sunny": True}
    scripted = OfflineChatModel(script=[ScriptStep(content="not json")])
    assert (
        await scripted.bind(response_format=json_object).ainvoke([HumanMessage("hi")])
    ).content == "not json"


def test_minimal_instances_follow_the_schema() -> None:
    schema = {
        "$defs": {"Place": {"type": "object", "properties": {"name": {"type": "string"}}}},
        "type": "object",
        "properties": {
            "place": {"$ref": "#/$defs/Place"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "kind": {"anyOf": [{"const": "a"}, {"type": "string"}]},
            "count": {"type": ["null", "integer"]},
            "ok": {"type": "boolean"},
        },
    }
    assert minimal_instance(schema, "t") == {
        "place": {"name": "t"},
        "tags": [],
        "kind": "a",
        "count": 1,
        "ok": True,
    }
    assert minimal_instance({"type": "object", "properties": {}}, "t") == {}


def test_format_problems_name_the_first_failing_path_and_reason() -> None:
    fmt = ResponseFormat("json_schema", "w", ANSWER_SCHEMA)
    assert fmt.problem_with('{"city": "Oslo", "temperature": 3, "sunny": false}') is None
    problem = fmt.problem_with('{"city": 3, "temperature": 3, "sunny": false, "x": 1}')
    assert problem is not None
    assert problem.startswith("the answer does not match the response format 'w': at $")
    assert ResponseFormat("json_object").problem_with("[1, 2]") == (
        "the answer is JSON but not an object (it is an array)"
    )
    assert ResponseFormat("json_object").problem_with("```json\n{}\n```") is not None
    assert ResponseFormat().problem_with("anything") is None
