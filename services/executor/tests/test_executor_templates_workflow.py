"""The `langgraph-workflow` template, run end to end through RunService with offline models."""

from __future__ import annotations

import time
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from pydantic import ValidationError
from templates_support import Harness, Scripted, offline

from agent_executor.adapters.providers.offline import OfflineChatModel
from agent_executor.application.builtin.workflow import (
    Control,
    DependencyCycle,
    Workflow,
    WorkflowConfig,
    split_control,
    topological_order,
)
from agent_executor.application.ports import ToolOutcome
from agent_executor.application.runs import InputMessage
from agent_executor.application.templates import AgentView
from agent_executor.domain.runs import RunStatus, ToolCallFinished, ToolCallStarted
from agent_executor.errors import AgentMisconfigured


def step(name: str, prompt: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "prompt": prompt, **extra}


# ------------------------------------------------------------------ happy path


async def test_steps_run_in_dependency_order_and_the_last_reply_is_the_answer() -> None:
    model = Scripted(
        routes={
            "PLAN-IT": offline("Plan: fly, then hotel.\nSUCCESS"),
            "BOOK-IT": offline("Booked flight and hotel.\nSUCCESS"),
            "CHECK-IT": offline("Budget is fine.\nSUCCESS"),
        }
    )
    config = {
        "steps": [
            step("Check", "CHECK-IT"),
            step("Book", "BOOK-IT", depends_on=["plan"]),
            step("Plan", "PLAN-IT", id="plan"),
        ]
    }

    out = await Harness(Workflow, model).run(config, "Book me a trip to Rome")

    assert out.record.status is RunStatus.SUCCEEDED
    assert out.answer == "Booked flight and hotel."
    assert out.completed == ["Booked flight and hotel."]  # the steps' replies stay internal
    assert out.progress == [
        ("Check", "started", 1),
        ("Check", "succeeded", 1),
        ("plan", "started", 1),
        ("plan", "succeeded", 1),
        ("Book", "started", 1),
        ("Book", "succeeded", 1),
    ]
    book = model.messages_of("BOOK-IT")
    assert isinstance(book[0], SystemMessage)
    system = str(book[0].content)
    assert system.startswith("You are a careful assistant.")
    for word in ("SUCCESS", "WORKING", "FAIL"):
        assert word in system
    assert "BOOK-IT" in system
    assert "Plan: fly, then hotel." in system
    assert "SUCCESS" not in system.split("Plan: fly, then hotel.")[1]  # control line stripped
    assert isinstance(book[-1], HumanMessage)
    assert book[-1].content == "Book me a trip to Rome"
    # Book depends on Plan only, so it does not see Check's result.
    assert "Budget" not in system


async def test_the_answer_is_the_last_successful_step_in_run_order() -> None:
    model = Scripted(routes={"FIRST": offline("first"), "SECOND": offline("second\nSUCCESS")})
    config = {"steps": [step("B", "SECOND", depends_on=["A"]), step("A", "FIRST")]}

    out = await Harness(Workflow, model).run(config)

    assert out.answer == "second"


async def test_a_step_sees_history_size_earlier_messages_and_the_current_turn() -> None:
    model = Scripted(routes={"ONLY": offline("done\nSUCCESS")})
    conversation = [
        InputMessage("user", "m1"),
        InputMessage("assistant", "r1"),
        InputMessage("user", "m2"),
        InputMessage("assistant", "r2"),
        InputMessage("user", "now"),
    ]

    await Harness(Workflow, model).run(
        {"steps": [step("S", "ONLY")], "history_size": 2}, *conversation
    )

    seen = [(type(m).__name__, m.content) for m in model.messages_of("ONLY")[1:]]
    assert seen == [("HumanMessage", "m2"), ("AIMessage", "r2"), ("HumanMessage", "now")]


async def test_history_size_zero_still_shows_the_current_request() -> None:
    model = Scripted(routes={"ONLY": offline("done\nSUCCESS")})

    await Harness(Workflow, model).run(
        {"steps": [step("S", "ONLY")], "history_size": 0},
        InputMessage("user", "old"),
        InputMessage("assistant", "old answer"),
        InputMessage("user", "new"),
    )

    assert [m.content for m in model.messages_of("ONLY")[1:]] == ["new"]


# --------------------------------------------------------------- control lines


