"""The `RunStore` port: one scenario suite for every implementation.

The in-memory twin (unit tests), the SQL store on SQLite (the default) and on
PostgreSQL must keep the same promises: admission limits, session turns,
leases, cancellation and expiry. Time is passed in explicitly, so leases lapse
without waiting.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent_executor.adapters.memory import InMemoryRunStore
from agent_executor.adapters.run_store import MIGRATIONS, SqlRunStore
from agent_executor.application.ports import Admission, ClaimOutcome, RunStore
from agent_executor.domain.client_tools import ToolCall
from agent_executor.domain.runs import (
    RunCursor,
    RunFilter,
    RunOutput,
    RunRecord,
    RunStatus,
    Usage,
)
from agent_executor.errors import RunExists, SessionBusy, TooManyRuns
from agentrt_kit.sql import SqlDatabase
from agentrt_testkit.postgres import PostgresDatabase

LEASE = 30.0
T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """T0 plus `seconds`."""
    return T0 + timedelta(seconds=seconds)


def record(
    run_id: str,
    agent: str = "agent-a",
    *,
    when: datetime = T0,
    session: str = "",
    task: str = "task-1",
    owner: str = "owner-1",
) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        agent_id=agent,
        agent_version=3,
        status=RunStatus.RUNNING,
        created_at=when,
        started_at=when + timedelta(milliseconds=5),
        task_id=task,
        context_id="ctx-9",
        session_key=session,
        executor_id="executor-1",
        owner_id=owner,
    )


def limit(n: int) -> Admission:
    return Admission(max_runs_per_agent=n, lease_seconds=LEASE)


def session(key: str) -> Admission:
    return Admission(session_key=key, lease_seconds=LEASE)


def finish(
    store: RunStore, run_id: str, status: RunStatus = RunStatus.SUCCEEDED, **kw: object
) -> bool:
    values: dict[str, object] = {"finished_at": at(10), "usage": Usage(7, 3), "tool_calls": 2}
    values.update(kw)
    return store.finish(run_id, status, **values)  # type: ignore[arg-type]


def _sql(
    request: pytest.FixtureRequest, kind: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SqlDatabase]:
    if kind == "sqlite":
        db = SqlDatabase(f"sqlite:///{tmp_path_factory.mktemp('runs')}/x.db").open()
    else:
        pg: PostgresDatabase = request.getfixturevalue("postgres_db")
        schema: str = request.getfixturevalue("postgres_schema")
        db = SqlDatabase(pg.dsn, schema=schema).open()
    try:
        yield db
    finally:
        db.close()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunStore]:
    if request.param == "memory":
        yield InMemoryRunStore(lease_seconds=LEASE)
        return
    for db in _sql(request, request.param, tmp_path_factory):
        yield SqlRunStore(db, lease_seconds=LEASE)


@pytest.fixture(params=["sqlite", "postgres"])
def sql_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SqlRunStore]:
    for db in _sql(request, request.param, tmp_path_factory):
        yield SqlRunStore(db, lease_seconds=LEASE)


def is_utc(value: datetime | None) -> bool:
    return value is not None and value.utcoffset() == timedelta(0)


# ------------------------------------------------------------------ listing


def ids(records: list[RunRecord]) -> list[str]:
    return [r.run_id for r in records]


def test_selected_runs_come_newest_first_with_run_id_breaking_ties(store: RunStore) -> None:
    for run_id, seconds in (("run-a", 1), ("run-c", 2), ("run-b", 2), ("run-d", 3)):
        store.admit(record(run_id, when=at(seconds)), Admission())

    assert ids(store.select(RunFilter(), None, 10)) == ["run-d", "run-c", "run-b", "run-a"]
    assert ids(store.select(RunFilter(), None, 2)) == ["run-d", "run-c"]
    after_c = RunCursor(at(2), "run-c")
    assert ids(store.select(RunFilter(), after_c, 10)) == ["run-b", "run-a"]


def test_select_filters_combine(store: RunStore) -> None:
    store.admit(record("a1", "agent-a", when=at(1), task="t1", owner="alice"), Admission())
    store.admit(record("a2", "agent-a", when=at(2), task="t2", owner="alice"), Admission())
    store.admit(record("b1", "agent-b", when=at(3), task="t1", owner="bob"), Admission())
    finish(store, "a2", RunStatus.FAILED, error_code="INTERNAL")

    def select(**where: object) -> list[str]:
        return ids(store.select(RunFilter(**where), None, 10))  # type: ignore[arg-type]

    assert select(agent_id="agent-a") == ["a2", "a1"]
    assert select(task_id="t1") == ["b1", "a1"]
    assert select(owner_id="bob") == ["b1"]
    assert select(status=RunStatus.RUNNING) == ["b1", "a1"]
    assert select(agent_id="agent-a", status=RunStatus.FAILED) == ["a2"]
    assert select(agent_id="agent-a", task_id="t1", owner_id="alice") == ["a1"]
    assert select(agent_id="agent-a", owner_id="bob") == []


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_database_from_before_owners_keeps_its_runs(
    kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    for db in _sql(request, kind, tmp_path_factory):
        db.migrate("executor_runs", MIGRATIONS[:1])  # the schema as it was
        with db.transaction() as cur:
            cur.execute(
                f"INSERT INTO {db.table('executor_runs')} (run_id, agent_id, agent_version,"
                " task_id, context_id, session_key, executor_id, status, created_at,"
                f" heartbeat_at) VALUES ({', '.join([db.ph] * 10)})",
                ("old-run", "agent-a", 1, "t", "", "", "e", "succeeded", 1.0, 1.0),
            )
        store = SqlRunStore(db, lease_seconds=LEASE)
        old = store.get("old-run")
        assert old is not None
        assert (old.owner_id, old.attempts, old.status) == ("", 1, RunStatus.SUCCEEDED)
        store.admit(record("new-run", when=at(0), owner="alice"), Admission())
        assert ids(store.select(RunFilter(), None, 10)) == ["new-run", "old-run"]
        assert ids(store.select(RunFilter(owner_id="alice"), None, 10)) == ["new-run"]


# ------------------------------------------------------------------ admission


def test_an_admitted_run_reads_back_with_every_field(store: RunStore) -> None:
    admitted = record("run-1", session="agent-a:task-1")
    store.admit(admitted, Admission(max_runs_per_agent=5, session_key="agent-a:task-1"))

    got = store.get("run-1")
    assert got == admitted
    assert got is not admitted
    assert got.status is RunStatus.RUNNING
    assert got.finished_at is None
    assert got.usage == Usage()
    assert (got.tool_calls, got.error_code, got.error_message) == (0, "", "")
    assert is_utc(got.created_at)
    assert is_utc(got.started_at)
    assert store.get("no-such-run") is None
    assert (got.owner_id, got.attempts) == ("owner-1", 1)


def test_a_finished_run_reads_back_how_it_ended(store: RunStore) -> None:
    store.admit(record("run-1"), Admission())
    ended = at(12.5)
    assert finish(
        store,
        "run-1",
        RunStatus.FAILED,
        finished_at=ended,
        usage=Usage(120, 45),
        tool_calls=4,
        error_code="PROVIDER_ERROR",
        error_message="the model did not answer",
    )

    got = store.get("run-1")
    assert got is not None
    assert got.status is RunStatus.FAILED
    assert got.finished_at == ended
    assert is_utc(got.finished_at)
    assert got.usage == Usage(120, 45)
    assert got.tool_calls == 4
    assert (got.error_code, got.error_message) == ("PROVIDER_ERROR", "the model did not answer")
    assert (got.agent_id, got.agent_version, got.created_at) == ("agent-a", 3, T0)


def test_a_taken_run_id_is_refused_and_the_first_run_is_kept(store: RunStore) -> None:
    store.admit(record("run-1"), Admission())
    with pytest.raises(RunExists):
        store.admit(record("run-1", agent="agent-b", when=at(1)), Admission())
    finish(store, "run-1")
    with pytest.raises(RunExists):
        store.admit(record("run-1", when=at(2)), Admission())

    got = store.get("run-1")
    assert got is not None
    assert (got.agent_id, got.created_at, got.status) == ("agent-a", T0, RunStatus.SUCCEEDED)


def test_the_agent_limit_counts_only_live_runs_of_that_agent(store: RunStore) -> None:
    store.admit(record("a1"), limit(2))
    store.admit(record("a2"), limit(2))
    with pytest.raises(TooManyRuns) as refused:
        store.admit(record("a3"), limit(2))
    assert refused.value.reason == "AGENT_RUN_LIMIT"
    assert store.get("a3") is None
    store.admit(record("b1", agent="agent-b"), limit(2))  # other agents do not count

    assert finish(store, "a1")  # a finished run frees its slot
    store.admit(record("a3"), limit(2))

    store.heartbeat(["a2"], at(20))  # a2 stays live; a3 (last beat T0) lapses at T0+30
    store.admit(record("a4", when=at(31)), limit(2))
    with pytest.raises(TooManyRuns):
        store.admit(record("a5", when=at(31)), limit(2))
    assert store.get("a5") is None
    # Without a limit anything goes.
    store.admit(record("a6", when=at(31)), Admission(lease_seconds=LEASE))


def test_runs_of_one_session_take_turns(store: RunStore) -> None:
    store.admit(record("s1", session="agent-a:t1"), session("agent-a:t1"))
    with pytest.raises(SessionBusy):
        store.admit(record("s2", when=at(1), session="agent-a:t1"), session("agent-a:t1"))
    assert store.get("s2") is None
    # Another session of the same agent runs meanwhile.
    store.admit(record("o1", when=at(1), session="agent-a:t2"), session("agent-a:t2"))

    assert finish(store, "s1")
    store.admit(record("s2", when=at(2), session="agent-a:t1"), session("agent-a:t1"))

    # A heartbeat keeps the session busy; once s2's lease lapses, the session is free.
    store.heartbeat(["s2"], at(25))
    with pytest.raises(SessionBusy):
        store.admit(record("s3", when=at(50), session="agent-a:t1"), session("agent-a:t1"))
    store.admit(record("s3", when=at(56), session="agent-a:t1"), session("agent-a:t1"))
    assert store.get("s3") is not None


# ------------------------------------------------------------------ finishing


def test_a_run_finishes_only_once(store: RunStore) -> None:
    store.admit(record("run-1"), Admission())
    assert finish(store, "run-1", RunStatus.SUCCEEDED, usage=Usage(10, 5), tool_calls=2)
    assert not finish(
        store,
        "run-1",
        RunStatus.FAILED,
        finished_at=at(99),
        usage=Usage(1, 1),
        tool_calls=9,
        error_code="INTERNAL",
        error_message="late",
    )
    got = store.get("run-1")
    assert got is not None
    assert (got.status, got.finished_at, got.usage, got.tool_calls, got.error_code) == (
        RunStatus.SUCCEEDED,
        at(10),
        Usage(10, 5),
        2,
        "",
    )
    assert not finish(store, "no-such-run")


# ------------------------------------------------------------------ leases and cancellation


def test_a_heartbeat_renews_leases_and_reports_cancel_flags(store: RunStore) -> None:
    for run_id in ("r1", "r2", "r3"):
        store.admit(record(run_id), limit(10))
    assert store.heartbeat([], at(1)) == []
    assert store.heartbeat(["r1", "r2"], at(1)) == []

    found = store.request_cancel("r2", at(2))
    assert found is not None
    assert found[1] is True
    assert sorted(store.heartbeat(["r1", "r2", "unknown"], at(20))) == ["r2"]
    assert store.heartbeat(["r1"], at(21)) == []  # only ids asked about are reported

    # r1 and r2 were renewed at T0+20; r3 was not.
    assert [r.run_id for r in store.expire(at(31) - timedelta(seconds=LEASE), at(31))] == ["r3"]
    statuses = {r: store.get(r).status for r in ("r1", "r2", "r3")}  # type: ignore[union-attr]
    assert statuses == {"r1": RunStatus.RUNNING, "r2": RunStatus.RUNNING, "r3": RunStatus.FAILED}


def test_a_heartbeat_does_not_report_flags_of_finished_runs(store: RunStore) -> None:
    store.admit(record("r1"), Admission())
    assert store.request_cancel("r1", at(1)) is not None
    assert finish(store, "r1", RunStatus.CANCELLED)
    assert store.heartbeat(["r1"], at(2)) == []


def test_cancelling_an_unknown_run_finds_nothing(store: RunStore) -> None:
    assert store.request_cancel("no-such-run", T0) is None


def test_cancelling_a_finished_run_changes_nothing(store: RunStore) -> None:
    store.admit(record("run-1"), Admission())
    finish(store, "run-1")
    found = store.request_cancel("run-1", at(11))
    assert found is not None
    got, live = found
    assert live is False
    assert got.status is RunStatus.SUCCEEDED
    assert store.get("run-1") == got
    assert store.heartbeat(["run-1"], at(12)) == []


def test_cancelling_a_live_run_flags_it_for_its_executor(store: RunStore) -> None:
    store.admit(record("run-1"), Admission())
    store.heartbeat(["run-1"], at(20))
    found = store.request_cancel("run-1", at(40))  # lease renewed at 20: live until 50
    assert found is not None
    got, live = found
    assert live is True
    assert got.status is RunStatus.RUNNING
    assert store.get("run-1").status is RunStatus.RUNNING  # type: ignore[union-attr]
    assert store.heartbeat(["run-1"], at(41)) == ["run-1"]
    # The executor ends it as cancelled.
    assert finish(store, "run-1", RunStatus.CANCELLED, finished_at=at(42), error_code="CANCELLED")
    assert store.get("run-1").status is RunStatus.CANCELLED  # type: ignore[union-attr]


def test_cancelling_a_run_whose_lease_lapsed_records_it_cancelled_at_once(store: RunStore) -> None:
    store.admit(record("run-1", session="agent-a:t1"), session("agent-a:t1"))
    now = at(LEASE + 5)
    found = store.request_cancel("run-1", now)
    assert found is not None
    got, live = found
    assert live is True
    assert got.status is RunStatus.CANCELLED
    assert got.finished_at == now

    stored = store.get("run-1")
    assert stored is not None
    assert stored.status is RunStatus.CANCELLED
    assert stored.finished_at == now
    assert stored.error_code == "CANCELLED"
    assert not finish(store, "run-1", RunStatus.SUCCEEDED)  # its lost executor cannot revive it
    assert store.expire(at(100), at(100)) == []


# ------------------------------------------------------------------ expiry


def test_expiry_ends_lapsed_running_runs_as_executor_lost(store: RunStore) -> None:
    store.admit(record("live"), Admission())
    store.admit(record("lost"), Admission())
    store.admit(record("done"), Admission())
    finish(store, "done", usage=Usage(1, 2), tool_calls=1)
    store.heartbeat(["live"], at(20))

    now = at(LEASE + 1)
    assert len(store.expire(now - timedelta(seconds=LEASE), now)) == 1

    lost = store.get("lost")
    assert lost is not None
    assert lost.status is RunStatus.FAILED
    assert lost.error_code == "EXECUTOR_LOST"
    assert lost.error_message
    assert lost.finished_at == now
    assert store.get("live").status is RunStatus.RUNNING  # type: ignore[union-attr]
    done = store.get("done")
    assert done is not None
    assert (done.status, done.finished_at, done.usage) == (RunStatus.SUCCEEDED, at(10), Usage(1, 2))

    assert store.expire(now - timedelta(seconds=LEASE), now) == []  # nothing twice
    assert not finish(store, "lost")  # the lost run stays failed
    # The expired run's slot is free again.
    store.admit(record("next", when=now), limit(2))
    with pytest.raises(TooManyRuns):
        store.admit(record("over", when=now), limit(2))


# ------------------------------------------------------------------ concurrency (SQL)


def _all_at_once(n: int, attempt: Callable[[int], None]) -> tuple[int, list[BaseException]]:
    """Run `attempt(i)` in `n` threads released together; (successes, errors)."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []
    done: list[int] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        barrier.wait()
        try:
            attempt(i)
        except BaseException as e:
            with lock:
                errors.append(e)
        else:
            with lock:
                done.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return len(done), errors


