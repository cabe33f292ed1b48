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
import signal
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Self

from agentrt_testkit.ports import free_port
from agentrt_testkit.server_process import ServerProcess

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


class RabbitServer(ServerProcess):
    """One RabbitMQ node with the management plugin, as the user running the tests.

    Unlike the other servers it takes its node's whole process group away on `stop()`
    and `kill()`, polls less often, and kills a node that did not come up in time.
    """

    program = "rabbitmq-server"
    poll_interval = 0.05
    no_log = "(no log)"

    def __init__(self, data_dir: str | None = None) -> None:
        super().__init__(data_dir, prefix="agentrt-rabbitmq-")
        self.dist_port = free_port()
        self.management_port = free_port()
        self.node = f"agentrt-{uuid.uuid4().hex[:10]}@localhost"
        self._write_config()

    @property
    def data_dir(self) -> str:
        """The node's mnesia and quorum-queue data, log, configuration and Erlang cookie."""
        return self._dir

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

    def _argv(self) -> list[str]:
        return [rabbitmq_server_script()]

    def start(self, timeout: float = 60.0) -> Self:
        """Start the node and wait until it speaks AMQP and its management API listens."""
        return super().start(timeout)

    def _ready(self) -> bool:
        return self._answers() and self._listens(self.management_port)

    def _not_started(self, timeout: float) -> RuntimeError:
        """Kill a node not up within `timeout` seconds; the error saying so, with its log's tail."""
        self.kill()
        return RuntimeError(f"RabbitMQ did not start in {timeout}s: {self._log_tail()}")

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
