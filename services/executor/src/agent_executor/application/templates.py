"""Application: the template SDK and the catalogue of templates an executor serves.

A template declares who it is (id, name, description, version, framework), a
pydantic model of its configuration (published as JSON Schema and as the COMPAT
field list) and a graph factory `build(agent, model, tools)` returning a compiled
LangGraph graph whose state has a `messages` list. A config model declares the
rules the registry checks before any run, as JSON Schema keywords made by
`acyclic` (steps must not depend on each other in a circle) and `ceiling` (a
value bounded by a limit the executors publish). Templates come from the
built-ins and from plugin folders (`__agents__`); the catalogue keeps which
source each came from, so a plugin can be reloaded or removed on its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool
from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel, ConfigDict, ValidationError

from agent_executor.domain.agents import AgentSnapshot
from agent_executor.domain.fields import fields_of
from agentrt_kit.errors import FieldViolation

TEMPLATE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
BUILTIN = "builtin"
ACYCLIC = "x-agentrt-acyclic"
CEILING = "x-agentrt-ceiling"


def acyclic(
    *,
    key: Sequence[str],
    depends_on: str = "depends_on",
    default_key: str | None = None,
    aliases: Sequence[str] = (),
    reserved: Sequence[str] = (),
) -> dict[str, Any]:
    """Schema keyword for a steps array whose items must not depend on each other in a cycle.

    Pass it as a list field's `json_schema_extra`. The registry then refuses, before
    any run, configs whose steps repeat a key, use a reserved key, depend on a step
    that does not exist, on themselves, or in a cycle.

    Args:
        key: item fields giving a step's key, the first holding a non-empty string wins.
        depends_on: the item field listing the keys (or aliases) a step depends on.
        default_key: the key of a step with none of `key` set (or given as a bare
            string); `{n}` is its 1-based position. None: such a step has no key.
        aliases: item fields by which a reference that is no key may name exactly one step.
        reserved: keys no step may take.
    """
    rule: dict[str, Any] = {"key": list(key), "depends_on": depends_on}
    if default_key is not None:
        rule["default_key"] = default_key
    if aliases:
        rule["aliases"] = list(aliases)
    if reserved:
        rule["reserved"] = list(reserved)
    return {ACYCLIC: rule}


def ceiling(limit: str, *, reserve: int = 0) -> dict[str, Any]:
    """Schema keyword bounding a number (or an array's length) by an executor limit.

    Pass it as a field's `json_schema_extra`. The value plus `reserve` must not exceed
    the limit named (a key of the `limits` executors publish, e.g.
    `run_timeout_seconds`, `max_steps`); an executor without that limit sets no bound.
    """
    if reserve:
        return {CEILING: {"limit": limit, "reserve": reserve}}
    return {CEILING: limit}


class NoConfig(BaseModel):
    """A template without configuration."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True)
class AgentView:
    """What a template's `build` sees of the agent: identity, prompt and validated config."""

    id: str
    version: int
    name: str
    system_prompt: str
    config: BaseModel
    conversation_config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def history_length(self) -> int | None:
        """`conversation_config.historyLength` (or `history_length`) when a positive integer."""
        for key in ("historyLength", "history_length"):
            value = self.conversation_config.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None


class AgentTemplate:
    """Base class of every template (built-in or plugin).

    Subclasses set the class attributes and implement `build`.
    """

    id: ClassVar[str]
    name: ClassVar[str]
    description: ClassVar[str] = ""
    version: ClassVar[str] = "1.0.0"
    framework: ClassVar[str] = "langgraph"
    Config: ClassVar[type[BaseModel]] = NoConfig
    # True when the graph offers a request's client tools (its runtime context,
    # `ClientTools`) and ends when the model calls one; runs of other templates
    # that bring client tools are refused.
    client_tools: ClassVar[bool] = False

    def build(
        self, agent: AgentView, model: BaseChatModel, tools: Sequence[BaseTool]
    ) -> CompiledStateGraph[Any, Any, Any, Any]:
        """The agent's graph; its state must have a `messages` list (the conversation)."""
        raise TypeError(f"template {type(self).__name__} does not define build()")

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        """JSON Schema (2020-12) of the template's configuration."""
        return cls.Config.model_json_schema()

    @classmethod
    def descriptor(cls) -> dict[str, Any]:
        """The catalogue entry: id, version, name, description, framework, schema, fields."""
        schema = cls.config_schema()
        return {
            "id": cls.id,
            "version": cls.version,
            "name": cls.name,
            "description": cls.description,
            "framework": cls.framework,
            "config_schema": schema,
            "config_fields": fields_of(schema),
        }

    @classmethod
    def problems(cls) -> list[str]:
        """Why this class cannot be served (empty when it can)."""
        out = []
        for attr in ("id", "name"):
            if not isinstance(getattr(cls, attr, None), str):
                out.append(f"{attr} must be a string")
        if isinstance(getattr(cls, "id", None), str) and not TEMPLATE_ID.fullmatch(cls.id):
            out.append(f"id {cls.id!r} must be 1-128 of [A-Za-z0-9_-], alphanumeric first")
        if not isinstance(cls.version, str) or not VERSION.fullmatch(cls.version):
            out.append(f"version {cls.version!r} must be 1-64 of [A-Za-z0-9._-]")
        config: object = cls.Config
        if not (isinstance(config, type) and issubclass(config, BaseModel)):
            out.append("Config must be a pydantic model class")
        elif not out:
            try:
                cls.descriptor()
            except Exception as e:  # a schema pydantic cannot render
                out.append(f"config schema: {e}")
        if cls.build is AgentTemplate.build:
            out.append("build() is not defined")
        return out

    def view(self, agent: AgentSnapshot) -> AgentView:
        """The agent as `build` sees it, with its template config validated.

        Raises:
            ConfigViolations: naming each bad `template_config` field.
        """
        config = validate_config(self.Config, agent.template_config)
        return AgentView(
            id=agent.id,
            version=agent.version,
            name=agent.name,
            system_prompt=agent.system_prompt,
            config=config,
            conversation_config=agent.conversation_config,
        )


def validate_config(config: type[BaseModel], values: Mapping[str, Any]) -> BaseModel:
    """`values` validated by a template's `Config`.

    Raises:
        ConfigViolations: naming each bad field as `template_config.<path>`.
    """
    try:
        return config.model_validate(dict(values))
    except ValidationError as e:
        raise ConfigViolations(
            [
                FieldViolation(
                    "template_config" + "".join(_path_part(p) for p in err["loc"]),
                    err["msg"],
                )
                for err in e.errors()
            ]
        ) from None


def _path_part(part: Any) -> str:
    return f"[{part}]" if isinstance(part, int) else f".{part}"


class ConfigViolations(ValueError):
    """A template config does not validate; `violations` names each bad field."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = violations


@dataclass(frozen=True, slots=True)
class LoadedTemplate:
    """A template instance and where it came from (a new object on every reload)."""

    template: AgentTemplate
    source: str
    descriptor: Mapping[str, Any]

    @property
    def id(self) -> str:
        """The template id."""
        return self.template.id

    @property
    def version(self) -> str:
        """The template version."""
        return self.template.version


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """A plugin (or one of its templates) that could not be served, and why."""

    source: str
    error: str


class TemplateCatalog:
    """The templates this executor serves, by id; plugins are replaced source by source.

    A built-in is given as its class, or as an instance when it is made with what it
    needs (`custom` runs code through the tools service).
    """

    def __init__(self, builtins: Iterable[type[AgentTemplate] | AgentTemplate] = ()) -> None:
        self._by_id: dict[str, LoadedTemplate] = {}
        self._problems: dict[str, list[TemplateProblem]] = {}
        self.generation = 0
        for builtin in builtins:
            cls = builtin if isinstance(builtin, type) else type(builtin)
            problems = cls.problems()
            if problems:
                raise TypeError(f"built-in template {cls.__name__}: {'; '.join(problems)}")
            template = builtin if isinstance(builtin, AgentTemplate) else cls()
            self._by_id[cls.id] = LoadedTemplate(template, BUILTIN, cls.descriptor())

    def get(self, template_id: str) -> LoadedTemplate | None:
        """The template serving `template_id`, if any."""
        return self._by_id.get(template_id)

    def templates(self) -> list[LoadedTemplate]:
        """Every template served, by id."""
        return [self._by_id[k] for k in sorted(self._by_id)]

    def problems(self) -> list[TemplateProblem]:
        """Every current problem, by source."""
        return [p for source in sorted(self._problems) for p in self._problems[source]]

    def sources(self) -> set[str]:
        """Plugin sources with templates or problems."""
        return {t.source for t in self._by_id.values() if t.source != BUILTIN} | set(self._problems)

    def replace_source(
        self,
        source: str,
        classes: Sequence[type[AgentTemplate]] | None,
        problems: Sequence[str] = (),
    ) -> tuple[list[LoadedTemplate], list[str]]:
        """Serve `classes` as everything `source` provides now.

        `classes=None` means the source failed to load: what it served before keeps
        serving and `problems` are recorded. Templates whose id another source (or a
        built-in) serves are refused. Returns the templates added or changed and
        the ids no longer served.
        """
        recorded = [TemplateProblem(source, p) for p in problems]
        if classes is None:
            self._problems[source] = recorded
            self.generation += 1
            return [], []
        fresh: dict[str, LoadedTemplate] = {}
        for cls in classes:
            bad = cls.problems()
            template_id = getattr(cls, "id", "?")
            owner = self._by_id.get(template_id) if isinstance(template_id, str) else None
            if bad:
                recorded.append(TemplateProblem(source, f"{cls.__name__}: {'; '.join(bad)}"))
            elif owner is not None and owner.source != source:
                recorded.append(
                    TemplateProblem(
                        source, f"{cls.__name__}: id {template_id!r} is served by {owner.source}"
                    )
                )
            elif template_id in fresh:
                recorded.append(
                    TemplateProblem(source, f"{cls.__name__}: id {template_id!r} listed twice")
                )
            else:
                try:
                    fresh[template_id] = LoadedTemplate(cls(), source, cls.descriptor())
                except Exception as e:
                    recorded.append(
                        TemplateProblem(
                            source, f"{cls.__name__}: cannot be created: {type(e).__name__}: {e}"
                        )
                    )
        removed = [tid for tid, t in self._by_id.items() if t.source == source and tid not in fresh]
        for tid in removed:
            del self._by_id[tid]
        self._by_id.update(fresh)
        if recorded:
            self._problems[source] = recorded
        else:
            self._problems.pop(source, None)
        self.generation += 1
        return list(fresh.values()), removed
