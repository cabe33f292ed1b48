"""Adapter: the listing read model and relay positions in SQLite or PostgreSQL.

Built on eventsourcing's tracking recorders, so the tracking table is the
library's own and the listing rows are written in the same transaction as the
tracking position. The read-model table is created by an ordered list of
migrations recorded in `schema_migrations` (`agentrt_kit.sql`), applied at start-up.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder

from agent_registry.application.ports import ListFilter
from agent_registry.application.records import AgentRecord
from agentrt_kit.sql import apply_migrations

TABLE = "agent_listing"
COMPONENT = "agent_listing"

# Ordered; never edit a shipped entry, append a new one. `{agent_listing}` is the
# table's (schema-qualified) name; index names cannot be qualified.
MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE IF NOT EXISTS {agent_listing} ("
        " agent_id TEXT PRIMARY KEY,"
        " seq BIGINT NOT NULL,"
        " version BIGINT NOT NULL,"
        " name TEXT NOT NULL,"
        " template_id TEXT NOT NULL,"
        " status TEXT NOT NULL,"
        " owner_id TEXT NOT NULL,"
        " deleted INTEGER NOT NULL,"
        " doc TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS agent_listing_live ON {agent_listing} (deleted, seq)",
        "CREATE INDEX IF NOT EXISTS agent_listing_template"
        " ON {agent_listing} (template_id, deleted, seq)",
        "CREATE INDEX IF NOT EXISTS agent_listing_owner"
        " ON {agent_listing} (owner_id, deleted, seq)",
        "CREATE INDEX IF NOT EXISTS agent_listing_status ON {agent_listing} (status, deleted, seq)",
    ],
]

_COLUMNS = "agent_id, seq, version, name, template_id, status, owner_id, deleted, doc"


def _row(r: AgentRecord) -> tuple[Any, ...]:
    return (
        r.agent_id,
        r.seq,
        r.version,
        str(r.spec.get("name") or ""),
        str(r.spec.get("template_id") or ""),
        r.status,
        str(r.spec.get("owner_id") or ""),
        int(r.deleted),
        json.dumps(r.to_document(), ensure_ascii=False),
    )


class SqlReadModel:
    """Listing rows and named positions; mixed into an eventsourcing tracking recorder.

    Dialect differences are the placeholder and the table qualification.
    """

    ph: str
    datastore: Any
    app_name: str

    if TYPE_CHECKING:  # provided by the eventsourcing tracking recorder it is mixed into

        def max_tracking_id(self, application_name: str) -> int | None: ...  # noqa: D102
        def insert_tracking(self, tracking: Tracking) -> None: ...  # noqa: D102
        def _insert_tracking(self, c: Any, tracking: Tracking) -> None: ...
        def create_table(self) -> None: ...  # noqa: D102

    def qualified(self, name: str) -> str:
        """A table name as SQL statements must write it."""
        return name

    migration_lock: str | None = None  # serialises replicas starting together

    def migrate(self) -> int:
        """Apply pending migrations; returns the schema version reached."""
        with self.datastore.transaction(commit=True) as c:
            return apply_migrations(
                c,
                component=COMPONENT,
                migrations=MIGRATIONS,
                ph=self.ph,
                table=self.qualified,
                lock=self.migration_lock,
            )

    # ListingStore

    def position(self) -> int:
        """The last notification id applied to the listing."""
        return self.max_tracking_id(self.app_name) or 0

    def load(self, agent_ids: Collection[str]) -> dict[str, AgentRecord]:
        """Stored records of these agents."""
        ids = list(agent_ids)
        out: dict[str, AgentRecord] = {}
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join([self.ph] * len(chunk))
                c.execute(
                    f"SELECT doc FROM {self.qualified(TABLE)} WHERE agent_id IN ({marks})", chunk
                )
                for row in c.fetchall():
                    record = AgentRecord.from_document(json.loads(row["doc"]))
                    out[record.agent_id] = record
        return out

    def save(self, records: Sequence[AgentRecord], position: int) -> bool:
        """Upsert records and advance the tracking position in one transaction."""
        ph = ",".join([self.ph] * 9)
        upsert = (
            f"INSERT INTO {self.qualified(TABLE)} ({_COLUMNS}) VALUES ({ph}) "
            "ON CONFLICT (agent_id) DO UPDATE SET seq = excluded.seq, version = excluded.version, "
            "name = excluded.name, template_id = excluded.template_id, status = excluded.status, "
            "owner_id = excluded.owner_id, deleted = excluded.deleted, doc = excluded.doc"
        )
        try:
            with self.datastore.transaction(commit=True) as c:
                self._insert_tracking(c, Tracking(self.app_name, position))
                if records:
                    c.executemany(upsert, [_row(r) for r in records])
        except IntegrityError:
            return False
        return True

    def query(self, where: ListFilter, after_seq: int, limit: int) -> list[AgentRecord]:
        """Live agents matching `where` after `after_seq`, in seq order."""
        clauses, params = ["deleted = 0", f"seq > {self.ph}"], [after_seq]
        for column in ("template_id", "status", "owner_id"):
            value = getattr(where, column)
            if value:
                clauses.append(f"{column} = {self.ph}")
                params.append(value)
        params.append(limit)
        statement = (
            f"SELECT doc FROM {self.qualified(TABLE)} WHERE {' AND '.join(clauses)} "
            f"ORDER BY seq LIMIT {self.ph}"
        )
        with self.datastore.transaction(commit=False) as c:
            c.execute(statement, params)
            return [AgentRecord.from_document(json.loads(row["doc"])) for row in c.fetchall()]

    # PositionStore

    def get_position(self, name: str) -> int:
        """The position recorded under `name`."""
        return self.max_tracking_id(name) or 0

    def advance_position(self, name: str, position: int) -> None:
        """Record `position` under `name` unless a later one is recorded."""
        with contextlib.suppress(IntegrityError):  # another relay got further first
            self.insert_tracking(Tracking(name, position))


class SQLiteReadModel(SqlReadModel, SQLiteTrackingRecorder):
    """The read model in the registry's SQLite database."""

    ph = "?"

    def __init__(self, datastore: Any, app_name: str) -> None:
        SQLiteTrackingRecorder.__init__(self, datastore)
        self.app_name = app_name


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class PostgresReadModel(SqlReadModel, PostgresTrackingRecorder):
    """The read model in the registry's PostgreSQL schema."""

    ph = "%s"

    def __init__(self, datastore: Any, app_name: str) -> None:
        PostgresTrackingRecorder.__init__(self, datastore)
        if not _IDENTIFIER.fullmatch(datastore.schema):
            raise ValueError(f"unusable schema name {datastore.schema!r}")
        self.app_name = app_name

    def qualified(self, name: str) -> str:
        """`"schema"."table"`."""
        return f'"{self.datastore.schema}"."{name}"'

    migration_lock = "SELECT pg_advisory_xact_lock(hashtext('agentrt.migrations.agent_listing'))"


def read_model_for(recorder: Any, app_name: str) -> SqlReadModel:
    """The read model living beside the application's `recorder`, tables created and migrated."""
    model: SqlReadModel
    if isinstance(recorder.datastore, SQLiteDatastore):
        model = SQLiteReadModel(recorder.datastore, app_name)
    else:
        model = PostgresReadModel(recorder.datastore, app_name)
    model.create_table()  # the library's tracking table
    model.migrate()
    return model
