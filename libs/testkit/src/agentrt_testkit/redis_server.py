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
from pathlib import Path

from agentrt_testkit.server_process import ServerProcess


def redis_server_binary() -> str:
    """Path of the redis-server binary to run."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        raise RuntimeError("redis-server not found: install Debian's redis-server package")
    return found


class RedisServer(ServerProcess):
    """One redis-server process with an fsync-always append-only file."""

    program = "redis-server"

    def __init__(self, data_dir: str | None = None, port: int | None = None) -> None:
        super().__init__(data_dir, prefix="agentrt-redis-", port=port)

    @property
    def data_dir(self) -> str:
        """The append-only file (and the log)."""
        return self._dir

    def url(self, db: int = 0) -> str:
        """redis:// URL of database `db` on the server."""
        return f"redis://{self.host}:{self.port}/{db}"

    @property
    def log_file(self) -> str:
        """Where the server writes its log."""
        return str(Path(self.data_dir) / "redis-server.log")

    def _argv(self) -> list[str]:
        return [
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
        ]

    def _ready(self) -> bool:
        """Whether the server answers PING."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False
