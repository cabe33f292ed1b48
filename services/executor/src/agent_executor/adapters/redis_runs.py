"""Adapter: run events, cancel requests and run endings on Redis (Streams and pub/sub).

The Redis twin of `nats_runs.py`, for deployments that choose `AGENTRT_BUS_BACKEND=redis`.
`RedisBus` owns one client (one connection pool) and the four adapters that share it:
`events` (`RunEventSink`), `log` (`RunEventLog`), `cancel` (`CancelBus`) and `endings`
(`RunEndings`). In the composition root, `bus = await stack.enter_async_context(
RedisBus(url, prefix=..., retention_seconds=..., max_bytes=...))` starts the sink and,
at exit, stops all four and closes the connections; `await bus.cancel.start(on_cancel)`
once the run service exists.

Layout, under the deployment's prefix:

- `<prefix>:runs:events:<run_id>`: one stream per run. Entry id `<sequence>-1`, one
  field `event` holding the `agentrt.events.v1.RunEvent` exactly as JetStream stores
  it. Redis refuses an XADD whose id is not above the stream's last, so a repeat (or
  an old executor's late copy) is never stored twice and a stream's sequence numbers
  only increase. Every write sets the key's expiry to `retention_seconds`, so a run's
  events go together, `retention_seconds` after its last one (JetStream ages out each
  message on its own). With `max_bytes`, XADD trims the run's oldest entries (MINID)
  so that what this executor wrote of the run stays within it.
- `<prefix>:runs:ended`: a pub/sub channel; the sink publishes a run's id there with
  its last event, in the same transaction. One subscription per replica (opened by
  the first WaitRun) serves every waiting WaitRun: a connection per replica, not one
  per waiter, as XREAD on each run's key would take.
- `<prefix>:runs:cancel`: a pub/sub channel of run ids that every replica hears.

The sink queues events and one task writes them in order, each batch in one
MULTI/EXEC (entries, then expiries, then endings): Redis answers every write, so
there is nothing to confirm later or to send again after a reconnect but the batch
that was in flight, which is retried until Redis takes it. Reconnecting follows
redis-py `Retry` policies: each command retries a few times quickly (a read then
fails with `QueueUnavailable`); the sending task and readers already streaming wait
for Redis as long as it takes, backing off to `PATIENT_CAP_SECONDS`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError, ResponseError

from agent_executor.adapters.event_outbox import EventOutbox
from agent_executor.adapters.proto_mapping import parse_run_event, stored_run_event
from agent_executor.application.ports import QueueUnavailable
from agent_executor.domain.runs import RunEvent
from agentrt_kit.concurrency import cancel_and_wait, wait_event

log = logging.getLogger(__name__)

FIELD = b"event"  # the stream entry field holding the serialized RunEvent
CONNECT_SECONDS = 2.0  # to open a connection
SOCKET_SECONDS = 5.0  # for a reply; above BLOCK_MS, or every idle read would time out
BLOCK_MS = 2000  # how long one XREAD waits for a run's next event before asking again
READ_BATCH = 100  # entries per XREAD
SEND_BATCH = 256  # queued events written in one transaction
SUBSCRIBE_SECONDS = 1.0  # how long a WaitRun waits for the endings subscription
PATIENT_CAP_SECONDS = 2.0
# Each command: three quick retries, then the error (a reader's QueueUnavailable).
POOL_CONNECTIONS = 512  # readers blocking at once (WaitRun/StreamRunEvents) plus writers
COMMAND_RETRY = Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), retries=3)
# The sending task, streaming readers and subscriptions: until Redis is back.
PATIENT = Retry(ExponentialWithJitterBackoff(cap=PATIENT_CAP_SECONDS, base=0.05), retries=-1)

Entry = tuple[bytes, dict[bytes, bytes]]  # a stream entry as redis-py returns it: (id, fields)


def _events_key(prefix: str, run_id: str) -> str:
    """The stream holding a run's events."""
    return f"{prefix}:runs:events:{run_id}"


