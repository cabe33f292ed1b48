"""Unit tests of the executor's rules: limits, services config, config fields, toolsets, tools."""

from __future__ import annotations

import json
import math
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, Literal, TypedDict

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, Field

from agent_executor.adapters.memory import (
    InMemoryAgents,
    InMemoryRunStore,
    InMemoryTools,
    ListEventSink,
    LocalCancelBus,
)
from agent_executor.adapters.models import ProviderModels
from agent_executor.application.builtin.conversation import Conversation
from agent_executor.application.context import RunContext, current_run
from agent_executor.application.ports import ToolOutcome, ToolSpec
from agent_executor.application.runs import InputMessage, RunRequest, RunService
from agent_executor.application.templates import TemplateCatalog
from agent_executor.application.tools import (
    ToolsetProblem,
    remote_tools,
    render,
    select_tools,
)
from agent_executor.config import Settings, load_services_config
from agent_executor.domain.agents import AgentSnapshot
from agent_executor.domain.fields import fields_of
from agent_executor.domain.limits import LimitProblem, RunLimits
from agent_executor.domain.runs import (
    MessageCompleted,
    RunFailed,
    RunStatus,
    ToolCallFinished,
    ToolCallStarted,
)
from agent_executor.domain.services_config import (
    DEFAULT,
    ConfigProblem,
    ServicesConfig,
    parse_services_config,
)
from agent_executor.errors import LimitExceeded
from agentrt_kit.concurrency import run_inline
from agentrt_kit.errors import FieldViolation, InvalidArgument, Unavailable
from agentrt_kit.nats import StreamLimits
from agentrt_kit.settings import ConfigError, load_settings

# ------------------------------------------------------------------ limits


def test_an_agent_can_lower_limits_but_never_raise_them() -> None:
    ceiling = RunLimits(timeout_seconds=300, max_steps=50, max_tool_calls=20)

    limits = ceiling.tightened_by(
        {"timeout_seconds": 12.5, "max_steps": 80, "max_tool_calls": 3, "max_message_chars": 10}
    )

    assert limits.timeout_seconds == 12.5
    assert limits.max_steps == 50  # 80 would raise it: kept
    assert limits.max_tool_calls == 3
    assert limits.max_message_chars == 10
    assert limits.max_concurrent_runs == ceiling.max_concurrent_runs


def test_no_overrides_keep_the_executors_limits() -> None:
    ceiling = RunLimits(max_steps=7)

    assert ceiling.tightened_by(None) == ceiling
    assert ceiling.tightened_by({}) == ceiling


def test_an_unlimited_executor_limit_takes_the_agents_value() -> None:
    ceiling = RunLimits(max_steps=0, max_tool_calls=0, max_concurrent_runs=0)

    limits = ceiling.tightened_by({"max_steps": 500, "max_tool_calls": 9, "max_concurrent_runs": 2})

    assert (limits.max_steps, limits.max_tool_calls, limits.max_concurrent_runs) == (500, 9, 2)


def test_whole_numbers_written_as_floats_are_accepted_for_counts() -> None:
    limits = RunLimits().tightened_by({"max_steps": 5.0, "timeout_seconds": 30})

    assert limits.max_steps == 5
    assert isinstance(limits.max_steps, int)
    assert limits.timeout_seconds == 30.0
    assert isinstance(limits.timeout_seconds, float)


@pytest.mark.parametrize(
    ("overrides", "field", "description"),
    [
        ({"max_turns": 3}, "conversation_config.limits.max_turns", "unknown limit"),
        ({"max_steps": "5"}, "conversation_config.limits.max_steps", "must be a number"),
        ({"max_steps": True}, "conversation_config.limits.max_steps", "must be a number"),
        ({"max_steps": None}, "conversation_config.limits.max_steps", "must be a number"),
        ({"max_steps": -1}, "conversation_config.limits.max_steps", "positive"),
        ({"max_steps": 0}, "conversation_config.limits.max_steps", "positive"),
        ({"timeout_seconds": math.nan}, "conversation_config.limits.timeout_seconds", "positive"),
        ({"timeout_seconds": math.inf}, "conversation_config.limits.timeout_seconds", "positive"),
        ({"max_tool_calls": 2.5}, "conversation_config.limits.max_tool_calls", "whole number"),
    ],
)
def test_unusable_limit_overrides_are_named(
    overrides: dict[str, Any], field: str, description: str
) -> None:
    with pytest.raises(LimitProblem) as caught:
        RunLimits().tightened_by(overrides)

    assert caught.value.field == field
    assert description in caught.value.description
    assert str(caught.value).startswith(field)


def test_an_unknown_limit_lists_the_known_ones() -> None:
    with pytest.raises(LimitProblem, match=r"max_message_chars.*max_steps.*timeout_seconds"):
        RunLimits().tightened_by({"steps": 1})


