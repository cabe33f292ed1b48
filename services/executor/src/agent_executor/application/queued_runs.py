"""Application: queued (background) runs — submitted once, run by any replica, never lost.

`submit` checks a request as a foreground run would be checked (the caller hears
of a bad request or a missing agent at once), records the run as `queued` with
its request, and puts its id on the run queue. The record is the truth and the
queue a notice: a run whose notice the broker lost is put back on the queue by
`sweep`, and a duplicate notice is harmless, because an executor must `claim` a
run in the store before it runs it.

`consume` pulls only as many runs as this executor has free slots. A claimed run
checkpoints at every step (its session's thread, or a thread of its own) and
keeps its delivery alive with heartbeats; its delivery is acknowledged only
after its end is recorded. When an executor dies, the delivery lapses after the
queue's ack-wait and another executor claims the run — it resumes from the last
checkpoint, numbering its events after the last stored one, and the tools service
answers repeated tool calls from its ledger (the idempotency key is the run id
and the model's tool-call id), so no side effect happens twice.

Multitask strategies (for runs of a memory agent on one task): `reject` refuses a
run while another is queued or live; `enqueue` runs them one after another in
order; `interrupt` cancels the live ones (their progress stays in the session)
and runs the new one; `rollback` cancels them and undoes them in the session (the
new run starts from the state before them).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from agent_executor.application.ports import (
    ClaimOutcome,
    Enqueued,
    QueueDelivery,
    QueueReport,
    QueueUnavailable,
    RequestCodec,
    RunEventLog,
    RunQueue,
)
from agent_executor.application.run_driver import RunHandle
from agent_executor.application.runs import RunRequest, RunService, session_key
from agent_executor.application.webhooks import validate_webhook_url
from agent_executor.domain.runs import FailureCode, MultitaskStrategy, RunRecord, RunStatus
from agent_executor.errors import RunExists, WebhooksDisabled
from agentrt_kit.concurrency import wait_event
from agentrt_kit.errors import AgentrtError, FieldViolation, InvalidArgument, Unavailable

log = logging.getLogger(__name__)

MAX_METADATA_KEYS = 16
MAX_METADATA_CHARS = 512
BUSY_RETRY_SECONDS = 1.0  # a run waiting for its session's turn looks again after this
UNAVAILABLE_RETRY_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class QueueOptions:
    """What a queued run adds to a request."""

    webhook_url: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    multitask_strategy: str = ""


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """How this executor takes queued runs."""

    poll_seconds: float = 1.0  # longest wait of one pull
    # A queued run nobody took this long is queued again (the broker lost its notice);
    # longer than the broker's duplicate window, so a run still waiting in a backlog
    # is not queued twice. A notice the broker refused is re-queued at the next sweep.
    sweep_after_seconds: float = 600.0
    sweep_every_seconds: float = 5.0
    sweep_batch: int = 100
    # Checkpoint every step of a run without memory too, so that it resumes where it
    # was after its executor stopped (off: such a run starts over, its tool calls
    # still answered once by the ledger).
    checkpoint: bool = True


class QueuedRuns:
    """Submits queued runs and runs the ones this executor pulls."""

    def __init__(
        self,
        runs: RunService,
        *,
        queue: RunQueue,
        event_log: RunEventLog,
        codec: RequestCodec,
        webhooks: RunQueue | None = None,
        settings: QueueSettings | None = None,
    ) -> None:
        self.runs = runs
        self.store = runs.store
        self.call_store = runs.call_store
        self.queue = queue
        self.event_log = event_log
        self.codec = codec
        self.webhooks = webhooks
        self.settings = settings or QueueSettings()
        self._heartbeats: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ submit

    async def submit(self, request: RunRequest, options: QueueOptions) -> Enqueued:
        """Queue a run; a run id that names a run answers it when the request is the same.

        Raises:
            InvalidArgument: the request or an option is malformed (the field is named).
            AgentNotFound, AgentNotRunnable, AgentMisconfigured, TemplateUnavailable:
                the agent cannot run.
            SessionBusy: `reject` and the task has a queued or live run.
            RunExists: the run id names a run another request started.
            WebhooksDisabled: a webhook was asked for and none can be signed here.
            RegistryUnavailable, ToolsUnavailable, Unavailable: a dependency is down.
        """
        if options.webhook_url and self.webhooks is None:
            raise WebhooksDisabled()
        strategy = _check_options(options)
        prepared = await self.runs.prepare(request, durable=self.settings.checkpoint)
        agent = prepared.agent
        now = self.runs.clock()
        task_id = request.task_id or uuid.uuid4().hex
        record = RunRecord(
            run_id=request.run_id or uuid.uuid4().hex,
            agent_id=agent.id,
            agent_version=agent.version,
            status=RunStatus.QUEUED,
            created_at=now,
            task_id=task_id,
            context_id=request.context_id,
            session_key=session_key(agent, task_id),
            owner_id=agent.owner_id,
            attempts=0,
            queued=True,
            metadata=dict(options.metadata),
            multitask_strategy=strategy.value,
            webhook_url=options.webhook_url,
        )
        stops_others = strategy in (MultitaskStrategy.INTERRUPT, MultitaskStrategy.ROLLBACK)
        retried = request.run_id and await self.call_store(self.store.get, record.run_id)
        if record.session_key and stops_others and not retried:
            live = await self.call_store(self.store.live_in_session, record.session_key, now)
            rollback = strategy is MultitaskStrategy.ROLLBACK
            for run_id in live:
                if run_id != record.run_id:
                    await self.runs.cancel(run_id, rollback=rollback)
        # Kept without `min_agent_version` (the run's agent_version now stands for it), so
        # a retry after a later update of the agent is still the same request.
        kept = dataclasses.replace(request, min_agent_version=0)
        enqueued: Enqueued = await self.call_store(
            self.store.enqueue,
            record,
            self.codec.encode(kept),
            reject_busy=strategy is MultitaskStrategy.REJECT,
        )
        if not enqueued.created and not enqueued.same_request:
            raise RunExists(record.run_id)
        if enqueued.record.status is RunStatus.QUEUED:
            try:
                await self.queue.submit(record.run_id)
            except QueueUnavailable as e:
                # Recorded, so accepted: the next sweep queues it once the broker is back.
                log.warning(
                    "run queued in the store only", extra={"run_id": record.run_id, "error": str(e)}
                )
                await self.call_store(self.store.not_queued, record.run_id)
        return enqueued

    async def sweep(self) -> int:
        """Queue again the queued runs nobody took for a while (a lost notice); how many.

        Raises:
            QueueUnavailable: the broker is still down (the runs stay due for the next sweep).
        """
        now = self.runs.clock()
        before = now - timedelta(seconds=self.settings.sweep_after_seconds)
        run_ids: list[str] = await self.call_store(
            self.store.unclaimed, before, now, self.settings.sweep_batch
        )
        for n, run_id in enumerate(run_ids):
            try:
                await self.queue.submit(run_id)
            except QueueUnavailable:
                for left in run_ids[n:]:  # still not queued: the next sweep tries again
                    await self.call_store(self.store.not_queued, left)
                raise
        if run_ids:
            log.warning("queued runs queued again", extra={"count": len(run_ids)})
        return len(run_ids)

    async def reports(self) -> list[QueueReport]:
        """Each queue's figures (runs, then webhooks when configured), asked side by side.

        Never raises for a broker that cannot be asked: that queue's report says why.
        """
        named = [("run", self.queue)]
        if self.webhooks is not None:
            named.append(("webhook", self.webhooks))

        async def report(name: str, queue: RunQueue) -> QueueReport:
            try:
                return QueueReport(name, queue.backend, await queue.stats())
            except QueueUnavailable as e:
                return QueueReport(name, queue.backend, None, e.message)

        return list(await asyncio.gather(*(report(name, queue) for name, queue in named)))

    # ------------------------------------------------------------ consume

    async def consume(self, stop: asyncio.Event) -> None:
        """Pull and run queued runs while this executor has free slots, until `stop`."""
        while not stop.is_set():
            free = self.runs.free_slots
            if free <= 0:
                self.runs.slot_freed.clear()
                if self.runs.free_slots <= 0:
                    await wait_event(self.runs.slot_freed, self.settings.poll_seconds)
                continue
            try:
                deliveries = await self.queue.pull(free, self.settings.poll_seconds)
            except QueueUnavailable:
                await wait_event(stop, 1.0)
                continue
            # Claimed and started side by side: each claim is a store round trip.
            await asyncio.gather(*(self._take_safely(d) for d in deliveries))

    async def _take_safely(self, delivery: QueueDelivery) -> None:
        try:
            await self._take(delivery)
        except Exception:
            log.exception("taking a queued run failed", extra={"run_id": delivery.run_id})
            with contextlib.suppress(Exception):
                await delivery.retry(UNAVAILABLE_RETRY_SECONDS)

    async def maintain(self, stop: asyncio.Event) -> None:
        """Sweep lost notices every `sweep_every_seconds` until `stop`."""
        while not await wait_event(stop, self.settings.sweep_every_seconds):
            try:
                await self.sweep()
            except (QueueUnavailable, Unavailable) as e:
                log.warning("queued runs not swept", extra={"error": str(e)})
            except Exception:
                log.exception("sweeping queued runs failed")

    async def _take(self, delivery: QueueDelivery) -> None:
        run_id = delivery.run_id
        if self.runs.closing:  # pulled while this replica began to stop: leave it to others
            await delivery.retry(0)
            return
        if run_id in self.runs.active:  # a duplicate notice of a run going here
            await delivery.retry(self.queue.ack_wait)
            return
        claim = await self.call_store(
            self.store.claim,
            run_id,
            self.runs.settings.executor_id,
            self.runs.clock(),
            max_attempts=self.queue.max_attempts,
        )
        record = claim.record
        match claim.outcome:
            case ClaimOutcome.MISSING:
                await self.queue.dead_letter(delivery, "the run has no record")
            case ClaimOutcome.ENDED:
                assert record is not None
                await self._after_end(record)
                await delivery.ack()
            case ClaimOutcome.BUSY:
                await delivery.retry(BUSY_RETRY_SECONDS)
            case ClaimOutcome.ELSEWHERE:
                # Its holder's lease lapses within `lease_seconds` if it died (RabbitMQ
                # returns a dead consumer's runs at once, before that).
                await delivery.retry(min(self.queue.ack_wait, self.runs.settings.lease_seconds))
            case ClaimOutcome.EXHAUSTED:
                assert record is not None
                log.warning(
                    "queued run given up", extra={"run_id": run_id, "attempts": record.attempts}
                )
                await self.runs.announce_end(record)
                await self._after_end(record)
                await self.queue.dead_letter(delivery, record.error_message)
            case ClaimOutcome.CLAIMED:
                assert record is not None
                request = dataclasses.replace(
                    self.codec.decode(claim.request),
                    min_agent_version=record.agent_version,  # the version seen when submitted
                    stream=True,  # followers of its events get the deltas
                )
                await self._start(delivery, record, request)

    async def _start(self, delivery: QueueDelivery, record: RunRecord, request: RunRequest) -> None:
        run_id = record.run_id
        resumed = record.attempts > 1
        try:
            after = await self.event_log.last_sequence(run_id) if resumed else 0
            prepared = await self.runs.prepare(request, durable=self.settings.checkpoint)
        except (QueueUnavailable, Unavailable) as e:
            # A dependency is down: give the run back and try again later.
            log.warning("queued run not started", extra={"run_id": run_id, "error": str(e)})
            await self.call_store(self.store.release, run_id, record.executor_id)
            await delivery.retry(UNAVAILABLE_RETRY_SECONDS)
            return
        except AgentrtError as e:  # the agent cannot run (deleted, misconfigured, ...)
            record.stopped(
                RunStatus.FAILED, self.runs.clock(), e.reason or FailureCode.INTERNAL, e.message
            )
            await self.call_store(
                self.store.finish,
                run_id,
                RunStatus.FAILED,
                finished_at=record.finished_at,
                usage=record.usage,
                tool_calls=record.tool_calls,
                error_code=record.error_code,
                error_message=record.error_message,
                executor_id=record.executor_id,
            )
            await self.runs.announce_end(record)
            await self._after_end(record)
            await delivery.ack()
            return
        agent = prepared.agent
        own_thread = not record.session_key
        thread = record.session_key or (f"run:{run_id}" if self.settings.checkpoint else "")
        if resumed:
            log.info("queued run resumed", extra={"run_id": run_id, "attempt": record.attempts})

        async def ended(final: RunRecord, done: bool) -> None:
            await self._ended(delivery, final, done, thread if own_thread else "")

        handle = RunHandle(record, agent, listening=False, after_sequence=after, on_end=ended)
        self.runs.launch(
            handle,
            prepared,
            request,
            thread_id=thread if self.runs.checkpointer is not None else "",
            resume=resumed,
            fresh_thread=own_thread and not resumed,
        )
        self._heartbeats[run_id] = asyncio.create_task(
            self._keep_alive(delivery, handle), name=f"run-heartbeat-{run_id}"
        )

    async def _keep_alive(self, delivery: QueueDelivery, handle: RunHandle) -> None:
        """Tell the queue the run is alive, three times per ack-wait, until it ends."""
        interval = max(self.queue.ack_wait / 3, 0.05)
        while not handle.finished:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await delivery.extend()

    async def _ended(
        self, delivery: QueueDelivery, record: RunRecord, done: bool, thread: str
    ) -> None:
        beat = self._heartbeats.pop(record.run_id, None)
        if beat is not None:
            beat.cancel()
        if not done:  # handed over: another executor takes it now
            await delivery.retry(0)
            return
        try:
            await self._after_end(record)
            await delivery.ack()
        except QueueUnavailable as e:  # redelivered later: the claim sees it ended, goes on
            log.warning(
                "queued run not acknowledged", extra={"run_id": record.run_id, "error": str(e)}
            )
        if thread and self.runs.checkpointer is not None:
            # Off the run's path: its checkpoints are of no use once its end is stored.
            self._spawn(self._forget_thread(thread), f"forget-{record.run_id}")

    async def _forget_thread(self, thread: str) -> None:
        assert self.runs.checkpointer is not None
        try:
            await self.runs.checkpointer.adelete_thread(thread)
        except Exception as e:
            log.warning("run checkpoints not deleted", extra={"thread": thread, "error": str(e)})

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _after_end(self, record: RunRecord) -> None:
        """What follows a run's end: its webhook (at least once)."""
        if record.webhook_url and self.webhooks is not None:
            await self.webhooks.submit(record.run_id)


