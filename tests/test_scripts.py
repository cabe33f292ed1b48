"""The developer scripts: what `make demo` prints pastes into bash, and `make run` gives
the executor a plugin folder it watches, backs off restarting a crashing service and names
what holds the ports it needs (tests/test_dev_stack.py runs it as a process)."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from agent_executor.config import Settings as ExecutorSettings

ROOT = Path(__file__).resolve().parents[1]


def script(name: str) -> ModuleType:
    """Import scripts/<name>.py (its `main()` does not run)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def pasted(line: str, cwd: Path) -> list[str]:
    """The arguments curl gets when `line` is pasted into bash in `cwd`."""
    recorder = "curl() { printf '%s\\0' \"$@\"; }\n"  # stands in for curl, prints its argv
    out = subprocess.run(
        ["bash", "-c", recorder + line], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout
    return out.split("\0")[:-1]


def test_a_printed_demo_curl_line_reads_the_token_from_its_file_when_pasted(
    tmp_path: Path,
) -> None:
    demo = script("demo")
    token = secrets.token_urlsafe(32)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "runtime-token").write_text(token + "\n")
    body = json.dumps(
        {"name": 'It\'s $HOME, `date` and "quotes"', "messages": [{"role": "user", "content": "!"}]}
    )
    args = [
        "-H",
        f"X-Runtime-Token: {token}",
        "-H",
        f"Authorization: Bearer {token}",
        "-H",
        "Content-Type: application/json",
        "-X",
        "POST",
        "http://127.0.0.1:8080/v1/agents?a=1&b=2",
        "-d",
        body,
    ]

    line = demo.pasteable(["curl", *args], token)

    assert token not in line
    assert '"X-Runtime-Token: $(cat var/runtime-token)"' in line
    assert pasted(line, tmp_path) == args


def test_make_run_creates_the_plugin_folder_and_always_points_the_executor_at_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = script("dev")
    plugins = tmp_path / "plugins"

    def executor_reads(configured: str | None) -> list[str]:
        monkeypatch.setenv("AGENTRT_EXECUTOR_PLUGIN_DIRS", dev.plugin_dirs(tmp_path, configured))
        return ExecutorSettings().plugin_dirs

    assert executor_reads(None) == [str(plugins)]
    assert plugins.is_dir()
    assert list(plugins.iterdir()) == []
    assert executor_reads("/opt/a, /opt/b") == [str(plugins), "/opt/a", "/opt/b"]
    assert executor_reads(json.dumps(["/opt/c", str(plugins)])) == [str(plugins), "/opt/c"]


def test_make_run_backs_off_restarts_doubling_to_a_cap_and_forgets_after_a_long_run() -> None:
    restart = script("dev").Backoff(first=0.5, cap=10.0, reset_after=30.0)
    delays, delay = [], None
    for _ in range(7):
        delay = restart.next(delay, uptime=1.0)
        delays.append(delay)

    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert restart.next(10.0, uptime=30.0) == 0.5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_make_run_names_the_process_listening_on_a_port_it_needs(tmp_path: Path) -> None:
    dev = script("dev")
    (tmp_path / "nats.pid").write_text(f"{os.getpid()}\n")  # alive, but no nats-server
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]

        found = dev.conflicts({"gateway": port}, tmp_path / "nats.pid")

    assert len(found) == 1
    assert found[0].startswith(f"port {port} (gateway) is in use by pid {os.getpid()} (")
    assert dev.conflicts({"gateway": port}, tmp_path / "nats.pid") == []


def test_make_run_puts_the_queue_on_the_chosen_broker_and_names_one_that_is_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dev = script("dev")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        up = listener.getsockname()[1]
        monkeypatch.setenv("QUEUE", "redis")
        monkeypatch.setenv("BUS", "redis")
        env = {"AGENTRT_QUEUE_URL": f"redis://127.0.0.1:{up}/3"}
        assert dev.choose_brokers(env) is None
        assert (env["AGENTRT_QUEUE_BACKEND"], env["AGENTRT_BUS_BACKEND"]) == ("redis", "redis")

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        down = closed.getsockname()[1]
    monkeypatch.setenv("QUEUE", "rabbitmq")
    monkeypatch.delenv("BUS")
    problem = dev.choose_brokers({"AGENTRT_QUEUE_URL": f"amqp://g:g@127.0.0.1:{down}/"})
    assert problem is not None
    assert f"RabbitMQ is not answering at 127.0.0.1:{down}" in problem
    assert "service rabbitmq-server start" in problem

    monkeypatch.setenv("QUEUE", "kafka")
    assert "QUEUE must be nats, redis or rabbitmq" in (dev.choose_brokers({}) or "")
    monkeypatch.delenv("QUEUE")
    env = {}
    assert dev.choose_brokers(env) is None
    assert (env["AGENTRT_QUEUE_BACKEND"], env["AGENTRT_BUS_BACKEND"]) == ("nats", "nats")