def test_concurrent_admissions_never_exceed_the_agent_limit(sql_store: SqlRunStore) -> None:
    admitted, errors = _all_at_once(
        12, lambda i: sql_store.admit(record(f"c{i}", agent="agent-c"), limit(3))
    )
    assert admitted == 3
    assert len(errors) == 9
    assert all(isinstance(e, TooManyRuns) for e in errors), errors
    assert sum(sql_store.get(f"c{i}") is not None for i in range(12)) == 3


def test_concurrent_admissions_of_one_session_admit_one(sql_store: SqlRunStore) -> None:
    admitted, errors = _all_at_once(
        8,
        lambda i: sql_store.admit(record(f"s{i}", session="agent-a:t1"), session("agent-a:t1")),
    )
    assert admitted == 1
    assert len(errors) == 7
    assert all(isinstance(e, SessionBusy) for e in errors), errors


async def test_sqlite_is_called_on_the_loop_and_postgres_through_the_runner(
    sql_store: SqlRunStore,
) -> None:
    calls: list[str] = []

    async def runner(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(fn.__name__)
        return fn(*args, **kwargs)

    call = sql_store.db.calls(runner)
    await call(sql_store.admit, record("inline"), limit(0))
    found = await call(sql_store.get, "inline")

    assert found is not None
    assert calls == ([] if sql_store.db.dialect == "sqlite" else ["admit", "get"])


# ------------------------------------------------------------------ queued runs


def queued(
    run_id: str, *, when: datetime = T0, session: str = "", metadata: dict[str, str] | None = None
) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        agent_id="agent-a",
        agent_version=3,
        status=RunStatus.QUEUED,
        created_at=when,
        task_id="task-1",
        session_key=session,
        owner_id="owner-1",
        attempts=0,
        queued=True,
        metadata=metadata or {"team": "blue"},
        multitask_strategy="enqueue",
        webhook_url="https://hooks.example.com/x",
    )