@pytest.mark.parametrize(
    ("reply", "control", "rest"),
    [
        ("All done.\nSUCCESS", Control.SUCCESS, "All done."),
        ("All done.\n\n**success**\n\n", Control.SUCCESS, "All done."),
        ("Cannot.\n[FAIL]", Control.FAIL, "Cannot."),
        ("Half way.\n  Working...  ", Control.WORKING, "Half way."),
        ("FAIL", Control.FAIL, ""),
        ("No control line here.", None, "No control line here."),
        ("SUCCESS is near\nkeep going", None, "SUCCESS is near\nkeep going"),
        ("Status: SUCCESS", None, "Status: SUCCESS"),
        ("", None, ""),
    ],
)
def test_control_line_is_the_last_non_empty_line(
    reply: str, control: Control | None, rest: str
) -> None:
    assert split_control(reply) == (control, rest)


async def test_a_reply_without_control_line_counts_as_success() -> None:
    model = Scripted(routes={"A-PROMPT": offline("Here is the plain answer.")})

    out = await Harness(Workflow, model).run({"steps": [step("A", "A-PROMPT")]})

    assert out.record.status is RunStatus.SUCCEEDED
    assert out.answer == "Here is the plain answer."
    assert out.states("A") == ["started", "succeeded"]


async def test_working_calls_the_model_again_for_the_same_step() -> None:
    model = Scripted(
        routes={"DRAFT": offline("Outline written.\nWORKING", "Full essay.\n**SUCCESS**")}
    )

    out = await Harness(Workflow, model).run({"steps": [step("Essay", "DRAFT")]})

    assert out.answer == "Full essay."
    assert model.count("DRAFT") == 2
    assert out.progress == [
        ("Essay", "started", 1),
        ("Essay", "working", 1),
        ("Essay", "succeeded", 1),
    ]
    second = model.messages_of("DRAFT", 1)
    assert isinstance(second[-2], AIMessage)
    assert second[-2].content == "Outline written.\nWORKING"
    assert isinstance(second[-1], SystemMessage)
    assert "Continue" in str(second[-1].content)


async def test_working_past_the_iteration_cap_fails_the_attempt() -> None:
    model = Scripted(
        routes={"LOOP": offline("1\nWORKING", "2\nWORKING", "3\nWORKING", "4\nSUCCESS")}
    )
    config = {"steps": [step("Loop", "LOOP")], "max_working_iterations": 3, "max_retries": 0}

    out = await Harness(Workflow, model).run(config)

    assert model.count("LOOP") == 3
    assert out.record.status is RunStatus.FAILED
    assert out.record.error_code == "TEMPLATE_FAILED"
    assert "'Loop'" in out.record.error_message
    assert "still WORKING after 3 replies" in out.record.error_message
    assert out.progress == [
        ("Loop", "started", 1),
        ("Loop", "working", 1),
        ("Loop", "working", 1),
        ("Loop", "failed", 1),
    ]


async def test_working_cap_failure_is_retried_like_any_failed_attempt() -> None:
    # Attempt 1 replies WORKING twice (the cap). Attempt 2 is given attempt 1's last
    # reply, so the offline script goes on from there: WORKING once more, then done.
    model = Scripted(routes={"LOOP": offline("1\nWORKING", "2\nWORKING", "done\nSUCCESS")})
    config = {"steps": [step("Loop", "LOOP")], "max_working_iterations": 2, "max_retries": 1}

    out = await Harness(Workflow, model).run(config)

    assert out.answer == "done"
    assert model.count("LOOP") == 4
    assert out.progress == [
        ("Loop", "started", 1),
        ("Loop", "working", 1),
        ("Loop", "retrying", 2),
        ("Loop", "working", 2),
        ("Loop", "succeeded", 2),
    ]
    retry = model.messages_of("LOOP", 2)
    assert retry[-2].content == "2\nWORKING"
    assert "still WORKING after 2 replies" in str(retry[-1].content)


# --------------------------------------------------------------------- retries


