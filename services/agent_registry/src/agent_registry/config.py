"""The registry's settings (env prefix `AGENTRT_REGISTRY_`, shared keys `AGENTRT_*`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from agentrt_kit.nats import StreamLimits
from agentrt_kit.settings import ServiceSettings


class Settings(ServiceSettings):
    """Everything the registry can be configured with."""

    model_config = SettingsConfigDict(
        **{**ServiceSettings.model_config, "env_prefix": "AGENTRT_REGISTRY_"}
    )

    role: Literal["all", "api", "worker"] = Field(
        "all",
        description="all: API and background work; api: the gRPC API only (lists still "
        "read their writes); worker: projection follower and relay only (gRPC health only).",
    )
    host: str = Field("127.0.0.1", description="Interface the gRPC server binds.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 picks a free one).")
    persistence: Literal["sqlite", "postgres"] = Field(
        "sqlite", description="Event store and read model: an SQLite file or PostgreSQL."
    )
    sqlite_path: Path = Field(Path("var/registry.sqlite3"), description="SQLite database file.")
    postgres_dsn: SecretStr | None = Field(
        None,
        validate_default=True,
        description="PostgreSQL DSN, e.g. postgresql://user:pw@host:5432/db.",
    )
    postgres_schema: str = Field("public", description="PostgreSQL schema for all tables.")
    postgres_pool_size: int = Field(5, ge=1, description="Pooled PostgreSQL connections.")
    postgres_max_overflow: int = Field(10, ge=0, description="Extra connections under load.")
    snapshot_interval: int = Field(
        100, ge=2, description="Snapshot an agent every N events (keeps loads fast)."
    )
    aggregate_cache_size: int = Field(
        10_000, ge=0, description="Agents cached in memory (fast-forwarded on read); 0 = off."
    )
    worker_threads: int = Field(8, ge=1, description="Threads for blocking store calls.")
    relay_enabled: bool = Field(True, description="Publish stored events to JetStream.")
    relay_batch_size: int = Field(256, ge=1, le=10_000, description="Events per relay batch.")
    listing_batch_size: int = Field(
        500, ge=1, le=10_000, description="Notifications per projection transaction."
    )
    stream_max_age_days: float = Field(
        30.0, gt=0, description="How long the registry event stream keeps events."
    )
    stream_max_bytes: int = Field(
        256 * 1024**2,
        gt=0,
        description="Most bytes of events the registry event stream keeps; the oldest go first.",
    )

    def stream_limits(self) -> StreamLimits:
        """The registry event stream's limits."""
        return StreamLimits(self.stream_max_age_days * 86_400, self.stream_max_bytes)

    # A field validator, not a model validator: the error is then located at
    # postgres_dsn, so load_settings names AGENTRT_REGISTRY_POSTGRES_DSN as the bad key.
    @field_validator("postgres_dsn")
    @classmethod
    def _postgres_needs_dsn(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None and info.data.get("persistence") == "postgres":
            raise ValueError("is required when AGENTRT_REGISTRY_PERSISTENCE=postgres")
        return value
