"""Adapter: the run queue on RabbitMQ (the `RunQueue` port), on aio-pika.

A queued run is one persistent message whose body is the run id (UTF-8), published
with publisher confirms (through the default exchange) to `<prefix>.runs.queue`: a
durable quorum queue with manual acknowledgements. Its arguments: a dead-letter
exchange with `x-dead-letter-strategy: at-least-once`, which RabbitMQ allows only
with `x-overflow: reject-publish` (so a queue at `max_length` refuses new runs
rather than dropping queued ones), and `x-delivery-limit = max_deliver - 1`
(RabbitMQ counts returns, JetStream deliveries: either way a run is delivered
`max_deliver` times at most; no limit with `max_deliver=-1`, the run queue's
setting, whose run store counts the times a run was started). The dead-letter
exchange `<prefix>.runs.dead` (fanout, durable) routes to
`<prefix>.runs.dead_letters`, a durable quorum queue keeping them 7 days.
`dead_letter` publishes JSON `{"run_id", "reason", "attempt"}` there (confirmed),
then acknowledges the delivery; a run the broker gives up on at its delivery limit
arrives there as itself (body: the run id) with RabbitMQ's `x-death` headers
(reason `delivery_limit`).

Another queue of the same shape (the webhook queue) takes its own `name`: queues
`<prefix>.<name>s.queue` and `<prefix>.<name>s.dead_letters`, exchange
`<prefix>.<name>s.dead`. A queue that exists with other arguments (another
`max_deliver` or `max_length` than this replica's) is used as it is, with a
warning: RabbitMQ never changes a queue's arguments (a policy can).

How the port's verbs map onto RabbitMQ 3.10:

- `pull(max_count)` consumes with a prefetch of `max_count` (the executor's free
  slots) into a local buffer until the first run arrives, then cancels the
  consumer. A quorum queue fixes a consumer's prefetch at `basic.consume` (a later
  `basic.qos` does not change it) and counts it per consumer, so one consumer per
  pull is how the prefetch follows the free slots, and a replica that is not
  pulling is sent nothing. Runs in flight when the consumer was cancelled wait in
  the buffer for the next pull. The price: `pull(1)` takes 2.0 ms (median, a
  local RabbitMQ), the qos, consume and cancel round trips included.
- `attempt` is the `x-delivery-count` header + 1. RabbitMQ counts every return: a
  negative acknowledgement, or the connection of the consumer holding the run
  closing, after which the broker delivers the run again at once.
- RabbitMQ has no acknowledgement timeout to extend, so the adapter keeps one: a
  delivery neither acknowledged nor extended for `ack_wait` seconds is returned
  (`basic.nack`, requeue) for whichever replica pulls next; `extend` restarts that
  timer and tells the broker nothing. A run prefetched into the buffer that no
  pull takes within `ack_wait` goes back too (counted as a delivery).
- `retry(delay)` holds the delivery `delay` seconds, then returns it (an attempt).
- RabbitMQ does not answer an acknowledgement: `ack` follows it with a passive
  declaration of `amq.direct` on the same channel, whose answer shows the channel
  took the acknowledgement in (a channel handles its methods in order).
- Duplicates: RabbitMQ has no duplicate detection (short of a community plugin),
  so a run id submitted twice is queued twice and both copies are delivered; the
  run store's claim makes the copy harmless (a run that ended is acknowledged, one
  running elsewhere is retried until it has ended).
- Stats: `pending` (messages ready: first deliveries or not) and `dead_letters`
  from passive declarations, exact. `depth` from the management API
  (`management_url`, plugin `rabbitmq_management`): the queue's `messages`, which
  for a quorum queue lag ~9 s behind with RabbitMQ 3.10's defaults (its
  `quorum_tick_interval`, statistics interval and management samples, 5 s each);
  None without it. `oldest_age_seconds` and `redelivered` are always None: RabbitMQ 3.10 reports
  neither for a quorum queue (no `head_message_timestamp`; its `redeliver` figure
  counts redeliveries ever made, not those in progress).

RabbitMQ closes a channel whose oldest unacknowledged delivery is older than its
`consumer_timeout` (30 min by default), and every run held on it is delivered
again: set it above the longest run and the longest webhook retry delay (1 h), or
turn it off (`consumer_timeout` in rabbitmq.conf or advanced.config). The same
happens, as when the connection is lost, when a call on the consuming channel
(a pull's consume or cancel, an acknowledgement's answer) times out or is
cancelled: aiormq closes a channel whose call was cut short, lest a late answer
be taken for the next call's.

The connection is aio-pika's robust connection (what `connect_robust` makes, made
here before its first attempt so that `close` also stops a connection still
trying to reach a RabbitMQ that is down): it tries again every `RECONNECT_SECONDS`
and opens its channels again on every new connection. The exchange and the queues
are declared on first use and again on every new connection, so a RabbitMQ that
comes back without them gets them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import httpx
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.connection import make_url
from aio_pika.exceptions import (
    AMQPError,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)

from agent_executor.adapters.queue_signals import LostSignals
from agent_executor.application.ports import QueueDelivery, QueueStats, QueueUnavailable
from agentrt_kit.concurrency import cancel_and_wait, wait_event

log = logging.getLogger(__name__)
T = TypeVar("T")

REQUEST_TIMEOUT = 5.0  # longest any call waits on RabbitMQ (or a pull's own timeout)
RECONNECT_SECONDS = 1.0  # aio-pika's pause between connection attempts (a fixed one)
DEAD_LETTER_MAX_AGE_MS = 7 * 86_400_000
# What a lost or refused connection or channel raises. QueueUnavailable is an
# OSError too: it is raised outside the blocks that catch these.
AMQP_ERRORS = (AMQPError, ChannelInvalidStateError, OSError, TimeoutError)


class RabbitRunQueue:
    """The `RunQueue` port on a RabbitMQ quorum queue, one connection per replica.

    Concurrent `pull` calls take turns (they share one consuming channel). Nothing
    waits on RabbitMQ longer than `REQUEST_TIMEOUT` (or a pull's own timeout).
    """

    backend = "rabbitmq"

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        ack_wait: float = 30.0,
        max_attempts: int = 5,
        max_deliver: int | None = None,
        max_length: int | None = None,
        name: str = "run",
        management_url: str | None = None,
    ) -> None:
        self._url = url
        self.ack_wait = ack_wait
        self.max_attempts = max_attempts
        self._max_deliver = max_attempts + 1 if max_deliver is None else max_deliver
        self._max_length = max_length
        self.queue_name = f"{prefix}.{name}s.queue"
        self.dead_letter_exchange = f"{prefix}.{name}s.dead"
        self.dead_letter_queue = f"{prefix}.{name}s.dead_letters"
        # How RabbitMQ (its management UI, its log) names this replica's connection.
        self.connection_name = (
            f"{self.queue_name} {socket.gethostname()}:{os.getpid()}:{id(self):x}"
        )
        self._management = management_url.rstrip("/") if management_url else None
        self._vhost = unquote(urlsplit(url).path[1:]) or "/"
        self._http: httpx.AsyncClient | None = None
        self._management_failing = False
        self._connection: AbstractRobustConnection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._consuming: AbstractRobustChannel | None = None
        self._publishing: AbstractRobustChannel | None = None
        self._declared_on: object | None = None  # the transport the queues were declared on
        self._buffer: deque[RabbitDelivery] = deque()
        self._arrived = asyncio.Event()
        self._pulling = asyncio.Lock()
        self._held: set[RabbitDelivery] = set()
        self._closed = False
        self.lost = LostSignals(log)  # a lost signal warns once per connection

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect (for good: reconnecting after every loss) and declare the queues.

        Waits `REQUEST_TIMEOUT` at most: a RabbitMQ that is down is connected to
        once it is up, and the queues are declared then, on first use.
        """
        if self._management is not None:
            # Straight to the broker: a proxy configured in the environment must not see it.
            self._http = httpx.AsyncClient(timeout=REQUEST_TIMEOUT, trust_env=False)
        connection = aio_pika.RobustConnection(
            make_url(self._url),
            client_properties={"connection_name": self.connection_name},
            reconnect_interval=RECONNECT_SECONDS,
            fail_fast=False,  # keep trying while RabbitMQ is down, from the first attempt
        )
        self._connection = connection
        # Returns once connected: it keeps trying until then, and reconnects after.
        self._connecting = asyncio.create_task(
            connection.connect(timeout=REQUEST_TIMEOUT), name="rabbitmq-connect"
        )
        await asyncio.wait({self._connecting}, timeout=REQUEST_TIMEOUT)
        with contextlib.suppress(QueueUnavailable):
            await self._ready()

    async def close(self) -> None:
        """Stop pulling and disconnect: RabbitMQ delivers the runs held here again at once."""
        self._closed = True
        await cancel_and_wait(self._connecting)
        for delivery in list(self._held):
            await delivery.forget()
        if self._connection is not None:
            with contextlib.suppress(*AMQP_ERRORS):
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    await self._connection.close()
        if self._http is not None:
            await self._http.aclose()

    # ------------------------------------------------------------ declarations

    async def _ready(self) -> None:
        """Raise unless connected, with the queues declared on this connection (now if not)."""
        connection = self._connection
        if self._closed or connection is None or not connection.connected.is_set():
            raise QueueUnavailable("RabbitMQ is not connected")
        transport = connection.transport
        if transport is not None and self._declared_on is transport:
            return
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                if self._consuming is None:  # robust: aio-pika opens them again after
                    self._consuming = await connection.channel(publisher_confirms=False)
                if self._publishing is None:
                    self._publishing = await connection.channel(on_return_raises=True)
                async with self._channel() as channel:
                    await self._declare(channel)
        except AMQP_ERRORS as e:
            raise QueueUnavailable(f"run queue not declared: {e!r}") from e
        self._declared_on = transport
        self.lost.reset()

    @contextlib.asynccontextmanager
    async def _channel(self) -> AsyncIterator[AbstractChannel]:
        """A channel of its own for declarations and counts: an error closes only it.

        Not a robust one: aio-pika would open that again after RabbitMQ closed it.
        """
        assert self._connection is not None
        channel = aio_pika.Channel(self._connection, publisher_confirms=False)
        await channel.initialize(timeout=REQUEST_TIMEOUT)
        try:
            yield channel
        finally:
            if not channel.is_closed:
                with contextlib.suppress(*AMQP_ERRORS):
                    await channel.close()

    async def _declare(self, channel: AbstractChannel) -> None:
        dead = await channel.declare_exchange(
            self.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead_letters = await channel.declare_queue(
            self.dead_letter_queue,
            durable=True,
            arguments={"x-queue-type": "quorum", "x-message-ttl": DEAD_LETTER_MAX_AGE_MS},
        )
        await dead_letters.bind(dead, routing_key="")
        arguments: dict[str, Any] = {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        if self._max_deliver != -1:
            arguments["x-delivery-limit"] = max(self._max_deliver - 1, 0)
        if self._max_length is not None:
            arguments["x-max-length"] = self._max_length
        try:
            await channel.declare_queue(self.queue_name, durable=True, arguments=arguments)
        except ChannelPreconditionFailed as e:  # this channel is closed now: the last call
            log.warning(
                "run queue exists with other arguments: used as it is",
                extra={"queue": self.queue_name, "arguments": arguments, "error": str(e)},
            )

    async def _call(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        """Run `operation` on declared queues; declare them again once if RabbitMQ lost one."""
        for last in (False, True):
            await self._ready()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    return await operation()
            except PublishError as e:  # unroutable: the queue or its binding is gone
                self._declared_on = None
                if last:
                    raise QueueUnavailable(f"{what}: {e!r}") from e
            except DeliveryError as e:  # a negative confirm: reject-publish at max_length
                raise QueueUnavailable(f"{what}: RabbitMQ refused it (queue full?)") from e
            except AMQP_ERRORS as e:
                # Whatever went wrong, declaring again on the next call is cheap and
                # heals a lost queue; a missing one is declared again right away.
                self._declared_on = None
                if last or not isinstance(e, ChannelNotFoundEntity):
                    raise QueueUnavailable(f"{what}: {e!r}") from e
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ the port

    async def submit(self, run_id: str) -> None:
        """Queue a run (again if it was submitted before: no duplicate detection).

        Raises:
            QueueUnavailable: RabbitMQ did not confirm it within `REQUEST_TIMEOUT`,
                or refused it (the queue is at `max_length`).
        """
        message = aio_pika.Message(
            run_id.encode(),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=run_id,
            content_type="text/plain",
        )
        await self._call(lambda: self._publish("", self.queue_name, message), "run not queued")

    async def _publish(self, exchange: str, routing_key: str, message: aio_pika.Message) -> None:
        channel = self._publishing
        assert channel is not None
        await channel.ready()  # opened again after a reconnect
        target = await channel.get_exchange(exchange, ensure=False)
        # Mandatory: RabbitMQ returns what it cannot route (PublishError) rather than drop it.
        await target.publish(message, routing_key, mandatory=True, timeout=REQUEST_TIMEOUT)

    async def pull(self, max_count: int, timeout: float) -> Sequence[QueueDelivery]:
        """Up to `max_count` runs, returned as soon as one is there ([] after `timeout`).

        Raises:
            QueueUnavailable: RabbitMQ is not connected (or went away while waiting).
        """
        if max_count <= 0:  # a prefetch of 0 would be no limit
            return []
        async with self._pulling:
            await self._ready()
            if not self._buffered():
                await self._consume(max_count, timeout)
            taken: list[QueueDelivery] = []
            while self._buffer and len(taken) < max_count:
                delivery = self._buffer.popleft()
                if delivery.hand_out():
                    taken.append(delivery)
            return taken

    def _buffered(self) -> bool:
        """Whether runs wait in the buffer (dropping those that went back meanwhile)."""
        while self._buffer and not self._buffer[0].held:
            self._buffer.popleft()
        return bool(self._buffer)

    async def _consume(self, max_count: int, timeout: float) -> None:
        """Consume with a prefetch of `max_count` until a first run arrives or `timeout`."""
        channel = self._consuming
        assert channel is not None
        self._arrived.clear()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await channel.ready()  # opened again after a reconnect
                raw = await channel.get_underlay_channel()
                queue = await channel.get_queue(self.queue_name, ensure=False)
                await channel.set_qos(prefetch_count=max_count)
                tag = await queue.consume(self._arrive)
        except AMQP_ERRORS as e:
            self._declared_on = None
            raise QueueUnavailable(f"cannot pull: {e!r}") from e
        try:
            arrived = asyncio.ensure_future(self._arrived.wait())
            try:
                await asyncio.wait(
                    {arrived, raw.closing}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                arrived.cancel()
            await asyncio.sleep(0)  # let the deliveries read with the first one arrive too
        finally:
            with contextlib.suppress(*AMQP_ERRORS):
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    await queue.cancel(tag)
        if raw.is_closed:
            raise QueueUnavailable("RabbitMQ went away while pulling")

    async def _arrive(self, message: AbstractIncomingMessage) -> None:
        if self._closed:  # the connection closing returns it
            return
        self._buffer.append(RabbitDelivery(message, self))
        self._arrived.set()

    async def dead_letter(self, delivery: QueueDelivery, reason: str) -> None:
        """Record the run on the dead-letter exchange (confirmed), then acknowledge it.

        Raises:
            QueueUnavailable: the dead letter or the acknowledgement was not confirmed,
                or the delivery went back to the queue already; the run stays queued
                and is delivered again (its dead letter may be recorded twice).
        """
        if not isinstance(delivery, RabbitDelivery):
            raise TypeError(f"not a delivery of this queue: {delivery!r}")
        if not delivery.held:
            raise QueueUnavailable(f"run {delivery.run_id} went back to the queue")
        record = {"run_id": delivery.run_id, "reason": reason, "attempt": delivery.attempt}
        message = aio_pika.Message(
            json.dumps(record).encode(),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=delivery.run_id,
            content_type="application/json",
        )
        await self._call(
            lambda: self._publish(self.dead_letter_exchange, "", message),
            "dead letter not recorded",
        )
        await delivery.ack()

    async def stats(self) -> QueueStats:
        """Counts from two passive declarations, and the depth from the management API.

        Raises:
            QueueUnavailable: RabbitMQ cannot be asked now.
        """
        ready, dead = await self._call(self._counts, "no queue stats")
        depth = await self._depth()
        return QueueStats(
            depth=None if depth is None else max(depth, ready),  # the depth lags behind
            pending=ready,
            oldest_age_seconds=None,
            redelivered=None,
            dead_letters=dead,
        )

    async def _counts(self) -> tuple[int, int]:
        async with self._channel() as channel:
            queue = await channel.declare_queue(self.queue_name, passive=True)
            dead = await channel.declare_queue(self.dead_letter_queue, passive=True)
        return _message_count(queue), _message_count(dead)

    async def _depth(self) -> int | None:
        """The queue's `messages` by the management API (None without it or an answer)."""
        if self._http is None or self._management is None:
            return None
        vhost, queue = quote(self._vhost, safe=""), quote(self.queue_name, safe="")
        try:
            reply = await self._http.get(f"{self._management}/api/queues/{vhost}/{queue}")
            reply.raise_for_status()
            messages = reply.json().get("messages")  # absent until first reported
        except (httpx.HTTPError, ValueError) as e:
            if not self._management_failing:
                # Not the error itself: its message may hold the URL and its credentials.
                error = (
                    f"HTTP {e.response.status_code}"
                    if isinstance(e, httpx.HTTPStatusError)
                    else type(e).__name__
                )
                log.warning("RabbitMQ management API not answering", extra={"error": error})
            self._management_failing = True
            return None
        self._management_failing = False
        return messages if isinstance(messages, int) else None

    # ------------------------------------------------------------ deliveries

    def hold(self, delivery: RabbitDelivery) -> None:
        """A delivery is held here (unacknowledged, its timer running)."""
        self._held.add(delivery)

    def release(self, delivery: RabbitDelivery) -> None:
        """A delivery is held no more (acknowledged, returned or lost)."""
        self._held.discard(delivery)


def _message_count(queue: AbstractQueue) -> int:
    result = queue.declaration_result
    return int(result.message_count or 0)


class RabbitDelivery:
    """One delivery of a queued run (`QueueDelivery`), held here until settled.

    Held: unacknowledged on this replica's channel, with the adapter's timer
    returning it after `ack_wait` without an `ack` or `extend` (or after a `retry`'s
    delay). Once it went back nothing more is sent for it: a second settlement of
    one delivery tag would close the channel, and every run held on it would be
    delivered again.
    """

    def __init__(self, message: AbstractIncomingMessage, queue: RabbitRunQueue) -> None:
        self._message = message
        self._queue = queue
        self.run_id = message.body.decode(errors="replace")
        returns = (message.headers or {}).get("x-delivery-count", 0)
        self.attempt = (returns if isinstance(returns, int) else 0) + 1
        self._acked = False
        self._settled = False
        self._retrying = False
        self._due = asyncio.get_running_loop().time() + queue.ack_wait
        self._rescheduled = asyncio.Event()
        self._timer = asyncio.create_task(self._return_when_due(), name=f"run-queue-{self.run_id}")
        queue.hold(self)

    def __repr__(self) -> str:
        return f"RabbitDelivery(run_id={self.run_id!r}, attempt={self.attempt})"

    @property
    def held(self) -> bool:
        """Whether it is still this replica's: not settled, and its channel open."""
        return not self._settled and not self._channel_closed()

    def _channel_closed(self) -> bool:
        try:
            return bool(self._message.channel.is_closed)
        except ChannelInvalidStateError:
            return True

    def hand_out(self) -> bool:
        """A pull hands it to the executor: `ack_wait` runs from now (False: it is gone)."""
        if not self.held:
            return False
        self._return_in(self._queue.ack_wait)
        return True

    def _return_in(self, seconds: float) -> None:
        """Return it `seconds` from now (unless settled before)."""
        self._due = asyncio.get_running_loop().time() + seconds
        self._rescheduled.set()

    async def _return_when_due(self) -> None:
        loop = asyncio.get_running_loop()
        while (left := self._due - loop.time()) > 0:
            self._rescheduled.clear()
            await wait_event(self._rescheduled, left)
        await self._return()

    async def _return(self) -> BaseException | None:
        """Give it back to the queue (a delivery counted); the error if it could not be."""
        if self._settled:
            return None
        self._settled = True
        self._queue.release(self)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await self._message.nack(requeue=True)
        except AMQP_ERRORS as e:  # its channel is gone: RabbitMQ returned it then
            return e
        return None

    async def forget(self) -> None:
        """Its replica closes: stop the timer (the connection closing returns it)."""
        self._settled = True
        self._queue.release(self)
        await cancel_and_wait(self._timer)

    async def ack(self) -> None:
        """Acknowledge, and wait for the channel to take it in (a repeat does nothing).

        Raises:
            QueueUnavailable: it went back to the queue (after `ack_wait`, or with its
                connection), or the channel did not answer within `REQUEST_TIMEOUT`.
        """
        if self._acked:
            return
        if not self.held:
            raise QueueUnavailable(f"run {self.run_id} went back to the queue")
        self._settled = True
        self._queue.release(self)
        self._timer.cancel()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                channel = self._message.channel
                await self._message.ack()
                # An ack has no answer: the answer to a later method shows it was taken.
                await channel.exchange_declare(exchange="amq.direct", passive=True)
        except AMQP_ERRORS as e:
            raise QueueUnavailable(f"acknowledgement of run {self.run_id}: {e!r}") from e
        self._acked = True

    async def retry(self, delay: float) -> None:
        """Deliver again after `delay` seconds: held that long, then returned."""
        if self._settled:
            return
        if delay > 0 and not self._channel_closed():
            self._retrying = True
            self._return_in(delay)
            return
        self._timer.cancel()
        error = await self._return()
        if error is not None:
            self._queue.lost("retry", self.run_id, error)

    async def extend(self) -> None:
        """Restart the `ack_wait` timer (RabbitMQ is told nothing)."""
        if self._acked or self._retrying:
            return
        if not self.held:
            self._queue.lost("extension", self.run_id, ChannelInvalidStateError("not held"))
            return
        self._return_in(self._queue.ack_wait)