async def test_a_failed_step_is_retried_with_what_went_wrong() -> None:
    model = Scripted(
        routes={"FETCH": offline("Source was empty.\nFAIL", "Fetched 3 rows.\nSUCCESS")}
    )
    config = {"steps": [step("Fetch", "FETCH", retry_count=2)], "max_retries": 0}

    out = await Harness(Workflow, model).run(config)

    assert out.answer == "Fetched 3 rows."
    assert model.count("FETCH") == 2
    assert out.progress == [
        ("Fetch", "started", 1),
        ("Fetch", "retrying", 2),
        ("Fetch", "succeeded", 2),
    ]
    retry = model.messages_of("FETCH", 1)
    assert retry[-2].content == "Source was empty.\nFAIL"
    assert isinstance(retry[-1], SystemMessage)
    assert "Attempt 1" in str(retry[-1].content)
    assert "Source was empty." in str(retry[-1].content)


async def test_a_step_failing_every_attempt_fails_the_run_with_fail_on_error() -> None:
    model = Scripted(
        routes={
            "BROKEN": offline("nope\nFAIL", "still no\nFAIL", "never\nFAIL", "ok\nSUCCESS"),
            "AFTER": offline("after\nSUCCESS"),
        }
    )
    config = {"steps": [step("Broken", "BROKEN"), step("After", "AFTER")], "max_retries": 2}

    out = await Harness(Workflow, model).run(config)

    assert model.count("BROKEN") == 3  # one attempt and max_retries retries
    assert model.count("AFTER") == 0
    assert out.record.status is RunStatus.FAILED
    assert out.record.error_code == "TEMPLATE_FAILED"
    assert out.failure is not None
    assert out.failure.code == "TEMPLATE_FAILED"
    assert "'Broken' failed after 3 attempt(s)" in out.record.error_message
    assert "never" in out.record.error_message
    assert out.progress == [
        ("Broken", "started", 1),
        ("Broken", "retrying", 2),
        ("Broken", "retrying", 3),
        ("Broken", "failed", 3),
    ]
    assert out.completed == []


async def test_retry_count_of_a_step_overrides_max_retries() -> None:
    model = Scripted(routes={"BROKEN": offline("no\nFAIL")})
    config = {"steps": [step("Broken", "BROKEN", retry_count=0)], "max_retries": 5}

    out = await Harness(Workflow, model).run(config)

    assert model.count("BROKEN") == 1
    assert out.progress[-1] == ("Broken", "failed", 1)


async def test_a_provider_error_fails_the_attempt_and_is_retried() -> None:
    model = Scripted(routes={"CALL": offline("answered\nSUCCESS")}, failures={"CALL": 1})

    out = await Harness(Workflow, model).run({"steps": [step("Call", "CALL")], "max_retries": 1})

    assert out.answer == "answered"
    assert model.count("CALL") == 2
    assert out.states("Call") == ["started", "retrying", "succeeded"]


async def test_without_fail_on_error_dependants_are_skipped_and_others_run() -> None:
    model = Scripted(
        routes={
            "EXTRACT": offline("No data.\nFAIL"),
            "SUMMARISE": offline("summary\nSUCCESS"),
            "GREET": offline("Hello there!\nSUCCESS"),
        }
    )
    config = {
        "steps": [
            step("Extract", "EXTRACT"),
            step("Summarise", "SUMMARISE", depends_on=["Extract"]),
            step("Greet", "GREET"),
        ],
        "fail_on_error": False,
        "max_retries": 0,
    }

    out = await Harness(Workflow, model).run(config)

    assert out.record.status is RunStatus.SUCCEEDED
    assert model.count("SUMMARISE") == 0
    assert out.progress == [
        ("Extract", "started", 1),
        ("Extract", "failed", 1),
        ("Summarise", "skipped", 0),
        ("Greet", "started", 1),
        ("Greet", "succeeded", 1),
    ]
    assert out.answer.startswith("Hello there!\n\nSteps that did not complete: ")
    assert "Extract failed (the step replied FAIL: No data.)" in out.answer
    assert "Summarise skipped (depends on Extract, which did not succeed)" in out.answer


async def test_a_skipped_step_skips_its_own_dependants() -> None:
    model = Scripted(routes={"A-P": offline("x\nFAIL")})
    config = {
        "steps": [
            step("A", "A-P"),
            step("B", "B-P", depends_on=["A"]),
            step("C", "C-P", depends_on=["B"]),
        ],
        "fail_on_error": False,
        "max_retries": 0,
    }

    out = await Harness(Workflow, model).run(config)

    assert out.progress[-2:] == [("B", "skipped", 0), ("C", "skipped", 0)]
    assert out.answer.startswith("No step of the workflow succeeded.")
    assert [k for k, _ in model.calls] == ["A-P"]


