"""Reading the JetStream audit stream back in tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors

from agentrt.events.v1 import audit_events_pb2
from agentrt_kit.nats import MSG_ID_HEADER, NatsClient


@dataclass
class Stored:
    """One message of the audit stream."""

    subject: str
    msg_id: str
    size: int
    records: list[audit_events_pb2.AuditRecord]


async def stored(url: str, stream: str) -> list[Stored]:
    """Every message held by the stream, in order."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return []
        out: list[Stored] = []
        if info.state.messages == 0:  # created by the publisher, nothing stored yet
            return out
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            batch = audit_events_pb2.AuditBatch.FromString(msg.data or b"")
            out.append(
                Stored(
                    msg.subject or "",
                    (msg.headers or {}).get(MSG_ID_HEADER, ""),
                    len(msg.data or b""),
                    list(batch.records),
                )
            )
        return out
    finally:
        await nc.close()


async def wait_for_records(
    url: str, stream: str, count: int, timeout: float = 20.0
) -> list[Stored]:
    """The stream's messages once they hold `count` records (or whatever is there at timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            messages = await stored(url, stream)
        except (nats.errors.Error, TimeoutError, OSError):
            messages = []  # JetStream still recovering after a restart: ask again
        if sum(len(m.records) for m in messages) >= count or time.monotonic() > deadline:
            return messages
        await asyncio.sleep(0.05)


def records_of(messages: list[Stored]) -> list[audit_events_pb2.AuditRecord]:
    """Every record of the messages, in order."""
    return [r for m in messages for r in m.records]


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[NatsClient]:
    """A kit NATS client, connected, for a publisher under test."""
    client = NatsClient(url, name="audit-test")
    await client.start()
    try:
        assert await client.wait_connected(10)
        yield client
    finally:
        await client.close()
