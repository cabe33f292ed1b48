"""`make soak`: the whole stack as `make run` starts it, under steady mixed load through the
gateway for a while, then four checks; exit 1 naming each one that failed.

The stack is scripts/dev.py in a temporary root (its own ./var and ./plugins) on free
ports, with JSON logs; every process carrying that root in its environment is gone when
this script ends (dev.py stops its children; what is left is killed). `--minutes`
(default 10; `SOAK_MINUTES=2 make soak` in CI) of load from `--concurrency` workers with
seeded randomness (`--seed`), each repeating one of these, chosen by weight:

- a turn on one of `--sessions` conversations with server-side memory (two agents; one
  turn at a time per conversation, `--turns` turns each, then a new conversation takes
  its place): a chat completion, a streamed one, or a background run (`POST /v1/runs`,
  joined with `/wait`, its events read back half the time);
- a chat completion on an agent without memory that calls the tools service (`parse_url`);
- an agent's life: create, read, update, list, delete;
- a read: health, models, runs, templates, an agent's history.

Any 5xx or transport error is a failed request, and so is any other status than the one
the request must get (the load is all valid: a 4xx is unexpected), or an answer whose run
did not succeed.

The checks:
(a) **RSS flat**: for every process of the stack (nats-server, the four services and
    dev.py), sampled from /proc/<pid>/status every `--sample-seconds`, the median RSS of
    the last fifth of the run's second half is at most 10 % above the median of the first
    fifth of the second half (the first half is warm-up; medians of fifths are not moved
    by a single spike). A process that shrinks passes. nats-server may also grow by the
    write caches it is still filling, bounded by one message block per stream written to
    (`nats_write_caches_kb`); past ~12 minutes it is flat within the 10 % alone.
(b) **No error log lines**: in every service's log (dev.py's output, where the services
    log, and nats-server's log file), from start-up through a graceful stop: records at
    ERROR or CRITICAL, any traceback, a nats-server `[ERR]`/`[FTL]` line, and dev.py
    reporting that a process exited.
(c) **Storage within bounds**: every JetStream stream's bytes at most its `max_bytes`
    as the server reports its configuration (a stream without one, bounded only by its
    `max_age`, is reported as such and passes), and the checkpoints of every session
    thread in the executor's checkpointer at most `AGENTRT_EXECUTOR_SESSION_CHECKPOINTS_KEPT`
    (the executor's setting, read by name: its environment, else the setting's default;
    an executor without the setting fails the check), read once the load has stopped.
(d) **No failed requests**.

`--write docs/BENCHMARKS.md` puts the summary in its "Soak" section (bench/bench_support.py).
The temporary root is removed unless a check failed or `--keep` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))
from bench_support import machine, publish  # noqa: E402
from dev import die_with_parent  # noqa: E402

from agentrt_testkit.ports import free_port  # noqa: E402

TITLE = "## Soak (issue 13)"
RSS_GROWTH_LIMIT = 0.10
KEPT_SETTING = "AGENTRT_EXECUTOR_SESSION_CHECKPOINTS_KEPT"
UP = 120.0  # seconds for the stack to come up
STOP = 60.0  # for dev.py to stop it (its own grace is 15 s a process)
SETTLE = 5.0  # after the load, before storage is read: background pruning may lag a run
MODULES = {
    "agent_registry": "agent-registry",
    "tool_service": "tools",
    "agent_executor": "executor",
    "agent_gateway": "gateway",
}
WORDS = [
    *("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"),
    *("juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo"),
    *("sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu"),
]


# ------------------------------------------------------------------ pure parts (tested)


@dataclass(frozen=True)
class Flatness:
    """How a process's RSS moved over the second half of the run."""

    first: float  # median RSS of the first fifth of the second half, kB
    last: float  # median RSS of the last fifth of the second half, kB
    allowance: float = 0.0  # kB of bounded caches the process may still be filling

    @property
    def growth(self) -> float:
        """Relative growth from `first` to `last` (0.05 is 5 %)."""
        return self.last / self.first - 1 if self.first else 0.0

    @property
    def flat(self) -> bool:
        """Whether it grew no more than `RSS_GROWTH_LIMIT`, plus its allowance (shrinking is
        flat)."""
        return self.last <= self.first * (1 + RSS_GROWTH_LIMIT) + self.allowance