# -------------------------------------------------------------------- timeouts


async def test_a_step_timeout_fails_the_attempt_and_the_retry_gets_its_own_time() -> None:
    model = Scripted(routes={"SLOW": offline("made it\nSUCCESS")}, delays={"SLOW": [5.0, 0.0]})
    config = {"steps": [step("Slow", "SLOW", timeout=1)], "step_timeout": 30, "max_retries": 1}

    started = time.monotonic()
    out = await Harness(Workflow, model).run(config)
    elapsed = time.monotonic() - started

    assert 1.0 <= elapsed < 2.0
    assert out.answer == "made it"
    assert out.progress == [
        ("Slow", "started", 1),
        ("Slow", "retrying", 2),
        ("Slow", "succeeded", 2),
    ]
    retry = model.messages_of("SLOW", 1)
    assert "timed out after 1 s" in str(retry[-1].content)


async def test_step_timeout_applies_to_steps_without_their_own() -> None:
    model = Scripted(routes={"SLOW": OfflineChatModel(latency_ms=5_000)})
    config = {"steps": [step("Slow", "SLOW")], "step_timeout": 1, "max_retries": 0}

    started = time.monotonic()
    out = await Harness(Workflow, model).run(config)

    assert time.monotonic() - started < 2.0
    assert out.record.error_code == "TEMPLATE_FAILED"
    assert "'Slow' failed after 1 attempt(s): timed out after 1 s" in out.record.error_message
    assert out.progress == [("Slow", "started", 1), ("Slow", "failed", 1)]


# ----------------------------------------------------------------------- tools


async def lookup(args: Any) -> ToolOutcome:
    return ToolOutcome(content=f"rome-facts:{args.get('q')}")


async def test_a_step_calls_its_tools_and_reads_their_results() -> None:
    model = Scripted(
        routes={
            "RESEARCH": offline(
                {"content": "", "tool_calls": [{"name": "lookup", "args": {"q": "rome"}}]},
                "Found {tool_result}\nSUCCESS",
            )
        }
    )
    harness = Harness(Workflow, model, tool_functions={"lookup": lookup, "other": lookup})
    config = {"steps": [step("Research", "RESEARCH", tools=["lookup"])]}

    out = await harness.run(config)

    assert out.answer == "Found rome-facts:rome"
    assert [(name, args) for name, args, _ in harness.tools.calls] == [("lookup", {"q": "rome"})]
    started = [b for b in out.bodies if isinstance(b, ToolCallStarted)]
    finished = [b for b in out.bodies if isinstance(b, ToolCallFinished)]
    assert [b.tool_name for b in started] == ["lookup"]
    assert finished[0].ok


async def test_a_step_cannot_call_tools_it_was_not_given() -> None:
    model = Scripted(
        routes={
            "NO-TOOLS": offline(
                {"content": "", "tool_calls": [{"name": "other", "args": {"q": "x"}}]},
                "Could not: {tool_result}\nSUCCESS",
            )
        }
    )
    harness = Harness(Workflow, model, tool_functions={"lookup": lookup, "other": lookup})
    config = {"steps": [step("Plain", "NO-TOOLS", tools=["lookup"])]}

    out = await harness.run(config)

    assert harness.tools.calls == []
    result = model.messages_of("NO-TOOLS", 1)[-1]
    assert isinstance(result, ToolMessage)
    assert result.status == "error"
    assert "'other' is not a tool of this step (its tools: lookup)" in str(result.content)
    assert out.answer.startswith("Could not: Error:")


def call_lookup(n: int) -> dict[str, Any]:
    return {"content": "", "tool_calls": [{"name": "lookup", "args": {"q": str(n)}}]}


async def test_the_tool_call_budget_ends_the_run_without_retries() -> None:
    model = Scripted(routes={"GREEDY": offline(call_lookup(1), call_lookup(2), "done\nSUCCESS")})
    harness = Harness(Workflow, model, tool_functions={"lookup": lookup})
    config = {"steps": [step("Greedy", "GREEDY", tools=["lookup"])], "max_retries": 3}

    out = await harness.run(config, conversation_config={"limits": {"max_tool_calls": 1}})

    assert out.record.error_code == "LIMIT_EXCEEDED"
    assert "max tool calls (1)" in out.record.error_message
    assert len(harness.tools.calls) == 1
    assert model.count("GREEDY") == 2
    assert out.states("Greedy") == ["started"]


