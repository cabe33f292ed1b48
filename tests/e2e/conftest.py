"""Fixtures for end-to-end tests: services as real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentrt_testkit.ports import free_port
from agentrt_testkit.processes import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def registry_process(
    nats_server: Any, nats_prefix: str, tmp_path: Path
) -> Iterator[ServiceProcess]:
    """The registry as a process on SQLite, with a service token, on a free port."""
    port = free_port()
    process = ServiceProcess(
        "agent_registry",
        {
            "AGENTRT_NATS_URL": nats_server.url,
            "AGENTRT_NATS_PREFIX": nats_prefix,
            "AGENTRT_SERVICE_TOKEN": "e2e-token",
            "AGENTRT_REGISTRY_PORT": str(port),
            "AGENTRT_REGISTRY_SQLITE_PATH": str(tmp_path / "registry.sqlite3"),
        },
        port,
    )
    process.start()
    try:
        yield process
    finally:
        process.kill()
