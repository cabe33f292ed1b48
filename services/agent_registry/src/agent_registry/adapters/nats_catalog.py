"""Adapter: the template catalogue read from its NATS KV bucket.

The kit's CatalogWatcher keeps every descriptor in memory, so validation needs no round trip;
a cache miss is looked up in the bucket directly (a descriptor may have been
written a moment ago). While NATS is down, cached descriptors keep serving and
a miss is reported as CatalogUnavailable, never as "unknown template".

`get` is called from the registry's worker threads; it hands bucket reads to
the event loop with `run_coroutine_threadsafe`.
"""

from __future__ import annotations

import asyncio

import nats.errors

from agent_registry.domain.templates import TemplateDescriptor
from agent_registry.errors import CatalogUnavailable
from agentrt_kit.catalog import CatalogWatcher, entry_key
from agentrt_kit.nats import Names, NatsClient


class NatsTemplateCatalog:
    """TemplateCatalog over the `<prefix>_templates` KV bucket."""

    def __init__(
        self,
        client: NatsClient,
        names: Names,
        *,
        lookup_timeout: float = 2.0,
        recheck_interval: float = 1.0,
    ) -> None:
        self._client = client
        self._timeout = lookup_timeout
        self._watcher = CatalogWatcher(
            client, names, TemplateDescriptor.from_document, recheck_interval=recheck_interval
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self.synced = self._watcher.synced

    async def start(self) -> None:
        """Begin watching the bucket in the background."""
        self._loop = asyncio.get_running_loop()
        await self._watcher.start()

    async def stop(self) -> None:
        """Stop watching."""
        await self._watcher.stop()

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
