"""Application: the chat model templates get — a provider with fallback and request sampling.

`RoutedChatModel` wraps the agent's provider (and the configured fallback). On
every call it applies the sampling parameters in force — the provider's
defaults, then the agent's `conversation_config`, then the request's — so
request-level `temperature`, `max_tokens`, `top_p`, penalties and `stop` reach
the model whatever graph a template builds; the request's `response_format`
(OpenAI's wire form) goes with every call whose text the client sees — calls
tagged `agentrt:internal` (workflow steps, routing) keep their own format; the
tokens every call used are added to the run's usage. Each provider has a circuit
breaker; while the primary's is open, or when it fails before producing
anything, the fallback answers. Transient-error retries with backoff happen
inside the provider adapters.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from pydantic import ConfigDict, PrivateAttr

from agent_executor.application.context import INTERNAL_TAG, current_run
from agent_executor.errors import ProviderFailed, RunFailure
from agentrt_kit.resilience import CircuitBreaker

log = logging.getLogger(__name__)

SAMPLING_KEYS = ("temperature", "max_tokens", "top_p", "frequency_penalty", "presence_penalty")


def agent_sampling(conversation_config: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling parameters an agent's `conversation_config` sets (valid ones only)."""
    out: dict[str, Any] = {}
    for key in SAMPLING_KEYS:
        value = conversation_config.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value):
            continue
        if key == "max_tokens":
            if value >= 1 and value == int(value):
                out[key] = int(value)
        else:
            out[key] = float(value)
    stop = conversation_config.get("stop")
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        out["stop"] = stop
    return out


