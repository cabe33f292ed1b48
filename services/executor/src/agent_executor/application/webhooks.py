"""Application: calling a run's webhook once the run has ended.

A run started with a `webhook_url` goes on the webhook queue (a second `RunQueue`,
its own stream) once its terminal state is stored. `WebhookWorker` pulls from it,
at most `concurrency` deliveries in flight, reads the run's record, builds the
Standard Webhooks payload (`webhook_body`) and hands it to the `WebhookSender`
port, which signs and POSTs it under the fetch tool's network policy. The outcome
decides what the queue hears: delivered or given up → `ack`; retry later →
`retry(delay)` with `WebhookBackoff` (or the receiver's Retry-After, capped); a
retry due after the queue's `max_attempts` → `dead_letter`, with one WARNING line.
The message id `<run_id>:<status>` is the same on every attempt, so a receiver
that saw it already can ignore a repeat: delivery is at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import urlsplit

from agent_executor.application.ports import QueueDelivery, QueueUnavailable, RunQueue, RunStore
from agent_executor.domain.runs import RunRecord, RunStatus
from agent_executor.errors import WebhooksDisabled
from agentrt_kit.concurrency import wait_event, wait_for_any
from agentrt_kit.errors import invalid
from agentrt_kit.resilience import jittered_backoff
from agentrt_kit.urls import UrlRefused, parse_target

log = logging.getLogger(__name__)

BlockingCall = Callable[..., Awaitable[Any]]
MAX_WEBHOOK_URL_CHARS = 2048
EVENT_TYPES: dict[RunStatus, str] = {
    RunStatus.SUCCEEDED: "run.succeeded",
    RunStatus.FAILED: "run.failed",
    RunStatus.CANCELLED: "run.cancelled",
    RunStatus.TIMED_OUT: "run.timed_out",
}


# ------------------------------------------------------------------ the port


class Verdict(StrEnum):
    """What became of one attempt to deliver a webhook."""

    DELIVERED = "delivered"  # a 2xx answer
    RETRY = "retry"  # 408, 429, 5xx, a timeout, no connection: try again later
    GIVE_UP = "give_up"  # any other answer, a refused or malformed URL: never again


@dataclass(frozen=True, slots=True)
class WebhookOutcome:
    """One attempt's outcome: the verdict, the HTTP status (0: none came) and why."""

    verdict: Verdict
    status: int = 0
    detail: str = ""
    retry_after: float | None = None  # seconds the receiver asked for (Retry-After)

    @classmethod
    def delivered(cls, status: int) -> WebhookOutcome:
        """The receiver took it."""
        return cls(Verdict.DELIVERED, status, f"answered {status}")

    @classmethod
    def retry_later(
        cls, detail: str, *, status: int = 0, retry_after: float | None = None
    ) -> WebhookOutcome:
        """Not now; perhaps later."""
        return cls(Verdict.RETRY, status, detail, retry_after)

    @classmethod
    def give_up(cls, detail: str, *, status: int = 0) -> WebhookOutcome:
        """Never: trying again cannot help."""
        return cls(Verdict.GIVE_UP, status, detail)


class WebhookSender(Protocol):
    """Delivers one webhook message (Standard Webhooks over HTTP)."""

    async def deliver(self, url: str, message_id: str, body: Mapping[str, Any]) -> WebhookOutcome:
        """POST `body`, signed, with the id `message_id`, to `url`: one attempt.

        Never raises for what the receiver or the network did: that is the outcome.
        """
        ...


# ------------------------------------------------------------------ StartRun's check


def validate_webhook_url(url: str) -> str | None:
    """Why `url` cannot be a webhook URL (to follow its field name), or None.

    Its form only: length, http(s), a host, no user name or password, no metadata
    host. Where it points is judged when it is called, by the sender's network policy,
    since DNS answers change between now and the end of the run.
    """
    if len(url) > MAX_WEBHOOK_URL_CHARS:
        return f"is longer than {MAX_WEBHOOK_URL_CHARS} characters"
    try:
        parse_target(url)
    except UrlRefused as e:
        return str(e)
    return None


