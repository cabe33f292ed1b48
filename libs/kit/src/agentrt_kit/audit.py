"""Audit trail: what a service did, published in the background to the JetStream audit stream.

Kit, NATS adapter. `AuditPublisher.record` never blocks or slows its caller: it
stamps the record with the time and queues it as a lightweight `AuditEvent`; a
background task builds the `agentrt.events.v1.AuditBatch` protobufs and publishes
what queued up within `linger` (at most 256 records a round), one batch per
subject `<prefix>.audit.<service>.<action>` in stream `<PREFIX>_AUDIT`, each
with a unique `Nats-Msg-Id` so a retried batch is stored once. The stream keeps
records within its `StreamLimits` (age and bytes; the oldest go first). While NATS
is down records wait in a bounded queue; when it overflows the oldest are dropped
and the loss is logged with a count. Optionally every record is also written once to the
structured log (logger `agentrt.audit`), which keeps it even when NATS is down.
Audit records never carry arguments, contents, tokens or secrets: callers only
ever pass what `AuditEvent` names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import NamedTuple

from google.protobuf import timestamp_pb2
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType

from agentrt.events.v1 import audit_events_pb2
from agentrt_kit.concurrency import cancel_and_wait
from agentrt_kit.logging import escape_control
from agentrt_kit.nats import MSG_ID_HEADER, Names, NatsClient, StreamLimits, ensure_stream
from agentrt_kit.resilience import jittered_backoff

log = logging.getLogger(__name__)
audit_log = logging.getLogger("agentrt.audit")

MAX_BATCH_RECORDS = 256
# NATS refuses messages above max_payload (1 MiB by default), and a refused batch would
# be retried forever and hold up every record behind it: batches are split below this size
# and string fields are capped so that one record always fits.
MAX_BATCH_BYTES = 512 * 1024
MAX_FIELD_CHARS = 1024
_PART = r"[A-Za-z0-9_-]+"
_SERVICE = re.compile(_PART)
_ACTION = re.compile(rf"{_PART}(?:\.{_PART})*")


class AuditEvent(NamedTuple):
    """One audited action, as the caller knows it.

    A named tuple because it is built on the caller's path (under half the cost of a
    frozen dataclass); the publisher adds the record id, the time and the service.

    Attributes:
        action: What was done, as dot-separated subject tokens (`invoke`, `agent.create`,
            `chat.completion`); it names the subject `<prefix>.audit.<service>.<action>`.
        outcome: How it ended, e.g. allowed | denied | failed | succeeded.
        target: What it was done to (a tool, an agent id, a model).
        detail: A reason code or short explanation.
        principal_id: Who did it.
        request_id: The request it belonged to.
        duration_ms: How long it took.
        bytes: How many bytes it read or wrote.
        agent_id: The agent it was done for, if any.
        run_id: The run it belonged to, if any.
        task_id: The task it belonged to, if any.
    """

    action: str
    outcome: str = ""
    target: str = ""
    detail: str = ""
    principal_id: str = ""
    request_id: str = ""
    duration_ms: int = 0
    bytes: int = 0
    agent_id: str = ""
    run_id: str = ""
    task_id: str = ""


# (event, epoch seconds of `record()`, record id or "" when the publisher makes one)
_Queued = tuple[AuditEvent, float, str]


def _cap(text: str) -> str:
    return text[:MAX_FIELD_CHARS]


def to_record(
    event: AuditEvent, *, service: str, record_id: str, at: float
) -> audit_events_pb2.AuditRecord:
    """The AuditRecord protobuf of `event`, done by `service` at `at` (epoch seconds)."""
    return audit_events_pb2.AuditRecord(
        record_id=record_id,
        occurred_at=timestamp_pb2.Timestamp(seconds=int(at), nanos=int((at % 1) * 1e9)),
        service=service,
        request_id=_cap(event.request_id),
        principal_id=_cap(event.principal_id),
        action=event.action,
        target=_cap(event.target),
        outcome=_cap(event.outcome),
        detail=_cap(event.detail),
        duration_ms=event.duration_ms,
        bytes=event.bytes,
        agent_id=_cap(event.agent_id),
        run_id=_cap(event.run_id),
        task_id=_cap(event.task_id),
    )


def _chunks(
    records: list[audit_events_pb2.AuditRecord],
) -> Iterator[list[audit_events_pb2.AuditRecord]]:
    """`records` in consecutive runs whose AuditBatch stays under MAX_BATCH_BYTES."""
    chunk: list[audit_events_pb2.AuditRecord] = []
    size = 0
    for record in records:
        n = record.ByteSize() + 4  # field tag and length prefix
        if chunk and size + n > MAX_BATCH_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(record)
        size += n
    if chunk:
        yield chunk


class AuditPublisher:
    """Publishes a service's audit records in the background (see the module docstring).

    `record` must be called from the event loop's thread.
    """

    def __init__(
        self,
        client: NatsClient,
        names: Names,
        service: str,
        *,
        limits: StreamLimits,
        capacity: int = 10_000,
        linger: float = 0.05,
        log_records: bool = False,
    ) -> None:
        """Prepare a publisher; nothing is published before `start`.

        Args:
            client: The service's NATS connection (it may be down; records then wait).
            names: Subject and stream names under the deployment's prefix.
            service: The service's name, one subject token (`tools`, `gateway`).
            limits: How long and how many bytes of records the audit stream keeps.
            capacity: How many records may wait; past it the oldest are dropped.
            linger: How long records gather before a round is published, in seconds.
            log_records: Also write each record to the `agentrt.audit` logger when it is
                recorded, with control characters escaped.

        Raises:
            ValueError: `service` is not a single subject token.
        """
        if not _SERVICE.fullmatch(service):
            raise ValueError(f"service {service!r} must be one subject token ({_PART})")
        self._client = client
        self._names = names
        self.service = service
        self._config = limits.stream_config(
            name=names.stream("audit"),
            subjects=[names.subject("audit", ">")],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,  # a full trail drops its oldest, never new records
            duplicate_window=600.0,
        )
        # Events wait as they are; building protobufs happens in the publisher, off the
        # caller's path.
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue(capacity)
        self._subjects: dict[str, str] = {}  # action -> subject, filled by `record`
        self._task: asyncio.Task[None] | None = None
        self._linger = linger
        self._log_records = log_records
        self._stream_ready = False
        self.dropped = 0

    def subject(self, action: str) -> str:
        """The subject records of `action` are published on.

        Raises:
            ValueError: `action` is not dot-separated subject tokens.
        """
        if not _ACTION.fullmatch(action):
            raise ValueError(f"audit action {action!r} must be dot-separated tokens ({_PART})")
        return self._names.subject("audit", self.service, action)

    def record(self, event: AuditEvent) -> None:
        """Queue one record (drops the oldest when the queue is full); never blocks.

        Raises:
            ValueError: `event.action` is not dot-separated subject tokens (a bug: actions
                are constants).
        """
        if event.action not in self._subjects:
            self._subjects[event.action] = self.subject(event.action)
        if self._queue.full():
            self._queue.get_nowait()
            self._queue.task_done()  # or `stop()` would wait its whole timeout for it
            self.dropped += 1
            if self.dropped in (1, 100) or self.dropped % 10_000 == 0:
                log.error("audit queue full: records dropped", extra={"dropped": self.dropped})
        record_id = ""
        if self._log_records:
            record_id = uuid.uuid4().hex  # the same id in the log and in the stream
            self._log(event, record_id)
        self._queue.put_nowait((event, time.time(), record_id))

    def _log(self, event: AuditEvent, record_id: str) -> None:
        # Written here rather than by the publisher: the log keeps the record even when it
        # waits out a NATS outage in the queue or is dropped from it.
        if not audit_log.isEnabledFor(logging.INFO):
            return
        fields: dict[str, object] = {"record_id": record_id}
        for name, value in zip(AuditEvent._fields, event, strict=True):
            if not isinstance(value, str):
                fields[name] = value
            elif value:
                # The JSON formatter escapes C0 controls but not DEL, U+0085, U+2028 or U+2029,
                # and another handler might escape nothing: a client's string must not be
                # able to forge a log line whatever the handler.
                fields[name] = escape_control(_cap(value))
        audit_log.info("audit", extra=fields)

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

    def _batches(self, queued: list[_Queued]) -> Iterator[tuple[str, bytes]]:
        """(subject, serialized AuditBatch) for one round, in order of first appearance."""
        by_subject: dict[str, list[audit_events_pb2.AuditRecord]] = {}
        for event, at, record_id in queued:
            record = to_record(
                event, service=self.service, record_id=record_id or uuid.uuid4().hex, at=at
            )
            by_subject.setdefault(self._subjects[event.action], []).append(record)
        for subject, records in by_subject.items():
            for chunk in _chunks(records):
                yield subject, audit_events_pb2.AuditBatch(records=chunk).SerializeToString()

    async def _publish_forever(self) -> None:
        while True:
            queued = [await self._queue.get()]
            # Let records gather for a moment: one publish (and acknowledgement) per batch
            # instead of per call is most of what auditing costs a busy service.
            await asyncio.sleep(self._linger)
            while len(queued) < MAX_BATCH_RECORDS and not self._queue.empty():
                queued.append(self._queue.get_nowait())
            for subject, payload in self._batches(queued):
                await self._publish(subject, payload, uuid.uuid4().hex)
            for _ in queued:
                self._queue.task_done()

    async def _publish(self, subject: str, payload: bytes, batch_id: str) -> None:
        """Publish one batch, retrying with backoff until JetStream acknowledges it."""
        backoff = jittered_backoff(0.2, 5.0)
        while True:
            try:
                if not self._client.connected:
                    raise ConnectionError("NATS is not connected")
                js = self._client.js
                if not self._stream_ready:
                    await ensure_stream(js, self._config)
                    self._stream_ready = True
                await js.publish(subject, payload, headers={MSG_ID_HEADER: batch_id}, timeout=5.0)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._stream_ready = False
                log.warning(
                    "audit publish failed, retrying", extra={"subject": subject, "error": str(e)}
                )
                await asyncio.sleep(next(backoff))
