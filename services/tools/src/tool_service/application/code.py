"""Application: running untrusted code: the `run_code` tool and agents' code (RunAgentCode).

Both go to the `Sandbox` port, one fresh sandbox per call. `run_code` is
at-most-once (the runner claims its idempotency key in the ledger first): code may
have effects through the files it returns. Its output folder's files are saved in
the caller's workspace under `output_dir`, through the same confinement as every
file tool. Input `files` are read from the workspace the same way and shown to the
program read-only under /workspace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from agentrt_kit.concurrency import BlockingRunner
from agentrt_kit.context import current_actor, current_request_id
from agentrt_kit.errors import FieldViolation, InvalidArgument
from tool_service.application.environment import ToolEnv, confined, display, parts_of
from tool_service.application.ports import AgentCodeRun, AuditEntry, AuditSink, Sandbox, Workspaces
from tool_service.domain.paths import PathRefused, path_parts, workspace_parts
from tool_service.domain.sandbox import (
    IDENTIFIER,
    MAX_MEMORY_MB,
    MAX_TIMEOUT_SECONDS,
    MIN_MEMORY_MB,
    PYTHON_IDENTIFIER,
    AgentEvent,
    Execution,
    Finished,
    Language,
    Limits,
    Program,
    SourceFile,
)
from tool_service.domain.tools import (
    Artifact,
    InvocationContext,
    SideEffect,
    ToolFailure,
    ToolResult,
    ToolSpec,
)
from tool_service.errors import PathOutsideWorkspace

log = logging.getLogger(__name__)

MAX_CODE_CHARS = 256 * 1024
MAX_STDIN_CHARS = 1024 * 1024
MAX_FILES = 20
MAX_MESSAGES_CHARS = 4 * 1024 * 1024


def run_code_spec(languages: Sequence[str]) -> ToolSpec:
    """The `run_code` tool's description, for the languages this sandbox runs."""
    return ToolSpec(
        name="run_code",
        description=(
            "Run a program in a fresh sandbox with no network and no access to anything but "
            "its input files (read-only under /workspace). Files it writes to /output are "
            "saved in the workspace under output_dir. Returns stdout, stderr and the exit code."
        ),
        arguments_schema={
            "type": "object",
            "properties": {
                "language": {"type": "string", "enum": list(languages)},
                "code": {"type": "string", "minLength": 1, "maxLength": MAX_CODE_CHARS},
                "stdin": {"type": "string", "maxLength": MAX_STDIN_CHARS, "default": ""},
                "files": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "maxItems": MAX_FILES,
                    "default": [],
                    "description": "Workspace files to show read-only under /workspace.",
                },
                "timeout_seconds": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_TIMEOUT_SECONDS,
                    "default": 10,
                },
                "memory_mb": {
                    "type": "integer",
                    "minimum": MIN_MEMORY_MB,
                    "maximum": MAX_MEMORY_MB,
                    "default": 256,
                },
                "output_dir": {
                    "type": "string",
                    "minLength": 1,
                    "default": "output",
                    "description": "Workspace folder where the files left in /output are saved.",
                },
            },
            "required": ["language", "code"],
            "additionalProperties": False,
        },
        side_effect=SideEffect.AT_MOST_ONCE,
    )


def result_of(execution: Execution, saved: Sequence[Artifact]) -> ToolResult:
    """A finished program as the agent reads it."""
    stdout = execution.stdout.decode("utf-8", "replace")
    stderr = execution.stderr.decode("utf-8", "replace")
    head = f"exit code {execution.exit_code}"
    if execution.killed_reason:
        head += f", stopped by the sandbox: {execution.killed_reason}"
    parts = [head]
    for name, text, cut in (
        ("stdout", stdout, execution.stdout_truncated),
        ("stderr", stderr, execution.stderr_truncated),
    ):
        if text or cut:
            parts.append(f"--- {name}{' (truncated)' if cut else ''} ---\n{text}")
    data: dict[str, Any] = {
        **execution.report(),
        "stdout": stdout,
        "stderr": stderr,
        "stdout_truncated": execution.stdout_truncated,
        "stderr_truncated": execution.stderr_truncated,
        "files_dropped": execution.files_dropped,
    }
    error_code = error_message = ""
    if execution.timed_out:
        error_code, error_message = "TIMEOUT", "the program ran out of time and was stopped"
    elif execution.killed_reason:
        error_code = "LIMIT_EXCEEDED"
        error_message = f"the program was stopped: {execution.killed_reason} limit"
    return ToolResult(
        content="\n".join(parts),
        data=data,
        artifacts=tuple(saved),
        error_code=error_code,
        error_message=error_message,
        bytes=len(execution.stdout) + len(execution.stderr) + sum(len(a.location) for a in saved),
    )


