"""Database faults, end to end: the registry's and the executor's PostgreSQL stopped under writes.

Each test gives one service a PostgreSQL cluster of its own (initdb/pg_ctl on a free port),
runs writers through a gateway, stops the cluster (`fast` or `immediate`), keeps writing
while it refuses connections, starts it again and checks what the writers were told
against what was stored:
- every write answered while the database was down is a 503 with Retry-After, answered
  within `ANSWER_BOUND`;
- every acknowledged write is there afterwards;
- no write answered with an error is there afterwards: creates and run starts carry an
  Idempotency-Key, and sending it again after the outage must create, not replay; updates
  are a chain of If-Match, so one that had landed after its error would make the next a
  412, and each agent's version must be one more than its acknowledged updates;
- a write whose connection was lost while it was being written is answered as such
  (503, reason OUTCOME_UNKNOWN: it may have been applied); the writer resolves it as a
  client would, by reading back (updates) or sending it again with its key.
Schedules come from a seeded `random.Random`; each phase is bounded. What a test saw goes
to its captured output as one `faults:` line.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentrt_testkit.ports import free_port
from agentrt_testkit.postgres import ThrowawayCluster
from agentrt_testkit.processes import ServiceProcess

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.chaos]

SEED = 202613
SERVICE_TOKEN = "db-faults-token"
RUNTIME = "db-faults-runtime"
RT = {"X-Runtime-Token": RUNTIME}
ANSWER_BOUND = 1.0  # what the issue allows for a 503 while the database is down
OUTAGE = 3.0  # seconds the database stays down
RECOVERY_BOUND = 15.0  # generous: from the database's start to the first acknowledged write
STARTUP_SECONDS = 90.0
ENDED = ("succeeded", "failed", "cancelled", "timed_out")
MODES = ["fast", "immediate"]


@dataclass
class Answer:
    """One request and what it was told."""

    kind: str
    key: str
    started: float
    ended: float
    status: int  # 0: no HTTP answer
    body: Any = None
    retry_after: str | None = None
    landed: bool | None = None  # of an update whose outcome was unknown, once read back

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def unknown(self) -> bool:
        """Answered as neither done nor failed (the connection went during the write)."""
        if self.status == 408:
            return True
        details = self.body.get("details") if isinstance(self.body, dict) else None
        return self.status == 503 and (details or {}).get("reason") == "OUTCOME_UNKNOWN"

    @property
    def failed(self) -> bool:
        return not self.ok and not self.unknown


@dataclass
class Outage:
    """When the database was going down, down, and coming back."""

    stopping: float = 0.0
    down: float = 0.0
    starting: float = 0.0
    up: float = 0.0

    def within(self, answer: Answer) -> bool:
        """Whether the request was sent and answered while the database was down."""
        return self.down <= answer.started and answer.ended <= self.starting


@dataclass
class System:
    """The services as processes, and the gateway's URL."""

    processes: list[ServiceProcess] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def system_factory(
    nats_server: Any, tmp_path: Path
) -> Iterator[Callable[[dict[str, str], dict[str, str]], System]]:
    """Start registry, tools, executor and a gateway, with extra settings for two of them."""
    made: list[System] = []

    def make(registry_env: dict[str, str], executor_env: dict[str, str]) -> System:
        prefix = f"dbf{uuid.uuid4().hex[:10]}"
        common = {
            "AGENTRT_NATS_URL": nats_server.url,
            "AGENTRT_NATS_PREFIX": prefix,
            "AGENTRT_SERVICE_TOKEN": SERVICE_TOKEN,
        }
        ports = {name: free_port() for name in ("registry", "tools", "executor", "gateway")}
        registry = ServiceProcess(
            "agent_registry",
            {
                **common,
                "AGENTRT_REGISTRY_PORT": str(ports["registry"]),
                "AGENTRT_REGISTRY_SQLITE_PATH": str(tmp_path / "registry.sqlite3"),
                **registry_env,
            },
            ports["registry"],
            log_path=tmp_path / "registry.log",
        )
        tools = ServiceProcess(
            "tool_service",
            {
                **common,
                "AGENTRT_TOOLS_PORT": str(ports["tools"]),
                "AGENTRT_TOOLS_WORKSPACE_ROOT": str(tmp_path / "workspaces"),
                "AGENTRT_TOOLS_DATABASE_URL": f"sqlite:///{tmp_path / 'tools.sqlite3'}",
            },
            ports["tools"],
            log_path=tmp_path / "tools.log",
        )
        executor = ServiceProcess(
            "agent_executor",
            {
                **common,
                "AGENTRT_EXECUTOR_PORT": str(ports["executor"]),
                "AGENTRT_EXECUTOR_REGISTRY_TARGET": registry.address,
                "AGENTRT_EXECUTOR_TOOLS_TARGET": tools.address,
                "AGENTRT_EXECUTOR_DATABASE_URL": f"sqlite:///{tmp_path / 'executor.sqlite3'}",
                "AGENTRT_EXECUTOR_SESSIONS_URL": f"sqlite:///{tmp_path / 'sessions.sqlite3'}",
                "AGENTRT_EXECUTOR_WATCH_PLUGINS": "false",
                "AGENTRT_SHUTDOWN_GRACE_SECONDS": "0.5",
                **executor_env,
            },
            ports["executor"],
            log_path=tmp_path / "executor.log",
        )
        gateway = ServiceProcess(
            "agent_gateway",
            {
                **common,
                "AGENTRT_GATEWAY_PORT": str(ports["gateway"]),
                "AGENTRT_GATEWAY_REGISTRY_TARGET": registry.address,
                "AGENTRT_GATEWAY_EXECUTOR_TARGET": executor.address,
                "AGENTRT_GATEWAY_API_KEYS": "[]",
                "AGENTRT_RUNTIME_TOKEN": RUNTIME,
                "AGENTRT_GATEWAY_RATE_LIMIT_PER_SECOND": "1000",
                "AGENTRT_GATEWAY_RATE_LIMIT_BURST": "5000",
                "AGENTRT_GATEWAY_ADDRESS_RATE_LIMIT_PER_SECOND": "1000",
                "AGENTRT_GATEWAY_ADDRESS_RATE_LIMIT_BURST": "5000",
            },
            ports["gateway"],
            http_ready="/readyz",
            log_path=tmp_path / "gateway.log",
        )
        system = System(
            [registry, tools, executor, gateway], f"http://127.0.0.1:{ports['gateway']}"
        )
        made.append(system)
        for process in system.processes:
            process.start(timeout=STARTUP_SECONDS)
        return system

    try:
        yield make
    finally:
        for system in made:
            for process in reversed(system.processes):
                process.kill()


