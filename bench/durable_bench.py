"""Durable runs benchmark (issue 11): background runs through the run queue next to the
synchronous path, in-process LangGraph and the open peer Aegra, all on PostgreSQL.

The agent is the executor benchmark's (the offline model calls `parse_url` once, then
answers). Registry, tools service, executor and gateway run as processes with NATS; the
executor's runs and checkpoints and the tools service's ledger are in a fresh PostgreSQL
database on the machine's server. Measured in one run, sequentially and at 100 in flight:

- a background run end to end (`StartRun`, then `WaitRun` until done) next to `Execute`,
  in-process `graph.ainvoke`, and in-process LangGraph with its PostgreSQL checkpointer;
  where its time goes (the call, queue-to-start from the run record's `created_at` to
  `started_at`, the run, the answer);
- the same background runs on a second executor with
  `AGENTRT_EXECUTOR_QUEUE_CHECKPOINT_RUNS=false` (its own queue and database);
- over HTTP, the gateway's `POST /v1/chat/completions` and `POST /v1/runs` +
  `GET /v1/runs/{id}/wait` next to Aegra's `POST /threads/{id}/runs/wait` and its
  background runs (`POST /threads/{id}/runs`, then the run's end).

Aegra (PyPI `aegra-api`) is installed into its own virtualenv under `var/bench/` (made
once, then reused; `var/` is not committed) and serves the same agent as a LangGraph
graph (`bench/aegra_graph.py`, copied next to its `aegra.json`) from its own database
on the same server.

Everything runs at once and the paths take turns: sequential calls one of each path at
a time, throughput in rounds of one batch per path, so the drift of this shared machine
falls on every path alike. The load generator is this process. CPU time per run of each
process (and of the PostgreSQL backends serving its database) is read from /proc around
each batch, to show where the time goes.

Usage: python bench/durable_bench.py [--write docs/BENCHMARKS.md] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import psycopg
import uvloop
from bench_support import machine, options, publish, stats
from executor_bench import (
    MD,
    QUESTION,
    TOKEN,
    create_agent,
    executor_process,
    plain_graph,
    start_services,
)
from gateway_bench import RUNTIME_TOKEN, fresh_database, gateway_process
from google.protobuf.timestamp_pb2 import Timestamp
from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from agentrt.executor.v1 import executor_pb2 as pb
from agentrt.executor.v1 import executor_pb2_grpc as pb_grpc
from agentrt.registry.v1 import registry_pb2_grpc as rpb_grpc
from agentrt_kit.grpc.client import create_channel
from agentrt_testkit.nats_server import NatsServer
from agentrt_testkit.ports import free_port
from agentrt_testkit.processes import ServiceProcess, http_ok

TITLE = "## Durable runs (issue 11)"
ROOT = Path(__file__).resolve().parent.parent
AEGRA_DIR = ROOT / "var" / "bench" / "aegra"
AEGRA_VENV = ROOT / "var" / "bench" / "aegra-venv"
# 0.6.0 is what pip resolves on Python 3.11; it needs greenlet beside it (SQLAlchemy's
# asyncio support) and does not declare it.
AEGRA_REQUIREMENTS = ("aegra-api==0.6.0", "greenlet")
WAIT_SECONDS = 120.0
WATCH_SECONDS = 0.005
PHASES = ("start_run_call", "queue", "run", "end_to_answer")
Fn = Callable[[int], Awaitable[Any]]
T0 = time.monotonic()


def progress(what: str) -> None:
    print(f"[{time.monotonic() - T0:5.0f} s] {what}", flush=True)


# ------------------------------------------------------------------- measuring


def server_dsn() -> str:
    return os.environ.get(
        "AGENTRT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
    )


def database_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds each named process, the backends of one database and this process
    spend between `start` and `stop`."""

    def __init__(
        self, pids: Mapping[str, int], database: str = "", exclude: set[int] | None = None
    ) -> None:
        self.pids = dict(pids)
        self.database = database
        self.exclude = exclude or set()
        self._before: dict[str, float] = {}
        self._backends: list[int] = []

    def _backend_pids(self) -> list[int]:
        if not self.database:
            return []
        with psycopg.connect(server_dsn(), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,)
            ).fetchall()
        return [int(r[0]) for r in rows if int(r[0]) not in self.exclude]

    def _now(self) -> dict[str, float]:
        now = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}
        if self.database:
            now["postgres"] = sum(_cpu_seconds(pid) for pid in self._backends)
        now["client"] = time.process_time()
        return now

    def start(self) -> None:
        self._backends = self._backend_pids()  # the pools are open after the warm-up
        self._before = self._now()

    def stop(self) -> dict[str, float]:
        after = self._now()
        return {k: after[k] - self._before[k] for k in after}


