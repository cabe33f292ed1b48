"""Services as real processes, for end-to-end tests.

`ServiceProcess` runs `python -m <module>` with the given environment, waits
until its gRPC health service reports SERVING, and stops it with SIGTERM (as an
orchestrator would), returning the exit code. Output goes to a log file that
tests can read when something fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def grpc_serving(address: str, timeout: float = 1.0) -> bool:
    """True when the server at `address` answers the health check with SERVING."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class ServiceProcess:
    """One service process."""

    def __init__(self, module: str, env: Mapping[str, str], grpc_port: int) -> None:
        self.module = module
        self.port = grpc_port
        self.address = f"127.0.0.1:{grpc_port}"
        self.log_path = Path(tempfile.mkstemp(prefix=f"{module}-", suffix=".log")[1])
        self._env = {**os.environ, **env}
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        """Start and wait for SERVING; raises with the log tail when it does not come up."""
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603 - fixed argv
                [sys.executable, "-m", self.module], env=self._env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited {self._proc.returncode}:\n{self.log()}")
            if grpc_serving(self.address, timeout=0.5):
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"{self.module} not serving after {timeout}s:\n{self.log()}")

    @property
    def pid(self) -> int:
        """The process id (0 before start)."""
        return self._proc.pid if self._proc is not None else 0

    def log(self, tail: int = 4000) -> str:
        """The end of the process's output."""
        return self.log_path.read_text(errors="replace")[-tail:]

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code (killed after `timeout`)."""
        if self._proc is None:
            return 0
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return int(self._proc.returncode)

    def kill(self) -> None:
        """SIGKILL (a crash)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
