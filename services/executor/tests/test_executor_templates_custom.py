"""The `custom` template, run end to end through RunService over the scripted code sandbox.

The sandbox is `ScriptedAgentCode` (the in-memory tools gateway's twin of the tools
service's `RunAgentCode`); the code's tool calls go through real `RemoteTool`s to the
in-memory tools.
"""

from __future__ import annotations

from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from templates_support import Harness, Outcome, offline

from agent_executor.adapters.memory import InMemoryTools, ScriptedAgentCode
from agent_executor.application.builtin.custom import (
    CODE_KEYWORD,
    Custom,
    CustomConfig,
    code_call_id,
)
from agent_executor.application.ports import (
    AgentCodeEvent,
    CodeFinished,
    CodeProgress,
    CodeReport,
    CodeToolCall,
    ToolOutcome,
)
from agent_executor.application.templates import ConfigViolations, validate_config
from agent_executor.domain.runs import (
    RunStatus,
    StepProgress,
    ToolCallFinished,
    ToolCallStarted,
)
from agent_executor.errors import AgentMisconfigured

PYTHON = {
    "codeSource": {"type": "inline", "content": "def main(messages, agent):\n    return 'hi'\n"},
    "runtime": {"language": "python"},
}


def harness(*events: AgentCodeEvent, checkpointer: Any = None, **tool_functions: Any) -> Harness:
    tools = InMemoryTools()
    tools.agent_code = ScriptedAgentCode(*events)
    return Harness(
        Custom(tools),
        offline(),
        tool_functions=tool_functions,
        tools=tools,
        checkpointer=checkpointer,
    )


def script(h: Harness) -> ScriptedAgentCode:
    assert h.tools.agent_code is not None
    return h.tools.agent_code


def code_steps(out: Outcome) -> list[tuple[str, str]]:
    """(state, detail) of the run's `code` step events, in order."""
    return [
        (b.state, b.detail)
        for b in out.bodies
        if isinstance(b, StepProgress) and b.step_id == "code"
    ]


async def search(arguments: Any) -> ToolOutcome:
    return ToolOutcome(
        content=f"3 results for {arguments['q']}",
        data={"hits": 3},
        artifacts=("results.json",),
    )


# ------------------------------------------------------------------ replies


async def test_the_codes_reply_is_the_assistant_message_and_the_runs_output() -> None:
    h = harness(CodeFinished(reply="Hello from code", report=CodeReport(duration_ms=12)))

    out = await h.run(PYTHON, "hi there", system_prompt="Be brief.")

    assert out.record.status is RunStatus.SUCCEEDED
    assert out.answer == "Hello from code"
    assert out.record.output is not None
    assert out.record.output.content == "Hello from code"
    assert out.record.finish_reason == "stop"
    (start,) = script(h).starts
    assert start.language == "python"
    assert start.entry_point == "main"
    assert start.code == PYTHON["codeSource"]["content"]
    assert start.code_path == ""
    assert (start.timeout_seconds, start.memory_mb) == (30, 256)
    assert list(start.messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi there"},
    ]
    assert start.agent["id"] == "agent-1"
    assert start.agent["name"] == "Agent"
    assert start.agent["version"] == 1
    assert start.agent["config"]["runtime"] == {
        "language": "python",
        "version": "",
        "timeout": 30,
        "memoryLimit": 256,
    }
    assert start.context.run_id == out.record.run_id
    assert start.context.workspace
    assert start.context.idempotency_key == ""


async def test_a_streamed_run_streams_the_reply_as_one_delta() -> None:
    h = harness(CodeFinished(reply="streamed reply"))

    out = await h.run(PYTHON, "hi", stream=True)

    assert out.deltas == "streamed reply"
    assert out.completed == ["streamed reply"]


async def test_without_a_system_prompt_the_code_gets_only_the_conversation() -> None:
    h = harness(CodeFinished(reply="ok"))

    await h.run(PYTHON, "first", system_prompt="")

    assert list(script(h).starts[0].messages) == [{"role": "user", "content": "first"}]


