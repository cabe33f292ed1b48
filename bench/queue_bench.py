"""Queue backends benchmark (issue 12): background runs on each run-queue broker — NATS
JetStream, Redis Streams and RabbitMQ quorum queues — side by side in one run.

One nats-server, one registry and tools service, and one executor per backend, each with
its own NATS prefix (so its own queues), its own fresh PostgreSQL database on the
machine's server and `AGENTRT_QUEUE_BACKEND` / `AGENTRT_QUEUE_URL` pointing at a private
broker (the testkit's `RedisServer` and `RabbitServer`; the NATS executor's queue is on
the shared nats-server). Run events stay on NATS for all three (`AGENTRT_BUS_BACKEND`
unset). The agent is the executor benchmark's (the offline model calls `parse_url` once,
then answers). Measured per backend:

- background runs (`StartRun`, then `WaitRun` until done), sequentially and in rounds at
  100 in flight, with their phases (queue-to-start is the run record's `created_at` →
  `started_at`) and the CPU per run of the executor, the broker, nats-server, the tools
  service and the PostgreSQL backends of the executor's database (durable_bench's
  `Runs`, `RunPath`, `CpuMeter` and `measure`);
- the queue adapter alone, in this process: `submit` → delivered to a waiting `pull` (one
  consumer pulling as the executor does) → `ack` confirmed, sequentially and at 100 in
  flight — how much of queue-to-start is the broker.

The paths take turns (sequential calls one of each at a time, throughput in rounds of one
batch per path), so the drift of this shared machine falls on every backend alike.

Usage: python bench/queue_bench.py [--write docs/BENCHMARKS.md] [--quick]
       [--backends nats,redis,rabbitmq]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import uvloop
from bench_support import machine, options, publish, stats
from durable_bench import (
    WAIT_SECONDS,
    CpuMeter,
    RunPath,
    Runs,
    cpu_row,
    database_of,
    measure,
    nats_pid,
    phase_row,
    progress,
    tolerant,
)
from executor_bench import TOKEN, create_agent, executor_process, start_services
from gateway_bench import fresh_database

from agent_executor.adapters.nats_queue import JetStreamRunQueue
from agent_executor.config import Settings
from agentrt.executor.v1 import executor_pb2_grpc as pb_grpc
from agentrt.registry.v1 import registry_pb2_grpc as rpb_grpc
from agentrt_kit.grpc.client import create_channel
from agentrt_kit.nats import Names, NatsClient
from agentrt_testkit.nats_server import NatsServer
from agentrt_testkit.processes import ServiceProcess

TITLE = "## Queue backends (issue 12)"
BACKENDS = ("nats", "redis", "rabbitmq")
LABELS = {"nats": "NATS JetStream", "redis": "Redis Streams", "rabbitmq": "RabbitMQ"}
# The broker's own process: RabbitMQ's start script runs the Erlang VM as its child.
COMMANDS = {"nats": "nats-server", "redis": "redis-server", "rabbitmq": "beam.smp"}
PREFIX = "qbench"
RAW_PREFIX = "qraw"  # the adapters alone: queues of their own on the same brokers
# As the executor's run queue (main.py): redelivery after 30 s, starts counted by the store.
QUEUE_SETTINGS: dict[str, Any] = {
    "ack_wait": 30.0,
    "max_attempts": 5,
    "max_deliver": -1,
    "name": "run",
}
PULL_MAX = 256  # the executor's free slots with nothing running (MAX_CONCURRENT_RUNS)
PULL_SECONDS = 1.0  # the executor's longest pull (QueueSettings.poll_seconds)
IDLE_SECONDS = 5.0


# ------------------------------------------------------------------- brokers


@dataclass
class Broker:
    """A private queue broker: what the executor is told, and its process."""

    backend: str
    pid: int
    url: str = ""  # "" for NATS: the queue is on the executor's NATS connection
    management_url: str | None = None

    def env(self) -> dict[str, str]:
        """The executor's queue settings."""
        env = {"AGENTRT_QUEUE_BACKEND": self.backend}
        if self.url:
            env["AGENTRT_QUEUE_URL"] = self.url
        if self.management_url:
            env["AGENTRT_QUEUE_MANAGEMENT_URL"] = self.management_url
        return env


