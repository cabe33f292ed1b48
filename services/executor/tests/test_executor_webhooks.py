"""Run webhooks: the Standard Webhooks sender against a real local HTTP server, the worker
on the in-memory run queue, and StartRun's checks.

Loopback is reachable only where a test says so (`allowed_networks=["127.0.0.0/8"]`, as an
operator would allow an internal receiver); everywhere else the fetch tool's policy refuses
it before any connection. Signatures are verified with the `standardwebhooks` package.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import random
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import standardwebhooks
from executor_support import eventually

from agent_executor.adapters.memory import InMemoryRunStore, MemoryRunQueue
from agent_executor.adapters.webhooks import (
    USER_AGENT,
    HttpWebhookSender,
    retry_after_seconds,
    signing_key,
)
from agent_executor.application.ports import QueueDelivery
from agent_executor.application.webhooks import (
    MAX_WEBHOOK_URL_CHARS,
    Verdict,
    WebhookBackoff,
    WebhookOutcome,
    WebhookWorker,
    check_webhook,
    message_id,
    validate_webhook_url,
    webhook_body,
)
from agent_executor.config import Settings
from agent_executor.domain.runs import RunRecord, RunStatus, Usage
from agent_executor.errors import WebhooksDisabled
from agentrt_kit.concurrency import run_inline
from agentrt_kit.errors import InvalidArgument
from agentrt_kit.settings import ConfigError, env_name, load_settings
from agentrt_testkit.http import RecordingHttp, Reply

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
LOOPBACK = ["127.0.0.0/8"]
FAST = WebhookBackoff(delays=(0.01,), jitter=0.0)
CREATED = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def ended(
    run_id: str = "run-1",
    *,
    url: str = "",
    status: RunStatus = RunStatus.SUCCEEDED,
    **fields: Any,
) -> RunRecord:
    values: dict[str, Any] = {
        "task_id": "task-1",
        "context_id": "ctx-1",
        "started_at": CREATED + timedelta(seconds=1),
        "finished_at": CREATED + timedelta(seconds=5),
        "usage": Usage(11, 7),
        "tool_calls": 2,
        "webhook_url": url,
        "metadata": {"order": "42"},
        **fields,
    }
    return RunRecord(run_id, "agent-7", 3, status, CREATED, **values)


def sender(**overrides: Any) -> HttpWebhookSender:
    options: dict[str, Any] = {"timeout": 5.0, "allowed_networks": LOOPBACK, **overrides}
    return HttpWebhookSender(SECRET, **options)


def verified(hit: Any) -> Any:
    """The body, once its Standard Webhooks signature verifies (raises otherwise)."""
    return standardwebhooks.Webhook(SECRET).verify(hit.body, hit.headers)


@pytest.fixture
def http() -> Iterator[RecordingHttp]:
    with RecordingHttp() as server:
        yield server


@dataclass
class Rig:
    """A worker over a memory queue and store, running until the test ends."""

    queue: MemoryRunQueue
    store: InMemoryRunStore
    worker: WebhookWorker
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def due(self, record: RunRecord) -> None:
        self.store.records[record.run_id] = record
        await self.queue.submit(record.run_id)

    def start(self) -> None:
        self.task = asyncio.create_task(self.worker.run(self.stop))

    async def depth(self) -> int:
        return (await self.queue.stats()).depth

    async def drained(self) -> bool:
        return await self.depth() == 0


@pytest.fixture
async def make_rig() -> AsyncIterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(
        webhook_sender: Any = None,
        *,
        max_attempts: int = 8,
        ack_wait: float = 30.0,
        backoff: WebhookBackoff = FAST,
        **worker: Any,
    ) -> Rig:
        queue = MemoryRunQueue(ack_wait=ack_wait, max_attempts=max_attempts)
        store = InMemoryRunStore()
        rig = Rig(
            queue,
            store,
            WebhookWorker(
                queue=queue,
                store=store,
                call_store=run_inline,
                sender=webhook_sender or sender(),
                backoff=backoff,
                pull_timeout=0.05,
                rng=random.Random(7),
                **worker,
            ),
        )
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.stop.set()
        if rig.task is not None:
            await asyncio.wait_for(rig.task, 10)


class SpyDelivery:
    """A real delivery whose settlement the test can read."""

    def __init__(self, inner: QueueDelivery) -> None:
        self.inner = inner
        self.settled: list[tuple[str, float]] = []

    @property
    def run_id(self) -> str:
        return self.inner.run_id

    @property
    def attempt(self) -> int:
        return self.inner.attempt

    async def ack(self) -> None:
        self.settled.append(("ack", 0.0))
        await self.inner.ack()

    async def retry(self, delay: float) -> None:
        self.settled.append(("retry", delay))
        await self.inner.retry(delay)

    async def extend(self) -> None:
        await self.inner.extend()


async def one_delivery(rig: Rig, record: RunRecord) -> SpyDelivery:
    await rig.due(record)
    (delivery,) = await rig.queue.pull(1, 1.0)
    return SpyDelivery(delivery)


# ------------------------------------------------------------------ the message


async def test_an_ended_run_is_posted_signed_as_standard_webhooks(
    http: RecordingHttp, make_rig: Callable[..., Rig]
) -> None:
    http.script("/hook", Reply(204))
    rig = make_rig()
    await rig.due(ended(url=http.url("/hook?token=abc")))
    rig.start()
    await eventually(lambda: http.hits)
    await eventually(rig.drained)
    (hit,) = http.hits
    assert (hit.method, hit.path) == ("POST", "/hook?token=abc")
    assert hit.headers["webhook-id"] == "run-1:succeeded"
    assert hit.headers["user-agent"] == USER_AGENT
    assert hit.headers["content-type"] == "application/json"
    assert hit.headers["webhook-signature"].startswith("v1,")
    payload = verified(hit)
    assert payload["type"] == "run.succeeded"
    assert payload["timestamp"] == "2026-12-01T09:30:05Z"
    assert payload["data"] == {
        "run_id": "run-1",
        "agent_id": "agent-7",
        "agent_version": 3,
        "status": "succeeded",
        "task_id": "task-1",
        "context_id": "ctx-1",
        "created_at": "2026-12-01T09:30:00Z",
        "started_at": "2026-12-01T09:30:01Z",
        "finished_at": "2026-12-01T09:30:05Z",
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        "tool_calls": 2,
        "error": None,
        "attempts": 1,
        "metadata": {"order": "42"},
    }
    assert rig.queue.dead_letters == {}


async def test_a_tampered_body_or_another_secret_does_not_verify(http: RecordingHttp) -> None:
    http.script("/hook", Reply(200))
    outcome = await sender().deliver(http.url("/hook"), "run-1:failed", {"a": 1})
    assert outcome == WebhookOutcome.delivered(200)
    (hit,) = http.hits
    assert verified(hit) == {"a": 1}
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(b'{"a":2}', hit.headers)
    other = "whsec_" + base64.b64encode(bytes(32)).decode()
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(other).verify(hit.body, hit.headers)


def test_the_signature_is_the_one_the_spec_defines() -> None:
    payload = b'{"type":"run.failed"}'
    ours = sender().signature("run-9:failed", 1_700_000_000, payload)
    theirs = standardwebhooks.Webhook(SECRET).sign(
        "run-9:failed", datetime.fromtimestamp(1_700_000_000, UTC), payload
    )
    assert ours == theirs


@pytest.mark.parametrize(
    ("status", "event_type"),
    [
        (RunStatus.FAILED, "run.failed"),
        (RunStatus.CANCELLED, "run.cancelled"),
        (RunStatus.TIMED_OUT, "run.timed_out"),
    ],
)
def test_a_run_that_did_not_succeed_carries_its_error(status: RunStatus, event_type: str) -> None:
    record = ended(status=status, error_code="TIMEOUT", error_message="took too long")
    body = webhook_body(record)
    assert body["type"] == event_type
    assert body["data"]["status"] == status.value
    assert body["data"]["error"] == {"code": "TIMEOUT", "message": "took too long"}
    assert message_id(record) == f"run-1:{status.value}"


def test_a_run_that_has_not_ended_has_no_webhook_body() -> None:
    record = ended(status=RunStatus.RUNNING)
    record.finished_at = None
    with pytest.raises(ValueError, match="has not ended"):
        webhook_body(record)


def test_naive_timestamps_are_taken_as_utc_and_missing_ones_are_null() -> None:
    record = ended(started_at=None)
    record.created_at = datetime(2026, 1, 2, 3, 4, 5)  # naive: what an old row may hold
    data = webhook_body(record)["data"]
    assert data["created_at"] == "2026-01-02T03:04:05Z"
    assert data["started_at"] is None


# ------------------------------------------------------------------ how answers are judged


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DELIVERED),
        (202, Verdict.DELIVERED),
        (204, Verdict.DELIVERED),
        (400, Verdict.GIVE_UP),
        (401, Verdict.GIVE_UP),
        (404, Verdict.GIVE_UP),
        (410, Verdict.GIVE_UP),
        (422, Verdict.GIVE_UP),
        (408, Verdict.RETRY),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (502, Verdict.RETRY),
        (503, Verdict.RETRY),
    ],
)
async def test_the_status_decides_the_outcome(
    http: RecordingHttp, status: int, verdict: Verdict
) -> None:
    http.script("/hook", Reply(status))
    outcome = await sender().deliver(http.url("/hook"), "run-1:succeeded", {})
    assert (outcome.verdict, outcome.status) == (verdict, status)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_given_up_and_not_followed(http: RecordingHttp, status: int) -> None:
    http.script("/hook", Reply(status, headers={"Location": "https://elsewhere.example/x?t=1"}))
    http.script("/moved", Reply(204))
    outcome = await sender().deliver(http.url("/hook"), "run-1:succeeded", {})
    assert (outcome.verdict, outcome.status) == (Verdict.GIVE_UP, status)
    assert "https://elsewhere.example" in outcome.detail
    assert "t=1" not in outcome.detail
    assert [h.path for h in http.hits] == ["/hook"]


async def test_a_relative_redirect_says_so(http: RecordingHttp) -> None:
    http.script("/hook", Reply(308, headers={"Location": "/moved"}))
    outcome = await sender().deliver(http.url("/hook"), "run-1:succeeded", {})
    assert outcome.verdict is Verdict.GIVE_UP
    assert "another path here" in outcome.detail


async def test_retry_after_is_read_from_the_answer(http: RecordingHttp) -> None:
    http.script("/hook", Reply(429, headers={"Retry-After": "7"}))
    outcome = await sender().deliver(http.url("/hook"), "run-1:succeeded", {})
    assert (outcome.verdict, outcome.retry_after) == (Verdict.RETRY, 7.0)


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds(format_datetime(now + timedelta(minutes=2), usegmt=True), now) == (
        120.0
    )
    assert retry_after_seconds("Tue, 01 Dec 2026 11:00:00", now) == 0.0  # past, no zone
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds("", now) is None
    assert retry_after_seconds(None, now) is None


async def test_a_receiver_that_does_not_answer_in_time_is_retried(http: RecordingHttp) -> None:
    http.script("/slow", Reply(204, delay=30))
    outcome = await sender(timeout=0.3).deliver(http.url("/slow"), "run-1:succeeded", {})
    assert (outcome.verdict, outcome.status) == (Verdict.RETRY, 0)
    assert outcome.detail == "no answer within 0.3 s"
    await eventually(lambda: http.connections == 1)


async def test_a_receiver_that_is_not_listening_is_retried() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcome = await sender().deliver(f"http://127.0.0.1:{port}/hook", "run-1:succeeded", {})
    assert outcome.verdict is Verdict.RETRY
    assert "cannot reach 127.0.0.1" in outcome.detail


async def test_a_name_that_does_not_resolve_is_retried() -> None:
    async def no_answer(host: str, port: int) -> list[Any]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    outcome = await sender(resolver=no_answer).deliver(
        "https://hooks.example/x", "run-1:succeeded", {}
    )
    assert outcome.verdict is Verdict.RETRY
    assert "cannot resolve hooks.example" in outcome.detail


async def test_a_resolver_that_hangs_is_cut_by_the_timeout() -> None:
    async def hanging(host: str, port: int) -> list[Any]:
        await asyncio.sleep(60)
        return []

    outcome = await sender(resolver=hanging, timeout=0.2).deliver(
        "https://hooks.example/x", "run-1:succeeded", {}
    )
    assert outcome.verdict is Verdict.RETRY
    assert "no answer within 0.2 s" in outcome.detail


# ------------------------------------------------------------------ the network policy


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("127.0.0.1", "Loopback"),
        ("localhost", "Loopback"),  # a name that resolves to loopback
        ("[::1]", "Loopback"),
    ],
)
async def test_loopback_is_never_contacted_without_an_allowance(
    http: RecordingHttp, host: str, why: str
) -> None:
    http.script("/hook", Reply(204))
    outcome = await sender(allowed_networks=[]).deliver(
        http.url("/hook", host=host), "run-1:succeeded", {}
    )
    assert outcome.verdict is Verdict.GIVE_UP
    assert outcome.detail.startswith("URL refused: ")
    assert why in outcome.detail
    assert http.connections == 0
    assert http.hits == []


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/", "Link Local"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata endpoint"),
        ("http://10.0.0.8/hook", "Private-Use"),
        ("http://[fd00:ec2::254]/", "Unique-Local"),
        ("ftp://hooks.example/", "scheme 'ftp'"),
        ("https://user:pw@hooks.example/", "user name or password"),
    ],
)
async def test_internal_and_malformed_urls_are_given_up_at_once(url: str, why: str) -> None:
    outcome = await sender().deliver(url, "run-1:succeeded", {})
    assert outcome.verdict is Verdict.GIVE_UP
    assert why in outcome.detail


async def test_denied_networks_and_the_host_allow_list_apply(http: RecordingHttp) -> None:
    http.script("/hook", Reply(204))
    denied = sender(denied_networks=["127.0.0.1/32"])
    outcome = await denied.deliver(http.url("/hook"), "run-1:succeeded", {})
    assert (outcome.verdict, "on the deny list" in outcome.detail) == (Verdict.GIVE_UP, True)
    listed = sender(allow_hosts=["hooks.example"])
    outcome = await listed.deliver(http.url("/hook"), "run-1:succeeded", {})
    assert (outcome.verdict, "not on the allow list" in outcome.detail) == (Verdict.GIVE_UP, True)
    assert http.connections == 0


async def test_a_name_is_connected_to_at_the_address_that_was_checked(
    http: RecordingHttp,
) -> None:
    http.script("/hook", Reply(204))
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[Any]:
        lookups.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    outcome = await sender(resolver=resolver).deliver(
        http.url("/hook", host="hooks.example"), "run-1:succeeded", {}
    )
    assert outcome.verdict is Verdict.DELIVERED
    assert lookups == ["hooks.example"]
    assert http.hits[0].headers["host"] == f"hooks.example:{http.port}"


# ------------------------------------------------------------------ the worker


async def test_a_500_is_retried_until_the_receiver_takes_it(
    http: RecordingHttp, make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    http.script("/hook", Reply(500), Reply(503), Reply(204))
    rig = make_rig()
    await rig.due(ended(url=http.url("/hook")))
    caplog.set_level(logging.INFO, logger="agent_executor.application.webhooks")
    rig.start()
    await eventually(lambda: len(http.hits) == 3)
    await eventually(rig.drained)
    assert {h.headers["webhook-id"] for h in http.hits} == {"run-1:succeeded"}
    assert [verified(h)["type"] for h in http.hits] == ["run.succeeded"] * 3
    delivered = [r for r in caplog.records if r.getMessage() == "webhook delivered"]
    assert [(r.attempt, r.status) for r in delivered] == [(3, 204)]  # type: ignore[attr-defined]
    assert rig.queue.dead_letters == {}


async def test_a_400_is_given_up_after_one_attempt(
    http: RecordingHttp, make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    http.script("/hook", Reply(400))
    rig = make_rig()
    delivery = await one_delivery(rig, ended(url=http.url("/hook")))
    await rig.worker.handle(delivery)
    assert delivery.settled == [("ack", 0.0)]
    assert len(http.hits) == 1
    assert await rig.depth() == 0
    assert rig.queue.dead_letters == {}
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == "webhook given up"
    assert (warning.status, warning.host) == (400, "127.0.0.1")  # type: ignore[attr-defined]


async def test_a_refused_address_is_given_up_without_a_connection(
    http: RecordingHttp, make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig(sender(allowed_networks=[]))
    delivery = await one_delivery(rig, ended(url=http.url("/hook", host="localhost")))
    await rig.worker.handle(delivery)
    assert delivery.settled == [("ack", 0.0)]
    assert http.connections == 0


@pytest.mark.parametrize(("retry_after", "delay"), [("2", 2.0), ("86400", 3600.0)])
async def test_retry_after_is_honoured_within_the_cap(
    http: RecordingHttp, make_rig: Callable[..., Rig], retry_after: str, delay: float
) -> None:
    http.script("/hook", Reply(429, headers={"Retry-After": retry_after}))
    rig = make_rig(backoff=WebhookBackoff())
    delivery = await one_delivery(rig, ended(url=http.url("/hook")))
    await rig.worker.handle(delivery)
    assert delivery.settled == [("retry", delay)]


async def test_without_retry_after_the_backoff_schedule_applies(
    http: RecordingHttp, make_rig: Callable[..., Rig]
) -> None:
    http.script("/hook", Reply(503))
    rig = make_rig(backoff=WebhookBackoff())
    delivery = await one_delivery(rig, ended(url=http.url("/hook")))
    await rig.worker.handle(delivery)
    ((verb, delay),) = delivery.settled
    assert verb == "retry"
    assert 4.0 <= delay <= 6.0  # the first step, 5 s, give or take 20 %


def test_the_backoff_grows_then_stays_at_its_cap() -> None:
    backoff = WebhookBackoff()
    rng = random.Random(1)
    bases = [5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 3600.0, 3600.0]
    for attempt, base in enumerate(bases, start=1):
        delay = backoff.delay(attempt, None, rng)
        assert base * 0.8 <= delay <= min(base * 1.2, backoff.maximum)
    assert backoff.delay(3, 0.5, rng) == 0.5
    assert backoff.delay(3, -4.0, rng) == 0.0


async def test_a_webhook_failing_every_attempt_is_dead_lettered(
    http: RecordingHttp, make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    http.script("/hook", Reply(503))
    rig = make_rig(max_attempts=3)
    await rig.due(ended(url=http.url("/hook?secret-token")))
    rig.start()
    await eventually(lambda: "run-1" in rig.queue.dead_letters)
    await eventually(rig.drained)
    assert len(http.hits) == 3
    letter = rig.queue.dead_letters["run-1"]
    assert letter["attempt"] == 3
    assert "after 3 attempts" in letter["reason"]
    assert "answered 503" in letter["reason"]
    (line,) = [r for r in caplog.records if r.getMessage() == "webhook dead-lettered"]
    assert line.levelno == logging.WARNING
    assert (line.run_id, line.host, line.status) == ("run-1", "127.0.0.1", 503)  # type: ignore[attr-defined]
    assert "secret-token" not in str(line.__dict__)


async def test_timeouts_are_retried_then_dead_lettered(
    http: RecordingHttp, make_rig: Callable[..., Rig]
) -> None:
    http.script("/slow", Reply(204, delay=30))
    rig = make_rig(sender(timeout=0.2), max_attempts=2)
    await rig.due(ended(url=http.url("/slow")))
    rig.start()
    await eventually(lambda: "run-1" in rig.queue.dead_letters)
    await eventually(lambda: http.connections == 2)  # the server may see the last one late
    assert "no answer within 0.2 s" in rig.queue.dead_letters["run-1"]["reason"]


async def test_a_delivery_past_max_attempts_is_dead_lettered_without_a_call(
    http: RecordingHttp, make_rig: Callable[..., Rig]
) -> None:
    """The attempt before never settled (its executor stopped mid-call): the queue's backstop."""
    http.script("/hook", Reply(204))
    rig = make_rig(max_attempts=1, ack_wait=0.05)
    await rig.due(ended(url=http.url("/hook")))
    (unsettled,) = await rig.queue.pull(1, 1.0)
    (again,) = await rig.queue.pull(1, 5.0)
    assert again.attempt == 2
    await rig.worker.handle(again)
    assert http.hits == []
    assert rig.queue.dead_letters["run-1"]["attempt"] == 2