def test_settings_give_the_executor_limits() -> None:
    settings = Settings(
        run_timeout_seconds=42,
        max_steps=0,
        max_tool_calls=7,
        max_runs_per_agent=3,
        max_message_chars=99,
    )

    assert settings.run_limits() == RunLimits(
        timeout_seconds=42.0,
        max_steps=0,
        max_tool_calls=7,
        max_concurrent_runs=3,
        max_message_chars=99,
    )


def test_every_jetstream_stream_is_bounded_by_default() -> None:
    settings = Settings()
    for limits in (
        settings.run_events_limits(),
        settings.queue_limits(),
        settings.dead_letter_limits(),
        settings.catalog_limits(),
        settings.audit_limits(),
    ):
        assert limits.max_age_seconds > 0
        assert limits.max_bytes > 0


def test_stream_limits_come_from_their_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_EXECUTOR_RUN_EVENTS_MAX_BYTES", "4096")
    monkeypatch.setenv("AGENTRT_EXECUTOR_QUEUE_DEAD_LETTERS_MAX_AGE_SECONDS", "60")
    settings = load_settings(Settings)
    assert settings.run_events_limits() == StreamLimits(86_400.0, 4096)
    assert settings.dead_letter_limits() == StreamLimits(60.0, 32 * 1024**2)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AGENTRT_EXECUTOR_RUN_EVENTS_MAX_BYTES", "-1"),  # "no limit" is no longer a value
        ("AGENTRT_EXECUTOR_RUN_EVENTS_RETENTION_SECONDS", "0"),
        ("AGENTRT_EXECUTOR_QUEUE_MAX_BYTES", "0"),
        ("AGENTRT_EXECUTOR_QUEUE_MAX_AGE_SECONDS", "-3"),
        ("AGENTRT_EXECUTOR_QUEUE_DEAD_LETTERS_MAX_BYTES", "1e3x"),
        ("AGENTRT_EXECUTOR_QUEUE_DEAD_LETTERS_MAX_AGE_SECONDS", "0"),
    ],
)
def test_a_stream_limit_that_bounds_nothing_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=rf"invalid configuration: {variable}: "):
        load_settings(Settings)


def test_a_catalogue_ttl_shorter_than_three_publications_is_refused_naming_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTRT_CATALOG_TTL_SECONDS", "100")
    monkeypatch.setenv("AGENTRT_EXECUTOR_CATALOG_PUBLISH_INTERVAL_SECONDS", "60")
    with pytest.raises(ConfigError) as info:
        load_settings(Settings)
    message = str(info.value)
    assert "AGENTRT_CATALOG_TTL_SECONDS (100)" in message
    assert "AGENTRT_EXECUTOR_CATALOG_PUBLISH_INTERVAL_SECONDS (60)" in message
    monkeypatch.setenv("AGENTRT_CATALOG_TTL_SECONDS", "180")
    assert load_settings(Settings).catalog_limits().max_age_seconds == 180.0


def test_plugin_directories_take_json_or_comma_separated_text() -> None:
    assert Settings(plugin_dirs=" /a , /b ,").plugin_dirs == ["/a", "/b"]
    assert Settings(plugin_dirs='["/x, y"]').plugin_dirs == ["/x, y"]
    assert Settings(plugin_dirs=["/z"]).plugin_dirs == ["/z"]


# --------------------------------------------------------- services config


def openai(**values: Any) -> dict[str, Any]:
    return {"type": "openai", "model": "gpt-test", **values}


def parse(llm: dict[str, Any] | None = None, env: dict[str, str] | None = None, **doc: Any):
    if llm is not None:
        doc["llm"] = llm
    return parse_services_config(doc, env or {})


def test_without_providers_the_offline_model_is_the_only_provider() -> None:
    config = parse()

    assert list(config.providers) == ["offline"]
    assert config.default_provider == "offline"
    assert config.providers["offline"].type == "offline"
    assert config.providers["offline"].model == "offline-echo"
    assert config.fallback_provider is None
    assert config.custom_tools is None
    assert config.mcp_toolsets == frozenset()
    assert config.unset_variables == ()
    assert config.provider("") is config.providers["offline"]
    assert config.provider("nope") is None


def test_a_full_configuration_is_parsed() -> None:
    config = parse(
        {
            "providers": {
                "main": openai(
                    api_key="sk-1",
                    base_url="https://llm.example/v1",
                    temperature=0.3,
                    max_tokens=256,
                    metadata={"organization": "org-1"},
                ),
                "local": {"type": "offline"},
            },
            "default_provider": "main",
            "fallback_provider": "local",
        },
        toolsets={"custom": ["read_lines", "parse_url"], "mcp": {"fs": {}, "web": {}}},
    )

    main = config.providers["main"]
    assert (main.type, main.model, main.api_key) == ("openai", "gpt-test", "sk-1")
    assert main.base_url == "https://llm.example/v1"
    assert (main.temperature, main.max_tokens) == (0.3, 256)
    assert main.metadata == {"organization": "org-1"}
    assert main.family == "openai"
    assert config.providers["local"].family == "offline"
    assert config.default_provider == "main"
    assert config.fallback_provider == "local"
    assert config.custom_tools == ("read_lines", "parse_url")
    assert config.mcp_toolsets == frozenset({"fs", "web"})
    assert config.provider("") is main


