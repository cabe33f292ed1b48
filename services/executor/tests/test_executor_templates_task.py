"""The `task` template, run end to end through RunService with offline models."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from pydantic import ValidationError
from templates_support import Harness, Scripted, offline

from agent_executor.adapters.providers.offline import OfflineChatModel
from agent_executor.application.builtin.task import Task, TaskConfig, parse_json
from agent_executor.application.runs import InputMessage, RunRequest
from agent_executor.domain.runs import MessageDelta, RunStatus
from agent_executor.errors import AgentMisconfigured


class QuickTask(Task):
    """The task template with a configured second lasting 10 ms, to test step timeouts."""

    second = 0.01


def three_steps() -> Scripted:
    return Scripted(
        routes={
            "GATHER": offline("Facts: A, B."),
            "ANALYSE": offline("A matters most."),
            "CONCLUDE": offline("Go with A."),
        },
        default=offline("Final: choose A because it matters most."),
    )


# ------------------------------------------------------------ in order, text


async def test_steps_run_in_order_each_seeing_the_results_before_it() -> None:
    model = three_steps()
    config = {"steps": ["GATHER the facts", "ANALYSE them", "CONCLUDE"]}

    out = await Harness(Task, model).run(config, "Which option should we take?")

    assert out.record.status is RunStatus.SUCCEEDED
    assert out.answer == "Final: choose A because it matters most."
    assert out.completed == [out.answer]  # the step replies are not messages
    assert out.progress == [
        ("step_1", "started", 1),
        ("step_1", "succeeded", 1),
        ("step_2", "started", 1),
        ("step_2", "succeeded", 1),
        ("step_3", "started", 1),
        ("step_3", "succeeded", 1),
        ("synthesis", "started", 1),
        ("synthesis", "succeeded", 1),
    ]
    assert [k for k, _ in model.calls] == ["GATHER", "ANALYSE", "CONCLUDE", ""]
    conclude = model.messages_of("CONCLUDE")
    assert isinstance(conclude[0], SystemMessage)
    assert str(conclude[0].content).startswith("You are a careful assistant.")
    assert "Facts: A, B." in str(conclude[0].content)
    assert "A matters most." in str(conclude[0].content)
    assert isinstance(conclude[1], HumanMessage)
    assert conclude[1].content == "Which option should we take?"
    synthesis = str(model.messages_of("")[0].content)
    for result in ("Facts: A, B.", "A matters most.", "Go with A."):
        assert result in synthesis


async def test_the_task_is_the_latest_user_message() -> None:
    model = three_steps()

    await Harness(Task, model).run(
        {"steps": ["GATHER"]},
        InputMessage("user", "old question"),
        InputMessage("assistant", "old answer"),
        InputMessage("user", "the real task"),
    )

    assert [m.content for m in model.messages_of("GATHER")[1:]] == ["the real task"]


async def test_a_run_without_a_user_message_fails() -> None:
    out = await Harness(Task, three_steps()).run(
        {"steps": ["GATHER"]}, InputMessage("system", "be nice")
    )

    assert out.record.error_code == "TEMPLATE_FAILED"
    assert "needs a user message" in out.record.error_message


async def test_object_steps_run_after_their_dependencies_with_ids_and_names() -> None:
    model = three_steps()
    config = {
        "steps": [
            "GATHER",
            {"id": "end", "name": "Conclusion", "instruction": "CONCLUDE", "depends_on": ["mid"]},
            {"id": "mid", "instruction": "ANALYSE"},
        ]
    }

    out = await Harness(Task, model).run(config, "task")

    assert [s for s, state, _ in out.progress if state == "started"] == [
        "step_1",
        "mid",
        "end",
        "synthesis",
    ]
    assert ("end", "succeeded", 1) in out.progress
    # In order, a step sees every earlier result, not only those it depends on.
    conclude = str(model.messages_of("CONCLUDE")[0].content)
    assert "### Step 1\nFacts: A, B." in conclude
    assert "### mid\nA matters most." in conclude
    assert "## Current step: Conclusion\nCONCLUDE" in conclude


async def test_the_text_answer_is_streamed_token_by_token() -> None:
    out = await Harness(Task, three_steps()).run({"steps": ["GATHER", "ANALYSE"]}, stream=True)

    deltas = [b for b in out.bodies if isinstance(b, MessageDelta)]
    assert len(deltas) == len(["Final:", "choose", "A", "because", "it", "matters", "most."])
    assert out.deltas == out.answer == "Final: choose A because it matters most."
    assert len({d.message_id for d in deltas}) == 1


# ------------------------------------------------------------ retries, strict


async def test_a_failing_step_is_retried() -> None:
    model = three_steps()
    model.failures["ANALYSE"] = 1

    out = await Harness(Task, model).run({"steps": ["GATHER", "ANALYSE"], "retryCount": 1})

    assert out.record.status is RunStatus.SUCCEEDED
    assert model.count("ANALYSE") == 2
    assert out.states("step_2") == ["started", "retrying", "succeeded"]
    assert ("step_2", "succeeded", 2) in out.progress


async def test_in_strict_mode_a_step_that_keeps_failing_fails_the_run() -> None:
    model = three_steps()
    model.failures["ANALYSE"] = 3

    out = await Harness(Task, model).run(
        {"steps": ["GATHER", "ANALYSE", "CONCLUDE"], "retryCount": 2}
    )

    assert out.record.status is RunStatus.FAILED
    assert out.record.error_code == "TEMPLATE_FAILED"
    assert "'Step 2' failed after 3 attempt(s)" in out.record.error_message
    assert "provider down" in out.record.error_message
    assert model.count("ANALYSE") == 3
    assert model.count("CONCLUDE") == 0
    assert model.count("") == 0  # no synthesis
    assert out.states("step_2") == ["started", "retrying", "retrying", "failed"]
    assert out.completed == []


async def test_without_strict_mode_the_run_goes_on_and_the_answer_notes_failures() -> None:
    model = three_steps()
    model.failures["GATHER"] = 1
    config = {
        "steps": [
            {"id": "gather", "instruction": "GATHER"},
            {"id": "analyse", "instruction": "ANALYSE", "depends_on": ["gather"]},
            {"id": "conclude", "instruction": "CONCLUDE"},
        ],
        "retryCount": 0,
        "strictMode": False,
    }

    out = await Harness(Task, model).run(config, stream=True)

    assert out.record.status is RunStatus.SUCCEEDED
    assert model.count("ANALYSE") == 0
    assert out.progress == [
        ("gather", "started", 1),
        ("gather", "failed", 1),
        ("analyse", "skipped", 0),
        ("conclude", "started", 1),
        ("conclude", "succeeded", 1),
        ("synthesis", "started", 1),
        ("synthesis", "succeeded", 1),
    ]
    assert out.answer.startswith("Final: choose A because it matters most.\n\nNote: ")
    assert "gather failed (" in out.answer
    assert "analyse skipped (depends on gather, which failed)" in out.answer
    # The answer is changed after the model wrote it, so it is sent whole, not streamed.
    assert out.deltas == out.answer
    synthesis = str(model.messages_of("")[0].content)
    assert "### gather (failed)" in synthesis


async def test_a_step_that_outlasts_step_timeout_is_retried_then_fails() -> None:
    # stepTimeout 10 lasts 0.1 s with QuickTask; the step would need 1 s.
    model = Scripted(routes={"SLOW": OfflineChatModel(latency_ms=1_000)})

    started = time.monotonic()
    out = await Harness(QuickTask, model).run(
        {"steps": ["SLOW step"], "stepTimeout": 10, "retryCount": 1}
    )
    elapsed = time.monotonic() - started

    assert 0.2 <= elapsed < 0.6
    assert model.count("SLOW") == 2
    assert out.record.error_code == "TEMPLATE_FAILED"
    assert "timed out after 10 s" in out.record.error_message
    assert out.states("step_1") == ["started", "retrying", "failed"]


async def test_a_step_within_step_timeout_succeeds() -> None:
    model = Scripted(routes={"QUICK": offline("quick result", latency_ms=20)})

    out = await Harness(QuickTask, model).run({"steps": ["QUICK step"], "stepTimeout": 10})

    assert out.record.status is RunStatus.SUCCEEDED
    assert out.states("step_1") == ["started", "succeeded"]


async def test_the_synthesis_has_the_step_timeout_too() -> None:
    model = three_steps()
    model.default = offline("too late", latency_ms=400)

    out = await Harness(QuickTask, model).run(
        {"steps": ["GATHER"], "stepTimeout": 10, "retryCount": 0}
    )

    assert out.record.error_code == "TEMPLATE_FAILED"
    assert "synthesis failed after 1 attempt(s): timed out after 10 s" in out.record.error_message
    assert out.states("synthesis") == ["started", "failed"]


async def test_the_synthesis_is_retried_when_it_fails_and_ends_the_run_when_it_keeps_failing() -> (
    None
):
    model = three_steps()
    model.failures[""] = 2

    out = await Harness(Task, model).run({"steps": ["GATHER"], "retryCount": 1})

    assert out.record.error_code == "TEMPLATE_FAILED"
    assert "synthesis failed after 2 attempt(s)" in out.record.error_message
    assert out.states("synthesis") == ["started", "retrying", "failed"]


# --------------------------------------------------------------- parallel


async def test_parallel_steps_run_concurrently_and_dependants_wait_for_them() -> None:
    model = Scripted(
        routes={
            "LEFT": offline("left done", latency_ms=200),
            "RIGHT": offline("right done", latency_ms=200),
            "JOIN": offline("joined"),
        },
        default=offline("all joined"),
    )
    config = {
        "steps": [
            {"id": "left", "instruction": "LEFT"},
            {"id": "right", "instruction": "RIGHT"},
            {"id": "join", "instruction": "JOIN", "depends_on": ["left", "right"]},
        ],
        "parallelExecution": True,
    }

    started = time.monotonic()
    out = await Harness(Task, model).run(config)
    elapsed = time.monotonic() - started

    assert elapsed >= 0.2
    assert out.answer == "all joined"
    # Side by side: both started before either ended (one after the other would read
    # left started, left succeeded, right started). No upper bound on the time: a loaded
    # machine stretches it, and the order already tells.
    assert out.progress[:2] == [("left", "started", 1), ("right", "started", 1)]
    assert out.progress[4:6] == [("join", "started", 1), ("join", "succeeded", 1)]
    join = str(model.messages_of("JOIN")[0].content)
    assert "left done" in join
    assert "right done" in join


async def test_sequential_steps_run_one_after_another() -> None:
    model = Scripted(
        routes={
            "LEFT": offline("left done", latency_ms=150),
            "RIGHT": offline("right done", latency_ms=150),
        }
    )

    started = time.monotonic()
    out = await Harness(Task, model).run({"steps": ["LEFT", "RIGHT"]})

    assert time.monotonic() - started >= 0.3
    assert out.progress[:4] == [
        ("step_1", "started", 1),
        ("step_1", "succeeded", 1),
        ("step_2", "started", 1),
        ("step_2", "succeeded", 1),
    ]


async def test_parallel_steps_only_see_the_results_they_depend_on() -> None:
    model = three_steps()
    config = {
        "steps": [
            {"id": "a", "instruction": "GATHER"},
            {"id": "b", "instruction": "ANALYSE", "depends_on": ["a"]},
            {"id": "c", "instruction": "CONCLUDE", "depends_on": ["b"]},
        ],
        "parallelExecution": True,
    }

    await Harness(Task, model).run(config)

    conclude = str(model.messages_of("CONCLUDE")[0].content)
    assert "A matters most." in conclude
    assert "Facts: A, B." not in conclude


async def test_a_strict_parallel_failure_stops_the_steps_still_running() -> None:
    model = Scripted(
        routes={"FAST": offline("x"), "SLOW": offline("slow", latency_ms=2_000)},
        failures={"FAST": 1},
    )
    config = {"steps": ["FAST", "SLOW"], "parallelExecution": True, "retryCount": 0}

    started = time.monotonic()
    out = await Harness(Task, model).run(config)

    assert time.monotonic() - started < 0.5
    assert out.record.error_code == "TEMPLATE_FAILED"
    assert out.states("step_2") == ["started"]


async def test_parallel_non_strict_skips_the_dependants_of_a_failed_step() -> None:
    model = three_steps()
    model.failures["GATHER"] = 1
    config = {
        "steps": [
            {"id": "a", "instruction": "GATHER"},
            {"id": "b", "instruction": "ANALYSE", "depends_on": ["a"]},
            {"id": "c", "instruction": "CONCLUDE"},
        ],
        "parallelExecution": True,
        "strictMode": False,
        "retryCount": 0,
    }

    out = await Harness(Task, model).run(config)

    assert out.record.status is RunStatus.SUCCEEDED
    assert out.states("b") == ["skipped"]
    assert out.states("c") == ["started", "succeeded"]
    assert model.count("ANALYSE") == 0


# ------------------------------------------------------------ output formats


async def test_json_output_has_its_code_fence_removed() -> None:
    model = three_steps()
    model.default = offline('```json\n{"choice": "A", "why": ["matters"]}\n```')

    out = await Harness(Task, model).run({"steps": ["GATHER"], "outputFormat": "json"}, stream=True)

    assert json.loads(out.answer) == {"choice": "A", "why": ["matters"]}
    assert out.answer == '{"choice": "A", "why": ["matters"]}'
    assert out.deltas == out.answer  # never streamed before it was checked
    assert "only a JSON document" in str(model.messages_of("")[0].content)
    assert out.states("synthesis") == ["started", "succeeded"]


async def test_invalid_json_gets_one_correction() -> None:
    model = three_steps()
    model.default = offline("The choice is A.", '{"choice": "A"}')

    out = await Harness(Task, model).run({"steps": ["GATHER"], "outputFormat": "json"})

    assert out.record.status is RunStatus.SUCCEEDED
    assert json.loads(out.answer) == {"choice": "A"}
    assert model.count("") == 2
    correction = model.messages_of("", 1)
    assert isinstance(correction[-2], AIMessage)
    assert correction[-2].content == "The choice is A."
    assert isinstance(correction[-1], SystemMessage)
    assert "not valid JSON" in str(correction[-1].content)
    assert out.progress[-3:] == [
        ("synthesis", "started", 1),
        ("synthesis", "retrying", 2),
        ("synthesis", "succeeded", 2),
    ]


async def test_json_still_invalid_after_the_correction_fails_a_strict_run() -> None:
    model = three_steps()
    model.default = offline("The choice is A.", "Really, it is A.", '{"late": true}')

    out = await Harness(Task, model).run({"steps": ["GATHER"], "outputFormat": "json"})

    assert model.count("") == 2  # one correction, no more
    assert out.record.status is RunStatus.FAILED
    assert out.record.error_code == "OUTPUT_INVALID"
    assert "not valid JSON after a correction" in out.record.error_message
    assert out.states("synthesis") == ["started", "retrying", "failed"]
    assert out.completed == []


async def test_json_still_invalid_without_strict_mode_comes_back_with_a_warning() -> None:
    model = three_steps()
    model.default = offline("The choice is A.", "Really, it is A.")

    out = await Harness(Task, model).run(
        {"steps": ["GATHER"], "outputFormat": "json", "strictMode": False}
    )

    assert out.record.status is RunStatus.SUCCEEDED
    warning, _, text = out.answer.partition("\n\n")
    assert warning.startswith("Warning: the answer below is not valid JSON (Expecting value")
    assert text == "Really, it is A."


async def test_structured_output_reports_the_task_the_steps_and_the_answer() -> None:
    model = three_steps()
    model.failures["ANALYSE"] = 1
    config = {
        "steps": ["GATHER", "ANALYSE", {"id": "last", "instruction": "CONCLUDE"}],
        "outputFormat": "structured",
        "strictMode": False,
        "retryCount": 0,
    }

    out = await Harness(Task, model).run(config, "Pick an option", stream=True)

    report = json.loads(out.answer)
    assert report == {
        "task": "Pick an option",
        "steps": [
            {"id": "step_1", "status": "succeeded", "result": "Facts: A, B."},
            {
                "id": "step_2",
                "status": "failed",
                "result": report["steps"][1]["result"],
            },
            {"id": "last", "status": "succeeded", "result": "Go with A."},
        ],
        "answer": "Final: choose A because it matters most.",
    }
    assert "provider down" in report["steps"][1]["result"]
    assert out.deltas == out.answer


@pytest.mark.parametrize(
    ("text", "document"),
    [
        ('{"a": 1}', '{"a": 1}'),
        ('  ```json\n{"a": 1}\n```  ', '{"a": 1}'),
        ("```\n[1, 2]\n```", "[1, 2]"),
        ('```JSON\n{"a": "```"}\n```', '{"a": "```"}'),
        ("42", "42"),
        ("not json", None),
        ('```json\n{"a": 1\n```', None),
        ('Here you go: {"a": 1}', None),
    ],
)
def test_parse_json_accepts_json_with_or_without_a_fence(text: str, document: str | None) -> None:
    parsed, error = parse_json(text)

    assert parsed == document
    assert bool(error) is (document is None)


# --------------------------------------------------------------- configuration


def test_config_defaults() -> None:
    config = TaskConfig.model_validate({"steps": ["do it"]})

    assert (config.step_timeout, config.retry_count) == (120, 1)
    assert (config.parallel_execution, config.strict_mode) == (False, True)
    assert config.output_format == "text"
    assert [(p.id, p.name, p.instruction) for p in config.plan()] == [("step_1", "Step 1", "do it")]


@pytest.mark.parametrize(
    ("config", "location", "message"),
    [
        (
            {
                "steps": [
                    {"id": "a", "instruction": "x", "depends_on": ["b"]},
                    {"id": "b", "instruction": "y", "depends_on": ["a"]},
                ]
            },
            ("steps",),
            "cycle: a -> b -> a",
        ),
        (
            {"steps": [{"id": "a", "instruction": "x", "depends_on": ["zzz"]}]},
            ("steps",),
            "steps[0].depends_on[0]: 'zzz' is not the id of a step",
        ),
        (
            {"steps": ["x", {"instruction": "y", "depends_on": ["step_2"]}]},
            ("steps",),
            "steps[1].depends_on[0]: a step cannot depend on itself",
        ),
        (
            {"steps": ["x", {"id": "step_1", "instruction": "y"}]},
            ("steps",),
            "steps[1]: id 'step_1' is used by an earlier step",
        ),
        (
            {"steps": [{"id": "synthesis", "instruction": "y"}]},
            ("steps",),
            "reserved",
        ),
        ({"steps": []}, ("steps",), "at least 1 item"),
        ({"steps": ["x"] * 21}, ("steps",), "at most 20 items"),
        ({"steps": ["x"], "stepTimeout": 9}, ("stepTimeout",), "greater than or equal to 10"),
        ({"steps": ["x"], "stepTimeout": 3601}, ("stepTimeout",), "less than or equal to 3600"),
        ({"steps": ["x"], "retryCount": 6}, ("retryCount",), "less than or equal to 5"),
        ({"steps": ["x"], "retryCount": -1}, ("retryCount",), "greater than or equal to 0"),
        (
            {"steps": ["x"], "outputFormat": "xml"},
            ("outputFormat",),
            "'text', 'json' or 'structured'",
        ),
        ({"steps": ["x"], "step_timeout": 30}, ("step_timeout",), "Extra inputs"),
    ],
)
def test_config_validation_rejects_bad_tasks(
    config: dict[str, Any], location: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(ValidationError) as invalid:
        Task.Config.model_validate(config)

    errors = invalid.value.errors()
    assert [e["loc"] for e in errors] == [location]
    assert message in errors[0]["msg"]


def test_a_step_must_be_an_instruction_or_an_object_with_one() -> None:
    with pytest.raises(ValidationError) as invalid:
        Task.Config.model_validate({"steps": ["", {"name": "no instruction"}]})

    locations = {e["loc"][:2] for e in invalid.value.errors()}
    assert locations == {("steps", 0), ("steps", 1)}


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"steps": ["x"], "stepTimeout": 5}, "template_config.stepTimeout"),
        (
            {"steps": [{"id": "a", "instruction": "x", "depends_on": ["a"]}]},
            "template_config.steps",
        ),
    ],
)
async def test_a_bad_config_refuses_the_run_naming_the_field(
    config: dict[str, Any], field: str
) -> None:
    harness = Harness(Task, Scripted())
    harness.agent(config)

    with pytest.raises(AgentMisconfigured) as refused:
        await harness.service.start(RunRequest("agent-1", [InputMessage("user", "hi")]))

    assert [v.field for v in refused.value.violations] == [field]
    assert harness.store.records == {}


def test_descriptor_lists_the_config_fields() -> None:
    descriptor = Task.descriptor()

    assert descriptor["id"] == "task"
    assert descriptor["version"] == "1.0.0"
    fields = {f["key"]: f for f in descriptor["config_fields"]}
    assert list(fields) == [
        "steps",
        "stepTimeout",
        "retryCount",
        "parallelExecution",
        "strictMode",
        "outputFormat",
    ]
    assert fields["steps"]["validation"] == {"minLength": 1, "maxLength": 20}
    assert "optional" not in fields["steps"]
    assert fields["stepTimeout"]["default"] == 120
    assert fields["stepTimeout"]["validation"] == {"min": 10, "max": 3600}
    assert fields["retryCount"]["validation"] == {"min": 0, "max": 5}
    assert fields["outputFormat"]["validation"] == {"enum": ["text", "json", "structured"]}
    assert fields["outputFormat"]["default"] == "text"
    assert fields["parallelExecution"]["default"] is False
    assert fields["strictMode"]["default"] is True
    assert Task.problems() == []