def check_webhook(url: str, *, signing: bool) -> None:
    """Refuse a StartRun whose webhook cannot be called (an empty `url` asks for none).

    Args:
        url: the request's `webhook_url`.
        signing: whether a webhook secret is configured (`Settings.webhook_secret`).

    Raises:
        WebhooksDisabled: no secret to sign webhooks with is configured.
        InvalidArgument: the URL's form is refused (field `webhook_url`).
    """
    if not url:
        return
    if not signing:
        raise WebhooksDisabled()
    if (reason := validate_webhook_url(url)) is not None:
        raise invalid("webhook_url", reason, f"webhook_url {reason}")


# ------------------------------------------------------------------ the message


def message_id(record: RunRecord) -> str:
    """The webhook's id: one per run and outcome, the same on every attempt."""
    return f"{record.run_id}:{record.status.value}"


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def webhook_body(record: RunRecord) -> dict[str, Any]:
    """The Standard Webhooks payload for an ended run: `type`, `timestamp`, `data`.

    `timestamp` is when the run ended, so every attempt sends the same body.

    Raises:
        ValueError: the run has not ended.
    """
    event_type = EVENT_TYPES.get(record.status)
    if event_type is None:
        raise ValueError(f"run {record.run_id} has not ended ({record.status})")
    error = (
        {"code": record.error_code, "message": record.error_message}
        if record.error_code or record.error_message
        else None
    )
    return {
        "type": event_type,
        "timestamp": _iso(record.finished_at or record.created_at),
        "data": {
            "run_id": record.run_id,
            "agent_id": record.agent_id,
            "agent_version": record.agent_version,
            "status": record.status.value,
            "task_id": record.task_id,
            "context_id": record.context_id,
            "created_at": _iso(record.created_at),
            "started_at": _iso(record.started_at),
            "finished_at": _iso(record.finished_at),
            "usage": {
                "prompt_tokens": record.usage.prompt_tokens,
                "completion_tokens": record.usage.completion_tokens,
                "total_tokens": record.usage.total_tokens,
            },
            "tool_calls": record.tool_calls,
            "error": error,
            "attempts": record.attempts,
            "metadata": dict(record.metadata),
        },
    }


# ------------------------------------------------------------------ the worker


@dataclass(frozen=True, slots=True)
class WebhookBackoff:
    """How long a webhook waits before its next attempt.

    After attempt n it waits `delays[n - 1]` (the last repeating), give or take
    `jitter` of it, so receivers that failed together are not all called again at
    once; a receiver's Retry-After replaces that. Nothing waits more than `maximum`.
    """

    delays: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
    jitter: float = 0.2
    maximum: float = 3600.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after attempt `attempt` (from 1)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.maximum)
        base = self.delays[min(max(attempt, 1), len(self.delays)) - 1]
        return min(base * rng.uniform(1 - self.jitter, 1 + self.jitter), self.maximum)


def _host(url: str) -> str:
    """The URL's host, for logs (a URL's path and query may carry a token)."""
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


