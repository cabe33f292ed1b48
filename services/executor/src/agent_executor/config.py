"""The executor's settings (env prefix `AGENTRT_EXECUTOR_`, shared keys `AGENTRT_*`).

The services configuration old deployments carry is read from
`SERVICES_CONFIG_FILE` (a JSON file) or `SERVICES_CONFIG` (JSON text), as the
old runtime did; `AGENTRT_EXECUTOR_SERVICES_CONFIG_FILE` / `..._SERVICES_CONFIG`
work too. List settings take JSON (`["a", "b"]`) or comma-separated text.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from agent_executor.adapters.webhooks import signing_key
from agent_executor.domain.limits import RunLimits
from agent_executor.domain.services_config import (
    DEFAULT,
    ConfigProblem,
    ServicesConfig,
    parse_services_config,
)
from agentrt_kit.nats import StreamLimits
from agentrt_kit.settings import ConfigError, ServiceSettings
from agentrt_kit.urls import parse_networks

StrList = Annotated[list[str], NoDecode]
QueueBackend = Literal["nats", "redis", "rabbitmq"]
BusBackend = Literal["nats", "redis"]
SCHEMES = {"redis": ("redis", "rediss", "unix"), "rabbitmq": ("amqp", "amqps")}
CATALOG_TTL_INTERVALS = 3  # a catalogue entry outlives two missed publications
DEFAULT_URLS = {
    "redis": "redis://127.0.0.1:6379/0",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
}


def _default_executor_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(ServiceSettings):
    """Everything the executor can be configured with."""

    model_config = SettingsConfigDict(
        **{**ServiceSettings.model_config, "env_prefix": "AGENTRT_EXECUTOR_"}
    )

    host: str = Field("127.0.0.1", description="Interface the gRPC server binds.")
    port: int = Field(50052, ge=0, le=65535, description="gRPC port (0 picks a free one).")
    executor_id: str = Field(
        default_factory=_default_executor_id, description="This replica's name in run records."
    )
    registry_target: str = Field("127.0.0.1:50051", description="Agent registry gRPC address.")
    tools_target: str = Field("127.0.0.1:50053", description="Tools service gRPC address.")
    database_url: SecretStr = Field(
        SecretStr("sqlite:///var/executor.sqlite3"),
        description="Run records: sqlite:///path or a postgresql:// DSN.",
    )
    sessions_url: SecretStr = Field(
        SecretStr("sqlite:///var/executor-sessions.sqlite3"),
        description="Server-side memory (LangGraph checkpointer): sqlite:///path or postgresql://.",
    )
    session_checkpoints_kept: int = Field(
        3,
        ge=1,
        description="Newest checkpoints a session keeps once a run of it ends (each holds the "
        "conversation so far; the next turn reads the newest only). 3: a plain turn's.",
    )
    postgres_schema: str = Field("public", description="PostgreSQL schema for both.")
    services_config_file: Path | None = Field(
        None,
        validation_alias=AliasChoices(
            "AGENTRT_EXECUTOR_SERVICES_CONFIG_FILE", "SERVICES_CONFIG_FILE"
        ),
        description="The services configuration (JSON file): providers, toolsets.",
    )
    services_config: str | None = Field(
        None,
        validation_alias=AliasChoices("AGENTRT_EXECUTOR_SERVICES_CONFIG", "SERVICES_CONFIG"),
        description="The services configuration as JSON text (when no file is given).",
    )
    plugin_dirs: StrList = Field(
        default_factory=list, description="Directories of template plugins (`__agents__`)."
    )
    watch_plugins: bool = Field(True, description="Reload plugins when their files change.")
    worker_threads: int = Field(8, ge=1, description="Threads for database work.")

    run_timeout_seconds: float = Field(300.0, gt=0, description="Longest a run may take.")
    max_steps: int = Field(50, ge=0, description="Most graph steps per run (0: unlimited).")
    max_tool_calls: int = Field(50, ge=0, description="Most tool calls per run (0: unlimited).")
    max_runs_per_agent: int = Field(
        0, ge=0, description="Most live runs of one agent across replicas (0: unlimited)."
    )
    max_message_chars: int = Field(100_000, gt=0, description="Longest input message.")
    max_concurrent_runs: int = Field(
        64, ge=1, description="Most runs this replica runs at once; beyond: RESOURCE_EXHAUSTED."
    )
    lease_seconds: float = Field(
        20.0,
        gt=0,
        description="A run whose executor is silent this long is lost: a foreground run is "
        "ended as EXECUTOR_LOST (its session freed), a queued one taken by another replica.",
    )
    heartbeat_seconds: float = Field(5.0, gt=0, description="How often leases are renewed.")
    wait_poll_seconds: float = Field(
        1.0,
        gt=0,
        description="How soon WaitRun first re-reads a run record (its end event usually "
        "comes first); later re-reads back off to ten times this.",
    )
    max_waits: int = Field(
        256, ge=1, description="WaitRun calls one replica holds open at once (more: retry)."
    )

    provider_timeout_seconds: float = Field(60.0, gt=0, description="Model request timeout.")
    provider_retries: int = Field(2, ge=0, le=10, description="Retries of transient errors.")
    provider_breaker_failures: int = Field(
        5, ge=1, description="Failures in a row that open a provider's circuit."
    )
    provider_breaker_cooldown_seconds: float = Field(
        30.0, gt=0, description="How long an open circuit refuses calls."
    )
    tool_timeout_seconds: float = Field(120.0, gt=0, description="Deadline of a tool call.")
    tools_list_ttl_seconds: float = Field(
        30.0, gt=0, description="How long the tool list is cached."
    )
    run_events_retention_seconds: float = Field(
        86_400.0, gt=0, description="How long run events stay in JetStream."
    )
    run_events_max_bytes: int = Field(
        512 * 1024**2,
        gt=0,
        description="Most bytes of run events JetStream keeps; the oldest go first (on Redis: "
        "most bytes of one run's events).",
    )
    catalog_publish_interval_seconds: float = Field(
        60.0, gt=0, description="How often template descriptors are re-published."
    )
    queue_ack_wait_seconds: float = Field(
        30.0,
        gt=0,
        description="A queued run whose executor neither acknowledges nor extends it this "
        "long is delivered again (to any replica).",
    )
    queue_max_attempts: int = Field(
        5, ge=1, description="Most deliveries of a queued run; the next one dead-letters it."
    )
    queue_checkpoint_runs: bool = Field(
        True,
        description="Checkpoint every step of a queued run (agents without memory too), so "
        "a run whose executor stopped resumes from its last step instead of starting over.",
    )
    queue_sweep_seconds: float = Field(
        600.0,
        gt=0,
        description="A queued run no executor has looked at for this long is put on the "
        "queue again (the broker lost it); a run the broker refused is re-queued at the "
        "next sweep (every 5 s) once the broker is back.",
    )
    queue_backend: QueueBackend = Field(
        "nats",
        validation_alias=AliasChoices("AGENTRT_QUEUE_BACKEND", "AGENTRT_EXECUTOR_QUEUE_BACKEND"),
        description="Broker of the run and webhook queues: nats (JetStream, the default), "
        "redis (Streams; the server must keep what it acknowledged: appendonly yes) or "
        "rabbitmq (quorum queues).",
    )
    queue_url: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("AGENTRT_QUEUE_URL", "AGENTRT_EXECUTOR_QUEUE_URL"),
        description="The queue broker when not NATS: redis://[:password@]host:6379/0 "
        "(rediss:// for TLS) or amqp://user:password@host:5672/vhost (amqps:// for TLS); "
        "unset: the local server's default address.",
    )
    queue_management_url: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices(
            "AGENTRT_QUEUE_MANAGEMENT_URL", "AGENTRT_EXECUTOR_QUEUE_MANAGEMENT_URL"
        ),
        description="RabbitMQ only: its management API (http://user:password@host:15672), "
        "for the depth, oldest-message age and redelivery figures AMQP does not tell.",
    )
    queue_max_length: int = Field(
        0,
        ge=0,
        description="Redis and RabbitMQ: most messages a queue holds; when full, new runs "
        "are refused rather than queued ones dropped (0: no limit). NATS: see "
        "QUEUE_MAX_BYTES.",
    )
    bus_backend: BusBackend = Field(
        "nats",
        validation_alias=AliasChoices("AGENTRT_BUS_BACKEND", "AGENTRT_EXECUTOR_BUS_BACKEND"),
        description="Where run events (resumable streams), cancel requests and run endings "
        "travel: nats or redis. Registry events, the template catalogue and audit stay on "
        "NATS.",
    )
    bus_url: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("AGENTRT_BUS_URL", "AGENTRT_EXECUTOR_BUS_URL"),
        description="The Redis of the event bus (redis://host:6379/0); unset: "
        "AGENTRT_QUEUE_URL when the queue is on Redis too, else the local server.",
    )
    queue_max_age_seconds: float = Field(
        7 * 86_400.0, gt=0, description="A run still queued this long is dropped unprocessed."
    )
    queue_max_bytes: int = Field(
        128 * 1024**2,
        gt=0,
        description="NATS: most bytes of queued runs JetStream keeps (each queue); when full, "
        "new runs are refused.",
    )
    queue_dead_letters_max_age_seconds: float = Field(
        7 * 86_400.0, gt=0, description="NATS: how long dead letters are kept."
    )
    queue_dead_letters_max_bytes: int = Field(
        32 * 1024**2,
        gt=0,
        description="NATS: most bytes of dead letters JetStream keeps (each queue); the oldest "
        "go first.",
    )

    webhook_secret: SecretStr | None = Field(
        None,
        description="Signs run webhooks (Standard Webhooks: whsec_ + base64 of 24-64 random "
        "bytes); unset: StartRun refuses a webhook_url.",
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, description="Longest one webhook attempt may take, DNS to response status."
    )
    webhook_max_attempts: int = Field(
        8, ge=1, description="Attempts per webhook; one still failing after these is dead-lettered."
    )
    webhook_concurrency: int = Field(
        16, ge=1, description="Webhooks this replica delivers at once."
    )
    webhook_allowed_networks: StrList = Field(
        default_factory=list,
        description="CIDRs webhooks may reach although not public (e.g. an internal receiver).",
    )
    webhook_denied_networks: StrList = Field(
        default_factory=list, description="CIDRs webhooks must not reach although public."
    )
    webhook_allow_hosts: StrList = Field(
        default_factory=list, description="When set, the only hosts (or *.domain) webhooks reach."
    )

    @field_validator(
        "plugin_dirs",
        "webhook_allowed_networks",
        "webhook_denied_networks",
        "webhook_allow_hosts",
        mode="before",
    )
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("webhook_allowed_networks", "webhook_denied_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)  # raises ValueError naming the bad item
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            signing_key(value.get_secret_value())  # its ValueError never repeats the secret
        return value

    @model_validator(mode="after")
    def _catalog_outlives_publications(self) -> Settings:
        if self.catalog_ttl_seconds < CATALOG_TTL_INTERVALS * self.catalog_publish_interval_seconds:
            raise ValueError(
                f"AGENTRT_CATALOG_TTL_SECONDS ({self.catalog_ttl_seconds:g}) must be at least "
                f"{CATALOG_TTL_INTERVALS} times AGENTRT_EXECUTOR_CATALOG_PUBLISH_INTERVAL_SECONDS "
                f"({self.catalog_publish_interval_seconds:g}): served templates would expire "
                "between publications"
            )
        return self

    @model_validator(mode="after")
    def _broker_urls(self) -> Settings:
        for backend, url, variable in (
            (self.queue_backend, self.queue_url, "AGENTRT_QUEUE_URL"),
            (self.bus_backend, self.bus_url, "AGENTRT_BUS_URL"),
        ):
            if url is None or backend == "nats":
                continue
            scheme = url.get_secret_value().partition("://")[0].lower()
            if scheme not in SCHEMES[backend]:
                allowed = ", ".join(f"{s}://" for s in SCHEMES[backend])
                # The URL may carry a password: only its scheme is repeated.
                raise ValueError(
                    f"{variable}: a {backend} URL starts with {allowed}, not {scheme!r}"
                )
        return self

    def queue_broker_url(self) -> str:
        """The queue broker's URL (Redis or RabbitMQ; the local default when unset)."""
        if self.queue_url is not None:
            return self.queue_url.get_secret_value()
        return DEFAULT_URLS[self.queue_backend]

    def bus_broker_url(self) -> str:
        """The event bus's Redis URL (the queue's when it is on Redis too)."""
        if self.bus_url is not None:
            return self.bus_url.get_secret_value()
        if self.queue_backend == "redis":
            return self.queue_broker_url()
        return DEFAULT_URLS["redis"]

    def published_limits(self) -> dict[str, float]:
        """The ceilings every run here is held to, by setting name, for the catalogue.

        Template schemas name them (`x-agentrt-ceiling`); a count of 0 (unlimited)
        is no ceiling and is left out.
        """
        limits: dict[str, float] = {
            "run_timeout_seconds": self.run_timeout_seconds,
            "max_message_chars": self.max_message_chars,
        }
        for name in ("max_steps", "max_tool_calls"):
            if value := getattr(self, name):
                limits[name] = value
        return limits

    def run_events_limits(self) -> StreamLimits:
        """The JetStream run event stream's limits."""
        return StreamLimits(self.run_events_retention_seconds, self.run_events_max_bytes)

    def queue_limits(self) -> StreamLimits:
        """The limits of each JetStream queue stream (runs, webhooks)."""
        return StreamLimits(self.queue_max_age_seconds, self.queue_max_bytes)

    def dead_letter_limits(self) -> StreamLimits:
        """The limits of each JetStream dead-letter stream."""
        return StreamLimits(
            self.queue_dead_letters_max_age_seconds, self.queue_dead_letters_max_bytes
        )

    def run_limits(self) -> RunLimits:
        """The executor-wide run limits."""
        return RunLimits(
            timeout_seconds=self.run_timeout_seconds,
            max_steps=self.max_steps,
            max_tool_calls=self.max_tool_calls,
            max_concurrent_runs=self.max_runs_per_agent,
            max_message_chars=self.max_message_chars,
        )


def load_services_config(settings: Settings, env: Mapping[str, str]) -> ServicesConfig:
    """The services configuration the settings point at (the offline default without one).

    Raises:
        ConfigError: the file is missing, not JSON, or names an unusable key.
    """
    if settings.services_config_file is not None:
        source = "SERVICES_CONFIG_FILE"
        try:
            text = settings.services_config_file.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(
                f"{source}: cannot read {settings.services_config_file}: {e}"
            ) from None
    elif settings.services_config:
        source, text = "SERVICES_CONFIG", settings.services_config
    else:
        return DEFAULT
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: not JSON: {e}") from None
    try:
        return parse_services_config(doc, env)
    except ConfigProblem as e:
        raise ConfigError(f"{source}: {e}") from None