async def test_a_file_source_is_sent_as_a_workspace_path_with_its_limits() -> None:
    h = harness(CodeFinished(reply="ok"))
    config = {
        "codeSource": {"type": "file", "content": "agents/bot.js", "entryPoint": "handle"},
        "runtime": {"language": "javascript", "timeout": 5, "memoryLimit": 512},
    }

    out = await h.run(config, "hi")

    assert out.answer == "ok"
    (start,) = script(h).starts
    assert (start.code, start.code_path) == ("", "agents/bot.js")
    assert (start.language, start.entry_point) == ("javascript", "handle")
    assert (start.timeout_seconds, start.memory_mb) == (5, 512)


async def test_with_memory_the_next_turn_gives_the_code_the_whole_conversation() -> None:
    h = harness(CodeFinished(reply="noted"), checkpointer=InMemorySaver())
    memory = {"memory": True}

    await h.run(PYTHON, "one", task_id="t-1", system_prompt="", conversation_config=memory)
    await h.run(PYTHON, "two", task_id="t-1", system_prompt="", conversation_config=memory)

    assert list(script(h).starts[1].messages) == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "noted"},
        {"role": "user", "content": "two"},
    ]


# ------------------------------------------------------------------ progress


async def test_progress_lines_are_step_progress_events_with_their_text() -> None:
    h = harness(
        CodeProgress("reading the question"),
        CodeProgress(""),
        CodeProgress("x" * 5000),
        CodeFinished(reply="done", report=CodeReport(duration_ms=40, cpu_ms=30, max_rss_kb=9000)),
    )

    out = await h.run(PYTHON, "hi")

    steps = code_steps(out)
    assert [s for s, _ in steps] == ["started", "working", "working", "succeeded"]
    assert steps[1][1] == "reading the question"
    assert len(steps[2][1]) == 2000  # a long line is cut
    assert "40 ms" in steps[3][1]
    assert "9000 KiB" in steps[3][1]
    names = {b.step_name for b in out.bodies if isinstance(b, StepProgress)}
    assert names == {"Agent code"}


# ------------------------------------------------------------------ tool calls


async def test_a_tool_call_goes_through_the_agents_tool_with_its_key_events_and_budget() -> None:
    h = harness(
        CodeToolCall("1", "search", {"q": "nats"}),
        CodeFinished(reply="found it"),
        search=search,
    )

    out = await h.run(PYTHON, "hi")

    assert out.answer == "found it"
    ((name, arguments, context),) = h.tools.calls
    assert (name, arguments) == ("search", {"q": "nats"})
    assert context.idempotency_key == f"{out.record.run_id}:code-1"
    assert out.record.tool_calls == 1
    started = [b for b in out.bodies if isinstance(b, ToolCallStarted)]
    finished = [b for b in out.bodies if isinstance(b, ToolCallFinished)]
    assert [(b.tool_call_id, b.tool_name) for b in started] == [("code-1", "search")]
    assert [(b.tool_call_id, b.ok) for b in finished] == [("code-1", True)]
    assert script(h).answers == [
        (
            "1",
            ToolOutcome(
                content="3 results for nats", data={"hits": 3}, artifacts=("results.json",)
            ),
        )
    ]


async def test_a_tool_error_is_answered_as_an_error_and_the_code_goes_on() -> None:
    async def missing(arguments: Any) -> ToolOutcome:
        return ToolOutcome(error_code="NOT_FOUND", error_message="no such file: a.txt")

    h = harness(
        CodeToolCall("7", "read", {"q": "a.txt"}),
        CodeFinished(reply="handled"),
        read=missing,
    )

    out = await h.run(PYTHON, "hi")

    assert out.answer == "handled"
    assert script(h).answers == [
        ("7", ToolOutcome(error_code="NOT_FOUND", error_message="no such file: a.txt"))
    ]
    assert [b.ok for b in out.bodies if isinstance(b, ToolCallFinished)] == [False]


async def test_an_unknown_tool_is_answered_unknown_tool_without_ending_the_run() -> None:
    h = harness(
        CodeToolCall("1", "delete_everything", {}),
        CodeFinished(reply="carried on"),
        search=search,
    )

    out = await h.run(PYTHON, "hi")

    assert out.record.status is RunStatus.SUCCEEDED
    assert out.answer == "carried on"
    ((call_id, answer),) = script(h).answers
    assert call_id == "1"
    assert answer.error_code == "UNKNOWN_TOOL"
    assert "'delete_everything' is not a tool of this agent (its tools: search)" in (
        answer.error_message
    )
    assert h.tools.calls == []
    assert out.record.tool_calls == 0