def _entry_id(sequence: int) -> str:
    return f"{sequence}-1"


def _superseded(error: Exception) -> bool:
    """Whether an XADD was refused because the stream holds that sequence (or a later one).

    Redis words it "The ID specified in XADD is equal or smaller than the target stream
    top item" (5.0 to 8.x); no error code tells it apart from other refusals.
    """
    return isinstance(error, ResponseError) and "equal or smaller" in str(error)


class RedisBus:
    """One Redis client and the run-event bus adapters that share its connection pool.

    Entering it starts the sink; `close()` (or leaving it) stops all four, the sink
    first (sending what is queued), then closes the connections.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        retention_seconds: float = 86_400.0,
        max_bytes: int = -1,
    ) -> None:
        # Readers hold a connection while they block (2 s slices): a bounded pool makes
        # the many-readers case wait for one instead of failing at redis-py's default cap.
        self.client = Redis.from_pool(
            BlockingConnectionPool.from_url(
                url,
                max_connections=POOL_CONNECTIONS,
                timeout=SOCKET_SECONDS,
                retry=COMMAND_RETRY,
                socket_connect_timeout=CONNECT_SECONDS,
                socket_timeout=SOCKET_SECONDS,
                health_check_interval=30,
            )
        )
        self.events = RedisRunEvents(
            self.client, prefix=prefix, retention_seconds=retention_seconds, max_bytes=max_bytes
        )
        self.log = RedisRunEventLog(self.client, prefix=prefix)
        self.cancel = RedisCancelBus(self.client, prefix=prefix)
        self.endings = RedisRunEndings(self.client, prefix=prefix)

    async def __aenter__(self) -> RedisBus:
        """Start the sink (the cancel bus starts once there is a run service to tell)."""
        await self.events.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the sink, the cancel bus and the endings, then close the connections."""
        await self.events.stop()
        await self.cancel.close()
        await self.endings.close()
        await self.client.aclose()


@dataclass(frozen=True, slots=True)
class _Write:
    """One event as the sink writes it."""

    event: RunEvent
    key: str
    data: bytes
    keep_from: int  # trim the run's entries before this sequence (0: trim nothing)


@dataclass(slots=True)
class _Written:
    """The entries a sink wrote of a run and kept within `max_bytes`, oldest first."""

    entries: deque[tuple[int, int]] = field(default_factory=deque)  # (sequence, size)
    size: int = 0

    def add(self, sequence: int, size: int, max_bytes: int) -> int:
        """Count an entry (not a repeat); the first sequence to keep, when some must go.

        0 while the run fits: entries before this sink's first (another executor's,
        before a takeover) stay until this sink's own outgrow `max_bytes`.
        """
        if not self.entries or sequence > self.entries[-1][0]:
            self.entries.append((sequence, size))
            self.size += size
        if self.size <= max_bytes or len(self.entries) == 1:
            return 0
        while len(self.entries) > 1 and self.size > max_bytes:
            self.size -= self.entries.popleft()[1]
        return self.entries[0][0]


