"""Faults, end to end: NATS crashed under agent writes, racing writers, SIGTERM under load.

Real processes (registry, tools service, executor, gateways) on a NATS server each test
owns, driven through the gateway's HTTP API with httpx:

1. NATS is SIGKILLed and restarted (same port, same store) twice while writers create,
   change and delete agents: no API call fails, and once NATS is back every registry
   event is in the registry's stream exactly once.
2. Sixteen writers race on one agent, with `If-Match` (412 answers re-read and retry)
   and without it (last writer wins), on SQLite and on PostgreSQL: no acknowledged update
   is lost or doubled, no refused one is applied, versions are contiguous.
3. One process of each service gets SIGTERM under steady load (agent reads and writes,
   chat completions that call a tool), on one system the four tests share: every request
   in flight when the signal was sent completes; later ones may be refused until it is
   back (503; for the tools service, a completion whose model read the tool's refusal;
   for a gateway, whose twin takes what it refuses, only a completion sent on a kept-alive
   connection it closed unread).

Schedules come from a seeded `random.Random` and every phase is bounded; what a test saw
goes to its captured output as one `faults:` line, for the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import nats.js.errors
import pytest

from agentrt.events.v1 import registry_events_pb2
from agentrt_kit.nats import Names
from agentrt_testkit.nats_server import NatsServer
from agentrt_testkit.ports import free_port
from agentrt_testkit.postgres import PostgresDatabase
from agentrt_testkit.processes import ServiceProcess

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

SEED = 20_2613
SERVICE_TOKEN = "faults-service-token"
RT = {"X-Runtime-Token": "faults-runtime-token"}
GRACE = 5.0  # AGENTRT_SHUTDOWN_GRACE_SECONDS of every service: in-flight calls finish
STARTUP_SECONDS = 90.0  # five Python processes importing at once on two cores
MODEL_LATENCY_MS = 300  # a completion with a tool call takes two model calls
GENEROUS = {  # far above what the tests send: no 429 hides a fault
    "AGENTRT_GATEWAY_RATE_LIMIT_PER_SECOND": "10000",
    "AGENTRT_GATEWAY_RATE_LIMIT_BURST": "10000",
    "AGENTRT_GATEWAY_ADDRESS_RATE_LIMIT_PER_SECOND": "10000",
    "AGENTRT_GATEWAY_ADDRESS_RATE_LIMIT_BURST": "10000",
}


# ---------------------------------------------------------------- the system


@dataclass
class System:
    """Registry, tools service, executor and gateways on one NATS server of the test's own."""

    nats: NatsServer
    prefix: str
    tmp: Path
    registry: ServiceProcess
    tools: ServiceProcess
    executor: ServiceProcess
    gateways: list[ServiceProcess] = field(default_factory=list)

    @property
    def services(self) -> dict[str, ServiceProcess]:
        return {"registry": self.registry, "tools": self.tools, "executor": self.executor}

    def gateway(self) -> ServiceProcess:
        """A gateway in front of the registry and the executor (started with the system)."""
        port = free_port()
        process = ServiceProcess(
            "agent_gateway",
            {
                **common_env(self.nats.url, self.prefix),
                **GENEROUS,
                "AGENTRT_GATEWAY_PORT": str(port),
                "AGENTRT_GATEWAY_REGISTRY_TARGET": self.registry.address,
                "AGENTRT_GATEWAY_EXECUTOR_TARGET": self.executor.address,
                "AGENTRT_RUNTIME_TOKEN": RT["X-Runtime-Token"],
            },
            port,
            http_ready="/readyz",
            log_path=self.tmp / f"gateway-{port}.log",
        )
        self.gateways.append(process)
        return process

    def close(self) -> None:
        for process in [*reversed(self.gateways), self.executor, self.tools, self.registry]:
            process.kill()


