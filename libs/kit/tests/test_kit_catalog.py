"""The template catalogue bucket on a real NATS server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig

from agentrt_kit.catalog import (
    BUCKET,
    HISTORY,
    CatalogWatcher,
    entry_key,
    executor_key,
    open_bucket,
    prune_executors,
    publish_descriptor,
    publish_executor,
)
from agentrt_kit.nats import Names, NatsClient, StreamLimits

LIMITS = StreamLimits(3_600.0, 16 * 1024**2)


@pytest.mark.parametrize(
    ("template_id", "version", "key"),
    [
        ("simple", None, "simple"),
        ("simple", "1.0.0", "simple/1.0.0"),
        ("Lang_Graph-2", "v2.0-beta_1", "Lang_Graph-2/v2.0-beta_1"),
        ("a", "1", "a/1"),
        ("x" * 128, None, "x" * 128),
        ("0.1.x", "2", "0.1.x/2"),
    ],
)
def test_entry_key_of_representable_ids(template_id: str, version: str | None, key: str) -> None:
    assert entry_key(template_id, version) == key


@pytest.mark.parametrize(
    ("template_id", "version"),
    [
        ("", None),
        ("x" * 129, None),
        ("-lead", None),
        (".lead", None),
        ("_lead", None),
        ("a/b", None),
        ("a b", None),
        ("a*", None),
        ("a>", None),
        ("trailing.", None),  # NATS refuses keys ending in "."
        ("a..b", None),  # an empty subject token: NATS never answers
        ("id\n", None),
        ("ok", ""),
        ("ok", "1/2"),
        ("ok", "1."),
        ("ok", "1..0"),
        ("ok", "v\n"),
        ("ok", "x" * 129),
    ],
)
def test_entry_key_refuses_unrepresentable_ids(template_id: str, version: str | None) -> None:
    assert entry_key(template_id, version) is None


@pytest.fixture
async def js(nats_server: Any) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_server.url)
    yield nc.jetstream()
    await nc.close()


async def test_open_bucket_creates_it_then_reopens_it(
    js: JetStreamContext, nats_prefix: str
) -> None:
    names = Names(nats_prefix)
    with pytest.raises(nats.js.errors.BucketNotFoundError):
        await js.key_value(names.bucket(BUCKET))
    kv = await open_bucket(js, names, LIMITS)
    status = await kv.status()
    assert status.bucket == f"{nats_prefix}_templates"
    assert status.history == 5
    await kv.put("simple", b"{}")
    again = await open_bucket(js, names, LIMITS)
    assert (await again.get("simple")).value == b"{}"
    await js.delete_key_value(names.bucket(BUCKET))


async def test_open_bucket_bounds_the_unbounded_bucket_of_an_older_release(
    js: JetStreamContext, nats_prefix: str
) -> None:
    names = Names(nats_prefix)
    # As releases before issue 13 made it: five values a key, no age or size limit.
    old = await js.create_key_value(KeyValueConfig(bucket=names.bucket(BUCKET), history=5))
    await old.put("simple", b"{}")
    kv = await open_bucket(js, names, LIMITS)
    config = (await js.stream_info(f"KV_{names.bucket(BUCKET)}")).config
    assert (config.max_age, config.max_bytes) == (LIMITS.max_age_seconds, LIMITS.max_bytes)
    assert config.max_msgs_per_subject == HISTORY
    assert (await kv.get("simple")).value == b"{}"
    await js.delete_key_value(names.bucket(BUCKET))


async def test_buckets_of_different_prefixes_are_separate(
    js: JetStreamContext, nats_prefix: str
) -> None:
    mine, theirs = Names(nats_prefix), Names(nats_prefix + "x")
    kv_mine, kv_theirs = await open_bucket(js, mine, LIMITS), await open_bucket(js, theirs, LIMITS)
    await publish_descriptor(kv_mine, {"id": "simple", "version": "1"})
    assert await kv_mine.keys() != []
    with pytest.raises(nats.js.errors.NoKeysError):
        await kv_theirs.keys()
    for names in (mine, theirs):
        await js.delete_key_value(names.bucket(BUCKET))


async def test_publish_descriptor_writes_versioned_and_latest_keys(
    js: JetStreamContext, nats_prefix: str
) -> None:
    kv = await open_bucket(js, Names(nats_prefix), LIMITS)
    v1 = {"id": "simple", "version": "1.0.0", "name": "Simple", "config_schema": {"b": 1, "a": 2}}
    v2 = {**v1, "version": "1.1.0", "name": "Simple v2"}
    await publish_descriptor(kv, v1)
    assert sorted(await kv.keys()) == ["simple", "simple/1.0.0"]
    raw = (await kv.get("simple/1.0.0")).value
    assert json.loads(raw) == v1
    assert raw == json.dumps(v1, sort_keys=True).encode()  # stable bytes
    await publish_descriptor(kv, v2)
    assert sorted(await kv.keys()) == ["simple", "simple/1.0.0", "simple/1.1.0"]
    assert json.loads((await kv.get("simple")).value) == v2  # latest follows the newest write
    assert json.loads((await kv.get("simple/1.0.0")).value) == v1  # old version stays
    await js.delete_key_value(Names(nats_prefix).bucket(BUCKET))


@pytest.mark.parametrize(
    "descriptor",
    [
        {"id": "bad id", "version": "1"},
        {"id": "ok", "version": "1."},
        {"id": "a..b", "version": "1"},
    ],
)
async def test_publish_descriptor_refuses_bad_ids_and_writes_nothing(
    js: JetStreamContext, nats_prefix: str, descriptor: dict[str, str]
) -> None:
    kv = await open_bucket(js, Names(nats_prefix), LIMITS)
    with pytest.raises(ValueError, match="not allowed"):
        await publish_descriptor(kv, descriptor)
    with pytest.raises(nats.js.errors.NoKeysError):
        await kv.keys()
    await js.delete_key_value(Names(nats_prefix).bucket(BUCKET))


async def test_publish_descriptor_needs_id_and_version(
    js: JetStreamContext, nats_prefix: str
) -> None:
    kv = await open_bucket(js, Names(nats_prefix), LIMITS)
    with pytest.raises(KeyError):
        await publish_descriptor(kv, {"id": "simple"})
    await js.delete_key_value(Names(nats_prefix).bucket(BUCKET))


@pytest.mark.parametrize(
    ("executor_id", "key"),
    [
        ("host-1234", "_executors/host-1234"),
        ("pod.ns.svc.cluster.local-7", "_executors/pod-ns-svc-cluster-local-7"),
        ("..", "_executors/executor"),
    ],
)
def test_executor_keys_are_apart_from_every_template_key(executor_id: str, key: str) -> None:
    assert executor_key(executor_id) == key
    # Template keys start alphanumeric: no template id can take an executor's key.
    assert entry_key(key) is None


def executor(executor_id: str, expires_at: float) -> dict[str, Any]:
    return {
        "executor_id": executor_id,
        "providers": ["offline"],
        "default_provider": "offline",
        "limits": {"max_steps": 50},
        "published_at": expires_at - 180,
        "expires_at": expires_at,
    }


async def test_prune_deletes_only_executor_entries_expired_before_the_given_time(
    js: JetStreamContext, nats_prefix: str
) -> None:
    kv = await open_bucket(js, Names(nats_prefix), LIMITS)
    assert await prune_executors(kv, before=1e12) == []  # an empty bucket
    await publish_descriptor(kv, {"id": "simple", "version": "1"})
    await publish_executor(kv, executor("old", expires_at=100.0))
    await publish_executor(kv, executor("new", expires_at=500.0))
    await kv.put(executor_key("garbled"), b"not json")
    assert json.loads((await kv.get("_executors/new")).value) == executor("new", 500.0)
    pruned = await prune_executors(kv, before=200.0)
    assert sorted(pruned) == ["_executors/garbled", "_executors/old"]
    assert sorted(await kv.keys()) == ["_executors/new", "simple", "simple/1"]
    await js.delete_key_value(Names(nats_prefix).bucket(BUCKET))


async def test_the_watcher_keeps_executor_entries_apart_from_templates(
    nats_server: Any, nats_prefix: str
) -> None:
    client = NatsClient(nats_server.url, name="kit-test")
    await client.start()
    assert await client.wait_connected(5)
    names = Names(nats_prefix)
    kv = await open_bucket(client.js, names, LIMITS)
    await publish_descriptor(kv, {"id": "simple", "version": "1"})
    await publish_executor(kv, executor("e1", expires_at=500.0))
    # A parser that takes only templates: it must never see an executor entry.
    watcher = CatalogWatcher(client, names, lambda doc: str(doc["version"]), limits=LIMITS)
    await watcher.start()
    try:
        await asyncio.wait_for(watcher.synced.wait(), 5)
        assert watcher.entries == {"simple": "1", "simple/1": "1"}
        assert watcher.latest() == {"simple": "1"}
        assert watcher.executors == {"_executors/e1": executor("e1", 500.0)}
        await kv.delete(executor_key("e1"))
        for _ in range(250):
            if not watcher.executors:
                break
            await asyncio.sleep(0.02)
        assert watcher.executors == {}
    finally:
        await watcher.stop()
        await client.close()
