"""Sandbox harness: calls a custom agent's Python entry point once, inside the sandbox.

Protocol with the tools service (JSON lines; everything is untrusted on the other side):
the service writes `{"messages": [...], "agent": {...}}` to the command descriptor
first, then one `{"type": "tool_result", "id": ..., "result": {...}}` per tool call;
the harness writes `progress`, `tool_call`, and finally `result` or `error` to the
report descriptor. What the code prints to stdout streams as progress.
"""

import asyncio
import inspect
import json
import os
import resource
import runpy
import sys
import traceback
from typing import Any

MAX_REPLY_CHARS = 1_000_000


class Agent:
    """What the agent's code gets as its second argument."""

    def __init__(self, facts: dict[str, Any], report: Any, commands: Any) -> None:
        self.id = facts.get("id", "")
        self.name = facts.get("name", "")
        self.version = facts.get("version", 0)
        self.config = facts.get("config", {})
        self._report, self._commands, self._calls = report, commands, 0

    def _send(self, message: dict[str, Any]) -> None:
        self._report.write(json.dumps(message) + "\n")
        self._report.flush()

    def progress(self, text: object) -> None:
        """Stream a line of progress to whoever watches the run."""
        self._send({"type": "progress", "text": str(text)})

    def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call one of the agent's tools; {content, data, artifacts, error}."""
        if not isinstance(name, str) or not name:
            raise ValueError("tool name must be a non-empty string")
        if arguments is not None and not isinstance(arguments, dict):
            raise TypeError("tool arguments must be a dict")
        self._calls += 1
        call_id = str(self._calls)
        self._send({"type": "tool_call", "id": call_id, "name": name, "arguments": arguments or {}})
        line = self._commands.readline()
        if not line:
            raise RuntimeError("the service stopped answering tool calls")
        answer = json.loads(line)
        if answer.get("id") != call_id:
            raise RuntimeError("tool result out of order")
        result: dict[str, Any] = answer.get("result") or {}
        return result


def reply_of(value: object) -> str:
    """The reply text of the entry point's return value."""
    if isinstance(value, str):
        return value[:MAX_REPLY_CHARS]
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        content: str = value["content"]
        return content[:MAX_REPLY_CHARS]
    if value is None:
        return ""
    return json.dumps(value, default=str)[:MAX_REPLY_CHARS]


def main() -> int:
    """Load the code, call its entry point, report the reply or the error."""
    report = os.fdopen(int(os.environ.pop("AGENTRT_REPORT_FD")), "w", encoding="utf-8")
    commands = os.fdopen(int(os.environ.pop("AGENTRT_COMMAND_FD")), "r", encoding="utf-8")
    code, entry = os.environ.pop("AGENTRT_CODE"), os.environ.pop("AGENTRT_ENTRY")
    os.environ.pop("AGENTRT_OUTPUT", None)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress, live
    start = json.loads(commands.readline())
    agent = Agent(start.get("agent") or {}, report, commands)

    def finish(message: dict[str, Any]) -> int:
        sys.stdout.flush()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        report.write(json.dumps({"type": "usage", "max_rss_kb": peak}) + "\n")
        report.write(json.dumps(message) + "\n")
        report.flush()
        return 0 if message["type"] == "result" else 1

    try:
        namespace = runpy.run_path(code, run_name="agent")
    except SyntaxError as e:
        return finish(
            {"type": "error", "code": "INVALID_CODE", "message": f"{e.msg} (line {e.lineno})"}
        )
    except BaseException as e:
        return finish({"type": "error", "code": "CODE_ERROR", "message": _own_traceback(e, code)})
    function = namespace.get(entry)
    if not callable(function):
        return finish(
            {"type": "error", "code": "INVALID_CODE", "message": f"no function {entry} in the code"}
        )
    try:
        value = function(start.get("messages") or [], agent)
        if inspect.isawaitable(value):
            value = asyncio.run(_awaited(value))
    except BaseException as e:
        return finish({"type": "error", "code": "CODE_ERROR", "message": _own_traceback(e, code)})
    return finish({"type": "result", "reply": reply_of(value)})


async def _awaited(value: Any) -> Any:
    return await value


def _own_traceback(error: BaseException, code: str) -> str:
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == code]
    text = "".join(traceback.format_list(frames)) + "".join(traceback.format_exception_only(error))
    return text[-4000:]


if __name__ == "__main__":
    sys.exit(main())