def common_env(nats_url: str, prefix: str) -> dict[str, str]:
    """What every service of one system is given (the shutdown delay is left at its default)."""
    return {
        "AGENTRT_NATS_URL": nats_url,
        "AGENTRT_NATS_PREFIX": prefix,
        "AGENTRT_SERVICE_TOKEN": SERVICE_TOKEN,
        "AGENTRT_SHUTDOWN_GRACE_SECONDS": str(GRACE),
    }


def start_all(*processes: ServiceProcess) -> None:
    """Start processes side by side; raises the first failure (with its log's tail)."""
    with ThreadPoolExecutor(len(processes)) as pool:
        for started in [pool.submit(p.start, STARTUP_SECONDS) for p in processes]:
            started.result()


def make_system(
    server: NatsServer, tmp: Path, *, gateways: int = 1, registry: dict[str, str] | None = None
) -> System:
    """A system started and serving; `registry`: settings of the registry's own."""
    prefix = f"faults{uuid.uuid4().hex[:8]}"
    ports = {name: free_port() for name in ("registry", "tools", "executor")}
    common = common_env(server.url, prefix)
    registry_process = ServiceProcess(
        "agent_registry",
        {
            **common,
            "AGENTRT_REGISTRY_PORT": str(ports["registry"]),
            "AGENTRT_REGISTRY_SQLITE_PATH": str(tmp / "registry.sqlite3"),
            **(registry or {}),
        },
        ports["registry"],
        log_path=tmp / "registry.log",
    )
    tools = ServiceProcess(
        "tool_service",
        {
            **common,
            "AGENTRT_TOOLS_PORT": str(ports["tools"]),
            "AGENTRT_TOOLS_WORKSPACE_ROOT": str(tmp / "workspaces"),
            "AGENTRT_TOOLS_DATABASE_URL": f"sqlite:///{tmp / 'tools.sqlite3'}",
        },
        ports["tools"],
        log_path=tmp / "tools.log",
    )
    provider = {"type": "offline", "metadata": {"latency_ms": MODEL_LATENCY_MS}}
    executor = ServiceProcess(
        "agent_executor",
        {
            **common,
            "AGENTRT_EXECUTOR_PORT": str(ports["executor"]),
            "AGENTRT_EXECUTOR_REGISTRY_TARGET": registry_process.address,
            "AGENTRT_EXECUTOR_TOOLS_TARGET": tools.address,
            "AGENTRT_EXECUTOR_DATABASE_URL": f"sqlite:///{tmp / 'executor.sqlite3'}",
            "AGENTRT_EXECUTOR_SESSIONS_URL": f"sqlite:///{tmp / 'sessions.sqlite3'}",
            "AGENTRT_EXECUTOR_WATCH_PLUGINS": "false",
            "AGENTRT_EXECUTOR_SERVICES_CONFIG": json.dumps(
                {"llm": {"providers": {"offline": provider}, "default_provider": "offline"}}
            ),
        },
        ports["executor"],
        log_path=tmp / "executor.log",
    )
    system = System(server, prefix, tmp, registry_process, tools, executor)
    try:
        start_all(registry_process, tools, executor)
        start_all(*(system.gateway() for _ in range(gateways)))
    except BaseException:
        system.close()
        raise
    return system


MakeSystem = Callable[..., System]


@pytest.fixture
def systems(make_nats_server: Callable[[], NatsServer], tmp_path: Path) -> Iterator[MakeSystem]:
    """Start systems for one test, each on a NATS server of its own; all stopped after it."""
    made: list[System] = []

    def make(**options: Any) -> System:
        tmp = tmp_path / f"system-{len(made)}"
        tmp.mkdir()
        system = make_system(make_nats_server(), tmp, **options)
        made.append(system)
        return system

    try:
        yield make
    finally:
        for system in made:
            system.close()


async def ready_for_agents(client: httpx.AsyncClient, url: str) -> str:
    """Wait until the registry knows the executor's templates; the id of the agent made."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        reply = await client.post(
            f"{url}/v1/agents",
            json={"name": f"warm-up {uuid.uuid4().hex[:6]}", "template_id": "simple-test"},
            headers=RT,
        )
        if reply.status_code == 201:
            return str(reply.json()["agent_id"])
        assert time.monotonic() < deadline, reply.text
        await asyncio.sleep(0.1)


def version_of(reply: httpx.Response) -> int:
    """The agent version an answer's ETag carries (`"3"` → 3)."""
    return int(reply.headers["etag"].strip('"'))


