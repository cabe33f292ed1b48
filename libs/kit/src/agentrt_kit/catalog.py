"""The template catalogue: a NATS KV bucket of template descriptors.

Executors write one entry per template under `<template_id>` (the version they
serve now) and one under `<template_id>/<version>`; the registry validates agent
configs against it and the gateway serves `/v1/templates` from it, whether or
not an executor is up. Values are JSON documents:
`{id, version, name, description, framework, config_schema, config_fields}`.

Each executor also writes what it can run under `_executors/<executor id>` (a key
no template id can take: template keys start alphanumeric):
`{executor_id, providers: [ids], default_provider, limits: {name: ceiling},
sandbox, published_at, expires_at}` (times in Unix seconds). `limits` holds the
ceilings the executor enforces on every run (`run_timeout_seconds`, `max_steps`,
...); a limit it does not enforce (0: unlimited) is left out. `sandbox` is the code
sandbox of the tools service it uses, as that service reports it:
`{available, isolation, reason, runtimes: [{language, version, modules: [names]}]}`
(`isolation` e.g. "bubblewrap"; `modules` all code may import there), or null when
the executor could not ask (unknown, which is not "unavailable"). An executor
rewrites its entry before `expires_at`, so an entry past it belongs to an executor
that is gone. Template schemas refer to these limits by name (`x-agentrt-ceiling`)
and to the sandbox's runtimes through `x-agentrt-code`; the gateway's `/v1/schema`
tells from the sandboxes whether code can run.

The bucket keeps `HISTORY` values a key and is bounded by `StreamLimits`: an entry
not written again within `max_age_seconds` expires (executors rewrite theirs every
publication, so only what no executor serves any more, and delete markers, go), and
a full bucket refuses writes (a KV bucket never drops another key's value).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from agentrt_kit.concurrency import cancel_and_wait
from agentrt_kit.nats import Names, NatsClient, StreamLimits, ensure_bucket
from agentrt_kit.resilience import jittered_backoff

log = logging.getLogger(__name__)
T = TypeVar("T")

BUCKET = "templates"
HISTORY = 5  # values kept a key: the latest for readers, recent writes for inspection
EXECUTOR_PREFIX = "_executors/"
# A KV key token: alphanumeric first, no empty subject token ("a..b") and no trailing
# dot ("a."), which NATS refuses (or never answers); fullmatch, so no trailing newline.
_TOKEN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?=[A-Za-z0-9_-])){0,127}")


def entry_key(template_id: str, version: str | None = None) -> str | None:
    """The KV key of a template (latest when `version` is None); None when unrepresentable."""
    if not _TOKEN.fullmatch(template_id) or (version is not None and not _TOKEN.fullmatch(version)):
        return None
    return template_id if version is None else f"{template_id}/{version}"


def executor_key(executor_id: str) -> str:
    """The KV key of an executor's entry (characters a key cannot hold become `-`)."""
    token = re.sub(r"[^A-Za-z0-9_-]+", "-", executor_id).strip("-")[:128]
    return EXECUTOR_PREFIX + (token or "executor")


async def open_bucket(js: JetStreamContext, names: Names, limits: StreamLimits) -> KeyValue:
    """The catalogue bucket, created when missing and brought to `limits`."""
    return await ensure_bucket(js, limits.bucket_config(names.bucket(BUCKET), history=HISTORY))


async def publish_descriptor(kv: KeyValue, descriptor: Mapping[str, Any]) -> None:
    """Write a descriptor under its versioned key and as the template's latest."""
    data = json.dumps(descriptor, sort_keys=True).encode()
    template_id, version = str(descriptor["id"]), str(descriptor["version"])
    versioned, latest = entry_key(template_id, version), entry_key(template_id)
    if versioned is None or latest is None:
        raise ValueError(f"template id or version not allowed: {template_id!r} {version!r}")
    await kv.put(versioned, data)
    await kv.put(latest, data)


async def publish_executor(kv: KeyValue, entry: Mapping[str, Any]) -> None:
    """Write an executor's entry (providers, limits, expiry) under its key."""
    await kv.put(
        executor_key(str(entry["executor_id"])), json.dumps(entry, sort_keys=True).encode()
    )