class WebhookWorker:
    """Delivers due webhooks from the webhook queue, `concurrency` at a time."""

    def __init__(
        self,
        *,
        queue: RunQueue,
        store: RunStore,
        call_store: BlockingCall,
        sender: WebhookSender,
        concurrency: int = 16,
        backoff: WebhookBackoff | None = None,
        pull_timeout: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.queue = queue
        self.store = store
        self.call_store = call_store
        self.sender = sender
        self.concurrency = concurrency
        self.backoff = backoff or WebhookBackoff()
        self.pull_timeout = pull_timeout
        self.rng = rng or random.Random()
        self._tasks: set[asyncio.Task[None]] = set()
        self._freed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Pull and deliver until `stop` is set; deliveries under way then finish.

        A pull waits at most `pull_timeout`, so stopping takes that long at most,
        plus the deliveries under way. A delivery cancelled with the worker is not
        settled: the queue delivers it again after its `ack_wait`.
        """
        outages = jittered_backoff(0.5, 30.0)
        try:
            while not stop.is_set():
                free = self.concurrency - len(self._tasks)
                if free == 0:
                    self._freed.clear()
                    await wait_for_any(stop, self._freed)
                    continue
                try:
                    deliveries = await self.queue.pull(free, self.pull_timeout)
                except QueueUnavailable as e:
                    log.warning("webhook queue unavailable", extra={"error": str(e)})
                    await wait_event(stop, next(outages))
                    continue
                outages = jittered_backoff(0.5, 30.0)
                for delivery in deliveries:
                    task = asyncio.create_task(self.handle(delivery), name="webhook")
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
            if self._tasks:
                await asyncio.wait(set(self._tasks))
        finally:
            for task in list(self._tasks):
                task.cancel()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._freed.set()
        if not task.cancelled() and (error := task.exception()) is not None:
            # Unsettled: the queue delivers it again after ack_wait.
            log.error("webhook delivery failed", exc_info=error)

    async def handle(self, delivery: QueueDelivery) -> None:
        """One delivery from the queue: attempt it, then settle it with the queue."""
        if delivery.attempt > self.queue.max_attempts:
            # The attempt before did not settle (its executor stopped mid-call):
            # the queue's backstop delivery, dead-lettered as the run queue does.
            await self._dead_letter(delivery, "", WebhookOutcome.retry_later("no outcome"))
            return
        url, outcome = await self._attempt(delivery.run_id)
        try:
            if outcome.verdict is Verdict.DELIVERED:
                await delivery.ack()
                log.info(
                    "webhook delivered",
                    extra={
                        "run_id": delivery.run_id,
                        "host": _host(url),
                        "status": outcome.status,
                        "attempt": delivery.attempt,
                    },
                )
            elif outcome.verdict is Verdict.GIVE_UP:
                await delivery.ack()
                log.warning(
                    "webhook given up",
                    extra={
                        "run_id": delivery.run_id,
                        "host": _host(url),
                        "status": outcome.status,
                        "attempt": delivery.attempt,
                        "reason": outcome.detail,
                    },
                )
            elif delivery.attempt >= self.queue.max_attempts:
                await self._dead_letter(delivery, url, outcome)
            else:
                delay = self.backoff.delay(delivery.attempt, outcome.retry_after, self.rng)
                await delivery.retry(delay)
                log.info(
                    "webhook retried later",
                    extra={
                        "run_id": delivery.run_id,
                        "host": _host(url),
                        "status": outcome.status,
                        "attempt": delivery.attempt,
                        "reason": outcome.detail,
                        "delay_seconds": round(delay, 1),
                    },
                )
        except QueueUnavailable as e:
            # Unsettled: the queue delivers it again after ack_wait (at least once).
            log.warning(
                "webhook outcome not recorded by the queue",
                extra={"run_id": delivery.run_id, "verdict": outcome.verdict, "error": str(e)},
            )

    async def _attempt(self, run_id: str) -> tuple[str, WebhookOutcome]:
        """(the URL, the outcome) of one attempt at the run's webhook."""
        try:
            record: RunRecord | None = await self.call_store(self.store.get, run_id)
        except Exception as e:  # the store's own errors vary by driver
            log.warning("webhook run record unreadable", extra={"run_id": run_id, "error": str(e)})
            return "", WebhookOutcome.retry_later(f"the run record cannot be read: {e}")
        if record is None:
            return "", WebhookOutcome.give_up("no such run")
        if not record.webhook_url:
            return "", WebhookOutcome.give_up("the run has no webhook")
        if not record.status.terminal:
            return record.webhook_url, WebhookOutcome.retry_later("the run has not ended yet")
        url = record.webhook_url
        try:
            return url, await self.sender.deliver(url, message_id(record), webhook_body(record))
        except Exception as e:  # a bug in a sender must not stop the worker
            log.exception("webhook sender failed", extra={"run_id": run_id})
            return url, WebhookOutcome.retry_later(f"internal error: {type(e).__name__}")

    async def _dead_letter(
        self, delivery: QueueDelivery, url: str, outcome: WebhookOutcome
    ) -> None:
        reason = f"webhook not delivered after {delivery.attempt} attempts; last: {outcome.detail}"
        with contextlib.suppress(QueueUnavailable):  # unsettled: delivered again, then this
            await self.queue.dead_letter(delivery, reason)
        log.warning(
            "webhook dead-lettered",
            extra={
                "run_id": delivery.run_id,
                "host": _host(url),
                "status": outcome.status,
                "attempts": delivery.attempt,
                "reason": outcome.detail,
            },
        )