async def history(client: httpx.AsyncClient, url: str, agent_id: str) -> list[dict[str, Any]]:
    """Every recorded event of an agent, oldest first (deleted agents too)."""
    events: list[dict[str, Any]] = []
    token = ""
    while True:
        params = {"page_size": "1000", **({"page_token": token} if token else {})}
        reply = await client.get(f"{url}/v1/agents/{agent_id}/history", params=params, headers=RT)
        assert reply.status_code == 200, reply.text
        page = reply.json()
        events.extend(page["events"])
        token = page["next_page_token"] or ""
        if not token:
            return events


@dataclass(frozen=True)
class Call:
    """One HTTP request the load made: what, when, and how it was answered."""

    kind: str
    started: float
    ended: float
    status: int | None  # None: no answer (the error says why)
    ok: bool
    error: str = ""
    reply: httpx.Response | None = None

    def summary(self) -> str:
        return f"{self.kind} {self.status or ''} {self.error[:160]}".replace("  ", " ")


async def timed(
    kind: str, send: Callable[[], Awaitable[httpx.Response]], good: int, expect: str = ""
) -> Call:
    """Send one request; ok when answered `good` with an answer holding `expect`."""
    began = time.monotonic()
    try:
        reply = await send()
    except httpx.HTTPError as e:
        return Call(kind, began, time.monotonic(), None, False, f"{type(e).__name__}: {e}")
    ok = reply.status_code == good and expect in reply.text
    error = "" if ok else reply.text
    if not ok and reply.status_code == good and kind == "chat":  # what the model answered
        error = reply.json()["choices"][0]["message"]["content"]
    return Call(kind, began, time.monotonic(), reply.status_code, ok, error, reply)


# ---------------------------------------------------------------- 1. NATS killed under writes


async def stream_messages(url: str, stream: str) -> list[registry_events_pb2.AgentChanged]:
    """Every message of the registry's stream, in stream order."""
    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                msg = await js.get_msg(stream, seq)
                found.append(registry_events_pb2.AgentChanged.FromString(msg.data or b""))
        return found
    finally:
        await nc.close()


async def stream_size(url: str, stream: str) -> int | None:
    """How many messages the stream holds (None while NATS or the stream is away)."""
    try:
        nc = await nats.connect(url, connect_timeout=0.5, allow_reconnect=False)
    except (nats.errors.Error, OSError, TimeoutError):
        return None
    try:
        return int((await nc.jetstream().stream_info(stream)).state.messages)
    except (nats.errors.Error, OSError, TimeoutError):
        return None
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


