"""Adapter: chat models on OpenAI-compatible servers (OpenAI, vLLM, Ollama, LM Studio, ...).

Built on langchain-openai's `ChatOpenAI` (streaming, tool calls, usage). The
OpenAI SDK underneath retries connection errors, 408/409/429 and 5xx with
exponential backoff (`provider_retries`). For servers other than OpenAI the
token limit is sent as `max_tokens`, which they understand, rather than
OpenAI's newer `max_completion_tokens`. A `response_format` (OpenAI's wire form)
is sent as is in the request body: langchain-openai would otherwise switch to the
SDK's `parse` helpers, which refuse tools that are not strict.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
from langchain_core.language_models import LanguageModelInput
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from agent_executor.domain.services_config import ProviderConfig

PASS_THROUGH_METADATA = ("organization", "default_headers", "default_query")


class CompatibleChatOpenAI(ChatOpenAI):
    """`ChatOpenAI` sending `max_tokens` to older servers and `response_format` unparsed."""

    legacy_max_tokens: bool = False

    def _get_request_payload(
        self, input_: LanguageModelInput, *, stop: list[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        payload: dict[str, Any] = super()._get_request_payload(input_, stop=stop, **kwargs)
        if self.legacy_max_tokens and "max_completion_tokens" in payload:
            payload["max_tokens"] = payload.pop("max_completion_tokens")
        if "response_format" in payload:
            extra = dict(payload.get("extra_body") or {})
            extra["response_format"] = payload.pop("response_format")
            payload["extra_body"] = extra
        return payload


def openai_model(config: ProviderConfig, *, timeout: float, retries: int) -> ChatOpenAI:
    """A chat model for an OpenAI-compatible provider."""
    extra = {k: config.metadata[k] for k in PASS_THROUGH_METADATA if k in config.metadata}
    return CompatibleChatOpenAI(
        model=config.model,
        # Local servers need no key; the SDK insists on one.
        api_key=SecretStr(config.api_key or "not-needed"),
        base_url=config.base_url,
        timeout=timeout,
        max_retries=retries,
        stream_usage=True,
        legacy_max_tokens=config.type != "openai",
        **extra,
    )


def is_transient(error: BaseException) -> bool:
    """Whether another provider might answer: outages, limits and refused keys, not bad requests."""
    if isinstance(error, openai.BadRequestError | openai.UnprocessableEntityError):
        return False
    if isinstance(error, openai.APIStatusError):
        return error.status_code in {401, 403, 404, 408, 409, 429} or error.status_code >= 500
    return isinstance(error, openai.APIError | httpx.HTTPError | OSError | TimeoutError)