async def test_a_step_that_keeps_calling_tools_is_stopped_by_max_steps() -> None:
    model = Scripted(routes={"LOOPY": offline(*(call_lookup(n) for n in range(10)))})
    harness = Harness(Workflow, model, tool_functions={"lookup": lookup})
    config = {"steps": [step("Loopy", "LOOPY", tools=["lookup"])]}

    out = await harness.run(config, conversation_config={"limits": {"max_steps": 4}})

    assert out.record.error_code == "LIMIT_EXCEEDED"
    assert "'Loopy' made 4 model calls in one turn" in out.record.error_message
    assert model.count("LOOPY") == 4
    assert len(harness.tools.calls) == 4


async def test_an_unknown_tool_name_refuses_the_run_naming_the_field() -> None:
    harness = Harness(Workflow, Scripted(), tool_functions={"lookup": lookup})
    harness.agent({"steps": [step("A", "a"), step("B", "b", tools=["lookup", "nope"])]})

    with pytest.raises(AgentMisconfigured) as refused:
        await harness.service.start(_request())

    [violation] = refused.value.violations
    assert "template_config.steps[1].tools[1]" in violation.description
    assert "no tool 'nope' (its tools: lookup)" in violation.description


def test_build_raises_value_error_for_an_unknown_tool() -> None:
    config = WorkflowConfig.model_validate({"steps": [step("A", "a", tools=["ghost"])]})
    view = AgentView(id="a", version=1, name="A", system_prompt="", config=config)

    with pytest.raises(ValueError, match=r"template_config\.steps\[0\]\.tools\[0\].*'ghost'"):
        Workflow().build(view, OfflineChatModel(), [])


# --------------------------------------------------------------------- routing


async def test_an_in_scope_request_runs_the_steps() -> None:
    model = Scripted(
        routes={
            "ANSWER-IT": offline("Rome is lovely in May.\nSUCCESS"),
            "travel questions": offline("Happy to help with travel.\nSUCCESS"),
        }
    )
    config = {
        "steps": [step("Answer", "ANSWER-IT")],
        "workflow_responsibility": "travel questions",
    }

    out = await Harness(Workflow, model).run(config, "When should I visit Rome?")

    assert out.answer == "Rome is lovely in May."
    assert [k for k, _ in model.calls] == ["travel questions", "ANSWER-IT"]
    assert out.progress == [
        ("routing", "started", 1),
        ("routing", "succeeded", 1),
        ("Answer", "started", 1),
        ("Answer", "succeeded", 1),
    ]
    routing = model.messages_of("travel questions")
    assert isinstance(routing[0], SystemMessage)
    assert routing[-1].content == "When should I visit Rome?"


async def test_an_out_of_scope_request_is_declined_and_the_steps_skipped() -> None:
    model = Scripted(
        routes={
            "travel questions": offline("I can only help with travel.\n**FAIL**"),
        }
    )
    config = {
        "steps": [step("Answer", "ANSWER-IT"), step("Polish", "POLISH-IT")],
        "workflow_responsibility": "travel questions",
    }

    out = await Harness(Workflow, model).run(config, "Fix my car")

    assert out.record.status is RunStatus.SUCCEEDED
    assert out.answer == "I can only help with travel."
    assert [k for k, _ in model.calls] == ["travel questions"]
    assert out.progress == [
        ("routing", "started", 1),
        ("routing", "succeeded", 1),
        ("Answer", "skipped", 0),
        ("Polish", "skipped", 0),
    ]


async def test_a_routing_call_that_keeps_failing_fails_the_run() -> None:
    model = Scripted(routes={"travel questions": offline("x")}, failures={"travel questions": 2})
    config = {
        "steps": [step("Answer", "ANSWER-IT")],
        "workflow_responsibility": "travel questions",
        "max_retries": 1,
    }

    out = await Harness(Workflow, model).run(config)

    assert out.record.error_code == "TEMPLATE_FAILED"
    assert "routing step failed after 2 attempt(s)" in out.record.error_message
    assert out.progress == [
        ("routing", "started", 1),
        ("routing", "retrying", 2),
        ("routing", "failed", 2),
    ]


