"""Domain: OpenAI-compatible chat completions over agent runs.

A request names the agent in `model`; its reply and chunks carry `task_id` and
`context_id` in `metadata` (COMPAT.md). The stream starts with a chunk whose delta
has `role: "assistant"`, relays each message delta as it comes, and ends with a
chunk carrying `finish_reason` (`stop`, `length` or `error` with the error text),
the usage chunk when the client asked for it, and `[DONE]`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Message:
    """One message of the conversation a client sends."""

    role: str
    content: str
    name: str = ""
    tool_call_id: str = ""


@dataclass(frozen=True, slots=True)
class RunInput:
    """What the executor runs."""

    agent_id: str
    messages: Sequence[Message]
    sampling: Mapping[str, Any] = field(default_factory=dict)
    task_id: str = ""
    context_id: str = ""
    user_id: str = ""


@dataclass(frozen=True, slots=True)
class ComposeInput:
    """What an agent draft is made from."""

    template_id: str
    instructions: str
    suggested_name: str = ""
    suggested_tools: Sequence[str] = ()
    llm_config_id: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of a run."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def body(self) -> dict[str, int]:
        """The `usage` object."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a non-streamed run ended."""

    run_id: str
    content: str
    finish_reason: str
    usage: Usage
    task_id: str
    context_id: str
    error_code: str = ""
    error_message: str = ""


@dataclass(frozen=True, slots=True)
class Started:
    """The run started (the stream's first event)."""

    run_id: str
    task_id: str
    context_id: str


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of assistant text."""

    content: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The run ended: `finish_reason` stop, length, error or cancelled."""

    finish_reason: str
    usage: Usage
    error_code: str = ""
    error_message: str = ""


RunEvent = Started | Delta | Finished


def new_task_id() -> str:
    """A task id for a conversation the client did not name."""
    return uuid.uuid4().hex


def completion_id(run_id: str) -> str:
    """The `id` of a completion and of its chunks."""
    return f"chatcmpl-{run_id}"


def _metadata(task_id: str, context_id: str, run_id: str) -> dict[str, Any]:
    return {"task_id": task_id, "context_id": context_id or None, "run_id": run_id}


def completion_body(result: RunResult, model: str, created: int) -> dict[str, Any]:
    """The `chat.completion` object of a run that ended with a message."""
    return {
        "id": completion_id(result.run_id),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.content},
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": result.usage.body(),
        "metadata": _metadata(result.task_id, result.context_id, result.run_id),
    }


class ChunkWriter:
    """Turns run events into `text/event-stream` frames of `chat.completion.chunk`s."""

    def __init__(self, started: Started, model: str, created: int, *, include_usage: bool) -> None:
        self._base = {
            "id": completion_id(started.run_id),
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        self._metadata = _metadata(started.task_id, started.context_id, started.run_id)
        self._include_usage = include_usage

    def _frame(
        self,
        delta: Mapping[str, Any] | None,
        finish_reason: str | None = None,
        usage: Usage | None = None,
    ) -> bytes:
        chunk: dict[str, Any] = dict(self._base)
        chunk["choices"] = (
            [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        )
        if self._include_usage:
            # OpenAI's form: `usage` is null on every chunk but the last, which has no choices.
            chunk["usage"] = usage.body() if usage is not None else None
        chunk["metadata"] = self._metadata
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    def opening(self) -> bytes:
        """The first chunk: the assistant's role, no content yet."""
        return self._frame({"role": "assistant", "content": ""})

    def delta(self, content: str) -> bytes:
        """A chunk of assistant text."""
        return self._frame({"content": content})

    def closing(self, finished: Finished) -> bytes:
        """The last frames: finish reason (with the error text on failure), usage, [DONE]."""
        if finished.finish_reason in ("stop", "length"):
            frames = self._frame({}, finished.finish_reason)
        else:
            frames = self._frame({"content": failure_text(finished)}, "error")
        if self._include_usage:
            frames += self._frame(None, usage=finished.usage)
        return frames + DONE

    def failure(self, message: str) -> bytes:
        """The last frames when the stream broke off (the executor went away)."""
        return self.closing(Finished("error", Usage(), "EXECUTOR_LOST", message))


def failure_text(finished: Finished | RunResult) -> str:
    """The error text of a run that did not end with a message."""
    code = finished.error_code or "EXECUTION_ERROR"
    return f"[{code}] {finished.error_message or 'the run failed'}"