def test_a_queued_run_keeps_its_request_and_options_until_claimed(store: RunStore) -> None:
    enqueued = store.enqueue(queued("q1"), b"request-bytes", reject_busy=False)
    assert (enqueued.created, enqueued.same_request) == (True, True)
    found = store.get("q1")
    assert found is not None
    assert (found.status, found.queued, found.attempts) == (RunStatus.QUEUED, True, 0)
    assert found.metadata == {"team": "blue"}
    assert (found.multitask_strategy, found.webhook_url) == (
        "enqueue",
        "https://hooks.example.com/x",
    )

    claim = store.claim("q1", "executor-2", at(1), max_attempts=3)
    assert claim.outcome is ClaimOutcome.CLAIMED
    assert claim.request == b"request-bytes"
    assert claim.record is not None
    assert (claim.record.status, claim.record.attempts) == (RunStatus.RUNNING, 1)
    assert claim.record.executor_id == "executor-2"
    assert claim.record.started_at == at(1)
    running = store.get("q1")
    assert running is not None
    assert (running.status, running.executor_id, running.attempts) == (
        RunStatus.RUNNING,
        "executor-2",
        1,
    )


def test_the_same_run_id_answers_the_first_run_and_tells_a_different_request(
    store: RunStore,
) -> None:
    store.enqueue(queued("q1"), b"one", reject_busy=False)
    again = store.enqueue(queued("q1", when=at(5)), b"one", reject_busy=False)
    assert (again.created, again.same_request) == (False, True)
    assert again.record.created_at == T0
    other = store.enqueue(queued("q1"), b"two", reject_busy=False)
    assert (other.created, other.same_request) == (False, False)
    meta = store.enqueue(queued("q1", metadata={"team": "red"}), b"one", reject_busy=False)
    assert meta.same_request is False