def _check_options(options: QueueOptions) -> MultitaskStrategy:
    problems: list[FieldViolation] = []
    strategy = MultitaskStrategy.REJECT
    if options.multitask_strategy:
        try:
            strategy = MultitaskStrategy(options.multitask_strategy)
        except ValueError:
            names = ", ".join(s.value for s in MultitaskStrategy)
            problems.append(FieldViolation("multitask_strategy", f"must be one of {names}"))
    if options.webhook_url and (why := validate_webhook_url(options.webhook_url)) is not None:
        problems.append(FieldViolation("webhook_url", why))
    if len(options.metadata) > MAX_METADATA_KEYS:
        problems.append(FieldViolation("metadata", f"must hold at most {MAX_METADATA_KEYS} keys"))
    for key, value in options.metadata.items():
        if not isinstance(value, str) or len(value) > MAX_METADATA_CHARS or len(key) > 64:
            problems.append(
                FieldViolation(
                    f"metadata.{key[:64]}",
                    f"keys are at most 64 characters and values strings of at most "
                    f"{MAX_METADATA_CHARS}",
                )
            )
    if problems:
        text = "; ".join(f"{p.field}: {p.description}" for p in problems)
        raise InvalidArgument(text, violations=problems)
    return strategy


__all__ = ["QueueOptions", "QueueSettings", "QueuedRuns"]