@dataclass
class Writer:
    """One writer's agents: the versions each acknowledged write created."""

    index: int
    rng: random.Random
    live: dict[str, int] = field(default_factory=dict)  # agent id → version now
    acked: dict[str, list[int]] = field(default_factory=dict)  # agent id → versions written
    calls: list[Call] = field(default_factory=list)
    made: int = 0

    async def step(self, client: httpx.AsyncClient, url: str) -> None:
        """One request: create while it has few agents, else change, read or delete one."""
        if len(self.live) < 2 or self.rng.random() < 0.1:
            await self.create(client, url)
            return
        agent_id = self.rng.choice(sorted(self.live))
        version = self.live[agent_id]
        pinned = {**RT, "If-Match": f'"{version}"'}
        roll = self.rng.random()
        if roll < 0.55:
            prompt = f"writer {self.index} v{version + 1}"
            await self.write(
                "update",
                agent_id,
                lambda: client.put(
                    f"{url}/v1/agents/{agent_id}", json={"system_prompt": prompt}, headers=pinned
                ),
            )
        elif roll < 0.75:
            status = self.rng.choice(["active", "inactive"])
            await self.write(
                "status",
                agent_id,
                lambda: client.patch(
                    f"{url}/v1/agents/{agent_id}/status", json={"status": status}, headers=pinned
                ),
            )
        elif roll < 0.9:
            call = await timed(
                "get", lambda: client.get(f"{url}/v1/agents/{agent_id}", headers=RT), 200
            )
            self.calls.append(call)
        else:
            call = await timed(
                "delete",
                lambda: client.delete(f"{url}/v1/agents/{agent_id}", headers=pinned),
                200,
            )
            self.calls.append(call)
            if call.ok:  # the deletion is the agent's next version
                self.acked[agent_id].append(self.live.pop(agent_id) + 1)

    async def create(self, client: httpx.AsyncClient, url: str) -> None:
        self.made += 1
        body = {
            "name": f"writer-{self.index}-{self.made}-{uuid.uuid4().hex[:6]}",
            "template_id": "simple-test",
            "status": "active",  # active ⇄ inactive: every status change is allowed
        }
        call = await timed(
            "create", lambda: client.post(f"{url}/v1/agents", json=body, headers=RT), 201
        )
        self.calls.append(call)
        if call.reply is not None and call.ok:
            agent_id = str(call.reply.json()["agent_id"])
            self.live[agent_id] = version_of(call.reply)
            self.acked[agent_id] = [self.live[agent_id]]

    async def write(
        self, kind: str, agent_id: str, send: Callable[[], Awaitable[httpx.Response]]
    ) -> None:
        call = await timed(kind, send, 200)
        self.calls.append(call)
        if call.reply is not None and call.ok:
            version = version_of(call.reply)
            if version != self.live[agent_id]:  # a status already set writes nothing
                self.live[agent_id] = version
                self.acked[agent_id].append(version)


async def test_every_registry_event_reaches_the_stream_once_across_nats_crashes(
    systems: MakeSystem,
) -> None:
    rng = random.Random(SEED)
    system = systems()
    url = system.gateways[0].url
    stream = Names(system.prefix).stream("registry")
    load_seconds = 16.0
    # Two outages at seeded times, each SIGKILL then a restart on the same port and store.
    first = rng.uniform(2.0, 3.5)
    second = first + rng.uniform(5.0, 6.5)
    outages = [(first, rng.uniform(1.5, 3.0)), (second, rng.uniform(1.0, 2.5))]
    writers = [Writer(i, random.Random(SEED * 100 + i)) for i in range(8)]
    restarted: list[float] = []
    seen: list[tuple[float, int | None]] = []  # (time, stream size) while the load runs

    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        warm_up = await ready_for_agents(client, url)
        began = time.monotonic()

        async def crash_nats() -> None:
            for at, down_for in outages:
                await asyncio.sleep(max(0.0, began + at - time.monotonic()))
                await asyncio.to_thread(system.nats.kill)
                await asyncio.sleep(down_for)
                await asyncio.to_thread(system.nats.start)
                restarted.append(time.monotonic())

        async def watch_stream() -> None:
            while time.monotonic() < began + load_seconds:
                seen.append((time.monotonic(), await stream_size(system.nats.url, stream)))
                await asyncio.sleep(0.1)

        async def write(writer: Writer) -> None:
            while time.monotonic() < began + load_seconds:
                await writer.step(client, url)

        await asyncio.gather(crash_nats(), watch_stream(), *(write(w) for w in writers))
        load_ended = time.monotonic()

        calls = [c for w in writers for c in w.calls]
        failed = [c.summary() for c in calls if not c.ok]
        assert not failed, f"{len(failed)} of {len(calls)} calls failed: {failed[:20]}"
        acked = {a: v for w in writers for a, v in w.acked.items()}
        acked[warm_up] = [1]

        # The relay catches up once NATS is back: wait until the stream holds every event.
        total = sum(len(versions) for versions in acked.values())
        while (size := await stream_size(system.nats.url, stream)) != total:
            assert size is None or size < total, f"stream holds {size} of {total} events"
            assert time.monotonic() < load_ended + 30.0, f"stream holds {size} of {total}"
            await asyncio.sleep(0.1)
        caught_up = time.monotonic() - load_ended
        recorded = {a: await history(client, url, a) for a in acked}

    # Every acknowledged write is in the registry's log, and nothing else is...
    for agent_id, versions in acked.items():
        assert [e["version"] for e in recorded[agent_id]] == versions, agent_id
    expected = Counter((a, e["version"], e["type"]) for a, es in recorded.items() for e in es)
    # ...and in the stream once each, in log order.
    messages = await stream_messages(system.nats.url, stream)
    published = Counter((m.agent_id, m.version, m.type) for m in messages)
    assert published == expected, (published - expected, expected - published)
    positions = [m.position for m in messages]
    assert positions == sorted(set(positions)), "stream out of log order or repeated"
    assert [m.event_id for m in messages] == [f"AgentRegistry:{p}" for p in positions]

    # When the relay published again after each restart (stream size grew past its outage).
    resumed = []
    for at in restarted:
        before = max((n for t, n in seen if t < at and n is not None), default=0)
        after = [t for t, n in seen if t >= at and n is not None and n > before]
        resumed.append(f"{after[0] - at:.1f}s" if after else "after the load")
    kinds = Counter(c.kind for c in calls)
    print(
        f"faults: nats_crash seed={SEED} writers={len(writers)} load={load_seconds:.0f}s"
        f" calls={len(calls)} {dict(sorted(kinds.items()))} failed={len(failed)}"
        f" outages={[f'{at:.1f}s+{d:.1f}s' for at, d in outages]}"
        f" relay_resumed_after_restart={resumed} events={expected.total()}"
        f" stream_complete_after_load={caught_up:.1f}s"
        f" duplicates={len(messages) - len(set(positions))} gaps=0"
    )


