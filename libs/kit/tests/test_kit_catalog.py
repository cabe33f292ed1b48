"""The template catalogue bucket on a real NATS server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.js import JetStreamContext

from agentrt_kit.catalog import BUCKET, entry_key, open_bucket, publish_descriptor
from agentrt_kit.nats import Names


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
    kv = await open_bucket(js, names)
    status = await kv.status()
    assert status.bucket == f"{nats_prefix}_templates"
    assert status.history == 5
    await kv.put("simple", b"{}")
    again = await open_bucket(js, names)
    assert (await again.get("simple")).value == b"{}"
    await js.delete_key_value(names.bucket(BUCKET))


async def test_buckets_of_different_prefixes_are_separate(
    js: JetStreamContext, nats_prefix: str
) -> None:
    mine, theirs = Names(nats_prefix), Names(nats_prefix + "x")
    kv_mine, kv_theirs = await open_bucket(js, mine), await open_bucket(js, theirs)
    await publish_descriptor(kv_mine, {"id": "simple", "version": "1"})
    assert await kv_mine.keys() != []
    with pytest.raises(nats.js.errors.NoKeysError):
        await kv_theirs.keys()
    for names in (mine, theirs):
        await js.delete_key_value(names.bucket(BUCKET))


async def test_publish_descriptor_writes_versioned_and_latest_keys(
    js: JetStreamContext, nats_prefix: str
) -> None:
    kv = await open_bucket(js, Names(nats_prefix))
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
    kv = await open_bucket(js, Names(nats_prefix))
    with pytest.raises(ValueError, match="not allowed"):
        await publish_descriptor(kv, descriptor)
    with pytest.raises(nats.js.errors.NoKeysError):
        await kv.keys()
    await js.delete_key_value(Names(nats_prefix).bucket(BUCKET))


async def test_publish_descriptor_needs_id_and_version(
    js: JetStreamContext, nats_prefix: str
) -> None:
    kv = await open_bucket(js, Names(nats_prefix))
    with pytest.raises(KeyError):
        await publish_descriptor(kv, {"id": "simple"})
    await js.delete_key_value(Names(nats_prefix).bucket(BUCKET))