@dataclass
class RunPath:
    """One way of making a run: its call, how many runs it gets, what it costs whom."""

    fn: Fn
    sequential: int
    batch: int
    meter: CpuMeter
    # Throughput, accumulated over the rounds.
    runs: int = 0
    elapsed: float = 0.0
    samples: list[float] = field(default_factory=list)
    cpu: Counter[str] = field(default_factory=Counter)

    def result(self, sequential: dict[str, float]) -> dict[str, Any]:
        if not self.runs:
            return {"sequential": sequential}
        latency = stats(self.samples)
        return {
            "sequential": sequential,
            "concurrent": {
                "runs": self.runs,
                "runs_s": round(self.runs / self.elapsed, 1),
                "p50_ms": latency["p50_ms"],
                "p99_ms": latency["p99_ms"],
                "cpu_ms_per_run": {k: round(v * 1000 / self.runs, 2) for k, v in self.cpu.items()},
            },
        }


async def batch(path: RunPath, concurrency: int) -> None:
    """`path.batch` calls from `concurrency` workers: elapsed time, latencies, CPU."""
    counter = iter(range(path.batch))

    async def worker() -> None:
        for i in counter:
            t = time.perf_counter()
            await path.fn(i)
            path.samples.append(time.perf_counter() - t)

    path.meter.start()
    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    path.elapsed += time.perf_counter() - t
    path.cpu.update(path.meter.stop())
    path.runs += path.batch


async def measure(
    paths: Mapping[str, RunPath],
    args: argparse.Namespace,
    *,
    after_warmup: Callable[[], object] = lambda: None,
    after_sequential: Callable[[], object] = lambda: None,
) -> dict[str, Any]:
    """Warm-up, sequential latency and throughput of every path, the paths taking turns."""
    for i in range(args.warmup):
        for path in paths.values():
            if i < path.sequential:
                await path.fn(i)
    after_warmup()
    progress("sequential, the paths in turn ...")
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(max(p.sequential for p in paths.values())):
        for name, path in paths.items():
            if i < path.sequential:
                t = time.perf_counter()
                await path.fn(i)
                samples[name].append(time.perf_counter() - t)
    sequential = {name: stats(s) for name, s in samples.items()}
    after_sequential()
    for r in range(args.rounds):
        for name, path in paths.items():
            if not path.batch:
                continue
            progress(f"round {r + 1}/{args.rounds}: {path.batch} {name} at {args.concurrency}")
            await batch(path, args.concurrency)
    return {name: path.result(sequential[name]) for name, path in paths.items()}


def seconds_between(start: Timestamp, end: Timestamp) -> float:
    return (end.seconds - start.seconds) + (end.nanos - start.nanos) / 1e9


# ------------------------------------------------------------------- in-process


def in_process_paths() -> tuple[Fn, Callable[[AsyncConnectionPool[Any]], Awaitable[Fn]]]:
    """Plain LangGraph, and a factory of the same graph with LangGraph's PostgreSQL
    checkpointer (each run on a thread of its own)."""
    graph = plain_graph()

    async def invoke(_: int) -> None:
        out = await graph.ainvoke({"messages": [HumanMessage(QUESTION)]})
        assert "docs.example.org" in out["messages"][-1].content

    async def checkpointed(pool: AsyncConnectionPool[Any]) -> Fn:
        saver = AsyncPostgresSaver(pool)
        await saver.setup()
        durable = plain_graph().builder.compile(checkpointer=saver)

        async def invoke_checkpointed(_: int) -> None:
            config: RunnableConfig = {"configurable": {"thread_id": uuid.uuid4().hex}}
            out = await durable.ainvoke({"messages": [HumanMessage(QUESTION)]}, config)
            assert "docs.example.org" in out["messages"][-1].content

        return invoke_checkpointed

    return invoke, checkpointed


