"""Domain: agents as old clients read them.

The body has exactly `id, name, template_id, template_version, status, configuration{
system_prompt, llm_config_id, conversation_config, toolsets, template_config}, created_at,
updated_at, metadata`: the old SDK rejects unknown keys (COMPAT.md). The agent's version
travels in the `ETag` header instead. A create made safe to retry with an idempotency key
names its agent by the caller and the key (`idempotent_agent_id`), and a retry is told
from another request by the spec the registry stored (`same_spec`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """An agent as the registry returns it."""

    id: str
    version: int
    name: str
    template_id: str
    template_version: str
    status: str
    system_prompt: str
    llm_config_id: str
    owner_id: str = ""
    conversation_config: Mapping[str, Any] = field(default_factory=dict)
    toolsets: Sequence[str] = ()
    template_config: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


def agent_body(agent: AgentRecord) -> dict[str, Any]:
    """The agent object of the HTTP API."""
    return {
        "id": agent.id,
        "name": agent.name,
        "template_id": agent.template_id,
        "template_version": agent.template_version or None,
        "status": agent.status,
        "configuration": {
            "system_prompt": agent.system_prompt or None,
            "llm_config_id": agent.llm_config_id or None,
            "conversation_config": dict(agent.conversation_config),
            "toolsets": list(agent.toolsets),
            "template_config": dict(agent.template_config),
        },
        "created_at": iso(agent.created_at),
        "updated_at": iso(agent.updated_at),
        "metadata": dict(agent.metadata),
    }


STATUSES = ("created", "active", "inactive", "error")
REGISTRATIONS = frozenset({"registered", "reregistered"})  # history events starting a lifecycle
RUNNABLE = frozenset({"created", "active"})  # the statuses the executor runs
MAX_VERSION = 2**63 - 1  # versions are int64 in the registry's messages


@dataclass(frozen=True, slots=True)
class AgentChange:
    """One recorded event of an agent's history."""

    version: int
    type: str
    occurred_at: datetime | None
    actor: str
    request_id: str
    changed_fields: Sequence[str] = ()
    changes: Mapping[str, Any] = field(default_factory=dict)
    from_status: str | None = None
    to_status: str | None = None
    reason: str = ""


def change_body(change: AgentChange) -> dict[str, Any]:
    """An event of `GET /v1/agents/{id}/history`."""
    return {
        "version": change.version,
        "type": change.type,
        "occurred_at": iso(change.occurred_at),
        "actor": change.actor or None,
        "request_id": change.request_id or None,
        "changed_fields": list(change.changed_fields),
        "changes": dict(change.changes),
        "from_status": change.from_status,
        "to_status": change.to_status,
        "reason": change.reason or None,
    }


def expected_version(if_match: str | None) -> int | None:
    """The version an `If-Match: "N"` header pins; None without the header.

    Raises:
        ValueError: the header is not one of this API's entity tags.
    """
    if if_match is None or if_match.strip() == "*":  # "*": any current version (RFC 9110)
        return None
    text = if_match.strip().removeprefix("W/")
    if len(text) < 3 or text[0] != '"' or text[-1] != '"' or not text[1:-1].isdigit():
        raise ValueError(if_match)
    version = int(text[1:-1])
    if version > MAX_VERSION:
        raise ValueError(if_match)
    return version


def etag(agent: AgentRecord) -> str:
    """The strong entity tag of an agent version."""
    return f'"{agent.version}"'


def iso(value: datetime | None) -> str | None:
    """A time as the HTTP API writes it (ISO 8601, `Z` for UTC); None stays None."""
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


# The UUID v5 namespace of agent ids named by idempotency keys. Never change it: every
# retry of a keyed create made before would create another agent.
KEYED_AGENTS = uuid.UUID("65495504-090f-4ad2-8751-9c03b8377636")


def idempotent_agent_id(principal_id: str, key: str) -> str:
    """The agent id a caller's idempotency key names: a UUID, as generated ids are.

    The same for every retry, and for no other caller: it is derived from the caller's
    id and the key, never from the key alone.
    """
    return str(uuid.uuid5(KEYED_AGENTS, f"{principal_id}\0{key}"))


def same_spec(asked: Mapping[str, Any], stored: Mapping[str, Any]) -> bool:
    """Whether a create's spec is the one the registry stored when it registered an agent.

    The registry keeps every field (empty where none was given), the name trimmed, and
    numbers as doubles (a protobuf Struct's): both sides are compared in that form, and
    `true` is never `1`.
    """
    return _stored_form(asked) == _stored_form(stored)


def _stored_form(spec: Mapping[str, Any]) -> str:
    given = {k: v for k, v in spec.items() if v is not None and v not in ("", [], {})}
    if isinstance(given.get("name"), str):
        given["name"] = given["name"].strip()
    return json.dumps(_doubles(given), sort_keys=True)


def _doubles(value: Any) -> Any:
    """`value` with its numbers as a Struct holds them (doubles); booleans stay booleans."""
    if isinstance(value, Mapping):
        return {k: _doubles(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_doubles(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
