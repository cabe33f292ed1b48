"""Fixtures for end-to-end tests: services as real processes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agentrt_testkit.ports import free_port
from agentrt_testkit.processes import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
SERVICE_TOKEN = "e2e-token"


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
            "AGENTRT_SERVICE_TOKEN": SERVICE_TOKEN,
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


# Providers of the executor of `backend`: agents name one with `llm_config_id`.
PROVIDERS = {
    "llm": {
        "providers": {
            "offline": {"type": "offline"},  # echoes at once
            "slow": {"type": "offline", "metadata": {"token_latency_ms": 50}},
            "late": {"type": "offline", "metadata": {"latency_ms": 2000}},  # answers after 2 s
            "later": {"type": "offline", "metadata": {"latency_ms": 8000}},  # after 8 s
        },
        "default_provider": "offline",
    }
}


def _common(nats_url: str, prefix: str) -> dict[str, str]:
    """The environment every service of one system shares."""
    return {
        "AGENTRT_NATS_URL": nats_url,
        "AGENTRT_NATS_PREFIX": prefix,
        "AGENTRT_SERVICE_TOKEN": SERVICE_TOKEN,
    }


@dataclass
class Backend:
    """Registry, tools service and executor as processes, and gateways started in front."""

    nats_url: str
    prefix: str
    tmp: Path
    registry: ServiceProcess
    tools: ServiceProcess
    executor: ServiceProcess
    gateways: list[ServiceProcess] = field(default_factory=list)
    service_token: str = SERVICE_TOKEN  # what the services present to each other

    def gateway(
        self,
        runtime_token: str | None,
        api_keys: list[dict[str, Any]] | None = None,
        **settings: str,
    ) -> ServiceProcess:
        """A `python -m agent_gateway` in front of the services, to `start()` (up at `/readyz` 200).

        `settings`: a lower-case name is an `AGENTRT_GATEWAY_<NAME>` setting; an upper-case
        one is a variable as named (`RUNTIME_TOKEN`, `AGENTRT_SHUTDOWN_GRACE_SECONDS`).
        """
        port = free_port()
        env = {
            **_common(self.nats_url, self.prefix),
            "AGENTRT_GATEWAY_PORT": str(port),
            "AGENTRT_GATEWAY_REGISTRY_TARGET": self.registry.address,
            "AGENTRT_GATEWAY_EXECUTOR_TARGET": self.executor.address,
            "AGENTRT_GATEWAY_API_KEYS": json.dumps(api_keys or []),
        }
        if runtime_token is not None:
            env["AGENTRT_RUNTIME_TOKEN"] = runtime_token
        for name, value in settings.items():
            env[name if name.isupper() else f"AGENTRT_GATEWAY_{name.upper()}"] = value
        process = ServiceProcess(
            "agent_gateway",
            env,
            port,
            http_ready="/readyz",
            log_path=self.tmp / f"gateway-{port}.log",
        )
        self.gateways.append(process)  # stopped with the services
        return process

    @staticmethod
    def start(*processes: ServiceProcess) -> None:
        """Start processes side by side (each waits on its own imports and readiness).

        Raises:
            RuntimeError: one did not come up (with its log's tail).
        """
        with ThreadPoolExecutor(len(processes)) as pool:
            for started in [pool.submit(p.start) for p in processes]:
                started.result()


@pytest.fixture(scope="module")
def backend(nats_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """Registry, tools service and executor processes, shared by one test module.

    Starting them costs seconds, so a module shares them, isolated from other modules by a
    NATS prefix of its own (the `nats_prefix` fixture is per test). Gateways made with
    `Backend.gateway` are stopped with the rest. Logs stay in the module's temporary
    directory.
    """
    tmp = tmp_path_factory.mktemp("system")
    prefix = f"e2e{uuid.uuid4().hex[:10]}"
    common = _common(nats_server.url, prefix)
    ports = {name: free_port() for name in ("registry", "tools", "executor")}
    processes = {
        "registry": ServiceProcess(
            "agent_registry",
            {
                **common,
                "AGENTRT_REGISTRY_PORT": str(ports["registry"]),
                "AGENTRT_REGISTRY_SQLITE_PATH": str(tmp / "registry.sqlite3"),
            },
            ports["registry"],
            log_path=tmp / "registry.log",
        ),
        "tools": ServiceProcess(
            "tool_service",
            {
                **common,
                "AGENTRT_TOOLS_PORT": str(ports["tools"]),
                "AGENTRT_TOOLS_WORKSPACE_ROOT": str(tmp / "workspaces"),
                "AGENTRT_TOOLS_DATABASE_URL": f"sqlite:///{tmp / 'tools.sqlite3'}",
            },
            ports["tools"],
            log_path=tmp / "tools.log",
        ),
    }
    processes["executor"] = ServiceProcess(
        "agent_executor",
        {
            **common,
            "AGENTRT_EXECUTOR_PORT": str(ports["executor"]),
            "AGENTRT_EXECUTOR_REGISTRY_TARGET": processes["registry"].address,
            "AGENTRT_EXECUTOR_TOOLS_TARGET": processes["tools"].address,
            "AGENTRT_EXECUTOR_DATABASE_URL": f"sqlite:///{tmp / 'executor.sqlite3'}",
            "AGENTRT_EXECUTOR_SESSIONS_URL": f"sqlite:///{tmp / 'sessions.sqlite3'}",
            "AGENTRT_EXECUTOR_WATCH_PLUGINS": "false",
            "AGENTRT_EXECUTOR_SERVICES_CONFIG": json.dumps(PROVIDERS),
            "AGENTRT_SHUTDOWN_GRACE_SECONDS": "0.5",
        },
        ports["executor"],
        log_path=tmp / "executor.log",
    )
    system = Backend(
        nats_server.url,
        prefix,
        tmp,
        registry=processes["registry"],
        tools=processes["tools"],
        executor=processes["executor"],
    )
    try:
        Backend.start(*processes.values())
        yield system
    finally:
        for process in [*reversed(system.gateways), *reversed(processes.values())]:
            process.kill()