def test_the_first_provider_is_the_default_when_none_is_named() -> None:
    config = parse({"providers": {"b": {"type": "offline"}, "a": openai(api_key="k")}})

    assert config.default_provider == "b"


def test_a_fallback_equal_to_the_default_is_dropped() -> None:
    config = parse({"providers": {"only": openai()}, "fallback_provider": "only"})

    assert config.fallback_provider is None


@pytest.mark.parametrize(
    ("doc", "path", "description"),
    [
        ({"llm": []}, "llm", "must be an object"),
        ({"llm": {"providers": "x"}}, "llm.providers", "must be an object"),
        ({"llm": {"providers": {"p": 1}}}, "llm.providers.p", "must be an object"),
        ({"llm": {"providers": {"p": {"type": "anthropic"}}}}, "llm.providers.p.type", "one of"),
        ({"llm": {"providers": {"p": {}}}}, "llm.providers.p.type", "one of"),
        ({"llm": {"providers": {"p": {"type": "openai"}}}}, "llm.providers.p.model", "required"),
        (
            {"llm": {"providers": {"p": openai(base_url="ftp://x")}}},
            "llm.providers.p.base_url",
            "http(s) URL",
        ),
        (
            {"llm": {"providers": {"p": openai(base_url=5)}}},
            "llm.providers.p.base_url",
            "http(s) URL",
        ),
        (
            {"llm": {"providers": {"p": {"type": "vllm", "model": "m"}}}},
            "llm.providers.p.base_url",
            "required for vllm",
        ),
        (
            {"llm": {"providers": {"p": openai(temperature=3)}}},
            "llm.providers.p.temperature",
            "between 0 and 2",
        ),
        (
            {"llm": {"providers": {"p": openai(temperature="hot")}}},
            "llm.providers.p.temperature",
            "must be a number",
        ),
        (
            {"llm": {"providers": {"p": openai(temperature=True)}}},
            "llm.providers.p.temperature",
            "must be a number",
        ),
        (
            {"llm": {"providers": {"p": openai(temperature=math.nan)}}},
            "llm.providers.p.temperature",
            "must be a number",
        ),
        (
            {"llm": {"providers": {"p": openai(max_tokens=0)}}},
            "llm.providers.p.max_tokens",
            "between 1 and",
        ),
        (
            {"llm": {"providers": {"p": openai(metadata=[1])}}},
            "llm.providers.p.metadata",
            "must be an object",
        ),
        (
            {"llm": {"providers": {"p": openai()}, "default_provider": "q"}},
            "llm.default_provider",
            "names no provider: 'q'",
        ),
        (
            {"llm": {"providers": {"p": openai()}, "fallback_provider": "q"}},
            "llm.fallback_provider",
            "names no provider: 'q'",
        ),
        ({"toolsets": "all"}, "toolsets", "must be an object"),
        ({"toolsets": {"custom": "some"}}, "toolsets.custom", "list of tool names"),
        ({"toolsets": {"custom": ["a", 1]}}, "toolsets.custom", "list of tool names"),
        ({"toolsets": {"mcp": ["fs"]}}, "toolsets.mcp", "must be an object"),
    ],
)
def test_every_unusable_key_is_named_by_its_path(
    doc: dict[str, Any], path: str, description: str
) -> None:
    with pytest.raises(ConfigProblem) as caught:
        parse_services_config(doc, {})

    assert caught.value.path == path
    assert description in caught.value.description
    assert str(caught.value).startswith(f"{path}: ")


def test_a_document_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ConfigProblem) as caught:
        parse_services_config([], {})  # type: ignore[arg-type]

    assert caught.value.path == "$"


def test_placeholders_are_expanded_from_the_environment() -> None:
    env = {"MODEL": "gpt-env", "HOST": "llm.internal", "KEY": "sk-env", "TOOL": "parse_url"}
    config = parse(
        {
            "providers": {
                "p": openai(
                    model="${MODEL}",
                    base_url="https://${HOST}:${PORT:-8443}/v1",
                    api_key="${KEY}",
                    metadata={"note": "${NOTE:-}", "tags": ["${MODEL}-tag"]},
                )
            }
        },
        env,
        toolsets={"custom": ["${TOOL}", "read_lines"]},
    )

    provider = config.providers["p"]
    assert provider.model == "gpt-env"
    assert provider.base_url == "https://llm.internal:8443/v1"
    assert provider.api_key == "sk-env"
    assert provider.metadata == {"note": "", "tags": ["gpt-env-tag"]}
    assert config.custom_tools == ("parse_url", "read_lines")
    assert config.unset_variables == ()


