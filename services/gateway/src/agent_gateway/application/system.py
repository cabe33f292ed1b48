"""Application: what the runtime serves and how it is — templates, schema, health.

Templates come from the catalogue the executors publish (503 until it has been read
once). Health times a check of every dependency; `/readyz` uses those a request
needs, `/v1/health` adds the ones it only reports (NATS).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from typing import Any

from agent_gateway.application.chat import ChatLimits
from agent_gateway.application.ports import Probe, Templates, TemplateView
from agent_gateway.domain.stats import ExecutionStats
from agent_gateway.errors import bad_field
from agentrt_kit.concurrency import wait_event
from agentrt_kit.errors import FailedPrecondition, NotFound, Unavailable

SYNC_WAIT_SECONDS = 2.0
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


class System:
    """Health, the runtime schema and templates."""

    def __init__(
        self,
        catalogue: Catalogue,
        checks: Checks,
        stats: ExecutionStats,
        *,
        version: str,
        limits: ChatLimits,
        max_concurrent_runs: int,
    ) -> None:
        self.catalogue = catalogue
        self._checks = checks
        self._stats = stats
        self.version = version
        self._limits = limits
        self._max_concurrent_runs = max_concurrent_runs
        self._started = time.monotonic()

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether every dependency is up, and the `/v1/health` facts."""
        found = await self._checks.run()
        healthy = all(c["status"] == "ok" for c in found.values())
        return healthy, {
            "status": "healthy" if healthy else "unhealthy",
            "uptime_seconds": round(time.monotonic() - self._started, 3),
            "version": self.version,
            "checks": found,
            "metrics": self._stats.snapshot(),
        }

    async def schema(self, requested: str | None = None) -> dict[str, Any]:
        """What this runtime supports (`/v1/schema`); refuses another major version."""
        if requested is not None:
            _compatible(requested)
        known = await self.catalogue.latest()
        limits = self._limits
        return {
            "version": SCHEMA_VERSION,
            "lastUpdated": SCHEMA_UPDATED,
            "supportedAgentTemplates": [known[key] for key in sorted(known)],
            "capabilities": {
                "streaming": True,
                "toolCalling": True,
                "multimodal": False,
                "codeExecution": False,
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