def test_claims_say_why_a_run_cannot_start_here(store: RunStore) -> None:
    assert store.claim("nothing", "e1", T0, max_attempts=3).outcome is ClaimOutcome.MISSING
    store.enqueue(queued("q1"), b"r", reject_busy=False)
    assert store.claim("q1", "e1", at(1), max_attempts=3).outcome is ClaimOutcome.CLAIMED
    # Another executor while the first renews its lease: a duplicate delivery.
    assert store.claim("q1", "e2", at(2), max_attempts=3).outcome is ClaimOutcome.ELSEWHERE
    # Once the lease lapsed, the other executor takes it over (a second start).
    later = store.claim("q1", "e2", at(1 + LEASE + 1), max_attempts=3)
    assert later.outcome is ClaimOutcome.CLAIMED
    assert later.record is not None
    assert later.record.attempts == 2
    assert (
        store.finish(
            "q1",
            RunStatus.SUCCEEDED,
            finished_at=at(40),
            usage=Usage(),
            tool_calls=0,
            executor_id="e1",
        )
        is False
    )
    assert (
        store.finish(
            "q1",
            RunStatus.SUCCEEDED,
            finished_at=at(40),
            usage=Usage(),
            tool_calls=0,
            executor_id="e2",
        )
        is True
    )
    assert store.claim("q1", "e3", at(41), max_attempts=3).outcome is ClaimOutcome.ENDED


