"""Adapter: the template catalogue read from its NATS KV bucket.

The kit's CatalogWatcher keeps every descriptor in memory, so validation needs no round trip;
a cache miss is looked up in the bucket directly (a descriptor may have been
written a moment ago). While NATS is down, cached descriptors keep serving and
a miss is reported as CatalogUnavailable, never as "unknown template".

`get` is called from the registry's worker threads; it hands bucket reads to
the event loop with `run_coroutine_threadsafe`. `executors` answers from the
watch, and reads the bucket itself only while the watch holds no executor entry:
"no executor has published" must not be said just because the watch lags behind
a template that a direct lookup already found.
"""

from __future__ import annotations

import asyncio
import logging
import time

import nats.errors

from agent_registry.domain.executors import ExecutorFleet, ExecutorReport, fleet_of
from agent_registry.domain.templates import TemplateDescriptor
from agent_registry.errors import CatalogUnavailable
from agentrt_kit.catalog import CatalogWatcher, entry_key
from agentrt_kit.nats import Names, NatsClient, StreamLimits

log = logging.getLogger(__name__)


class NatsTemplateCatalog:
    """TemplateCatalog over the `<prefix>_templates` KV bucket."""

    def __init__(
        self,
        client: NatsClient,
        names: Names,
        *,
        limits: StreamLimits,
        lookup_timeout: float = 2.0,
        recheck_interval: float = 1.0,
    ) -> None:
        self._client = client
        self._timeout = lookup_timeout
        self._watcher = CatalogWatcher(
            client,
            names,
            TemplateDescriptor.from_document,
            limits=limits,
            recheck_interval=recheck_interval,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._parsed: dict[str, tuple[object, ExecutorReport | None]] = {}
        self.synced = self._watcher.synced

    async def start(self) -> None:
        """Begin watching the bucket in the background."""
        self._loop = asyncio.get_running_loop()
        await self._watcher.start()

    async def stop(self) -> None:
        """Stop watching."""
        await self._watcher.stop()

    def executors(self) -> ExecutorFleet:
        """What every executor can run, from the entries the watch holds now."""
        if not self._watcher.executors and self._loop is not None and self._client.connected:
            future = asyncio.run_coroutine_threadsafe(self._watcher.lookup_executors(), self._loop)
            try:
                future.result(self._timeout)
            except (TimeoutError, nats.errors.Error, OSError):
                future.cancel()  # unknown it stays: the caller warns, never refuses
        reports = []
        held = dict(self._watcher.executors)
        for gone in self._parsed.keys() - held.keys():  # replicas come and go
            del self._parsed[gone]
        for key, doc in held.items():
            parsed = self._parsed.get(key)
            if parsed is None or parsed[0] is not doc:  # parse (and log) each entry once
                try:
                    parsed = (doc, ExecutorReport.from_document(doc))
                except ValueError as e:
                    log.error("ignoring bad executor entry", extra={"key": key, "error": str(e)})
                    parsed = (doc, None)
                self._parsed[key] = parsed
            if parsed[1] is not None:
                reports.append(parsed[1])
        return fleet_of(reports, time.time())

    def get(self, template_id: str, version: str | None) -> TemplateDescriptor | None:
        """The descriptor (latest when `version` is None), None when unknown."""
        key = entry_key(template_id, version)
        if key is None:
            return None
        if (cached := self._watcher.entries.get(key)) is not None:
            return cached
        if self._loop is None or not self._client.connected:
            raise CatalogUnavailable("template catalogue unavailable: NATS is not connected")
        future = asyncio.run_coroutine_threadsafe(self._watcher.lookup(key), self._loop)
        try:
            return future.result(self._timeout)
        except (TimeoutError, nats.errors.Error, OSError) as e:
            future.cancel()
            raise CatalogUnavailable(f"template catalogue unavailable: {e or 'timeout'}") from None
