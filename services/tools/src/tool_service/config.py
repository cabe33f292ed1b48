"""The tools service's settings (env prefix `AGENTRT_TOOLS_`, shared keys `AGENTRT_*`).

List settings take JSON (`["a", "b"]`) or comma-separated text (`a,b`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from agentrt_kit.settings import ServiceSettings
from agentrt_kit.urls import parse_networks

StrList = Annotated[list[str], NoDecode]


class Settings(ServiceSettings):
    """Everything the tools service can be configured with."""

    model_config = SettingsConfigDict(
        **{**ServiceSettings.model_config, "env_prefix": "AGENTRT_TOOLS_"}
    )

    host: str = Field("127.0.0.1", description="Interface the gRPC server binds.")
    port: int = Field(50053, ge=0, le=65535, description="gRPC port (0 picks a free one).")
    workspace_root: Path = Field(Path("var/workspaces"), description="Where workspaces live.")
    use_openat2: bool | None = Field(
        None, description="Confine paths with openat2 (None: when the kernel allows it)."
    )
    database_url: SecretStr = Field(
        SecretStr("sqlite:///var/tools.sqlite3"),
        description="Idempotency ledger: sqlite:///path or a postgresql:// DSN.",
    )
    postgres_schema: str = Field("public", description="PostgreSQL schema for the ledger.")
    ledger_retention_days: float = Field(7.0, gt=0, description="How long ledger entries stay.")
    in_flight_timeout_seconds: float = Field(
        300.0, gt=0, description="After this, an unfinished invocation's outcome is unknown."
    )
    plugin_dirs: StrList = Field(default_factory=list, description="Plugin directories.")
    worker_threads: int = Field(16, ge=1, description="Threads for file and database work.")
    audit_enabled: bool = Field(True, description="Publish an audit record per invocation.")

    max_read_bytes: int = Field(10 * 1024 * 1024, gt=0, description="Largest file read.")
    max_write_bytes: int = Field(1024 * 1024, gt=0, description="Largest file written.")
    max_lines: int = Field(2_000, gt=0, description="Most lines read_lines returns.")
    max_matches: int = Field(500, gt=0, description="Most matches grep_file returns.")
    max_pattern_chars: int = Field(1_000, gt=0, description="Longest grep pattern.")
    max_list_entries: int = Field(1_000, gt=0, description="Most entries list_files returns.")
    max_content_chars: int = Field(200_000, gt=0, description="Most text a result carries.")

    fetch_allowed_networks: StrList = Field(
        default_factory=list,
        description="CIDRs fetch_url may reach although not public (e.g. an internal proxy).",
    )
    fetch_denied_networks: StrList = Field(
        default_factory=list, description="CIDRs fetch_url must not reach although public."
    )
    fetch_allow_hosts: StrList = Field(
        default_factory=list, description="When set, the only hosts (or *.domain) fetched."
    )
    fetch_deny_hosts: StrList = Field(default_factory=list, description="Hosts never fetched.")
    fetch_max_redirects: int = Field(5, ge=0, le=10, description="Redirect hops followed.")
    fetch_connect_timeout: float = Field(5.0, gt=0, description="Seconds to connect.")
    fetch_read_timeout: float = Field(10.0, gt=0, description="Seconds of silence allowed.")
    fetch_total_timeout: float = Field(30.0, gt=0, description="Seconds for the whole fetch.")
    fetch_max_bytes: int = Field(5 * 1024 * 1024, gt=0, description="Largest response read.")
    fetch_retries: int = Field(2, ge=0, le=5, description="Retries of transient failures.")
    fetch_breaker_failures: int = Field(5, ge=1, description="Failures that open a circuit.")
    fetch_breaker_cooldown: float = Field(30.0, gt=0, description="Seconds a circuit stays open.")
    fetch_verify_tls: bool = Field(True, description="Verify TLS certificates.")
    fetch_save_other_types: bool = Field(
        False, description="Save responses that are not text as they came (else refuse them)."
    )

    sandbox_enabled: bool = Field(
        True, description="Offer run_code and RunAgentCode where a sandbox can be built."
    )
    sandbox_bwrap: str = Field("bwrap", description="The bubblewrap executable.")
    sandbox_python: str = Field(
        "/usr/bin/python3",
        description="The Python the sandbox runs (its standard library only); '' for none.",
    )
    sandbox_node: str = Field(
        "node", description="The Node.js the sandbox runs (built-in modules only); '' for none."
    )
    sandbox_max_concurrent: int = Field(
        16, ge=1, le=1024, description="Programs running at once; more wait for a slot."
    )
    sandbox_uid_base: int = Field(
        200_000,
        ge=1000,
        description="Slot n runs as uid base+n (when the service runs as root).",
    )
    sandbox_cgroups: str = Field(
        "auto",
        pattern="^(auto|v2|v1|off)$",
        description="Control groups for memory and pids: auto, v2, v1 or off.",
    )
    sandbox_pids: int = Field(64, ge=1, le=4096, description="Processes a program may run.")
    sandbox_open_files: int = Field(256, ge=16, le=65536, description="Open files per process.")
    sandbox_file_size_mb: int = Field(16, ge=1, description="Largest file a program writes.")
    sandbox_output_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Output (stdout+stderr) after which it is killed."
    )
    sandbox_captured_bytes: int = Field(
        64 * 1024, ge=1024, description="Bytes of stdout and of stderr kept in a result."
    )
    sandbox_scratch_mb: int = Field(64, ge=1, description="Size of /tmp and of the home tmpfs.")
    sandbox_output_dir_mb: int = Field(16, ge=1, description="Size of the /output tmpfs.")
    unsafe_unsandboxed_code: bool = Field(
        False,
        description=(
            "DEVELOPMENT ONLY, NEVER IN PRODUCTION: run code with NO isolation (rlimits only) "
            "where no sandbox can be built."
        ),
    )

    @field_validator(
        "plugin_dirs",
        "fetch_allowed_networks",
        "fetch_denied_networks",
        "fetch_allow_hosts",
        "fetch_deny_hosts",
        mode="before",
    )
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("fetch_allowed_networks", "fetch_denied_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)  # raises ValueError naming the bad item
        return value
