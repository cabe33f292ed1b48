"""Application: the built-in file tools, confined to the caller's workspace.

Names and arguments follow the compatible runtime: `read_lines`, `grep_file`,
`create_file`, `delete_file`, plus `list_files` so an agent can see what is
there. Patterns are RE2 (linear time: no catastrophic backtracking, no
back-references or look-around).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import re2

from agentrt_kit.errors import invalid
from tool_service.application.environment import ToolEnv, confined, display, parts_of
from tool_service.domain.text import decode_text, is_binary, matching_lines, slice_lines
from tool_service.domain.tools import Artifact, SideEffect, ToolFailure, ToolResult, ToolSpec

FILENAME = {"type": "string", "minLength": 1, "description": "Path relative to the workspace."}


class FileTool:
    """A tool whose work is file I/O: it runs on a worker thread, never on the event loop."""

    async def run(self, args: Mapping[str, Any], env: ToolEnv) -> ToolResult:
        """Do the work on a worker thread."""
        return await env.run_blocking(self._run, args, env)

    def _run(self, args: Mapping[str, Any], env: ToolEnv) -> ToolResult:
        raise NotImplementedError  # pragma: no cover - every file tool defines it


def _text_bytes(env: ToolEnv, args: Mapping[str, Any]) -> tuple[list[str], bytes]:
    """The file named by `filename`, refused unless it is text."""
    parts = parts_of(args["filename"], "filename")
    with env.workspaces.open(env.workspace) as ws, confined("filename"):
        data = ws.read_bytes(parts, env.limits.max_read_bytes)
    if is_binary(data):
        raise ToolFailure(
            "BINARY_FILE", f"{display(parts)} is not a text file", bytes_used=len(data)
        )
    return parts, data


class ReadLines(FileTool):
    """read_lines(filename, start=1, end=None)."""

    spec = ToolSpec(
        name="read_lines",
        description="Read lines of a text file in the workspace (1-based, inclusive range).",
        arguments_schema={
            "type": "object",
            "properties": {
                "filename": FILENAME,
                "start": {"type": "integer", "minimum": 1, "default": 1},
                "end": {"type": ["integer", "null"], "minimum": 1, "default": None},
            },
            "required": ["filename"],
            "additionalProperties": False,
        },
        side_effect=SideEffect.READ_ONLY,
    )

    def _run(self, args: Mapping[str, Any], env: ToolEnv) -> ToolResult:
        start, end = int(args["start"]), args.get("end")
        if end is not None and int(end) < start:
            raise invalid("arguments.end", "must not be before start")
        parts, data = _text_bytes(env, args)
        size = len(data)
        lines, total, truncated = slice_lines(
            decode_text(data), start, None if end is None else int(end), env.limits.max_lines
        )
        last = start + len(lines) - 1 if lines else start - 1
        return ToolResult(
            content="\n".join(lines),
            data={
                "filename": display(parts),
                "start": start,
                "end": last,
                "total_lines": total,
                "truncated": truncated,
            },
            bytes=size,
        )


@functools.lru_cache(maxsize=256)
def compiled(pattern: str, ignore_case: bool, max_mem: int) -> Any:
    """The RE2 program for a grep pattern (cached: agents repeat their searches).

    Line-by-line semantics in one pass over the file: no match may contain a newline,
    and ^ and $ match at every line's ends.
    """
    options = re2.Options()
    options.case_sensitive = not ignore_case
    options.max_mem = max_mem
    options.log_errors = False
    options.never_nl = True
    return re2.compile(f"(?m){pattern}".encode(), options)


class GrepFile(FileTool):
    """grep_file(filename, pattern, ignore_case=False, line_numbers=True)."""

    spec = ToolSpec(
        name="grep_file",
        description="Search a text file in the workspace for lines matching an RE2 pattern.",
        arguments_schema={
            "type": "object",
            "properties": {
                "filename": FILENAME,
                "pattern": {"type": "string", "minLength": 1},
                "ignore_case": {"type": "boolean", "default": False},
                "line_numbers": {"type": "boolean", "default": True},
            },
            "required": ["filename", "pattern"],
            "additionalProperties": False,
        },
        side_effect=SideEffect.READ_ONLY,
    )

    def _run(self, args: Mapping[str, Any], env: ToolEnv) -> ToolResult:
        pattern: str = args["pattern"]
        if len(pattern) > env.limits.max_pattern_chars:
            raise invalid(
                "arguments.pattern", f"is longer than {env.limits.max_pattern_chars} characters"
            )
        try:
            regex = compiled(pattern, bool(args["ignore_case"]), env.limits.regex_max_mem)
        except re2.error as e:
            raise invalid("arguments.pattern", f"is not a valid RE2 pattern: {e}") from None
        parts, data = _text_bytes(env, args)
        size = len(data)

        def find(haystack: bytes, pos: int) -> int | None:
            match = regex.search(haystack, pos)
            return match.start() if match else None

        matches, truncated = matching_lines(data, find, env.limits.max_matches)
        numbered = bool(args["line_numbers"])
        content = "\n".join(f"{n}:{line}" if numbered else line for n, line in matches)
        return ToolResult(
            content=content,
            data={
                "filename": display(parts),
                "matches": len(matches),
                "line_numbers": [n for n, _ in matches],
                "truncated": truncated,
            },
            bytes=size,
        )


class CreateFile(FileTool):
    """create_file(filename, content, overwrite=False)."""

    spec = ToolSpec(
        name="create_file",
        description="Create a text file in the workspace (its directories too).",
        arguments_schema={
            "type": "object",
            "properties": {
                "filename": FILENAME,
                "content": {"type": "string"},
                "overwrite": {"type": "boolean", "default": False},
            },
            "required": ["filename", "content"],
            "additionalProperties": False,
        },
        side_effect=SideEffect.AT_MOST_ONCE,
    )

    def _run(self, args: Mapping[str, Any], env: ToolEnv) -> ToolResult:
        parts = parts_of(args["filename"], "filename")
        try:
            data = args["content"].encode("utf-8")
        except UnicodeEncodeError:
            raise invalid("arguments.content", "is not valid Unicode text") from None
        if len(data) > env.limits.max_write_bytes:
            limit = env.limits.max_write_bytes
            raise ToolFailure(
                "TOO_LARGE", f"content is {len(data)} bytes; at most {limit} may be written"
            )
        with env.workspaces.open(env.workspace) as ws, confined("filename"):
            ws.write_bytes(parts, data, bool(args["overwrite"]))
        path = display(parts)
        return ToolResult(
            content=f"wrote {len(data)} bytes to {path}",
            data={"filename": path, "bytes": len(data)},
            artifacts=(Artifact("file", path, "text/plain", len(data)),),
            bytes=len(data),
        )


class DeleteFile(FileTool):
    """delete_file(filename, confirm=False)."""

    spec = ToolSpec(
        name="delete_file",
        description="Delete a file in the workspace; `confirm` must be true.",
        arguments_schema={
            "type": "object",
            "properties": {
                "filename": FILENAME,
                "confirm": {"type": "boolean", "default": False},
            },
            "required": ["filename"],
            "additionalProperties": False,
        },
        side_effect=SideEffect.AT_MOST_ONCE,
    )

    def _run(self, args: Mapping[str, Any], env: ToolEnv) -> ToolResult:
        parts = parts_of(args["filename"], "filename")
        if not args["confirm"]:
            raise ToolFailure(
                "CONFIRMATION_REQUIRED", "deleting needs confirm=true; nothing was deleted"
            )
        with env.workspaces.open(env.workspace) as ws, confined("filename"):
            ws.delete(parts)
        path = display(parts)
        return ToolResult(content=f"deleted {path}", data={"filename": path})


class ListFiles(FileTool):
    """list_files(path=".")."""

    spec = ToolSpec(
        name="list_files",
        description="List the entries of a directory in the workspace.",
        arguments_schema={
            "type": "object",
            "properties": {"path": {"type": "string", "default": "."}},
            "additionalProperties": False,
        },
        side_effect=SideEffect.READ_ONLY,
    )

    def _run(self, args: Mapping[str, Any], env: ToolEnv) -> ToolResult:
        parts = parts_of(args["path"], "path", allow_root=True)
        limit = env.limits.max_list_entries
        with env.workspaces.open(env.workspace) as ws, confined("path"):
            entries = ws.list(parts, limit + 1)
        truncated = len(entries) > limit
        entries = entries[:limit]
        lines = [
            f"{e.name}/"
            if e.kind == "directory"
            else f"{e.name} ({e.size_bytes} bytes)"
            if e.kind == "file"
            else f"{e.name} [{e.kind}]"
            for e in entries
        ]
        return ToolResult(
            content="\n".join(lines) if lines else "(empty)",
            data={
                "path": display(parts),
                "entries": [vars(e) for e in entries],
                "truncated": truncated,
            },
        )


FILE_TOOLS = (ReadLines(), GrepFile(), CreateFile(), DeleteFile(), ListFiles())