class RunCode:
    """run_code(language, code, stdin?, files?, timeout_seconds?, memory_mb?, output_dir?)."""

    def __init__(self, sandbox: Sandbox, defaults: Limits) -> None:
        self.sandbox = sandbox
        self.defaults = defaults
        self.spec = run_code_spec([r.language.value for r in sandbox.status.runtimes])

    async def run(self, args: Mapping[str, Any], env: ToolEnv) -> ToolResult:
        """Read the input files, run the program, save what it left in /output."""
        output_parts = parts_of(args["output_dir"], "output_dir")
        inputs = await env.run_blocking(self._inputs, list(args["files"]), env)
        limits = replace(
            self.defaults,
            timeout_seconds=float(args["timeout_seconds"]),
            memory_mb=int(args["memory_mb"]),
        )
        program = Program(
            Language(args["language"]),
            args["code"],
            stdin=args["stdin"].encode(),
            files=tuple(inputs),
            limits=limits,
        )
        execution = await self.sandbox.run(program)
        saved = await env.run_blocking(self._save, execution, output_parts, env)
        return result_of(execution, saved)

    @staticmethod
    def _inputs(paths: Sequence[str], env: ToolEnv) -> list[SourceFile]:
        found: list[SourceFile] = []
        total = 0
        with env.workspaces.open(env.workspace) as ws:
            for i, path in enumerate(dict.fromkeys(paths)):
                field = f"files[{i}]"
                parts = parts_of(path, field)
                with confined(field):
                    data = ws.read_bytes(parts, env.limits.max_read_bytes)
                total += len(data)
                if total > env.limits.max_read_bytes:
                    raise ToolFailure(
                        "TOO_LARGE",
                        f"the input files exceed {env.limits.max_read_bytes} bytes together",
                    )
                found.append(SourceFile(display(parts), data))
        return found

    @staticmethod
    def _save(execution: Execution, folder: list[str], env: ToolEnv) -> list[Artifact]:
        saved: list[Artifact] = []
        if not execution.files:
            return saved
        with env.workspaces.open(env.workspace) as ws, confined("output_dir"):
            for file in execution.files:
                try:
                    parts = [*folder, *path_parts(file.path)]
                except PathRefused:
                    continue  # the adapter checked it already; never write outside
                if len(file.data) > env.limits.max_write_bytes:
                    continue
                ws.write_bytes(parts, file.data, overwrite=True)
                saved.append(Artifact("file", display(parts), size_bytes=len(file.data)))
        return saved


@dataclass(frozen=True, slots=True)
class AgentCodeRequest:
    """What RunAgentCode's `start` asks for."""

    language: str
    code: str
    code_path: str
    entry_point: str
    messages: list[Any]
    agent: dict[str, Any]
    timeout_seconds: int
    memory_mb: int
    context: InvocationContext


class _Failed:
    """An agent's code that could not even start (its file is missing): just its end."""

    def __init__(self, finished: Finished) -> None:
        self.finished = finished

    async def events(self) -> AsyncIterator[AgentEvent]:
        """The end only."""
        yield self.finished

    async def answer(self, call_id: str, result: Mapping[str, Any]) -> None:
        """Nothing asks."""


