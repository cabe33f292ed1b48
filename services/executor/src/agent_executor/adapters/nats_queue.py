"""Adapter: the run queue on JetStream (the `RunQueue` port).

A queued run is one message on `<prefix>.runs.queue` whose payload is the run id
(UTF-8), stored in the `<PREFIX>_RUN_QUEUE` stream: work-queue retention (a
message goes once acknowledged), file storage, `Nats-Msg-Id = <run id>` so a run
submitted again within the duplicate window (10 min) is stored once. The stream
is bounded by its `StreamLimits`: when it is full (`max_bytes`) new runs are
refused (`DiscardPolicy.NEW`) rather than queued ones dropped, and a run still
queued after `max_age_seconds` is removed unprocessed.

Every executor replica pulls from one durable pull consumer, `executors`:
explicit acknowledgement, redelivery `ack_wait` seconds after the last sign of
life, and `max_deliver = max_attempts + 1` — the application dead-letters a run
delivered more than `max_attempts` times, and the extra delivery is the backstop
after which JetStream stops delivering it anyway. A queue whose application counts
attempts itself passes `max_deliver=-1` (the run queue: the run store counts the
times a run was started, and a run waiting for its session's turn is delivered
again and again without starting). Dead letters go to
`<prefix>.runs.dead` in `<PREFIX>_RUN_DEAD_LETTERS` (limits retention within its own
`StreamLimits`; the oldest go first) as JSON `{"run_id", "reason", "attempt"}`.

Another queue of the same shape (the webhook queue) takes its own `name`: streams
`<PREFIX>_<NAME>_QUEUE` and `<PREFIX>_<NAME>_DEAD_LETTERS`, subjects under
`<prefix>.<name>s`.

The streams and the consumer are declared on first use and again after every
reconnect, so a NATS that comes back with an empty store gets them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsConnection
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
)

from agent_executor.adapters.queue_signals import LostSignals
from agent_executor.application.ports import QueueDelivery, QueueStats, QueueUnavailable
from agentrt_kit.nats import Names, NatsClient, StreamLimits, ensure_stream, publish

log = logging.getLogger(__name__)
T = TypeVar("T")

CONSUMER = "executors"
REQUEST_TIMEOUT = 5.0  # longest a submit, an acknowledgement or a stats call waits on NATS
DUPLICATE_WINDOW = 600.0
# More than every replica ever holds at once: their free slots bound what they pull.
MAX_ACK_PENDING = 100_000
MIN_FETCH_SECONDS = 0.01  # nats-py refuses a fetch without a positive timeout
NATS_ERRORS = (nats.errors.Error, OSError, TimeoutError)
# What NATS says when the stream or the consumer is missing (a NATS with an empty store).
MISSING = (
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.NotFoundError,
    nats.js.errors.ServiceUnavailableError,
)


class JetStreamRunQueue:
    """The `RunQueue` port on a JetStream work-queue stream and one durable pull consumer.

    Concurrent `pull` calls take turns (they share one subscription). Nothing
    waits on NATS longer than `REQUEST_TIMEOUT` (or a pull's own timeout).
    """

    backend = "nats"

    def __init__(
        self,
        client: NatsClient,
        names: Names,
        *,
        ack_wait: float = 30.0,
        max_attempts: int = 5,
        max_deliver: int | None = None,
        limits: StreamLimits,
        dead_letter_limits: StreamLimits,
        name: str = "run",
    ) -> None:
        self._client = client
        self.ack_wait = ack_wait
        self.max_attempts = max_attempts
        self._max_deliver = max_attempts + 1 if max_deliver is None else max_deliver
        self.stream = names.stream(f"{name}_queue")
        self.dead_letter_stream = names.stream(f"{name}_dead_letters")
        self._subject = names.subject(f"{name}s", "queue")
        self._dead_subject = names.subject(f"{name}s", "dead")
        self._streams = (
            limits.stream_config(
                name=self.stream,
                subjects=[self._subject],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                discard=DiscardPolicy.NEW,  # a full queue refuses new runs, keeps queued ones
                duplicate_window=DUPLICATE_WINDOW,
            ),
            dead_letter_limits.stream_config(
                name=self.dead_letter_stream,
                subjects=[self._dead_subject],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                discard=DiscardPolicy.OLD,
                duplicate_window=DUPLICATE_WINDOW,
            ),
        )
        self._declared_on: NatsConnection | None = None  # where the streams were declared
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._subscription_on: NatsConnection | None = None
        self._pulling = asyncio.Lock()
        self._closed = False
        self._lost = LostSignals(log)  # a lost signal warns once per connection

    async def start(self) -> None:
        """Declare the streams and the consumer now if NATS is up, and after every reconnect."""
        self._client.on_reconnect(self._forget)
        with contextlib.suppress(QueueUnavailable):
            await self._ready()

    async def close(self) -> None:
        """Stop pulling; runs delivered and not acknowledged are delivered again later."""
        self._closed = True
        if self._subscription is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await self._subscription.unsubscribe()
            self._subscription = None

    def _forget(self) -> None:
        """After a reconnect: the server may have lost the streams, declare them again."""
        self._declared_on = None
        self._lost.reset()

    async def _ready(self) -> None:
        nc = self._client.nc
        if self._closed or not nc.is_connected:
            raise QueueUnavailable("NATS is not connected")
        if self._declared_on is nc:
            return
        try:
            await self._declare()
        except NATS_ERRORS as e:
            raise QueueUnavailable(f"run queue not declared: {e}") from e
        self._declared_on = nc

    async def _declare(self) -> None:
        js = self._client.js
        for config in self._streams:
            await ensure_stream(js, config)
        # Creates the consumer, or updates it to this configuration (server 2.10+).
        await js.add_consumer(
            self.stream,
            ConsumerConfig(
                name=CONSUMER,
                durable_name=CONSUMER,
                filter_subject=self._subject,
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait,
                max_deliver=self._max_deliver,
                max_ack_pending=MAX_ACK_PENDING,
            ),
            timeout=REQUEST_TIMEOUT,
        )

    async def _call(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        """Run `operation` on declared streams; declare them again once if NATS lost them."""
        for last in (False, True):
            await self._ready()
            try:
                return await operation()
            except NATS_ERRORS as e:
                # Whatever went wrong, declaring again on the next call is cheap and heals
                # a lost stream or consumer; a missing one is declared again right away.
                self._declared_on = None
                if last or not isinstance(e, MISSING):
                    raise QueueUnavailable(f"{what}: {e!r}") from e
        raise AssertionError("unreachable")

    async def submit(self, run_id: str) -> None:
        """Queue a run (stored once per run id within the duplicate window).

        Raises:
            QueueUnavailable: NATS did not confirm it within `REQUEST_TIMEOUT`, or
                the stream is full.
        """
        await self._call(
            lambda: publish(
                self._client.js,
                self._subject,
                run_id.encode(),
                msg_id=run_id,
                timeout=REQUEST_TIMEOUT,
            ),
            "run not queued",
        )

    async def pull(self, max_count: int, timeout: float) -> Sequence[QueueDelivery]:
        """Up to `max_count` runs, returned as soon as one is there ([] after `timeout`).

        Raises:
            QueueUnavailable: NATS is not connected (or went away while waiting).
        """
        async with self._pulling:
            messages = await self._call(lambda: self._fetch(max_count, timeout), "cannot pull")
        return [JetStreamDelivery(m, self._client, self._lost) for m in messages]

    async def _fetch(self, max_count: int, timeout: float) -> list[Msg]:
        nc = self._client.nc
        if self._subscription is None or self._subscription_on is not nc:
            # One inbox per connection; nats-py subscribes it again after a reconnect.
            self._subscription = await self._client.js.pull_subscribe_bind(
                consumer=CONSUMER, stream=self.stream
            )
            self._subscription_on = nc
        try:
            # nats-py 2.x asks for `max_count` with no_wait, then waits for a first one:
            # it returns what is there as soon as anything is, not a full batch.
            return await self._subscription.fetch(
                max_count, timeout=max(timeout, MIN_FETCH_SECONDS)
            )
        except TimeoutError:  # nats' TimeoutError and FetchTimeoutError are both
            if not self._client.connected:
                raise QueueUnavailable("NATS went away while pulling") from None
            return []

    async def dead_letter(self, delivery: QueueDelivery, reason: str) -> None:
        """Record the run on the dead-letter subject, then terminate its delivery.

        Raises:
            QueueUnavailable: the dead letter or the termination was not confirmed;
                the run stays queued and is delivered again.
        """
        if not isinstance(delivery, JetStreamDelivery):
            raise TypeError(f"not a delivery of this queue: {delivery!r}")
        record = {"run_id": delivery.run_id, "reason": reason, "attempt": delivery.attempt}
        await self._call(
            lambda: publish(
                self._client.js,
                self._dead_subject,
                json.dumps(record).encode(),
                msg_id=delivery.run_id,
                timeout=REQUEST_TIMEOUT,
            ),
            "dead letter not recorded",
        )
        await delivery.settle(Msg.Ack.Term)

    async def stats(self) -> QueueStats:
        """Counts from the stream and consumer info (three or four requests).

        Raises:
            QueueUnavailable: NATS cannot be asked now.
        """
        return await self._call(self._stats, "no queue stats")

    async def _stats(self) -> QueueStats:
        js = self._client.js
        queue = await js.stream_info(self.stream)
        consumer = await js.consumer_info(self.stream, CONSUMER, timeout=REQUEST_TIMEOUT)
        dead = await js.stream_info(self.dead_letter_stream)
        pending = consumer.num_pending or 0
        oldest = 0.0
        if pending:
            # Runs past the consumer's last delivered sequence await their first delivery.
            after = consumer.delivered.stream_seq if consumer.delivered else 0
            with contextlib.suppress(nats.js.errors.NotFoundError):  # acknowledged meanwhile
                first = await js.get_msg(
                    self.stream, seq=after + 1, subject=self._subject, next=True
                )
                if first.time is not None:
                    oldest = max(0.0, (datetime.now(UTC) - first.time).total_seconds())
        return QueueStats(
            depth=queue.state.messages,
            pending=pending,
            oldest_age_seconds=oldest,
            redelivered=consumer.num_redelivered or 0,
            dead_letters=dead.state.messages,
        )


class JetStreamDelivery:
    """One delivery of a queued run (`QueueDelivery`).

    `ack` waits for the server's confirmation — one round trip per run (1.3 ms
    against a local nats-server), so the executor knows the run will not come
    back. `retry` and `extend` are fire and forget and never raise: when they are
    lost, the run is delivered again after `ack_wait`, which an at-least-once
    queue does anyway.
    """

    def __init__(
        self, msg: Msg, client: NatsClient, lost: Callable[[str, str, BaseException], None]
    ) -> None:
        self._msg = msg
        self._client = client
        self._lost = lost
        self.run_id = msg.data.decode(errors="replace")
        self.attempt = msg.metadata.num_delivered
        self._settled = False

    def __repr__(self) -> str:
        return f"JetStreamDelivery(run_id={self.run_id!r}, attempt={self.attempt})"

    async def ack(self) -> None:
        """Acknowledge, confirmed by the server (a repeat does nothing).

        Raises:
            QueueUnavailable: not confirmed within `REQUEST_TIMEOUT`; while NATS
                is reconnecting the acknowledgement is still sent once it is back.
        """
        await self.settle(Msg.Ack.Ack)

    async def retry(self, delay: float) -> None:
        """Deliver again after `delay` seconds (a negative acknowledgement with a delay)."""
        if self._settled:
            return
        try:
            await self._msg.nak(delay=delay)
        except NATS_ERRORS as e:
            self._lost("retry", self.run_id, e)
            return
        self._settled = True

    async def extend(self) -> None:
        """Restart the `ack_wait` timer (a work-in-progress acknowledgement)."""
        if self._settled:
            return
        try:
            await self._msg.in_progress()
        except NATS_ERRORS as e:
            self._lost("extension", self.run_id, e)

    async def settle(self, verdict: bytes) -> None:
        """Send `+ACK` or `+TERM` and wait for the server to confirm it."""
        if self._settled:
            return
        nc = self._client.nc
        if not nc.is_connected:
            # nats-py buffers it while reconnecting: it may still land and spare a redelivery.
            with contextlib.suppress(*NATS_ERRORS):
                await nc.publish(self._msg.reply, verdict)
            raise QueueUnavailable(f"{verdict.decode()} of run {self.run_id} not confirmed")
        try:
            await nc.request(self._msg.reply, verdict, timeout=REQUEST_TIMEOUT)
        except NATS_ERRORS as e:
            raise QueueUnavailable(f"{verdict.decode()} of run {self.run_id}: {e!r}") from e
        self._settled = True