def test_a_run_started_max_attempts_times_is_failed_not_started_again(store: RunStore) -> None:
    store.enqueue(queued("q1"), b"r", reject_busy=False)
    for n in range(2):
        claim = store.claim("q1", f"e{n}", at(n * (LEASE + 1)), max_attempts=2)
        assert claim.outcome is ClaimOutcome.CLAIMED
    last = store.claim("q1", "e9", at(3 * (LEASE + 1)), max_attempts=2)
    assert last.outcome is ClaimOutcome.EXHAUSTED
    found = store.get("q1")
    assert found is not None
    assert (found.status, found.error_code) == (RunStatus.FAILED, "ATTEMPTS_EXHAUSTED")


def test_runs_of_one_session_start_in_order_and_reject_refuses_a_busy_one(
    store: RunStore,
) -> None:
    store.enqueue(queued("s1", session="a:t"), b"r", reject_busy=True)
    with pytest.raises(SessionBusy):
        store.enqueue(queued("s2", when=at(1), session="a:t"), b"r", reject_busy=True)
    store.enqueue(queued("s2", when=at(1), session="a:t"), b"r", reject_busy=False)
    store.enqueue(queued("s3", when=at(2), session="a:t"), b"r", reject_busy=False)
    assert store.live_in_session("a:t", at(3)) == ["s1", "s2", "s3"]
    # s3 waits for s1 and s2, s2 for s1.
    assert store.claim("s3", "e1", at(3), max_attempts=3).outcome is ClaimOutcome.BUSY
    assert store.claim("s2", "e1", at(3), max_attempts=3).outcome is ClaimOutcome.BUSY
    assert store.claim("s1", "e1", at(3), max_attempts=3).outcome is ClaimOutcome.CLAIMED
    assert store.claim("s2", "e1", at(4), max_attempts=3).outcome is ClaimOutcome.BUSY
    assert store.finish("s1", RunStatus.SUCCEEDED, finished_at=at(5), usage=Usage(), tool_calls=0)
    assert store.claim("s2", "e1", at(6), max_attempts=3).outcome is ClaimOutcome.CLAIMED
    assert store.live_in_session("a:t", at(6)) == ["s2", "s3"]


