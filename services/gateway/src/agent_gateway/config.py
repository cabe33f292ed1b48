"""The gateway's settings (env prefix `AGENTRT_GATEWAY_`, shared keys `AGENTRT_*`).

The runtime token HTTP clients send is read from `AGENTRT_RUNTIME_TOKEN`, or from
`RUNTIME_TOKEN` as old deployments set it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from agent_gateway.domain.auth import ApiKey
from agentrt_kit.settings import ConfigError, ServiceSettings


class Settings(ServiceSettings):
    """Everything the gateway can be configured with."""

    model_config = SettingsConfigDict(
        **{**ServiceSettings.model_config, "env_prefix": "AGENTRT_GATEWAY_"}
    )

    host: str = Field("127.0.0.1", description="Interface the HTTP server binds.")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port (0 picks a free one).")
    registry_target: str = Field("127.0.0.1:50051", description="The agent registry (gRPC).")
    executor_target: str = Field("127.0.0.1:50052", description="The executor (gRPC).")
    runtime_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("AGENTRT_RUNTIME_TOKEN", "RUNTIME_TOKEN"),
        description="Token HTTP clients present (X-Runtime-Token or Bearer); required.",
    )
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest request body accepted (413 beyond)."
    )
    probe_timeout_seconds: float = Field(
        1.0, gt=0, description="Deadline of one readiness check of a dependency."
    )

    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description=(
            "API keys (JSON list of {id, sha256, role, owner?}); "
            "`agentrt-gateway new-key` prints a key and its entry."
        ),
    )
    api_keys_file: Path | None = Field(
        None, description="A JSON file with more API keys, in the same form."
    )
    rate_limit_per_second: float = Field(
        100.0, ge=0, description="Requests a second per key (token bucket; 0 turns it off)."
    )
    rate_limit_burst: int = Field(200, ge=1, description="Bucket size per key.")
    address_rate_limit_per_second: float = Field(
        200.0, ge=0, description="Requests a second per client address (0 turns it off)."
    )
    address_rate_limit_burst: int = Field(400, ge=1, description="Bucket size per address.")
    max_streams_per_key: int = Field(
        32, ge=0, description="Concurrent streamed completions per key (0: no bound)."
    )
    run_timeout_seconds: float = Field(
        300.0, gt=0, description="Deadline of one chat completion or compose request."
    )
    stream_keepalive_seconds: float = Field(
        15.0, gt=0, description="A quiet stream gets an SSE comment line this often."
    )
    max_waits_per_key: int = Field(
        16, ge=0, description="Run joins (`/v1/runs/{id}/wait`) open at once per key (0: no bound)."
    )
    max_messages: int = Field(100, ge=1, description="Messages one chat completion may carry.")
    max_message_chars: int = Field(
        32_000, ge=1, description="Characters one chat message may have."
    )
    max_concurrent_runs: int = Field(
        64, ge=1, description="Concurrent runs advertised by /v1/schema (the executors' capacity)."
    )
    forwarded_allow_ips: str = Field(
        "",
        validation_alias=AliasChoices("AGENTRT_GATEWAY_FORWARDED_ALLOW_IPS", "FORWARDED_ALLOW_IPS"),
        description=(
            "Proxies (comma-separated addresses or CIDRs, `*` for any) whose "
            "X-Forwarded-For/-Proto the gateway believes: the client address then "
            "comes from the header (rate limits, audit). Empty: trust none."
        ),
    )
    audit: bool = Field(
        True, description="Publish an audit record per mutating request and execution."
    )
    drain_margin_seconds: float = Field(
        1.0,
        ge=0,
        description=(
            "On SIGTERM, how long before the shutdown grace ends the gateway answers what "
            "still waits on a run (a completion: 503 naming its run; a stream: an error "
            "chunk naming it; a join: the run as it is). At most half the grace."
        ),
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys_from_json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str | bytes) else value

    def all_api_keys(self) -> list[ApiKey]:
        """The keys given inline and in `api_keys_file`."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            try:
                loaded = json.loads(self.api_keys_file.read_text())
                keys.extend(ApiKey(**entry) for entry in loaded)
            except (OSError, ValueError, TypeError) as e:
                raise ConfigError(f"AGENTRT_GATEWAY_API_KEYS_FILE: {e}") from None
        return keys

    def drain_delay(self) -> float:
        """Seconds from SIGTERM until what still waits on a run is answered (see above)."""
        grace = self.shutdown_grace_seconds
        return max(0.0, grace - min(self.drain_margin_seconds, grace / 2))

    def runtime_token_sha256(self) -> bytes | None:
        """Digest of the runtime token: the gateway keeps only this, never the token."""
        if self.runtime_token is None:
            return None
        return hashlib.sha256(self.runtime_token.get_secret_value().encode()).digest()
