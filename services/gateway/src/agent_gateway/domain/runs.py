"""Domain: runs as HTTP callers see them — records, queued starts, stored events, keys.

Every chat completion is a run with a durable record. A run may also be started in the
background (`RunStart`): it is queued, runs on whichever executor replica takes it, and
its events are kept, so any caller may follow them from any point (`StoredEvent`). A
client makes a start (or a chat completion) safe to retry with an idempotency key: the
run id is derived from the caller and the key, so a retry names the same run.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent_gateway.domain.chat import Message, RunInput, RunResult, Usage

MULTITASK_STRATEGIES = ("reject", "enqueue", "interrupt", "rollback")
OPEN = frozenset({"queued", "running"})  # the statuses a run can still leave
TERMINAL_EVENTS = frozenset({"run_completed", "run_failed"})
# An Idempotency-Key: 1-255 printable ASCII characters.
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")


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
    queued: bool = False  # started through the run queue (background)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    multitask_strategy: str = ""  # queued runs only
    output: Message | None = None  # the final assistant message once it has succeeded
    finish_reason: str = ""  # stop | length | tool_calls once it has succeeded
    rolled_back: bool = False  # cancelled with its steps undone in its conversation

    def result(self) -> RunResult:
        """How the run ended, as a chat completion reports it (the run has ended)."""
        if self.status == "succeeded":
            finish_reason = self.finish_reason or "stop"
        else:
            finish_reason = "cancelled" if self.status == "cancelled" else "error"
        output = self.output
        return RunResult(
            run_id=self.run_id,
            content=output.content if output is not None else "",
            finish_reason=finish_reason,
            usage=self.usage,
            task_id=self.task_id,
            context_id=self.context_id,
            error_code=self.error_code,
            error_message=self.error_message,
            tool_calls=output.tool_calls if output is not None else (),
            agent_version=self.agent_version,
        )


@dataclass(frozen=True, slots=True)
class RunStart:
    """A run to queue (a background run): the input, and what the caller attaches to it."""

    input: RunInput
    webhook_url: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    multitask_strategy: str = "reject"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event of a run's stored log: its sequence number (1, 2, ...), type and data.

    `type` is the executor's event name (run_started, message_delta, tool_call_started,
    tool_call_finished, step_progress, message_completed, run_completed, run_failed);
    `data` holds the event's fields as plain values (`Usage` and `Message` as such).
    """

    sequence: int
    type: str
    data: Mapping[str, Any]
    occurred_at: datetime | None = None

    @property
    def terminal(self) -> bool:
        """Whether this is the run's last event."""
        return self.type in TERMINAL_EVENTS


@dataclass(frozen=True, slots=True)
class RunQuery:
    """A page of the run list; empty filters match any run."""

    agent_id: str = ""
    task_id: str = ""
    status: str = ""
    owner_id: str = ""
    limit: int = 50
    page_token: str = ""


def valid_idempotency_key(key: str) -> bool:
    """Whether `key` is an acceptable Idempotency-Key (1-255 printable ASCII characters)."""
    return _IDEMPOTENCY_KEY.fullmatch(key) is not None


def new_run_id() -> str:
    """The id of a run the gateway starts without an idempotency key (as the executor's)."""
    return uuid.uuid4().hex


def idempotent_run_id(principal_id: str, key: str) -> str:
    """The run id a caller's idempotency key names.

    The same for every retry, and for no other caller: it is derived from the caller's
    id and the key, never from the key alone.
    """
    digest = hashlib.sha256(f"{principal_id}\0{key}".encode()).hexdigest()
    return f"idem-{digest[:32]}"