def test_a_released_run_is_queued_again_and_a_cancelled_queued_run_ends_at_once(
    store: RunStore,
) -> None:
    store.enqueue(queued("q1"), b"r", reject_busy=False)
    store.claim("q1", "e1", at(1), max_attempts=3)
    assert store.release("q1", "e2") is False  # not its claim
    assert store.release("q1", "e1") is True
    found = store.get("q1")
    assert found is not None
    assert found.status is RunStatus.QUEUED
    cancelled = store.request_cancel("q1", at(2))
    assert cancelled is not None
    record_, live = cancelled
    assert live is True
    assert (record_.status, record_.error_code) == (RunStatus.CANCELLED, "CANCELLED")
    assert store.claim("q1", "e1", at(3), max_attempts=3).outcome is ClaimOutcome.ENDED


def test_queued_runs_nobody_looked_at_are_found_once_per_sweep(store: RunStore) -> None:
    store.enqueue(queued("q1"), b"r", reject_busy=False)
    store.enqueue(queued("q2", when=at(1)), b"r", reject_busy=False)
    assert store.unclaimed(at(0.5), at(100), 10) == ["q1"]
    assert store.unclaimed(at(50), at(100), 10) == ["q2"]  # q1 was marked seen at 100
    assert store.unclaimed(at(200), at(200), 1) == ["q1"]


def test_expiry_leaves_queued_runs_to_their_queue_until_the_queue_lost_them(
    store: RunStore,
) -> None:
    store.enqueue(queued("q1"), b"r", reject_busy=False)
    store.claim("q1", "e1", at(1), max_attempts=3)
    now = at(1 + LEASE + 5)
    assert store.expire(now - timedelta(seconds=LEASE), now, queued_stale_before=at(0)) == []
    ended = store.expire(now - timedelta(seconds=LEASE), now, queued_stale_before=now)
    assert [r.run_id for r in ended] == ["q1"]
    assert ended[0].error_code == "EXECUTOR_LOST"


def test_a_finished_run_keeps_its_output(store: RunStore) -> None:
    store.enqueue(queued("q1"), b"r", reject_busy=False)
    store.claim("q1", "e1", at(1), max_attempts=3)
    output = RunOutput("Hello", (ToolCall("call_1", "lookup", '{"q": 1}'),))
    assert store.finish(
        "q1",
        RunStatus.SUCCEEDED,
        finished_at=at(2),
        usage=Usage(3, 4),
        tool_calls=1,
        output=output,
        finish_reason="tool_calls",
    )
    found = store.get("q1")
    assert found is not None
    assert (found.output, found.finish_reason) == (output, "tool_calls")
