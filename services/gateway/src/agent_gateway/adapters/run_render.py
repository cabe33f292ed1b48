"""Adapter: runs in the HTTP API's shapes — the run resource, a started run, its events.

A run's events are served as server-sent events: `id: <sequence>`, `event: <type>`,
`data: <JSON>`, where the JSON is the event's fields with `type`, `run_id`,
`sequence` and `occurred_at`. A client resumes with the last `id` it read
(`Last-Event-ID`). A stream that cannot go on ends with `event: error` (no `id`, so a
resuming client keeps its place).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from agent_gateway.adapters.openai_render import message_body, usage_body
from agent_gateway.domain.agents import iso
from agent_gateway.domain.chat import Message, Usage
from agent_gateway.domain.runs import RunRecord, StoredEvent

# Tells an EventSource how long to wait before it resumes a stream the gateway ended.
RESUME_AFTER_MS = 1000


def run_body(run: RunRecord) -> dict[str, Any]:
    """A run as `/v1/runs` answers it."""
    error = {"code": run.error_code, "message": run.error_message} if run.error_code else None
    output = run.output
    return {
        "run_id": run.run_id,
        "agent_id": run.agent_id,
        "agent_version": run.agent_version,
        "status": run.status,
        "task_id": run.task_id,
        "context_id": run.context_id or None,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "usage": usage_body(run.usage),
        "tool_calls": run.tool_calls,
        "error": error,
        "executor_id": run.executor_id or None,
        "attempts": run.attempts,
        "queued": run.queued,
        "metadata": dict(run.metadata),
        "multitask_strategy": run.multitask_strategy or None,
        "output": message_body(output.content, output.tool_calls) if output else None,
        "finish_reason": run.finish_reason or None,
        "rolled_back": run.rolled_back,
    }


def accepted(
    run: RunRecord, created: bool, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """202 with a started run, where to find it, and whether it was started before."""
    found = {"Location": f"/v1/runs/{run.run_id}", **(headers or {})}
    if not created:
        found["Idempotent-Replayed"] = "true"
    return JSONResponse(run_body(run), status_code=202, headers=found)


def _plain(value: Any) -> Any:
    if isinstance(value, Usage):
        return usage_body(value)
    if isinstance(value, Message):
        return message_body(value.content, value.tool_calls)
    return value


def event_frame(run_id: str, event: StoredEvent) -> bytes:
    """One event as an SSE frame."""
    data = {
        "type": event.type,
        "run_id": run_id,
        "sequence": event.sequence,
        "occurred_at": iso(event.occurred_at),
        **{key: _plain(value) for key, value in event.data.items()},
    }
    return (
        f"id: {event.sequence}\nevent: {event.type}\ndata: "
        f"{json.dumps(data, separators=(',', ':'))}\n\n"
    ).encode()


def error_frame(run_id: str, code: str, message: str) -> bytes:
    """The frame that ends a stream which cannot go on (the run itself may go on)."""
    data = {"type": "error", "run_id": run_id, "code": code, "message": message}
    return (
        f"event: error\nretry: {RESUME_AFTER_MS}\ndata: "
        f"{json.dumps(data, separators=(',', ':'))}\n\n"
    ).encode()
