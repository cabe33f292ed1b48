"""Adapter: run events on JetStream, and cancel requests between executor replicas.

Run events go to `<prefix>.runs.events.<run_id>` in the `<PREFIX>_RUN_EVENTS`
stream (limits retention, `retention_seconds` window) as `agentrt.events.v1.RunEvent`,
with `Nats-Msg-Id = <run_id>:<sequence>` so a repeat is stored once. They are
queued by the run and sent in order by one task. Only a run's last event asks for a
JetStream acknowledgement (awaited after the run ends, `flush`): NATS handles one
connection's messages in order, so it also confirms the events before it, and a run
pays for one acknowledgement instead of one per event. Publication never holds a
run back: while NATS is down or not acknowledging, events are dropped and counted
in the log — the run record in the database stays the source of truth.

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
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig

from agent_executor.adapters.proto_mapping import stream_event, timestamp
from agent_executor.domain.runs import RunEvent
from agentrt.events.v1 import run_events_pb2
from agentrt_kit.concurrency import cancel_and_wait
from agentrt_kit.nats import (
    MSG_ID_HEADER,
    BackgroundSubscription,
    Names,
    NatsClient,
    ensure_stream,
)

log = logging.getLogger(__name__)
FLUSH_SECONDS = 1  # how long a WaitRun waits for NATS to confirm its subscription

# (event, agent id, agent version, flush marker): a marker instead of an event
# resolves once everything queued before it has been sent.
Queued = tuple[RunEvent | None, str, int, "asyncio.Future[None] | None"]


class JetStreamRunEvents:
    """The `RunEventSink` port on JetStream.

    `publish` only queues: one pump task sends the queue in order, so a run never
    waits on NATS (nor can NATS client internals swallow a run's cancellation).
    """

    def __init__(
        self,
        client: NatsClient,
        names: Names,
        *,
        retention_seconds: float = 86_400.0,
        ack_timeout: float = 5.0,
        max_queued: int = 100_000,
    ) -> None:
        self._client = client
        self._names = names
        self.stream = names.stream("run_events")
        self._retention = retention_seconds
        self._ack_timeout = ack_timeout
        self._queue: asyncio.Queue[Queued] = asyncio.Queue(max_queued)
        self._ready_connection: Any = None
        self._retry_at = 0.0
        self._acks: dict[str, list[asyncio.Future[Any]]] = {}
        self._lost: dict[str, int] = {}
        self._sent: dict[str, int] = {}  # events of a run sent, awaiting its acknowledgement
        self._pump: asyncio.Task[None] | None = None
        self.published = 0

    async def start(self) -> None:
        """Start sending queued events."""
        self._pump = asyncio.create_task(self._send_forever(), name="run-events")

    async def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (for at most `timeout` seconds), then stop."""
        if self._pump is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        await cancel_and_wait(self._pump)

    def publish(self, event: RunEvent, agent_id: str, agent_version: int) -> None:
        """Queue an event (dropped and counted when the queue is full)."""
        try:
            self._queue.put_nowait((event, agent_id, agent_version, None))
        except asyncio.QueueFull:
            self._lost[event.run_id] = self._lost.get(event.run_id, 0) + 1

    async def flush(self, run_id: str) -> None:
        """Wait until the run's events are stored; give up after `ack_timeout`.

        Storage is confirmed by the acknowledgement of the run's last event; before the
        run has ended, this only waits until its events have been handed to NATS.
        """
        marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((None, run_id, 0, marker))
            await asyncio.wait_for(asyncio.shield(marker), self._ack_timeout)
        except (asyncio.QueueFull, TimeoutError):
            pass
        acks = self._acks.pop(run_id, [])
        sent = self._sent.pop(run_id, 0)
        lost = self._lost.pop(run_id, 0)
        if acks:
            done, pending = await asyncio.wait(acks, timeout=self._ack_timeout)
            for future in pending:
                future.cancel()  # frees the publisher's slot
            if pending or any(f.cancelled() or f.exception() for f in done):
                lost += sent  # the acknowledgement vouched for every event of the run
        if lost:
            log.warning("run events lost", extra={"run_id": run_id, "lost": lost})

    async def _send_forever(self) -> None:
        while True:
            event, agent_id, version, marker = await self._queue.get()
            try:
                if marker is not None:
                    if not marker.done():
                        marker.set_result(None)
                elif event is not None:
                    await self._send(event, agent_id, version)
            except Exception:
                log.exception("run event not published")
            finally:
                self._queue.task_done()

    async def _ready(self) -> bool:
        """Whether the stream is declared on the current connection (declares it if not)."""
        nc = self._client.nc
        if not nc.is_connected:
            return False
        if self._ready_connection is nc:
            return True
        if time.monotonic() < self._retry_at:
            return False
        try:
            await ensure_stream(
                self._client.js,
                StreamConfig(
                    name=self.stream,
                    subjects=[self._names.subject("runs", "events", ">")],
                    max_age=self._retention,
                    storage=StorageType.FILE,
                    duplicate_window=120.0,
                ),
            )
        except (nats.errors.Error, OSError, TimeoutError) as e:
            log.warning("run event stream unavailable", extra={"error": str(e)})
            self._retry_at = time.monotonic() + 1.0
            return False
        self._ready_connection = nc
        return True

    async def _send(self, event: RunEvent, agent_id: str, agent_version: int) -> None:
        if not await self._ready():
            self._lost[event.run_id] = self._lost.get(event.run_id, 0) + 1
            return
        message = run_events_pb2.RunEvent(
            event_id=f"{event.run_id}:{event.sequence}",
            run_id=event.run_id,
            sequence=event.sequence,
            occurred_at=timestamp(event.occurred_at),
            type=event.body.type,
            agent_id=agent_id,
            agent_version=agent_version,
            event=stream_event(event),
        )
        subject = self._names.subject("runs", "events", event.run_id)
        data = message.SerializeToString()
        headers = {MSG_ID_HEADER: message.event_id}
        try:
            if event.terminal:
                # One acknowledgement per run: the server handles a connection's messages
                # in order, so the last event's ack also covers the ones before it.
                ack = await self._client.js.publish_async(
                    subject, data, wait_stall=1.0, headers=headers
                )
                self._acks.setdefault(event.run_id, []).append(ack)
            else:
                await self._client.nc.publish(subject, data, headers=headers)
            self._sent[event.run_id] = self._sent.get(event.run_id, 0) + 1
        except (nats.errors.Error, OSError) as e:
            lost = self._lost[event.run_id] = self._lost.get(event.run_id, 0) + 1
            if lost == 1:
                log.warning("run event not published", extra={"error": str(e)})
            return
        self.published += 1


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