async def test_a_routing_timeout_is_retried() -> None:
    model = Scripted(
        routes={"travel questions": offline("fine\nSUCCESS"), "GO": offline("went\nSUCCESS")},
        delays={"travel questions": [5.0]},
    )
    config = {
        "steps": [step("Go", "GO")],
        "workflow_responsibility": "travel questions",
        "step_timeout": 1,
        "max_retries": 1,
    }

    out = await Harness(Workflow, model).run(config)

    assert out.answer == "went"
    assert out.states("routing") == ["started", "retrying", "succeeded"]


# ------------------------------------------------------ streaming and sessions


async def test_only_the_final_answer_is_streamed() -> None:
    model = Scripted(
        routes={
            "ONE": offline("first part\nWORKING", "first done\nSUCCESS"),
            "TWO": offline("The final answer.\nSUCCESS"),
        }
    )

    out = await Harness(Workflow, model).run(
        {"steps": [step("One", "ONE"), step("Two", "TWO")]}, stream=True
    )

    assert out.deltas == "The final answer."
    assert out.completed == ["The final answer."]


async def test_a_session_keeps_only_the_answers_in_the_conversation() -> None:
    model = Scripted(routes={"REPLY": offline("answer\nSUCCESS")})
    harness = Harness(Workflow, model, checkpointer=InMemorySaver())
    config = {"steps": [step("Reply", "REPLY")]}
    memory = {"conversation_config": {"memory": True}}

    first = await harness.run(config, "turn one", task_id="t1", **memory)
    second = await harness.run(config, "turn two", task_id="t1", **memory)

    assert first.answer == second.answer == "answer"
    seen = [(type(m).__name__, m.content) for m in model.messages_of("REPLY", 1)[1:]]
    assert seen == [
        ("HumanMessage", "turn one"),
        ("AIMessage", "answer"),
        ("HumanMessage", "turn two"),
    ]


# --------------------------------------------------------------- configuration


def _request() -> Any:
    from agent_executor.application.runs import RunRequest

    return RunRequest("agent-1", [InputMessage("user", "hi")])