def process_named(root: int, command: str) -> int:
    """`root` or the first of its descendants running `command` (0: none)."""
    children: dict[int, list[int]] = defaultdict(list)
    commands: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        pid = int(text.split(" ", 1)[0])
        commands[pid] = text[text.index("(") + 1 : text.rindex(")")]
        children[int(text[text.rindex(")") + 2 :].split()[1])].append(pid)
    todo = [root]
    while todo:
        pid = todo.pop(0)
        if commands.get(pid) == command:
            return pid
        todo += children[pid]
    return 0


@contextlib.contextmanager
def brokers(backends: Sequence[str], nats_server: NatsServer) -> Iterator[dict[str, Broker]]:
    """The brokers of `backends`, started (NATS is the shared server), closed on exit."""
    with contextlib.ExitStack() as stack:
        out: dict[str, Broker] = {}
        for backend in backends:
            if backend == "nats":
                server: Any = nats_server
                url, management = "", None
            elif backend == "redis":
                from agentrt_testkit.redis_server import RedisServer

                server = RedisServer().start()
                stack.callback(server.close)
                url, management = server.url(), None
            else:
                from agentrt_testkit.rabbitmq_server import RabbitServer

                progress("starting RabbitMQ ...")
                server = RabbitServer().start()
                stack.callback(server.close)
                url, management = server.url, server.management_url
            # nats_pid reads the testkit's process of any of its servers.
            pid = process_named(nats_pid(server), COMMANDS[backend])
            out[backend] = Broker(backend, pid, url, management)
        yield out


# ------------------------------------------------------------------- the adapter alone


RAW_PHASES = ("submit", "delivered", "ack")


