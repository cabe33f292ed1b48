"""NATS and JetStream helpers: naming, resilient connection, streams, publish, pull consumers.

Subjects are `<prefix>.<context>.<event>[.<id>]` with prefix `agentrt` by
default; streams are named `<PREFIX>_<CONTEXT>` and KV buckets
`<prefix>_<name>`. A different prefix isolates deployments (and tests) that
share one NATS server. Every stream and bucket is declared with `StreamLimits`
(an age and a size, both required), and `ensure_stream` / `ensure_bucket` bring
one that exists to its declared configuration, so changed limits apply as soon as
a service declares it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsConnection
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, KeyValueConfig, StreamConfig
from nats.js.kv import KeyValue
from opentelemetry import propagate

from agentrt_kit.concurrency import cancel_and_wait, wait_event
from agentrt_kit.context import REQUEST_ID_HEADER, request_id_var
from agentrt_kit.resilience import jittered_backoff

log = logging.getLogger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
STREAM_CONFIG_MISMATCH = 10058
KV_STREAM = "KV_{bucket}"  # the stream under a KV bucket (NATS's naming)
KV_DUPLICATE_WINDOW = 120.0  # nats-py's for a new bucket


@dataclass(frozen=True)
class Names:
    """Subject, stream and bucket names under one prefix."""

    prefix: str = "agentrt"

    def subject(self, *tokens: str) -> str:
        """The subject `<prefix>.<token>...`, e.g. for ("registry", "agent", "deleted")."""
        return ".".join((self.prefix, *tokens))

    def stream(self, context: str) -> str:
        """`<PREFIX>_<CONTEXT>`, e.g. AGENTRT_REGISTRY."""
        return f"{self.prefix}_{context}".upper().replace("-", "_")

    def bucket(self, name: str) -> str:
        """`<prefix>_<name>`, e.g. agentrt_templates."""
        return f"{self.prefix}_{name}".replace("-", "_")


class NatsClient:
    """A NATS connection that is (re)established in the background.

    A service starts even when NATS is down; `connected` says whether it is up
    now, and nats-py reconnects forever once the first connection is made.
    """

    def __init__(self, url: str, *, name: str, token: str | None = None) -> None:
        self._servers = [u.strip() for u in url.split(",") if u.strip()]
        self._name = name
        self._token = token
        self.nc = NatsConnection()
        self._task: asyncio.Task[None] | None = None
        self._first = asyncio.Event()
        self._closing = False
        self._connect_called = False  # on the current `nc`; nats-py cannot close one before
        self._js: JetStreamContext | None = None
        self._js_of: NatsConnection | None = None
        self._reconnect_listeners: list[Callable[[], None]] = []

    def on_reconnect(self, listener: Callable[[], None]) -> None:
        """Call `listener` (synchronously, in the loop) after every reconnect."""
        self._reconnect_listeners.append(listener)

    @property
    def connected(self) -> bool:
        """True while the connection is up."""
        return bool(self.nc.is_connected)

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context of the connection (one per connection: it owns a reply inbox)."""
        if self._js is None or self._js_of is not self.nc:
            self._js, self._js_of = self.nc.jetstream(), self.nc
        return self._js

    async def start(self) -> None:
        """Begin connecting in the background (returns at once)."""
        self._task = asyncio.create_task(self._connect_loop(), name=f"nats-connect-{self._name}")

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the first connection is made; False on timeout."""
        return await wait_event(self._first, timeout)

    async def _connect_loop(self) -> None:
        for delay in jittered_backoff(0.1, 5.0):
            try:
                self._connect_called = True
                await self.nc.connect(
                    servers=self._servers,
                    name=self._name,
                    token=self._token,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    closed_cb=self._on_closed,
                )
            except (OSError, nats.errors.Error, TimeoutError) as e:
                log.warning("nats connect failed, retrying", extra={"error": str(e), "in_s": delay})
                self.nc, self._connect_called = NatsConnection(), False
                await asyncio.sleep(delay)
                continue
            url = self.nc.connected_url
            log.info("nats connected", extra={"server": url.netloc if url else "?"})
            self._first.set()
            return

    async def _on_error(self, e: Exception) -> None:
        log.warning("nats error", extra={"error": str(e)})

    async def _on_disconnected(self) -> None:
        if self._closing:
            log.info("nats disconnected (closing)")
        else:
            log.warning("nats disconnected")

    async def _on_reconnected(self) -> None:
        log.info("nats reconnected")
        for listener in self._reconnect_listeners:
            listener()

    async def _on_closed(self) -> None:
        log.info("nats connection closed")

    async def close(self) -> None:
        """Drain the connection (flush pending publishes) and stop connecting."""
        self._closing = True
        if self._task is not None and not self._task.done():
            await cancel_and_wait(self._task)
        if self.nc.is_connected:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self.nc.drain()
        elif self._connect_called and not self.nc.is_closed:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self.nc.close()


class BackgroundSubscription:
    """A subscription made in the background as soon as NATS is up, undone on `close`.

    Subscribing is retried with backoff; once made, nats-py re-subscribes by itself
    after a reconnect, so one success is enough.
    """

    def __init__(
        self,
        client: NatsClient,
        subject: str,
        callback: Callable[[Msg], Awaitable[None]],
        *,
        what: str,
    ) -> None:
        self._client = client
        self._subject = subject
        self._callback = callback
        self._what = what
        self._task: asyncio.Task[None] | None = None
        self.subscription: Subscription | None = None

    @property
    def active(self) -> bool:
        """Whether the subscription has been made."""
        return self.subscription is not None

    def start(self) -> None:
        """Begin subscribing in the background (returns at once)."""
        self._task = asyncio.create_task(self._subscribe(), name=f"subscribe-{self._what}")

    async def _subscribe(self) -> None:
        backoff = jittered_backoff(0.2, 5.0)
        while True:
            try:
                await self._client.wait_connected()
                self.subscription = await self._client.nc.subscribe(
                    self._subject, cb=self._callback
                )
                return
            except (nats.errors.Error, OSError) as e:
                log.warning(
                    "nats subscription failed, retrying",
                    extra={"subscription": self._what, "subject": self._subject, "error": str(e)},
                )
                await asyncio.sleep(next(backoff))

    async def close(self) -> None:
        """Stop subscribing and unsubscribe."""
        await cancel_and_wait(self._task)
        if self.subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await self.subscription.unsubscribe()


@dataclass(frozen=True)
class StreamLimits:
    """How much a stream or KV bucket keeps: at most `max_bytes`, none older than `max_age_seconds`.

    Both are required and positive: nothing the project declares grows without bound.
    What goes when a limit is reached is the stream's own choice (`discard`): a work queue
    refuses new messages, an event log drops its oldest, a KV bucket refuses new values.

    Raises:
        ValueError: a limit is not positive.
    """

    max_age_seconds: float
    max_bytes: int

    def __post_init__(self) -> None:
        if not (self.max_age_seconds > 0 and self.max_bytes > 0):
            raise ValueError(f"stream limits must be positive, not {self}")

    def stream_config(self, *, duplicate_window: float, **config: Any) -> StreamConfig:
        """A stream configuration with these limits and `config` (name, subjects, ...).

        The duplicate window is capped at `max_age_seconds`: NATS refuses a longer one.
        """
        return StreamConfig(
            max_age=self.max_age_seconds,
            max_bytes=self.max_bytes,
            duplicate_window=min(duplicate_window, self.max_age_seconds),
            **config,
        )

    def bucket_config(self, bucket: str, *, history: int) -> KeyValueConfig:
        """A KV bucket configuration with these limits: entries expire after `max_age_seconds`."""
        return KeyValueConfig(
            bucket=bucket, history=history, ttl=self.max_age_seconds, max_bytes=self.max_bytes
        )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or bring an existing one to `config` (idempotent)."""
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as e:
        if e.err_code != STREAM_CONFIG_MISMATCH:
            raise
        await js.update_stream(config)
        log.info("stream configuration updated", extra={"stream": config.name})