def flatness(second_half: Sequence[float], allowance: float = 0.0) -> Flatness:
    """Compare the median of the first fifth of `second_half` with that of its last fifth.

    Raises:
        ValueError: no samples.
    """
    if not second_half:
        raise ValueError("no samples")
    window = max(1, len(second_half) // 5)
    return Flatness(
        statistics.median(second_half[:window]),
        statistics.median(second_half[-window:]),
        allowance,
    )


def nats_write_caches_kb(stream_info: Sequence[dict[str, Any]]) -> float:
    """The most nats-server's write caches can still hold beyond the 10 %, in kB.

    JetStream keeps the message block a stream is writing in memory, up to the block size
    (8 MiB for a `max_bytes` above 32 MiB, else 4 MiB), so each written stream's cache
    fills for minutes at a soak's rates before it stays level (measured: flat +0.8 % over
    the second half of a 25-minute soak, +19 % over a 10-minute one, +37 % over a 2-minute
    one). Its buffer grows by reallocation, so a stream that holds less than a block can
    still cost one. Bounded, not a leak: one block per stream written to.
    """
    total = 0.0
    for stream in stream_info:
        if stream["bytes"] > 0:
            big = stream["max_bytes"] > 32 * 1024 * 1024
            total += (8 if big else 4) * 1024
    return total


TEXT_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d+ (?P<level>[A-Z]+)\s+(?P<service>\S+) ")
NATS_RECORD = re.compile(r"\[(?P<level>INF|DBG|TRC|WRN|ERR|FTL)\]")
EXITED = re.compile(r"^(?P<name>\S+) (exited \(code|did not become healthy)")


@dataclass(frozen=True)
class LogLine:
    """What a log line is: where it came from and whether it counts as an error."""

    source: str  # the service, `nats`, or `dev.py` (dev.py's lines and raw output)
    error: bool
    warning: bool = False


def classify(line: str, source: str = "dev.py") -> LogLine:
    """Classify one line of a service log: a JSON record, a text record, a nats-server
    line, dev.py's own line, or raw output (a traceback printed outside logging).

    Errors: records at ERROR or CRITICAL, anything carrying a traceback, nats-server
    `[ERR]`/`[FTL]`, and dev.py reporting that a process exited or never became healthy.
    """
    traceback = "Traceback (most recent call last)" in line
    level = None
    if line.startswith("{"):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "level" in record:
                level, source = str(record["level"]).upper(), str(record.get("service") or source)
    elif m := TEXT_RECORD.match(line):
        level, source = m["level"], m["service"]
    if level is not None:
        error = level in ("ERROR", "CRITICAL") or traceback
        return LogLine(source, error, not error and level == "WARNING")
    if source == "nats" and (m := NATS_RECORD.search(line)):
        return LogLine("nats", m["level"] in ("ERR", "FTL"), m["level"] == "WRN")
    if EXITED.match(line):
        return LogLine(source, True)
    return LogLine(source, traceback)


def process_name(argv: Sequence[str]) -> str:
    """A stack process's name from its command line (`nats`, `gateway`, `dev.py`, ...)."""
    if not argv:
        return "?"
    if "-m" in argv[:-1]:
        module = argv[argv.index("-m") + 1]
        return MODULES.get(module, module)
    for arg in argv[:2]:
        name = Path(arg).name
        if name == "nats-server":
            return "nats"
        if name.endswith(".py"):
            return name
    return Path(argv[0]).name


# ------------------------------------------------------------------ the stack


def marked(marker: bytes) -> list[int]:
    """Every live process whose environment holds `marker`."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def proc_argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def rss_kb(pid: int) -> int | None:
    """VmRSS of `pid` in kB; None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


@dataclass
class Stack:
    """dev.py in a temporary root on free ports; its output file; the URLs it serves."""

    root: Path
    token: str
    ports: dict[str, int]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def marker(self) -> bytes:
        return f"AGENTRT_DEV_ROOT={self.root}".encode()

    @property
    def out(self) -> Path:
        return self.root / "dev.out"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['GATEWAY']}"

    def nats_url(self) -> str:
        m = re.search(r"^\s*NATS\s+(nats://\S+)", self.out.read_text(errors="replace"), re.M)
        if not m:
            raise RuntimeError("dev.py did not say where NATS is")
        return m[1]

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRT_")}
        env.pop("RUNTIME_TOKEN", None)
        env["AGENTRT_DEV_ROOT"] = str(self.root)
        env["AGENTRT_RUNTIME_TOKEN"] = self.token
        env["AGENTRT_LOG_FORMAT"] = "json"  # one record a line, naming its service
        # The soak measures a stack under sustained load, not the rate limiter (its own tests
        # do): all its workers share one token, and on a fast run they send about the default
        # 100 requests a second per key, which would turn the run into 429s.
        env["AGENTRT_GATEWAY_RATE_LIMIT_PER_SECOND"] = "2000"
        env["AGENTRT_GATEWAY_RATE_LIMIT_BURST"] = "4000"
        env["AGENTRT_GATEWAY_ADDRESS_RATE_LIMIT_PER_SECOND"] = "2000"
        env["AGENTRT_GATEWAY_ADDRESS_RATE_LIMIT_BURST"] = "4000"
        env.update({f"AGENTRT_{name}_PORT": str(port) for name, port in self.ports.items()})
        with self.out.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "scripts" / "dev.py")],
                env=env,
                cwd=ROOT,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - dev.py stops with this script
            )
        deadline = time.monotonic() + UP
        while "Agent Runtime is up" not in self.out.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.out.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the stack did not come up:\n{tail}")
            time.sleep(0.2)

    def stop(self) -> bool:
        """Stop dev.py gracefully (it stops its children in order), then kill whatever
        still carries the root; whether the graceful stop was enough."""
        graceful = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP)
            except subprocess.TimeoutExpired:
                graceful = False
        left = marked(self.marker)
        graceful = graceful and not left
        for pid in {*left, *([self.proc.pid] if self.proc else [])}:
            for kill in (os.killpg, os.kill):  # its group (each child leads one), then it
                with contextlib.suppress(OSError):
                    kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        return graceful

    def logs(self) -> Iterator[tuple[str, str]]:
        """(source, line) of every log line: dev.py's output, then nats-server's log."""
        with self.out.open(errors="replace") as f:
            for line in f:
                yield "dev.py", line.rstrip("\n")
        nats_log = self.root / "var" / "nats" / "nats-server.log"
        if nats_log.exists():
            with nats_log.open(errors="replace") as f:
                for line in f:
                    yield "nats", line.rstrip("\n")