def test_an_unset_variable_expands_to_nothing_and_is_recorded() -> None:
    config = parse(
        {"providers": {"p": openai(api_key="${NO_SUCH_KEY}", metadata={"x": ["${ALSO_UNSET}"]})}}
    )

    assert config.providers["p"].api_key is None
    assert config.unset_variables == (
        "llm.providers.p.api_key (${NO_SUCH_KEY})",
        "llm.providers.p.metadata.x[0] (${ALSO_UNSET})",
    )


def test_an_expanded_value_is_not_expanded_again() -> None:
    config = parse({"providers": {"p": openai(api_key="${A}")}}, {"A": "${B}", "B": "secret"})

    assert config.providers["p"].api_key == "${B}"


def test_an_unset_required_value_is_reported_as_missing() -> None:
    with pytest.raises(ConfigProblem) as caught:
        parse({"providers": {"p": openai(model="${MODEL}")}})

    assert caught.value.path == "llm.providers.p.model"


@pytest.mark.parametrize(
    ("kind", "variable"),
    [
        ("openai", "OPENAI_API_KEY"),
        ("openai-compatible", "OPENAI_API_KEY"),
        ("deepseek", "DEEPSEEK_API_KEY"),
        ("google", "GOOGLE_API_KEY"),
        ("gemini", "GOOGLE_API_KEY"),
    ],
)
def test_the_api_key_comes_from_the_provider_types_variable_when_not_configured(
    kind: str, variable: str
) -> None:
    env = {variable: f"key-of-{variable}"}

    from_env = parse({"providers": {"p": {"type": kind, "model": "m"}}}, env)
    configured = parse({"providers": {"p": {"type": kind, "model": "m", "api_key": "own"}}}, env)

    assert from_env.providers["p"].api_key == f"key-of-{variable}"
    assert configured.providers["p"].api_key == "own"


def test_local_servers_take_no_key_from_the_environment() -> None:
    env = {"OPENAI_API_KEY": "sk-openai", "DEEPSEEK_API_KEY": "sk-deepseek"}
    config = parse(
        {
            "providers": {
                "o": {"type": "ollama", "model": "llama"},
                "v": {"type": "vllm", "model": "m", "base_url": "http://gpu:8000/v1"},
                "off": {"type": "offline"},
            }
        },
        env,
    )

    assert [p.api_key for p in config.providers.values()] == [None, None, None]


def test_base_urls_default_by_provider_type() -> None:
    config = parse(
        {
            "providers": {
                "ds": {"type": "deepseek", "model": "deepseek-chat"},
                "ol": {"type": "ollama", "model": "llama3"},
                "own": {"type": "ollama", "model": "llama3", "base_url": "http://box:11434/v1"},
                "oa": openai(),
            }
        }
    )

    assert config.providers["ds"].base_url == "https://api.deepseek.com/v1"
    assert config.providers["ol"].base_url == "http://127.0.0.1:11434/v1"
    assert config.providers["own"].base_url == "http://box:11434/v1"
    assert config.providers["oa"].base_url is None


def test_custom_toolsets_are_all_or_a_list() -> None:
    assert parse(toolsets={"custom": "all"}).custom_tools is None
    assert parse(toolsets={"custom": None}).custom_tools is None
    assert parse(toolsets={}).custom_tools is None
    assert parse(toolsets={"custom": []}).custom_tools == ()
    assert parse(toolsets={"custom": ["a", "b"]}).custom_tools == ("a", "b")


def test_a_provider_never_shows_its_key() -> None:
    config = parse({"providers": {"p": openai(api_key="sk-very-secret")}})
    provider = config.providers["p"]

    for text in (repr(provider), str(provider), f"{provider}", repr(config), str([provider])):
        assert "sk-very-secret" not in text
    assert "gpt-test" in repr(provider)


# ------------------------------------------------------------- config files


def settings(**values: Any) -> Settings:
    return Settings(**{"services_config_file": None, "services_config": None, **values})


def test_without_a_services_config_the_default_is_used() -> None:
    assert load_services_config(settings(), {}) is DEFAULT


def test_the_services_config_is_read_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "services.json"
    path.write_text(json.dumps({"llm": {"providers": {"p": openai(api_key="${K}")}}}))

    config = load_services_config(
        settings(services_config_file=path, services_config='{"ignored": true}'), {"K": "sk"}
    )

    assert isinstance(config, ServicesConfig)
    assert config.providers["p"].api_key == "sk"


def test_the_services_config_is_read_from_json_text() -> None:
    text = json.dumps({"llm": {"providers": {"p": openai()}}, "toolsets": {"custom": ["x"]}})

    config = load_services_config(settings(services_config=text), {})

    assert list(config.providers) == ["p"]
    assert config.custom_tools == ("x",)