@contextlib.asynccontextmanager
async def checkpoint_pool(database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """A pool as the executor's checkpointer opens one (10 connections)."""
    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    async with AsyncConnectionPool(
        database_url, min_size=1, max_size=10, kwargs=kwargs, open=False
    ) as pool:
        yield pool


# ------------------------------------------------------------------- our system


class Runs:
    """The ways a run is made on our system, as awaitable callables on one agent."""

    def __init__(
        self,
        executor: pb_grpc.ExecutorStub,
        session: aiohttp.ClientSession | None,
        url: str,
        agent_id: str,
    ) -> None:
        self.executor = executor
        self.session = session
        self.url = url
        # A background run's phases: this process's clock against the record's timestamps.
        self.phases: dict[str, list[float]] = {name: [] for name in PHASES}
        message = pb.RunInput(
            agent_id=agent_id, messages=[pb.ChatMessage(role="user", content=QUESTION)]
        )
        self.execute_request = pb.ExecuteRequest(input=message)
        self.start_request = pb.StartRunRequest(input=message)
        self.chat_body = json.dumps(
            {"model": agent_id, "messages": [{"role": "user", "content": QUESTION}]}
        )
        self.run_body = json.dumps(
            {"agent_id": agent_id, "messages": [{"role": "user", "content": QUESTION}]}
        )

    async def execute(self, _: int) -> None:
        reply = await self.executor.Execute(self.execute_request, metadata=MD)
        assert reply.finish_reason == "stop", reply

    async def background(self, _: int) -> None:
        t0 = time.time()
        started = await self.executor.StartRun(self.start_request, metadata=MD)
        t1 = time.time()
        reply = await self.executor.WaitRun(
            pb.WaitRunRequest(run_id=started.run.run_id, timeout_seconds=WAIT_SECONDS),
            metadata=MD,
            timeout=WAIT_SECONDS + 10,
        )
        t2 = time.time()
        run = reply.run
        assert reply.done, run
        assert run.status == "succeeded", run
        assert "docs.example.org" in run.output.content, run
        for name, value in (
            ("start_run_call", t1 - t0),
            ("queue", seconds_between(run.created_at, run.started_at)),
            ("run", seconds_between(run.started_at, run.finished_at)),
            ("end_to_answer", t2 - (run.finished_at.seconds + run.finished_at.nanos / 1e9)),
        ):
            self.phases[name].append(value)

    def phase_stats(self) -> dict[str, dict[str, float]]:
        """The phases since the last call."""
        out = {name: stats(samples) for name, samples in self.phases.items() if samples}
        for samples in self.phases.values():
            samples.clear()
        return out

    async def chat(self, _: int) -> None:
        assert self.session is not None
        async with self.session.post(f"{self.url}/v1/chat/completions", data=self.chat_body) as r:
            answer = await r.json()
            assert r.status == 200, answer
            assert "docs.example.org" in answer["choices"][0]["message"]["content"]

    async def http_background(self, _: int) -> None:
        assert self.session is not None
        async with self.session.post(f"{self.url}/v1/runs", data=self.run_body) as r:
            run = await r.json()
            assert r.status == 202, run
        wait = f"{self.url}/v1/runs/{run['run_id']}/wait?timeout={WAIT_SECONDS:g}"
        async with self.session.get(wait) as r:
            run = await r.json()
            assert r.status == 200, run
            assert run["status"] == "succeeded", run
            assert "docs.example.org" in run["output"]["content"], run


def http_session(args: argparse.Namespace, headers: Mapping[str, str]) -> aiohttp.ClientSession:
    """One keep-alive session with room for every caller.

    Idle connections are dropped after 3 s, before uvicorn's 5 s keep-alive timeout closes
    them from the server's side (a request sent on one the server is closing fails).
    """
    connector = aiohttp.TCPConnector(limit=args.concurrency + 10, keepalive_timeout=3.0)
    return aiohttp.ClientSession(connector=connector, headers=dict(headers))


def nats_pid(server: NatsServer) -> int:
    proc = server._proc  # the testkit keeps it private; only read here
    return proc.pid if proc is not None else 0


# ------------------------------------------------------------------- Aegra


def aegra_python() -> Path:
    return AEGRA_VENV / "bin" / "python"


def ensure_aegra() -> str:
    """Install Aegra into its own virtualenv unless it is there; "" or why it failed."""
    python = aegra_python()
    probe = [str(python), "-c", "import aegra_api, greenlet"]
    if python.exists() and subprocess.run(probe, check=False, capture_output=True).returncode == 0:
        return ""
    progress(f"installing Aegra into {AEGRA_VENV} ...")
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(AEGRA_VENV)],
        [
            str(AEGRA_VENV / "bin" / "pip"),
            "install",
            "--disable-pip-version-check",
            "-q",
            *AEGRA_REQUIREMENTS,
        ],
    ]
    for step in steps:
        done = subprocess.run(step, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return f"`{' '.join(step[:3])} ...` failed: " + " / ".join(tail)
    if subprocess.run(probe, check=False, capture_output=True).returncode != 0:
        return "installed, but `import aegra_api` fails in its virtualenv"
    return ""


def aegra_version() -> str:
    done = subprocess.run(
        [
            str(aegra_python()),
            "-c",
            "import importlib.metadata as m; print(m.version('aegra-api'), m.version('langgraph'))",
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


class AegraServer:
    """Aegra as its Dockerfile runs it: `uvicorn aegra_api.main:app`, one process.

    Auth is off (`AUTH_TYPE=noop`), logs at WARNING as our services', its pools as
    shipped (SQLAlchemy 2 connections, the LangGraph checkpointer 1-6).
    """

    def __init__(self, database_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = AEGRA_DIR / "aegra.log"
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.env = {
            **env,
            "DATABASE_URL": database_url,
            "AUTH_TYPE": "noop",
            "LOG_LEVEL": "WARNING",
            "ENV_MODE": "PRODUCTION",
            "AEGRA_CONFIG": str(AEGRA_DIR / "aegra.json"),
        }
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> AegraServer:
        AEGRA_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(__file__).with_name("aegra_graph.py"), AEGRA_DIR / "graph.py")
        (AEGRA_DIR / "aegra.json").write_text(json.dumps({"graphs": {"agent": "./graph.py:graph"}}))
        argv = [
            str(aegra_python()),
            "-m",
            "uvicorn",
            "aegra_api.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(argv, cwd=AEGRA_DIR, env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"Aegra exited {self._proc.returncode}: {self.log()}")
            if http_ok(f"{self.url}/health", timeout=0.5):
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Aegra not healthy after {timeout:g}s: {self.log()}")

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None else 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-1500:]

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


class RunWatcher:
    """Learns from Aegra's `runs` table when runs have ended: one query every WATCH_SECONDS
    for all the runs awaited, on a connection of this process.

    Aegra's own join (`GET .../runs/{run_id}/join`) holds a pooled database connection
    for the whole wait (the request's session opens a transaction with its first SELECT
    and keeps it while it awaits the run), so 100 joins in flight need more than 100
    connections (its pool has 2; this server allows 100): the runs starve and the joins
    fail with SQLAlchemy's "QueuePool limit ... reached". Watching the table instead asks
    nothing of Aegra's process, so Aegra's background throughput is measured at its best.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.backend_pid = 0
        self.connected = asyncio.Event()

    async def join(self, run_id: str) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[run_id] = future
        return await future

    async def watch(self, stop: asyncio.Event) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True
        ) as conn:
            row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
            self.backend_pid = int(row[0]) if row else 0
            self.connected.set()
            while not stop.is_set():
                if self.pending:
                    cursor = await conn.execute(
                        "SELECT run_id, status, output FROM runs WHERE run_id = ANY(%s) "
                        "AND status IN ('success', 'error', 'interrupted')",
                        (list(self.pending),),
                    )
                    for run_id, status, output in await cursor.fetchall():
                        future = self.pending.pop(run_id)
                        if status == "success":
                            future.set_result(output)
                        else:
                            future.set_exception(AssertionError(f"run {run_id} ended {status}"))
                await asyncio.sleep(WATCH_SECONDS)


class AegraRuns:
    """Aegra's run-and-wait and its background runs, on a new thread each run."""

    def __init__(self, session: aiohttp.ClientSession, url: str, watcher: RunWatcher) -> None:
        self.session = session
        self.url = url
        self.watcher = watcher
        self.body = json.dumps(
            {
                "assistant_id": "agent",
                "input": {"messages": [{"role": "user", "content": QUESTION}]},
            }
        )

    @staticmethod
    def _check(output: dict[str, Any]) -> None:
        assert "docs.example.org" in output["messages"][-1]["content"], output

    async def wait(self, _: int) -> None:
        thread = uuid.uuid4()  # a thread id Aegra has not seen is created with the run
        async with self.session.post(f"{self.url}/threads/{thread}/runs/wait", data=self.body) as r:
            output = await r.json()
            assert r.status == 200, output
        self._check(output)

    async def _create(self) -> tuple[uuid.UUID, str]:
        thread = uuid.uuid4()
        async with self.session.post(f"{self.url}/threads/{thread}/runs", data=self.body) as r:
            run = await r.json()
            assert r.status == 200, run
        return thread, str(run["run_id"])

    async def joined(self, _: int) -> None:
        """Create, then Aegra's join (sequential use only: see RunWatcher)."""
        thread, run_id = await self._create()
        async with self.session.get(f"{self.url}/threads/{thread}/runs/{run_id}/join") as r:
            output = await r.json()
            assert r.status == 200, output
        self._check(output)

    async def watched(self, _: int) -> None:
        """Create, then wait for the run's end in Aegra's table."""
        run_id = (await self._create())[1]
        self._check(await self.watcher.join(run_id))


def tolerant(fn: Fn, peer: dict[str, Any], name: str) -> Fn:
    """`fn`, its failures counted in `peer["failures"][name]` (the first one kept) instead of
    raised: the peer failing must not stop the measurement of the rest."""

    async def call(i: int) -> None:
        try:
            await fn(i)
        except Exception as e:
            failures = peer.setdefault("failures", {})
            if name not in failures:
                failures[name] = {"count": 0, "first": repr(e)[:300]}
            failures[name]["count"] += 1

    return call


@contextlib.asynccontextmanager
async def aegra_runs(
    args: argparse.Namespace, peer: dict[str, Any]
) -> AsyncIterator[dict[str, RunPath]]:
    """Aegra on its own fresh database, its paths; none (and `peer["error"]`) without it."""
    problem = ensure_aegra()
    if problem:
        peer["error"] = f"Aegra could not be installed: {problem}"
        yield {}
        return
    peer["version"] = aegra_version()
    with fresh_database("aegrabench") as database_url:
        progress("starting Aegra ...")
        server = AegraServer(database_url)
        try:
            server.start()
        except RuntimeError as e:
            peer["error"] = f"Aegra did not start: {e}"
            yield {}
            return
        watcher = RunWatcher(database_url)
        stop = asyncio.Event()
        watching = asyncio.create_task(watcher.watch(stop))
        try:
            await watcher.connected.wait()
            async with http_session(args, {"Content-Type": "application/json"}) as session:
                runs = AegraRuns(session, server.url, watcher)
                meter = CpuMeter(
                    {"aegra": server.pid}, database_of(database_url), {watcher.backend_pid}
                )
                n, total = args.aegra_runs, args.aegra_total // args.rounds
                yield {
                    "aegra_wait": RunPath(tolerant(runs.wait, peer, "wait"), n, total, meter),
                    "aegra_joined": RunPath(tolerant(runs.joined, peer, "joined"), n, 0, meter),
                    "aegra_background": RunPath(
                        tolerant(runs.watched, peer, "background"), n, total, meter
                    ),
                }
        finally:
            stop.set()
            await watching
            server.stop()


# ------------------------------------------------------------------- the run


async def run_all(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start everything, measure every path in turns; (ours, Aegra's) results."""
    peer: dict[str, Any] = {}
    nats_server = NatsServer().start()
    processes: list[ServiceProcess] = []
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            fresh_database("durbench") as database_url,
            fresh_database("durbench_off") as plain_database_url,
            fresh_database("durbench_lg") as graph_database_url,
        ):
            progress("starting registry, tools, executors and gateway on PostgreSQL ...")
            processes = start_services(
                tmp,
                nats_server.url,
                "durbench",
                database_url=database_url,
                tools_database_url=database_url,
            )
            registry, tools, executor = processes
            gateway = gateway_process(
                nats_server.url, "durbench", registry.address, executor.address
            )
            gateway.start()
            processes.append(gateway)
            # Checkpointing off: its own NATS prefix (so its own run queue) and database.
            plain = executor_process(
                1,
                tmp,
                nats_server.url,
                "durbench-plain",
                registry,
                tools,
                database_url=plain_database_url,
                env={"AGENTRT_EXECUTOR_QUEUE_CHECKPOINT_RUNS": "false"},
            )
            plain.start()
            processes.append(plain)
            await asyncio.sleep(1.0)  # let everything settle (imports, first publications)
            async with grpc.aio.insecure_channel(registry.address) as rc:
                agent_id = await create_agent(
                    rpb_grpc.AgentRegistryStub(rc), toolsets=["parse_url"]
                )
            headers = {
                "Authorization": f"Bearer {RUNTIME_TOKEN}",
                "Content-Type": "application/json",
            }
            nats = nats_pid(nats_server)
            ours_meter = CpuMeter(
                {
                    "executor": executor.pid,
                    "tools": tools.pid,
                    "gateway": gateway.pid,
                    "nats": nats,
                },
                database_of(database_url),
            )
            plain_meter = CpuMeter(
                {"executor": plain.pid, "tools": tools.pid, "nats": nats},
                database_of(plain_database_url),
            )
            async with (
                create_channel(executor.address, service_token=TOKEN, default_timeout=60) as ch,
                create_channel(plain.address, service_token=TOKEN, default_timeout=60) as plain_ch,
                http_session(args, headers) as session,
                checkpoint_pool(graph_database_url) as pool,
                aegra_runs(args, peer) as theirs,
            ):
                mine = Runs(pb_grpc.ExecutorStub(ch), session, gateway.url, agent_id)
                unchecked = Runs(pb_grpc.ExecutorStub(plain_ch), None, "", agent_id)
                invoke, checkpointed = in_process_paths()
                n, total = args.runs, args.total // args.rounds
                paths: dict[str, RunPath] = {
                    "inproc": RunPath(invoke, n, total, CpuMeter({})),
                    "inproc_checkpointed": RunPath(
                        await checkpointed(pool),
                        n,
                        total,
                        CpuMeter({}, database_of(graph_database_url)),
                    ),
                    "execute": RunPath(mine.execute, n, total, ours_meter),
                    "background": RunPath(mine.background, n, total, ours_meter),
                    "background_unchecked": RunPath(unchecked.background, n, total, plain_meter),
                    "gateway_chat": RunPath(mine.chat, n, total, ours_meter),
                    "gateway_background": RunPath(mine.http_background, n, total, ours_meter),
                    **theirs,
                }
                phases: dict[str, Any] = {}

                def drop_phases() -> None:  # the warm-up's
                    mine.phase_stats()
                    unchecked.phase_stats()

                def sequential_phases() -> None:
                    phases["sequential"] = mine.phase_stats()
                    phases["sequential_unchecked"] = unchecked.phase_stats()

                measured = await measure(
                    paths, args, after_warmup=drop_phases, after_sequential=sequential_phases
                )
                phases["concurrent"] = mine.phase_stats()
                phases["concurrent_unchecked"] = unchecked.phase_stats()
            for process in reversed(processes):
                process.stop()
            processes.clear()
    finally:
        for process in reversed(processes):
            process.stop()
        nats_server.close()
    ours = {k: v for k, v in measured.items() if not k.startswith("aegra")}
    ours["phases"] = phases
    for name in ("wait", "joined", "background"):
        if f"aegra_{name}" in measured:
            peer[name] = measured[f"aegra_{name}"]
    return ours, peer


# ------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def row(label: str, r: Mapping[str, Any]) -> str:
    seq, con = r["sequential"], r["concurrent"]
    return (
        f"| {label} | {seq['p50_ms']:.2f} / {seq['p99_ms']:.2f} | {seq['ops_s']:.0f} | "
        f"**{con['runs_s']:.0f}** | {con['p50_ms']:.0f} / {con['p99_ms']:.0f} |"
    )


def phase_row(label: str, phases: Mapping[str, Mapping[str, float]]) -> str:
    cells = [f"{phases[p]['p50_ms']:.2f} / {phases[p]['p99_ms']:.2f}" for p in PHASES]
    return f"| {label} | " + " | ".join(cells) + " |"


def cpu_row(label: str, r: Mapping[str, Any], columns: list[str]) -> str:
    cpu = r["concurrent"]["cpu_ms_per_run"]
    cells = [f"{cpu[c]:.2f}" if c in cpu else "—" for c in columns]
    return f"| {label} | " + " | ".join(cells) + " |"


def report(
    mine: dict[str, Any],
    peer: dict[str, Any],
    args: argparse.Namespace,
    loadavg: tuple[float, float, float],
) -> str:
    info = machine()
    ex, bg, off = mine["execute"], mine["background"], mine["background_unchecked"]
    chat, http_bg = mine["gateway_chat"], mine["gateway_background"]
    phases = mine["phases"]
    added = bg["sequential"]["p50_ms"] - ex["sequential"]["p50_ms"]
    share = bg["concurrent"]["runs_s"] / ex["concurrent"]["runs_s"]
    cost = 1 - bg["concurrent"]["runs_s"] / off["concurrent"]["runs_s"]
    n = args.concurrency
    lines = [
        TITLE,
        "",
        f"Measured {info['date']} on {info['cores']} cores ({info['cpu']}), Python "
        f"{info['python']}; load average {loadavg[0]:.1f} / {loadavg[1]:.1f} / "
        f"{loadavg[2]:.1f} when the run began (the machine is shared).",
        "Reproduce: `make bench` (or `python bench/durable_bench.py --write docs/BENCHMARKS.md`).",
        "The agent is the executor benchmark's (the offline model calls `parse_url` once, then "
        f"answers). {args.runs} sequential runs per path, and {args.total} runs per path at "
        f"{n} in flight. Registry, tools service, executor and gateway run as processes with "
        "NATS; the executor's run records and checkpoints and the tools ledger are in a fresh "
        "PostgreSQL database on this machine's server (the registry, read once per agent, on "
        "SQLite). A background run is `StartRun`, then `WaitRun` until it is done: it is "
        "recorded `queued`, put on the JetStream run queue, claimed by the executor, "
        "checkpointed at every step (the default) and its end awaited. *Checkpointing off* is "
        "a second executor with `AGENTRT_EXECUTOR_QUEUE_CHECKPOINT_RUNS=false` (its own NATS "
        "prefix, so its own run queue, and its own database). In-process is plain LangGraph "
        "(`graph.ainvoke`) in this process, once without a checkpointer and once with "
        "LangGraph's `AsyncPostgresSaver` (a pool of 10, as the executor's). Everything runs "
        "at once and the paths take turns — sequential calls one of each path at a time, "
        f"throughput in {args.rounds} rounds of one batch per path — so the drift of this "
        "shared machine falls on every path alike.",
        "",
    ]
    target_rows = [
        f"| the queue adds ≤ 2 ms p50 to a run | +{added:.2f} ms (`StartRun`+`WaitRun` "
        f"{bg['sequential']['p50_ms']:.2f} vs `Execute` {ex['sequential']['p50_ms']:.2f}) "
        f"| {verdict(added <= 2)} |",
        f"| background ≥ 80 % of the synchronous path's throughput at {n} in flight | "
        f"{share:.0%} ({bg['concurrent']['runs_s']:.0f} vs {ex['concurrent']['runs_s']:.0f} "
        f"runs/s) | {verdict(share >= 0.8)} |",
        f"| checkpointing every step costs ≤ 25 % of background throughput | {cost:.0%} "
        f"({bg['concurrent']['runs_s']:.0f} on vs {off['concurrent']['runs_s']:.0f} runs/s "
        f"off) | {verdict(cost <= 0.25)} |",
    ]
    for label, mine_row, their_name, theirs in (
        ("sync", chat, "`/runs/wait`", peer.get("wait", {})),
        ("background", http_bg, "create, then its end", peer.get("background", {})),
    ):
        if "concurrent" in theirs:
            times = mine_row["concurrent"]["runs_s"] / theirs["concurrent"]["runs_s"]
            frac = mine_row["sequential"]["p50_ms"] / theirs["sequential"]["p50_ms"]
            target_rows += [
                f"| ≥ 8× Aegra's throughput at {n} in flight, {label} (PostgreSQL) | "
                f"{times:.1f}× ({mine_row['concurrent']['runs_s']:.0f} vs "
                f"{theirs['concurrent']['runs_s']:.1f} runs/s, {their_name}) "
                f"| {verdict(times >= 8)} |",
                f"| ≤ 1/4 of Aegra's p50, {label} (PostgreSQL) | 1/{1 / frac:.1f} "
                f"({mine_row['sequential']['p50_ms']:.2f} vs "
                f"{theirs['sequential']['p50_ms']:.2f} ms) | {verdict(frac <= 0.25)} |",
            ]
        else:
            target_rows.append(
                f"| ≥ 8× Aegra's throughput, ≤ 1/4 of its p50, {label} | not measured: "
                f"{peer.get('error', '?')} | **not measured** |"
            )
    lines += ["| target | measured | |", "|---|---|---|", *target_rows, ""]
    lines += [
        f"| path | sequential p50 / p99 ms | sequential runs/s | {n} in flight runs/s | "
        "p50 / p99 ms under that load |",
        "|---|---|---|---|---|",
        row("in-process `graph.ainvoke`", mine["inproc"]),
        row(
            "in-process, LangGraph's PostgreSQL checkpointer (a thread per run)",
            mine["inproc_checkpointed"],
        ),
        row("`Execute` (gRPC)", ex),
        row("`StartRun` + `WaitRun`, checkpointing on", bg),
        row("`StartRun` + `WaitRun`, checkpointing off", off),
        row("gateway `POST /v1/chat/completions`", chat),
        row("gateway `POST /v1/runs` + `GET /v1/runs/{id}/wait`", http_bg),
    ]
    aegra_rows = {
        "wait": ("Aegra `POST /threads/{id}/runs/wait`", "Aegra `/runs/wait`"),
        "background": (
            "Aegra `POST /threads/{id}/runs`, then the run's end (see below)",
            "Aegra background run",
        ),
    }
    done = {k: peer[k] for k in aegra_rows if "concurrent" in peer.get(k, {})}
    lines += [row(aegra_rows[k][0], r) for k, r in done.items()]
    lines += [
        "",
        "Where a background run's time goes, p50 / p99 ms (the record's `created_at`, "
        "`started_at` and `finished_at` against this process's clock, same machine): "
        "*StartRun* is the call (admission, the `queued` record, the queue notice); *queue* "
        "is queue-to-start, `created_at` → `started_at` (the executor pulled and claimed "
        "it); *run* is `started_at` → `finished_at`; *end → answer* is `finished_at` until "
        "`WaitRun` answered.",
        "",
        "| | StartRun | queue | run | end → answer |",
        "|---|---|---|---|---|",
        phase_row("sequential, checkpointing on", phases["sequential"]),
        phase_row("sequential, checkpointing off", phases["sequential_unchecked"]),
        phase_row(f"{n} in flight, checkpointing on", phases["concurrent"]),
        phase_row(f"{n} in flight, checkpointing off", phases["concurrent_unchecked"]),
        "",
        f"CPU per run at {n} in flight, ms (from /proc; *postgres* is the backends "
        "connected to the path's database, *client* this process: the load generator, and "
        "the graph itself for the in-process rows):",
        "",
    ]
    columns = ["executor", "tools", "gateway", "nats", "postgres", "client"]
    if done:
        columns.insert(0, "aegra")
    lines += [
        "| path | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
        cpu_row("in-process", mine["inproc"], columns),
        cpu_row("in-process, PostgreSQL checkpointer", mine["inproc_checkpointed"], columns),
        cpu_row("`Execute`", ex, columns),
        cpu_row("`StartRun` + `WaitRun`, checkpointing on", bg, columns),
        cpu_row("`StartRun` + `WaitRun`, checkpointing off", off, columns),
        cpu_row("gateway chat completion", chat, columns),
        cpu_row("gateway background run", http_bg, columns),
        *(cpu_row(aegra_rows[k][1], r, columns) for k, r in done.items()),
        "",
    ]
    if "version" in peer:
        versions = peer["version"].split()
        lines += [
            f"Aegra: `aegra-api` {versions[0]} (LangGraph {versions[-1]}) from PyPI in its own "
            "virtualenv (`var/bench/aegra-venv`, made by this benchmark), run as its "
            "Dockerfile runs it (`uvicorn aegra_api.main:app`, one process, asyncio loop), "
            "auth off, logs at WARNING, its pools as shipped, on its own fresh database on the "
            "same PostgreSQL server. It serves the same agent as a LangGraph graph "
            "(`bench/aegra_graph.py`: the scripted model, `parse_url` run in-process, where "
            "ours calls the tools service over gRPC) and checkpoints every step with the same "
            "`AsyncPostgresSaver`. Each run is on a new thread id (Aegra creates the thread "
            f"with the run). {args.aegra_runs} sequential runs per path, {args.aegra_total} "
            f"at {n} in flight.",
            "",
            "Aegra's background runs at 100 in flight cannot be joined through its API: its "
            "`GET /threads/{id}/runs/{run_id}/join` holds a pooled database connection for the "
            "whole wait (the request's SQLAlchemy session begins a transaction with its first "
            "SELECT and keeps it while it awaits the run task), so 100 joins in flight need "
            "more than 100 connections; with its pool of 2 the runs starve and the joins fail "
            'after 30 s with "QueuePool limit of size 2 overflow 0 reached" (seen in this '
            "benchmark's first runs), and this server allows 100 connections in all. So each "
            "caller creates its run and the benchmark learns the run's end from Aegra's "
            "`runs` table (one query every 5 ms for all awaited runs, on its own connection, "
            "its CPU not counted): Aegra's process does nothing for the wait, its best case.",
        ]
        if "joined" in peer:
            lines[-1] += (
                " Sequentially its join works: p50 "
                f"{peer['joined']['sequential']['p50_ms']:.2f} ms, against "
                f"{peer['background']['sequential']['p50_ms']:.2f} ms with the table watch."
            )
    if "error" in peer:
        lines += ["", f"Aegra: {peer['error']}"]
    for name, failed in peer.get("failures", {}).items():
        lines += [
            "",
            f"**Aegra's {name} path failed {failed['count']} times** (the runs/s above count "
            f"the failed calls too); the first: `{failed['first']}`.",
        ]
    lines.append("")
    return "\n".join(lines)


async def main() -> None:
    args = options(
        runs=(60, 200),
        total=(300, 900),
        rounds=(3, 3),
        concurrency=(100, 100),
        warmup=(20, 40),
        aegra_runs=(30, 80),
        aegra_total=(150, 300),
    )
    loadavg = os.getloadavg()
    mine, peer = await run_all(args)
    publish(
        "durable",
        {"ours": mine, "aegra": peer, "loadavg": loadavg},
        TITLE,
        report(mine, peer, args, loadavg),
        args.write,
    )


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
