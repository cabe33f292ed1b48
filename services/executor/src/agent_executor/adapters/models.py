"""Adapter: chat models for agents, from the providers of the services configuration.

One model object and one circuit breaker per provider, shared by every agent
that uses it; an agent's model is a `RoutedChatModel` over its provider (its
`llm_config_id`, or the default) and the fallback provider.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel

from agent_executor.adapters.providers.offline import OfflineChatModel, ScriptStep
from agent_executor.adapters.providers.openai import is_transient, openai_model
from agent_executor.application.model import Route, RoutedChatModel
from agent_executor.application.ports import ModelProblem
from agent_executor.domain.agents import AgentSnapshot
from agent_executor.domain.services_config import OFFLINE, ProviderConfig, ServicesConfig
from agentrt_kit.resilience import CircuitBreaker


def provider_model(config: ProviderConfig, *, timeout: float, retries: int) -> BaseChatModel:
    """The chat model of one provider."""
    if config.type == OFFLINE:
        meta = config.metadata
        return OfflineChatModel(
            model_name=config.model,
            script=[ScriptStep.model_validate(s) for s in meta.get("script", [])],
            latency_ms=float(meta.get("latency_ms", 0)),
            token_latency_ms=float(meta.get("token_latency_ms", 0)),
        )
    return openai_model(config, timeout=timeout, retries=retries)


class ProviderModels:
    """The `ModelFactory` and `DraftingModels` ports over the services configuration."""

    def __init__(
        self,
        config: ServicesConfig,
        *,
        timeout: float = 60.0,
        retries: int = 2,
        breaker_failures: int = 5,
        breaker_cooldown: float = 30.0,
    ) -> None:
        self.config = config
        self._routes: dict[str, Route] = {}
        for provider_id, provider in config.providers.items():
            try:
                model = provider_model(provider, timeout=timeout, retries=retries)
            except (ValueError, TypeError) as e:
                raise ModelProblem(f"llm.providers.{provider_id}: {e}") from e
            defaults: dict[str, Any] = {}
            if provider.temperature is not None:
                defaults["temperature"] = provider.temperature
            if provider.max_tokens is not None:
                defaults["max_tokens"] = provider.max_tokens
            breaker = CircuitBreaker(breaker_failures, breaker_cooldown, name=provider_id)
            self._routes[provider_id] = Route(provider_id, model, breaker, defaults)

    def for_agent(self, agent: AgentSnapshot) -> RoutedChatModel:
        """The agent's model: its provider, then the fallback."""
        return self.for_provider(agent.llm_config_id)

    def for_provider(self, provider_id: str) -> RoutedChatModel:
        """A provider's model ('' means the default), then the fallback."""
        provider_id = provider_id or self.config.default_provider
        primary = self._routes.get(provider_id)
        if primary is None:
            known = ", ".join(sorted(self._routes))
            raise ModelProblem(f"no model provider {provider_id!r} is configured (known: {known})")
        routes = [primary]
        fallback = self.config.fallback_provider
        if fallback and fallback != provider_id:
            routes.append(self._routes[fallback])
        return RoutedChatModel.over(routes, transient=is_transient)
