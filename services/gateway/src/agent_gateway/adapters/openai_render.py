"""Adapter: runs and agents in OpenAI's shapes — completions, chunks, models.

A reply and every chunk carry `task_id`, `context_id` and `run_id` in `metadata`
(COMPAT.md). The stream starts with a chunk whose delta has `role: "assistant"`,
relays each message delta as it comes, and ends with a chunk carrying
`finish_reason` (`stop`, `length`, `tool_calls`, or `error` with the error text), the
usage chunk when the client asked for it, and `[DONE]`.

A stream the gateway leaves because it is stopping ends the same way, with an error
chunk saying where to pick the run up (it goes on), and as data under `agentrt`.

Progress (the agent's own tool calls, workflow and task steps) is sent only to
clients that opt in, as SSE events named `agentrt.<type>` whose data is a
`chat.completion.chunk` with no choices and the event under `agentrt`: OpenAI's
client libraries treat every data line as a chunk, and one without choices is the
shape they already meet (the usage chunk), so they parse the stream unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from agent_gateway.domain.agents import AgentRecord
from agent_gateway.domain.chat import (
    FINISHED_WELL,
    Finished,
    Progress,
    RunResult,
    Started,
    ToolCall,
    Usage,
    failure_text,
)

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keepalive\n\n"
OWNED_BY = "agentrt"


def completion_id(run_id: str) -> str:
    """The `id` of a completion and of its chunks."""
    return f"chatcmpl-{run_id}"


def _metadata(task_id: str, context_id: str, run_id: str) -> dict[str, Any]:
    return {"task_id": task_id, "context_id": context_id or None, "run_id": run_id}


def _calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for call in calls
    ]


def usage_body(usage: Usage) -> dict[str, int]:
    """The `usage` object."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def message_body(content: str, tool_calls: Sequence[ToolCall]) -> dict[str, Any]:
    """An assistant message: its text, or (with client tool calls) the calls and any text."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["content"] = content or None
        message["tool_calls"] = _calls(tool_calls)
    return message


def completion_body(result: RunResult, model: str, created: int) -> dict[str, Any]:
    """The `chat.completion` object of a run that ended with a message or tool calls."""
    message = message_body(result.content, result.tool_calls)
    return {
        "id": completion_id(result.run_id),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason}],
        "usage": usage_body(result.usage),
        "metadata": _metadata(result.task_id, result.context_id, result.run_id),
    }


def model_body(agent: AgentRecord) -> dict[str, Any]:
    """An agent as an OpenAI `model` object."""
    created = agent.created_at or agent.updated_at
    return {
        "id": agent.id,
        "object": "model",
        "created": int(created.timestamp()) if created is not None else 0,
        "owned_by": agent.owner_id or OWNED_BY,
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

    def _chunk(
        self,
        delta: Mapping[str, Any] | None,
        finish_reason: str | None = None,
        usage: Usage | None = None,
    ) -> dict[str, Any]:
        chunk: dict[str, Any] = dict(self._base)
        chunk["choices"] = (
            [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        )
        if self._include_usage:
            # OpenAI's form: `usage` is null on every chunk but the last, which has no choices.
            chunk["usage"] = usage_body(usage) if usage is not None else None
        chunk["metadata"] = self._metadata
        return chunk

    def _frame(
        self,
        delta: Mapping[str, Any] | None,
        finish_reason: str | None = None,
        usage: Usage | None = None,
    ) -> bytes:
        return _data(self._chunk(delta, finish_reason, usage))

    def opening(self) -> bytes:
        """The first chunk: the assistant's role, no content yet."""
        return self._frame({"role": "assistant", "content": ""})

    def delta(self, content: str) -> bytes:
        """A chunk of assistant text."""
        return self._frame({"content": content})

    def tool_calls(self, calls: Sequence[ToolCall]) -> bytes:
        """The client tool calls the model made, as OpenAI streams them.

        Per call, a first chunk names it (index, id, type, name, empty arguments) and a
        second carries the arguments, so clients that keep the first chunk and append the
        arguments of later ones build each call once.
        """
        frames = b""
        for index, call in enumerate(calls):
            named = {
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            frames += self._frame({"tool_calls": [named]})
            if call.arguments:
                arguments = {"index": index, "function": {"arguments": call.arguments}}
                frames += self._frame({"tool_calls": [arguments]})
        return frames

    def progress(self, event: Progress) -> bytes:
        """A progress event (opt-in): a named SSE event whose data is a choiceless chunk."""
        chunk = self._chunk(None)
        chunk.pop("usage", None)
        chunk["agentrt"] = {"type": event.type, **event.data}
        return b"event: agentrt." + event.type.encode() + b"\n" + _data(chunk)

    def closing(self, finished: Finished) -> bytes:
        """The last frames: finish reason (with the error text on failure), usage, [DONE]."""
        if finished.finish_reason in FINISHED_WELL:
            frames = self._frame({}, finished.finish_reason)
        else:
            frames = self._frame({"content": failure_text(finished)}, "error")
        if self._include_usage:
            frames += self._frame(None, usage=finished.usage)
        return frames + DONE

    def stopped(self, sequence: int) -> bytes:
        """The last frames of a stream a stopping gateway leaves while its run goes on.

        The error text says where to pick the run up; `agentrt` says it as data: the run,
        and the id of its last event relayed (`Last-Event-ID` for its event stream).
        """
        run_id = self._metadata["run_id"]
        text = (
            f"[GATEWAY_STOPPING] the gateway is stopping; run {run_id} goes on: follow it "
            f"at /v1/runs/{run_id}/events with Last-Event-ID: {sequence}, or join it at "
            f"/v1/runs/{run_id}/wait"
        )
        chunk = self._chunk({"content": text}, "error")
        chunk["agentrt"] = {
            "type": "gateway_stopping",
            "run_id": run_id,
            "last_event_id": sequence,
        }
        frames = _data(chunk)
        if self._include_usage:  # the run has not ended: nothing is counted yet
            frames += self._frame(None, usage=Usage())
        return frames + DONE


def _data(chunk: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
