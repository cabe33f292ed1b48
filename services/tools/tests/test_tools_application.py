"""Unit tier: the tool runner and the built-in tools, over the in-memory ledger and audit
twins and real confined workspaces in a temporary directory.

The only test double is `CannedFetcher`, standing in for the network behind fetch_url.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agentrt_kit.concurrency import BlockingRunner
from agentrt_kit.errors import (
    AgentrtError,
    ErrorCode,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from tool_service.adapters.memory import InMemoryLedger, ListAuditSink
from tool_service.adapters.workspace_fs import ConfinedWorkspaces
from tool_service.application.catalog import BUILTIN_TOOLS
from tool_service.application.environment import Limits
from tool_service.application.ports import Fetched
from tool_service.application.runner import ToolCatalog, ToolRunner, digest
from tool_service.application.url_tools import (
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    checked_headers,
    download_name,
    readable,
)
from tool_service.domain.tools import InvocationContext, ToolFailure, ToolResult
from tool_service.errors import IdempotencyKeyReused, InvocationInProgress, UnknownTool


@dataclass
class CannedFetcher:
    """Stands in for the network: answers every fetch with one canned response."""

    response: Fetched
    calls: list[tuple[str, dict[str, str], bool]] = field(default_factory=list)

    async def fetch(self, url: str, headers: Mapping[str, str], follow_redirects: bool) -> Fetched:
        self.calls.append((url, dict(headers), follow_redirects))
        return self.response


def page(body: str, content_type: str = "text/html", url: str = "https://example.com/a/b.html"):
    return Fetched(url=url, status=200, content_type=content_type, charset=None, body=body.encode())


@dataclass
class Harness:
    runner: ToolRunner
    ledger: InMemoryLedger
    audit: ListAuditSink
    fetcher: CannedFetcher
    root: Path

    def ws(self, name: str = "agent-1") -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def call(
        self, tool: str, *, key: str = "", ctx: InvocationContext | None = None, **arguments: Any
    ) -> tuple[ToolResult, bool]:
        context = ctx or InvocationContext(
            agent_id="agent-1", run_id="run-1", task_id="task-1", idempotency_key=key
        )
        return await self.runner.invoke(tool, arguments, context)

    async def ok(self, tool: str, *, key: str = "", **arguments: Any) -> ToolResult:
        result, replayed = await self.call(tool, key=key, **arguments)
        assert not result.failed, result
        assert not replayed
        return result

    async def failure(self, tool: str, *, key: str = "", **arguments: Any) -> ToolResult:
        result, _ = await self.call(tool, key=key, **arguments)
        assert result.failed, result
        return result

    def outcomes(self) -> list[str]:
        return [e.outcome for e in self.audit.entries]


@pytest.fixture
def blocking() -> Iterator[BlockingRunner]:
    runner = BlockingRunner(4, "test-tools")
    yield runner
    runner.shutdown()


@pytest.fixture
async def make_harness(
    tmp_path: Path, blocking: BlockingRunner
) -> AsyncIterator[Callable[..., Harness]]:
    opened: list[ConfinedWorkspaces] = []

    def make(limits: Limits | None = None, in_flight_timeout: float = 300.0) -> Harness:
        root = tmp_path / f"workspaces{len(opened)}"
        workspaces = ConfinedWorkspaces(root)
        opened.append(workspaces)
        ledger, audit = InMemoryLedger(), ListAuditSink()
        fetcher = CannedFetcher(page("<h1>Hello</h1><p>world</p>"))
        runner = ToolRunner(
            ToolCatalog(BUILTIN_TOOLS),
            workspaces=workspaces,
            fetcher=fetcher,
            ledger=ledger,
            audit=audit,
            run_blocking=blocking,
            limits=limits,
            in_flight_timeout=in_flight_timeout,
        )
        return Harness(runner, ledger, audit, fetcher, root)

    yield make
    for workspaces in opened:
        workspaces.close()


@pytest.fixture
def h(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness()


def fields(error: AgentrtError) -> set[str]:
    return {v.field for v in error.violations}


# --------------------------------------------------------------- arguments


async def test_bad_arguments_are_refused_naming_each_field(h: Harness) -> None:
    with pytest.raises(InvalidArgument) as info:
        await h.call("read_lines", filename="a.txt", start=0, end="x")
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert fields(info.value) == {"arguments.start", "arguments.end"}
    assert h.outcomes() == ["refused"]
    assert h.audit.entries[0].detail == "VALIDATION_ERROR"


async def test_missing_and_unexpected_arguments_are_named_themselves(h: Harness) -> None:
    with pytest.raises(InvalidArgument) as info:
        await h.call("grep_file", filename="a.txt", regex="x")
    assert fields(info.value) == {"arguments.pattern", "arguments.regex"}


async def test_a_boolean_is_not_a_line_number(h: Harness) -> None:
    with pytest.raises(InvalidArgument) as info:
        await h.call("read_lines", filename="a.txt", start=True)
    assert fields(info.value) == {"arguments.start"}


async def test_fetch_headers_must_be_strings(h: Harness) -> None:
    with pytest.raises(InvalidArgument) as info:
        await h.call("fetch_url", url="https://example.com/", headers={"X-Count": 3})
    assert fields(info.value) == {"arguments.headers.X-Count"}
    assert h.fetcher.calls == []


def test_defaults_are_filled_in() -> None:
    catalog = ToolCatalog(BUILTIN_TOOLS)
    assert catalog.arguments("grep_file", {"filename": "a", "pattern": "x"}) == {
        "filename": "a",
        "pattern": "x",
        "ignore_case": False,
        "line_numbers": True,
    }
    assert catalog.arguments("read_lines", {"filename": "a"}) == {
        "filename": "a",
        "start": 1,
        "end": None,
    }
    assert catalog.arguments("list_files", {}) == {"path": "."}
    assert catalog.arguments("fetch_url", {"url": "https://e.com"}) == {
        "url": "https://e.com",
        "save_to_file": True,
        "follow_redirects": True,
        "headers": {},
    }
    # what the caller gave is kept
    assert catalog.arguments("read_lines", {"filename": "a", "start": 4})["start"] == 4


async def test_unknown_tool_is_not_found(h: Harness) -> None:
    with pytest.raises(UnknownTool) as info:
        await h.call("rm_rf", path="/")
    assert isinstance(info.value, NotFound)
    assert info.value.reason == "TOOL_NOT_FOUND"
    assert h.outcomes() == ["refused"]


def test_the_catalog_lists_tools_by_name() -> None:
    names = [s.name for s in ToolCatalog(list(reversed(BUILTIN_TOOLS))).specs()]
    assert names == sorted(names)
    assert len(names) == 7


# --------------------------------------------------------------- workspaces


async def test_the_agent_id_names_the_workspace_by_default(h: Harness) -> None:
    await h.ok("create_file", key="k", filename="a.txt", content="mine")
    assert (h.root / "agent-1" / "a.txt").read_text() == "mine"


async def test_context_workspace_wins_over_the_agent_id(h: Harness) -> None:
    ctx = InvocationContext(agent_id="agent-1", workspace="team-7/task-3", idempotency_key="k")
    result, _ = await h.runner.invoke("create_file", {"filename": "a.txt", "content": "x"}, ctx)
    assert not result.failed
    assert (h.root / "team-7" / "task-3" / "a.txt").read_text() == "x"
    assert not (h.root / "agent-1").exists()


async def test_workspaces_are_separate(h: Harness) -> None:
    await h.ok("create_file", key="k", filename="secret.txt", content="agent-1 only")
    other = InvocationContext(agent_id="agent-2")
    result, _ = await h.runner.invoke("read_lines", {"filename": "secret.txt"}, other)
    assert result.error_code == "NOT_FOUND"


@pytest.mark.parametrize("name", ["../etc", "a/b/c", ".", "-x", "agent 1", "agent-1\n", "a/"])
async def test_a_bad_workspace_name_is_invalid_naming_the_field(h: Harness, name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        await h.runner.invoke("list_files", {}, InvocationContext(agent_id="ok", workspace=name))
    assert fields(info.value) == {"context.workspace"}
    with pytest.raises(InvalidArgument) as info:
        await h.runner.invoke("list_files", {}, InvocationContext(agent_id=name))
    assert fields(info.value) == {"context.agent_id"}
    assert not any(h.root.iterdir())


async def test_a_workspace_that_is_a_link_is_refused_naming_the_field(
    h: Harness, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_text("SECRET")
    (h.root / "linked").symlink_to(elsewhere)
    with pytest.raises(PermissionDenied) as info:
        await h.runner.invoke("read_lines", {"filename": "secret.txt"}, InvocationContext("linked"))
    assert fields(info.value) == {"context.agent_id"}
    ctx = InvocationContext(agent_id="agent-1", workspace="linked", idempotency_key="k")
    with pytest.raises(PermissionDenied) as info:
        await h.runner.invoke("create_file", {"filename": "new.txt", "content": "x"}, ctx)
    assert fields(info.value) == {"context.workspace"}
    assert sorted(p.name for p in elsewhere.iterdir()) == ["secret.txt"]
    assert "k" not in h.ledger.entries  # refused before acting: the key is free


async def test_a_link_inside_the_workspace_is_refused_naming_the_argument(
    h: Harness, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_text("SECRET")
    (h.ws() / "docs").symlink_to(elsewhere)
    with pytest.raises(PermissionDenied) as info:
        await h.call("read_lines", filename="docs/secret.txt")
    assert fields(info.value) == {"arguments.filename"}
    with pytest.raises(PermissionDenied) as info:
        await h.call("create_file", key="k", filename="docs/planted.txt", content="x")
    assert fields(info.value) == {"arguments.filename"}
    with pytest.raises(PermissionDenied) as info:
        await h.call("list_files", path="docs")
    assert fields(info.value) == {"arguments.path"}
    assert sorted(p.name for p in elsewhere.iterdir()) == ["secret.txt"]


async def test_a_workspace_or_agent_id_is_required(h: Harness) -> None:
    with pytest.raises(InvalidArgument) as info:
        await h.runner.invoke("list_files", {}, InvocationContext())
    assert fields(info.value) == {"context.workspace"}


# ------------------------------------------------------------ at most once


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("create_file", {"filename": "a.txt", "content": "x"}),
        ("delete_file", {"filename": "a.txt", "confirm": True}),
    ],
)
async def test_at_most_once_tools_need_an_idempotency_key(
    h: Harness, tool: str, arguments: dict[str, Any]
) -> None:
    (h.ws() / "a.txt").write_text("keep")
    with pytest.raises(InvalidArgument) as info:
        await h.call(tool, **arguments)
    assert fields(info.value) == {"context.idempotency_key"}
    with pytest.raises(InvalidArgument):
        await h.call(tool, key="k" * 257, **arguments)
    assert (h.ws() / "a.txt").read_text() == "keep"
    assert h.ledger.entries == {}


async def test_a_repeated_key_replays_the_result_and_writes_once(h: Harness) -> None:
    first = await h.ok("create_file", key="k1", filename="notes/a.txt", content="first")
    target = h.root / "agent-1" / "notes" / "a.txt"
    target.write_text("changed by someone else")
    again, replayed = await h.call("create_file", key="k1", filename="notes/a.txt", content="first")
    assert replayed
    assert again == first
    assert target.read_text() == "changed by someone else"
    assert h.outcomes() == ["succeeded", "replayed"]


async def test_a_repeated_delete_deletes_once(h: Harness) -> None:
    (h.ws() / "a.txt").write_text("v1")
    await h.ok("delete_file", key="d1", filename="a.txt", confirm=True)
    (h.ws() / "a.txt").write_text("v2, written after the delete")
    result, replayed = await h.call("delete_file", key="d1", filename="a.txt", confirm=True)
    assert replayed
    assert result.content == "deleted a.txt"
    assert (h.ws() / "a.txt").read_text() == "v2, written after the delete"


async def test_defaults_given_explicitly_are_the_same_call(h: Harness) -> None:
    await h.ok("create_file", key="k", filename="a.txt", content="x")
    _, replayed = await h.call(
        "create_file", key="k", filename="a.txt", content="x", overwrite=False
    )
    assert replayed


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("create_file", {"filename": "a.txt", "content": "other"}),
        ("create_file", {"filename": "b.txt", "content": "same"}),
        ("delete_file", {"filename": "a.txt", "confirm": True}),
    ],
)
async def test_a_key_reused_for_another_call_is_a_failed_precondition(
    h: Harness, tool: str, arguments: dict[str, Any]
) -> None:
    await h.ok("create_file", key="k", filename="a.txt", content="same")
    with pytest.raises(IdempotencyKeyReused) as info:
        await h.call(tool, key="k", **arguments)
    assert isinstance(info.value, FailedPrecondition)
    assert info.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert fields(info.value) == {"context.idempotency_key"}
    assert (h.ws() / "a.txt").read_text() == "same"
    assert not (h.ws() / "b.txt").exists()
    assert h.outcomes() == ["succeeded", "refused"]
    # the recorded result is untouched: the original call still replays
    _, replayed = await h.call("create_file", key="k", filename="a.txt", content="same")
    assert replayed


async def test_a_key_still_in_progress_is_aborted_without_acting(h: Harness) -> None:
    arguments = {"filename": "a.txt", "content": "x"}
    filled = h.runner.catalog.arguments("create_file", arguments)
    # another replica claimed the key and is still working on it
    assert h.ledger.claim("k", "create_file", digest("create_file", filled)) is None
    for _ in range(2):
        with pytest.raises(InvocationInProgress) as info:
            await h.call("create_file", key="k", **arguments)
        assert info.value.code is ErrorCode.ABORTED
    assert not (h.root / "agent-1" / "a.txt").exists()
    assert h.ledger.entries["k"].result is None  # the owner's claim is not released
    assert [e.detail for e in h.audit.entries] == ["INVOCATION_IN_PROGRESS"] * 2


async def test_a_claim_that_never_finished_has_an_unknown_outcome(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(in_flight_timeout=0.05)
    arguments = {"filename": "a.txt", "content": "x"}
    filled = h.runner.catalog.arguments("create_file", arguments)
    h.ledger.claim("k", "create_file", digest("create_file", filled))  # then the owner died
    await asyncio.sleep(0.1)
    result, _ = await h.call("create_file", key="k", **arguments)
    assert result.error_code == "OUTCOME_UNKNOWN"
    assert "never finished" in result.error_message
    assert not (h.root / "agent-1" / "a.txt").exists()


async def test_a_refusal_releases_the_key(h: Harness) -> None:
    with pytest.raises(PermissionDenied) as info:
        await h.call("create_file", key="k", filename="../escape.txt", content="x")
    assert info.value.reason == "PATH_OUTSIDE_WORKSPACE"
    assert fields(info.value) == {"arguments.filename"}
    assert "k" not in h.ledger.entries
    # the key is free again, even for other arguments
    await h.ok("create_file", key="k", filename="inside.txt", content="x")
    assert (h.ws() / "inside.txt").read_text() == "x"
    assert h.outcomes() == ["refused", "succeeded"]


async def test_tool_failures_are_recorded_and_replayed(h: Harness) -> None:
    (h.ws() / "a.txt").write_text("existing")
    failed = await h.failure("create_file", key="k", filename="a.txt", content="new")
    assert failed.error_code == "ALREADY_EXISTS"
    (h.ws() / "a.txt").unlink()
    again, replayed = await h.call("create_file", key="k", filename="a.txt", content="new")
    assert replayed
    assert again == failed
    assert not (h.ws() / "a.txt").exists()  # not retried behind the caller's back
    assert h.outcomes() == ["failed", "replayed"]
    assert [e.detail for e in h.audit.entries] == ["ALREADY_EXISTS", ""]


async def test_read_only_tools_need_no_key_and_are_not_recorded(h: Harness) -> None:
    (h.ws() / "a.txt").write_text("x\n")
    await h.ok("read_lines", filename="a.txt")
    await h.ok("read_lines", key="k", filename="a.txt")
    await h.ok("read_lines", key="k", filename="a.txt")
    assert h.ledger.entries == {}


# ------------------------------------------------------------------ audit


async def test_every_invocation_is_audited_once_without_its_content(h: Harness) -> None:
    secret = "correct horse battery staple"
    await h.ok("create_file", key="k", filename="s.txt", content=secret)  # succeeded
    await h.call("create_file", key="k", filename="s.txt", content=secret)  # replayed
    await h.ok("grep_file", filename="s.txt", pattern="horse")  # succeeded
    await h.failure("read_lines", filename="missing.txt")  # failed
    with pytest.raises(PermissionDenied):
        await h.call("read_lines", filename="/etc/passwd")  # refused
    with pytest.raises(UnknownTool):
        await h.call("nope")  # refused
    assert h.outcomes() == ["succeeded", "replayed", "succeeded", "failed", "refused", "refused"]
    assert [e.tool for e in h.audit.entries] == [
        "create_file",
        "create_file",
        "grep_file",
        "read_lines",
        "read_lines",
        "nope",
    ]
    assert [e.detail for e in h.audit.entries][3:] == [
        "NOT_FOUND",
        "PATH_OUTSIDE_WORKSPACE",
        "TOOL_NOT_FOUND",
    ]
    first = h.audit.entries[0]
    assert (first.context.agent_id, first.context.run_id, first.context.task_id) == (
        "agent-1",
        "run-1",
        "task-1",
    )
    assert first.bytes == len(secret)
    assert h.audit.entries[2].bytes == len(secret)  # bytes read
    assert all(e.duration_ms >= 0 for e in h.audit.entries)
    assert not any(secret in repr(e) or "horse" in repr(e) for e in h.audit.entries)


async def test_a_cancelled_invocation_is_audited_as_cancelled(h: Harness) -> None:
    task = asyncio.create_task(h.call("create_file", key="k", filename="a.txt", content="x"))
    await asyncio.sleep(0)  # it is now waiting for the ledger
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [(e.outcome, e.detail) for e in h.audit.entries] == [("cancelled", "CANCELLED")]


async def test_an_unexpected_error_is_audited_as_an_error(h: Harness) -> None:
    class Exploding:
        async def fetch(self, url: str, headers: Any, follow_redirects: bool) -> Any:
            raise RuntimeError("a bug in the fetcher")

    h.runner.fetcher = Exploding()  # type: ignore[assignment]
    with pytest.raises(RuntimeError):
        await h.call("fetch_url", url="https://example.com/")
    assert [(e.outcome, e.detail) for e in h.audit.entries] == [("error", "INTERNAL")]


async def test_text_that_is_not_unicode_is_refused_and_releases_the_key(h: Harness) -> None:
    with pytest.raises(InvalidArgument) as info:  # a lone surrogate cannot be written as UTF-8
        await h.call("create_file", key="k", filename="a.txt", content="\ud800")
    assert [v.field for v in info.value.violations] == ["arguments.content"]
    assert [(e.outcome, e.detail) for e in h.audit.entries] == [("refused", "VALIDATION_ERROR")]
    assert not (h.root / "agent-1" / "a.txt").exists()
    assert h.ledger.entries == {}  # refused before acting: the key may be used again


# -------------------------------------------------------------- read_lines


async def test_read_lines_returns_the_range_and_where_it_ended(h: Harness) -> None:
    (h.ws() / "a.txt").write_text("one\ntwo\nthree\nfour\n")
    result = await h.ok("read_lines", filename="a.txt", start=2, end=3)
    assert result.content == "two\nthree"
    assert result.data == {
        "filename": "a.txt",
        "start": 2,
        "end": 3,
        "total_lines": 4,
        "truncated": False,
    }
    assert result.bytes == 19
    everything = await h.ok("read_lines", filename="./a.txt")
    assert everything.content == "one\ntwo\nthree\nfour"
    past = await h.ok("read_lines", filename="a.txt", start=9)
    assert (past.content, past.data["end"]) == ("", 8)


async def test_read_lines_refuses_an_end_before_the_start(h: Harness) -> None:
    (h.ws() / "a.txt").write_text("one\n")
    with pytest.raises(InvalidArgument) as info:
        await h.call("read_lines", filename="a.txt", start=3, end=2)
    assert fields(info.value) == {"arguments.end"}


async def test_read_lines_stops_at_max_lines(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(Limits(max_lines=3))
    (h.ws() / "a.txt").write_text("\n".join(f"line {n}" for n in range(1, 101)))
    result = await h.ok("read_lines", filename="a.txt", start=10)
    assert result.content == "line 10\nline 11\nline 12"
    assert result.data["end"] == 12
    assert result.data["total_lines"] == 100
    assert result.data["truncated"] is True


async def test_read_lines_fails_readably_for_what_is_not_text(h: Harness) -> None:
    ws = h.ws()
    (ws / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (ws / "dir").mkdir()
    binary = await h.failure("read_lines", filename="image.png")
    assert binary.error_code == "BINARY_FILE"
    assert binary.bytes == 16
    assert (await h.failure("read_lines", filename="dir")).error_code == "IS_A_DIRECTORY"
    assert (await h.failure("read_lines", filename="nope.txt")).error_code == "NOT_FOUND"
    missing_dir = await h.failure("read_lines", filename="image.png/x")
    assert missing_dir.error_code == "NOT_FOUND"


async def test_reading_a_file_over_max_read_bytes_is_too_large(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(Limits(max_read_bytes=100))
    (h.ws() / "big.txt").write_text("x" * 101)
    (h.ws() / "fits.txt").write_text("x" * 100)
    result = await h.failure("read_lines", filename="big.txt")
    assert result.error_code == "TOO_LARGE"
    assert "101" in result.error_message
    assert (await h.ok("read_lines", filename="fits.txt")).content == "x" * 100
    grep = await h.failure("grep_file", filename="big.txt", pattern="x")
    assert grep.error_code == "TOO_LARGE"


async def test_reading_a_fifo_does_not_hang(h: Harness) -> None:
    os.mkfifo(h.ws() / "pipe")
    result, _ = await asyncio.wait_for(h.call("read_lines", filename="pipe"), 5)
    assert result.error_code == "NOT_A_FILE"


# --------------------------------------------------------------- grep_file


async def test_grep_file_finds_matching_lines(h: Harness) -> None:
    (h.ws() / "log.txt").write_text("INFO start\nERROR disk\ninfo ok\nError net\n")
    result = await h.ok("grep_file", filename="log.txt", pattern="^ERROR")
    assert result.content == "2:ERROR disk"
    assert result.data == {
        "filename": "log.txt",
        "matches": 1,
        "line_numbers": [2],
        "truncated": False,
    }
    folded = await h.ok("grep_file", filename="log.txt", pattern="^error", ignore_case=True)
    assert folded.content == "2:ERROR disk\n4:Error net"
    bare = await h.ok("grep_file", filename="log.txt", pattern="info", line_numbers=False)
    assert bare.content == "info ok"
    none = await h.ok("grep_file", filename="log.txt", pattern="WARN")
    assert (none.content, none.data["matches"]) == ("", 0)


async def test_grep_file_stops_at_max_matches(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(Limits(max_matches=2))
    (h.ws() / "a.txt").write_text("hit 1\nmiss\nhit 2\nhit 3\nhit 4\n")
    result = await h.ok("grep_file", filename="a.txt", pattern="hit")
    assert result.content == "1:hit 1\n3:hit 2"
    assert result.data["truncated"] is True
    (h.ws() / "b.txt").write_text("hit 1\nhit 2\nmiss\n")
    exact = await h.ok("grep_file", filename="b.txt", pattern="hit")
    assert exact.data["matches"] == 2
    assert exact.data["truncated"] is False


async def test_grep_file_refuses_a_pattern_over_max_pattern_chars(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(Limits(max_pattern_chars=10))
    (h.ws() / "a.txt").write_text("x\n")
    with pytest.raises(InvalidArgument) as info:
        await h.call("grep_file", filename="a.txt", pattern="a" * 11)
    assert fields(info.value) == {"arguments.pattern"}
    assert (await h.ok("grep_file", filename="a.txt", pattern="x" * 10)).data["matches"] == 0


@pytest.mark.parametrize("pattern", ["(", "[a-", "(a)\\1", "(?=a)", "(?<!a)b", "a{1001}"])
async def test_grep_file_refuses_what_re2_cannot_compile(h: Harness, pattern: str) -> None:
    (h.ws() / "a.txt").write_text("aab\n")
    with pytest.raises(InvalidArgument) as info:
        await h.call("grep_file", filename="a.txt", pattern=pattern)
    assert fields(info.value) == {"arguments.pattern"}
    assert "RE2" in info.value.violations[0].description


async def test_grep_file_with_a_catastrophic_pattern_finishes_fast(h: Harness) -> None:
    (h.ws() / "a.txt").write_text("a" * 100_000 + "b\n" + "a" * 50 + "\n")
    started = time.perf_counter()
    result = await h.ok("grep_file", filename="a.txt", pattern="(a+)+$")
    assert time.perf_counter() - started < 2
    assert result.data["line_numbers"] == [2]


async def test_grep_file_refuses_binary_files(h: Harness) -> None:
    (h.ws() / "a.bin").write_bytes(b"match\x00\x01")
    assert (await h.failure("grep_file", filename="a.bin", pattern="match")).error_code == (
        "BINARY_FILE"
    )


# ------------------------------------------------------------- create_file


async def test_create_file_writes_the_file_and_its_directories(h: Harness) -> None:
    result = await h.ok("create_file", key="k", filename="a/b/c.md", content="héllo\n")
    assert (h.root / "agent-1" / "a" / "b" / "c.md").read_text() == "héllo\n"
    assert result.content == "wrote 7 bytes to a/b/c.md"
    assert result.data == {"filename": "a/b/c.md", "bytes": 7}
    [artifact] = result.artifacts
    assert (artifact.kind, artifact.location, artifact.size_bytes) == ("file", "a/b/c.md", 7)
    assert result.bytes == 7


async def test_create_file_over_max_write_bytes_is_too_large(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(Limits(max_write_bytes=4))
    result = await h.failure("create_file", key="k1", filename="a.txt", content="€€")  # 6 bytes
    assert result.error_code == "TOO_LARGE"
    assert not (h.root / "agent-1" / "a.txt").exists()
    await h.ok("create_file", key="k2", filename="a.txt", content="1234")


async def test_create_file_does_not_replace_without_overwrite(h: Harness) -> None:
    (h.ws() / "a.txt").write_text("original")
    result = await h.failure("create_file", key="k1", filename="a.txt", content="new")
    assert result.error_code == "ALREADY_EXISTS"
    assert (h.ws() / "a.txt").read_text() == "original"
    await h.ok("create_file", key="k2", filename="a.txt", content="new", overwrite=True)
    assert (h.ws() / "a.txt").read_text() == "new"
    assert [p.name for p in h.ws().iterdir()] == ["a.txt"]  # no temporary left behind


async def test_create_file_will_not_overwrite_a_directory(h: Harness) -> None:
    (h.ws() / "d").mkdir()
    result = await h.failure("create_file", key="k", filename="d", content="x", overwrite=True)
    assert result.error_code == "IS_A_DIRECTORY"
    assert (h.ws() / "d").is_dir()


# ------------------------------------------------------------- delete_file


async def test_delete_file_needs_confirmation(h: Harness) -> None:
    (h.ws() / "a.txt").write_text("x")
    result = await h.failure("delete_file", key="k1", filename="a.txt")
    assert result.error_code == "CONFIRMATION_REQUIRED"
    assert (h.ws() / "a.txt").exists()
    deleted = await h.ok("delete_file", key="k2", filename="a.txt", confirm=True)
    assert deleted.content == "deleted a.txt"
    assert not (h.ws() / "a.txt").exists()


async def test_delete_file_refuses_directories_and_reports_missing_files(h: Harness) -> None:
    (h.ws() / "d").mkdir()
    (h.ws() / "d" / "inner.txt").write_text("x")
    result = await h.failure("delete_file", key="k1", filename="d", confirm=True)
    assert result.error_code == "IS_A_DIRECTORY"
    assert (h.ws() / "d" / "inner.txt").exists()
    missing = await h.failure("delete_file", key="k2", filename="gone.txt", confirm=True)
    assert missing.error_code == "NOT_FOUND"


# -------------------------------------------------------------- list_files


async def test_list_files_shows_each_kind_sorted(h: Harness) -> None:
    ws = h.ws()
    (ws / "b.txt").write_text("12345")
    (ws / "a-dir").mkdir()
    (ws / "c-link").symlink_to("b.txt")
    os.mkfifo(ws / "d-pipe")
    result = await h.ok("list_files")
    assert result.content == "a-dir/\nb.txt (5 bytes)\nc-link [symlink]\nd-pipe [other]"
    assert result.data["path"] == "."
    assert result.data["entries"] == [
        {"name": "a-dir", "kind": "directory", "size_bytes": 0},
        {"name": "b.txt", "kind": "file", "size_bytes": 5},
        {"name": "c-link", "kind": "symlink", "size_bytes": 0},
        {"name": "d-pipe", "kind": "other", "size_bytes": 0},
    ]
    assert result.data["truncated"] is False


async def test_list_files_of_a_subdirectory_and_of_an_empty_one(h: Harness) -> None:
    (h.ws() / "sub" / "empty").mkdir(parents=True)
    (h.ws() / "sub" / "x.txt").write_text("")
    listed = await h.ok("list_files", path="sub")
    assert listed.content == "empty/\nx.txt (0 bytes)"
    assert listed.data["path"] == "sub"
    empty = await h.ok("list_files", path="sub/empty/")
    assert (empty.content, empty.data["entries"]) == ("(empty)", [])
    missing = await h.failure("list_files", path="nope")
    assert missing.error_code == "NOT_FOUND"


async def test_list_files_of_a_new_workspace_is_empty(h: Harness) -> None:
    assert (await h.ok("list_files")).content == "(empty)"


async def test_list_files_stops_at_max_list_entries(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(Limits(max_list_entries=2))
    for name in ("c", "a", "b"):
        (h.ws() / name).write_text(name)
    result = await h.ok("list_files")
    assert [e["name"] for e in result.data["entries"]] == ["a", "b"]
    assert result.data["truncated"] is True


async def test_list_files_refuses_paths_leaving_the_workspace(h: Harness) -> None:
    with pytest.raises(PermissionDenied) as info:
        await h.call("list_files", path="..")
    assert fields(info.value) == {"arguments.path"}


# --------------------------------------------------------------- URL tools


async def test_parse_url_splits_a_url_without_the_network(h: Harness) -> None:
    result = await h.ok("parse_url", url="https://user@Example.com:8443/a/b?q=1&q=2&empty=#frag")
    assert result.data == {
        "scheme": "https",
        "host": "example.com",
        "port": 8443,
        "path": "/a/b",
        "query": {"q": ["1", "2"], "empty": [""]},
        "fragment": "frag",
        "has_credentials": True,
    }
    assert "host: example.com" in result.content
    assert h.fetcher.calls == []


async def test_parse_url_fails_readably_for_a_bad_port(h: Harness) -> None:
    assert (await h.failure("parse_url", url="http://e.com:99999/")).error_code == "INVALID_URL"
    assert (await h.failure("parse_url", url="http://[::1/")).error_code == "INVALID_URL"


async def test_fetch_url_returns_readable_text_and_saves_it(h: Harness) -> None:
    h.fetcher.response = page("<h1>Title</h1><p>Some <a href='/x'>link</a>.</p>")
    result = await h.ok(
        "fetch_url", url="https://example.com/a/b.html", headers={"Accept-Language": "en"}
    )
    assert h.fetcher.calls == [("https://example.com/a/b.html", {"Accept-Language": "en"}, True)]
    assert result.content.startswith("# Title\n\nSome [link](https://example.com/x).")
    saved = result.data["saved_to"]
    assert saved == f"downloads/{download_name('https://example.com/a/b.html', '.md')}"
    assert (h.root / "agent-1" / saved).read_text() == result.content
    assert result.artifacts[0].location == saved
    # the agent can work on the saved text with the file tools
    grep = await h.ok("grep_file", filename=saved, pattern="link")
    assert grep.data["matches"] == 1


async def test_fetch_url_without_saving_writes_nothing(h: Harness) -> None:
    h.fetcher.response = page('{"a": [1, 2]}', "application/json", "https://api.example/v1")
    result = await h.ok(
        "fetch_url", url="https://api.example/v1", save_to_file=False, follow_redirects=False
    )
    assert result.data["json"] == {"a": [1, 2]}
    assert "saved_to" not in result.data
    assert result.artifacts == ()
    assert h.fetcher.calls[0][2] is False
    assert not (h.root / "agent-1" / "downloads").exists()


async def test_fetch_url_cuts_the_content_at_max_content_chars(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(Limits(max_content_chars=10))
    h.fetcher.response = page("0123456789abcdef", "text/plain", "https://e.com/t.txt")
    result = await h.ok("fetch_url", url="https://e.com/t.txt")
    assert result.content == "0123456789"
    assert result.data["truncated"] is True
    assert (h.root / "agent-1" / result.data["saved_to"]).read_text() == "0123456789abcdef"


async def test_fetch_url_refuses_bad_headers_before_fetching(h: Harness) -> None:
    with pytest.raises(InvalidArgument) as info:
        await h.call("fetch_url", url="https://e.com/", headers={"Host": "internal"})
    assert fields(info.value) == {"arguments.headers.Host"}
    assert h.fetcher.calls == []


async def test_fetch_url_of_an_image_is_unsupported(h: Harness) -> None:
    h.fetcher.response = Fetched("https://e.com/i.png", 200, "image/png", None, b"\x89PNG")
    result = await h.failure("fetch_url", url="https://e.com/i.png")
    assert result.error_code == "UNSUPPORTED_CONTENT_TYPE"
    assert not (h.root / "agent-1" / "downloads").exists()


def fetched(body: bytes, content_type: str, charset: str | None = None) -> Fetched:
    return Fetched("https://example.com/docs/page", 200, content_type, charset, body)


def test_html_becomes_markdown_without_scripts_or_images() -> None:
    body = (
        b"<html><head><title>T</title><script>alert('x')</script></head><body>"
        b"<h1>Title</h1><p>Some <b>bold</b> and <a href='rel.html'>a link</a>.</p>"
        b"<img src='x.png' alt='pic'><ul><li>one</li></ul></body></html>"
    )
    text, data, suffix = readable(fetched(body, "text/html"))
    assert text.startswith(
        "# Title\n\nSome **bold** and [a link](https://example.com/docs/rel.html)."
    )
    assert "* one" in text
    assert "alert" not in text
    assert "x.png" not in text
    assert (data, suffix) == (None, ".md")
    assert readable(fetched(body, "application/xhtml+xml"))[2] == ".md"


def test_json_becomes_data_and_pretty_text() -> None:
    text, data, suffix = readable(fetched('{"b": [1, 2], "é": null}'.encode(), "application/json"))
    assert data == {"b": [1, 2], "é": None}
    assert json.loads(text) == data
    assert text == json.dumps(data, indent=2, ensure_ascii=False)
    assert suffix == ".json"
    assert readable(fetched(b'{"x": 1}', "application/ld+json"))[1] == {"x": 1}


def test_invalid_json_is_returned_as_it_came() -> None:
    assert readable(fetched(b"{not json", "application/json")) == ("{not json", None, ".json")


@pytest.mark.parametrize(
    ("content_type", "suffix"),
    [
        ("text/plain", ".txt"),
        ("text/csv", ".csv"),
        ("application/csv", ".csv"),
        ("text/markdown", ".md"),
        ("text/xml", ".xml"),
        ("application/xml", ".xml"),
        ("application/rss+xml", ".xml"),
    ],
)
def test_text_types_are_returned_as_they_came(content_type: str, suffix: str) -> None:
    body = b"a,b\n1,<2>\n"
    assert readable(fetched(body, content_type)) == ("a,b\n1,<2>\n", None, suffix)


def test_the_declared_charset_decodes_the_body() -> None:
    assert readable(fetched("café".encode("latin-1"), "text/plain", "iso-8859-1"))[0] == "café"
    assert readable(fetched(b"caf\xc3\xa9", "text/plain", "no-such-charset"))[0] == "café"
    assert readable(fetched(b"caf\xff", "text/plain"))[0] == "caf\ufffd"


@pytest.mark.parametrize(
    "content_type", ["image/png", "application/octet-stream", "application/pdf", ""]
)
def test_other_content_types_are_unsupported(content_type: str) -> None:
    with pytest.raises(ToolFailure) as info:
        readable(fetched(b"\x00\x01\x02", content_type))
    assert info.value.code == "UNSUPPORTED_CONTENT_TYPE"
    assert info.value.bytes_used == 3


def test_download_names_are_stable_and_distinct() -> None:
    url = "https://example.com/reports/Q3 report.pdf?page=2"
    name = download_name(url, ".txt")
    assert name == download_name(url, ".txt")
    assert name.startswith("Q3_report-")
    assert name.endswith(".txt")
    assert download_name("https://example.com/reports/Q3 report.pdf?page=3", ".txt") != name
    assert download_name("https://example.com/", ".md").startswith("example-")
    assert download_name("https://example.com/a/", ".md").startswith("a-")


@pytest.mark.parametrize(
    "url",
    [
        "https://e.com/..",
        "https://e.com/%2e%2e",
        "https://e.com/a/..%2f..%2fetc%2fpasswd",
        "https://e.com/" + "x" * 500,
        "https://e.com/.hidden",
        "https://e.com/___",
        "https://e.com/名前",
    ],
)
def test_download_names_are_single_safe_names(url: str) -> None:
    name = download_name(url, ".md")
    assert "/" not in name
    assert not name.startswith(".")
    assert len(name.encode()) <= 100
    assert name.endswith(".md")


def test_allowed_headers_pass_through() -> None:
    headers = {"Accept": "text/html", "X-Trace": "a\tb", "If-None-Match": '"etag"'}
    assert checked_headers(headers) == headers
    assert checked_headers({}) == {}


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("Host", "internal", "may not be set"),
        ("content-length", "0", "may not be set"),
        ("Transfer-Encoding", "chunked", "may not be set"),
        ("Connection", "close", "may not be set"),
        ("Proxy-Authorization", "Basic x", "may not be set"),
        ("X Y", "v", "not a valid header name"),
        ("X:Y", "v", "not a valid header name"),
        ("", "v", "not a valid header name"),
        ("X-A\n", "v", "not a valid header name"),
        ("Ünicode", "v", "not a valid header name"),
        ("X-A", "ok\r\nX-Injected: 1", "control characters"),
        ("X-A", "nul\x00", "control characters"),
        ("X-A", "del\x7f", "control characters"),
        ("X-A", "café", "ASCII"),
        ("X-A", "x" * (MAX_HEADER_VALUE + 1), "at most"),
        ("X-A", 3, "must be a string"),
    ],
)
def test_bad_headers_are_refused_by_name(name: str, value: Any, problem: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        checked_headers({name: value, "Accept": "ok"})
    [violation] = info.value.violations
    assert violation.field == f"arguments.headers.{name}"
    assert problem in violation.description


def test_too_many_headers_are_refused() -> None:
    with pytest.raises(InvalidArgument) as info:
        checked_headers({f"X-{n}": "v" for n in range(MAX_HEADERS + 1)})
    assert fields(info.value) == {"arguments.headers"}
    assert len(checked_headers({f"X-{n}": "v" for n in range(MAX_HEADERS)})) == MAX_HEADERS


async def test_a_claimed_call_whose_caller_goes_away_is_finished_and_replayed(
    h: Harness,
) -> None:
    task = asyncio.create_task(h.call("create_file", key="k", filename="a.txt", content="x"))
    for _ in range(5000):  # until the key is claimed: the tool may act from now on
        if "k" in h.ledger.entries:
            break
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(5000):  # the call goes on without its caller and is recorded
        if h.ledger.entries["k"].result is not None:
            break
        await asyncio.sleep(0.001)
    assert h.ledger.entries["k"].result is not None
    _, replayed = await h.call("create_file", key="k", filename="a.txt", content="x")
    assert replayed  # the executor's retry gets the outcome, not INVOCATION_IN_PROGRESS
    assert (h.ws() / "a.txt").read_text() == "x"