@dataclass
class Sampler:
    """RSS of every process of the stack, over time."""

    marker: bytes
    series: dict[int, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    names: dict[int, str] = field(default_factory=dict)

    def sample(self, t: float) -> None:
        for pid in marked(self.marker):
            if pid not in self.names:
                self.names[pid] = process_name(proc_argv(pid))
            if (rss := rss_kb(pid)) is not None:
                self.series[pid].append((t, rss))

    def label(self, pid: int) -> str:
        name = self.names.get(pid, "?")
        same = [p for p, n in self.names.items() if n == name]
        return name if len(same) == 1 else f"{name} ({pid})"


# ------------------------------------------------------------------ the load


@dataclass
class Tally:
    """Requests by kind: how many, how many failed, their latencies; failure examples."""

    count: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    examples: list[str] = field(default_factory=list)
    turns: list[int] = field(default_factory=list)  # per conversation slot, at the end
    conversations: int = 0

    def record(self, kind: str, elapsed: float, problem: str | None) -> None:
        self.count[kind] += 1
        self.seconds[kind].append(elapsed)
        if problem is not None:
            self.failed[kind] += 1
            if len(self.examples) < 20:
                self.examples.append(f"{kind}: {problem}")


@dataclass
class Session:
    """One conversation slot: a conversation, replaced by a new one after `limit` turns."""

    agent: str
    task: str
    limit: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    turns: int = 0
    conversations: int = 1

    def next_turn(self, rng: random.Random) -> None:
        """Count the turn just taken; start a new conversation once this one is full."""
        self.turns += 1
        if self.turns % self.limit == 0:
            self.task = f"{self.task.rsplit('-', 1)[0]}-{rng.randrange(16**8):08x}"
            self.conversations += 1


class Failed(Exception):
    """A request failed; it is tallied already."""


class Load:
    """The workers' shared state and the operations they repeat."""

    def __init__(self, client: httpx.AsyncClient, tally: Tally) -> None:
        self.client = client
        self.tally = tally
        self.sessions: list[Session] = []
        self.tool_agent = ""
        self.serial = 0

    async def call(
        self, kind: str, method: str, path: str, expect: int, **kwargs: Any
    ) -> httpx.Response:
        start = time.perf_counter()
        problem = None
        try:
            reply = await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            self.tally.record(kind, time.perf_counter() - start, f"{type(e).__name__}: {e}")
            raise Failed from None
        if reply.status_code != expect:
            problem = f"{method} {path} -> {reply.status_code} {reply.text[:300]}"
        self.tally.record(kind, time.perf_counter() - start, problem)
        if problem:
            raise Failed
        return reply

    def bad(self, kind: str, problem: str) -> None:
        """An answer that came with the right status but says the run did not succeed."""
        self.tally.failed[kind] += 1
        if len(self.tally.examples) < 20:
            self.tally.examples.append(f"{kind}: {problem}")
        raise Failed

    async def stream(self, kind: str, path: str, **kwargs: Any) -> list[str]:
        """The `data:`/`event:` lines of an SSE answer (200 expected), read to its end."""
        start = time.perf_counter()
        lines: list[str] = []
        problem = None
        method = "POST" if "json" in kwargs else "GET"
        try:
            async with self.client.stream(method, path, **kwargs) as reply:
                if reply.status_code != 200:
                    await reply.aread()
                    problem = f"{path} -> {reply.status_code} {reply.text[:300]}"
                else:
                    async for line in reply.aiter_lines():
                        if line.startswith(("data:", "event:")):
                            lines.append(line)
        except httpx.HTTPError as e:
            problem = f"{type(e).__name__}: {e}"
        self.tally.record(kind, time.perf_counter() - start, problem)
        if problem:
            raise Failed
        return lines

    async def prepare(self, sessions: int, turns: int, rng: random.Random) -> None:
        """The agents and conversations the turns use; waits for the template catalogue."""
        tools = {
            "name": "soak-tools",
            "template_id": "conversation",
            "toolsets": ["custom"],
            "status": "active",
        }
        deadline = time.monotonic() + 60
        # The registry validates templates against the catalogue the executor publishes,
        # which it may not have read yet.
        while (reply := await self.client.post("/v1/agents", json=tools)).status_code != 201:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no agent could be created in 60 s: {reply.status_code} {reply.text}"
                )
            await asyncio.sleep(0.5)
        self.tool_agent = reply.json()["agent_id"]
        memory = []
        for name in ("soak-memory-a", "soak-memory-b"):
            reply = await self.call(
                "agent.create",
                "POST",
                "/v1/agents",
                201,
                json={
                    "name": name,
                    "template_id": "conversation",
                    "system_prompt": "You remember the conversation.",
                    "conversation_config": {"memory": True, "historyLength": 20},
                    "status": "active",
                },
            )
            memory.append(reply.json()["agent_id"])
        self.sessions = [
            Session(memory[i % len(memory)], f"soak-{i}-{rng.randrange(16**8):08x}", turns)
            for i in range(sessions)
        ]

    # -- operations

    async def turn(self, rng: random.Random, how: str) -> None:
        """One turn of a conversation with memory: `chat`, `chat.stream` or `run`."""
        session = rng.choice(self.sessions)
        text = " ".join(rng.choices(WORDS, k=rng.randint(3, 12)))
        async with session.lock:  # one run at a time per conversation, as a user has it
            if how == "run":
                await self.background_run(rng, session, text)
            else:
                body = {
                    "model": session.agent,
                    "messages": [{"role": "user", "content": text}],
                    "metadata": {"task_id": session.task},
                }
                if how == "chat.stream":
                    await self.streamed_chat(body)
                else:
                    reply = await self.call("chat", "POST", "/v1/chat/completions", 200, json=body)
                    choice = reply.json()["choices"][0]
                    if choice["finish_reason"] != "stop" or not choice["message"]["content"]:
                        self.bad("chat", f"finish_reason {choice['finish_reason']}")
            session.next_turn(rng)

    async def streamed_chat(self, body: dict[str, Any]) -> None:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        lines = await self.stream("chat.stream", "/v1/chat/completions", json=body)
        data = [line.removeprefix("data:").strip() for line in lines if line.startswith("data:")]
        finish = [
            c["finish_reason"]
            for chunk in data[:-1]
            for c in json.loads(chunk).get("choices", [])
            if c.get("finish_reason")
        ]
        if not data or data[-1] != "[DONE]" or finish != ["stop"]:
            self.bad("chat.stream", f"stream ended {finish} {data[-1:]}")

    async def background_run(self, rng: random.Random, session: Session, text: str) -> None:
        body = {"agent_id": session.agent, "input": text, "task_id": session.task}
        reply = await self.call("run.start", "POST", "/v1/runs", 202, json=body)
        run_id = reply.json()["run_id"]
        run = (await self.call("run.wait", "GET", f"/v1/runs/{run_id}/wait?timeout=60", 200)).json()
        if run["status"] != "succeeded":
            self.bad("run.wait", f"run {run_id} {run['status']} {run.get('error')}")
        if rng.random() < 0.5:
            lines = await self.stream("run.events", f"/v1/runs/{run_id}/events")
            events = [line.removeprefix("event:").strip() for line in lines if "event:" in line]
            if events[-1:] != ["run_completed"]:
                self.bad("run.events", f"run {run_id} events end with {events[-1:]}")

    async def tool_chat(self, rng: random.Random) -> None:
        url = f"https://example.com/{rng.choice(WORDS)}?n={rng.randrange(1000)}"
        body = {
            "model": self.tool_agent,
            "messages": [{"role": "user", "content": f'/parse_url {{"url": "{url}"}}'}],
        }
        reply = await self.call("chat.tool", "POST", "/v1/chat/completions", 200, json=body)
        content = reply.json()["choices"][0]["message"]["content"] or ""
        if "example.com" not in content:
            self.bad("chat.tool", f"the tool result is not in the answer: {content[:200]!r}")

    async def agent_life(self, rng: random.Random) -> None:
        self.serial += 1
        name = f"soak-agent-{self.serial}-{rng.randrange(16**6):06x}"
        body = {"name": name, "template_id": "simple-test", "status": "active"}
        agent_id = (await self.call("agent.create", "POST", "/v1/agents", 201, json=body)).json()[
            "agent_id"
        ]
        await self.call("agent.get", "GET", f"/v1/agents/{agent_id}", 200)
        update = {"configuration": {"system_prompt": " ".join(rng.choices(WORDS, k=8))}}
        await self.call("agent.update", "PUT", f"/v1/agents/{agent_id}", 200, json=update)
        await self.call("agent.list", "GET", "/v1/agents?limit=50", 200)
        await self.call("agent.delete", "DELETE", f"/v1/agents/{agent_id}", 200)

    async def read(self, rng: random.Random) -> None:
        path = rng.choice(
            [
                "/v1/health",
                "/v1/models",
                "/v1/runs?limit=20",
                "/v1/templates",
                f"/v1/agents/{rng.choice(self.sessions).agent}/history?page_size=5",
            ]
        )
        await self.call("read", "GET", path, 200)