async def ensure_bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """Open the KV bucket, creating it or bringing its limits and history to `config`.

    A bucket's limits live on its stream (`KV_<bucket>`), which nats-py never updates:
    `create_key_value` leaves an existing bucket as it is.
    """
    try:
        current = (await js.stream_info(KV_STREAM.format(bucket=config.bucket))).config
    except nats.js.errors.NotFoundError:
        return await js.create_key_value(config)
    ttl = config.ttl or 0.0
    wanted = (ttl, config.max_bytes, config.history)
    if (current.max_age or 0.0, current.max_bytes, current.max_msgs_per_subject) != wanted:
        await js.update_stream(
            current.evolve(
                max_age=ttl,
                max_bytes=config.max_bytes,
                max_msgs_per_subject=config.history,
                # As `create_key_value` sets it: NATS refuses a window longer than max_age.
                duplicate_window=min(KV_DUPLICATE_WINDOW, ttl) if ttl else KV_DUPLICATE_WINDOW,
            )
        )
        log.info("bucket configuration updated", extra={"bucket": config.bucket})
    return await js.key_value(config.bucket)


def trace_headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Headers carrying the current trace context and request id, plus `extra`."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    if (rid := request_id_var.get()) is not None:
        headers[REQUEST_ID_HEADER] = rid
    headers.update(extra or {})
    return headers