async def prune_executors(kv: KeyValue, before: float) -> list[str]:
    """Delete the executor entries that expired before `before`; returns their keys.

    Executor ids change with every replica (host name and pid), so without this
    the bucket would keep an entry for every executor that ever ran.
    """
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return []
    pruned = []
    for key in keys:
        if not key.startswith(EXECUTOR_PREFIX):
            continue
        try:
            entry = await kv.get(key)
            expires = float(json.loads(entry.value or b"{}").get("expires_at", 0))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            continue
        except (ValueError, TypeError, AttributeError):
            expires = 0.0  # unreadable: nobody can use it
        if expires < before:
            await kv.delete(key)
            pruned.append(key)
    return pruned


class CatalogWatcher(Generic[T]):
    """Every entry of the catalogue bucket in memory, kept current by a KV watch.

    `parse` turns a descriptor document into what the reader keeps (it raises
    ValueError for a document to ignore). While NATS is down the entries held keep
    serving. A watch does not survive a NATS server restart (its consumer is gone),
    so after a reconnection it starts afresh and the new watch re-delivers every
    current entry, deletions included. Executor entries (`_executors/...`) are not
    templates: they are kept apart, as documents, in `executors`.
    """

    def __init__(
        self,
        client: NatsClient,
        names: Names,
        parse: Callable[[Mapping[str, Any]], T],
        *,
        limits: StreamLimits,
        recheck_interval: float = 1.0,
    ) -> None:
        self._client = client
        self._names = names
        self._parse = parse
        self._limits = limits
        self._recheck = recheck_interval
        self.entries: dict[str, T] = {}  # by KV key: `<id>` (latest) and `<id>/<version>`
        self.executors: dict[str, dict[str, Any]] = {}  # executor entries, by KV key
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()  # set once the bucket's entries have all arrived

    async def start(self) -> None:
        """Begin watching the bucket in the background."""
        self._task = asyncio.create_task(self._watch_forever(), name="template-catalog-watch")

    async def stop(self) -> None:
        """Stop watching."""
        await cancel_and_wait(self._task)

    def latest(self) -> dict[str, T]:
        """The latest entry of every template, by template id."""
        return {key: value for key, value in self.entries.items() if "/" not in key}

    async def lookup(self, key: str) -> T | None:
        """Read one entry from the bucket itself (it may have been written a moment ago)."""
        if self._kv is None:
            self._kv = await open_bucket(self._client.js, self._names, self._limits)
        try:
            entry = await self._kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if not entry.value:
            return None
        self._apply(key, entry.value, entry.operation)
        return self.entries.get(key)

    async def lookup_executors(self) -> None:
        """Read every executor entry from the bucket itself (the watch may lag behind)."""
        if self._kv is None:
            self._kv = await open_bucket(self._client.js, self._names, self._limits)
        try:
            keys = await self._kv.keys()
        except nats.js.errors.NoKeysError:
            return
        for key in keys:
            if key.startswith(EXECUTOR_PREFIX):
                with contextlib.suppress(
                    nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError
                ):
                    entry = await self._kv.get(key)
                    self._apply(key, entry.value, entry.operation)

    async def _watch_forever(self) -> None:
        backoff = jittered_backoff(0.2, 5.0)
        while True:
            try:
                await self._client.wait_connected()
                self._kv = await open_bucket(self._client.js, self._names, self._limits)
                await self._watch(self._kv)
                backoff = jittered_backoff(0.2, 5.0)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("template catalogue watch failed", extra={"error": str(e)})
                await asyncio.sleep(next(backoff))

    async def _watch(self, kv: KeyValue) -> None:
        """Apply bucket updates until the connection has been re-established."""
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
        if key.startswith(EXECUTOR_PREFIX):
            self._apply_executor(key, value, operation)
            return
        if operation in (KV_DEL, KV_PURGE) or not value:
            self.entries.pop(key, None)
            return
        try:
            self.entries[key] = self._parse(json.loads(value))
        except ValueError as e:
            log.error("ignoring bad template descriptor", extra={"key": key, "error": str(e)})

    def _apply_executor(self, key: str, value: bytes | None, operation: str | None) -> None:
        if operation in (KV_DEL, KV_PURGE) or not value:
            self.executors.pop(key, None)
            return
        try:
            doc = json.loads(value)
        except ValueError as e:
            log.error("ignoring bad executor entry", extra={"key": key, "error": str(e)})
            return
        if isinstance(doc, dict):
            self.executors[key] = doc
        else:
            log.error("ignoring bad executor entry", extra={"key": key, "error": "not an object"})
