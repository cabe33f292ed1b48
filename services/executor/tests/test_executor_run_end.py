"""A run's end is stored again while the run store is unavailable, then handed over."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from agent_executor.adapters.memory import InMemoryRunStore, ListEventSink
from agent_executor.application.run_driver import RunDriver
from agent_executor.domain.runs import RunRecord, RunStatus, Usage
from agentrt_kit.concurrency import run_inline
from agentrt_kit.errors import Internal, Unavailable

NOW = datetime(2026, 12, 6, tzinfo=UTC)


class FlakyStore(InMemoryRunStore):
    """A run store whose `finish` fails with `errors`, one per call, before it works."""

    def __init__(self, *errors: Exception) -> None:
        super().__init__()
        self.errors = list(errors)
        self.finish_calls = 0

    def finish(self, run_id: str, status: RunStatus, **fields: Any) -> bool:
        self.finish_calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return super().finish(run_id, status, **fields)


def driver(store: FlakyStore, patience: float) -> RunDriver:
    return RunDriver(
        store=store,  # type: ignore[arg-type]
        events=ListEventSink(),
        call_store=run_inline,
        clock=lambda: NOW,
        end_patience=patience,
    )


def running(store: FlakyStore) -> RunRecord:
    record = RunRecord("run-1", "agent-a", 1, RunStatus.RUNNING, NOW, started_at=NOW)
    store.records[record.run_id] = record
    record.finished_at = NOW
    return record


async def record_end(store: FlakyStore, patience: float) -> bool:
    return await driver(store, patience)._record_end(
        running(store), RunStatus.SUCCEEDED, usage=Usage(), tool_calls=0
    )


async def test_an_end_is_stored_once_the_store_is_back() -> None:
    store = FlakyStore(Unavailable("database unavailable"), Unavailable("database unavailable"))
    assert await record_end(store, patience=30)
    assert store.finish_calls == 3
    assert store.records["run-1"].status is RunStatus.SUCCEEDED


async def test_an_end_not_stored_within_the_patience_is_given_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FlakyStore(*(Unavailable("database unavailable") for _ in range(100)))
    assert not await record_end(store, patience=0.3)
    assert 2 <= store.finish_calls < 100
    assert store.records["run-1"].status is RunStatus.RUNNING
    assert "the end of a run could not be stored; handed over" in caplog.text


async def test_another_failure_is_logged_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore(Internal("a bug"))
    assert await record_end(store, patience=30)
    assert store.finish_calls == 1
    assert "recording the end of a run failed" in caplog.text
