"""Fixtures for the tools service's tests: the real service over gRPC, on SQLite or
PostgreSQL, with real NATS, in each confinement mode (openat2 and the O_NOFOLLOW walk)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tools_support import Canary, ToolsService

from agentrt.tools.v1 import tools_pb2_grpc as pb_grpc
from agentrt_testkit.postgres import PostgresDatabase
from tool_service.adapters.workspace_fs import openat2_available
from tool_service.config import Settings

MODES = ["openat2", "walk"] if openat2_available() else ["walk"]


@pytest.fixture(params=MODES)
def confinement(request: pytest.FixtureRequest) -> str:
    """How paths are confined: openat2(RESOLVE_BENEATH) or a descriptor walk."""
    return str(request.param)


@pytest.fixture
def workspace_root(tmp_path: Path) -> Path:
    root = tmp_path / "workspaces"
    root.mkdir()
    return root


@pytest.fixture
def make_settings(
    tmp_path: Path, workspace_root: Path, nats_server: Any, nats_prefix: str, confinement: str
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "port": 0,
            "nats_url": nats_server.url,
            "nats_prefix": nats_prefix,
            "service_token": None,
            "workspace_root": workspace_root,
            "database_url": f"sqlite:///{tmp_path / 'tools.sqlite3'}",
            "use_openat2": confinement == "openat2",
            **overrides,
        }
        return Settings(**values)

    return make


@pytest.fixture
def postgres_url(postgres_db: PostgresDatabase, postgres_schema: str) -> tuple[str, str]:
    """A ledger database URL and schema of this test's own."""
    return postgres_db.dsn, postgres_schema


@pytest.fixture
async def tools(make_settings: Callable[..., Settings]) -> AsyncIterator[ToolsService]:
    service = await ToolsService(make_settings()).start()
    try:
        yield service
    finally:
        with contextlib.suppress(Exception):
            await service.stop()


@pytest.fixture
def stub(tools: ToolsService) -> pb_grpc.ToolServiceStub:
    return tools.stub()


@pytest.fixture
def canary() -> Iterator[Canary]:
    listener = Canary()
    try:
        yield listener
    finally:
        listener.close()