class RedisRunEvents(EventOutbox):
    """The `RunEventSink` port on Redis Streams.

    `publish` only queues: one task writes the queue in order, so a run never waits
    on Redis. While Redis is away that task waits and the queue holds the events (up
    to `max_queued`; beyond, events are dropped, counted and logged), so a reader
    sees no gap. An event Redis refuses for another reason than holding it already
    (out of memory, say) is dropped, counted and logged.
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str,
        retention_seconds: float = 86_400.0,
        max_bytes: int = -1,
        flush_timeout: float = 5.0,
        max_queued: int = 100_000,
    ) -> None:
        super().__init__(max_queued, log)
        self._client = client
        self._prefix = prefix
        self._ended = f"{prefix}:runs:ended"
        self._retention_ms = max(1, round(retention_seconds * 1000))
        self._max_bytes = max_bytes
        self._flush_timeout = flush_timeout
        self._written: dict[str, _Written] = {}  # with max_bytes: of runs going on here
        self._away = False  # Redis did not answer the last write

    async def start(self) -> None:
        """Start writing queued events."""
        self._start_pump(self._send_forever())

    async def flush(self, run_id: str) -> None:
        """Wait until the run's queued events are written; give up after `flush_timeout`.

        Events still queued when this gives up (Redis is away) are written once it is back.
        """
        await self._sent_within(run_id, self._flush_timeout)
        self._written.pop(run_id, None)  # the run ended here, or went to another executor
        self._report_lost(run_id)

    async def _send_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # A batch ends at a flush marker: it resolves once what came before is written.
            while batch[-1][3] is None and len(batch) < SEND_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                events = [(e, a, v) for e, a, v, _ in batch if e is not None]
                if events:
                    await self._send(events)
                    self.unsent -= len(events)  # not when stopped mid-send: those are unsent
                marker = batch[-1][3]
                if marker is not None and not marker.done():
                    marker.set_result(None)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _prepared(self, event: RunEvent, agent_id: str, agent_version: int) -> _Write:
        data = stored_run_event(event, agent_id, agent_version).SerializeToString()
        return _Write(
            event, _events_key(self._prefix, event.run_id), data, self._keep_from(event, len(data))
        )

    def _keep_from(self, event: RunEvent, size: int) -> int:
        """The run's first sequence to keep once `event` is written, within `max_bytes`.

        Counts what this sink wrote of the run (a run's events come from the executor
        running it; after a takeover, the new one counts from its first event).
        """
        if self._max_bytes < 0:
            return 0
        keep_from = self._written.setdefault(event.run_id, _Written()).add(
            event.sequence, size, self._max_bytes
        )
        if event.terminal:
            del self._written[event.run_id]
        return keep_from

    async def _send(self, events: Sequence[tuple[RunEvent, str, int]]) -> None:
        """Write a batch, waiting while Redis is away; count and log what it refuses."""
        try:
            writes = [self._prepared(*queued) for queued in events]
            results = await PATIENT.call_with_retry(lambda: self._write(writes), self._held)
        except Exception:
            for event, _, _ in events:
                self._drop(event)
            log.exception("run events not published", extra={"events": len(events)})
            return
        if self._away:
            self._away = False
            log.info("run events written again: Redis is back")
        for w, result in zip(writes, results, strict=True):
            if isinstance(result, Exception) and not _superseded(result):
                self._drop(w.event)
                log.warning(
                    "run event refused",
                    extra={
                        "run_id": w.event.run_id,
                        "sequence": w.event.sequence,
                        "error": str(result),
                    },
                )
            else:
                self.published += 1

    async def _write(self, writes: Sequence[_Write]) -> list[Any]:
        """One transaction: the entries, then each stream's expiry, then the runs that ended.

        All or nothing, so no stream is left without its expiry; an entry Redis holds
        already is refused alone (the others are written).
        """
        async with self._client.pipeline(transaction=True) as pipe:
            for w in writes:
                pipe.xadd(
                    w.key,
                    {FIELD: w.data},
                    id=_entry_id(w.event.sequence),
                    minid=_entry_id(w.keep_from) if w.keep_from else None,
                    approximate=False,
                )
            for key in dict.fromkeys(w.key for w in writes):
                pipe.pexpire(key, self._retention_ms)
            for w in writes:
                if w.event.terminal:
                    pipe.publish(self._ended, w.event.run_id)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results[: len(writes)]

    async def _held(self, error: Exception) -> None:
        if not self._away:
            self._away = True
            log.warning("run events held: Redis unavailable", extra={"error": str(error)})


class RedisRunEventLog:
    """The `RunEventLog` port on the streams `RedisRunEvents` writes.

    `read` is XREAD from the sequence asked for: the stored entries, then (blocking,
    `BLOCK_MS` at a time) live ones, until the run's last event. Once reading,
    it waits through a Redis outage and resumes after the last entry it yielded.
    Decisions, as on JetStream:

    - Each sequence number is yielded once, increasing (Redis stores no repeat).
    - A gap (events lost: a full publisher queue, an event Redis refused, `max_bytes`
      trimming a run's first events) is logged and read across, never waited for.
    - A run with no stored event yet is waited for; the caller bounds the wait.
    - The read ends after the run's last event, also when that event is at or before
      `after` (a late reader of an ended run gets nothing and is done).
    """

    def __init__(self, client: Redis, *, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    async def last_sequence(self, run_id: str) -> int:
        """The sequence number of the run's last stored event (0 when none is stored).

        Raises:
            QueueUnavailable: Redis does not answer.
        """
        last = await self.last_event(run_id)
        return last.sequence if last is not None else 0

    async def last_event(self, run_id: str) -> RunEvent | None:
        """The run's last stored event (None when none is stored).

        Raises:
            QueueUnavailable: Redis does not answer, or the last entry is unreadable.
        """
        entry = await self._last_entry(run_id)
        if entry is None:
            return None
        try:
            return parse_run_event(entry[1][FIELD])
        except (KeyError, ValueError) as e:
            raise QueueUnavailable(f"run {run_id}'s last event is unreadable: {e!r}") from e

    async def _last_entry(self, run_id: str) -> Entry | None:
        try:
            entries: list[Entry] = await self._client.xrevrange(  # type: ignore[assignment]
                _events_key(self._prefix, run_id), count=1
            )
        except RedisError as e:
            raise QueueUnavailable(f"run events cannot be read: {e}") from e
        return entries[0] if entries else None

    async def read(self, run_id: str, after: int) -> AsyncGenerator[RunEvent]:
        """The run's events with sequence > `after`, in order, stored then live.

        Ends after the run's last event; waits (unbounded) for events until then.

        Raises:
            QueueUnavailable: Redis does not answer when the read starts, or refuses it.
        """
        key = _events_key(self._prefix, run_id)
        entry = await self._last_entry(run_id)
        stored = _decoded(key, entry) if entry is not None else None
        if stored is not None and stored.terminal and stored.sequence <= after:
            return
        # From the last stored entry when it is before `after`: an end at or before
        # `after` still comes through, and ends the read.
        cursor: str | bytes = _entry_id(min(after, stored.sequence if stored is not None else 0))
        last = after
        while True:
            read = partial(self._client.xread, {key: cursor}, count=READ_BATCH, block=BLOCK_MS)
            try:
                reply: list[tuple[bytes, list[Entry]]] = await PATIENT.call_with_retry(
                    read,  # type: ignore[arg-type]
                    _reader_waits,
                )
            except RedisError as e:
                raise QueueUnavailable(f"run events cannot be read: {e}") from e
            for _, entries in reply:  # [] when BLOCK_MS passed with nothing new
                for entry in entries:
                    cursor = entry[0]
                    event = _decoded(key, entry)
                    if event is None:
                        continue
                    if event.sequence > last:
                        if event.sequence > last + 1:
                            log.warning(
                                "run events missing",
                                extra={"run_id": run_id, "after": last, "next": event.sequence},
                            )
                        last = event.sequence
                        yield event
                    if event.terminal:
                        return


async def _reader_waits(error: Exception) -> None:
    log.debug("run event read waits for Redis", extra={"error": str(error)})


def _decoded(key: str, entry: Entry) -> RunEvent | None:
    """The run event in a stream entry (None, logged, when it cannot be read)."""
    entry_id, fields = entry
    try:
        return parse_run_event(fields[FIELD])
    except (KeyError, ValueError) as e:
        log.warning("run event unreadable", extra={"key": key, "entry": entry_id, "error": repr(e)})
        return None


class _Subscription:
    """A pub/sub channel heard in the background until `close`.

    redis-py subscribes again after a reconnect; messages published while Redis was
    away are not heard (both users have a backstop: the run store).
    """

    def __init__(
        self, client: Redis, channel: str, received: Callable[[bytes], None], *, what: str
    ) -> None:
        self._client = client
        self._channel = channel
        self._received = received
        self._what = what
        self._task: asyncio.Task[None] | None = None
        self._failing = False  # logged once per outage
        self.subscribed = asyncio.Event()  # set while Redis has confirmed the subscription

    def start(self) -> None:
        """Begin listening (returns at once; does nothing when listening already)."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name=f"subscribe-{self._what}")

    async def close(self) -> None:
        """Stop listening."""
        await cancel_and_wait(self._task)
        self._task = None

    async def _listen(self) -> None:
        try:
            async with self._client.pubsub() as pubsub:
                while True:
                    message = await PATIENT.call_with_retry(lambda: self._next(pubsub), self._lost)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self._failing = False
                        self.subscribed.set()
                    elif message["type"] == "message":
                        try:
                            self._received(message["data"])
                        except Exception:
                            log.exception("message not handled", extra={"channel": self._channel})
        finally:
            self.subscribed.clear()

    async def _next(self, pubsub: PubSub) -> dict[str, Any] | None:
        if not pubsub.subscribed:
            await pubsub.subscribe(self._channel)
        message: dict[str, Any] | None = await pubsub.get_message(timeout=None)
        return message

    async def _lost(self, error: Exception) -> None:
        self.subscribed.clear()
        if not self._failing:
            self._failing = True
            log.warning(
                "redis subscription failed, retrying",
                extra={"subscription": self._what, "channel": self._channel, "error": str(error)},
            )


class RedisCancelBus:
    """The `CancelBus` port over Redis pub/sub (`<prefix>:runs:cancel`)."""

    def __init__(self, client: Redis, *, prefix: str) -> None:
        self._client = client
        self._channel = f"{prefix}:runs:cancel"
        self._listening = _Subscription(client, self._channel, self._received, what="run-cancel")
        self.on_cancel: Callable[[str], bool] = lambda run_id: False

    async def start(self, on_cancel: Callable[[str], bool]) -> None:
        """Listen for cancel requests in the background; `on_cancel(run_id)` acts on them."""
        self.on_cancel = on_cancel
        self._listening.start()

    def _received(self, data: bytes) -> None:
        run_id = data.decode(errors="replace")
        if self.on_cancel(run_id):
            log.info("run cancelled on request", extra={"run_id": run_id})

    async def broadcast(self, run_id: str) -> None:
        """Tell every replica (the run store's flag covers a lost message)."""
        try:
            await self._client.publish(self._channel, run_id)
        except RedisError as e:
            log.warning("cancel request not broadcast", extra={"error": str(e)})

    async def close(self) -> None:
        """Stop listening."""
        await self._listening.close()


class RedisRunEndings:
    """The `RunEndings` port: run ids on `<prefix>:runs:ended`, published with each last event.

    One subscription serves every watch; the first watch opens it, `close` ends it.
    """

    def __init__(self, client: Redis, *, prefix: str) -> None:
        self._watchers: dict[str, list[asyncio.Event]] = {}
        self._listening = _Subscription(
            client, f"{prefix}:runs:ended", self._heard, what="run-endings"
        )

    @asynccontextmanager
    async def watch(self, run_id: str) -> AsyncIterator[asyncio.Event]:
        """Set the event when the run's `run_completed` or `run_failed` is written."""
        ended = asyncio.Event()
        watchers = self._watchers.setdefault(run_id, [])
        watchers.append(ended)
        try:
            self._listening.start()
            # Redis has the subscription once it confirmed it: an end published after
            # this is heard (one that came before is in the record).
            if not await wait_event(self._listening.subscribed, SUBSCRIBE_SECONDS):
                # The waiter re-reads the record periodically: slower, still correct.
                log.debug("run end not watched", extra={"run_id": run_id})
            yield ended
        finally:
            watchers.remove(ended)
            if not watchers and self._watchers.get(run_id) is watchers:
                del self._watchers[run_id]

    def _heard(self, data: bytes) -> None:
        for ended in self._watchers.get(data.decode(errors="replace"), ()):
            ended.set()

    async def close(self) -> None:
        """Stop listening."""
        await self._listening.close()
