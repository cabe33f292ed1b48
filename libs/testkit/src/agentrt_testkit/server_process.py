"""What the testkit's servers share: one process, started, stopped, killed and closed.

`NatsServer`, `RedisServer` and `RabbitServer` each run one server on 127.0.0.1
with a directory for its data and log (a temporary one unless given, removed by
`close()`), and keep their port and directory across `stop()`/`kill()`/`start()`.
A subclass says how to run its server (`_argv`, `_environment`), where its
log is and when it serves clients (`_ready`); `RabbitServer` also stops and kills a
whole process group.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Self

from agentrt_testkit.ports import free_port


class ServerProcess(ABC):
    """One server process on 127.0.0.1, owned by a test or a test session."""

    program: ClassVar[str]  # how errors name the server
    poll_interval: ClassVar[float] = 0.02  # seconds between two readiness checks
    no_log: ClassVar[str] = ""  # what errors show of a log not written

    def __init__(self, directory: str | None, *, prefix: str, port: int | None = None) -> None:
        self._own_dir = directory is None
        self._dir = directory or tempfile.mkdtemp(prefix=prefix)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    @abstractmethod
    def log_file(self) -> str:
        """Where the server writes its log."""

    @abstractmethod
    def _argv(self) -> list[str]:
        """The command line that runs the server."""

    def _environment(self) -> Mapping[str, str] | None:
        """The server's environment (None: this process's)."""
        return None

    @abstractmethod
    def _ready(self) -> bool:
        """Whether the server serves clients yet."""

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> Self:
        """Start the server (unless it is running) and wait until it serves clients.

        Raises:
            RuntimeError: the process exited (the message ends with its log's tail),
                or did not serve within `timeout` seconds (`_not_started`).
        """
        if self.running:
            return self
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv
            self._argv(),
            env=self._environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Own session: a Ctrl-C meant for the parent must not take the server away
            # before the services using it have drained. Its own process group too,
            # which RabbitServer's stop() and kill() signal whole.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"{self.program} exited: {self._log_tail()}")
            if self._ready():
                return self
            time.sleep(self.poll_interval)
        raise self._not_started(timeout)

    def _not_started(self, timeout: float) -> RuntimeError:
        """Stop a server not serving within `timeout` seconds; the error saying so."""
        self.stop()
        return RuntimeError(f"{self.program} did not start on port {self.port} in {timeout}s")

    def _log_tail(self) -> str:
        log = Path(self.log_file)
        return log.read_text(errors="replace")[-2000:] if log.exists() else self.no_log

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after 10 s); its directory stays for a later start."""
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
        """SIGKILL the server (a crash: nothing flushed, no goodbye); its directory stays."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def close(self) -> None:
        """Stop the server and delete its directory, unless it was given one."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)
