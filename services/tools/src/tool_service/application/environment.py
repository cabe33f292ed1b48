"""Application: what a running tool may use, and the limits it must respect."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from agentrt_kit.concurrency import BlockingRunner
from tool_service.application.ports import Fetcher, Workspaces
from tool_service.domain.paths import PathRefused, path_parts
from tool_service.domain.tools import InvocationContext
from tool_service.errors import PathOutsideWorkspace


@dataclass(frozen=True)
class Limits:
    """Bounds every tool call respects (all configurable)."""

    max_read_bytes: int = 10 * 1024 * 1024
    max_write_bytes: int = 1024 * 1024
    max_lines: int = 2_000
    max_matches: int = 500
    max_pattern_chars: int = 1_000
    max_list_entries: int = 1_000
    max_content_chars: int = 200_000
    regex_max_mem: int = 8 * 1024 * 1024
    # fetch_url: save responses that are not text as they came (else refuse them).
    save_other_types: bool = False


@dataclass
class ToolEnv:
    """One invocation's view of the service: its workspace name, the ports, the limits."""

    context: InvocationContext
    workspace: str
    workspaces: Workspaces
    fetcher: Fetcher
    run_blocking: BlockingRunner
    limits: Limits = field(default_factory=Limits)


def parts_of(path: str, field_name: str, *, allow_root: bool = False) -> list[str]:
    """Validated path components of argument `field_name`.

    Raises:
        PathOutsideWorkspace: naming `arguments.<field_name>` and the reason.
    """
    try:
        return path_parts(path, allow_root=allow_root)
    except PathRefused as e:
        raise PathOutsideWorkspace(f"arguments.{field_name}", str(e)) from None


@contextmanager
def confined(field_name: str) -> Iterator[None]:
    """Turn the filesystem's refusals (links, escapes) into PERMISSION_DENIED for a field."""
    try:
        yield
    except PathRefused as e:
        raise PathOutsideWorkspace(f"arguments.{field_name}", str(e)) from None


def display(parts: Sequence[str]) -> str:
    """A path as the agent should write it back."""
    return "/".join(parts) or "."