MIX = (  # operation, weight
    ("chat", 30),
    ("chat.stream", 15),
    ("run", 15),
    ("tool", 10),
    ("agent", 10),
    ("read", 20),
)


async def worker(load: Load, rng: random.Random, until: float, think: float) -> None:
    operations, weights = zip(*MIX, strict=True)
    while time.monotonic() < until:
        op = rng.choices(operations, weights)[0]
        with contextlib.suppress(Failed):
            if op in ("chat", "chat.stream", "run"):
                await load.turn(rng, op)
            elif op == "tool":
                await load.tool_chat(rng)
            elif op == "agent":
                await load.agent_life(rng)
            else:
                await load.read(rng)
        await asyncio.sleep(rng.expovariate(1 / think) if think else 0)


async def sampling(sampler: Sampler, t0: float, every: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        sampler.sample(time.monotonic() - t0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
    sampler.sample(time.monotonic() - t0)


async def drive(args: argparse.Namespace, stack: Stack, sampler: Sampler) -> tuple[Tally, float]:
    """Run the load for `args.minutes` while sampling; the tally and the load's length."""
    tally = Tally()
    rng = random.Random(args.seed)
    headers = {"X-Runtime-Token": stack.token}
    limits = httpx.Limits(max_connections=args.concurrency * 2)
    async with httpx.AsyncClient(
        base_url=stack.url, headers=headers, timeout=120, limits=limits
    ) as client:
        load = Load(client, tally)
        await load.prepare(args.sessions, args.turns, rng)
        stop = asyncio.Event()
        t0 = time.monotonic()
        sampler_task = asyncio.create_task(sampling(sampler, t0, args.sample_seconds, stop))
        until = t0 + args.minutes * 60
        await asyncio.gather(
            *(
                worker(load, random.Random(f"{args.seed}-{i}"), until, args.think)
                for i in range(args.concurrency)
            )
        )
        elapsed = time.monotonic() - t0
        stop.set()
        await sampler_task
        tally.turns = [s.turns for s in load.sessions]
        tally.conversations = sum(s.conversations for s in load.sessions)
    return tally, elapsed


# ------------------------------------------------------------------ storage


async def streams(nats_url: str) -> list[dict[str, Any]]:
    """Every JetStream stream's name, messages, bytes, consumers and limits."""
    nc = await nats.connect(nats_url, connect_timeout=5, allow_reconnect=False)
    try:
        infos = await nc.jetstream().streams_info()
    finally:
        await nc.close()
    return [
        {
            "name": i.config.name,
            "bytes": i.state.bytes,
            "messages": i.state.messages,
            "consumers": i.state.consumer_count,
            "max_bytes": i.config.max_bytes if i.config.max_bytes is not None else -1,
            "max_age_s": i.config.max_age or 0,
        }
        for i in sorted(infos, key=lambda i: i.config.name or "")
    ]


def checkpoints_kept(executor_pids: list[int]) -> int | None:
    """The executor's `AGENTRT_EXECUTOR_SESSION_CHECKPOINTS_KEPT`: from its environment,
    else the setting's default; None when the executor has no such setting."""
    from agent_executor.config import Settings

    for pid in executor_pids:
        with contextlib.suppress(OSError):
            for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                name, _, value = entry.decode(errors="replace").partition("=")
                if name == KEPT_SETTING and value.strip():
                    return int(value)
    prefix = Settings.model_config.get("env_prefix", "")
    field_name = KEPT_SETTING.removeprefix(prefix).lower()
    setting = Settings.model_fields.get(field_name)
    return None if setting is None else int(setting.default)


def session_checkpoints(db: Path) -> dict[str, int]:
    """Checkpoint rows per thread in the executor's session store (LangGraph's table)."""
    if not db.exists():
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        rows = conn.execute("SELECT thread_id, count(*) FROM checkpoints GROUP BY thread_id")
        return {str(thread): int(n) for thread, n in rows}


def disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


# ------------------------------------------------------------------ report


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def rss_table(
    sampler: Sampler, elapsed: float, every: float, nats_caches_kb: float = 0.0
) -> tuple[list[str], list[str], dict]:
    """Check (a): table rows, failures and raw numbers of every process's RSS.

    nats-server may also grow by `nats_caches_kb`, its bounded write caches.
    """
    rows, failures, raw = [], [], {}
    half = elapsed / 2
    for pid in sorted(sampler.series, key=sampler.label):
        series, label = sampler.series[pid], sampler.label(pid)
        second = [rss for t, rss in series if t >= half]
        if series[0][0] > half or series[-1][0] < elapsed - 2 * every or len(second) < 5:
            rows.append(f"| {label} | {mb(series[0][1])} | - | - | - | {mb(series[-1][1])} |")
            failures.append(
                f"(a) RSS: {label} did not run through the second half (sampled from "
                f"{series[0][0]:.0f} to {series[-1][0]:.0f} s of {elapsed:.0f} s)"
            )
            continue
        f = flatness(second, nats_caches_kb if label == "nats" else 0.0)
        peak = max(rss for _, rss in series)
        raw[label] = {
            "start_kb": series[0][1],
            "second_half_first_fifth_kb": f.first,
            "second_half_last_fifth_kb": f.last,
            "growth": round(f.growth, 4),
            "allowance_kb": round(f.allowance),
            "end_kb": series[-1][1],
            "peak_kb": peak,
        }
        rows.append(
            f"| {label} | {mb(series[0][1])} | {mb(f.first)} | {mb(f.last)} | "
            f"{f.growth:+.1%}{'' if f.flat else ' **grew**'} | {mb(series[-1][1])} | {mb(peak)} |"
        )
        if not f.flat:
            failures.append(
                f"(a) RSS: {label} grew {f.growth:+.1%} over the second half "
                f"({mb(f.first)} -> {mb(f.last)} MB, medians of its first and last fifth; "
                f"limit +{RSS_GROWTH_LIMIT:.0%}"
                + (f" + {mb(f.allowance)} MB of write caches)" if f.allowance else ")")
            )
    if not sampler.series:
        failures.append("(a) RSS: no process of the stack was sampled")
    return rows, failures, raw


def storage_table(
    stream_info: list[dict[str, Any]], threads: dict[str, int], kept: int | None
) -> tuple[list[str], list[str]]:
    """Check (c): the streams' table rows, and failures of streams and session threads."""
    rows, failures = [], []
    for s in stream_info:
        bounded = s["max_bytes"] >= 0
        within = not bounded or s["bytes"] <= s["max_bytes"]
        bound = f"{s['max_bytes']:,}" if bounded else "none"
        age = f"{s['max_age_s'] / 86_400:g} d" if s["max_age_s"] else "none"
        rows.append(
            f"| {s['name']} | {s['messages']:,} | {s['bytes']:,} | {s['consumers']} | {bound} | "
            f"{age} | "
            f"{'' if within else '**over**'} |"
        )
        if not within:
            failures.append(
                f"(c) storage: stream {s['name']} holds {s['bytes']:,} bytes, "
                f"over its max_bytes {s['max_bytes']:,}"
            )
    most = max(threads.values(), default=0)
    if kept is None:
        failures.append(
            f"(c) storage: the executor has no {KEPT_SETTING} setting, so session checkpoints "
            f"have no bound (the largest of {len(threads)} threads holds {most})"
        )
    elif most > kept:
        over = sorted((n, t) for t, n in threads.items() if n > kept)
        failures.append(
            f"(c) storage: {len(over)} of {len(threads)} session threads hold more checkpoints "
            f"than {KEPT_SETTING}={kept}: {over[-1][1]} holds {most}"
        )
    return rows, failures


def request_table(tally: Tally) -> list[str]:
    rows = []
    for kind in sorted(tally.count):
        ordered = sorted(tally.seconds[kind])
        p50 = statistics.median(ordered) * 1000
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
        rows.append(
            f"| {kind} | {tally.count[kind]:,} | {tally.failed[kind]} | {p50:.0f} | {p99:.0f} |"
        )
    return rows


@dataclass
class Outcome:
    """What the soak found, for the report."""

    tally: Tally
    elapsed: float
    sampler: Sampler
    streams: list[dict[str, Any]]
    threads: dict[str, int]
    kept: int | None
    files: dict[str, int]
    logs: dict[str, Any]
    graceful: bool


def report(
    args: argparse.Namespace, found: Outcome, load_before: str
) -> tuple[str, list[str], dict[str, Any]]:
    """The summary (markdown), the failed checks (one line each) and the raw numbers."""
    tally, elapsed = found.tally, found.elapsed
    rss_rows, failures, raw_rss = rss_table(
        found.sampler, elapsed, args.sample_seconds, nats_write_caches_kb(found.streams)
    )
    for source, lines in found.logs["errors"].items():
        failures.append(f"(b) log: {len(lines)} error line(s) from {source}: {lines[0][:300]}")
    if not found.graceful:
        failures.append("(b) stop: the stack did not stop in time; what was left was killed")
    stream_rows, storage_failures = storage_table(found.streams, found.threads, found.kept)
    failures += storage_failures
    requests, failed = sum(tally.count.values()), sum(tally.failed.values())
    if failed:
        failures.append(f"(d) requests: {failed} of {requests} failed; first: {tally.examples[0]}")

    checks = {
        "(a) RSS flat": "(a)",
        "(b) no error log lines": "(b)",
        "(c) storage within bounds": "(c)",
        "(d) no failed requests": "(d)",
    }
    verdicts = ", ".join(
        f"{name} **{'FAIL' if any(f.startswith(tag) for f in failures) else 'pass'}**"
        for name, tag in checks.items()
    )
    warnings = ", ".join(f"{s} {n}" for s, n in sorted(found.logs["warnings"].items()))
    most = max(found.threads.values(), default=0)
    files = ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in found.files.items())
    info = machine()
    lines = [
        TITLE,
        "",
        f"Measured {info['date']} on {info['cores']} cores ({info['cpu']}), Python "
        f"{info['python']}; load average {load_before} when the run began (the machine is "
        "shared: other sessions' work ran on the same cores).",
        f"Reproduce: `make soak` ({args.minutes:g} minutes here; `SOAK_MINUTES=2 make soak` is "
        "CI's), or `python scripts/soak.py --write docs/BENCHMARKS.md`.",
        "The whole stack as `make run` starts it (scripts/dev.py: nats-server, registry, "
        "tools service, executor and gateway on SQLite, the offline model) in a temporary "
        f"root, under {elapsed / 60:.1f} minutes of load from {args.concurrency} workers "
        f"(seed {args.seed}, mean pause {args.think * 1000:.0f} ms between operations): "
        f"turns on {args.sessions} conversations at a time with server-side memory, each "
        f"replaced by a new one after {args.turns} turns (chat completions, streamed ones, "
        "background runs joined with `/wait` and half of them read back from `/events`), "
        "tool-calling completions, agents created, read, updated, listed and deleted, and "
        f"reads. RSS is sampled every {args.sample_seconds:g} s from /proc.",
        "",
        f"Checks: {verdicts}.",
        "",
        f"- **RSS flat**: the median RSS of the last fifth of the run's second half is at "
        f"most {RSS_GROWTH_LIMIT:.0%} above the median of its first fifth (the first half is "
        "warm-up; a process that shrinks passes).",
        "- **Error log lines** (records at ERROR or CRITICAL, tracebacks, nats-server "
        "`[ERR]`/`[FTL]`, a process exit reported by dev.py; from start-up through a "
        f"graceful stop): {found.logs['error_count']}. Warnings, not counted: "
        f"{warnings or 'none'}.",
        f"- **Requests**: {requests:,} in {elapsed:.0f} s ({requests / elapsed:.1f}/s), "
        f"{failed} failed; {sum(tally.turns):,} turns in {tally.conversations} conversations.",
        "",
        "| request | count | failed | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
        *request_table(tally),
        "",
        "RSS per process, MB: when the load began, the medians of the first and last fifth "
        "of the second half, and at the end:",
        "",
        "| process | start | 2nd half, first fifth | 2nd half, last fifth | growth | end | peak |",
        "|---|---|---|---|---|---|---|",
        *rss_rows,
        "",
        f"Storage at the end. Session checkpoints: at most **{most}** rows in one of "
        f"{len(found.threads)} threads; bound `{KEPT_SETTING}` = "
        f"{found.kept if found.kept is not None else 'not defined'}. Files under ./var: "
        f"{files}. JetStream streams against their `max_bytes`:",
        "",
        "| stream | messages | bytes | consumers | max_bytes | max_age | |",
        "|---|---|---|---|---|---|---|",
        *stream_rows,
        "",
    ]
    raw = {
        "machine": info,
        "minutes": args.minutes,
        "elapsed_s": round(elapsed, 1),
        "concurrency": args.concurrency,
        "seed": args.seed,
        "requests": dict(tally.count),
        "failed": dict(tally.failed),
        "failure_examples": tally.examples,
        "rss": raw_rss,
        "streams": found.streams,
        "session_checkpoints_max": most,
        "session_threads": len(found.threads),
        "checkpoints_kept": found.kept,
        "files": found.files,
        "error_lines": found.logs["errors"],
        "warnings": found.logs["warnings"],
        "failures": failures,
    }
    return "\n".join(lines), failures, raw


def read_logs(stack: Stack) -> dict[str, Any]:
    errors: dict[str, list[str]] = defaultdict(list)
    warnings: Counter[str] = Counter()
    for source, line in stack.logs():
        kind = classify(line, source)
        if kind.error:
            errors[kind.source].append(line)
        elif kind.warning:
            warnings[kind.source] += 1
    return {
        "errors": dict(errors),
        "error_count": sum(len(v) for v in errors.values()),
        "warnings": dict(warnings),
    }


def measure(
    args: argparse.Namespace, stack: Stack, sampler: Sampler, load_before: str
) -> list[str]:
    """Start the stack, load it, read its storage, stop it, read its logs; report. The
    failed checks, one line each."""
    print(f"soak: starting the stack in {stack.root} ...", flush=True)
    stack.start()
    print(
        f"soak: {args.minutes:g} minutes of load, {args.concurrency} workers, seed {args.seed} ...",
        flush=True,
    )
    tally, elapsed = asyncio.run(drive(args, stack, sampler))
    time.sleep(SETTLE)
    stream_info = asyncio.run(streams(stack.nats_url()))
    var = stack.root / "var"
    threads = session_checkpoints(var / "sessions.sqlite3")
    kept = checkpoints_kept([p for p, n in sampler.names.items() if n == "executor"])
    files = {p.name: disk(p) for p in sorted(var.glob("*.sqlite3"))}
    for p in var.glob("*.sqlite3-wal"):
        files[p.name.removesuffix("-wal")] += disk(p)
    files["nats"] = disk(var / "nats")
    print("soak: stopping the stack ...", flush=True)
    graceful = stack.stop()
    found = Outcome(
        tally, elapsed, sampler, stream_info, threads, kept, files, read_logs(stack), graceful
    )
    section, failures, raw = report(args, found, load_before)
    publish("soak", raw, TITLE, section, args.write)
    for example in tally.examples:
        print(f"  failed request: {example[:400]}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES") or 10)
    )
    parser.add_argument("--concurrency", type=int, default=6, help="workers (default 6)")
    parser.add_argument("--sessions", type=int, default=12, help="conversations with memory")
    parser.add_argument(
        "--turns", type=int, default=200, help="turns of a conversation before a new one starts"
    )
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--think", type=float, default=0.05, help="mean pause between a worker's operations, s"
    )
    parser.add_argument("--sample-seconds", type=float, default=2.0)
    parser.add_argument("--write", type=Path, help="update this report's Soak section")
    parser.add_argument("--keep", action="store_true", help="keep the temporary root")
    args = parser.parse_args()

    load_before = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    root = Path(tempfile.mkdtemp(prefix="agentrt-soak-"))
    ports = {name: free_port() for name in ("REGISTRY", "TOOLS", "EXECUTOR", "GATEWAY")}
    stack = Stack(root, "soak-" + secrets.token_urlsafe(24), ports)
    sampler = Sampler(stack.marker)
    try:
        failures = measure(args, stack, sampler, load_before)
    except Exception as e:
        traceback.print_exc()
        failures = [f"the soak did not finish: {type(e).__name__}: {e}"]
    finally:
        stack.stop()
    if failures or args.keep:
        print(f"soak: the stack's root is kept: {root} (dev.out has every service's log)")
    else:
        shutil.rmtree(root, ignore_errors=True)
    if failures:
        print("\nSOAK FAILED:")
        for line in failures:
            print(f"  FAIL {line}")
        return 1
    print("\nsoak: every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