class RawQueue:
    """A queue adapter alone: callers submit, one consumer pulls as the executor's does
    (up to its free slots, waiting up to a second) and acknowledges each delivery.

    A round trip's phases: *submit* is the call (until the broker confirmed it),
    *delivered* from the call until the waiting pull returned the message (the broker
    may hand it over before its confirmation is read), *ack* the confirmed ack.
    """

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self.phases: dict[str, list[float]] = {name: [] for name in RAW_PHASES}
        self.batches: list[int] = []  # messages per pull that returned any
        self._submitted: dict[str, float] = {}
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._acks: set[asyncio.Task[None]] = set()

    async def consume(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            deliveries = await self.queue.pull(PULL_MAX, PULL_SECONDS)
            now = time.perf_counter()
            if deliveries:
                self.batches.append(len(deliveries))
            for delivery in deliveries:
                submitted = self._submitted.pop(delivery.run_id, None)
                if submitted is not None:
                    self.phases["delivered"].append(now - submitted)
                task = asyncio.create_task(self._ack(delivery))
                self._acks.add(task)
                task.add_done_callback(self._acks.discard)

    async def _ack(self, delivery: Any) -> None:
        future = self._waiting.pop(delivery.run_id, None)
        t = time.perf_counter()
        try:
            await delivery.ack()
        except Exception as e:  # the caller's round trip fails with it
            if future is not None and not future.done():
                future.set_exception(e)
            return
        self.phases["ack"].append(time.perf_counter() - t)
        if future is not None and not future.done():
            future.set_result(None)

    async def round_trip(self, _: int) -> None:
        """Submit, until the consumer has pulled it and the broker confirmed its ack."""
        run_id = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self._waiting[run_id] = future
        t = self._submitted[run_id] = time.perf_counter()
        try:
            await self.queue.submit(run_id)
            self.phases["submit"].append(time.perf_counter() - t)
            await asyncio.wait_for(future, WAIT_SECONDS)
        finally:
            self._submitted.pop(run_id, None)
            self._waiting.pop(run_id, None)

    def phase_stats(self) -> dict[str, dict[str, float]]:
        """The phases since the last call."""
        out: dict[str, dict[str, float]] = {
            name: stats(samples) for name, samples in self.phases.items() if samples
        }
        if self.batches:
            out["batch"] = {"mean": statistics.mean(self.batches), "max": max(self.batches)}
        for samples in self.phases.values():
            samples.clear()
        self.batches.clear()
        return out


def adapter(broker: Broker, client: NatsClient) -> Any:
    """The run-queue adapter of `broker`, configured as the executor's run queue."""
    if broker.backend == "nats":
        settings = Settings()  # the executor's defaults: its queue and dead-letter bounds
        return JetStreamRunQueue(
            client,
            Names(RAW_PREFIX),
            limits=settings.queue_limits(),
            dead_letter_limits=settings.dead_letter_limits(),
            **QUEUE_SETTINGS,
        )
    if broker.backend == "redis":
        from agent_executor.adapters.redis_queue import RedisRunQueue

        return RedisRunQueue(broker.url, prefix=RAW_PREFIX, **QUEUE_SETTINGS)
    from agent_executor.adapters.rabbitmq_queue import RabbitRunQueue

    return RabbitRunQueue(
        broker.url, prefix=RAW_PREFIX, management_url=broker.management_url, **QUEUE_SETTINGS
    )


@contextlib.asynccontextmanager
async def raw_queues(
    found: Mapping[str, Broker], nats_url: str
) -> AsyncIterator[dict[str, RawQueue]]:
    """Each broker's adapter, started, with its consumer running."""
    client = NatsClient(nats_url, name="queue-bench")
    await client.start()
    if not await client.wait_connected(10):
        raise RuntimeError("the benchmark could not connect to NATS")
    stop = asyncio.Event()
    consumers: list[asyncio.Task[None]] = []
    queues: list[Any] = []
    try:
        raws: dict[str, RawQueue] = {}
        for backend, broker in found.items():
            queue = adapter(broker, client)
            await queue.start()
            queues.append(queue)
            raws[backend] = RawQueue(queue)
            consumers.append(asyncio.create_task(raws[backend].consume(stop)))
        yield raws
    finally:
        stop.set()
        await asyncio.gather(*consumers, return_exceptions=True)
        for queue in queues:
            await queue.close()
        await client.close()


# ------------------------------------------------------------------- measuring


class RoundMeter(CpuMeter):
    """A CpuMeter that also keeps the duration of each batch it is started and stopped
    around, for the spread of runs/s between rounds."""

    def __init__(self, pids: Mapping[str, int], database: str = "") -> None:
        super().__init__(pids, database)
        self.durations: list[float] = []
        self._t = 0.0

    def start(self) -> None:
        super().start()
        self._t = time.perf_counter()

    def stop(self) -> dict[str, float]:
        self.durations.append(time.perf_counter() - self._t)
        return super().stop()


@dataclass
class Backend:
    """One backend's paths and what was measured of them."""

    broker: Broker
    executor: ServiceProcess
    database_url: str
    runs: Runs | None = None
    raw: RawQueue | None = None
    phases: dict[str, Any] = field(default_factory=dict)
    raw_phases: dict[str, Any] = field(default_factory=dict)
    idle: dict[str, float] = field(default_factory=dict)

    def keep_phases(self, when: str) -> None:
        """Keep the phases since the last call under `when` ("": drop them, the warm-up's)."""
        assert self.runs is not None
        assert self.raw is not None
        runs, raw = self.runs.phase_stats(), self.raw.phase_stats()
        if when:
            self.phases[when], self.raw_phases[when] = runs, raw


async def idle_cpu(backends: Mapping[str, Backend], nats: int) -> None:
    """CPU ms per second of each broker and executor with nothing to do (pull loops,
    timers, statistics) — what a backend costs before any run."""
    meters = {
        name: CpuMeter({"executor": b.executor.pid, "broker": b.broker.pid, "nats": nats})
        for name, b in backends.items()
    }
    for meter in meters.values():
        meter.start()
    await asyncio.sleep(IDLE_SECONDS)
    for name, meter in meters.items():
        used = meter.stop()
        backends[name].idle = {
            k: round(v * 1000 / IDLE_SECONDS, 1) for k, v in used.items() if k != "client"
        }


def with_total(r: dict[str, Any]) -> dict[str, Any]:
    """The CPU per run of every service process summed (not the load generator)."""
    cpu = r["concurrent"]["cpu_ms_per_run"]
    cpu["total"] = round(sum(v for k, v in cpu.items() if k != "client"), 2)
    return r


def rounds_of(path: RunPath) -> list[float]:
    meter = path.meter
    assert isinstance(meter, RoundMeter)
    return [round(path.batch / d, 1) for d in meter.durations]


async def run_all(args: argparse.Namespace, counted: dict[str, Any]) -> dict[str, Any]:
    """Start everything, measure every backend in turns; the results by backend.

    A call that fails is counted in `counted["failures"]` by path (the first error kept),
    not raised.
    """
    # One stack, unwound in reverse: the services stop before their databases are dropped
    # and their brokers closed.
    with contextlib.ExitStack() as stack:
        nats_server = NatsServer().start()
        stack.callback(nats_server.close)
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        found = stack.enter_context(brokers(args.backends, nats_server))
        databases = {
            name: stack.enter_context(fresh_database(f"qbench_{name}"))
            for name in ("tools", *found)
        }
        progress("starting registry, tools and an executor per backend ...")
        registry, tools = start_services(
            tmp, nats_server.url, PREFIX, executors=0, tools_database_url=databases["tools"]
        )
        stack.callback(registry.stop)
        stack.callback(tools.stop)
        backends: dict[str, Backend] = {}
        for n, (name, broker) in enumerate(found.items()):
            # The first executor shares the registry's prefix: it publishes the template
            # catalogue the registry checks new agents against.
            executor = executor_process(
                n,
                tmp,
                nats_server.url,
                PREFIX if n == 0 else f"{PREFIX}-{name}",
                registry,
                tools,
                database_url=databases[name],
                env=broker.env(),
            )
            executor.start()
            stack.callback(executor.stop)
            backends[name] = Backend(broker, executor, databases[name])
        await asyncio.sleep(1.0)  # let everything settle (imports, first publications)
        async with grpc.aio.insecure_channel(registry.address) as rc:
            agent_id = await create_agent(rpb_grpc.AgentRegistryStub(rc), toolsets=["parse_url"])
        nats = nats_pid(nats_server)
        progress(f"idle CPU over {IDLE_SECONDS:g} s ...")
        await idle_cpu(backends, nats)
        async with (
            contextlib.AsyncExitStack() as channels,
            raw_queues(found, nats_server.url) as raws,
        ):
            paths: dict[str, RunPath] = {}
            for name, b in backends.items():
                channel = await channels.enter_async_context(
                    create_channel(b.executor.address, service_token=TOKEN, default_timeout=60)
                )
                b.runs = Runs(pb_grpc.ExecutorStub(channel), None, "", agent_id)
                b.raw = raws[name]
                pids = {"executor": b.executor.pid, "broker": b.broker.pid, "tools": tools.pid}
                if name != "nats":  # NATS: one process is the queue and the event bus
                    pids["nats"] = nats
                paths[f"{name}_runs"] = RunPath(
                    tolerant(b.runs.background, counted, f"{name}_runs"),
                    args.runs,
                    args.total // args.rounds,
                    RoundMeter(pids, database_of(b.database_url)),
                )
                paths[f"{name}_raw"] = RunPath(
                    tolerant(b.raw.round_trip, counted, f"{name}_raw"),
                    args.raw_runs,
                    args.raw_total // args.rounds,
                    RoundMeter({"broker": b.broker.pid}),
                )

            marks: dict[str, Counter[str]] = {}

            def keep_phases(when: str) -> None:
                for b in backends.values():
                    b.keep_phases(when)
                marks[when or "warmup"] = Counter(
                    {path: f["count"] for path, f in counted.get("failures", {}).items()}
                )

            measured = await measure(
                paths,
                args,
                after_warmup=lambda: keep_phases(""),
                after_sequential=lambda: keep_phases("sequential"),
            )
            keep_phases("concurrent")
        return {
            name: {
                "runs": with_total(
                    {**measured[f"{name}_runs"], "rounds_runs_s": rounds_of(paths[f"{name}_runs"])}
                ),
                "raw": {
                    **measured[f"{name}_raw"],
                    "rounds_runs_s": rounds_of(paths[f"{name}_raw"]),
                },
                "phases": b.phases,
                "raw_phases": b.raw_phases,
                "idle_cpu_ms_per_s": b.idle,
                "failed": {
                    kind: {
                        "sequential": (marks["sequential"] - marks["warmup"])[f"{name}_{kind}"],
                        "concurrent": (marks["concurrent"] - marks["sequential"])[f"{name}_{kind}"],
                    }
                    for kind in ("runs", "raw")
                },
            }
            for name, b in backends.items()
        }


# ------------------------------------------------------------------- report


def ms(s: Mapping[str, float]) -> str:
    return f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f}"