# ---------------------------------------------------------------- 2. racing writers on one agent

WRITERS = 16
UPDATES = 3  # successful updates each writer makes with If-Match (and sends without it)


@dataclass
class Race:
    """What racing writers sent to one agent and how each request was answered."""

    applied: dict[str, int] = field(default_factory=dict)  # prompt → version it made
    refused: list[str] = field(default_factory=list)  # prompts answered 412
    failed: list[str] = field(default_factory=list)  # anything else (with the answer)
    requests: int = 0

    def check_history(self, events: list[dict[str, Any]]) -> int:
        """Each applied prompt is in the history once, at its version; no refused one is.

        Returns:
            The agent's version now (its last event's).
        """
        versions = [e["version"] for e in events]
        assert versions == list(range(1, len(events) + 1)), versions  # contiguous
        written = [
            (e["changes"]["system_prompt"], e["version"])
            for e in events
            if e["type"] == "configuration_changed"
        ]
        counts = Counter(prompt for prompt, _ in written)
        assert {p: n for p, n in counts.items() if n > 1} == {}, "an update applied twice"
        assert dict(written) == self.applied, "history and acknowledged updates differ"
        assert set(self.refused).isdisjoint(counts), "a 412 answered update was applied"
        return versions[-1]


async def race(client: httpx.AsyncClient, url: str, agent_id: str, *, if_match: bool) -> Race:
    """Sixteen writers update one agent at once, `UPDATES` times each.

    With `if_match` a writer reads the ETag, sends it, and on 412 reads again and retries
    (every attempt with a prompt of its own); without, each update is sent once.
    """
    seen = Race()
    go = asyncio.Event()

    async def put(prompt: str, headers: dict[str, str]) -> httpx.Response | None:
        seen.requests += 1
        try:
            reply = await client.put(
                f"{url}/v1/agents/{agent_id}", json={"system_prompt": prompt}, headers=headers
            )
        except httpx.HTTPError as e:
            seen.failed.append(f"{prompt}: {type(e).__name__}: {e}")
            return None
        if reply.status_code == 200:
            seen.applied[prompt] = version_of(reply)
        elif reply.status_code == 412 and "If-Match" in headers:
            seen.refused.append(prompt)
        else:
            seen.failed.append(f"{prompt}: {reply.status_code} {reply.text[:200]}")
        return reply

    async def writer(w: int) -> None:
        await go.wait()
        for u in range(UPDATES):
            if not if_match:
                await put(f"w{w} u{u}", RT)
                continue
            for attempt in itertools.count():
                assert attempt < 200, f"writer {w} never got update {u} in"
                current = await client.get(f"{url}/v1/agents/{agent_id}", headers=RT)
                seen.requests += 1
                assert current.status_code == 200, current.text
                pinned = {**RT, "If-Match": current.headers["etag"]}
                reply = await put(f"w{w} u{u} a{attempt}", pinned)
                if reply is None or reply.status_code != 412:
                    break

    tasks = [asyncio.create_task(writer(w)) for w in range(WRITERS)]
    await asyncio.sleep(0.1)
    go.set()  # all at once
    await asyncio.gather(*tasks)
    return seen