def test_the_old_environment_variable_names_are_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "services.json"
    path.write_text(json.dumps({"llm": {"providers": {"from_file": openai()}}}))
    monkeypatch.delenv("AGENTRT_EXECUTOR_SERVICES_CONFIG_FILE", raising=False)
    monkeypatch.delenv("AGENTRT_EXECUTOR_SERVICES_CONFIG", raising=False)
    monkeypatch.setenv("SERVICES_CONFIG_FILE", str(path))

    assert list(load_services_config(Settings(), {}).providers) == ["from_file"]


def test_a_missing_file_is_a_config_error_naming_the_variable(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"

    with pytest.raises(ConfigError, match=r"SERVICES_CONFIG_FILE: cannot read .*nope\.json"):
        load_services_config(settings(services_config_file=missing), {})


def test_a_file_that_is_not_json_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "services.json"
    path.write_text("llm: {providers: {}}")

    with pytest.raises(ConfigError, match="SERVICES_CONFIG_FILE: not JSON"):
        load_services_config(settings(services_config_file=path), {})
    with pytest.raises(ConfigError, match="SERVICES_CONFIG: not JSON"):
        load_services_config(settings(services_config="{"), {})


def test_an_unusable_key_is_a_config_error_naming_the_key() -> None:
    text = json.dumps({"llm": {"providers": {"p": {"type": "vllm", "model": "m"}}}})

    with pytest.raises(ConfigError) as caught:
        load_services_config(settings(services_config=text), {})

    assert str(caught.value) == "SERVICES_CONFIG: llm.providers.p.base_url: is required for vllm"


# ----------------------------------------------------------------- fields


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Level(int, Enum):
    LOW = 1
    HIGH = 2


class Part(BaseModel):
    name: str = Field(description="The part's name", min_length=1, max_length=20)
    weight: float = Field(1.0, ge=0, le=10)


class Example(BaseModel):
    title: str = Field(description="Title", pattern="^[a-z]+$")
    count: int = Field(3, ge=1, le=99, description="How many")
    colour: Colour = Colour.RED
    level: Level = Level.LOW
    mode: Literal["fast", "slow"] = "fast"
    main: Part = Field(description="The main part")
    spare: Part | None = None
    note: str | None = Field(None, max_length=5)
    parts: list[Part] = Field(default_factory=list, min_length=0, max_length=4)
    tags: list[str] = []


def by_key(fields: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f["key"]: f for f in fields}


PART_FIELDS = [
    {
        "key": "name",
        "type": "string",
        "description": "The part's name",
        "validation": {"minLength": 1, "maxLength": 20},
    },
    {
        "key": "weight",
        "type": "number",
        "description": "Weight",
        "default": 1.0,
        "validation": {"min": 0, "max": 10},
        "optional": True,
    },
]


def test_fields_keep_declaration_order_and_mark_optional_ones() -> None:
    fields = fields_of(Example.model_json_schema())

    assert [f["key"] for f in fields] == [
        "title",
        "count",
        "colour",
        "level",
        "mode",
        "main",
        "spare",
        "note",
        "parts",
        "tags",
    ]
    required = [f["key"] for f in fields if not f.get("optional")]
    assert required == ["title", "main"]


def test_scalar_fields_carry_type_description_default_and_validation() -> None:
    fields = by_key(fields_of(Example.model_json_schema()))

    assert fields["title"] == {
        "key": "title",
        "type": "string",
        "description": "Title",
        "validation": {"pattern": "^[a-z]+$"},
    }
    assert fields["count"] == {
        "key": "count",
        "type": "integer",
        "description": "How many",
        "default": 3,
        "validation": {"min": 1, "max": 99},
        "optional": True,
    }
    assert fields["note"]["type"] == "string"  # Optional[str] reads as str
    assert fields["note"]["validation"] == {"maxLength": 5}
    assert fields["note"]["default"] is None


def test_enums_and_literals_become_enum_validation() -> None:
    fields = by_key(fields_of(Example.model_json_schema()))

    assert fields["colour"]["type"] == "string"
    assert fields["colour"]["validation"] == {"enum": ["red", "blue"]}
    assert fields["colour"]["default"] == "red"
    assert fields["level"]["type"] == "integer"
    assert fields["level"]["validation"] == {"enum": [1, 2]}
    assert fields["mode"]["type"] == "string"
    assert fields["mode"]["validation"] == {"enum": ["fast", "slow"]}


def test_nested_models_and_lists_of_objects_describe_their_fields() -> None:
    fields = by_key(fields_of(Example.model_json_schema()))

    assert fields["main"]["type"] == "object"
    assert fields["main"]["description"] == "The main part"
    assert fields["main"]["properties"] == PART_FIELDS
    assert fields["spare"]["type"] == "object"  # Optional[Part] reads as Part
    assert fields["spare"]["optional"] is True
    assert fields["spare"]["properties"] == PART_FIELDS
    assert fields["parts"]["type"] == "array"
    assert fields["parts"]["validation"] == {"minLength": 0, "maxLength": 4}
    assert fields["parts"]["items"] == {"type": "object", "properties": PART_FIELDS}
    assert fields["tags"]["items"] == {"type": "string"}
    assert fields["tags"]["default"] == []


def test_raw_schema_forms_are_read() -> None:
    schema = {
        "type": "object",
        "properties": {
            "nullable": {"type": ["integer", "null"], "exclusiveMinimum": 0},
            "fixed": {"const": "v1"},
            "untyped": {"description": "anything"},
            "titled": {"type": "boolean", "title": "A flag"},
            "mixed": {"type": ["integer", "string"]},
            "bag": {"properties": {"x": {"type": "integer"}}, "required": ["x"]},
            "broken": "not a schema",
        },
        "required": ["fixed"],
    }

    fields = by_key(fields_of(schema))

    assert fields["nullable"]["type"] == "integer"
    assert fields["nullable"]["validation"] == {"min": 0}
    assert fields["fixed"] == {"key": "fixed", "type": "string", "validation": {"enum": ["v1"]}}
    assert fields["untyped"]["type"] == "any"
    assert fields["untyped"]["description"] == "anything"
    assert fields["titled"]["description"] == "A flag"
    assert fields["mixed"]["type"] == "any"
    assert fields["bag"]["type"] == "object"
    assert fields["bag"]["properties"] == [{"key": "x", "type": "integer"}]
    assert "broken" not in fields


def test_an_object_without_properties_has_no_fields() -> None:
    assert fields_of({"type": "object"}) == []
    assert fields_of({}) == []


# ------------------------------------------------------------- select_tools


OFFERED = [
    ToolSpec.of("read_lines", "Read lines", {"type": "object"}),
    ToolSpec.of("parse_url", "Parse a URL", {"type": "object"}),
    ToolSpec.of("fetch_url", "Fetch a URL", {"type": "object"}),
]


def names(specs: list[ToolSpec]) -> list[str]:
    return [s.name for s in specs]


def test_custom_selects_every_offered_tool_when_all_are_allowed() -> None:
    chosen = select_tools(["custom"], OFFERED, parse())

    assert names(chosen) == ["fetch_url", "parse_url", "read_lines"]


def test_custom_selects_only_the_listed_tools_that_are_offered() -> None:
    config = parse(toolsets={"custom": ["parse_url", "not_offered"]})

    assert names(select_tools(["custom"], OFFERED, config)) == ["parse_url"]


def test_a_tool_can_be_named_on_its_own_and_is_chosen_once() -> None:
    chosen = select_tools(["parse_url", "custom", "parse_url"], OFFERED, parse())

    assert names(chosen) == ["parse_url", "fetch_url", "read_lines"]
    assert select_tools([], OFFERED, parse()) == []


def test_unservable_toolsets_are_each_named_by_index() -> None:
    config = parse(toolsets={"custom": ["parse_url"], "mcp": {"filesystem": {"servers": []}}})

    with pytest.raises(ToolsetProblem) as caught:
        select_tools(["parse_url", "read_lines", "filesystem", "nonsense"], OFFERED, config)

    assert caught.value.violations == [
        FieldViolation("toolsets[1]", "tool 'read_lines' is not allowed by toolsets.custom"),
        FieldViolation("toolsets[2]", "MCP toolset 'filesystem' is not served by this runtime yet"),
        FieldViolation("toolsets[3]", "no toolset or tool named 'nonsense'"),
    ]
    assert "toolsets[3]: no toolset or tool named 'nonsense'" in str(caught.value)


# --------------------------------------------------------------- RemoteTool


SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}


