"""Adapter: run events on JetStream, and cancel requests between executor replicas.

Run events go to `<prefix>.runs.events.<run_id>` in the `<PREFIX>_RUN_EVENTS`
stream (limits retention within its `StreamLimits`; the oldest go first) as
`agentrt.events.v1.RunEvent`, with `Nats-Msg-Id = <run_id>:<sequence>` so a
repeat is stored once. They are queued by the run and sent in order by one task.
Only a run's last event asks for a JetStream acknowledgement (awaited after the
run ends, `flush`): NATS handles one connection's messages in order, so it also
confirms the events before it, and a run pays for one acknowledgement instead of
one per event. Publication never holds a run back: while NATS is away the sending
task waits and the queue holds the events (up to `max_queued`; beyond, events are
dropped, counted and logged), and once NATS is back they are sent in order,
after the unconfirmed ones the old connection may have lost: sent events are kept
until an acknowledgement covers them, and sent again after every reconnect.

`JetStreamRunEventLog` reads a run's stored events back, then its live ones, for
streams that resume after a given sequence from any replica.

Cancel requests are core NATS messages on `<prefix>.runs.cancel` (payload: the
run id) that every replica hears; the one running the run cancels it.

A waiting WaitRun hears a run end by subscribing (core NATS, no consumer) to
that run's event subject for as long as it waits: the last event, published by
whichever replica runs the run, is the hint to re-read the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType

from agent_executor.adapters.event_outbox import EventOutbox
from agent_executor.adapters.proto_mapping import parse_run_event, stored_run_event
from agent_executor.application.ports import QueueUnavailable
from agent_executor.domain.runs import RunEvent
from agentrt.events.v1 import run_events_pb2
from agentrt_kit.nats import (
    MSG_ID_HEADER,
    BackgroundSubscription,
    Names,
    NatsClient,
    StreamLimits,
    ensure_stream,
)

log = logging.getLogger(__name__)
FLUSH_SECONDS = 1  # how long a WaitRun waits for NATS to confirm its subscription
NATS_POLL_SECONDS = 0.1  # how often the sending task looks whether NATS is back
# A read's consumer is gone this long after its reader: each holds ~40 KiB of the server's
# memory (1,000 cost 41 MiB of RSS, measured), and the server's 5 s default kept five
# seconds' worth of finished reads alive (110 consumers at 20 reads/s; 20 with 1 s).
CONSUMER_INACTIVE_SECONDS = 1.0

# Queued (event_outbox): an entry with neither event nor marker (queued after a
# reconnect) has the pump send again what the old connection may have lost.
Sent = tuple[int, str, bytes, dict[str, str]]  # (send number, subject, data, headers)


class JetStreamRunEvents(EventOutbox):
    """The `RunEventSink` port on JetStream.

    `publish` only queues: one pump task sends the queue in order, so a run never
    waits on NATS (nor can NATS client internals swallow a run's cancellation).
    While NATS is away the pump waits, so events are held rather than lost: a
    reader of the stream sees no gap. Only a full queue drops events.

    A connection can die with events written but unread by the server. So sent
    events are kept until an acknowledgement covers them (up to `max_queued`), and
    sent again, in order, after a reconnect: JetStream drops the repeats of those
    it had stored (`Nats-Msg-Id`, within its two-minute duplicate window; after a
    longer outage a repeat is stored again, and readers skip it).
    """

    def __init__(
        self,
        client: NatsClient,
        names: Names,
        *,
        limits: StreamLimits,
        ack_timeout: float = 5.0,
        max_queued: int = 100_000,
    ) -> None:
        super().__init__(max_queued, log)
        self._client = client
        self._names = names
        self.stream = names.stream("run_events")
        self._config = limits.stream_config(
            name=self.stream,
            subjects=[names.subject("runs", "events", ">")],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            duplicate_window=120.0,
        )
        self._ack_timeout = ack_timeout
        self._ready_on: tuple[Any, int] | None = None  # (connection, reconnects) declared on
        self._retry_at = 0.0
        self._acks: dict[str, asyncio.Future[Any]] = {}  # of each run's last event, until settled
        self._unconfirmed: deque[Sent] = deque(maxlen=max_queued)
        self._sends = 0

    async def start(self) -> None:
        """Start sending queued events."""
        self._client.on_reconnect(self._reconnected)
        self._start_pump(self._send_forever())

    def _reconnected(self) -> None:
        # Wakes an idle pump: a run's last event lost with the old connection must not
        # wait for the next run's first event to be sent again.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait((None, "", 0, None))

    async def flush(self, run_id: str) -> None:
        """Wait until the run's events are stored; give up after twice `ack_timeout`.

        Waits up to `ack_timeout` for the events to be handed to NATS, then (once the
        run has ended) up to `ack_timeout` for the acknowledgement of its last event,
        which confirms them all. Events still queued when this gives up (NATS is away)
        are sent once NATS is back; an acknowledgement that does not come is logged.
        """
        sent = await self._sent_within(run_id, self._ack_timeout)
        if sent and (ack := self._acks.get(run_id)) is not None:
            await asyncio.wait([ack])  # settled within ack_timeout by `_settle`'s timer
        self._report_lost(run_id)

    async def _send_forever(self) -> None:
        while True:
            event, agent_id, version, marker = await self._queue.get()
            try:
                if marker is not None:
                    if not marker.done():
                        marker.set_result(None)
                elif event is not None:
                    try:
                        await self._send(event, agent_id, version)
                    except Exception:
                        log.exception("run event not published")
                    self.unsent -= 1  # not when stopped mid-send: that one is unsent
                else:
                    await self._ready()
            finally:
                self._queue.task_done()

    async def _ready(self) -> bool:
        """Whether the stream is declared on the current connection (declares it if not).

        Declared again after every reconnect (the server may have come back without
        it), and then the unconfirmed events are sent again.
        """
        nc = self._client.nc
        if not nc.is_connected:
            return False
        connection = (nc, nc.stats["reconnects"])
        if self._ready_on == connection:
            return True
        if time.monotonic() < self._retry_at:
            return False
        try:
            await ensure_stream(self._client.js, self._config)
        except (nats.errors.Error, OSError, TimeoutError) as e:
            log.warning("run event stream unavailable", extra={"error": str(e)})
            self._retry_at = time.monotonic() + 1.0
            return False
        try:
            for _, subject, data, headers in list(self._unconfirmed):
                await self._client.nc.publish(subject, data, headers=headers)
        except (nats.errors.Error, OSError) as e:
            log.warning("run events not sent again", extra={"error": str(e)})
            return False
        if self._unconfirmed:
            log.info("run events sent again", extra={"events": len(self._unconfirmed)})
        self._ready_on = connection
        return True

    async def _send(self, event: RunEvent, agent_id: str, agent_version: int) -> None:
        """Send one event, waiting while NATS is away; drop it only if NATS refuses it."""
        message = stored_run_event(event, agent_id, agent_version)
        subject = self._names.subject("runs", "events", event.run_id)
        data = message.SerializeToString()
        headers = {MSG_ID_HEADER: message.event_id}
        while True:
            if not await self._ready():
                await asyncio.sleep(NATS_POLL_SECONDS)  # NATS is away: hold the event
                continue
            number = self._sends + 1
            try:
                if event.terminal:
                    # One acknowledgement per run: the server handles a connection's messages
                    # in order, so the last event's ack also covers the ones before it.
                    ack = await self._client.js.publish_async(
                        subject, data, wait_stall=self._ack_timeout, headers=headers
                    )
                    self._settle(event, ack, number)
                else:
                    await self._client.nc.publish(subject, data, headers=headers)
            except nats.js.errors.TooManyStalledMsgsError:
                continue  # acknowledgements are settled within ack_timeout: room comes
            except (nats.errors.Error, OSError) as e:
                if self._client.connected:
                    # NATS is up and refuses this message (too large?): retrying cannot help.
                    self.dropped += 1
                    self._lost[event.run_id] = self._lost.get(event.run_id, 0) + 1
                    log.warning(
                        "run event refused",
                        extra={"run_id": event.run_id, "sequence": event.sequence, "error": str(e)},
                    )
                    return
                continue  # NATS went away after the check: send it when it is back
            self._sends = number
            self._unconfirmed.append((number, subject, data, headers))
            self.published += 1
            return

    def _settle(self, event: RunEvent, ack: asyncio.Future[Any], number: int) -> None:
        """Give the acknowledgement of a run's last event `ack_timeout`, then act on it.

        An acknowledgement confirms send `number` and every send before it (each of
        those was sent, or sent again, on the same connection before it).
        """
        run_id = event.run_id
        self._acks[run_id] = ack
        timer = asyncio.get_running_loop().call_later(self._ack_timeout, ack.cancel)

        def settled(future: asyncio.Future[Any]) -> None:
            timer.cancel()
            if self._acks.get(run_id) is future:
                del self._acks[run_id]
            error = "no acknowledgement in time" if future.cancelled() else future.exception()
            if error is None:
                while self._unconfirmed and self._unconfirmed[0][0] <= number:
                    self._unconfirmed.popleft()
            else:
                # Not necessarily lost (a slow server may still store them): unconfirmed.
                log.warning(
                    "run events not confirmed",
                    extra={"run_id": run_id, "up_to": event.sequence, "error": str(error)},
                )

        ack.add_done_callback(settled)


class JetStreamRunEventLog:
    """The `RunEventLog` port on the run event stream `JetStreamRunEvents` writes.

    `read` is an ordered consumer (ephemeral, in memory on the server, filtered on
    the run's subject): the stored events, then live ones as they are stored. The
    nats-py ordered consumer recreates itself from the last stream sequence seen
    when a heartbeat is missed or a delivery skipped (NATS restarted), so a read
    outlives a NATS outage. Decisions:

    - Repeats (an old executor's late copy, a consumer replay) are skipped: each
      sequence number is yielded once, increasing.
    - A gap (a sequence above the last one yielded + 1) means events were lost (a
      full publisher queue, a message NATS refused, the retention window or
      `max_bytes` taking a run's first events): nothing will fill it, so the next
      event is yielded anyway and the gap logged. Sequence numbers still increase.
    - A run with no stored event yet (not started, or the stream not created yet)
      is waited for: the caller bounds the wait (a deadline, or closing the iterator).
    - The read ends after the run's last event, also when that event is at or
      before `after` (a late reader of an ended run gets nothing and is done).
    """

    def __init__(
        self,
        client: NatsClient,
        names: Names,
        *,
        heartbeat_seconds: float = 2.0,
        stream_poll_seconds: float = 0.5,
    ) -> None:
        self._client = client
        self._names = names
        self.stream = names.stream("run_events")
        self._heartbeat = heartbeat_seconds
        self._stream_poll = stream_poll_seconds

    def _subject(self, run_id: str) -> str:
        return self._names.subject("runs", "events", run_id)

    async def last_sequence(self, run_id: str) -> int:
        """The sequence number of the run's last stored event (0 when none is stored).

        Raises:
            QueueUnavailable: NATS is not connected or does not answer.
        """
        last = await self.last_event(run_id)
        return last.sequence if last is not None else 0

    async def last_event(self, run_id: str) -> RunEvent | None:
        """The run's last stored event (None when none is stored).

        Raises:
            QueueUnavailable: NATS is not connected or does not answer.
        """
        if not self._client.connected:
            raise QueueUnavailable("NATS is not connected")
        try:
            message = await self._client.js.get_last_msg(self.stream, self._subject(run_id))
        except nats.js.errors.NotFoundError:
            return None  # no event of the run stored (or no stream yet)
        except (nats.errors.Error, OSError, TimeoutError) as e:
            raise QueueUnavailable(f"run events cannot be read: {e}") from e
        try:
            return parse_run_event(message.data or b"")
        except ValueError as e:
            raise QueueUnavailable(f"run {run_id}'s last event is unreadable: {e}") from e

    async def read(self, run_id: str, after: int) -> AsyncGenerator[RunEvent]:
        """The run's events with sequence > `after`, in order, stored then live.

        Ends after the run's last event; waits (unbounded) for events until then.

        Raises:
            QueueUnavailable: NATS is not connected when the read starts, or the
                connection is closed for good while it waits.
        """
        subscription = await self._subscribe(self._subject(run_id))
        last = after
        try:
            while True:
                try:
                    msg = await subscription.next_msg(timeout=None)
                except nats.errors.ConnectionClosedError as e:
                    raise QueueUnavailable("NATS connection closed") from e
                event = _decoded(msg)
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
        finally:
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()

    async def _subscribe(self, subject: str) -> JetStreamContext.PushSubscription:
        """An ordered consumer of `subject` from its first stored message."""
        while True:
            if not self._client.connected:
                raise QueueUnavailable("NATS is not connected")
            try:
                return await self._client.js.subscribe(
                    subject,
                    stream=self.stream,
                    ordered_consumer=True,
                    idle_heartbeat=self._heartbeat,
                    inactive_threshold=CONSUMER_INACTIVE_SECONDS,
                )
            except nats.js.errors.NotFoundError:
                # No stream yet (no executor has published since NATS was set up): wait.
                await asyncio.sleep(self._stream_poll)
            except (nats.errors.Error, OSError, TimeoutError) as e:
                raise QueueUnavailable(f"run events cannot be read: {e}") from e


def _decoded(msg: Msg) -> RunEvent | None:
    """The run event in a stored message (None, logged, when it cannot be read)."""
    try:
        return parse_run_event(msg.data)
    except ValueError as e:
        log.warning("run event unreadable", extra={"subject": msg.subject, "error": str(e)})
        return None


class NatsCancelBus:
    """The `CancelBus` port over core NATS."""

    def __init__(self, client: NatsClient, names: Names) -> None:
        self._client = client
        self._subject = names.subject("runs", "cancel")
        self._listening = BackgroundSubscription(
            client, self._subject, self._received, what="run-cancel"
        )
        self.on_cancel: Callable[[str], bool] = lambda run_id: False

    async def start(self, on_cancel: Callable[[str], bool]) -> None:
        """Listen for cancel requests in the background; `on_cancel(run_id)` acts on them."""
        self.on_cancel = on_cancel
        self._listening.start()

    async def _received(self, msg: Msg) -> None:
        run_id = msg.data.decode(errors="replace")
        if self.on_cancel(run_id):
            log.info("run cancelled on request", extra={"run_id": run_id})

    async def broadcast(self, run_id: str) -> None:
        """Tell every replica (the run store's flag covers a lost message)."""
        try:
            await self._client.nc.publish(self._subject, run_id.encode())
        except (nats.errors.Error, OSError) as e:
            log.warning("cancel request not broadcast", extra={"error": str(e)})

    async def close(self) -> None:
        """Stop listening."""
        await self._listening.close()


TERMINAL_EVENTS = frozenset({"run_completed", "run_failed"})


class NatsRunEndings:
    """The `RunEndings` port: a run's last event on its JetStream subject, heard live."""

    def __init__(self, client: NatsClient, names: Names) -> None:
        self._client = client
        self._names = names

    @asynccontextmanager
    async def watch(self, run_id: str) -> AsyncIterator[asyncio.Event]:
        """Set the event when the run's `run_completed` or `run_failed` is published."""
        ended = asyncio.Event()

        async def heard(msg: Msg) -> None:
            event = run_events_pb2.RunEvent()
            with contextlib.suppress(DecodeError):
                event.ParseFromString(msg.data)
                if event.event.WhichOneof("event") in TERMINAL_EVENTS:
                    ended.set()

        subscription = None
        if self._client.connected:
            try:
                subscription = await self._client.nc.subscribe(
                    self._names.subject("runs", "events", run_id), cb=heard
                )
                # The server has the subscription once a round trip is done: an end
                # published after this is heard (one that came before is in the record).
                await self._client.nc.flush(timeout=FLUSH_SECONDS)
            except (nats.errors.Error, OSError) as e:
                # The waiter re-reads the record periodically: slower, still correct.
                log.debug("run end not watched", extra={"run_id": run_id, "error": str(e)})
        try:
            yield ended
        finally:
            if subscription is not None:
                with contextlib.suppress(nats.errors.Error):
                    await subscription.unsubscribe()
