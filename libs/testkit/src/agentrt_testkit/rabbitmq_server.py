"""A real RabbitMQ node on free ports, for tests.

Runs Debian's `rabbitmq-server` (package `rabbitmq-server`, 3.10) as a private
node: its own node name, AMQP, distribution and management ports, and its own
directory for the mnesia and quorum-queue data, the log and the Erlang cookie,
so it never meets the machine's own RabbitMQ. The management plugin is on
(`management_url`). The node keeps its name, ports and data across
`stop()`/`kill()`/`start()`, so a test can take RabbitMQ away and bring it back
with its quorum queues and their messages intact.

The management API's figures for a quorum queue follow it within ~0.3 s (~9 s with
RabbitMQ's defaults), so that tests reading them need not wait long.

Take it away with `stop()` (SIGTERM; ~6 s, 5 of them the management plugin's):
RabbitMQ 3.10 may not bring back a quorum queue declared a moment before a SIGKILL
(`kill()`). One declared 0.3 s before was still without a leader 200 s after the
restart; one declared 15 s before came back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from agentrt_testkit.ports import free_port

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
# The management API's figures for a quorum queue lag it by ~9 s with the defaults
# (the quorum-queue tick, the statistics interval, and 5 s samples); ~0.3 s with these.
ADVANCED_CONFIG = """[
  {rabbit, [{quorum_tick_interval, 100}, {collect_statistics_interval, 100}]},
  {rabbitmq_management_agent, [{sample_retention_policies,
    [{global, [{60, 1}]}, {basic, [{60, 1}]}, {detailed, [{10, 1}]}]}]}
]."""


def rabbitmq_server_script() -> str:
    """Path of the rabbitmq-server start script."""
    if not Path(RABBITMQ_SERVER).exists():
        raise RuntimeError("rabbitmq-server not found: install Debian's rabbitmq-server package")
    return RABBITMQ_SERVER


class RabbitServer:
    """One RabbitMQ node with the management plugin, as the user running the tests."""

    def __init__(self, data_dir: str | None = None) -> None:
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="agentrt-rabbitmq-")
        self.host = "127.0.0.1"
        self.port = free_port()
        self.dist_port = free_port()
        self.management_port = free_port()
        self.node = f"agentrt-{uuid.uuid4().hex[:10]}@localhost"
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def url(self) -> str:
        """amqp:// URL of the node (user guest, default vhost)."""
        return f"amqp://guest:guest@{self.host}:{self.port}/"

    @property
    def management_url(self) -> str:
        """Base URL of the management HTTP API, with guest's credentials."""
        return f"http://guest:guest@{self.host}:{self.management_port}"

    @property
    def log_file(self) -> str:
        """Where the node writes its log."""
        return str(Path(self.data_dir) / "log" / f"{self.node}.log")

    @property
    def running(self) -> bool:
        """True while the node's process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> None:
        base = Path(self.data_dir)
        (base / "log").mkdir(exist_ok=True)
        (base / "env").write_text("")
        (base / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (base / "rabbitmq.conf").write_text(
            f"management.tcp.ip = {self.host}\nmanagement.tcp.port = {self.management_port}\n"
        )
        (base / "advanced.config").write_text(ADVANCED_CONFIG)

    def _environment(self) -> dict[str, str]:
        base = Path(self.data_dir)
        return {
            **os.environ,
            "HOME": str(base),  # the Erlang cookie goes there
            "RABBITMQ_CONF_ENV_FILE": str(base / "env"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "ERL_EPMD_ADDRESS": self.host,
        }

    def start(self, timeout: float = 60.0) -> RabbitServer:
        """Start the node and wait until it speaks AMQP and its management API listens."""
        if self.running:
            return self
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [rabbitmq_server_script()],
            env=self._environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own process group: stop() and kill() take beam and its helpers with it.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"rabbitmq-server exited: {self._log_tail()}")
            if self._answers() and self._listens(self.management_port):
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"RabbitMQ did not start in {timeout}s: {self._log_tail()}")

    def _answers(self) -> bool:
        """Whether the AMQP listener answers the protocol header with connection.start."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as s:
                s.sendall(AMQP_HEADER)
                return s.recv(1) == b"\x01"  # a method frame
        except OSError:
            return False

    def _listens(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=1.0):
                return True
        except OSError:
            return False

    def _log_tail(self) -> str:
        log = Path(self.log_file)
        return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node cleanly (SIGTERM); its data stays for a later start."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the node (a crash: no goodbye to clients); what it wrote stays."""
        self._end(signal.SIGKILL, 10.0)

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        if self._proc is None:
            return
        group = self._proc.pid  # the session leader: its pid is the group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, sig)
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            self._proc.wait()
        # Helpers (erl_child_setup, inet_gethost) that outlived the shell and beam.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self._proc = None

    def close(self) -> None:
        """Stop the node and delete its data."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
