"""The template catalogue: a NATS KV bucket of template descriptors.

Executors write one entry per template under `<template_id>` (the version they
serve now) and one under `<template_id>/<version>`; the registry validates agent
configs against it and the gateway serves `/v1/templates` from it, whether or
not an executor is up. Values are JSON documents:
`{id, version, name, description, framework, config_schema, config_fields}`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from agentrt_kit.nats import Names

BUCKET = "templates"
# A KV key token: alphanumeric first, no empty subject token ("a..b") and no trailing
# dot ("a."), which NATS refuses (or never answers); fullmatch, so no trailing newline.
_TOKEN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?=[A-Za-z0-9_-])){0,127}")


def entry_key(template_id: str, version: str | None = None) -> str | None:
    """The KV key of a template (latest when `version` is None); None when unrepresentable."""
    if not _TOKEN.fullmatch(template_id) or (version is not None and not _TOKEN.fullmatch(version)):
        return None
    return template_id if version is None else f"{template_id}/{version}"


async def open_bucket(js: JetStreamContext, names: Names) -> KeyValue:
    """The catalogue bucket, created when missing."""
    bucket = names.bucket(BUCKET)
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(KeyValueConfig(bucket=bucket, history=5))


async def publish_descriptor(kv: KeyValue, descriptor: Mapping[str, Any]) -> None:
    """Write a descriptor under its versioned key and as the template's latest."""
    data = json.dumps(descriptor, sort_keys=True).encode()
    template_id, version = str(descriptor["id"]), str(descriptor["version"])
    versioned, latest = entry_key(template_id, version), entry_key(template_id)
    if versioned is None or latest is None:
        raise ValueError(f"template id or version not allowed: {template_id!r} {version!r}")
    await kv.put(versioned, data)
    await kv.put(latest, data)
