"""Services as real processes, for end-to-end tests.

`ServiceProcess` runs `python -m <module>` with the given environment, waits
until its gRPC health service reports SERVING (or, for an HTTP service such as
the gateway, until a GET of its readiness path answers 200), and stops it with
SIGTERM (as an orchestrator would), returning the exit code. Output goes to a
log file that tests can read when something fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
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


# Straight to the address: a proxy configured in the environment must not see probes.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when a GET of `url` (http only) answers 200."""
    if not url.startswith("http://"):
        raise ValueError(f"not an http:// URL: {url!r}")
    try:
        with _DIRECT.open(url, timeout=timeout) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError, ValueError):  # HTTPError (non-2xx) included
        return False


class ServiceProcess:
    """One service process.

    `grpc_port` is the port the service listens on. With `http_ready` (a path such
    as "/readyz") the service counts as up once `GET http://127.0.0.1:<port><path>`
    answers 200, instead of once its gRPC health check answers SERVING. Output goes
    to `log_path` (default: a new temporary file).
    """

    def __init__(
        self,
        module: str,
        env: Mapping[str, str],
        grpc_port: int,
        *,
        http_ready: str | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.module = module
        self.port = grpc_port
        self.address = f"127.0.0.1:{grpc_port}"
        self.http_ready = http_ready
        if log_path is None:
            log_path = Path(tempfile.mkstemp(prefix=f"{module}-", suffix=".log")[1])
        self.log_path = log_path
        self._env = {**os.environ, **env}
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        """Start and wait until ready; raises with the log tail when it does not come up."""
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603 - fixed argv
                [sys.executable, "-m", self.module], env=self._env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited {self._proc.returncode}:\n{self.log()}")
            if self.ready(timeout=0.5):
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"{self.module} not serving after {timeout}s:\n{self.log()}")

    @property
    def url(self) -> str:
        """The service's HTTP base URL (for HTTP services)."""
        return f"http://{self.address}"

    def ready(self, timeout: float = 1.0) -> bool:
        """Whether the service is up: its readiness path answers 200, or gRPC SERVING."""
        if self.http_ready is not None:
            return http_ok(self.url + self.http_ready, timeout=timeout)
        return grpc_serving(self.address, timeout=timeout)

    @property
    def pid(self) -> int:
        """The process id (0 before start)."""
        return self._proc.pid if self._proc is not None else 0

    def log(self, tail: int = 4000) -> str:
        """The end of the process's output."""
        return self.log_path.read_text(errors="replace")[-tail:]

    def terminate(self) -> None:
        """SIGTERM, without waiting (`wait` then gives the exit code)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for the process to end; returns the exit code (killed after `timeout`)."""
        if self._proc is None:
            return 0
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        return int(self._proc.returncode)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code (killed after `timeout`)."""
        self.terminate()
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL (a crash)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
