"""Adapter: the eventsourcing environment for the configured database.

Settings are handed to the library as an explicit mapping (never through
os.environ). SQLite is the embedded default; PostgreSQL goes through psycopg 3
with the connections of `pg_store.BoundedPostgresFactory` (fail fast, deadline-bounded).
"""

from __future__ import annotations

from psycopg import conninfo

from agent_registry.config import Settings


def eventsourcing_env(settings: Settings) -> dict[str, str]:
    """The library settings (PERSISTENCE_MODULE, SQLITE_*/POSTGRES_*, cache) for `settings`."""
    env = {"IS_SNAPSHOTTING_ENABLED": "y"}
    if settings.aggregate_cache_size > 0:
        env["AGGREGATE_CACHE_MAXSIZE"] = str(settings.aggregate_cache_size)
    if settings.persistence == "sqlite":
        path = settings.sqlite_path.expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        env.update(
            PERSISTENCE_MODULE="eventsourcing.sqlite",
            SQLITE_DBNAME=str(path),
            SQLITE_LOCK_TIMEOUT="10",
        )
        return env
    assert settings.postgres_dsn is not None
    parts = conninfo.conninfo_to_dict(settings.postgres_dsn.get_secret_value())
    env.update(
        PERSISTENCE_MODULE="agent_registry.adapters.pg_store:BoundedPostgresFactory",
        POSTGRES_DBNAME=str(parts.get("dbname") or "postgres"),
        POSTGRES_HOST=str(parts.get("host") or "localhost"),
        POSTGRES_PORT=str(parts.get("port") or "5432"),
        POSTGRES_USER=str(parts.get("user") or "postgres"),
        POSTGRES_PASSWORD=str(parts.get("password") or ""),
        POSTGRES_SCHEMA=settings.postgres_schema,
        POSTGRES_POOL_SIZE=str(settings.postgres_pool_size),
        POSTGRES_MAX_OVERFLOW=str(settings.postgres_max_overflow),
        POSTGRES_CONNECT_TIMEOUT="5",
    )
    return env
