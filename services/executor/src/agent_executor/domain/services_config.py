"""Domain: the services configuration old deployments carry (`SERVICES_CONFIG[_FILE]`).

Shape (COMPAT): `llm.providers{<id>: {type, model, api_key?, base_url?, temperature,
max_tokens, metadata}}`, `llm.default_provider`, `llm.fallback_provider`,
`toolsets.mcp{<name>: {...}}`, `toolsets.custom: "all" | [tool names]`.
`${VAR}` and `${VAR:-default}` placeholders in strings are expanded from the
environment (the old runtime left them as they were). Without a configuration
the executor serves one provider, the deterministic offline model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

OFFLINE = "offline"
OPENAI_COMPATIBLE = "openai"
# Provider types the OpenAI-compatible adapter serves, with their default base URL
# and the environment variable their key is read from when the config has none.
OPENAI_FAMILY: dict[str, tuple[str | None, str | None]] = {
    "openai": (None, "OPENAI_API_KEY"),
    "openai-compatible": (None, "OPENAI_API_KEY"),
    "azure-openai": (None, "OPENAI_API_KEY"),
    "deepseek": ("https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
    "google": ("https://generativelanguage.googleapis.com/v1beta/openai/", "GOOGLE_API_KEY"),
    "gemini": ("https://generativelanguage.googleapis.com/v1beta/openai/", "GOOGLE_API_KEY"),
    "vllm": (None, None),
    "ollama": ("http://127.0.0.1:11434/v1", None),
    "lmstudio": ("http://127.0.0.1:1234/v1", None),
    "llamacpp": ("http://127.0.0.1:8080/v1", None),
}
PROVIDER_TYPES = frozenset({OFFLINE, *OPENAI_FAMILY})


class ConfigProblem(ValueError):
    """The services configuration is unusable; `path` names the key."""

    def __init__(self, path: str, description: str) -> None:
        super().__init__(f"{path}: {description}")
        self.path = path
        self.description = description


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One model provider."""

    id: str
    type: str
    model: str
    api_key: str | None = None
    base_url: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        """`offline` or `openai` (every OpenAI-compatible type)."""
        return OFFLINE if self.type == OFFLINE else OPENAI_COMPATIBLE

    def __repr__(self) -> str:  # never print the key
        return f"ProviderConfig(id={self.id!r}, type={self.type!r}, model={self.model!r})"


@dataclass(frozen=True, slots=True)
class ServicesConfig:
    """The parsed services configuration."""

    providers: Mapping[str, ProviderConfig]
    default_provider: str
    fallback_provider: str | None = None
    custom_tools: tuple[str, ...] | None = None  # None: "all"
    mcp_toolsets: frozenset[str] = frozenset()
    unset_variables: tuple[str, ...] = ()  # paths whose ${VAR} was not set

    def provider(self, provider_id: str) -> ProviderConfig | None:
        """The provider called `provider_id` ('' means the default)."""
        return self.providers.get(provider_id or self.default_provider)


DEFAULT = ServicesConfig(
    providers={OFFLINE: ProviderConfig(id=OFFLINE, type=OFFLINE, model="offline-echo")},
    default_provider=OFFLINE,
)


def expand(value: Any, env: Mapping[str, str], path: str, unset: list[str]) -> Any:
    """`value` with `${VAR}` / `${VAR:-default}` expanded in every string it holds."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is None:
                unset.append(f"{path} (${{{name}}})")
                return ""
            return default

        return PLACEHOLDER.sub(sub, value)
    if isinstance(value, Mapping):
        return {k: expand(v, env, f"{path}.{k}", unset) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, env, f"{path}[{i}]", unset) for i, v in enumerate(value)]
    return value


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigProblem(path, "must be an object")
    return value


def _number(value: Any, path: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigProblem(path, "must be a number")
    if not low <= value <= high:
        raise ConfigProblem(path, f"must be between {low:g} and {high:g}")
    return float(value)


def _provider(provider_id: str, raw: Any, env: Mapping[str, str]) -> ProviderConfig:
    path = f"llm.providers.{provider_id}"
    doc = _object(raw, path)
    kind = doc.get("type")
    if kind not in PROVIDER_TYPES:
        raise ConfigProblem(f"{path}.type", f"must be one of {', '.join(sorted(PROVIDER_TYPES))}")
    model = doc.get("model") or ("offline-echo" if kind == OFFLINE else "")
    if not isinstance(model, str) or not model:
        raise ConfigProblem(f"{path}.model", "is required")
    base_url, key_env = OPENAI_FAMILY.get(kind, (None, None))
    api_key = doc.get("api_key") or (env.get(key_env) if key_env else None) or None
    base = doc.get("base_url") or base_url
    if base is not None and not (
        isinstance(base, str) and base.startswith(("http://", "https://"))
    ):
        raise ConfigProblem(f"{path}.base_url", "must be an http(s) URL")
    if kind == "vllm" and not base:
        raise ConfigProblem(f"{path}.base_url", "is required for vllm")
    max_tokens = _number(doc.get("max_tokens"), f"{path}.max_tokens", 1, 10_000_000)
    return ProviderConfig(
        id=provider_id,
        type=kind,
        model=model,
        api_key=str(api_key) if api_key else None,
        base_url=base,
        temperature=_number(doc.get("temperature"), f"{path}.temperature", 0, 2),
        max_tokens=int(max_tokens) if max_tokens is not None else None,
        metadata=_object(doc.get("metadata"), f"{path}.metadata"),
    )


def parse_services_config(raw: Mapping[str, Any], env: Mapping[str, str]) -> ServicesConfig:
    """Parse a services configuration document.

    Raises:
        ConfigProblem: naming the first unusable key.
    """
    unset: list[str] = []
    doc = expand(_object(raw, "$"), env, "$", unset)
    llm = _object(doc.get("llm"), "llm")
    providers_doc = _object(llm.get("providers"), "llm.providers")
    providers = {pid: _provider(pid, p, env) for pid, p in providers_doc.items()}
    if not providers:
        providers = dict(DEFAULT.providers)
    default = llm.get("default_provider") or next(iter(providers))
    if default not in providers:
        raise ConfigProblem("llm.default_provider", f"names no provider: {default!r}")
    fallback = llm.get("fallback_provider") or None
    if fallback is not None and fallback not in providers:
        raise ConfigProblem("llm.fallback_provider", f"names no provider: {fallback!r}")
    toolsets = _object(doc.get("toolsets"), "toolsets")
    custom = toolsets.get("custom", "all")
    if custom == "all" or custom is None:
        custom_tools = None
    elif isinstance(custom, list) and all(isinstance(t, str) for t in custom):
        custom_tools = tuple(custom)
    else:
        raise ConfigProblem("toolsets.custom", 'must be "all" or a list of tool names')
    mcp = _object(toolsets.get("mcp"), "toolsets.mcp")
    return ServicesConfig(
        providers=providers,
        default_provider=default,
        fallback_provider=fallback if fallback != default else None,
        custom_tools=custom_tools,
        mcp_toolsets=frozenset(mcp),
        unset_variables=tuple(p.removeprefix("$.") for p in unset),
    )
