"""Typed settings shared by every service.

Each service defines one `Settings` class deriving from `ServiceSettings`, with
its own env prefix (`AGENTRT_<SERVICE>_`); the keys every service shares are read
from `AGENTRT_*` whatever the service prefix. Build settings once in `main()`
with `load_settings`, which turns a validation failure into one error naming
each bad environment variable.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal, TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentrt_kit.nats import StreamLimits


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the environment variable."""


def shared(default: Any, env: str, description: str, **constraints: Any) -> Any:
    """A field read from the shared `AGENTRT_<NAME>` variable, not the service prefix."""
    return Field(default, validation_alias=env, description=description, **constraints)


class ServiceSettings(BaseSettings):
    """Keys every service shares (env `AGENTRT_*`)."""

    model_config = SettingsConfigDict(
        env_prefix="AGENTRT_",
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
        frozen=True,
    )

    nats_url: str = shared(
        "nats://127.0.0.1:4222", "AGENTRT_NATS_URL", "NATS server URL(s), comma-separated."
    )
    nats_prefix: str = shared(
        "agentrt",
        "AGENTRT_NATS_PREFIX",
        "First token of every subject, stream and bucket name; isolates deployments sharing NATS.",
    )
    service_token: SecretStr | None = shared(
        None,
        "AGENTRT_SERVICE_TOKEN",
        "Token services present to each other (`authorization: Bearer`); when set, "
        "every gRPC call but health and reflection must carry it.",
    )
    log_level: str = shared("INFO", "AGENTRT_LOG_LEVEL", "Root log level.")
    log_format: Literal["json", "text"] = shared(
        "json", "AGENTRT_LOG_FORMAT", "json (one object a line) or text."
    )
    otel_exporter: Literal["none", "console", "otlp"] = shared(
        "none", "AGENTRT_OTEL_EXPORTER", "Where traces go; none keeps OpenTelemetry off."
    )
    otel_endpoint: str | None = shared(
        None, "AGENTRT_OTEL_ENDPOINT", "OTLP gRPC endpoint, e.g. http://collector:4317."
    )
    shutdown_grace_seconds: float = shared(
        10.0, "AGENTRT_SHUTDOWN_GRACE_SECONDS", "How long in-flight calls may finish on SIGTERM."
    )
    shutdown_delay_seconds: float = shared(
        1.0,
        "AGENTRT_SHUTDOWN_DELAY_SECONDS",
        "On SIGTERM, how long a gRPC service still takes new calls while it reports "
        "NOT_SERVING, before it stops taking them and gives those in flight the grace: a "
        "call already on its way (made for a request in flight at its caller) is served.",
        ge=0,
    )
    client_timeout_seconds: float = shared(
        5.0, "AGENTRT_CLIENT_TIMEOUT_SECONDS", "Default deadline of outgoing gRPC calls."
    )
    # Shared because more than one service declares these (the gateway and the tools
    # service the audit stream; every service the catalogue bucket): they must agree.
    audit_max_age_seconds: float = shared(
        90 * 86_400.0,
        "AGENTRT_AUDIT_MAX_AGE_SECONDS",
        "How long the audit stream keeps records.",
        gt=0,
    )
    audit_max_bytes: int = shared(
        1024**3,
        "AGENTRT_AUDIT_MAX_BYTES",
        "Most bytes of audit records the stream keeps; the oldest go first.",
        gt=0,
    )
    catalog_ttl_seconds: float = shared(
        7 * 86_400.0,
        "AGENTRT_CATALOG_TTL_SECONDS",
        "How long a template catalogue entry lives unless written again (executors write "
        "theirs every AGENTRT_EXECUTOR_CATALOG_PUBLISH_INTERVAL_SECONDS).",
        gt=0,
    )
    catalog_max_bytes: int = shared(
        64 * 1024**2,
        "AGENTRT_CATALOG_MAX_BYTES",
        "Most bytes the template catalogue bucket holds; when full, writes are refused.",
        gt=0,
    )

    @field_validator("nats_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value or not value.replace("_", "").replace("-", "").isalnum():
            raise ValueError("must be letters, digits, '-' or '_'")
        return value

    def audit_limits(self) -> StreamLimits:
        """The audit stream's limits."""
        return StreamLimits(self.audit_max_age_seconds, self.audit_max_bytes)

    def catalog_limits(self) -> StreamLimits:
        """The template catalogue bucket's limits."""
        return StreamLimits(self.catalog_ttl_seconds, self.catalog_max_bytes)

    def service_token_sha256(self) -> bytes | None:
        """Digest of the service token: servers keep only this, never the token."""
        if self.service_token is None:
            return None
        return hashlib.sha256(self.service_token.get_secret_value().encode()).digest()


S = TypeVar("S", bound=BaseSettings)


def env_name(settings_cls: type[BaseSettings], field_name: str) -> str:
    """The environment variable that sets `field_name` of `settings_cls`."""
    field = settings_cls.model_fields.get(field_name)
    if field is not None and isinstance(field.validation_alias, str):
        return field.validation_alias
    if field is not None and isinstance(field.validation_alias, AliasChoices):
        first = field.validation_alias.choices[0]
        if isinstance(first, str):
            return first
    prefix = settings_cls.model_config.get("env_prefix", "")
    return f"{prefix}{field_name}".upper()


def load_settings(settings_cls: type[S], **overrides: Any) -> S:
    """Build settings from the environment, failing with every bad key named.

    Raises:
        ConfigError: when a value is missing or invalid.
    """
    try:
        return settings_cls(**overrides)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            if not err["loc"]:  # a check across settings: its message names the variables
                problems.append(err["msg"].removeprefix("Value error, "))
                continue
            loc = str(err["loc"][0])
            name = loc if loc.isupper() else env_name(settings_cls, loc)
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