def spread(rounds: Sequence[float]) -> str:
    return f"{min(rounds):.0f}–{max(rounds):.0f}"


def ratio_cell(value: float, base: float, unit: str, baseline: bool) -> str:
    text = f"{value:.2f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return text if baseline else f"{text} (**{value / base:.2f}×**)"


def calls(args: argparse.Namespace, kind: str, when: str) -> int:
    """How many calls a path makes sequentially or under load."""
    if when == "sequential":
        return int(args.runs if kind == "runs" else args.raw_runs)
    total = args.total if kind == "runs" else args.raw_total
    return int(total // args.rounds * args.rounds)


def failed_mark(r: Mapping[str, Any], kind: str) -> str:
    """A note on a throughput cell whose calls failed (they count as made)."""
    failed = r["failed"][kind]["concurrent"]
    return f" ({failed} failed)" if failed else ""


def metrics(r: Mapping[str, Any]) -> dict[str, float]:
    """The figures the comparison table shows, of one backend."""
    runs, raw, phases = r["runs"], r["raw"], r["phases"]
    return {
        "run_p50": runs["sequential"]["p50_ms"],
        "queue_p50": phases["sequential"]["queue"]["p50_ms"],
        "runs_s": runs["concurrent"]["runs_s"],
        "load_queue_p50": phases["concurrent"]["queue"]["p50_ms"],
        "raw_p50": raw["sequential"]["p50_ms"],
        "raw_s": raw["concurrent"]["runs_s"],
        "cpu": runs["concurrent"]["cpu_ms_per_run"]["total"],
    }


# The comparison's rows: the figure, its label, its unit, and the calls it is made of.
ROWS = (
    ("run_p50", "background run, sequential p50", "ms", "runs", "sequential"),
    ("queue_p50", "queue-to-start, sequential p50", "ms", "runs", "sequential"),
    ("runs_s", "background runs/s at {n} in flight", "runs/s", "runs", "concurrent"),
    ("load_queue_p50", "queue-to-start p50 at {n} in flight", "ms", "runs", "concurrent"),
    ("raw_p50", "adapter alone: submit → pull → ack, sequential p50", "ms", "raw", "sequential"),
    ("raw_s", "adapter alone: messages/s at {n} in flight", "msg/s", "raw", "concurrent"),
    ("cpu", "CPU per run at {n} in flight, all services", "ms", "runs", "concurrent"),
)


def broker_part(r: Mapping[str, Any], when: str) -> float:
    """p50 of what the broker adds to queue-to-start: from the submit to the delivery."""
    return float(r["raw_phases"][when]["delivered"]["p50_ms"])


def overlap(rounds: Sequence[float], base_rounds: Sequence[float]) -> bool:
    """Whether two paths' slowest-to-fastest rounds overlap."""
    return min(rounds) <= max(base_rounds) and min(base_rounds) <= max(rounds)


def where_the_time_goes(results: Mapping[str, Any], n: int) -> list[str]:
    """Sentences read off the numbers: each says what was measured, nothing assumed."""
    out = [
        "Queue-to-start spans the `queued` record's insert into PostgreSQL (`created_at` is "
        "read before it), the submit to the broker and the delivery to the executor's "
        "waiting pull (`started_at` is read before the claim); the adapter alone measures "
        "the broker's part of it, from the submit to the delivery. The ack is paid at the "
        "run's end, outside it.",
        "",
    ]
    names = list(results)
    first = results[names[0]]
    for name, r in results.items():
        m = metrics(r)
        raw = r["raw_phases"]
        con = r["phases"]["concurrent"]
        cpu = r["runs"]["concurrent"]["cpu_ms_per_run"]
        part = broker_part(r, "sequential")
        cores = cpu["executor"] * m["runs_s"] / 1000
        text = (
            f"- **{LABELS[name]}.** Alone, queue-to-start is {m['queue_p50']:.2f} ms p50, of "
            f"which the broker's submit-to-delivery {part:.2f} ms ({part / m['queue_p50']:.0%}; "
            f"the submit's confirmation alone {raw['sequential']['submit']['p50_ms']:.2f} ms). "
            f"At {n} in flight it is {m['load_queue_p50']:.0f} ms p50 "
            f"({con['queue']['p99_ms']:.0f} p99), with the `StartRun` call "
            f"{con['start_run_call']['p50_ms']:.0f} ms and the run {con['run']['p50_ms']:.0f} ms; "
            f"the executor spends {cpu['executor']:.1f} ms of CPU per run, {cores:.2f} of a "
            f"core at its {m['runs_s']:.0f} runs/s"
        )
        raw_failed = r["failed"]["raw"]["concurrent"]
        raw_cpu = r["raw"]["concurrent"]["cpu_ms_per_run"]
        if raw_failed:
            text += (
                f". The adapter alone could not be measured at {n} in flight: {raw_failed} "
                "of those calls failed (below)."
            )
        else:
            text += (
                f", while the adapter alone moves {m['raw_s']:.0f} messages/s "
                f"({m['raw_s'] / m['runs_s']:.0f}× that), "
                f"{raw['concurrent'].get('batch', {}).get('mean', 0):.1f} per pull, for "
                f"{raw_cpu['broker']:.3f} ms of broker CPU and {raw_cpu['client']:.3f} ms in "
                "this process (the adapter's client library and the load generator) per "
                f"message: {raw_cpu['broker'] * m['raw_s'] / 1000:.2f} and "
                f"{raw_cpu['client'] * m['raw_s'] / 1000:.2f} of a core at that rate."
            )
            if m["raw_s"] >= 5 * m["runs_s"]:
                text += (
                    " At this load runs wait for the executor (its CPU, on cores it shares), "
                    "not for the broker."
                )
        out.append(text)
    base = metrics(first)
    base_con = first["phases"]["concurrent"]
    for name in names[1:]:
        r, m = results[name], metrics(results[name])
        cpu, base_cpu = (x["runs"]["concurrent"]["cpu_ms_per_run"] for x in (results[name], first))
        same = overlap(r["runs"]["rounds_runs_s"], first["runs"]["rounds_runs_s"])
        verdict = (
            "within the spread of the rounds, so not told apart on this machine"
            if same
            else "outside the spread of the rounds"
        )
        con = r["phases"]["concurrent"]
        out.append(
            f"- **{LABELS[name]} against {LABELS[names[0]]}**: {m['runs_s']:.1f} against "
            f"{base['runs_s']:.1f} runs/s at {n} in flight ({m['runs_s'] / base['runs_s']:.2f}×, "
            f"{verdict}). Alone, queue-to-start differs by "
            f"{m['queue_p50'] - base['queue_p50']:+.2f} ms p50 and the broker's "
            "submit-to-delivery by "
            f"{broker_part(r, 'sequential') - broker_part(first, 'sequential'):+.2f} ms. At "
            f"{n} in flight the `StartRun` call and queue-to-start are "
            f"{con['start_run_call']['p50_ms']:.0f} and {con['queue']['p50_ms']:.0f} ms p50 "
            f"against {base_con['start_run_call']['p50_ms']:.0f} and "
            f"{base_con['queue']['p50_ms']:.0f}"
            + (
                " (they trade places: both wait on the same busy executor)"
                if (con["start_run_call"]["p50_ms"] - base_con["start_run_call"]["p50_ms"])
                * (con["queue"]["p50_ms"] - base_con["queue"]["p50_ms"])
                < 0
                else ""
            )
            + ". Per run the executor's CPU differs by "
            f"{cpu['executor'] - base_cpu['executor']:+.2f} ms and all services' by "
            f"{cpu['total'] - base_cpu['total']:+.2f} ms (the broker {cpu['broker']:.2f} ms "
            f"against {base_cpu['broker']:.2f}, plus {cpu.get('nats', 0.0):.2f} ms of "
            "nats-server for the run events)."
        )
    return out


def report(
    results: dict[str, Any],
    failures: Mapping[str, Any],
    args: argparse.Namespace,
    loadavg: tuple[float, float, float],
) -> str:
    info = machine()
    n = args.concurrency
    names = list(results)
    base = metrics(results[names[0]])
    lines = [
        TITLE,
        "",
        f"Measured {info['date']} on {info['cores']} cores ({info['cpu']}), Python "
        f"{info['python']}; load average {loadavg[0]:.1f} / {loadavg[1]:.1f} / "
        f"{loadavg[2]:.1f} when the run began. **The machine is shared**: other sessions' "
        "work ran on the same two cores during the run, and the brokers, services and "
        "load generator all share them too; the backends took turns so that drift falls "
        "on each alike, and the ratios carry less of it than the absolute numbers.",
        "Reproduce: `make bench` (or `python bench/queue_bench.py --write docs/BENCHMARKS.md`;"
        " `--backends nats,redis` for a subset).",
        "The agent is the executor benchmark's (the offline model calls `parse_url` once, "
        "then answers). One nats-server, one registry and tools service, and one executor "
        "per backend (`AGENTRT_QUEUE_BACKEND`, `AGENTRT_QUEUE_URL`), each with its own NATS "
        "prefix and its own fresh PostgreSQL database (run records, checkpoints at every "
        "step). The brokers run as the testkit runs them, on this machine's disk: JetStream "
        "file storage on that nats-server, which confirms a message once written, not "
        "synced (it syncs its store every 2 minutes by default, `sync_interval`); a private "
        "Redis with its append-only file fsynced on every write (`appendfsync always`, "
        "what the Redis adapter's docs ask for a crash to lose nothing), so every submit "
        "and ack waits for an fsync; a private RabbitMQ node (quorum queues, which confirm "
        "once their log is synced; the management plugin on, with statistics every 100 ms "
        "instead of every 5 s as the testkit sets it for its tests — it shows in the idle "
        "CPU). The brokers do not promise the same durability, and that is part of what is "
        "measured. Run events travel on NATS for all three. A background run is "
        f"`StartRun`, then `WaitRun` until done: {args.runs} sequential runs per backend, "
        f"then {args.total} at {n} in flight in {args.rounds} rounds. *Adapter alone* is the "
        "executor's queue adapter in this process, configured as the run queue: submit, "
        "handed to a consumer already waiting in `pull` (as the executor's is), "
        f"acknowledged and confirmed; {args.raw_runs} sequential, {args.raw_total} at {n} "
        "in flight.",
        "",
        f"Against {LABELS[names[0]]} (the baseline), in the same run — lower is better "
        "for ms, higher for /s:",
        "",
        "| | "
        + " | ".join(LABELS[b] + (" (baseline)" if b == names[0] else "") for b in names)
        + " |",
        "|---|" + "---|" * len(names),
    ]
    all_metrics = {b: metrics(results[b]) for b in names}
    for key, label, unit, kind, when in ROWS:
        cells = [
            f"**{failed} of {calls(args, kind, when)} failed**"
            if (failed := results[b]["failed"][kind][when])
            else ratio_cell(all_metrics[b][key], base[key], unit, b == names[0])
            for b in names
        ]
        lines.append(f"| {label.format(n=n)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Background runs (`StartRun` + `WaitRun`), p50 / p99 ms; runs/s at "
        f"{n} in flight over all rounds, and the slowest–fastest round:",
        "",
        f"| backend | sequential | sequential runs/s | {n} in flight runs/s | rounds | "
        "p50 / p99 under that load |",
        "|---|---|---|---|---|---|",
    ]
    for b in names:
        r = results[b]["runs"]
        lines.append(
            f"| {LABELS[b]} | {ms(r['sequential'])} | {r['sequential']['ops_s']:.0f} | "
            f"**{r['concurrent']['runs_s']:.1f}**{failed_mark(results[b], 'runs')} | "
            f"{spread(r['rounds_runs_s'])} | "
            f"{r['concurrent']['p50_ms']:.0f} / {r['concurrent']['p99_ms']:.0f} |"
        )
    lines += [
        "",
        "Where a background run's time goes, p50 / p99 ms (durable_bench's phases: "
        "*StartRun* is the call; *queue* is queue-to-start, `created_at` → `started_at`; "
        "*run* is `started_at` → `finished_at`; *end → answer* until `WaitRun` answered):",
        "",
        "| | StartRun | queue | run | end → answer |",
        "|---|---|---|---|---|",
    ]
    for when, label in (("sequential", "sequential"), ("concurrent", f"{n} in flight")):
        lines += [phase_row(f"{LABELS[b]}, {label}", results[b]["phases"][when]) for b in names]
    lines += [
        "",
        "The queue adapter alone (this process's client: submit → handed to the waiting "
        "pull → ack confirmed), p50 / p99 ms; sequentially also its parts — *submit* the "
        "call until the broker confirmed it, *delivered* from the call until the waiting "
        "pull returned the message (what the broker adds to queue-to-start), *ack* the "
        "confirmed ack:",
        "",
        f"| backend | sequential | submit | delivered | ack | {n} in flight msg/s | rounds | "
        "p50 / p99 under that load | messages per pull | CPU per message, ms: broker / this "
        "process |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in names:
        r, parts = results[b]["raw"], results[b]["raw_phases"]["sequential"]
        per_pull = results[b]["raw_phases"]["concurrent"].get("batch", {})
        cpu = r["concurrent"]["cpu_ms_per_run"]
        if failed := results[b]["failed"]["raw"]["concurrent"]:
            under_load = (
                f"**{failed} of {calls(args, 'raw', 'concurrent')} failed** | — | — | — | —"
            )
        else:
            under_load = (
                f"**{r['concurrent']['runs_s']:.0f}** | {spread(r['rounds_runs_s'])} | "
                f"{r['concurrent']['p50_ms']:.1f} / {r['concurrent']['p99_ms']:.1f} | "
                f"{per_pull.get('mean', 0):.1f} | {cpu['broker']:.3f} / {cpu['client']:.3f}"
            )
        lines.append(
            f"| {LABELS[b]} | {ms(r['sequential'])} | "
            + " | ".join(ms(parts[p]) for p in RAW_PHASES)
            + f" | {under_load} |"
        )
    columns = ["executor", "broker", "nats", "tools", "postgres", "total", "client"]
    lines += [
        "",
        f"CPU per background run at {n} in flight, ms (from /proc: *broker* is the queue "
        "broker's process — for NATS it is the one nats-server, carrying the queue and the "
        "run events, so its *nats* cell is empty; *nats* is nats-server for the events of "
        "the other two; *postgres* the backends of the executor's database; *total* the "
        "service processes summed; *client* this process, the load generator), and idle "
        f"CPU before any run, ms per second over {IDLE_SECONDS:g} s (pull loops, timers, the "
        "broker's own housekeeping):",
        "",
        "| backend | " + " | ".join(columns) + " | idle executor | idle broker |",
        "|---|" + "---|" * (len(columns) + 2),
    ]
    for b in names:
        idle = results[b]["idle_cpu_ms_per_s"]
        lines.append(
            cpu_row(LABELS[b], results[b]["runs"], columns)
            + f" {idle['executor']:.1f} | {idle['broker']:.1f} |"
        )
    lines += ["", "Where the time goes (from the numbers above):", ""]
    lines += where_the_time_goes(results, n)
    for path, failed in failures.items():
        backend, kind = path.split("_")
        what = "background runs" if kind == "runs" else "adapter round trips"
        split = results[backend]["failed"][kind]
        warmup = failed["count"] - split["sequential"] - split["concurrent"]
        lines += [
            "",
            f"**{failed['count']} {what} on {LABELS[backend]} failed** ({split['sequential']} "
            f"sequential, {split['concurrent']} at {n} in flight"
            + (f", {warmup} in the warm-up" if warmup else "")
            + "; "
            + ("the figures above count them as runs made" if kind == "runs" else "left out above")
            + "); the first: "
            f"`{failed['first']}`.",
        ]
        if "MaxConnectionsError" in failed["first"]:
            lines[-1] += (
                " redis-py 8's asyncio connection pool holds at most 100 connections unless "
                "told otherwise and raises rather than waits when they are all in use; the "
                "adapter takes one for each command in flight and one for its blocking read, "
                f"and with {n} messages in flight, each being submitted, read or "
                "acknowledged, the pool runs out."
            )
    lines.append("")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated, the first is the baseline (default: nats,redis,rabbitmq)",
    )
    args = options(
        parser,
        runs=(30, 150),
        total=(300, 1000),
        rounds=(3, 5),
        concurrency=(100, 100),
        warmup=(10, 30),
        raw_runs=(200, 1000),
        raw_total=(1500, 5000),
    )
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - set(BACKENDS)
    if unknown or not args.backends:
        parser.error(f"--backends: choose from {', '.join(BACKENDS)}")
    loadavg = os.getloadavg()
    counted: dict[str, Any] = {}  # durable_bench's `tolerant` keeps them under "failures"
    results = await run_all(args, counted)
    failures = counted.get("failures", {})
    publish(
        "queue",
        {"backends": results, "loadavg": loadavg, "failures": failures},
        TITLE,
        report(results, failures, args, loadavg),
        args.write,
    )


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
