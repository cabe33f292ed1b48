"""Adapter: audit records of invocations, published to the JetStream audit stream.

Recording never blocks or slows an invocation: records go into a bounded queue
that a background task publishes as `AuditBatch` messages (what queued up within
50 ms, at most 256) on `agentrt.audit.tools.invoke`, stream `AGENTRT_AUDIT`,
each with a unique `Nats-Msg-Id` so a retried batch is stored once. While NATS
is down records wait in the queue; if it overflows the oldest are dropped and the
loss is logged with a count. Records carry tool, agent, task, run, outcome,
duration and byte counts — never arguments, file contents or secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from google.protobuf import timestamp_pb2
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from agentrt.events.v1 import audit_events_pb2
from agentrt_kit.concurrency import cancel_and_wait
from agentrt_kit.nats import MSG_ID_HEADER, Names, NatsClient, ensure_stream
from agentrt_kit.resilience import jittered_backoff
from tool_service.application.ports import AuditEntry

log = logging.getLogger(__name__)


def to_record(entry: AuditEntry, record_id: str, at: float) -> audit_events_pb2.AuditRecord:
    """The AuditRecord protobuf of an entry that happened at `at` (epoch seconds)."""
    occurred = timestamp_pb2.Timestamp(seconds=int(at), nanos=int((at % 1) * 1e9))
    return audit_events_pb2.AuditRecord(
        record_id=record_id,
        occurred_at=occurred,
        service="tools",
        request_id=entry.request_id,
        principal_id=entry.actor or entry.context.agent_id,
        action="tool.invoke",
        target=entry.tool[:128],
        outcome=entry.outcome,
        detail=entry.detail,
        duration_ms=entry.duration_ms,
        bytes=entry.bytes,
        agent_id=entry.context.agent_id,
        run_id=entry.context.run_id,
        task_id=entry.context.task_id,
    )


class NatsAuditSink:
    """AuditSink publishing in the background."""

    def __init__(
        self,
        client: NatsClient,
        names: Names,
        *,
        capacity: int = 10_000,
        max_age_seconds: float = 90 * 86_400,
        linger: float = 0.05,
    ) -> None:
        self._client = client
        self.subject = names.subject("audit", "tools", "invoke")
        self._config = StreamConfig(
            name=names.stream("audit"),
            subjects=[names.subject("audit", ">")],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=max_age_seconds,
            duplicate_window=600.0,
        )
        # Entries wait as they are; building the protobuf happens in the publisher, off
        # the invocation's path.
        self._queue: asyncio.Queue[tuple[AuditEntry, float]] = asyncio.Queue(capacity)
        self._task: asyncio.Task[None] | None = None
        self._linger = linger
        self.dropped = 0

    def record(self, entry: AuditEntry) -> None:
        """Queue a record (drops the oldest when full)."""
        if self._queue.full():
            self._queue.get_nowait()
            self._queue.task_done()  # or `stop()` would wait its whole timeout for it
            self.dropped += 1
            if self.dropped in (1, 100) or self.dropped % 10_000 == 0:
                log.error("audit queue full: records dropped", extra={"dropped": self.dropped})
        self._queue.put_nowait((entry, time.time()))

    async def start(self) -> None:
        """Begin publishing in the background."""
        self._task = asyncio.create_task(self._publish_forever(), name="audit-publisher")

    async def stop(self, timeout: float = 5.0) -> None:
        """Publish what is queued (within `timeout`), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        await cancel_and_wait(self._task)

    async def _publish_forever(self) -> None:
        backoff = jittered_backoff(0.2, 5.0)
        ready = False
        while True:
            queued = [await self._queue.get()]
            # Let records gather for a moment: one publish (and acknowledgement) per batch
            # instead of per call is most of what auditing costs a busy service.
            await asyncio.sleep(self._linger)
            while len(queued) < 256 and not self._queue.empty():
                queued.append(self._queue.get_nowait())
            batch = audit_events_pb2.AuditBatch(
                records=[to_record(entry, uuid.uuid4().hex, at) for entry, at in queued]
            )
            payload, batch_id = batch.SerializeToString(), uuid.uuid4().hex
            while True:
                try:
                    if not self._client.connected:
                        raise ConnectionError("NATS is not connected")
                    js = self._client.js
                    if not ready:
                        await ensure_stream(js, self._config)
                        ready = True
                    await js.publish(
                        self.subject, payload, headers={MSG_ID_HEADER: batch_id}, timeout=5.0
                    )
                    backoff = jittered_backoff(0.2, 5.0)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    ready = False
                    log.warning("audit publish failed, retrying", extra={"error": str(e)})
                    await asyncio.sleep(next(backoff))
            for _ in queued:
                self._queue.task_done()