@dataclass
class GatedSender:
    """Holds every delivery until released, counting how many are held at once."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0
    most: int = 0
    delivered: list[str] = field(default_factory=list)

    async def deliver(self, url: str, message_id: str, body: Mapping[str, Any]) -> WebhookOutcome:
        self.held += 1
        self.most = max(self.most, self.held)
        try:
            await self.gate.wait()
        finally:
            self.held -= 1
        self.delivered.append(message_id)
        return WebhookOutcome.delivered(204)


async def test_the_worker_holds_at_most_its_concurrency_in_flight(
    make_rig: Callable[..., Rig],
) -> None:
    gated = GatedSender()
    rig = make_rig(gated, concurrency=4)
    for n in range(20):
        await rig.due(ended(f"run-{n}", url="https://hooks.example/x"))
    rig.start()
    await eventually(lambda: gated.held == 4)
    stats = await rig.queue.stats()
    assert stats.pending == 16  # the rest wait in the queue, not in the worker
    gated.gate.set()
    await eventually(lambda: len(gated.delivered) == 20)
    await eventually(rig.drained)
    assert gated.most == 4


@dataclass
class ScriptedSender:
    calls: list[str] = field(default_factory=list)
    fail: Exception | None = None

    async def deliver(self, url: str, message_id: str, body: Mapping[str, Any]) -> WebhookOutcome:
        self.calls.append(message_id)
        if self.fail is not None:
            raise self.fail
        return WebhookOutcome.delivered(200)


async def test_an_unknown_run_or_one_without_webhook_is_dropped_without_a_call(
    make_rig: Callable[..., Rig],
) -> None:
    scripted = ScriptedSender()
    rig = make_rig(scripted)
    await rig.queue.submit("nobody")
    (unknown,) = await rig.queue.pull(1, 1.0)
    spy = SpyDelivery(unknown)
    await rig.worker.handle(spy)
    silent = await one_delivery(rig, ended("run-2", url=""))
    await rig.worker.handle(silent)
    assert (spy.settled, silent.settled) == ([("ack", 0.0)], [("ack", 0.0)])
    assert scripted.calls == []


async def test_a_run_not_yet_ended_is_tried_again_later(make_rig: Callable[..., Rig]) -> None:
    scripted = ScriptedSender()
    rig = make_rig(scripted)
    record = ended(url="https://hooks.example/x", status=RunStatus.RUNNING)
    delivery = await one_delivery(rig, record)
    await rig.worker.handle(delivery)
    assert [verb for verb, _ in delivery.settled] == ["retry"]
    assert scripted.calls == []


async def test_a_store_or_sender_failure_is_tried_again_later(
    make_rig: Callable[..., Rig],
) -> None:
    scripted = ScriptedSender(fail=RuntimeError("a bug"))
    rig = make_rig(scripted)
    delivery = await one_delivery(rig, ended(url="https://hooks.example/x"))
    await rig.worker.handle(delivery)
    assert [verb for verb, _ in delivery.settled] == ["retry"]

    async def broken_store(fn: Callable[..., Any], *args: Any) -> Any:
        raise OSError("database is down")

    rig.worker.call_store = broken_store
    again = await one_delivery(rig, ended("run-3", url="https://hooks.example/x"))
    await rig.worker.handle(again)
    assert [verb for verb, _ in again.settled] == ["retry"]
    assert scripted.calls == ["run-1:succeeded"]


async def test_the_worker_rides_out_a_queue_outage(make_rig: Callable[..., Rig]) -> None:
    scripted = ScriptedSender()
    rig = make_rig(scripted)
    await rig.due(ended(url="https://hooks.example/x"))
    rig.queue.available = False
    rig.start()
    await asyncio.sleep(0.1)
    assert scripted.calls == []
    rig.queue.available = True
    await eventually(lambda: scripted.calls == ["run-1:succeeded"])


async def test_an_outcome_the_queue_cannot_record_is_left_for_redelivery(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    scripted = ScriptedSender()
    rig = make_rig(scripted)
    delivery = await one_delivery(rig, ended(url="https://hooks.example/x"))
    rig.queue.available = False
    await rig.worker.handle(delivery)
    rig.queue.available = True
    assert await rig.depth() == 1
    assert any(
        r.getMessage() == "webhook outcome not recorded by the queue" for r in caplog.records
    )


async def test_stopping_waits_for_deliveries_under_way(make_rig: Callable[..., Rig]) -> None:
    gated = GatedSender()
    rig = make_rig(gated)
    await rig.due(ended(url="https://hooks.example/x"))
    rig.start()
    await eventually(lambda: gated.held == 1)
    rig.stop.set()
    await asyncio.sleep(0.05)
    assert rig.task is not None
    assert not rig.task.done()
    gated.gate.set()
    await asyncio.wait_for(rig.task, 10)
    assert gated.delivered == ["run-1:succeeded"]
    assert await rig.depth() == 0


def test_a_worker_needs_room_for_one_delivery() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        WebhookWorker(
            queue=MemoryRunQueue(),
            store=InMemoryRunStore(),
            call_store=run_inline,
            sender=ScriptedSender(),
            concurrency=0,
        )


# ------------------------------------------------------------------ StartRun's checks


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example/agentrt",
        "http://hooks.example:8080/x?y=1",
        "https://[2001:db8::1]/hook",
        "http://127.0.0.1/hook",  # where it points is judged when it is called
    ],
)
def test_a_well_formed_webhook_url_passes(url: str) -> None:
    assert validate_webhook_url(url) is None
    check_webhook(url, signing=True)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example/", "scheme 'ftp' is not http or https"),
        ("hooks.example/x", "scheme '(none)'"),
        ("https://u:p@hooks.example/", "user name or password"),
        ("https:///x", "names no host"),
        ("https://hooks.example/a b", "spaces or control"),
        ("https://hooks.example/" + "a" * MAX_WEBHOOK_URL_CHARS, "longer than 2048"),
        ("http://metadata/", "metadata endpoint"),
    ],
)
def test_a_malformed_webhook_url_is_refused_naming_the_field(url: str, reason: str) -> None:
    found = validate_webhook_url(url)
    assert found is not None
    assert reason in found
    with pytest.raises(InvalidArgument) as info:
        check_webhook(url, signing=True)
    assert [v.field for v in info.value.violations] == ["webhook_url"]
    assert info.value.message.startswith("webhook_url ")


def test_without_a_secret_a_webhook_is_refused_naming_the_setting() -> None:
    check_webhook("", signing=False)  # no webhook asked for: nothing to refuse
    with pytest.raises(WebhooksDisabled) as info:
        check_webhook("https://hooks.example/x", signing=False)
    assert info.value.reason == "WEBHOOKS_DISABLED"
    assert env_name(Settings, "webhook_secret") in info.value.message


# ------------------------------------------------------------------ settings


def test_webhook_settings_default_to_off_and_nothing_private() -> None:
    settings = Settings()
    assert settings.webhook_secret is None
    assert settings.webhook_timeout_seconds == 10.0
    assert settings.webhook_max_attempts == 8
    assert settings.webhook_concurrency == 16
    assert settings.webhook_allowed_networks == []
    assert settings.webhook_denied_networks == []
    assert settings.webhook_allow_hosts == []


def test_webhook_settings_read_lists_and_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_EXECUTOR_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("AGENTRT_EXECUTOR_WEBHOOK_ALLOWED_NETWORKS", "10.1.0.0/16, fd00::/8")
    monkeypatch.setenv("AGENTRT_EXECUTOR_WEBHOOK_DENIED_NETWORKS", '["8.8.8.0/24"]')
    monkeypatch.setenv("AGENTRT_EXECUTOR_WEBHOOK_ALLOW_HOSTS", "*.hooks.example")
    settings = load_settings(Settings)
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == SECRET
    assert settings.webhook_allowed_networks == ["10.1.0.0/16", "fd00::/8"]
    assert settings.webhook_denied_networks == ["8.8.8.0/24"]
    assert settings.webhook_allow_hosts == ["*.hooks.example"]


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("whsec_not base64!", "followed by base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "holds 5 bytes"),
        ("whsec_" + base64.b64encode(bytes(65)).decode(), "holds 65 bytes"),
    ],
)
def test_a_bad_webhook_secret_fails_start_up_without_showing_it(secret: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(Settings, webhook_secret=secret)
    assert "AGENTRT_EXECUTOR_WEBHOOK_SECRET" in str(info.value)
    assert why in str(info.value)
    assert secret not in str(info.value)
    with pytest.raises(ValueError, match=why):
        signing_key(secret)


def test_a_bad_webhook_network_fails_start_up_naming_it() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(Settings, webhook_allowed_networks=["10.0.0.0/8", "intranet"])
    assert "AGENTRT_EXECUTOR_WEBHOOK_ALLOWED_NETWORKS" in str(info.value)
    assert "intranet" in str(info.value)


def test_the_sender_refuses_a_bad_secret_too() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        HttpWebhookSender("plain-text")


class BrokenDelivery(SpyDelivery):
    async def ack(self) -> None:
        raise RuntimeError("a bug in the queue adapter")


async def test_a_delivery_that_fails_to_settle_is_logged_and_the_worker_goes_on(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    scripted = ScriptedSender()
    rig = make_rig(scripted)
    await rig.due(ended(url="https://hooks.example/x"))
    pulled = rig.queue.pull

    async def pull_broken(max_count: int, timeout: float) -> Any:
        return [BrokenDelivery(d) for d in await pulled(max_count, timeout)]

    rig.queue.pull = pull_broken  # type: ignore[method-assign]
    rig.start()
    await eventually(
        lambda: any(r.getMessage() == "webhook delivery failed" for r in caplog.records)
    )
    assert rig.task is not None
    assert not rig.task.done()
    assert scripted.calls == ["run-1:succeeded"]