@pytest.mark.parametrize(
    ("config", "location", "message"),
    [
        (
            {"steps": [step("A", "a", depends_on=["B"]), step("B", "b", depends_on=["A"])]},
            ("steps",),
            "cycle: A -> B -> A",
        ),
        (
            {
                "steps": [
                    step("A", "a"),
                    step("B", "b", depends_on=["C"]),
                    step("C", "c", depends_on=["D"]),
                    step("D", "d", depends_on=["B"]),
                ]
            },
            ("steps",),
            "cycle: B -> C -> D -> B",
        ),
        (
            {"steps": [step("A", "a", depends_on=["ghost"])]},
            ("steps",),
            "steps[0].depends_on[0]: 'ghost' is neither the id nor the name of a step",
        ),
        (
            {"steps": [step("A", "a", id="x", depends_on=["x"])]},
            ("steps",),
            "steps[0].depends_on[0]: a step cannot depend on itself",
        ),
        (
            {"steps": [step("A", "a"), step("A", "b")]},
            ("steps",),
            "steps[1]: id 'A' is used by steps[0] too",
        ),
        (
            {
                "steps": [
                    step("Same", "a", id="s1"),
                    step("Same", "b", id="s2"),
                    step("C", "c", depends_on=["Same"]),
                ]
            },
            ("steps",),
            "name 'Same' is shared by several steps",
        ),
        ({"steps": []}, ("steps",), "at least 1 item"),
        ({"steps": [step(f"S{i}", "p") for i in range(21)]}, ("steps",), "at most 20 items"),
        ({"steps": [step("", "p")]}, ("steps", 0, "name"), "at least 1 character"),
        ({"steps": [step("  ", "p")]}, ("steps", 0, "name"), "must not be blank"),
        (
            {"steps": [step("A", "p", timeout=0)]},
            ("steps", 0, "timeout"),
            "greater than or equal to 1",
        ),
        (
            {"steps": [step("A", "p", retry_count=11)]},
            ("steps", 0, "retry_count"),
            "less than or equal to 10",
        ),
        ({"steps": [step("A", "p", colour="red")]}, ("steps", 0, "colour"), "Extra inputs"),
        (
            {"steps": [step("A", "p")], "max_retries": 11},
            ("max_retries",),
            "less than or equal to 10",
        ),
        (
            {"steps": [step("A", "p")], "step_timeout": 0},
            ("step_timeout",),
            "greater than or equal to 1",
        ),
        (
            {"steps": [step("A", "p")], "history_size": -1},
            ("history_size",),
            "greater than or equal to 0",
        ),
        (
            {"steps": [step("A", "p")], "max_working_iterations": 0},
            ("max_working_iterations",),
            "greater than or equal to 1",
        ),
        (
            {"steps": [step("A", "p")], "max_working_iterations": 21},
            ("max_working_iterations",),
            "less than or equal to 20",
        ),
        ({"steps": [step("A", "p")], "stepTimeout": 5}, ("stepTimeout",), "Extra inputs"),
    ],
)
def test_config_validation_rejects_bad_workflows(
    config: dict[str, Any], location: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(ValidationError) as invalid:
        Workflow.Config.model_validate(config)

    errors = invalid.value.errors()
    assert [e["loc"] for e in errors] == [location]
    assert message in errors[0]["msg"]


def test_depends_on_may_name_a_step_by_id_or_by_name() -> None:
    config = WorkflowConfig.model_validate(
        {
            "steps": [
                step("Write", "w", depends_on=["research", "Outline"]),
                step("Research", "r", id="research"),
                step("Outline", "o", id="outline", depends_on=["research"]),
            ]
        }
    )

    assert config.dependencies() == {
        "Write": ["research", "outline"],
        "research": [],
        "outline": ["research"],
    }


def test_topological_order_keeps_the_given_order_where_dependencies_allow() -> None:
    order = topological_order(["a", "b", "c", "d"], {"a": ["c"], "b": [], "d": ["b"]})

    assert order == ["b", "c", "a", "d"]
    with pytest.raises(DependencyCycle) as cycle:
        topological_order(["x", "y"], {"x": ["y"], "y": ["x"]})
    assert cycle.value.cycle == ["x", "y", "x"]


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (
            {"steps": [step("A", "a", depends_on=["B"]), step("B", "b", depends_on=["A"])]},
            "template_config.steps",
        ),
        ({"steps": [step("A", "a")], "max_retries": 99}, "template_config.max_retries"),
        ({"steps": [step("A", "a", timeout=0)]}, "template_config.steps[0].timeout"),
    ],
)
async def test_a_bad_config_refuses_the_run_naming_the_field(
    config: dict[str, Any], field: str
) -> None:
    harness = Harness(Workflow, Scripted())
    harness.agent(config)

    with pytest.raises(AgentMisconfigured) as refused:
        await harness.service.start(_request())

    assert [v.field for v in refused.value.violations] == [field]
    assert harness.store.records == {}


def test_descriptor_lists_the_compat_config_fields() -> None:
    descriptor = Workflow.descriptor()

    assert descriptor["id"] == "langgraph-workflow"
    assert descriptor["version"] == "2.0.0"
    fields = {f["key"]: f for f in descriptor["config_fields"]}
    assert list(fields) == [
        "steps",
        "workflow_responsibility",
        "history_size",
        "max_retries",
        "step_timeout",
        "fail_on_error",
        "max_working_iterations",
    ]
    assert fields["steps"]["type"] == "array"
    assert fields["steps"]["validation"] == {"minLength": 1, "maxLength": 20}
    step_fields = {f["key"]: f for f in fields["steps"]["items"]["properties"]}
    assert list(step_fields) == [
        "id",
        "name",
        "prompt",
        "tools",
        "depends_on",
        "timeout",
        "retry_count",
    ]
    assert "optional" not in step_fields["name"]
    assert "optional" not in step_fields["prompt"]
    assert step_fields["retry_count"]["validation"] == {"min": 0, "max": 10}
    assert fields["max_retries"]["default"] == 2
    assert fields["step_timeout"]["default"] == 120
    assert fields["history_size"]["default"] == 10
    assert fields["fail_on_error"] == {
        "key": "fail_on_error",
        "type": "boolean",
        "description": fields["fail_on_error"]["description"],
        "default": True,
        "optional": True,
    }
    assert fields["max_working_iterations"]["validation"] == {"min": 1, "max": 20}
    assert Workflow.problems() == []
