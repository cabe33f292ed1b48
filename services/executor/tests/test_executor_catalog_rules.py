"""The rules templates publish for the registry match what the executor enforces.

The registry checks agent configs against the published schema alone (it never
calls an executor), so every config a built-in template refuses at run time for
its step graph or a limit must be refused by the registry's reading of that
schema too, at the same field, and every config it runs must pass there.
"""

from __future__ import annotations

from typing import Any

import pytest
from templates_support import Harness, offline

from agent_executor.application.builtin.task import Task
from agent_executor.application.builtin.workflow import GRAPH_OVERHEAD, Workflow
from agent_executor.application.templates import (
    ACYCLIC,
    CEILING,
    AgentTemplate,
    ConfigViolations,
    validate_config,
)
from agent_executor.config import Settings
from agent_executor.domain.runs import RunStatus
from agent_registry.domain.templates import TemplateDescriptor


def step(name: str, *depends_on: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "prompt": f"do {name}", "depends_on": list(depends_on), **more}


def task(*depends_on: str, **more: Any) -> dict[str, Any]:
    return {"instruction": "do it", "depends_on": list(depends_on), **more}


WORKFLOW_CONFIGS: list[dict[str, Any]] = [
    {"steps": [step("a"), step("b", "a"), step("c", "a", "b")]},
    {"steps": [step("a", id="x"), step("b", "a"), step("c", "x")]},  # a name stands for its step
    {"steps": [step("a", "b"), step("b", "a")]},
    {"steps": [step("a", "c"), step("b", "a"), step("c", "b")]},
    {"steps": [step("a", "a")]},
    {"steps": [step("a", id="x"), step("b", "x", id="x")]},
    {"steps": [step("a"), step("b", "nope")]},
    {"steps": [step("same", id="1"), step("same", id="2"), step("c", "same")]},
]
TASK_CONFIGS: list[dict[str, Any]] = [
    {"steps": ["first", task("step_1"), task("step_2", id="last")]},
    {"steps": [task("step_2"), task("step_1")]},
    {"steps": ["first", task(id="synthesis")]},
    {"steps": ["first", task("first")]},  # a bare step's id is step_1, not its text
    {"steps": [task("step_1")]},
    {"steps": [task(id="x"), task(id="x")]},
]


def executor_refuses(template: type[AgentTemplate], config: dict[str, Any]) -> set[str]:
    try:
        validate_config(template.Config, config)
    except ConfigViolations as e:
        return {v.field for v in e.violations}
    return set()


def registry_refuses(
    template: type[AgentTemplate], config: dict[str, Any], limits: dict[str, float] | None = None
) -> set[str]:
    descriptor = TemplateDescriptor.from_document(template.descriptor())
    return {v.field for v in descriptor.validate_config(config, "template_config", limits)}


@pytest.mark.parametrize(
    ("template", "config"),
    [(Workflow, c) for c in WORKFLOW_CONFIGS] + [(Task, c) for c in TASK_CONFIGS],
)
def test_the_registry_refuses_exactly_the_step_graphs_the_template_refuses(
    template: type[AgentTemplate], config: dict[str, Any]
) -> None:
    at_run_time = executor_refuses(template, config)
    before = registry_refuses(template, config)
    # pydantic reports a steps validator's error at `steps`; the registry names the
    # very entry, inside that array.
    assert bool(at_run_time) == bool(before)
    assert all(f.startswith("template_config.steps") for f in at_run_time | before)


def test_published_schemas_carry_the_rules_and_name_published_limits() -> None:
    limits = Settings().published_limits()
    workflow, task_schema = Workflow.config_schema(), Task.config_schema()
    assert workflow["properties"]["steps"][ACYCLIC] == {
        "key": ["id", "name"],
        "depends_on": "depends_on",
        "aliases": ["name"],
    }
    assert task_schema["properties"]["steps"][ACYCLIC]["default_key"] == "step_{n}"
    bounded = [
        workflow["properties"]["steps"][CEILING]["limit"],
        workflow["properties"]["step_timeout"][CEILING],
        workflow["$defs"]["WorkflowStep"]["properties"]["timeout"][CEILING],
        task_schema["properties"]["stepTimeout"][CEILING],
    ]
    assert set(bounded) <= set(limits)


def test_a_timeout_the_run_would_cut_short_is_refused_by_the_registry() -> None:
    limits = Settings(run_timeout_seconds=60).published_limits()
    config = {"steps": [step("a", timeout=61)], "step_timeout": 60}
    assert registry_refuses(Workflow, config, limits) == {"template_config.steps[0].timeout"}
    assert registry_refuses(Task, {"steps": ["go"], "stepTimeout": 61}, limits) == {
        "template_config.stepTimeout"
    }
    assert registry_refuses(Task, {"steps": ["go"], "stepTimeout": 60}, limits) == set()


@pytest.mark.parametrize("count", [1, 4])
async def test_max_steps_fits_exactly_the_steps_the_registry_allows(count: int) -> None:
    """The workflow's graph takes GRAPH_OVERHEAD steps besides its configured ones."""
    config = {"steps": [step(f"s{i}") for i in range(count)]}
    enough = count + GRAPH_OVERHEAD
    assert registry_refuses(Workflow, config, {"max_steps": enough}) == set()
    assert registry_refuses(Workflow, config, {"max_steps": enough - 1}) == {
        "template_config.steps"
    }
    done = await Harness(Workflow, offline("ok\nSUCCESS")).run(
        config, conversation_config={"limits": {"max_steps": enough}}
    )
    assert done.record.status is RunStatus.SUCCEEDED
    cut = await Harness(Workflow, offline("ok\nSUCCESS")).run(
        config, conversation_config={"limits": {"max_steps": enough - 1}}
    )
    assert (cut.record.status, cut.record.error_code) == (RunStatus.FAILED, "LIMIT_EXCEEDED")
