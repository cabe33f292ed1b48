"""Adapter: the template catalogue read from its NATS KV bucket.

A watcher keeps every descriptor in memory, so validation needs no round trip;
a cache miss is looked up in the bucket directly (a descriptor may have been
written a moment ago). While NATS is down, cached descriptors keep serving and
a miss is reported as CatalogUnavailable, never as "unknown template".

`get` is called from the registry's worker threads; it hands bucket reads to
the event loop with `run_coroutine_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import nats.errors
import nats.js.errors
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from agent_registry.domain.templates import TemplateDescriptor
from agent_registry.errors import CatalogUnavailable
from agentrt_kit.catalog import entry_key, open_bucket
from agentrt_kit.concurrency import cancel_and_wait
from agentrt_kit.nats import Names, NatsClient
from agentrt_kit.resilience import jittered_backoff

log = logging.getLogger(__name__)


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
        self._names = names
        self._timeout = lookup_timeout
        self._recheck = recheck_interval
        self._cache: dict[str, TemplateDescriptor] = {}
        self._kv: KeyValue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()

    async def start(self) -> None:
        """Begin watching the bucket in the background."""
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._watch_forever(), name="template-catalog-watch")

    async def stop(self) -> None:
        """Stop watching."""
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _watch_forever(self) -> None:
        backoff = jittered_backoff(0.2, 5.0)
        while True:
            try:
                await self._client.wait_connected()
                self._kv = await open_bucket(self._client.js, self._names)
                await self._watch(self._kv)
                backoff = jittered_backoff(0.2, 5.0)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("template catalogue watch failed", extra={"error": str(e)})
                await asyncio.sleep(next(backoff))

    async def _watch(self, kv: KeyValue) -> None:
        """Apply bucket updates until the connection has been re-established.

        A watch does not survive a NATS server restart (its consumer is gone and
        nothing arrives any more), so after a reconnection it is started afresh;
        the new watch re-delivers every current entry, deletions included.
        """
        connection = self._client.nc
        reconnects = connection.stats["reconnects"]
        watcher = await kv.watchall()
        try:
            while connection is self._client.nc and connection.stats["reconnects"] == reconnects:
                try:
                    entry = await watcher.updates(timeout=self._recheck)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    continue
                if entry is None:  # initial values delivered
                    self.synced.set()
                    continue
                self._apply(entry.key, entry.value, entry.operation)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _apply(self, key: str, value: bytes | None, operation: str | None) -> None:
        if operation in (KV_DEL, KV_PURGE) or not value:
            self._cache.pop(key, None)
            return
        try:
            self._cache[key] = TemplateDescriptor.from_document(json.loads(value))
        except ValueError as e:
            log.error("ignoring bad template descriptor", extra={"key": key, "error": str(e)})

    async def _lookup(self, key: str) -> TemplateDescriptor | None:
        if self._kv is None:
            self._kv = await open_bucket(self._client.js, self._names)
        try:
            entry = await self._kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if not entry.value:
            return None
        self._apply(key, entry.value, entry.operation)
        return self._cache.get(key)

    def get(self, template_id: str, version: str | None) -> TemplateDescriptor | None:
        """The descriptor (latest when `version` is None), None when unknown."""
        key = entry_key(template_id, version)
        if key is None:
            return None
        if (cached := self._cache.get(key)) is not None:
            return cached
        if self._loop is None or not self._client.connected:
            raise CatalogUnavailable("template catalogue unavailable: NATS is not connected")
        future = asyncio.run_coroutine_threadsafe(self._lookup(key), self._loop)
        try:
            return future.result(self._timeout)
        except (TimeoutError, nats.errors.Error, OSError) as e:
            future.cancel()
            raise CatalogUnavailable(f"template catalogue unavailable: {e or 'timeout'}") from None
