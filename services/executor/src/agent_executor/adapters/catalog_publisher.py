"""Adapter: this executor's templates published to the template catalogue (NATS KV).

Every served template's descriptor is written under `<id>/<version>` and as the
template's latest `<id>`; the registry validates agent configs against them and
the gateway lists them even while no executor runs. Descriptors are written at
start-up, whenever templates change (hot reload), again after every reconnect
and every `interval` seconds, so a bucket that was lost or written by an older
replica heals. A template this executor stops serving has its latest key
deleted (its versioned entry stays for history).

On the same occasions the executor writes its own entry (`_executors/<id>`): the
provider ids an agent's `llm_config_id` may name, the run limits it enforces and
the code sandbox its tools service reports, valid for three intervals. Entries of
executors that have been gone for an interval past their expiry are deleted, so
the bucket does not collect one per replica that ever ran.

The sandbox is asked of the tools service beside the publications, never in their
way (a tools service that does not answer must not hold templates back): every
interval, and every `SANDBOX_RETRY_SECONDS` while it cannot be asked, which the
entry says with `sandbox: null` (unknown, not "unavailable"). A changed answer is
published at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import nats.errors
import nats.js.errors

from agent_executor.application.ports import SandboxInfo
from agent_executor.application.templates import LoadedTemplate
from agent_executor.domain.services_config import ServicesConfig
from agentrt_kit.catalog import (
    entry_key,
    open_bucket,
    prune_executors,
    publish_descriptor,
    publish_executor,
)
from agentrt_kit.concurrency import cancel_and_wait, wait_event
from agentrt_kit.errors import AgentrtError
from agentrt_kit.nats import Names, NatsClient, StreamLimits

log = logging.getLogger(__name__)

EXPIRY_INTERVALS = 3  # an entry outlives two missed publications
# While the tools service cannot be asked (it may be starting), publish again this soon.
SANDBOX_RETRY_SECONDS = 5.0


def executor_entry(
    executor_id: str, services: ServicesConfig, limits: Mapping[str, float]
) -> dict[str, Any]:
    """What this executor publishes about itself (expiry times are added per publication)."""
    return {
        "executor_id": executor_id,
        "providers": sorted(services.providers),
        "default_provider": services.default_provider,
        "limits": dict(limits),
    }


def sandbox_entry(sandbox: SandboxInfo | None) -> dict[str, Any] | None:
    """The `sandbox` of an executor's entry (None: unknown, the tools service was not asked)."""
    if sandbox is None:
        return None
    return {
        "available": sandbox.available,
        "isolation": sandbox.isolation,
        "reason": sandbox.reason,
        "runtimes": [
            {"language": r.language, "version": r.version, "modules": list(r.modules)}
            for r in sandbox.runtimes
        ],
    }


class CatalogPublisher:
    """Keeps the KV bucket in step with the templates served."""

    def __init__(
        self,
        client: NatsClient,
        names: Names,
        templates: Callable[[], Sequence[LoadedTemplate]],
        *,
        limits: StreamLimits,
        executor: Mapping[str, Any] | None = None,
        sandbox: Callable[[], Awaitable[SandboxInfo]] | None = None,
        interval: float = 60.0,
    ) -> None:
        self._client = client
        self._names = names
        self._limits = limits
        self._templates = templates
        self._executor = executor
        self._sandbox = sandbox  # asks the tools service (ToolGateway.sandbox)
        self._sandbox_now: SandboxInfo | None = None  # its last answer; None: unknown
        self._interval = interval
        self._wake = asyncio.Event()
        self._removed: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._sandbox_task: asyncio.Task[None] | None = None
        self.published = asyncio.Event()  # set after each complete publication
        self.rounds = 0
        client.on_reconnect(self._wake.set)

    async def start(self) -> None:
        """Publish now and keep publishing in the background."""
        if self._sandbox is not None and self._executor is not None:
            self._sandbox_task = asyncio.create_task(self._follow_sandbox(), name="sandbox-ask")
        self._task = asyncio.create_task(self._loop(), name="template-catalog-publish")

    def changed(self, removed: Sequence[str] = ()) -> None:
        """Templates changed: publish soon (and delete the ids no longer served)."""
        self._removed.update(removed)
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            await self._client.wait_connected()
            try:
                await self._publish()
            except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError) as e:
                log.warning("template catalogue publication failed", extra={"error": str(e)})
                await asyncio.sleep(1.0)
                continue
            await wait_event(self._wake, self._interval)

    async def _publish(self) -> None:
        self._wake.clear()
        kv = await open_bucket(self._client.js, self._names, self._limits)
        served = list(self._templates())
        if self._executor is not None:
            # Before the templates: a registry that can see a template can see this too.
            now = time.time()
            await publish_executor(
                kv,
                {
                    **self._executor,
                    "sandbox": sandbox_entry(self._sandbox_now),
                    "published_at": now,
                    "expires_at": now + EXPIRY_INTERVALS * self._interval,
                },
            )
            await prune_executors(kv, before=now - self._interval)
        for loaded in served:
            await publish_descriptor(kv, dict(loaded.descriptor))
        for template_id in sorted(self._removed - {t.id for t in served}):
            key = entry_key(template_id)
            if key is not None:
                with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                    await kv.delete(key)
        self._removed.clear()
        self.rounds += 1
        self.published.set()

    async def _follow_sandbox(self) -> None:
        """Ask the tools service for its sandbox, and publish each change of the answer."""
        assert self._sandbox is not None
        known = True  # so that the first failure is logged
        while True:
            try:
                found: SandboxInfo | None = await self._sandbox()
            except AgentrtError as e:
                if known:
                    log.warning(
                        "the code sandbox is published as unknown: %s",
                        e.message,
                        extra={"retry_seconds": SANDBOX_RETRY_SECONDS},
                    )
                found = None
            known = found is not None
            if found != self._sandbox_now:
                self._sandbox_now = found
                self._wake.set()
            await asyncio.sleep(
                self._interval if known else min(self._interval, SANDBOX_RETRY_SECONDS)
            )

    async def stop(self) -> None:
        """Stop publishing."""
        await cancel_and_wait(self._sandbox_task)
        if self._task is not None:
            await cancel_and_wait(self._task)
