"""A real redis-server process on a free port, for tests.

Uses Debian's `redis-server` (package `redis-server`; `.ci/run` installs it). The
server keeps its port and directory across `stop()`/`kill()`/`start()` and writes
an append-only file fsynced on every write, so a test can take Redis away and
bring it back with what it acknowledged — as a production Redis used for the run
queue must be configured (`appendonly yes`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from agentrt_testkit.ports import free_port


def redis_server_binary() -> str:
    """Path of the redis-server binary to run."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        raise RuntimeError("redis-server not found: install Debian's redis-server package")
    return found


class RedisServer:
    """One redis-server process with an fsync-always append-only file."""

    def __init__(self, data_dir: str | None = None, port: int | None = None) -> None:
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="agentrt-redis-")
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        """redis:// URL of database `db` on the server."""
        return f"redis://{self.host}:{self.port}/{db}"

    @property
    def log_file(self) -> str:
        """Where the server writes its log."""
        return str(Path(self.data_dir) / "redis-server.log")

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        if self.running:
            return self
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [
                redis_server_binary(),
                "--bind",
                self.host,
                "--port",
                str(self.port),
                "--dir",
                self.data_dir,
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                self.log_file,
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                log = Path(self.log_file)
                err = log.read_text(errors="replace") if log.exists() else ""
                raise RuntimeError(f"redis-server exited: {err[-2000:]}")
            if self._answers():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port} in {timeout}s")

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (its data stays for a later start)."""
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
        """SIGKILL the server (a crash); what it fsynced stays."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def close(self) -> None:
        """Stop the server and delete its data."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
