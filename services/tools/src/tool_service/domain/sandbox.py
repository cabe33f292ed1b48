"""Domain: a program to run in the code sandbox, its limits, and how it ended.

The sandbox itself (namespaces, seccomp, rlimits, cgroups) is an adapter; this
module says what a run asks for and what it reports, in plain values the tool,
the agent-code RPC and the tests share.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

IDENTIFIER = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]{0,127}$")
PYTHON_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

MAX_TIMEOUT_SECONDS = 300
MIN_MEMORY_MB = 64
MAX_MEMORY_MB = 2048


class Language(StrEnum):
    """Languages the sandbox can run (where the runtime is installed)."""

    PYTHON = "python"
    JAVASCRIPT = "javascript"
    TYPESCRIPT = "typescript"


class Killed(StrEnum):
    """Why the sandbox ended a program (`killed_reason`)."""

    TIMEOUT = "TIMEOUT"  # wall time
    CPU_TIME = "CPU_TIME"
    MEMORY = "MEMORY"
    PIDS = "PIDS"
    OUTPUT = "OUTPUT"  # stdout + stderr (+ reported files) over the output limit
    FILE_SIZE = "FILE_SIZE"


@dataclass(frozen=True, slots=True)
class Limits:
    """Hard limits of one sandboxed program."""

    timeout_seconds: float = 10.0
    memory_mb: int = 256
    # CPU seconds (RLIMIT_CPU, per process); 0: the wall timeout, rounded up.
    cpu_seconds: int = 0
    pids: int = 64
    open_files: int = 256
    file_size_mb: int = 16
    # Bytes of stdout + stderr read before the program is killed (OUTPUT).
    output_bytes: int = 8 * 1024 * 1024
    # Bytes of each stream kept in the result (the rest is counted, then dropped).
    captured_bytes: int = 64 * 1024
    # Size of each private tmpfs (/tmp, the home folder) and of the output folder.
    scratch_mb: int = 64
    output_dir_mb: int = 16

    @property
    def cpu_limit(self) -> int:
        """CPU seconds a process may use."""
        if self.cpu_seconds > 0:
            return self.cpu_seconds
        return max(1, int(self.timeout_seconds + 0.999))


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file made visible read-only inside the sandbox (under /workspace)."""

    path: str  # workspace-relative, validated
    data: bytes


@dataclass(frozen=True, slots=True)
class Program:
    """One program: its language, source, input and limits."""

    language: Language
    code: str
    stdin: bytes = b""
    files: tuple[SourceFile, ...] = ()
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True, slots=True)
class OutputFile:
    """A file the program left in its output folder."""

    path: str  # relative to the output folder, validated by the adapter
    data: bytes


@dataclass(frozen=True, slots=True)
class Execution:
    """How a program ended and what it used."""

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    timed_out: bool = False
    killed_reason: str = ""
    duration_ms: int = 0
    cpu_ms: int = 0
    max_rss_kb: int = 0
    # Limits the program ran into without being killed for it (e.g. "PIDS").
    limits_hit: tuple[str, ...] = ()
    files: tuple[OutputFile, ...] = ()
    files_dropped: int = 0

    def report(self) -> dict[str, object]:
        """The execution's figures (a run_code result's `data`, the RPC's report)."""
        return {
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "killed_reason": self.killed_reason,
            "duration_ms": self.duration_ms,
            "cpu_ms": self.cpu_ms,
            "max_rss_kb": self.max_rss_kb,
            "limits_hit": list(self.limits_hit),
        }


@dataclass(frozen=True, slots=True)
class Runtime:
    """A language runtime the sandbox offers."""

    language: Language
    version: str
    modules: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SandboxStatus:
    """Whether code can run here, with what isolation, and why not."""

    available: bool
    isolation: str = ""  # "bubblewrap" | "unsandboxed" | ""
    reason: str = ""
    runtimes: tuple[Runtime, ...] = ()
    enforcement: tuple[str, ...] = ()

    def runtime(self, language: str) -> Runtime | None:
        """The runtime of `language`, if offered."""
        return next((r for r in self.runtimes if r.language == language), None)


# Agent code: what the harness inside the sandbox reports, what the service tells the caller.


@dataclass(frozen=True, slots=True)
class Progress:
    """A line the code printed, or a call of agent.progress(text)."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The code calls one of the agent's tools; the caller answers with its result."""

    call_id: str
    name: str
    arguments: dict[str, object]


@dataclass(frozen=True, slots=True)
class Finished:
    """The code's turn is over: a reply, or an error code and message."""

    reply: str
    execution: Execution
    error_code: str = ""
    error_message: str = ""

    @property
    def stderr_tail(self) -> str:
        """The last 4 KiB of what the code wrote to stderr."""
        return self.execution.stderr[-4096:].decode("utf-8", "replace")


AgentEvent = Progress | ToolCall | Finished
