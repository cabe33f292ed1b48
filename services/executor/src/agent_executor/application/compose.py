"""Application: drafting an agent from instructions with a model; nothing is created.

`ComposeService.compose` checks the request, then asks the selected provider's
chat model for a JSON draft. The model is the same `RoutedChatModel` runs use, so
retries, the circuit breaker and the fallback provider apply, and its token usage
is counted the same way. The prompt describes the template (its config's JSON
Schema) and the tools on offer. The reply is parsed tolerantly; whatever it lacks
is derived from the request. The draft's template config is then validated with
the template's `Config`, and its toolsets against the tools service. Problems in
the draft are warnings, not errors: a person reviews the draft before creating it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel

from agent_executor.application.context import RunContext, current_run
from agent_executor.application.messages import text_of
from agent_executor.application.ports import ModelProblem, ToolGateway, ToolSpec
from agent_executor.application.templates import (
    ConfigViolations,
    TemplateCatalog,
    validate_config,
)
from agent_executor.application.tools import CUSTOM, ToolsetProblem, select_tools
from agent_executor.domain.compose import (
    AgentDraft,
    ComposeRequest,
    merge_draft,
    prompts,
    reply_object,
    request_violations,
    unknown_keys,
)
from agent_executor.domain.limits import RunLimits
from agent_executor.domain.runs import Usage
from agent_executor.domain.services_config import ServicesConfig
from agent_executor.errors import ProviderUnavailable, RunFailure, TemplateUnavailable
from agentrt_kit.errors import AgentrtError, FieldViolation, InvalidArgument

log = logging.getLogger(__name__)


class DraftingModels(Protocol):
    """Chat models by provider id (the services config's providers)."""

    def for_provider(self, provider_id: str) -> Any:
        """The provider's routed chat model ('' means the default provider).

        Raises:
            ModelProblem: no such provider is configured.
        """
        ...


@dataclass(frozen=True, slots=True)
class ComposeResult:
    """A draft, whether its template config validates, what to review, and the tokens used."""

    draft: AgentDraft
    valid: bool
    warnings: tuple[str, ...]
    usage: Usage


class ComposeService:
    """Drafts agents with the configured models."""

    def __init__(
        self,
        *,
        catalog: TemplateCatalog,
        models: DraftingModels,
        tools: ToolGateway,
        services: ServicesConfig,
    ) -> None:
        self.catalog = catalog
        self.models = models
        self.tools = tools
        self.services = services

    async def compose(self, request: ComposeRequest) -> ComposeResult:
        """Draft an agent for `request`.

        Raises:
            InvalidArgument: a field is bad, or `llm_config_id` names no provider.
            TemplateUnavailable: the template is not served by this executor.
            ProviderUnavailable: the provider (and its fallback) failed.
        """
        problems = request_violations(request)
        try:
            model = self.models.for_provider(request.llm_config_id)
        except ModelProblem as e:
            problems.append(FieldViolation("llm_config_id", str(e)))
        if problems:
            text = "; ".join(f"{p.field}: {p.description}" for p in problems)
            raise InvalidArgument(text, violations=problems)
        loaded = self.catalog.get(request.template_id)
        if loaded is None:
            raise TemplateUnavailable(
                f"template {request.template_id!r} is not served by this executor",
                violations=[FieldViolation("template_id", "is not a served template")],
                metadata={"template_id": request.template_id},
            )
        config_class = loaded.template.Config
        offered = await self._offered_tools()
        allowed = None if offered is None else select_tools([CUSTOM], offered, self.services)
        system, user = prompts(
            loaded.descriptor,
            None if allowed is None else [(t.name, t.description) for t in allowed],
            request,
        )
        # The routed model adds every call's tokens to the current run's usage; a
        # context of its own gives this call the same accounting (and no run sampling).
        ctx = RunContext(
            run_id=f"compose-{uuid.uuid4().hex}",
            agent_id="",
            agent_version=0,
            task_id="",
            workspace="",
            limits=RunLimits(),
        )
        reply = await self._ask(model, system, user, ctx)
        draft, warnings = merge_draft(reply_object(reply), request, default_config(config_class))
        valid, config_warnings = check_config(config_class, draft.template_config)
        warnings.extend(config_warnings)
        warnings.extend(self._tool_warnings(draft.toolsets, offered))
        return ComposeResult(
            draft=draft,
            valid=valid,
            warnings=tuple(warnings),
            usage=Usage(ctx.prompt_tokens, ctx.completion_tokens),
        )

    async def _offered_tools(self) -> Sequence[ToolSpec] | None:
        """The tools service's tools (cached by the client); None while it cannot be asked."""
        try:
            return await self.tools.list_tools()
        except AgentrtError as e:
            log.warning("compose: tools not listed", extra={"error": e.message})
            return None

    async def _ask(self, model: Any, system: str, user: str, ctx: RunContext) -> str:
        token = current_run.set(ctx)
        try:
            reply = await model.ainvoke([SystemMessage(system), HumanMessage(user)])
        except RunFailure as e:  # the routed model reports every provider failure as one
            raise ProviderUnavailable(e.message) from None
        finally:
            current_run.reset(token)
        return text_of(reply)

    def _tool_warnings(
        self, toolsets: Sequence[str], offered: Sequence[ToolSpec] | None
    ) -> list[str]:
        if not toolsets:
            return []
        if offered is None:
            return ["toolsets: not checked; the tools service cannot be asked now"]
        try:
            select_tools(toolsets, offered, self.services)
        except ToolsetProblem as e:
            return [f"{v.field}: {v.description}" for v in e.violations]
        return []


def default_config(config: type[BaseModel]) -> dict[str, Any]:
    """The template config made of the `Config`'s defaults; {} when it requires fields."""
    try:
        values: dict[str, Any] = config.model_validate({}).model_dump(mode="json", by_alias=True)
    except Exception:  # plugin code may raise anything; no defaults then
        return {}
    return values


def check_config(config: type[BaseModel], values: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """Whether `values` validates with `config`, and one warning per problem.

    Keys the `Config` does not declare are warned about when it does not forbid them
    (a forbidding `Config` reports them as errors already).
    """
    warnings: list[str] = []
    valid = True
    try:
        validate_config(config, values)
    except ConfigViolations as e:
        valid = False
        warnings.extend(f"{v.field}: {v.description}" for v in e.violations)
    except Exception as e:  # a plugin's validator failing is a problem of the draft too
        valid = False
        warnings.append(f"template_config: the template's check failed: {type(e).__name__}")
    if config.model_config.get("extra") != "forbid":
        warnings.extend(
            f"template_config.{key}: not a field of the template's config"
            for key in unknown_keys(values, _field_keys(config))
        )
    return valid, warnings


def _field_keys(config: type[BaseModel]) -> list[str]:
    keys = []
    for name, info in config.model_fields.items():
        keys.append(name)
        keys.extend(a for a in (info.alias, info.validation_alias) if isinstance(a, str))
    return keys
