"""The gateway's settings (env prefix `AGENTRT_GATEWAY_`, shared keys `AGENTRT_*`).

The runtime token HTTP clients send is read from `AGENTRT_RUNTIME_TOKEN`, or from
`RUNTIME_TOKEN` as old deployments set it.
"""

from __future__ import annotations

import hashlib

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from agentrt_kit.settings import ServiceSettings


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

    def runtime_token_sha256(self) -> bytes | None:
        """Digest of the runtime token: the gateway keeps only this, never the token."""
        if self.runtime_token is None:
            return None
        return hashlib.sha256(self.runtime_token.get_secret_value().encode()).digest()
