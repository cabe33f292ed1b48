"""Integration tier: the tools service's adapters against the real things.

- One scenario suite for the Ledger port, run over the in-memory twin, SQLite and
  PostgreSQL; `SqlDatabase` itself on both dialects.
- `ConfinedWorkspaces` on the real filesystem, in both confinement modes.
- Plugins loaded from folders written here, and run through the real service over gRPC.
- The audit sink, through the kit's publisher, against a real nats-server.
- The service over gRPC with its ledger in PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import stat
import textwrap
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import nats
import psycopg
import pytest
from psycopg import sql as pgsql
from tools_support import ToolsService, invoke_request

from agentrt.tools.v1 import tools_pb2 as pb
from agentrt_kit.audit import AuditPublisher
from agentrt_kit.grpc.status import error_from_rpc
from agentrt_kit.nats import Names
from agentrt_kit.settings import ConfigError, load_settings
from agentrt_kit.sql import MIGRATIONS_TABLE, SqlDatabase
from agentrt_testkit.audit import connected, records_of, wait_for_records
from tool_service.adapters.audit import SERVICE, PublishedAuditSink
from tool_service.adapters.ledger import SqlLedger
from tool_service.adapters.memory import InMemoryLedger
from tool_service.adapters.plugins import load_plugins
from tool_service.adapters.workspace_fs import ConfinedWorkspace, ConfinedWorkspaces
from tool_service.adapters.workspace_fs import openat2_available as has_openat2
from tool_service.application.ports import AuditEntry, Ledger
from tool_service.config import Settings
from tool_service.domain.paths import PathRefused
from tool_service.domain.tools import (
    Artifact,
    InvocationContext,
    SideEffect,
    ToolFailure,
    ToolResult,
)

# ==================================================================== ledger


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "memory":
        yield InMemoryLedger()
        return
    if request.param == "sqlite":
        db = SqlDatabase(f"sqlite:///{tmp_path / 'ledger.sqlite3'}").open()
    else:
        dsn, schema = request.getfixturevalue("postgres_url")
        db = SqlDatabase(dsn, schema=schema, pool_size=8).open()
    try:
        yield SqlLedger(db)
    finally:
        db.close()


RESULT = ToolResult(
    content="wrote 2 bytes to a.txt",
    data={"filename": "a.txt", "bytes": 2, "nested": [1, {"x": None}]},
    artifacts=(Artifact("file", "a.txt", "text/plain", 2),),
    bytes=2,
)


def test_ledger_first_claim_wins_and_later_claims_see_it(ledger: Ledger) -> None:
    before = datetime.now(UTC)
    assert ledger.claim("k1", "create_file", "digest-1") is None
    entry = ledger.claim("k1", "create_file", "digest-other")
    assert entry is not None
    assert (entry.key, entry.tool, entry.digest, entry.result) == (
        "k1",
        "create_file",
        "digest-1",
        None,
    )
    assert before - timedelta(seconds=1) <= entry.started_at <= datetime.now(UTC)
    assert ledger.claim("k2", "create_file", "digest-1") is None  # keys are independent


def test_ledger_returns_the_completed_result(ledger: Ledger) -> None:
    ledger.claim("k", "create_file", "d")
    ledger.complete("k", RESULT)
    entry = ledger.claim("k", "create_file", "d")
    assert entry is not None
    assert entry.result == RESULT


def test_ledger_keeps_failures_as_results(ledger: Ledger) -> None:
    ledger.claim("k", "delete_file", "d")
    failure = ToolFailure("NOT_FOUND", "a.txt does not exist").result()
    ledger.complete("k", failure)
    entry = ledger.claim("k", "delete_file", "d")
    assert entry is not None
    assert entry.result == failure


def test_ledger_release_frees_only_an_unfinished_claim(ledger: Ledger) -> None:
    ledger.claim("open", "create_file", "d")
    ledger.release("open")
    assert ledger.claim("open", "create_file", "d2") is None  # claimable again

    ledger.claim("done", "create_file", "d")
    ledger.complete("done", RESULT)
    ledger.release("done")
    entry = ledger.claim("done", "create_file", "d")
    assert entry is not None
    assert entry.result == RESULT

    ledger.release("never-claimed")  # nothing to forget, no error


def test_ledger_gives_a_key_to_exactly_one_of_many_concurrent_claims(ledger: Ledger) -> None:
    threads = 16
    barrier = threading.Barrier(threads)
    outcomes: list[Any] = []
    lock = threading.Lock()

    def claim(n: int) -> None:
        barrier.wait()
        try:
            entry: Any = ledger.claim("contended", "create_file", "same")
        except Exception as e:
            entry = e
        with lock:
            outcomes.append(entry)

    workers = [threading.Thread(target=claim, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert len(outcomes) == threads
    assert not [o for o in outcomes if isinstance(o, Exception)]
    assert sum(o is None for o in outcomes) == 1
    assert all(o.digest == "same" and o.result is None for o in outcomes if o is not None)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlDatabase]:
    if request.param == "sqlite":
        db = SqlDatabase(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'db.sqlite3'}")
    else:
        dsn, schema = request.getfixturevalue("postgres_url")
        db = SqlDatabase(dsn, schema=schema)
    db.open()
    try:
        yield db
    finally:
        db.close()


def test_sql_ledger_purges_old_entries_only(database: SqlDatabase) -> None:
    ledger = SqlLedger(database)
    ledger.claim("old", "create_file", "d")
    ledger.complete("old", RESULT)
    assert ledger.purge(datetime.now(UTC) - timedelta(hours=1)) == 0
    assert ledger.claim("old", "create_file", "d") is not None
    assert ledger.purge(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert ledger.claim("old", "create_file", "d") is None  # forgotten: claimable again


def test_sql_ledger_survives_a_restart(database: SqlDatabase, tmp_path: Path) -> None:
    SqlLedger(database).claim("k", "create_file", "d")
    SqlLedger(database).complete("k", RESULT)
    again = SqlLedger(database)  # migrations run again: nothing is lost
    entry = again.claim("k", "create_file", "d")
    assert entry is not None
    assert entry.result == RESULT


# ============================================================== SqlDatabase


MIGRATIONS = [
    ["CREATE TABLE {things} (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"],
    ["ALTER TABLE {things} ADD COLUMN colour TEXT"],
]


def test_migrations_apply_once_and_resume(database: SqlDatabase) -> None:
    assert database.migrate("things", MIGRATIONS[:1]) == 1
    assert database.migrate("things", MIGRATIONS[:1]) == 1  # a CREATE without IF NOT EXISTS
    assert database.migrate("things", MIGRATIONS) == 2
    assert database.migrate("things", MIGRATIONS) == 2
    table, ph = database.table("things"), database.ph
    with database.transaction() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (id, name, colour) VALUES ({ph}, {ph}, {ph})", (1, "a", "red")
        )
        cursor.execute(
            f"SELECT version FROM {database.table(MIGRATIONS_TABLE)} WHERE component = {ph}",
            ("things",),
        )
        assert cursor.fetchone()[0] == 2


def test_a_failed_transaction_leaves_nothing_behind(database: SqlDatabase) -> None:
    database.migrate("things", MIGRATIONS)
    table, ph = database.table("things"), database.ph

    def insert_then_fail() -> None:
        with database.transaction() as cursor:
            cursor.execute(f"INSERT INTO {table} (id, name) VALUES ({ph}, {ph})", (1, "lost"))
            raise RuntimeError("midway")

    with pytest.raises(RuntimeError, match="midway"):
        insert_then_fail()
    with database.transaction() as cursor:
        cursor.execute(f"INSERT INTO {table} (id, name) VALUES ({ph}, {ph})", (2, "kept"))
    with database.transaction() as cursor:
        cursor.execute(f"SELECT id, name FROM {table} ORDER BY id")
        assert [tuple(r) for r in cursor.fetchall()] == [(2, "kept")]


def test_a_failed_migration_is_not_recorded(database: SqlDatabase) -> None:
    broken = [["CREATE TABLE {things} (id INTEGER PRIMARY KEY)", "NOT SQL AT ALL"]]
    with pytest.raises(Exception, match=r"(?i)syntax"):
        database.migrate("broken", broken)
    fixed = [["CREATE TABLE {things} (id INTEGER PRIMARY KEY)"]]
    assert database.migrate("broken", fixed) == 1  # the table was rolled back too


def test_postgres_open_creates_the_schema(postgres_url: tuple[str, str]) -> None:
    dsn, _ = postgres_url
    schema = f"new_{uuid.uuid4().hex[:10]}"
    db = SqlDatabase(dsn, schema=schema).open()
    try:
        SqlLedger(db).claim("k", "create_file", "d")
        with psycopg.connect(dsn) as conn:
            tables = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            ).fetchall()
        assert {"tool_ledger", MIGRATIONS_TABLE} <= {t[0] for t in tables}
        db.open()  # opening again is harmless
    finally:
        db.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                pgsql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(pgsql.Identifier(schema))
            )


@pytest.mark.parametrize(
    "url", ["", "mysql://localhost/db", "sqlite://relative.db", "/var/db.sqlite3", "http://x"]
)
def test_an_unknown_database_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="must start with"):
        SqlDatabase(url)


@pytest.mark.parametrize(
    "schema", ["", "bad-name", 'x"; DROP TABLE y; --', "1abc", "a b", "public\n", "s" * 64]
)
def test_an_unsafe_schema_name_is_refused(schema: str) -> None:
    with pytest.raises(ValueError, match="schema"):
        SqlDatabase("postgresql://localhost/db", schema=schema)


@pytest.mark.parametrize("name", ["", "a-b", 'x"', "t\n", "1t"])
def test_an_unsafe_table_name_is_refused(tmp_path: Path, name: str) -> None:
    db = SqlDatabase(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    with pytest.raises(ValueError, match="table name"):
        db.table(name)
    assert db.table("tool_ledger") == "tool_ledger"


# ================================================================ workspaces


MODES = [True, False] if has_openat2() else [False]


@pytest.fixture(params=MODES, ids=lambda v: "openat2" if v else "walk")
def workspaces(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConfinedWorkspaces]:
    root = tmp_path / "root"
    spaces = ConfinedWorkspaces(root, use_openat2=request.param)
    assert spaces.use_openat2 is request.param
    try:
        yield spaces
    finally:
        spaces.close()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the workspaces, holding something worth stealing."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret.txt").write_text("SECRET")
    return path


@contextlib.contextmanager
def opened(spaces: ConfinedWorkspaces, name: str = "agent-1") -> Iterator[ConfinedWorkspace]:
    with spaces.open(name) as ws:
        yield ws


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_workspace_write_read_list_delete(workspaces: ConfinedWorkspaces) -> None:
    with opened(workspaces) as ws:
        ws.write_bytes(["notes", "deep", "a.txt"], b"hello", overwrite=False)
        ws.write_bytes(["b.txt"], b"", overwrite=False)
        assert ws.read_bytes(["notes", "deep", "a.txt"], 100) == b"hello"
        assert ws.read_bytes(["b.txt"], 100) == b""
        assert [(e.name, e.kind, e.size_bytes) for e in ws.list([], 10)] == [
            ("b.txt", "file", 0),
            ("notes", "directory", 0),
        ]
        assert [e.name for e in ws.list([], 1)] == ["b.txt"]
        assert ws.exists(["notes", "deep", "a.txt"])
        ws.delete(["notes", "deep", "a.txt"])
        assert not ws.exists(["notes", "deep", "a.txt"])
        assert not ws.exists(["nowhere", "a.txt"])
        assert ws.list(["notes", "deep"], 10) == []
    assert (workspaces.root / "agent-1" / "b.txt").is_file()


def test_workspace_files_are_private_to_the_service(workspaces: ConfinedWorkspaces) -> None:
    with opened(workspaces, "team/task-1") as ws:
        ws.write_bytes(["d", "e", "f.txt"], b"x", overwrite=False)
        ws.write_bytes(["g.txt"], b"x", overwrite=False)
        ws.write_bytes(["g.txt"], b"replaced", overwrite=True)
    root = workspaces.root
    assert mode(root / "team") == 0o700
    assert mode(root / "team" / "task-1") == 0o700
    assert mode(root / "team" / "task-1" / "d") == 0o700
    assert mode(root / "team" / "task-1" / "d" / "e") == 0o700
    assert mode(root / "team" / "task-1" / "d" / "e" / "f.txt") == 0o600
    assert mode(root / "team" / "task-1" / "g.txt") == 0o600
    assert (root / "team" / "task-1" / "g.txt").read_bytes() == b"replaced"


def test_workspace_reads_are_bounded(workspaces: ConfinedWorkspaces) -> None:
    with opened(workspaces) as ws:
        ws.write_bytes(["big"], b"x" * 11, overwrite=False)
        assert ws.read_bytes(["big"], 11) == b"x" * 11
        with pytest.raises(ToolFailure) as info:
            ws.read_bytes(["big"], 10)
    assert info.value.code == "TOO_LARGE"


def test_workspace_create_refuses_an_existing_file(workspaces: ConfinedWorkspaces) -> None:
    with opened(workspaces) as ws:
        ws.write_bytes(["a"], b"one", overwrite=False)
        with pytest.raises(ToolFailure) as info:
            ws.write_bytes(["a"], b"two", overwrite=False)
        assert info.value.code == "ALREADY_EXISTS"
        assert ws.read_bytes(["a"], 10) == b"one"


def test_workspace_delete_refuses_directories(workspaces: ConfinedWorkspaces) -> None:
    with opened(workspaces) as ws:
        ws.write_bytes(["d", "f"], b"x", overwrite=False)
        with pytest.raises(ToolFailure) as info:
            ws.delete(["d"])
        assert info.value.code == "IS_A_DIRECTORY"
        with pytest.raises(ToolFailure) as info:
            ws.delete(["missing"])
        assert info.value.code == "NOT_FOUND"
        assert ws.exists(["d", "f"])


@pytest.mark.parametrize(
    "action",
    [
        lambda ws: ws.read_bytes(["f.txt", "x"], 100),
        lambda ws: ws.write_bytes(["f.txt", "x"], b"y", overwrite=False),
        lambda ws: ws.write_bytes(["f.txt", "x", "y"], b"y", overwrite=True),
        lambda ws: ws.list(["f.txt"], 10),
        lambda ws: ws.delete(["f.txt", "x"]),
    ],
    ids=["read", "create", "overwrite", "list", "delete"],
)
def test_a_file_used_as_a_directory_is_not_found(
    workspaces: ConfinedWorkspaces, action: Callable[[ConfinedWorkspace], Any]
) -> None:
    with opened(workspaces) as ws:
        ws.write_bytes(["f.txt"], b"plain", overwrite=False)
        with pytest.raises(ToolFailure) as info:
            action(ws)
        assert info.value.code == "NOT_FOUND"
        assert not ws.exists(["f.txt", "x"])
        assert ws.read_bytes(["f.txt"], 100) == b"plain"


@pytest.mark.parametrize(
    "action",
    [
        lambda ws: ws.read_bytes(["link", "secret.txt"], 100),
        lambda ws: ws.read_bytes(["sub", "link", "secret.txt"], 100),
        lambda ws: ws.write_bytes(["link", "planted.txt"], b"x", overwrite=False),
        lambda ws: ws.write_bytes(["link", "planted.txt"], b"x", overwrite=True),
        lambda ws: ws.write_bytes(["sub", "link", "new", "planted.txt"], b"x", overwrite=False),
        lambda ws: ws.list(["link"], 10),
        lambda ws: ws.list(["sub", "link"], 10),
        lambda ws: ws.delete(["link", "secret.txt"]),
        lambda ws: ws.exists(["link", "secret.txt"]),
        lambda ws: ws.read_bytes(["file-link"], 100),
        lambda ws: ws.read_bytes(["inner-link"], 100),
        lambda ws: ws.delete(["file-link"]),
    ],
    ids=[
        "read",
        "read-nested",
        "create",
        "overwrite",
        "create-nested",
        "list",
        "list-nested",
        "delete",
        "exists",
        "read-file-link",
        "read-link-inside",
        "delete-link",
    ],
)
def test_a_symlink_anywhere_in_a_path_is_refused(
    workspaces: ConfinedWorkspaces, outside: Path, action: Callable[[ConfinedWorkspace], Any]
) -> None:
    with opened(workspaces) as ws:
        ws.write_bytes(["sub", "real.txt"], b"inside", overwrite=False)
    home = workspaces.root / "agent-1"
    (home / "link").symlink_to(outside)
    (home / "sub" / "link").symlink_to(outside)
    (home / "file-link").symlink_to(outside / "secret.txt")
    (home / "inner-link").symlink_to(home / "sub" / "real.txt")  # even one that stays inside
    with opened(workspaces) as ws, pytest.raises(PathRefused):
        action(ws)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "SECRET"
    assert (home / "file-link").is_symlink()


def test_overwriting_a_symlink_replaces_the_link_not_its_target(
    workspaces: ConfinedWorkspaces, outside: Path
) -> None:
    with opened(workspaces) as ws:
        pass
    home = workspaces.root / "agent-1"
    (home / "out").symlink_to(outside / "secret.txt")
    with opened(workspaces) as ws:
        with pytest.raises(ToolFailure) as info:
            ws.write_bytes(["out"], b"pwned", overwrite=False)
        assert info.value.code == "ALREADY_EXISTS"
        ws.write_bytes(["out"], b"mine", overwrite=True)
    assert (outside / "secret.txt").read_text() == "SECRET"
    assert not (home / "out").is_symlink()
    assert (home / "out").read_bytes() == b"mine"


def test_listing_shows_links_without_following_them(
    workspaces: ConfinedWorkspaces, outside: Path
) -> None:
    with opened(workspaces) as ws:
        ws.write_bytes(["a.txt"], b"abc", overwrite=False)
    home = workspaces.root / "agent-1"
    (home / "dangling").symlink_to(home / "gone")
    (home / "dir-link").symlink_to(outside)
    with opened(workspaces) as ws:
        entries = {e.name: e.kind for e in ws.list([], 10)}
        assert ws.exists(["dangling"])
    assert entries == {"a.txt": "file", "dangling": "symlink", "dir-link": "symlink"}


def test_workspaces_with_two_segments_nest(workspaces: ConfinedWorkspaces) -> None:
    with opened(workspaces, "agent-1/task-1") as ws:
        ws.write_bytes(["a"], b"1", overwrite=False)
    with opened(workspaces, "agent-1/task-2") as ws:
        assert not ws.exists(["a"])
    with opened(workspaces, "agent-1") as ws:
        assert [e.name for e in ws.list([], 10)] == ["task-1", "task-2"]
        assert ws.read_bytes(["task-1", "a"], 10) == b"1"


@pytest.mark.parametrize("name", ["evil", "evil/task-1", "agent-1/evil"])
def test_a_workspace_segment_that_is_a_symlink_is_refused(
    workspaces: ConfinedWorkspaces, outside: Path, name: str
) -> None:
    (workspaces.root / "agent-1").mkdir()
    (workspaces.root / "evil").symlink_to(outside)
    (workspaces.root / "agent-1" / "evil").symlink_to(outside)
    with pytest.raises(PathRefused, match="cannot be opened"), opened(workspaces, name):
        pytest.fail("a linked workspace was opened")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_a_workspace_segment_that_is_a_file_is_refused(workspaces: ConfinedWorkspaces) -> None:
    (workspaces.root / "flat").write_text("not a directory")
    with pytest.raises(PathRefused), opened(workspaces, "flat/task"):
        pytest.fail("opened")


def test_bad_workspace_names_are_refused_without_leaking_descriptors(
    workspaces: ConfinedWorkspaces,
) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        for name in ("../x", "a/b/c", "", "a b"):
            with pytest.raises(PathRefused), opened(workspaces, name):
                pass
    assert len(os.listdir("/proc/self/fd")) <= before + 2
    assert list(workspaces.root.iterdir()) == []


def test_a_fifo_is_not_a_file(workspaces: ConfinedWorkspaces) -> None:
    with opened(workspaces) as ws:
        pass
    os.mkfifo(workspaces.root / "agent-1" / "pipe")
    with opened(workspaces) as ws:
        with pytest.raises(ToolFailure) as info:
            ws.read_bytes(["pipe"], 100)
        assert info.value.code == "NOT_A_FILE"
        assert [e.kind for e in ws.list([], 10)] == ["other"]


# =================================================================== plugins


GOOD_IMPL = '''
from langchain_core.tools import BaseTool
from pydantic import BaseModel, Field


class GreetArgs(BaseModel):
    name: str = Field(description="Who to greet.")
    punctuation: str = Field("!", description="How to end.")


class Greet(BaseTool):
    name: str = "greet"
    description: str = "Greets someone by name."
    args_schema: type[BaseModel] = GreetArgs
    side_effect: str = "read_only"
    version: str = "2.1"

    def _run(self, name: str, punctuation: str = "!") -> str:
        return f"hello {name}{punctuation}"


class Tally(BaseTool):
    """Counts its calls; at most once by default."""

    name: str = "tally"
    description: str = "Adds one to a counter and reports it."
    calls: int = 0

    def _run(self, label: str) -> dict:
        self.calls += 1
        return {"content": f"{label}: {self.calls}", "count": self.calls}


class Explode(BaseTool):
    name: str = "explode"
    description: str = "Always fails."
    side_effect: str = "idempotent"

    def _run(self, why: str) -> str:
        raise RuntimeError(f"kaboom: {why}")
'''

PLUGINS = {
    "good/__init__.py": "from .impl import Explode, Greet, Tally\n__tools__ = [Greet, Tally(), Explode]\n",
    "good/impl.py": GOOD_IMPL,
    "broken/__init__.py": "raise RuntimeError('boom at import')\n",
    "empty/__init__.py": "X = 1\n",
    "notatool/__init__.py": "def helper():\n    return 1\n\n__tools__ = [helper]\n",
    "clash/__init__.py": textwrap.dedent(
        """
        from langchain_core.tools import BaseTool

        class Shadow(BaseTool):
            name: str = "read_lines"
            description: str = "Pretends to be a builtin."

            def _run(self, filename: str) -> str:
                return "shadowed"

        __tools__ = [Shadow]
        """
    ),
    "zz_dupe/__init__.py": textwrap.dedent(
        """
        from langchain_core.tools import BaseTool

        class Greet2(BaseTool):
            name: str = "greet"
            description: str = "Another greet."

            def _run(self, name: str) -> str:
                return "again"

        __tools__ = [Greet2]
        """
    ),
    "badname/__init__.py": textwrap.dedent(
        """
        from langchain_core.tools import BaseTool

        class Bad(BaseTool):
            name: str = "Bad Name"
            description: str = "Unusable name."

            def _run(self) -> str:
                return ""

        __tools__ = [Bad]
        """
    ),
    "badeffect/__init__.py": textwrap.dedent(
        """
        from langchain_core.tools import BaseTool

        class Odd(BaseTool):
            name: str = "odd"
            description: str = "Unknown side effect."
            side_effect: str = "sometimes"

            def _run(self) -> str:
                return ""

        __tools__ = [Odd]
        """
    ),
    "badschema/__init__.py": textwrap.dedent(
        r"""
        from langchain_core.tools import BaseTool
        from pydantic import BaseModel, Field

        class Args(BaseModel):
            word: str = Field(pattern=r"^\p{L}+$")  # fine for pydantic, not for Python's re

        class Spell(BaseTool):
            name: str = "spell"
            description: str = "Unicode letters only."
            args_schema: type[BaseModel] = Args
            side_effect: str = "read_only"

            def _run(self, word: str) -> str:
                return word

        __tools__ = [Spell]
        """
    ),
    "not_a_plugin/readme.txt": "no __init__.py here\n",
}

BUILTIN_NAMES = [
    "read_lines",
    "grep_file",
    "create_file",
    "delete_file",
    "list_files",
    "fetch_url",
    "parse_url",
]


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    root = tmp_path / "plugins"
    for relative, source in PLUGINS.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


def test_load_plugins_keeps_good_tools_and_reports_each_bad_plugin(
    plugin_dir: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-dir"
    tools, problems = load_plugins([plugin_dir, missing], BUILTIN_NAMES)
    specs = {t.spec.name: t.spec for t in tools}
    assert set(specs) == {"greet", "tally", "explode"}
    assert specs["greet"].side_effect is SideEffect.READ_ONLY
    assert specs["greet"].version == "2.1"
    assert specs["greet"].source == "plugin:good"
    assert specs["greet"].description == "Greets someone by name."
    assert specs["greet"].arguments_schema["required"] == ["name"]
    assert "title" not in specs["greet"].arguments_schema
    assert specs["tally"].side_effect is SideEffect.AT_MOST_ONCE  # the safe default
    assert specs["explode"].side_effect is SideEffect.IDEMPOTENT

    found = dict(problems)
    assert set(found) == {
        "broken",
        "empty",
        "notatool",
        "clash",
        "zz_dupe",
        "badname",
        "badeffect",
        "badschema",
        str(missing),
    }
    assert found["broken"] == "RuntimeError: boom at import"
    assert "no __tools__" in found["empty"]
    assert "not a LangChain tool" in found["notatool"]
    assert "already taken: read_lines" in found["clash"]
    assert "already taken: greet" in found["zz_dupe"]
    assert "Bad Name" in found["badname"]
    assert "sometimes" in found["badeffect"]
    assert "'spell' has an unusable schema" in found["badschema"]
    assert found[str(missing)] == "plugin directory does not exist"


async def test_a_loaded_plugin_tool_runs_and_reports_its_failures(plugin_dir: Path) -> None:
    tools, _ = load_plugins([plugin_dir], BUILTIN_NAMES)
    by_name = {t.spec.name: t for t in tools}
    env: Any = None  # plugin tools do not use the environment
    greeted = await by_name["greet"].run({"name": "Ada", "punctuation": "?"}, env)
    assert greeted.content == "hello Ada?"
    tallied = await by_name["tally"].run({"label": "n"}, env)
    assert (tallied.content, tallied.data) == ("n: 1", {"content": "n: 1", "count": 1})
    with pytest.raises(ToolFailure) as info:
        await by_name["explode"].run({"why": "testing"}, env)
    assert (info.value.code, info.value.message) == (
        "PLUGIN_ERROR",
        "RuntimeError: kaboom: testing",
    )


@contextlib.asynccontextmanager
async def service(settings: Settings) -> AsyncIterator[Any]:
    running = await ToolsService(settings).start()
    try:
        yield running.stub()
    finally:
        await running.stop()


async def test_plugin_tools_are_served_over_grpc(
    make_settings: Callable[..., Settings], plugin_dir: Path
) -> None:
    async with service(make_settings(plugin_dirs=[str(plugin_dir)])) as stub:
        listed = await stub.ListTools(pb.ListToolsRequest())
        tools = {t.name: t for t in listed.tools}
        assert {"greet", "tally", "explode", "run_code", *BUILTIN_NAMES} == set(tools)
        assert tools["greet"].source == "plugin:good"
        assert tools["greet"].side_effect == pb.SIDE_EFFECT_READ_ONLY
        assert tools["tally"].side_effect == pb.SIDE_EFFECT_AT_MOST_ONCE
        assert tools["read_lines"].source == "builtin"  # the clashing plugin did not replace it
        problems = {p.plugin: p.error for p in listed.plugin_problems}
        assert problems["broken"] == "RuntimeError: boom at import"
        assert {
            "empty",
            "notatool",
            "clash",
            "zz_dupe",
            "badname",
            "badeffect",
            "badschema",
        } <= set(problems)

        greeted = await stub.InvokeTool(invoke_request("greet", name="Ada"))
        assert greeted.content == "hello Ada!"
        assert not greeted.HasField("error")

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.InvokeTool(invoke_request("greet"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in error_from_rpc(info.value).violations] == ["arguments.name"]

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.InvokeTool(invoke_request("tally", label="x"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # at most once: needs a key
        first = await stub.InvokeTool(invoke_request("tally", key="t1", label="x"))
        again = await stub.InvokeTool(invoke_request("tally", key="t1", label="x"))
        assert (first.content, first.replayed) == ("x: 1", False)
        assert (again.content, again.replayed) == ("x: 1", True)
        assert (await stub.InvokeTool(invoke_request("tally", key="t2", label="x"))).content == (
            "x: 2"
        )

        failed = await stub.InvokeTool(invoke_request("explode", why="on purpose"))
        assert failed.error.code == "PLUGIN_ERROR"
        assert failed.error.message == "RuntimeError: kaboom: on purpose"


# ===================================================================== audit


def entry(tool: str, outcome: str = "succeeded", n: int = 0) -> AuditEntry:
    return AuditEntry(
        tool=tool,
        context=InvocationContext(agent_id="agent-7", run_id="run-3", task_id=f"task-{n}"),
        outcome=outcome,
        detail="" if outcome == "succeeded" else "NOT_FOUND",
        duration_ms=12,
        bytes=345,
        request_id="req-1",
        actor="",
    )


async def test_audit_records_land_in_the_audit_stream(nats_server: Any, nats_prefix: str) -> None:
    names = Names(nats_prefix)
    async with connected(nats_server.url) as client:
        publisher = AuditPublisher(client, names, SERVICE, limits=Settings().audit_limits())
        sink = PublishedAuditSink(publisher)
        await publisher.start()
        sink.record(entry("read_lines", n=1))
        sink.record(entry("create_file", "failed", n=2))
        sink.record(
            AuditEntry(
                tool="t" * 300,
                context=InvocationContext(agent_id="agent-8"),
                outcome="succeeded",
                detail="",
                duration_ms=1,
                bytes=0,
                request_id="",
                actor="operator",
            )
        )
        records = records_of(await wait_for_records(nats_server.url, names.stream("audit"), 3))
        await publisher.stop()
    # the batch went out on the subject tool invocations have always used
    nc = await nats.connect(nats_server.url)
    try:
        last = await nc.jetstream().get_last_msg(names.stream("audit"), f"{nats_prefix}.audit.>")
    finally:
        await nc.close()
    assert last.subject == f"{nats_prefix}.audit.tools.invoke"
    assert names.stream("audit") == f"{nats_prefix.upper()}_AUDIT"
    assert [r.target for r in records[:2]] == ["read_lines", "create_file"]
    first = records[0]
    assert (first.service, first.action, first.outcome, first.detail) == (
        "tools",
        "invoke",
        "succeeded",
        "",
    )
    assert (first.agent_id, first.run_id, first.task_id) == ("agent-7", "run-3", "task-1")
    assert (first.principal_id, first.request_id) == ("agent-7", "req-1")
    assert (first.duration_ms, first.bytes) == (12, 345)
    assert abs(first.occurred_at.ToDatetime(UTC) - datetime.now(UTC)) < timedelta(seconds=30)
    assert (records[1].outcome, records[1].detail) == ("failed", "NOT_FOUND")
    assert (records[2].target, records[2].principal_id) == ("t" * 128, "operator")
    assert len({r.record_id for r in records}) == 3


async def test_the_service_audits_each_invocation_without_contents(
    tools: ToolsService, stub: Any, nats_server: Any
) -> None:
    secret = "the launch code is 0000"
    created = await stub.InvokeTool(
        invoke_request(
            "create_file",
            key="k",
            task_id="task-9",
            run_id="run-4",
            filename="a.txt",
            content=secret,
        )
    )
    assert not created.HasField("error")
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.InvokeTool(invoke_request("read_lines", filename="../x"))
    stream = Names(tools.settings.nats_prefix).stream("audit")
    records = records_of(await wait_for_records(nats_server.url, stream, 2))
    assert [(r.target, r.outcome) for r in records] == [
        ("create_file", "succeeded"),
        ("read_lines", "refused"),
    ]
    first = records[0]
    assert (first.agent_id, first.task_id, first.run_id) == ("agent-1", "task-9", "run-4")
    assert first.bytes == len(secret)
    assert records[1].detail == "PATH_OUTSIDE_WORKSPACE"
    assert not any(secret in str(r) or "../x" in str(r) for r in records)


# ============================================================ PG over gRPC


async def test_the_service_replays_from_a_postgres_ledger(
    make_settings: Callable[..., Settings], postgres_url: tuple[str, str], workspace_root: Path
) -> None:
    dsn, schema = postgres_url
    settings = make_settings(database_url=dsn, postgres_schema=schema)
    request = invoke_request("create_file", key="pg-1", filename="a.txt", content="first")
    async with service(settings) as stub:
        first = await stub.InvokeTool(request)
        assert (first.content, first.replayed) == ("wrote 5 bytes to a.txt", False)
    (workspace_root / "agent-1" / "a.txt").write_text("edited since")
    async with service(settings) as stub:  # a restarted service still remembers the key
        again = await stub.InvokeTool(request)
        assert (again.content, again.replayed) == ("wrote 5 bytes to a.txt", True)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.InvokeTool(
                invoke_request("create_file", key="pg-1", filename="a.txt", content="other")
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_from_rpc(info.value).reason == "IDEMPOTENCY_KEY_REUSED"
    assert (workspace_root / "agent-1" / "a.txt").read_text() == "edited since"
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            pgsql.SQL("SELECT idempotency_key, tool FROM {}.tool_ledger").format(
                pgsql.Identifier(schema)
            )
        ).fetchall()
    assert rows == [("pg-1", "create_file")]


async def test_invoking_without_a_tool_name_is_invalid(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.InvokeTool(invoke_request(""))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error_from_rpc(info.value).violations] == ["tool_name"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.InvokeTool(invoke_request("no_such_tool"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_from_rpc(info.value).reason == "TOOL_NOT_FOUND"


# ================================================================== settings


def test_list_settings_take_comma_separated_or_json_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_TOOLS_PLUGIN_DIRS", " /opt/a, /opt/b ,")
    monkeypatch.setenv("AGENTRT_TOOLS_FETCH_ALLOW_HOSTS", '["example.com", "*.example.org"]')
    monkeypatch.setenv("AGENTRT_TOOLS_FETCH_ALLOWED_NETWORKS", "10.1.0.0/16,fd00::/8")
    settings = load_settings(Settings)
    assert settings.plugin_dirs == ["/opt/a", "/opt/b"]
    assert settings.fetch_allow_hosts == ["example.com", "*.example.org"]
    assert settings.fetch_allowed_networks == ["10.1.0.0/16", "fd00::/8"]
    assert settings.fetch_deny_hosts == []


def test_a_bad_network_setting_fails_naming_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_TOOLS_FETCH_DENIED_NETWORKS", "10.0.0.0/8,not-a-network")
    with pytest.raises(ConfigError, match="AGENTRT_TOOLS_FETCH_DENIED_NETWORKS"):
        load_settings(Settings)