class AgentCode:
    """Runs agents' code (the `custom` template) in the sandbox, one call per user message."""

    def __init__(
        self,
        sandbox: Sandbox,
        defaults: Limits,
        *,
        workspaces: Workspaces,
        run_blocking: BlockingRunner,
        audit: AuditSink,
        max_read_bytes: int,
    ) -> None:
        self.sandbox = sandbox
        self.defaults = defaults
        self.workspaces = workspaces
        self.run_blocking = run_blocking
        self.audit = audit
        self.max_read_bytes = max_read_bytes

    def check(self, request: AgentCodeRequest) -> None:
        """Refuse a bad request, naming every bad field.

        Raises:
            InvalidArgument: with one violation per bad field of `start`.
        """
        problems: list[FieldViolation] = []
        offered = [r.language.value for r in self.sandbox.status.runtimes]
        if request.language not in offered:
            problems.append(
                FieldViolation("start.language", f"must be one of {', '.join(offered) or '(none)'}")
            )
        identifier = PYTHON_IDENTIFIER if request.language == "python" else IDENTIFIER
        if not identifier.fullmatch(request.entry_point):
            problems.append(FieldViolation("start.entry_point", "must be an identifier"))
        if bool(request.code) == bool(request.code_path):
            problems.append(FieldViolation("start.code", "give either code or code_path"))
        if len(request.code) > MAX_CODE_CHARS:
            problems.append(FieldViolation("start.code", f"over {MAX_CODE_CHARS} characters"))
        if not 1 <= request.timeout_seconds <= MAX_TIMEOUT_SECONDS:
            problems.append(
                FieldViolation("start.timeout_seconds", f"must be 1-{MAX_TIMEOUT_SECONDS}")
            )
        if not MIN_MEMORY_MB <= request.memory_mb <= MAX_MEMORY_MB:
            problems.append(
                FieldViolation("start.memory_mb", f"must be {MIN_MEMORY_MB}-{MAX_MEMORY_MB}")
            )
        try:
            workspace_parts(request.context.workspace or request.context.agent_id or "-")
        except PathRefused as e:
            problems.append(FieldViolation("start.context.workspace", str(e)))
        if problems:
            raise InvalidArgument(
                "; ".join(f"{p.field}: {p.description}" for p in problems), violations=problems
            )

    async def start(self, request: AgentCodeRequest) -> AgentCodeRun:
        """The agent's code, ready to run (its events run it).

        Raises:
            InvalidArgument: a bad field.
            SandboxUnavailable: no sandbox (or runtime) for it here.
        """
        self.check(request)
        code = request.code
        if request.code_path:
            try:
                code = await self.run_blocking(self._read, request)
            except ToolFailure as e:
                return _Failed(Finished("", Execution(exit_code=0), e.code, e.message))
        limits = replace(
            self.defaults,
            timeout_seconds=float(request.timeout_seconds),
            memory_mb=request.memory_mb,
        )
        start = {"messages": request.messages, "agent": request.agent}
        return self.sandbox.agent(request.language, code, request.entry_point, start, limits)

    def _read(self, request: AgentCodeRequest) -> str:
        workspace = request.context.workspace or request.context.agent_id
        try:
            parts = path_parts(request.code_path)
        except PathRefused as e:
            raise PathOutsideWorkspace("start.code_path", str(e)) from None
        try:
            with self.workspaces.open(workspace) as ws:
                data = ws.read_bytes(parts, min(self.max_read_bytes, MAX_CODE_CHARS))
        except PathRefused as e:
            raise PathOutsideWorkspace("start.code_path", str(e)) from None
        return data.decode("utf-8", "replace")

    async def events(
        self, run: AgentCodeRun, context: InvocationContext
    ) -> AsyncIterator[AgentEvent]:
        """The run's events; one audit record when it ends (or is abandoned)."""
        started = time.perf_counter()
        outcome, detail = "cancelled", "CANCELLED"
        try:
            async for event in run.events():
                if isinstance(event, Finished):
                    outcome = "failed" if event.error_code else "succeeded"
                    detail = event.error_code
                yield event
        finally:
            self.audit.record(
                AuditEntry(
                    tool="agent_code",
                    context=context,
                    outcome=outcome,
                    detail=detail,
                    duration_ms=round((time.perf_counter() - started) * 1000),
                    bytes=0,
                    request_id=current_request_id() or "",
                    actor=current_actor() or "",
                )
            )
