"""The audit publisher against a real nats-server: batches, subjects, outages, overflow, log."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from agentrt_kit.audit import (
    MAX_BATCH_BYTES,
    MAX_BATCH_RECORDS,
    MAX_FIELD_CHARS,
    AuditEvent,
    AuditPublisher,
)
from agentrt_kit.logging import JsonFormatter
from agentrt_kit.nats import Names, NatsClient, StreamLimits
from agentrt_testkit.audit import connected, records_of, stored, wait_for_records

LIMITS = StreamLimits(3_600.0, 64 * 1024**2)


def event(action: str, target: str, **fields: Any) -> AuditEvent:
    return AuditEvent(action=action, target=target, outcome="succeeded", **fields)


# ================================================================== naming


def test_the_subject_is_audit_service_action() -> None:
    names = Names("p1")
    publisher = AuditPublisher(
        NatsClient("nats://127.0.0.1:1", name="x"), names, "tools", limits=LIMITS
    )
    assert publisher.subject("invoke") == "p1.audit.tools.invoke"
    assert publisher.subject("agent.create") == "p1.audit.tools.agent.create"


@pytest.mark.parametrize("action", ["", "a..b", "a.", ".a", "a.*", "a.>", "a b", "x\ny", "é"])
def test_an_action_that_is_not_subject_tokens_is_refused(action: str) -> None:
    publisher = AuditPublisher(
        NatsClient("nats://127.0.0.1:1", name="x"), Names("p"), "gw", limits=LIMITS
    )
    with pytest.raises(ValueError, match="audit action"):
        publisher.record(AuditEvent(action=action))
    assert publisher.dropped == 0


@pytest.mark.parametrize("service", ["", "a.b", "*", "gate way"])
def test_a_service_that_is_not_one_subject_token_is_refused(service: str) -> None:
    with pytest.raises(ValueError, match="service"):
        AuditPublisher(
            NatsClient("nats://127.0.0.1:1", name="x"), Names("p"), service, limits=LIMITS
        )


# ============================================================== publishing


async def test_records_go_out_as_one_batch_per_action_subject(
    nats_server: Any, nats_prefix: str
) -> None:
    names = Names(nats_prefix)
    async with connected(nats_server.url) as client:
        publisher = AuditPublisher(client, names, "gateway", limits=LIMITS, linger=0.5)
        await publisher.start()
        before = time.time()
        publisher.record(
            event(
                "agent.create",
                "a1",
                detail="created",
                principal_id="alice",
                request_id="req-1",
                duration_ms=12,
                bytes=345,
                agent_id="agent-7",
                run_id="run-3",
                task_id="task-1",
            )
        )
        publisher.record(event("chat.completion", "model-x"))
        publisher.record(event("agent.create", "a2"))
        recorded = time.time()
        messages = await wait_for_records(nats_server.url, names.stream("audit"), 3)
        published = time.time()
        await publisher.stop()
    assert names.stream("audit") == f"{nats_prefix.upper()}_AUDIT"
    assert [(m.subject, [r.target for r in m.records]) for m in messages] == [
        (f"{nats_prefix}.audit.gateway.agent.create", ["a1", "a2"]),
        (f"{nats_prefix}.audit.gateway.chat.completion", ["model-x"]),
    ]
    assert len({m.msg_id for m in messages}) == 2
    assert all(len(m.msg_id) == 32 for m in messages)
    first, _, chat = records_of(messages)
    assert (first.service, first.action, first.outcome, first.detail) == (
        "gateway",
        "agent.create",
        "succeeded",
        "created",
    )
    assert (first.principal_id, first.request_id) == ("alice", "req-1")
    assert (first.agent_id, first.run_id, first.task_id) == ("agent-7", "run-3", "task-1")
    assert (first.duration_ms, first.bytes) == (12, 345)
    assert chat.action == "chat.completion"
    # stamped when recorded, not when published half a second later
    for record in records_of(messages):
        at = record.occurred_at.ToNanoseconds() / 1e9
        assert before - 0.01 <= at <= recorded + 0.01 < published
    assert len({r.record_id for r in records_of(messages)}) == 3
    assert all(len(r.record_id) == 32 for r in records_of(messages))


async def test_a_round_carries_at_most_256_records(nats_server: Any, nats_prefix: str) -> None:
    names = Names(nats_prefix)
    async with connected(nats_server.url) as client:
        publisher = AuditPublisher(client, names, "tools", limits=LIMITS)
        for n in range(300):  # queued before the publisher starts: all ready at once
            publisher.record(event("invoke", f"call-{n}"))
        await publisher.start()
        messages = await wait_for_records(nats_server.url, names.stream("audit"), 300)
        await publisher.stop()
    assert [len(m.records) for m in messages] == [MAX_BATCH_RECORDS, 300 - MAX_BATCH_RECORDS]
    assert [r.target for r in records_of(messages)] == [f"call-{n}" for n in range(300)]


async def test_oversized_records_are_capped_and_split_into_batches_nats_accepts(
    nats_server: Any, nats_prefix: str
) -> None:
    names = Names(nats_prefix)
    huge = "x" * 5 * MAX_FIELD_CHARS
    async with connected(nats_server.url) as client:
        publisher = AuditPublisher(client, names, "gateway", limits=LIMITS)
        for n in range(200):  # uncapped, one round would be ~7 MB, over NATS's 1 MiB limit
            publisher.record(
                AuditEvent(
                    action="chat.completion",
                    target=f"{n}:{huge}",
                    detail=huge,
                    principal_id=huge,
                    request_id=huge,
                    outcome=huge,
                    agent_id=huge,
                    run_id=huge,
                )
            )
        await publisher.start()
        messages = await wait_for_records(nats_server.url, names.stream("audit"), 200)
        await publisher.stop()
    records = records_of(messages)
    assert [int(r.target.split(":")[0]) for r in records] == list(range(200))
    assert all(len(r.detail) == len(r.target) == MAX_FIELD_CHARS for r in records)
    assert len(messages) > 1
    assert all(m.size <= MAX_BATCH_BYTES for m in messages)
    assert len({m.msg_id for m in messages}) == len(messages)


async def test_records_wait_out_a_nats_outage_and_arrive_once(
    make_nats_server: Callable[[], Any], nats_prefix: str
) -> None:
    server = make_nats_server()
    names = Names(nats_prefix)
    stream = names.stream("audit")
    async with connected(server.url) as client:
        publisher = AuditPublisher(client, names, "tools", limits=LIMITS)
        await publisher.start()
        publisher.record(event("invoke", "before"))
        assert len(records_of(await wait_for_records(server.url, stream, 1))) == 1

        server.stop()
        deadline = time.monotonic() + 10
        while client.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not client.connected
        for n in range(1, 4):
            publisher.record(event("invoke" if n % 2 else "other.action", f"during-{n}"))
        await asyncio.sleep(0.5)  # the publisher tries, fails and waits

        server.start()
        assert len(records_of(await wait_for_records(server.url, stream, 4))) >= 4
        # give anything published twice the time to show up as a fifth record
        records = records_of(await wait_for_records(server.url, stream, 5, timeout=0.5))
        await publisher.stop()
    assert sorted(r.target for r in records) == ["before", "during-1", "during-2", "during-3"]
    assert len({r.record_id for r in records}) == 4
    assert publisher.dropped == 0


async def test_a_full_queue_drops_the_oldest_and_counts(
    nats_server: Any, nats_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    names = Names(nats_prefix)
    async with connected(nats_server.url) as client:
        publisher = AuditPublisher(client, names, "tools", limits=LIMITS, capacity=3)
        with caplog.at_level(logging.ERROR, logger="agentrt_kit.audit"):
            for n in range(5):  # nothing publishes yet: the queue fills up
                publisher.record(event("invoke", f"call-{n}"))
        assert publisher.dropped == 2
        (complaint,) = [r for r in caplog.records if r.name == "agentrt_kit.audit"]
        assert complaint.getMessage() == "audit queue full: records dropped"
        assert complaint.__dict__["dropped"] == 1  # logged at the first loss, not at every one
        await publisher.start()
        records = records_of(await wait_for_records(nats_server.url, names.stream("audit"), 3))
        started = time.monotonic()
        await publisher.stop(timeout=5.0)
        assert time.monotonic() - started < 2.0  # nothing left waiting for the dropped ones
    assert [r.target for r in records] == ["call-2", "call-3", "call-4"]


async def test_stop_publishes_what_is_queued_first(nats_server: Any, nats_prefix: str) -> None:
    names = Names(nats_prefix)
    async with connected(nats_server.url) as client:
        publisher = AuditPublisher(client, names, "tools", limits=LIMITS, linger=0.3)
        await publisher.start()
        for n in range(3):
            publisher.record(event("invoke", f"call-{n}"))
        await publisher.stop()
        # no waiting: stop returned only once JetStream had acknowledged them
        records = records_of(await stored(nats_server.url, names.stream("audit")))
    assert [r.target for r in records] == ["call-0", "call-1", "call-2"]


async def test_stop_gives_up_after_its_timeout_while_nats_is_down(
    make_nats_server: Callable[[], Any], nats_prefix: str
) -> None:
    server = make_nats_server()
    async with connected(server.url) as client:
        publisher = AuditPublisher(client, Names(nats_prefix), "tools", limits=LIMITS)
        await publisher.start()
        server.stop()
        publisher.record(event("invoke", "lost"))
        started = time.monotonic()
        await publisher.stop(timeout=0.3)
        assert time.monotonic() - started < 2.0
        assert "audit-publisher" not in {t.get_name() for t in asyncio.all_tasks()}


# ============================================================== log mirror


async def test_the_log_mirror_writes_each_record_once_escaped(
    nats_server: Any, nats_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    names = Names(nats_prefix)
    forged = 'x\n{"level": "INFO", "msg": "audit", "principal_id": "admin"}'
    async with connected(nats_server.url) as client:
        publisher = AuditPublisher(client, names, "gateway", limits=LIMITS, log_records=True)
        await publisher.start()
        with caplog.at_level(logging.INFO, logger="agentrt.audit"):
            publisher.record(
                AuditEvent(
                    action="agent.create",
                    outcome="allowed",
                    target=forged,
                    detail="nel\x85ls\u2028ps\u2029del\x7f",
                    principal_id="alice",
                    duration_ms=7,
                )
            )
        (stored_record,) = records_of(
            await wait_for_records(nats_server.url, names.stream("audit"), 1)
        )
        await publisher.stop()
    (line,) = [r for r in caplog.records if r.name == "agentrt.audit"]
    assert (line.levelno, line.getMessage()) == (logging.INFO, "audit")
    fields = line.__dict__
    assert fields["record_id"] == stored_record.record_id  # the log and the stream agree
    assert (fields["action"], fields["outcome"], fields["principal_id"]) == (
        "agent.create",
        "allowed",
        "alice",
    )
    assert (fields["duration_ms"], fields["bytes"]) == (7, 0)
    assert "agent_id" not in fields  # empty strings are left out
    assert fields["target"] == 'x\\n{"level": "INFO", "msg": "audit", "principal_id": "admin"}'
    assert fields["detail"] == "nel\\x85ls\\u2028ps\\u2029del\\x7f"
    # whatever the handler, the record is one line; the stream keeps the raw values
    naive = logging.Formatter("%(message)s %(target)s %(detail)s")
    for formatted in (JsonFormatter("gateway").format(line), naive.format(line)):
        assert len(formatted.splitlines()) == 1
    assert stored_record.target == forged


async def test_without_the_log_mirror_nothing_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    publisher = AuditPublisher(
        NatsClient("nats://127.0.0.1:1", name="x"), Names("p"), "tools", limits=LIMITS
    )
    with caplog.at_level(logging.INFO, logger="agentrt.audit"):
        publisher.record(event("invoke", "read_lines"))
    assert not [r for r in caplog.records if r.name == "agentrt.audit"]


def test_the_log_mirror_lines_carry_the_fields_as_json() -> None:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter("gateway"))
    logger = logging.getLogger("agentrt.audit")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        publisher = AuditPublisher(
            NatsClient("nats://127.0.0.1:1", name="x"),
            Names("p"),
            "gateway",
            limits=LIMITS,
            log_records=True,
        )
        publisher.record(AuditEvent(action="chat.completion", target="m\r\nx", bytes=9))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    (line,) = buf.getvalue().splitlines()
    assert '"msg": "audit"' in line
    assert '"action": "chat.completion"' in line
    assert '"target": "m\\\\r\\\\nx"' in line
    assert '"bytes": 9' in line
