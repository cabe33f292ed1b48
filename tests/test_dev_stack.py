"""`make run` as a user runs it: scripts/dev.py as a process with its children, on free
ports in a temporary root. It restarts a crashed service, stops everything on SIGHUP,
leaves no orphans when killed, and refuses to start over a running stack."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentrt_testkit.ports import free_port
from agentrt_testkit.processes import grpc_serving, http_ok

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "scripts" / "dev.py"
UP = 90.0  # seconds for the stack to come up (five processes, on a loaded machine)
BACK = 45.0  # for a killed service to serve again (backoff, start, the gateway's probe)
GONE = 30.0  # for every process to be gone after a stop signal or dev.py's death

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def marked(marker: bytes) -> list[int]:
    """Every live process whose environment holds `marker` (dev.py and its children)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


@dataclass
class Stack:
    """One dev.py process, its output file and the ports it was given."""

    proc: subprocess.Popen[bytes]
    out: Path
    env: dict[str, str]
    ports: dict[str, int]

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def pids(self, name: str) -> list[int]:
        """The pids dev.py reported for `name`, oldest first."""
        return [int(p) for p in re.findall(rf"^{name} started \(pid (\d+)\)", self.output(), re.M)]

    def children(self) -> list[int]:
        return [int(p) for p in re.findall(r"^\S+ started \(pid (\d+)\)", self.output(), re.M)]

    def ready(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.ports['GATEWAY']}/readyz")

    def wait_up(self) -> None:
        eventually(
            lambda: "Agent Runtime is up" in self.output() or self.proc.poll() is not None,
            UP,
            "dev.py reports the stack up",
        )
        assert self.proc.poll() is None, self.output()[-3000:]
        assert http_ok(f"http://127.0.0.1:{self.ports['GATEWAY']}/healthz")
        assert all(self.pids(name) for name in ("nats", "agent-registry", "tools", "gateway"))


@contextmanager
def dev_stack(root: Path) -> Iterator[Stack]:
    """dev.py on free ports with `root` as its ./var and ./plugins parent; every process
    it started is killed on the way out, whatever the test did."""
    ports = {name: free_port() for name in ("REGISTRY", "TOOLS", "EXECUTOR", "GATEWAY")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRT_")}
    env.pop("RUNTIME_TOKEN", None)
    env["AGENTRT_DEV_ROOT"] = str(root)
    env.update({f"AGENTRT_{name}_PORT": str(port) for name, port in ports.items()})
    out = root / "dev.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, str(DEV)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Stack(proc, out, env, ports)
    finally:
        marker = f"AGENTRT_DEV_ROOT={root}".encode()
        for pid in {proc.pid, *marked(marker)}:
            for kill in (os.killpg, os.kill):  # its group (each child leads one), then it
                with suppress(OSError):
                    kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_make_run_restarts_a_killed_service_and_stops_everything_on_sighup(
    tmp_path: Path,
) -> None:
    with dev_stack(tmp_path) as stack:
        stack.wait_up()
        [executor] = stack.pids("executor")

        os.kill(executor, signal.SIGKILL)

        eventually(lambda: len(stack.pids("executor")) == 2, BACK, "a new executor started")
        assert "executor exited (code -9); restarting in 0.5 s" in stack.output()
        eventually(stack.ready, BACK, "the gateway ready again")
        assert grpc_serving(f"127.0.0.1:{stack.ports['EXECUTOR']}")
        assert not alive(executor)
        children = stack.children()
        assert all(alive(pid) for pid in children if pid != executor)  # the rest kept running

        stack.proc.send_signal(signal.SIGHUP)

        assert stack.proc.wait(timeout=GONE) == 0
        assert not [pid for pid in children if alive(pid)]
        assert not [port for port in stack.ports.values() if accepts(port)]
        assert not (tmp_path / "var" / "nats.pid").exists()


def test_make_run_refuses_to_start_over_a_running_stack_and_leaves_no_orphans_when_killed(
    tmp_path: Path,
) -> None:
    with dev_stack(tmp_path) as stack:
        stack.wait_up()
        [nats] = stack.pids("nats")
        [registry] = stack.pids("agent-registry")

        second = subprocess.run(
            [sys.executable, str(DEV)],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

        assert second.returncode == 1
        port = stack.ports["REGISTRY"]
        assert f"port {port} (agent-registry) is in use by pid {registry} " in second.stderr
        assert f"the NATS store {tmp_path / 'var' / 'nats'} is in use by pid {nats} " in (
            second.stderr
        )
        assert "started" not in second.stdout
        assert "is up" not in second.stdout
        assert stack.ready()  # the first stack did not notice

        children = stack.children()
        stack.proc.kill()  # SIGKILL: dev.py gets no chance to stop anything
        stack.proc.wait(timeout=10)

        eventually(lambda: not any(alive(pid) for pid in children), GONE, "no orphans left")
        assert not [port for port in stack.ports.values() if accepts(port)]