def postgres_env(prefix: str, cluster: ThrowawayCluster) -> dict[str, str]:
    dsn = f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
    if prefix == "REGISTRY":
        return {"AGENTRT_REGISTRY_PERSISTENCE": "postgres", "AGENTRT_REGISTRY_POSTGRES_DSN": dsn}
    return {"AGENTRT_EXECUTOR_DATABASE_URL": dsn, "AGENTRT_EXECUTOR_SESSIONS_URL": dsn}


def create_agent(http: httpx.Client, name: str, key: str | None = None) -> httpx.Response:
    headers = {**RT, "Idempotency-Key": key} if key else RT
    return http.post(
        "/v1/agents", json={"name": name, "template_id": "simple-test"}, headers=headers
    )


def ready_agent(http: httpx.Client) -> str:
    """An agent, once the registry knows the executor's templates; its id."""
    deadline = time.monotonic() + 30
    while True:
        reply = create_agent(http, f"warm-up-{uuid.uuid4().hex[:8]}")
        if reply.status_code == 201:
            return str(reply.json()["agent_id"])
        assert time.monotonic() < deadline, reply.text
        time.sleep(0.1)


def ask(http: httpx.Client, kind: str, key: str, send: Callable[[], httpx.Response]) -> Answer:
    started = time.monotonic()
    try:
        reply = send()
    except httpx.HTTPError as e:
        return Answer(kind, key, started, time.monotonic(), 0, repr(e))
    ended = time.monotonic()
    try:
        body = reply.json()
    except json.JSONDecodeError:
        body = reply.text
    return Answer(
        kind, key, started, ended, reply.status_code, body, reply.headers.get("retry-after")
    )


def read_back(http: httpx.Client, agent_id: str, version: int, marker: str) -> bool:
    """Whether the update to `marker` from `version` was applied."""
    deadline = time.monotonic() + 60
    while True:
        reply = http.get(f"/v1/agents/{agent_id}", headers=RT)
        if reply.status_code == 200:
            applied = reply.headers["etag"] == f'"{version + 1}"'
            assert applied or reply.headers["etag"] == f'"{version}"', reply.headers
            assert not applied or reply.json()["name"] == marker
            return applied
        assert time.monotonic() < deadline, reply.text
        time.sleep(0.2)


