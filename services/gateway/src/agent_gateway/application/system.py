"""Application: what the runtime serves and how it is — templates, schema, health.

Templates come from the catalogue the executors publish (503 until it has been read
once), and so does whether agents' code can run (the executors' sandboxes). Health
times a check of every dependency; `/readyz` uses those a request needs,
`/v1/health` adds the ones it only reports (NATS), the run queue's figures and the
code sandbox.
Every queue's figures are asked of the executor through one `QueueWatch`, which
`/v1/health`, `/v1/queues` and `/metrics` share.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent_gateway.application.chat import ChatLimits
from agent_gateway.application.ports import Probe, QueueSource, Templates, TemplateView
from agent_gateway.domain.queues import Queues, health_queue
from agent_gateway.domain.sandbox import CodeSandbox, code_sandbox
from agent_gateway.domain.stats import ExecutionStats
from agent_gateway.errors import bad_field
from agentrt_kit.concurrency import wait_event
from agentrt_kit.errors import AgentrtError, FailedPrecondition, NotFound, Unavailable

log = logging.getLogger(__name__)

SYNC_WAIT_SECONDS = 2.0
QUEUE_FRESH_SECONDS = 1.0  # the queues' figures are asked of the executor at most this often
SCHEMA_VERSION = "1.0.0"
SCHEMA_MAJOR, SCHEMA_MINOR = 1, 0
SCHEMA_UPDATED = "2026-11-25T00:00:00Z"
_SEMVER = re.compile(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?$")


class Checks:
    """Every dependency's check, timed."""

    def __init__(self, probes: Mapping[str, Probe]) -> None:
        self._probes = probes

    async def run(self) -> dict[str, dict[str, Any]]:
        """Each dependency's status (`ok` or `down`) and response time."""

        async def timed(probe: Probe) -> dict[str, Any]:
            began = time.perf_counter()
            up = await probe()
            elapsed = round((time.perf_counter() - began) * 1000, 2)
            return {"status": "ok" if up else "down", "response_time_ms": elapsed}

        names = list(self._probes)
        results = await asyncio.gather(*(timed(self._probes[n]) for n in names))
        return dict(zip(names, results, strict=True))

    async def ready(self) -> tuple[bool, dict[str, str]]:
        """Whether every dependency serves, and each one's status."""
        found = await self.run()
        return all(c["status"] == "ok" for c in found.values()), {
            name: c["status"] for name, c in found.items()
        }