@pytest.mark.parametrize("persistence", ["sqlite", "postgres"])
async def test_sixteen_racing_writers_lose_no_acknowledged_update(
    systems: MakeSystem, request: pytest.FixtureRequest, persistence: str
) -> None:
    registry: dict[str, str] = {}
    if persistence == "postgres":
        db: PostgresDatabase = request.getfixturevalue("postgres_db")
        registry = {
            "AGENTRT_REGISTRY_PERSISTENCE": "postgres",
            "AGENTRT_REGISTRY_POSTGRES_DSN": db.dsn,
            "AGENTRT_REGISTRY_POSTGRES_SCHEMA": request.getfixturevalue("postgres_schema"),
        }
    system = systems(registry=registry)
    url = system.gateways[0].url
    limits = httpx.Limits(max_connections=2 * WRITERS)
    async with httpx.AsyncClient(timeout=30, trust_env=False, limits=limits) as client:
        await ready_for_agents(client, url)
        results = {}
        for if_match in (True, False):
            agent_id = (
                await client.post(
                    f"{url}/v1/agents",
                    json={"name": f"raced {uuid.uuid4().hex[:6]}", "template_id": "simple-test"},
                    headers=RT,
                )
            ).json()["agent_id"]
            began = time.monotonic()
            seen = await race(client, url, agent_id, if_match=if_match)
            seconds = time.monotonic() - began
            assert seen.failed == [], seen.failed[:10]
            assert len(seen.applied) == WRITERS * UPDATES
            final = (await client.get(f"{url}/v1/agents/{agent_id}", headers=RT)).json()
            last = seen.check_history(await history(client, url, agent_id))
            assert last == len(seen.applied) + 1
            # The last writer wins: the agent holds the prompt of the highest version.
            winner = max(seen.applied, key=lambda p: seen.applied[p])
            assert final["configuration"]["system_prompt"] == winner
            results["if_match" if if_match else "blind"] = (seen, seconds)

    print(
        f"faults: racing_writers persistence={persistence} writers={WRITERS} "
        + " ".join(
            f"{name}: requests={seen.requests} applied={len(seen.applied)}"
            f" refused_412={len(seen.refused)} failed={len(seen.failed)} took={seconds:.1f}s"
            for name, (seen, seconds) in results.items()
        )
    )


# ---------------------------------------------------------------- 3. SIGTERM under load

# The request kinds of the load that reach each service (and so may be refused while it
# is away). The executor takes an agent from its cache, the gateway reads it first.
REACHES = {
    "gateway": {"get", "update", "chat"},
    "registry": {"get", "update", "chat"},
    "executor": {"chat"},
    "tools": {"chat"},
}
# While the tools service is away a run goes on and its model reads the tool's refusal
# (the executor's design: an outage is a tool error the model can act on).
TOOL_REFUSED = "parse_url returned: Error UNAVAILABLE"
SETTLE = 3.0  # after a restarted service serves, callers are back within this (generous)