async def test_the_tool_call_budget_ends_the_run_and_stops_the_code() -> None:
    h = harness(
        CodeToolCall("1", "search", {"q": "a"}),
        CodeToolCall("2", "search", {"q": "b"}),
        CodeFinished(reply="never"),
        search=search,
    )

    out = await h.run(PYTHON, "hi", conversation_config={"limits": {"max_tool_calls": 1}})

    assert out.failure is not None
    assert out.failure.code == "LIMIT_EXCEEDED"
    assert "max tool calls (1)" in out.failure.message
    assert len(h.tools.calls) == 1
    assert script(h).stopped == 1
    assert code_steps(out)[-1][0] == "failed"


def test_a_code_call_id_is_prefixed_and_odd_ones_are_hashed_stably() -> None:
    assert code_call_id("3") == "code-3"
    odd = code_call_id("a call id with spaces and / slashes")
    assert odd == code_call_id("a call id with spaces and / slashes")
    assert odd.startswith("code-")
    assert len(odd) == 37


# ------------------------------------------------------------------ failures


async def test_a_code_timeout_fails_the_run_with_timeout() -> None:
    h = harness(
        CodeFinished(
            error_code="TIMEOUT",
            error_message="killed after 30 s",
            report=CodeReport(exit_code=-9, timed_out=True, killed_reason="TIMEOUT"),
        )
    )

    out = await h.run(PYTHON, "hi")

    assert out.failure is not None
    assert out.failure.code == "TIMEOUT"
    assert "30 s timeout" in out.failure.message
    assert out.record.status is RunStatus.TIMED_OUT
    assert code_steps(out)[-1][0] == "failed"


async def test_a_memory_kill_fails_the_run_with_limit_exceeded_naming_the_limit() -> None:
    h = harness(
        CodeFinished(
            error_code="LIMIT_EXCEEDED",
            error_message="the program used more than 256 MiB",
            report=CodeReport(exit_code=-9, killed_reason="MEMORY", max_rss_kb=262144),
        )
    )

    out = await h.run(PYTHON, "hi")

    assert out.failure is not None
    assert out.failure.code == "LIMIT_EXCEEDED"
    assert "MEMORY limit" in out.failure.message
    assert "256 MiB" in out.failure.message
    assert out.record.status is RunStatus.FAILED


async def test_code_that_raises_fails_the_run_with_code_error_and_its_stderr() -> None:
    h = harness(
        CodeProgress("starting"),
        CodeFinished(
            error_code="CODE_ERROR",
            error_message="ZeroDivisionError: division by zero",
            stderr_tail="debug: x=0\nTraceback (most recent call last): ...",
            report=CodeReport(exit_code=1),
        ),
    )

    out = await h.run(PYTHON, "hi")

    assert out.failure is not None
    assert out.failure.code == "CODE_ERROR"
    assert "ZeroDivisionError: division by zero" in out.failure.message
    assert "debug: x=0" in out.failure.message
    assert out.record.error_code == "CODE_ERROR"
    assert out.record.output is None


@pytest.mark.parametrize(
    ("code", "says"), [("INVALID_CODE", "is invalid"), ("NOT_FOUND", "was not found")]
)
async def test_invalid_or_missing_code_fails_the_run_with_code_error(code: str, says: str) -> None:
    h = harness(CodeFinished(error_code=code, error_message="no function main"))

    out = await h.run(PYTHON, "hi")

    assert out.failure is not None
    assert out.failure.code == "CODE_ERROR"
    assert says in out.failure.message
    assert "no function main" in out.failure.message


async def test_without_a_sandbox_the_run_fails_saying_so() -> None:
    tools = InMemoryTools()  # no agent_code: the tools service has no sandbox
    h = Harness(Custom(tools), offline(), tools=tools)

    out = await h.run(PYTHON, "hi")

    assert out.failure is not None
    assert out.failure.code == "TEMPLATE_FAILED"
    assert "cannot run agent code" in out.failure.message
    assert "no code sandbox" in out.failure.message


async def test_the_runs_own_timeout_stops_code_that_is_still_running() -> None:
    h = harness(CodeProgress("working on it"))  # never finishes

    out = await h.run(PYTHON, "hi", conversation_config={"limits": {"timeout_seconds": 0.3}})

    assert out.failure is not None
    assert out.failure.code == "TIMEOUT"
    assert script(h).stopped == 1


# ------------------------------------------------------------------ configuration