async def publish(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    msg_id: str,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> int:
    """Publish to JetStream with `Nats-Msg-Id` (de-duplicated by the stream) and trace headers.

    Returns:
        The stream sequence of the stored (or already stored) message.
    """
    ack = await js.publish(
        subject,
        payload,
        timeout=timeout,
        headers=trace_headers({**(headers or {}), MSG_ID_HEADER: msg_id}),
    )
    return int(ack.seq)


class Retry(Exception):
    """Raised by a consumer handler: redeliver this message later (nak with delay)."""

    def __init__(self, delay: float = 1.0) -> None:
        super().__init__(f"retry in {delay}s")
        self.delay = delay


class Reject(Exception):
    """Raised by a consumer handler: this message can never be processed (term)."""


Handler = Callable[[Msg], Awaitable[None]]


async def consume(
    js: JetStreamContext,
    *,
    stream: str,
    durable: str,
    subject: str,
    handler: Handler,
    batch: int = 64,
    ack_wait: float = 30.0,
    max_deliver: int = 20,
    stop: asyncio.Event | None = None,
    config: ConsumerConfig | None = None,
) -> None:
    """Run a durable pull consumer until `stop` is set.

    Each message goes to `handler`: it is acked when the handler returns, nak'ed
    with the given delay on `Retry` (or after 1 s on any other exception), and
    terminated on `Reject`. Handlers must be idempotent: JetStream delivers at
    least once.
    """
    stop = stop or asyncio.Event()
    consumer_config = config or ConsumerConfig(
        ack_wait=ack_wait, max_deliver=max_deliver, filter_subject=subject
    )
    sub = await js.pull_subscribe(subject, durable=durable, stream=stream, config=consumer_config)
    try:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(batch, timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            for msg in msgs:
                await _dispatch(msg, handler)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


async def _dispatch(msg: Msg, handler: Handler) -> None:
    try:
        await handler(msg)
    except Reject as e:
        log.error("message rejected", extra={"subject": msg.subject, "error": str(e)})
        await msg.term()
    except Retry as e:
        await msg.nak(delay=e.delay)
    except Exception:
        log.exception("message handler failed", extra={"subject": msg.subject})
        await msg.nak(delay=1.0)
    else:
        await msg.ack()


def header(msg: Msg, name: str) -> str | None:
    """A header of `msg`, or None."""
    return (msg.headers or {}).get(name)


def decode_headers(msg: Msg) -> dict[str, Any]:
    """All headers of `msg` (empty dict when none)."""
    return dict(msg.headers or {})