class Balancer:
    """Sends each request to the next gateway, and to another one when the first never read it.

    A refused connection never reached a gateway: any request goes to the next one. A
    kept-alive connection that a stopping gateway closes as a request travels on it ends
    without an answer; the gateway never read that request, but a client cannot tell it
    from one cut off mid-way, so, as HTTP clients do (Go's, urllib3), only an idempotent
    request is sent again.
    """

    def __init__(self, client: httpx.AsyncClient, urls: list[str]) -> None:
        self.client = client
        self.urls = urls
        self.turn = itertools.count()
        self.moved_on = Counter[str]()  # why requests went to another gateway

    async def send(self, method: str, path: str, **options: Any) -> httpx.Response:
        first = next(self.turn)
        tries = len(self.urls) * 3
        for attempt in range(tries):
            url = self.urls[(first + attempt) % len(self.urls)]
            try:
                return await self.client.request(method, url + path, **options)
            except httpx.ConnectError:
                self.moved_on["connection_refused"] += 1
            except httpx.RemoteProtocolError as e:
                if method not in IDEMPOTENT or not unanswered(e):
                    raise
                self.moved_on["closed_unanswered"] += 1
            if attempt + 1 == tries:
                raise AssertionError(f"no gateway took {method} {path}")
            if (attempt + 1) % len(self.urls) == 0:
                await asyncio.sleep(0.2)  # every gateway refused: a moment, then again
        raise AssertionError("unreachable")


IDEMPOTENT = {"GET", "PUT", "DELETE"}


def unanswered(error: Exception) -> bool:
    """Whether the connection closed before any byte of an answer."""
    return "without sending a response" in str(error)


@dataclass
class Load:
    """Steady load through the gateways: agent reads, agent writes, completions with a tool."""

    gateways: Balancer
    chat_agent: str
    crud_agents: list[str]
    calls: list[Call] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self, kind: str, n: int, offset: float) -> None:
        pause = random.Random(f"{SEED}-{n}")
        await asyncio.sleep(offset)  # out of step: some chat is always before its tool call
        for i in itertools.count():
            if self.stop.is_set():
                return
            call = await self.one(kind, n, i)
            self.calls.append(call)
            # Steady, not flat out, and slower after a refusal (as a client told to retry
            # would be): the machine keeps room to restart the service.
            await asyncio.sleep(pause.uniform(0.02, 0.08) if call.ok else 0.25)

    async def one(self, kind: str, n: int, i: int) -> Call:
        send = self.gateways.send
        if kind == "chat":
            # The tool's answer reaches the reply: "parse_url returned: ... path: /n/i".
            text = f'/parse_url {{"url": "https://example.com/{n}/{i}"}}'
            body = {"model": self.chat_agent, "messages": [{"role": "user", "content": text}]}
            return await timed(
                kind,
                lambda: send("POST", "/v1/chat/completions", json=body, headers=RT),
                200,
                expect=f"path: /{n}/{i}",
            )
        agent = self.crud_agents[n % len(self.crud_agents)]
        if kind == "get":
            return await timed(kind, lambda: send("GET", f"/v1/agents/{agent}", headers=RT), 200)
        prompt = {"system_prompt": f"worker {n} update {i}"}
        return await timed(
            kind, lambda: send("PUT", f"/v1/agents/{agent}", json=prompt, headers=RT), 200
        )


def refused_as_designed(call: Call, service: str) -> bool:
    """Whether a request made while `service` was away was answered as it may be then.

    A 503; for the tools service, a completion whose model read the tool's refusal; for a
    gateway, a completion (not idempotent, so not sent again) on a kept-alive connection
    the stopping gateway closed before reading it.
    """
    if call.kind not in REACHES[service]:
        return False
    if service == "gateway" and call.status is None:
        return "without sending a response" in call.error
    return call.status == 503 or (service == "tools" and TOOL_REFUSED in call.error)


