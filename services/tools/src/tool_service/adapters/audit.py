"""Adapter: invocations as audit records, published by the kit's `AuditPublisher`.

Each `AuditEntry` becomes an `AuditEvent` with action `invoke`, so the publisher
(service `tools`) puts it on `agentrt.audit.tools.invoke`, stream `AGENTRT_AUDIT`;
batching, retries while NATS is down and dropping on overflow are the publisher's
(`agentrt_kit.audit`). Records carry tool, agent, task, run, outcome, duration
and byte counts — never arguments, file contents or secrets.
"""

from __future__ import annotations

from agentrt_kit.audit import AuditEvent, AuditPublisher
from tool_service.application.ports import AuditEntry

SERVICE = "tools"
ACTION = "invoke"


def to_event(entry: AuditEntry) -> AuditEvent:
    """The audit event of one invocation."""
    return AuditEvent(
        action=ACTION,
        outcome=entry.outcome,
        target=entry.tool[:128],
        detail=entry.detail,
        principal_id=entry.actor or entry.context.agent_id,
        request_id=entry.request_id,
        duration_ms=entry.duration_ms,
        bytes=entry.bytes,
        agent_id=entry.context.agent_id,
        run_id=entry.context.run_id,
        task_id=entry.context.task_id,
    )


class PublishedAuditSink:
    """AuditSink handing each entry to an `AuditPublisher` (started and stopped by main)."""

    def __init__(self, publisher: AuditPublisher) -> None:
        self.publisher = publisher

    def record(self, entry: AuditEntry) -> None:
        """Queue the entry's record (never blocks)."""
        self.publisher.record(to_event(entry))
