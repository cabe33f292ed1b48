"""Adapter: the event store on PostgreSQL, failing fast and bounded by each call's deadline.

The eventsourcing library's PostgreSQL recorders retry a failed statement ten times and
wait for its pool's connections up to the connect timeout each time, in the worker thread
the gRPC deadline does not stop: a create answered 408 after 5 s was saved up to ~45 s
later, once the database was back. Here the library's datastore takes its connections from
`agentrt_kit.pg_connections.PgConnections` instead, which refuses at once while the
database refuses connections (`Unavailable`, never retried by the library, which retries
only its own error types) and never sends a statement for a call whose deadline has
passed. `eventsourcing_env` names `BoundedPostgresFactory` as the persistence module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from eventsourcing import persistence
from eventsourcing.postgres import PostgresDatastore, PostgresFactory
from eventsourcing.utils import Environment, EnvType
from psycopg.rows import DictRow
from psycopg.types.composite import register_composite

from agentrt_kit.pg_connections import PgConnections

# psycopg's errors → the library's, which its recorders and our application catch
# (IntegrityError: another writer took the version first). Most specific first.
_LIBRARY_ERRORS: tuple[tuple[type[psycopg.Error], type[persistence.PersistenceError]], ...] = (
    (psycopg.IntegrityError, persistence.IntegrityError),
    (psycopg.DataError, persistence.DataError),
    (psycopg.InternalError, persistence.InternalError),
    (psycopg.ProgrammingError, persistence.ProgrammingError),
    (psycopg.NotSupportedError, persistence.NotSupportedError),
    (psycopg.OperationalError, persistence.OperationalError),
    (psycopg.DatabaseError, persistence.DatabaseError),
    (psycopg.InterfaceError, persistence.InterfaceError),
)


class BoundedPostgresDatastore(PostgresDatastore):
    """The library's datastore with its connections from `PgConnections`."""

    def __init__(self, made: PostgresDatastore, connect_timeout: float) -> None:
        # Take over every setting the library parsed from its environment; only where
        # connections come from changes. The library's own pool was never opened.
        self.__dict__.update(made.__dict__)
        pool = made.pool
        assert isinstance(pool.kwargs, dict)  # the library passes its connect settings so
        self.connections = PgConnections(
            "",
            max_size=pool.max_size,
            kwargs=dict(pool.kwargs),
            configure=self.after_connect_func(),
            connect_timeout=connect_timeout,
            name="event store",
        )

    @contextmanager
    def get_connection(self) -> Iterator[psycopg.Connection[DictRow]]:
        """A connection with the composite types registered; errors as the library's.

        `PgConnections` turns a lost connection into `Unavailable` and a statement
        cancelled at the deadline into `DeadlineExceeded` first; what is left of
        psycopg's errors becomes the library's.
        """
        try:
            with self.connections.connection() as conn:
                for info in self.psycopg_type_adapters.values():
                    if not conn.adapters.types.get(info.oid):
                        register_composite(info, conn)
                yield conn
        except psycopg.Error as e:
            raise _library_error(e) from e

    def close(self) -> None:
        """Close the connections."""
        self.connections.close()

    def __enter__(self) -> BoundedPostgresDatastore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _library_error(error: psycopg.Error) -> persistence.PersistenceError:
    for theirs, ours in _LIBRARY_ERRORS:
        if isinstance(error, theirs):
            return ours(str(error))
    return persistence.PersistenceError(str(error))


class BoundedPostgresFactory(PostgresFactory):
    """The library's PostgreSQL factory, with `BoundedPostgresDatastore`."""

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        timeout = float(self.env.get(self.POSTGRES_CONNECT_TIMEOUT) or 5)
        self.datastore = BoundedPostgresDatastore(self.datastore, timeout)