@pytest.fixture(scope="module")
def shared_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """One system for the SIGTERM tests: two gateways, one process of every other service.

    Each test restarts the service it stopped; one that is not serving when a test begins
    (a test before it failed half-way) is started again first.
    """
    server = NatsServer().start()
    try:
        system = make_system(server, tmp_path_factory.mktemp("sigterm"), gateways=2)
        try:
            yield system
        finally:
            system.close()
    finally:
        server.close()


@pytest.mark.parametrize("service", list(REACHES))
async def test_sigterm_under_load_fails_no_request_in_flight(
    shared_system: System, service: str
) -> None:
    rng = random.Random(f"{SEED}-{service}")
    system = shared_system
    for process in [*system.services.values(), *system.gateways]:
        if not await asyncio.to_thread(process.ready):
            process.kill()
            await asyncio.to_thread(process.start, STARTUP_SECONDS)
    # The gateway runs as two replicas behind a client that moves on when one refuses
    # the connection; the other services run one process each.
    target = system.gateways[0] if service == "gateway" else system.services[service]
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        url = system.gateways[1].url
        chat_agent = (
            await client.post(
                f"{url}/v1/agents",
                json={
                    "name": f"chatty {uuid.uuid4().hex[:6]}",
                    "template_id": "simple-test",
                    "toolsets": ["parse_url"],
                    "status": "active",
                },
                headers=RT,
            )
        ).json()["agent_id"]
        crud_agents = [await ready_for_agents(client, url) for _ in range(3)]
        load = Load(Balancer(client, [g.url for g in system.gateways]), chat_agent, crud_agents)
        kinds = ["chat"] * 4 + ["get"] * 2 + ["update"] * 2
        workers = [
            asyncio.create_task(load.worker(k, n, offset=0.15 * n)) for n, k in enumerate(kinds)
        ]
        try:
            await asyncio.sleep(rng.uniform(2.0, 3.0))
            signal_at = time.monotonic()
            target.terminate()
            code = await asyncio.to_thread(target.wait, GRACE + 20)
            exited_at = time.monotonic()
            await asyncio.to_thread(target.start, STARTUP_SECONDS)
            back_at = time.monotonic()
            await asyncio.sleep(SETTLE + 2.0)
        finally:
            load.stop.set()
            await asyncio.gather(*workers)

    assert code == 0, target.log()
    before = [c for c in load.calls if c.started < signal_at]
    in_flight = [c for c in before if c.ended > signal_at]
    away = [c for c in load.calls if signal_at <= c.started < back_at + SETTLE]
    after = [c for c in load.calls if c.started >= back_at + SETTLE]
    assert [c for c in in_flight if c.kind in REACHES[service]], "nothing was in flight"
    failed_in_flight = [c.summary() for c in in_flight if not c.ok]
    assert not failed_in_flight, f"{len(failed_in_flight)} of {len(in_flight)}: {failed_in_flight}"
    assert [c.summary() for c in before if not c.ok] == []
    # While the service was away only what needs it may be refused, and only as designed.
    refused = [c for c in away if not c.ok]
    wrong = [c.summary() for c in refused if not refused_as_designed(c, service)]
    assert not wrong, f"{len(wrong)} of {len(away)} refused otherwise: {wrong[:10]}"
    assert after, "no load after the restart"
    assert [c.summary() for c in after if not c.ok] == []
    last_refused = max((c.ended for c in refused), default=back_at)
    print(
        f"faults: sigterm service={service} seed={SEED} calls={len(load.calls)}"
        f" in_flight={dict(Counter(c.kind for c in in_flight))} failed_in_flight=0"
        f" exit={code} stopped_in={exited_at - signal_at:.1f}s"
        f" restarted_in={back_at - exited_at:.1f}s"
        f" while_away: calls={len(away)} refused={len(refused)}"
        f" {dict(Counter(c.status for c in refused))}"
        f" sent_to_the_other_gateway={dict(load.gateways.moved_on)}"
        f" last_refusal_after_ready={max(0.0, last_refused - back_at):.1f}s"
        f" after_restart: calls={len(after)} failed=0"
    )
