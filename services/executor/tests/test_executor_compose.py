"""`Executor.Compose`: drafting an agent with the model over real gRPC, and its pure helpers."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from executor_support import StartSystem, offline, services_config

from agent_executor.domain.compose import (
    ComposeRequest,
    first_sentence,
    merge_draft,
    reply_object,
    title_of,
)
from agentrt.executor.v1 import executor_pb2 as pb
from agentrt_kit.grpc.status import error_from_rpc
from agentrt_kit.grpc.structs import struct_to_dict

DERIVED = "the model's reply was not a JSON draft; the draft was derived from the request"
FENCED_DRAFT = (
    "Here is the draft:\n```json\n"
    + json.dumps(
        {
            "name": "Model's own name",
            "description": "Explains URLs.",
            "system_prompt": "You take URLs apart.",
            "toolsets": ["parse_url", "no_such_tool"],
            "template_config": {"response_prefix": 123, "colour": "blue"},
        }
    )
    + "\n```\nTell me if you want changes."
)
PLAIN_DRAFT = "Sure! " + json.dumps(
    {
        "name": "Link helper",
        "description": "Explains links.",
        "system_prompt": "You explain links.",
        "toolsets": ["parse_url"],
        "template_config": {"response_prefix": "Links: "},
    }
)


def compose(**fields: Any) -> pb.ComposeRequest:
    """A ComposeRequest with sensible defaults."""
    values: dict[str, Any] = {
        "template_id": "simple-test",
        "instructions": "Answer questions about our billing API. Be polite and brief.",
    }
    values.update(fields)
    return pb.ComposeRequest(**values)


async def test_compose_derives_the_draft_from_the_request_when_the_model_answers_no_json(
    make_system: StartSystem,
) -> None:
    system = await make_system()  # the default offline provider echoes the user
    reply = await system.executor.Compose(compose(suggested_tools=["parse_url"]))
    draft = reply.draft
    assert draft.name == "Answer questions about our billing API"
    assert draft.description == "Answer questions about our billing API."
    assert draft.system_prompt == "Answer questions about our billing API. Be polite and brief."
    assert list(draft.toolsets) == ["parse_url"]
    assert draft.template_id == "simple-test"
    assert draft.llm_config_id == ""
    assert struct_to_dict(draft.template_config) == {"response_prefix": "", "system_prompt": ""}
    assert reply.valid
    assert list(reply.warnings) == [DERIVED]
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    # A template whose config has required fields gets {} and is reported invalid.
    workflow = await system.executor.Compose(
        compose(template_id="langgraph-workflow", suggested_name="Billing flow")
    )
    assert workflow.draft.name == "Billing flow"
    assert struct_to_dict(workflow.draft.template_config) == {}
    assert not workflow.valid
    assert list(workflow.warnings) == [DERIVED, "template_config.steps: Field required"]


async def test_compose_parses_a_fenced_json_draft_and_reports_what_does_not_validate(
    make_system: StartSystem,
) -> None:
    system = await make_system(
        services_config=services_config(
            offline={"type": "offline"},
            drafter=offline({"content": FENCED_DRAFT}),
        )
    )
    reply = await system.executor.Compose(
        compose(
            instructions="Explain URLs to people.",
            suggested_name="URL explainer",
            llm_config_id="drafter",
        )
    )
    draft = reply.draft
    assert draft.name == "URL explainer"  # the suggested name wins over the model's
    assert draft.description == "Explains URLs."
    assert draft.system_prompt == "You take URLs apart."
    assert list(draft.toolsets) == ["parse_url", "no_such_tool"]
    assert struct_to_dict(draft.template_config) == {"response_prefix": 123, "colour": "blue"}
    assert draft.template_id == "simple-test"
    assert draft.llm_config_id == "drafter"
    assert not reply.valid
    assert sorted(reply.warnings) == [
        "template_config.colour: Extra inputs are not permitted",
        "template_config.response_prefix: Input should be a valid string",
        "toolsets[1]: no toolset or tool named 'no_such_tool'",
    ]
    assert reply.usage.completion_tokens > 0
    assert reply.usage.prompt_tokens > 0


async def test_compose_takes_a_valid_draft_from_prose_without_warnings(
    make_system: StartSystem,
) -> None:
    system = await make_system(
        services_config=services_config(drafter=offline({"content": PLAIN_DRAFT}))
    )
    reply = await system.executor.Compose(compose(instructions="Explain links."))
    assert reply.draft.name == "Link helper"  # no suggested name: the model's
    assert reply.draft.description == "Explains links."
    assert list(reply.draft.toolsets) == ["parse_url"]
    assert struct_to_dict(reply.draft.template_config) == {"response_prefix": "Links: "}
    assert reply.valid
    assert list(reply.warnings) == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"template_id": ""}, "template_id"),
        ({"instructions": ""}, "instructions"),
        ({"instructions": " \n\t "}, "instructions"),
        ({"instructions": "x" * 8_001}, "instructions"),
        ({"suggested_name": "n" * 101}, "suggested_name"),
        ({"suggested_tools": [f"tool{i}" for i in range(51)]}, "suggested_tools"),
        ({"suggested_tools": ["ok", "t" * 129]}, "suggested_tools[1]"),
        ({"llm_config_id": "no-such-provider"}, "llm_config_id"),
    ],
)
async def test_compose_refuses_a_bad_field_naming_it(
    make_system: StartSystem, fields: dict[str, Any], field: str
) -> None:
    system = await make_system()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.executor.Compose(compose(**fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_from_rpc(caught.value)
    assert error.reason == "VALIDATION_ERROR"
    assert [v.field for v in error.violations] == [field]


async def test_compose_accepts_fields_at_their_limits(make_system: StartSystem) -> None:
    system = await make_system()
    reply = await system.executor.Compose(
        compose(
            instructions="word " * 1_599 + "last.",  # 8,000 characters
            suggested_name="n" * 100,
            suggested_tools=["t" * 128] + [f"tool{i}" for i in range(49)],
        )
    )
    assert reply.draft.name == "n" * 100
    assert len(reply.draft.toolsets) == 50


async def test_compose_with_an_unknown_template_is_template_not_available(
    make_system: StartSystem,
) -> None:
    system = await make_system()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.executor.Compose(compose(template_id="no-such-template"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    error = error_from_rpc(caught.value)
    assert error.reason == "TEMPLATE_NOT_AVAILABLE"
    assert error.metadata["template_id"] == "no-such-template"
    assert [v.field for v in error.violations] == ["template_id"]


async def test_compose_reports_a_failing_provider_as_unavailable(
    make_system: StartSystem,
) -> None:
    down = {
        "type": "openai-compatible",
        "model": "m",
        "api_key": "k",
        "base_url": "http://127.0.0.1:9/v1",  # discard port: connection refused
    }
    system = await make_system(services_config=services_config(down=down), provider_retries=0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.executor.Compose(compose())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_from_rpc(caught.value).reason == "PROVIDER_UNAVAILABLE"


# ---------------------------------------------------------------- pure helpers


def test_reply_object_prefers_a_fenced_object_and_skips_braces_that_are_not_json() -> None:
    assert reply_object('{"x": 0} then ```json\n{"name": "a"}\n```') == {"name": "a"}
    assert reply_object('say {hi} and {"name": {"x": 1}} and {"b": 2}') == {"name": {"x": 1}}
    assert reply_object("```\n[1, 2]\n``` no object here") is None
    assert reply_object("You said: hello") is None


def test_titles_and_first_sentences_are_printable_and_bounded() -> None:
    assert title_of("summarise\x00 the   weekly report, please") == "Summarise the weekly report"
    assert title_of("one two three four five six seven") == "One two three four five six"
    assert len(title_of("x" * 500)) == 100
    assert first_sentence("First line\nsecond line. More.") == "First line"
    assert first_sentence("One. Two.") == "One."


def test_merge_derives_each_missing_or_mistyped_key_with_a_warning() -> None:
    request = ComposeRequest("simple-test", "Do things. Well.", suggested_tools=("a",))
    draft, warnings = merge_draft(
        {"name": "Doer", "toolsets": "a", "template_config": {"x": 1}}, request, {}
    )
    assert draft.name == "Doer"
    assert draft.description == "Do things."
    assert draft.system_prompt == "Do things. Well."
    assert draft.toolsets == ("a",)
    assert draft.template_config == {"x": 1}
    assert warnings == [
        "description: missing from the model's reply; the instructions' first sentence is used",
        "system_prompt: missing from the model's reply; the instructions are used",
        "toolsets: not usable in the model's reply; the suggested tools are used",
    ]
    # An object with none of the draft's keys is no draft at all.
    draft, warnings = merge_draft({"status": "ok"}, request, {"d": 1})
    assert warnings == [DERIVED]
    assert draft.template_config == {"d": 1}