def violations(config: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigViolations) as refused:
        validate_config(CustomConfig, config)
    return {v.field: v.description for v in refused.value.violations}


def with_runtime(**runtime: Any) -> dict[str, Any]:
    return {**PYTHON, "runtime": {"language": "python", **runtime}}


def with_source(**source: Any) -> dict[str, Any]:
    return {**PYTHON, "codeSource": {"type": "inline", "content": "x = 1", **source}}


def test_the_config_defaults_and_camel_case_keys() -> None:
    config = validate_config(CustomConfig, PYTHON)
    assert isinstance(config, CustomConfig)
    assert config.code_source.entry_point == "main"
    assert config.code_source.dependencies == []
    assert (config.runtime.version, config.runtime.timeout, config.runtime.memory_limit) == (
        "",
        30,
        256,
    )


def test_an_unknown_language_is_refused() -> None:
    assert "template_config.runtime.language" in violations(with_runtime(language="ruby"))


@pytest.mark.parametrize("timeout", [0, 301])
def test_a_timeout_outside_1_to_300_is_refused(timeout: int) -> None:
    assert "template_config.runtime.timeout" in violations(with_runtime(timeout=timeout))


@pytest.mark.parametrize("memory", [63, 2049])
def test_a_memory_limit_outside_64_to_2048_is_refused(memory: int) -> None:
    assert "template_config.runtime.memoryLimit" in violations(with_runtime(memoryLimit=memory))


@pytest.mark.parametrize("name", ["1main", "my-main", "main()", ""])
def test_an_entry_point_that_is_not_an_identifier_is_refused(name: str) -> None:
    assert "template_config.codeSource.entryPoint" in violations(with_source(entryPoint=name))


def test_a_dollar_entry_point_is_javascript_only() -> None:
    js = {**with_source(entryPoint="$main"), "runtime": {"language": "javascript"}}
    assert validate_config(CustomConfig, js)
    refused = violations(with_source(entryPoint="$main"))
    assert "not a Python identifier" in refused["template_config"]


def test_sources_dependencies_and_unknown_keys_are_bounded() -> None:
    assert "template_config.codeSource.content" in violations(with_source(content=""))
    assert "template_config.codeSource.content" in violations(with_source(content="x" * 262_145))
    assert "template_config.codeSource.type" in violations(with_source(type="url"))
    assert "template_config.codeSource.dependencies" in violations(
        with_source(dependencies=["m"] * 101)
    )
    assert "template_config.codeSource.dependencies[0]" in violations(
        with_source(dependencies=["x" * 129])
    )
    assert "template_config.runtime.version" in violations(with_runtime(version="1" * 33))
    assert "template_config.extra" in violations({**PYTHON, "extra": 1})
    assert "template_config.codeSource" in violations({"runtime": {"language": "python"}})


@pytest.mark.parametrize("path", ["/etc/passwd", "../other/agent.py", "a/../../b.py", "a\nb"])
def test_a_file_source_must_be_a_path_inside_the_workspace(path: str) -> None:
    assert "template_config.codeSource" in violations(with_source(type="file", content=path))


def test_the_schema_names_the_code_and_bounds_the_timeout_by_the_run_timeout() -> None:
    descriptor = Custom.descriptor()
    schema = descriptor["config_schema"]
    assert schema[CODE_KEYWORD] == {"source": "codeSource", "runtime": "runtime"}
    assert set(schema["required"]) == {"codeSource", "runtime"}
    runtime = schema["$defs"]["Runtime"]["properties"]
    assert runtime["timeout"]["x-agentrt-ceiling"] == "run_timeout_seconds"
    assert (runtime["memoryLimit"]["minimum"], runtime["memoryLimit"]["maximum"]) == (64, 2048)
    source = schema["$defs"]["CodeSource"]["properties"]
    assert source["entryPoint"]["pattern"]
    keys = {f["key"] for f in descriptor["config_fields"]}
    assert keys == {"codeSource", "runtime"}
    assert Custom.problems() == []


async def test_an_agent_with_a_bad_config_is_refused_before_its_run() -> None:
    h = harness(CodeFinished(reply="never"))

    with pytest.raises(AgentMisconfigured) as refused:
        await h.run(with_runtime(timeout=0), "hi")

    assert [v.field for v in refused.value.violations] == ["template_config.runtime.timeout"]
    assert script(h).starts == []