def tools_with(**functions: Any) -> tuple[InMemoryTools, dict[str, BaseTool]]:
    gateway = InMemoryTools()
    for name, function in functions.items():
        gateway.add(ToolSpec.of(name, f"The {name} tool", SCHEMA), function)
    return gateway, {t.name: t for t in remote_tools(list(gateway.specs.values()), gateway)}


def context(max_tool_calls: int = 10, run_id: str = "run-7") -> RunContext:
    return RunContext(
        run_id=run_id,
        agent_id="agent-1",
        agent_version=2,
        task_id="task-1",
        workspace="agent-1",
        limits=RunLimits(max_tool_calls=max_tool_calls),
    )


def call(name: str, call_id: str = "call_abc", **args: Any) -> dict[str, Any]:
    return {"type": "tool_call", "id": call_id, "name": name, "args": args or {"q": "x"}}


class GraphState(TypedDict):
    calls: list[dict[str, Any]]
    results: list[Any]


async def in_graph(tool: BaseTool, *calls: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """Invoke `tool` with `calls` inside a LangGraph node: the results and the custom events."""

    async def node(state: GraphState) -> dict[str, Any]:
        return {"results": [await tool.ainvoke(c) for c in state["calls"]]}

    builder = StateGraph(GraphState)
    builder.add_node("call", node)
    builder.add_edge(START, "call")
    builder.add_edge("call", END)
    graph = builder.compile()
    events: list[Any] = []
    results: list[Any] = []
    async for mode, data in graph.astream(
        {"calls": list(calls), "results": []}, stream_mode=["custom", "values"]
    ):
        if mode == "custom":
            events.append(data)
        else:
            results = data["results"]
    return results, events


async def ok(arguments: Any) -> ToolOutcome:
    return ToolOutcome(content=f"found {arguments['q']}")


async def test_a_tool_call_reaches_the_gateway_with_the_run_and_an_idempotency_key() -> None:
    gateway, tools = tools_with(lookup=ok)
    token = current_run.set(context())
    try:
        (message,), events = await in_graph(tools["lookup"], call("lookup", "call_1", q="cats"))
    finally:
        current_run.reset(token)

    assert isinstance(message, ToolMessage)
    assert message.content == "found cats"
    assert message.status == "success"
    ((name, arguments, ctx),) = gateway.calls
    assert (name, arguments) == ("lookup", {"q": "cats"})
    assert ctx.idempotency_key == "run-7:call_1"
    assert (ctx.run_id, ctx.agent_id, ctx.task_id, ctx.workspace) == (
        "run-7",
        "agent-1",
        "task-1",
        "agent-1",
    )
    assert events == [
        {
            "agentrt_event": "tool_call_started",
            "tool_call_id": "call_1",
            "tool_name": "lookup",
            "arguments_json": '{"q": "cats"}',
        },
        {
            "agentrt_event": "tool_call_finished",
            "tool_call_id": "call_1",
            "tool_name": "lookup",
            "ok": True,
            "result_preview": "found cats",
        },
    ]


async def test_calls_without_an_id_get_a_key_unique_within_the_run() -> None:
    gateway, tools = tools_with(lookup=ok)
    ctx = context()
    token = current_run.set(ctx)
    try:
        results, _ = await in_graph(tools["lookup"], {"q": "a"}, {"q": "b"})
    finally:
        current_run.reset(token)

    assert results == ["found a", "found b"]
    assert [c.idempotency_key for _, _, c in gateway.calls] == ["run-7:call-1", "run-7:call-2"]
    assert ctx.tool_calls == 2


async def test_a_tool_error_comes_back_to_the_model_as_an_error_message() -> None:
    async def failing(arguments: Any) -> ToolOutcome:
        return ToolOutcome(error_code="NOT_FOUND", error_message="no such file: a.txt")

    _, tools = tools_with(read=failing)
    token = current_run.set(context())
    try:
        (message,), events = await in_graph(tools["read"], call("read", "c9"))
    finally:
        current_run.reset(token)

    assert message.status == "error"
    assert message.content == "Error NOT_FOUND: no such file: a.txt"
    assert message.tool_call_id == "c9"
    assert events[-1]["ok"] is False
    assert events[-1]["result_preview"] == "Error NOT_FOUND: no such file: a.txt"


async def test_a_refusal_by_the_tools_service_is_readable_with_its_reason() -> None:
    async def refuse(arguments: Any) -> ToolOutcome:
        raise InvalidArgument("bad call", violations=[FieldViolation("q", "must not be empty")])

    async def outage(arguments: Any) -> ToolOutcome:
        raise Unavailable("tools service is down", reason="TOOLS_UNAVAILABLE")

    _, tools = tools_with(refuse=refuse, outage=outage)
    token = current_run.set(context())
    try:
        (refused,), refused_events = await in_graph(tools["refuse"], call("refuse"))
        (down,), _ = await in_graph(tools["outage"], call("outage"))
    finally:
        current_run.reset(token)

    assert refused.status == "error"
    assert refused.content == "Error VALIDATION_ERROR: q: must not be empty"
    assert refused_events[-1]["ok"] is False
    assert down.status == "error"
    assert down.content == "Error TOOLS_UNAVAILABLE: tools service is down"


async def test_the_tool_call_budget_ends_the_run_instead_of_calling() -> None:
    gateway, tools = tools_with(lookup=ok)
    ctx = context(max_tool_calls=1)
    token = current_run.set(ctx)
    try:
        with pytest.raises(LimitExceeded, match=r"max tool calls \(1\) reached; lookup not called"):
            await in_graph(tools["lookup"], call("lookup", "first"), call("lookup", "second"))
        with pytest.raises(LimitExceeded):  # outside a graph too
            await tools["lookup"].ainvoke(call("lookup", "third"))
    finally:
        current_run.reset(token)

    assert [c.idempotency_key for _, _, c in gateway.calls] == ["run-7:first"]
    assert ctx.tool_calls == 1


async def test_a_tool_outside_a_run_answers_with_an_error() -> None:
    gateway, tools = tools_with(lookup=ok)

    message = await tools["lookup"].ainvoke(call("lookup"))

    assert message.status == "error"
    assert "only be called inside a run" in message.content
    assert gateway.calls == []


def test_tool_results_are_rendered_as_text_for_the_model() -> None:
    assert render("text", {"ignored": 1}, ()) == "text"
    assert render("", {"b": 2, "a": "é"}, ()) == '{"a": "é", "b": 2}'
    assert render("done", None, ["out/a.txt", "out/b.txt"]) == "done\nSaved: out/a.txt, out/b.txt"
    assert render("", None, ()) == "(no output)"


def test_remote_tools_take_their_schema_and_side_effect_from_the_spec() -> None:
    gateway = InMemoryTools()
    specs = [
        ToolSpec.of("write", "Write a file", SCHEMA, side_effect="at_most_once"),
        ToolSpec("bare", ""),
    ]

    write, bare = remote_tools(specs, gateway)

    assert write.description == "Write a file"
    assert write.side_effect == "at_most_once"  # type: ignore[attr-defined]
    assert write.args == SCHEMA["properties"]
    assert bare.description == "bare"
    assert bare.args == {}


# ------------------------------------------- tools in a run, through RunService


def scripted_service(
    steps: list[dict[str, Any]],
    functions: dict[str, Any],
    conversation_config: dict[str, Any] | None = None,
) -> tuple[RunService, InMemoryTools, InMemoryRunStore]:
    config = parse({"providers": {"scripted": {"type": "offline", "metadata": {"script": steps}}}})
    gateway = InMemoryTools()
    for name, function in functions.items():
        gateway.add(ToolSpec.of(name, f"The {name} tool", SCHEMA), function)
    agent = AgentSnapshot(
        id="agent-1",
        version=1,
        status="active",
        name="A",
        template_id="conversation",
        toolsets=("custom",),
        conversation_config=conversation_config or {},
    )
    store = InMemoryRunStore()
    service = RunService(
        agents=InMemoryAgents(agent),
        catalog=TemplateCatalog([Conversation]),
        models=ProviderModels(config),
        tools=gateway,
        store=store,
        events=ListEventSink(),
        cancel_bus=LocalCancelBus(),
        services=config,
        call_store=run_inline,
    )
    return service, gateway, store


async def run_once(service: RunService, text: str = "go") -> tuple[str, list[Any]]:
    handle = await service.start(RunRequest("agent-1", [InputMessage("user", text)]))
    return handle.run_id, [e.body async for e in handle]


async def test_tool_calls_in_a_run_are_events_keyed_by_the_models_call_id() -> None:
    async def failing(arguments: Any) -> ToolOutcome:
        return ToolOutcome(error_code="DENIED", error_message="path refused")

    service, gateway, store = scripted_service(
        [
            {"content": "", "tool_calls": [{"name": "lookup", "args": {"q": "cats"}}]},
            {"content": "", "tool_calls": [{"name": "read", "args": {"q": "x"}}]},
            {"content": "The tool said: {tool_result}"},
        ],
        {"lookup": ok, "read": failing},
    )

    run_id, bodies = await run_once(service)

    started = [b for b in bodies if isinstance(b, ToolCallStarted)]
    finished = [b for b in bodies if isinstance(b, ToolCallFinished)]
    assert started == [
        ToolCallStarted("call_0_0", "lookup", '{"q": "cats"}'),
        ToolCallStarted("call_1_0", "read", '{"q": "x"}'),
    ]
    assert finished == [
        ToolCallFinished("call_0_0", "lookup", True, "found cats"),
        ToolCallFinished("call_1_0", "read", False, "Error DENIED: path refused"),
    ]
    assert [c.idempotency_key for _, _, c in gateway.calls] == [
        f"{run_id}:call_0_0",
        f"{run_id}:call_1_0",
    ]
    completed = [b.content for b in bodies if isinstance(b, MessageCompleted)]
    assert completed[-1] == "The tool said: Error DENIED: path refused"
    record = store.get(run_id)
    assert record is not None
    assert record.status is RunStatus.SUCCEEDED
    assert record.tool_calls == 2


async def test_a_run_over_its_tool_call_budget_fails_with_limit_exceeded() -> None:
    service, gateway, store = scripted_service(
        [
            {"content": "", "tool_calls": [{"name": "lookup", "args": {"q": "1"}}]},
            {"content": "", "tool_calls": [{"name": "lookup", "args": {"q": "2"}}]},
            {"content": "never reached"},
        ],
        {"lookup": ok},
        conversation_config={"limits": {"max_tool_calls": 1}},
    )

    run_id, bodies = await run_once(service)

    last = bodies[-1]
    assert isinstance(last, RunFailed)
    assert last.code == "LIMIT_EXCEEDED"
    assert "max tool calls (1)" in last.message
    assert len(gateway.calls) == 1
    record = store.get(run_id)
    assert record is not None
    assert record.status is RunStatus.FAILED
    assert record.error_code == "LIMIT_EXCEEDED"
    assert record.tool_calls == 1
