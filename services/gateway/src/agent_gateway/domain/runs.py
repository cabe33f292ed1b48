"""Domain: a run as HTTP callers read it — its record, and a page of the run list."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from agent_gateway.domain.chat import Usage


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run's durable record, as the executor keeps it."""

    run_id: str
    agent_id: str
    agent_version: int
    status: str
    task_id: str
    context_id: str
    owner_id: str
    usage: Usage
    tool_calls: int
    executor_id: str
    attempts: int = 1
    error_code: str = ""
    error_message: str = ""
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RunQuery:
    """A page of the run list; empty filters match any run."""

    agent_id: str = ""
    task_id: str = ""
    status: str = ""
    owner_id: str = ""
    limit: int = 50
    page_token: str = ""