Writer = Callable[[httpx.Client, random.Random, threading.Event, list[Answer]], None]


def write_through_an_outage(
    url: str, loops: list[Writer], cluster: ThrowawayCluster, mode: str
) -> tuple[list[Answer], Outage]:
    """Run the writers while the database stops, stays down and starts again.

    Each writer has its own client and seeded random. The database stops after a seeded
    1 to 2 s, stays down `OUTAGE` s, and the writers stop 1.5 s after the first write
    acknowledged once it is back (or after `RECOVERY_BOUND`).
    """
    answers: list[Answer] = []
    stop = threading.Event()

    def run(index: int, loop: Writer) -> None:
        with httpx.Client(base_url=url, timeout=20) as http:
            loop(http, random.Random(SEED + index), stop, answers)

    threads = [threading.Thread(target=run, args=(i, loop)) for i, loop in enumerate(loops)]
    for thread in threads:
        thread.start()
    outage = Outage()
    try:
        time.sleep(1.0 + random.Random(SEED).random())
        outage.stopping = time.monotonic()
        cluster.halt(mode)
        outage.down = time.monotonic()
        time.sleep(OUTAGE)
        outage.starting = time.monotonic()
        cluster.resume()
        outage.up = time.monotonic()
        deadline = outage.up + RECOVERY_BOUND + 3
        while time.monotonic() < deadline and not any(
            a.ok and a.started >= outage.up for a in list(answers)
        ):
            time.sleep(0.1)
        time.sleep(1.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    return answers, outage


def check_answers(answers: list[Answer], outage: Outage) -> dict[str, Any]:
    """What every answer may be, and what the ones during the outage must be."""
    unexpected = [a for a in answers if not a.ok and a.status not in (503, 408)]
    assert not unexpected, unexpected[:5]
    timed_out = [a for a in answers if a.status == 408]
    assert all(not outage.within(a) for a in timed_out), timed_out[:5]
    during = [a for a in answers if outage.within(a)]
    assert len(during) >= 10, f"too few writes while the database was down: {len(during)}"
    slow = [a for a in during if a.status != 503 or a.ended - a.started > ANSWER_BOUND]
    assert not slow, slow[:5]
    assert all(a.retry_after for a in during), [a for a in during if not a.retry_after][:5]
    first_ok = min((a.ended for a in answers if a.ok and a.started >= outage.up), default=None)
    assert first_ok is not None, "no write was acknowledged after the database came back"
    recovered = first_ok - outage.up
    assert recovered < RECOVERY_BOUND
    return {
        "writes": len(answers),
        "acknowledged": sum(a.ok for a in answers),
        "during_outage": len(during),
        "max_503_ms": round(max(a.ended - a.started for a in during) * 1000),
        "first_503_after_stop_ms": round(
            min(a.ended for a in during if a.started >= outage.down) * 1000 - outage.down * 1000
        ),
        "timeouts_at_transitions": len(timed_out),
        "outcome_unknown": sum(a.unknown for a in answers),
        "recovered_s": round(recovered, 2),
    }


# ---------------------------------------------------------------- the registry


@pytest.mark.parametrize("mode", MODES)
def test_registry_writes_while_its_database_stops_are_answered_true(
    private_postgres: ThrowawayCluster,
    system_factory: Callable[[dict[str, str], dict[str, str]], System],
    mode: str,
) -> None:
    system = system_factory(postgres_env("REGISTRY", private_postgres), {})
    with httpx.Client(base_url=system.url, timeout=20) as http:
        ready_agent(http)
        updated = [ready_agent(http) for _ in range(3)]

    def creator(
        http: httpx.Client, rand: random.Random, stop: threading.Event, out: list[Answer]
    ) -> None:
        while not stop.is_set():
            key = f"create-{rand.getrandbits(64):016x}"
            out.append(ask(http, "create", key, lambda k=key: create_agent(http, k, k)))
            time.sleep(rand.random() * 0.05)

    def updater(agent_id: str) -> Any:
        def loop(
            http: httpx.Client, rand: random.Random, stop: threading.Event, out: list[Answer]
        ) -> None:
            version = 1
            while not stop.is_set():
                marker = f"update-{rand.getrandbits(64):016x}"
                answer = ask(
                    http,
                    f"update:{agent_id}",
                    marker,
                    lambda m=marker, v=version: http.put(
                        f"/v1/agents/{agent_id}",
                        json={"name": m},
                        headers={**RT, "If-Match": f'"{v}"'},
                    ),
                )
                if answer.unknown:  # read it back, as a client would
                    answer.landed = read_back(http, agent_id, version, marker)
                out.append(answer)
                if answer.ok or answer.landed:
                    version += 1
                time.sleep(rand.random() * 0.05)

        return loop

    answers, outage = write_through_an_outage(
        system.url,
        [creator, creator, creator, *(updater(a) for a in updated)],
        private_postgres,
        mode,
    )
    seen = check_answers(answers, outage)
    time.sleep(2.0)  # anything answered as failed that were still to land would be in by now

    with httpx.Client(base_url=system.url, timeout=20) as http:
        for answer in (a for a in answers if a.kind == "create"):
            again = create_agent(http, answer.key, answer.key)
            assert again.status_code in (200, 201), again.text
            replayed = again.headers.get("idempotent-replayed") == "true"
            if not answer.unknown:
                assert replayed == answer.ok, (answer, again.headers, again.text)
        for agent_id in updated:
            mine = [a for a in answers if a.kind == f"update:{agent_id}"]
            assert not [a for a in mine if a.status == 412], "an update answered as failed landed"
            applied = [a for a in mine if a.ok or a.landed]
            agent = http.get(f"/v1/agents/{agent_id}", headers=RT)
            assert agent.status_code == 200, agent.text
            assert agent.headers["etag"] == f'"{1 + len(applied)}"'
            if applied:
                assert agent.json()["name"] == applied[-1].key
    print(f"faults: registry database {mode}: {json.dumps(seen)}")


# ---------------------------------------------------------------- the executor


@pytest.mark.parametrize("mode", MODES)
def test_run_starts_while_the_executor_s_database_stops_are_answered_true(
    private_postgres: ThrowawayCluster,
    system_factory: Callable[[dict[str, str], dict[str, str]], System],
    mode: str,
) -> None:
    system = system_factory({}, postgres_env("EXECUTOR", private_postgres))
    with httpx.Client(base_url=system.url, timeout=20) as http:
        agents = [ready_agent(http) for _ in range(3)]

    def start_run(http: httpx.Client, agent_id: str, key: str) -> httpx.Response:
        return http.post(
            "/v1/runs",
            json={"agent_id": agent_id, "input": key},
            headers={**RT, "Idempotency-Key": key},
        )

    def starter(agent_id: str) -> Any:
        def loop(
            http: httpx.Client, rand: random.Random, stop: threading.Event, out: list[Answer]
        ) -> None:
            while not stop.is_set():
                key = f"run-{rand.getrandbits(64):016x}"
                out.append(ask(http, agent_id, key, lambda k=key: start_run(http, agent_id, k)))
                time.sleep(0.02 + rand.random() * 0.05)

        return loop

    answers, outage = write_through_an_outage(
        system.url, [starter(a) for a in agents], private_postgres, mode
    )
    seen = check_answers(answers, outage)

    with httpx.Client(base_url=system.url, timeout=40) as http:
        acked = {a.body["run_id"]: a for a in answers if a.ok}
        deadline = time.monotonic() + 120
        for run_id in acked:  # every acknowledged run is there and ends
            while True:
                reply = http.get(f"/v1/runs/{run_id}/wait?timeout=30", headers=RT)
                assert reply.status_code == 200, reply.text
                if reply.json()["status"] in ENDED:
                    break
                assert time.monotonic() < deadline, reply.text
        seen["ended"] = dict.fromkeys(ENDED, 0)
        for run_id in acked:
            status = http.get(f"/v1/runs/{run_id}", headers=RT).json()["status"]
            seen["ended"][status] += 1
        listed: set[str] = set()
        for agent_id in agents:
            reply = http.get(f"/v1/runs?agent_id={agent_id}&limit=1000", headers=RT)
            assert reply.status_code == 200, reply.text
            listed |= {r["run_id"] for r in reply.json()["runs"]}
        assert set(acked) <= listed
        unknown = sum(a.unknown for a in answers)
        assert len(listed) - len(acked) <= unknown, "a run start answered with an error was stored"
        for answer in (a for a in answers if a.failed):
            again = start_run(http, answer.kind, answer.key)
            assert again.status_code == 202, again.text
            assert "idempotent-replayed" not in again.headers, (answer, again.text)
    print(f"faults: executor database {mode}: {json.dumps(seen)}")