class QueueWatch:
    """The queues' figures, asked of the executor at most once per `fresh` seconds.

    Health, `/v1/queues` and every metrics scrape read them: however many there are, the
    executor is asked at most once per `fresh` seconds (readers arriving meanwhile share
    the call), and never for longer than `timeout`. Figures that could not be asked are
    None, and that answer is kept as long as figures are, so a struggling executor is not
    pressed. (A queue whose broker is down is not None: the executor says so in it.)
    """

    def __init__(
        self,
        source: QueueSource,
        *,
        timeout: float,
        fresh: float = QUEUE_FRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._timeout = timeout
        self._fresh = fresh
        self._clock = clock
        self._lock = asyncio.Lock()
        self._asked_at: float | None = None
        self._last: Queues | None = None

    async def current(self) -> Queues | None:
        """The figures, at most `fresh` seconds old; None when they could not be asked."""
        if not self._stale():
            return self._last
        async with self._lock:
            if self._stale():  # else another reader asked while this one waited
                self._last = await self._ask()
                self._asked_at = self._clock()
        return self._last

    def _stale(self) -> bool:
        return self._asked_at is None or self._clock() - self._asked_at >= self._fresh

    async def _ask(self) -> Queues | None:
        try:
            return await self._source.queues(timeout=self._timeout)
        except AgentrtError as e:
            if self._last is not None or self._asked_at is None:  # said once per outage
                log.warning("the queues' figures cannot be asked: %s", e.message)
            return None


class Catalogue:
    """The templates, once the catalogue is in sync."""

    def __init__(self, templates: Templates) -> None:
        self._templates = templates

    async def latest(self) -> dict[str, TemplateView]:
        """The latest object of every template, by id.

        Raises:
            Unavailable: the catalogue has not been read yet.
        """
        if not await wait_event(self._templates.synced, SYNC_WAIT_SECONDS):
            raise Unavailable(
                "the template catalogue is not available yet", reason="CATALOGUE_NOT_READY"
            )
        return self._templates.latest()

    async def templates(self, framework: str | None = None) -> list[TemplateView]:
        """Every template served, optionally of one framework, by id."""
        known = await self.latest()
        return [
            known[key]
            for key in sorted(known)
            if framework is None or known[key]["framework"] == framework
        ]

    async def get(self, template_id: str) -> TemplateView:
        """One template.

        Raises:
            NotFound: TEMPLATE_NOT_FOUND.
        """
        found = (await self.latest()).get(template_id)
        if found is None:
            found = await self._templates.lookup(template_id)  # written a moment ago, perhaps
        if found is None:
            raise NotFound(
                f"template {template_id[:200]!r} is not served",
                reason="TEMPLATE_NOT_FOUND",
                metadata={"template_id": template_id[:200]},
            )
        return found

    def sandbox(self) -> CodeSandbox:
        """Whether a live executor's sandbox can run code now (from the copy held)."""
        return code_sandbox(self._templates.executor_entries(), time.time())


class System:
    """Health, the queues, the runtime schema and templates."""

    def __init__(
        self,
        catalogue: Catalogue,
        checks: Checks,
        stats: ExecutionStats,
        *,
        version: str,
        limits: ChatLimits,
        max_concurrent_runs: int,
        queue: QueueWatch,
    ) -> None:
        self.catalogue = catalogue
        self._checks = checks
        self._queue = queue
        self._stats = stats
        self.version = version
        self._limits = limits
        self._max_concurrent_runs = max_concurrent_runs
        self._started = time.monotonic()

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether every dependency is up, and the `/v1/health` facts.

        The run queue's figures and the code sandbox are reported, never judged: a deep
        queue, a broker that is down, figures that cannot be asked or no sandbox leave the
        status as the dependency checks make it.
        """
        found, queue = await asyncio.gather(self._checks.run(), self._queue.current())
        healthy = all(c["status"] == "ok" for c in found.values())
        return healthy, {
            "status": "healthy" if healthy else "unhealthy",
            "uptime_seconds": round(time.monotonic() - self._started, 3),
            "version": self.version,
            "checks": found,
            "metrics": self._stats.snapshot(),
            "queue": health_queue(queue),
            "sandbox": self.catalogue.sandbox().health(),
        }

    async def queues(self) -> Queues:
        """Every queue's figures (`GET /v1/queues`), at most a second old.

        Raises:
            Unavailable: QUEUES_UNAVAILABLE, the executor could not be asked.
        """
        found = await self._queue.current()
        if found is None:
            raise Unavailable(
                "the executor cannot be asked for the queues' figures now",
                reason="QUEUES_UNAVAILABLE",
            )
        return found

    async def schema(self, requested: str | None = None) -> dict[str, Any]:
        """What this runtime supports (`/v1/schema`); refuses another major version."""
        if requested is not None:
            _compatible(requested)
        known = await self.catalogue.latest()
        sandbox = self.catalogue.sandbox()  # read once the catalogue is (executors' entries too)
        limits = self._limits
        return {
            "version": SCHEMA_VERSION,
            "lastUpdated": SCHEMA_UPDATED,
            "supportedAgentTemplates": [known[key] for key in sorted(known)],
            "capabilities": {
                "streaming": True,
                "toolCalling": True,
                "multimodal": False,
                "codeExecution": sandbox.available,
                "codeExecutionIsolation": sandbox.isolation,
                **({} if sandbox.available else {"codeExecutionReason": sandbox.reason}),
            },
            "limits": {
                "maxConcurrentAgents": self._max_concurrent_runs,
                "maxMessageLength": limits.max_message_chars,
                "maxConversationHistory": limits.max_messages,
            },
        }


def _compatible(requested: str) -> None:
    """Refuse an `X-Schema-Version` this API does not serve (another major version).

    Raises:
        InvalidArgument: it is not a version.
        FailedPrecondition: VERSION_MISMATCH, another major (or a newer minor) version.
    """
    found = _SEMVER.match(requested.strip())
    if found is None:
        raise bad_field(
            "header.x-schema-version",
            "not a version",
            "X-Schema-Version must be a version such as 1 or 1.0",
        )
    major, minor = int(found.group(1)), int(found.group(2) or 0)
    if major != SCHEMA_MAJOR or minor > SCHEMA_MINOR:
        raise FailedPrecondition(
            f"schema version {requested[:32]!r} is not served; this API serves {SCHEMA_VERSION}",
            reason="VERSION_MISMATCH",
            metadata={"requested": requested[:32], "supported": SCHEMA_VERSION},
        )