class Route:
    """One provider: its model, breaker and name."""

    def __init__(
        self,
        name: str,
        model: BaseChatModel,
        breaker: CircuitBreaker,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.breaker = breaker
        self.defaults = dict(defaults or {})  # the provider's sampling defaults
        # (tool ids, tool choice) -> (the tools, their kwargs). The entry keeps the tools
        # alive, so no other tool list (a request's client tools) can reuse their ids.
        self._tool_kwargs: dict[tuple[Any, ...], tuple[Sequence[Any], dict[str, Any]]] = {}

    def tool_kwargs(self, tools: Sequence[Any], tool_choice: Any) -> dict[str, Any]:
        """The keyword arguments this provider's `bind_tools` produces (cached per tool list)."""
        key = (tuple(id(t) for t in tools), repr(tool_choice))
        cached = self._tool_kwargs.get(key)
        if cached is None:
            bound = self.model.bind_tools(tools, tool_choice=tool_choice)
            cached = (tools, dict(getattr(bound, "kwargs", {})))
            if len(self._tool_kwargs) > 256:
                self._tool_kwargs.clear()
            self._tool_kwargs[key] = cached
        return cached[1]


def _always(error: BaseException) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class _Classifier:
    transient: Callable[[BaseException], bool]


class RoutedChatModel(BaseChatModel):
    """A provider with a fallback, applying the run's sampling parameters."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    _routes: list[Route] = PrivateAttr(default_factory=list)
    # A holder, not the callable itself: pydantic would bind a function default as a method.
    _classify: _Classifier = PrivateAttr(default_factory=lambda: _Classifier(_always))

    @classmethod
    def over(
        cls, routes: Sequence[Route], *, transient: Callable[[BaseException], bool]
    ) -> RoutedChatModel:
        """A model trying `routes` in order (the primary first)."""
        model = cls()
        model._routes = list(routes)
        model._classify = _Classifier(transient)
        return model

    @property
    def _llm_type(self) -> str:
        return "agentrt-routed"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"routes": [r.name for r in self._routes]}

    def bind_tools(
        self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; each provider formats them its own way at call time."""
        return self.bind(agentrt_tools=tuple(tools), agentrt_tool_choice=tool_choice, **kwargs)

    # -------------------------------------------------------------- routing

    def _open_routes(self) -> Iterator[Route]:
        """The routes to try, in order, each breaker asked only when its route is reached.

        Asking lazily matters: past its cool-down a breaker hands its one trial call to
        whoever asks, so a fallback's breaker must not be asked for a call the primary
        answers (its trial would never report and it would refuse for a cool-down more).
        """
        refused: Route | None = None
        tried = False
        for route in self._routes:
            if not route.breaker.allow():
                refused = route
                continue
            if refused is not None:
                _log_fallback(refused, route, "circuit open")
                refused = None
            tried = True
            yield route
        if not tried:
            names = ", ".join(r.name for r in self._routes)
            raise ProviderFailed(f"model providers unavailable (circuit open): {names}")

    def _call_kwargs(
        self,
        route: Route,
        stop: list[str] | None,
        kwargs: dict[str, Any],
        tags: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        tools = kwargs.pop("agentrt_tools", None)
        tool_choice = kwargs.pop("agentrt_tool_choice", None)
        merged: dict[str, Any] = dict(route.defaults)
        ctx = current_run.get()
        if ctx is not None:
            merged.update(ctx.agent_sampling)
            merged.update(ctx.sampling.as_kwargs())
            wire = ctx.response_format.wire()
            if wire is not None and INTERNAL_TAG not in (tags or ()):
                merged["response_format"] = wire
        merged.update(kwargs)
        stops = list(merged.pop("stop", None) or []) + list(stop or [])
        if tools:
            merged.update(route.tool_kwargs(tools, tool_choice))
        merged["stop"] = stops or None
        return merged

    def _failed(self, route: Route, error: BaseException) -> bool:
        """Count a failure; True when the next provider should be tried."""
        if isinstance(error, RunFailure) or not self._classify.transient(error):
            return False
        route.breaker.failed()
        following = self._routes[self._routes.index(route) + 1 :]
        # `is_open` reads without taking a trial; nothing runs between here and the
        # next breaker's `allow()`, so this says whether the fallback will be used.
        if following and not following[0].breaker.is_open:
            _log_fallback(route, following[0], _reason(error))
        return True

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        last: BaseException | None = None
        for route in self._open_routes():
            call = self._call_kwargs(route, stop, dict(kwargs), _tags(run_manager))
            try:
                result = await route.model._agenerate(messages, **call)
            except Exception as e:
                if not self._failed(route, e):
                    raise _as_failure(route, e) from e
                last = e
                continue
            route.breaker.succeeded()
            _count(result.generations[0].message if result.generations else None)
            return result
        raise _as_failure(self._routes[-1], last) from last

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        last: BaseException | None = None
        for route in self._open_routes():
            call = self._call_kwargs(route, stop, dict(kwargs), _tags(run_manager))
            produced = False
            try:
                async for chunk in route.model._astream(messages, **call):
                    produced = True
                    _count(chunk.message)
                    yield chunk
            except Exception as e:
                if produced or not self._failed(route, e):
                    raise _as_failure(route, e) from e
                last = e
                continue
            route.breaker.succeeded()
            return
        raise _as_failure(self._routes[-1], last) from last

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        last: BaseException | None = None
        for route in self._open_routes():
            call = self._call_kwargs(route, stop, dict(kwargs), _tags(run_manager))
            try:
                result = route.model._generate(messages, **call)
            except Exception as e:
                if not self._failed(route, e):
                    raise _as_failure(route, e) from e
                last = e
                continue
            route.breaker.succeeded()
            _count(result.generations[0].message if result.generations else None)
            return result
        raise _as_failure(self._routes[-1], last) from last


def _tags(
    run_manager: AsyncCallbackManagerForLLMRun | CallbackManagerForLLMRun | None,
) -> list[str]:
    return list(run_manager.tags or []) if run_manager is not None else []


def _log_fallback(primary: Route, fallback: Route, reason: str) -> None:
    ctx = current_run.get()
    log.warning(
        "model provider fallback used",
        extra={
            "provider": primary.name,
            "fallback_provider": fallback.name,
            "reason": reason,
            "agent_id": ctx.agent_id if ctx is not None else "",
            "run_id": ctx.run_id if ctx is not None else "",
        },
    )


def _reason(error: BaseException) -> str:
    """The error's type and HTTP status; not its text, which may quote a prompt."""
    status = getattr(error, "status_code", None)
    return type(error).__name__ + (f" (HTTP {status})" if isinstance(status, int) else "")


def _count(message: BaseMessage | None) -> None:
    """Add a reply's (or a streamed chunk's) token usage to the run's."""
    ctx = current_run.get()
    usage = getattr(message, "usage_metadata", None)
    if ctx is not None and usage:
        ctx.count_usage(usage)


def _as_failure(route: Route, error: BaseException | None) -> BaseException:
    if isinstance(error, RunFailure):
        return error
    detail = f"{type(error).__name__}: {error}" if error is not None else "no provider answered"
    return ProviderFailed(f"model provider {route.name} failed: {detail}"[:1000])
