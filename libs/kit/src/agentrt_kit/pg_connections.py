"""PostgreSQL connections that fail fast and never outlive the call they serve.

`PgConnections` is the pool behind every service's PostgreSQL store (the registry's event
store, the executor's run records, the tools ledger), and `AsyncPgConnections` its twin
for async drivers (the executor's sessions checkpointer). Unlike psycopg_pool it has no
background workers: a connection is made in the caller's thread when no idle one is left,
so a database that refuses connections is known at once, and one that is back is used by
the very next call (psycopg_pool's reconnect backoff kept answering errors for seconds
after the database returned, and its waiting held calls for its whole timeout while
connections were refused).

- **Fast failure.** A refused or timed-out connect is `Unavailable` (503 at the gateway)
  and refuses further calls for `retry_after` seconds without trying, so a database that
  is down costs each call microseconds, not a connect timeout.
- **Stale connections.** A server that stopped or restarted has closed the pooled
  connections' sockets: an idle connection whose socket is readable (a termination
  message or end-of-file waiting, where a healthy idle connection has nothing) is dropped
  at checkout, with every other idle one, at the cost of a `select`, not a round trip.
  A connection that breaks while in use is dropped too; its error is `Unavailable` with
  reason `OUTCOME_UNKNOWN`, since a commit may have happened before the answer was lost.
- **Deadlines.** Store work never outlives the call it serves (`agentrt_kit.context.
  remaining_seconds`, set by the gRPC interceptor): waiting for a connection and
  connecting are bounded by what is left, a call whose deadline has passed once it holds
  a connection is refused before any statement is sent, and each statement's
  `statement_timeout` is at most what is left (work outside calls is bounded by the
  optional `statement_timeout` alone), so the server cancels work the caller stopped
  waiting for. A write answered as failed therefore never commits later; only a
  commit whose answer is lost on the wire stays unknown, is answered as such
  (`OUTCOME_UNKNOWN`), and is resolved by sending it again with the same
  Idempotency-Key or If-Match.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import select
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

from agentrt_kit.context import remaining_seconds
from agentrt_kit.errors import DeadlineExceeded, Unavailable

# The reason of an error after which a write may or may not have been applied.
OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
# libpq counts connect_timeout in whole seconds and treats values below 2 as 2.
MIN_CONNECT_TIMEOUT = 2


class _Policy:
    """What both pools decide alike: refusal while down, deadlines, what errors mean.

    Options: at most `max_size` connections, each made with `kwargs` within
    `connect_timeout`; a call waits `wait_timeout` for one to be free; statements are
    bounded by `statement_timeout` (None: only by the call's deadline); a failed connect
    refuses calls for `retry_after` seconds; `name` is what errors call the database.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        max_size: int = 10,
        kwargs: dict[str, Any] | None = None,
        connect_timeout: float = 5.0,
        wait_timeout: float = 10.0,
        statement_timeout: float | None = None,
        retry_after: float = 0.5,
        name: str = "database",
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._conninfo = conninfo
        self._kwargs = dict(kwargs or {})
        self._max_size = max_size
        self._connect_timeout = connect_timeout
        self._wait_timeout = wait_timeout
        self._statement_ms = int((statement_timeout or 0) * 1000)  # 0: unbounded
        self._retry_after = retry_after
        self._name = name
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        # statement_timeout (ms) each connection was last set to.
        self._timeouts: dict[int, int] = {}
        self._refusing_until = 0.0
        self._last_failure = ""
        self._closed = False

    def _refuse_if_down(self) -> None:
        if self._closed:
            raise Unavailable(f"{self._name} closed", reason="DATABASE_UNAVAILABLE")
        if time.monotonic() < self._refusing_until:
            raise Unavailable(
                f"{self._name} unavailable: {self._last_failure}", reason="DATABASE_UNAVAILABLE"
            )

    def _bounded(self, seconds: float) -> float:
        """`seconds`, or less when the call's deadline comes first (never negative)."""
        left = remaining_seconds()
        return seconds if left is None else max(0.0, min(seconds, left))

    def _check_deadline(self) -> None:
        left = remaining_seconds()
        if left is not None and left <= 0:
            raise DeadlineExceeded(
                f"deadline exceeded before the {self._name} was reached; nothing was written",
                reason="DEADLINE_EXCEEDED",
            )

    def _busy(self) -> Unavailable:
        self._check_deadline()
        return Unavailable(
            f"{self._name} busy: no connection free within {self._wait_timeout:g} s",
            reason="DATABASE_BUSY",
        )

    def _connect_seconds(self) -> int:
        self._check_deadline()
        return max(MIN_CONNECT_TIMEOUT, math.ceil(self._bounded(self._connect_timeout)))

    def _refused(self, error: psycopg.OperationalError) -> Unavailable:
        self._failed(error)
        return Unavailable(
            f"{self._name} unavailable: {_first_line(error)}", reason="DATABASE_UNAVAILABLE"
        )

    def _take_idle(self) -> tuple[Any | None, list[Any]]:
        """An idle connection that looks alive (None: none left), and the dead ones found.

        The server closed a stale one: it stopped or restarted, so the other idle ones are
        as dead. They are dropped all at once rather than failing a call on each.
        """
        with self._lock:
            conn = self._idle.pop() if self._idle else None
            if conn is None or not _stale(conn):
                return conn, []
            dead, self._idle = [conn, *self._idle], []
            return None, dead

    def _statement_timeout_to_set(self, conn: Any) -> int | None:
        """The statement_timeout (ms) `conn` must be set to now, None when it has it."""
        left = remaining_seconds()
        wanted = self._statement_ms
        if left is not None:
            by_deadline = max(1, int(left * 1000))
            wanted = min(wanted, by_deadline) if wanted else by_deadline
        if self._timeouts.get(id(conn)) == wanted:
            return None
        return wanted

    def _keep(self, conn: Any) -> bool:
        """Put `conn` back among the idle ones if it can serve again; whether it was."""
        healthy = not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE
        with self._lock:
            if healthy and not self._closed:
                self._idle.append(conn)
                return True
        self._timeouts.pop(id(conn), None)
        return False

    def _failed(self, error: BaseException) -> None:
        self._last_failure = _first_line(error)
        self._refusing_until = time.monotonic() + self._retry_after

    def _translated(self, conn: Any, error: psycopg.Error) -> tuple[Exception, list[Any]]:
        """What a statement's error means to the caller, and idle connections to close.

        The error is `error` itself when it is the caller's own; the connections are the
        idle ones, when the database went away.
        """
        if isinstance(error, pg_errors.QueryCanceled):
            return DeadlineExceeded(
                f"{self._name} statement cancelled at the call's deadline; it was rolled back",
                reason="DEADLINE_EXCEEDED",
            ), []
        if not (conn.closed or conn.broken):
            return error, []
        self._failed(error)
        with self._lock:
            idle, self._idle = self._idle, []
        # Statements may have reached the server: a commit whose answer was lost has
        # happened. Failed is not true then, unknown is.
        return Unavailable(
            f"{self._name} connection lost during the call ({_first_line(error)}): "
            "a change it was making may or may not have been applied; send it again "
            "with the same Idempotency-Key or If-Match",
            reason=OUTCOME_UNKNOWN,
        ), idle

    def _closing(self) -> list[Any]:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        return idle


class PgConnections(_Policy):
    """A bounded set of PostgreSQL connections, made on demand in the caller's thread.

    `configure` is called with each new connection; the other options are `_Policy`'s.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        configure: Callable[[psycopg.Connection[Any]], None] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(conninfo, **options)
        self._configure = configure
        self._slots = threading.BoundedSemaphore(self._max_size)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection for one unit of work, returned to the idle set afterwards.

        Raises:
            Unavailable: the database refuses or drops connections (now or just before);
                reason OUTCOME_UNKNOWN when it went while the work was being done.
            DeadlineExceeded: the call's deadline passed before any statement was sent,
                or the statement was cancelled at it (and rolled back).
        """
        self._refuse_if_down()
        if not self._slots.acquire(timeout=self._bounded(self._wait_timeout)):
            raise self._busy()
        try:
            conn = self._checkout()
            try:
                self._check_deadline()
                self._limit_statements(conn)
            except BaseException:
                self._checkin(conn)
                raise
            try:
                yield conn
            except psycopg.Error as e:
                translated, dead = self._translated(conn, e)
                self._checkin(conn)
                for gone in dead:
                    _close(gone)
                if translated is e:
                    raise
                raise translated from e
            except BaseException:
                self._checkin(conn)
                raise
            self._checkin(conn)
        finally:
            self._slots.release()

    def close(self) -> None:
        """Close the idle connections; connections in use close when handed back."""
        for conn in self._closing():
            _close(conn)

    def _checkout(self) -> psycopg.Connection[Any]:
        while True:
            conn, dead = self._take_idle()
            for gone in dead:
                _close(gone)
            if conn is not None:
                return conn  # type: ignore[no-any-return]
            if not dead:
                return self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        timeout = self._connect_seconds()
        try:
            conn: psycopg.Connection[Any] = psycopg.connect(
                self._conninfo, connect_timeout=timeout, **self._kwargs
            )
        except psycopg.OperationalError as e:
            raise self._refused(e) from e
        try:
            if self._configure is not None:
                self._configure(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _limit_statements(self, conn: psycopg.Connection[Any]) -> None:
        """Bound each statement by the call's deadline (or the default timeout)."""
        wanted = self._statement_timeout_to_set(conn)
        if wanted is None:
            return
        conn.execute(f"SET statement_timeout = {wanted}")
        if not conn.autocommit:
            conn.commit()
        self._timeouts[id(conn)] = wanted

    def _checkin(self, conn: psycopg.Connection[Any]) -> None:
        if not self._keep(conn):
            _close(conn)


class AsyncPgConnections(_Policy):
    """`PgConnections` for asyncio: psycopg's async connections, made on demand."""

    def __init__(self, conninfo: str, **options: Any) -> None:
        super().__init__(conninfo, **options)
        self._slots = asyncio.BoundedSemaphore(self._max_size)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection for one unit of work (see `PgConnections.connection`)."""
        self._refuse_if_down()
        try:
            await asyncio.wait_for(self._slots.acquire(), self._bounded(self._wait_timeout))
        except TimeoutError:
            raise self._busy() from None
        try:
            conn = await self._checkout()
            try:
                self._check_deadline()
                await self._limit_statements(conn)
            except BaseException:
                await self._checkin(conn)
                raise
            try:
                yield conn
            except psycopg.Error as e:
                translated, dead = self._translated(conn, e)
                await self._checkin(conn)
                for gone in dead:
                    await _aclose(gone)
                if translated is e:
                    raise
                raise translated from e
            except BaseException:
                await self._checkin(conn)
                raise
            await self._checkin(conn)
        finally:
            self._slots.release()

    async def close(self) -> None:
        """Close the idle connections; connections in use close when handed back."""
        for conn in self._closing():
            await _aclose(conn)

    async def _checkout(self) -> psycopg.AsyncConnection[Any]:
        while True:
            conn, dead = self._take_idle()
            for gone in dead:
                await _aclose(gone)
            if conn is not None:
                return conn  # type: ignore[no-any-return]
            if not dead:
                return await self._connect()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        timeout = self._connect_seconds()
        try:
            return await psycopg.AsyncConnection.connect(
                self._conninfo, connect_timeout=timeout, **self._kwargs
            )
        except psycopg.OperationalError as e:
            raise self._refused(e) from e

    async def _limit_statements(self, conn: psycopg.AsyncConnection[Any]) -> None:
        wanted = self._statement_timeout_to_set(conn)
        if wanted is None:
            return
        await conn.execute(f"SET statement_timeout = {wanted}")
        if not conn.autocommit:
            await conn.commit()
        self._timeouts[id(conn)] = wanted

    async def _checkin(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if not self._keep(conn):
            await _aclose(conn)


def _close(conn: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(psycopg.Error):  # closing a dead connection
        conn.close()


async def _aclose(conn: psycopg.AsyncConnection[Any]) -> None:
    with contextlib.suppress(psycopg.Error):
        await conn.close()


def _stale(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection is closed, broken, or has something unasked to read.

    An idle connection receives nothing unless the server is ending it (a FATAL message
    before it closes the socket, or end-of-file), so a readable socket means it is gone.
    """
    if conn.closed or conn.broken:
        return True
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(readable)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
