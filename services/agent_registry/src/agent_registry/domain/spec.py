"""Domain: what an agent is configured with, and the rules its fields obey.

The spec keeps every key of the compatible HTTP create body. Validation returns
one `FieldViolation` per bad field (paths like `spec.conversation_config.temperature`)
so a client learns everything wrong with a request at once.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from agentrt_kit.errors import FieldViolation

TEXT_LIMITS: dict[str, int] = {
    "name": 100,
    "description": 2_000,
    "avatar_url": 2_048,
    "type": 64,
    "template_id": 128,
    "template_version_id": 64,
    "system_prompt": 100_000,
    "llm_config_id": 128,
    "agent_line_id": 128,
    "version_type": 64,
    "version_number": 64,
    "owner_id": 128,
}
OBJECT_FIELDS = ("template_config", "conversation_config", "metadata")
MULTILINE_FIELDS = frozenset({"description", "system_prompt"})
LIST_FIELDS = ("toolsets",)
SPEC_FIELDS: tuple[str, ...] = (*TEXT_LIMITS, *OBJECT_FIELDS, *LIST_FIELDS)
REQUIRED_FIELDS = ("name", "template_id")

MAX_SPEC_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_TOOLSETS = 64
MAX_TOOLSET_NAME = 128

AGENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
TEMPLATE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def default_value(field: str) -> Any:
    """The value a spec field has when the client did not set it."""
    if field in OBJECT_FIELDS:
        return {}
    if field in LIST_FIELDS:
        return []
    return ""


def complete(spec: Mapping[str, Any]) -> dict[str, Any]:
    """`spec` with every field present (defaults where missing), in canonical order."""
    return {f: spec[f] if f in spec else default_value(f) for f in SPEC_FIELDS}


def name_key(name: str) -> str:
    """The form under which names are unique: NFKC, trimmed, case-folded."""
    return unicodedata.normalize("NFKC", name).strip().casefold()


def _has_control(text: str, allow_newlines: bool) -> bool:
    for ch in text:
        if ch in "\n\r\t" and allow_newlines:
            continue
        if unicodedata.category(ch) == "Cc":
            return True
    return False


def _depth(value: Any, level: int = 0) -> int:
    if isinstance(value, Mapping):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def _nul_paths(value: Any, path: str) -> Iterable[str]:
    if isinstance(value, str):
        if "\x00" in value:
            yield path
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if "\x00" in str(k):
                yield f"{path}.{k!r}"
            yield from _nul_paths(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _nul_paths(v, f"{path}[{i}]")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return _is_number(value) and float(value).is_integer()


def _check_text(field: str, value: Any, path: str) -> list[FieldViolation]:
    if not isinstance(value, str):
        return [FieldViolation(path, "must be a string")]
    out: list[FieldViolation] = []
    limit = TEXT_LIMITS[field]
    if len(value) > limit:
        out.append(FieldViolation(path, f"is {len(value)} characters; at most {limit} allowed"))
    if field == "name":
        if not value.strip():
            out.append(FieldViolation(path, "must not be blank"))
        elif _has_control(value, allow_newlines=False):
            out.append(FieldViolation(path, "must not contain control characters"))
    elif field == "template_id":
        if not value.strip():
            out.append(FieldViolation(path, "must not be blank"))
        elif not TEMPLATE_ID_PATTERN.match(value):
            out.append(FieldViolation(path, "must be letters, digits, '.', '_' or '-'"))
    elif field == "avatar_url":
        if value and not re.match(r"^https?://[^\s]+$", value):
            out.append(FieldViolation(path, "must be an http(s) URL"))
    elif "\x00" in value:
        out.append(FieldViolation(path, "must not contain NUL characters"))
    elif _has_control(value, allow_newlines=field in MULTILINE_FIELDS):
        allowed = " other than newlines and tabs" if field in MULTILINE_FIELDS else ""
        out.append(FieldViolation(path, f"must not contain control characters{allowed}"))
    return out


def _check_conversation(config: Mapping[str, Any], path: str) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    if "temperature" in config and config["temperature"] is not None:
        t = config["temperature"]
        if not _is_number(t) or not 0 <= t <= 2:
            out.append(FieldViolation(f"{path}.temperature", "must be a number from 0 to 2"))
    if "max_tokens" in config and config["max_tokens"] is not None:
        m = config["max_tokens"]
        if not _is_integer(m) or m <= 0:
            out.append(FieldViolation(f"{path}.max_tokens", "must be an integer greater than 0"))
    if "top_p" in config and config["top_p"] is not None:
        p = config["top_p"]
        if not _is_number(p) or not 0 <= p <= 1:
            out.append(FieldViolation(f"{path}.top_p", "must be a number from 0 to 1"))
    for key in ("historyLength", "history_length"):
        if key in config and config[key] is not None:
            h = config[key]
            if not _is_integer(h) or h < 0:
                out.append(FieldViolation(f"{path}.{key}", "must be an integer of 0 or more"))
    return out


def _check_object(field: str, value: Any, path: str) -> list[FieldViolation]:
    if not isinstance(value, Mapping):
        return [FieldViolation(path, "must be an object")]
    out = [FieldViolation(p, "must not contain NUL characters") for p in _nul_paths(value, path)]
    if _depth(value) > MAX_DEPTH:
        out.append(FieldViolation(path, f"is nested deeper than {MAX_DEPTH} levels"))
    if field == "conversation_config":
        out.extend(_check_conversation(value, path))
    return out


def _check_toolsets(value: Any, path: str) -> list[FieldViolation]:
    if not isinstance(value, list):
        return [FieldViolation(path, "must be a list of names")]
    out: list[FieldViolation] = []
    if len(value) > MAX_TOOLSETS:
        out.append(FieldViolation(path, f"has {len(value)} entries; at most {MAX_TOOLSETS}"))
    seen: set[str] = set()
    for i, item in enumerate(value):
        item_path = f"{path}[{i}]"
        if not isinstance(item, str) or not item.strip():
            out.append(FieldViolation(item_path, "must be a non-blank name"))
        elif len(item) > MAX_TOOLSET_NAME or _has_control(item, allow_newlines=False):
            out.append(
                FieldViolation(
                    item_path, f"must be at most {MAX_TOOLSET_NAME} printable characters"
                )
            )
        elif item in seen:
            out.append(FieldViolation(item_path, f"duplicates toolset {item!r}"))
        else:
            seen.add(item)
    return out


def validate_fields(
    spec: Mapping[str, Any], fields: Iterable[str], prefix: str = "spec."
) -> list[FieldViolation]:
    """Violations of the named fields of `spec` (fields absent from `spec` are skipped)."""
    out: list[FieldViolation] = []
    for field in fields:
        if field not in spec:
            continue
        value, path = spec[field], prefix + field
        if field in TEXT_LIMITS:
            out.extend(_check_text(field, value, path))
        elif field in OBJECT_FIELDS:
            out.extend(_check_object(field, value, path))
        elif field in LIST_FIELDS:
            out.extend(_check_toolsets(value, path))
        else:
            out.append(FieldViolation(path, "is not an agent field"))
    return out


def validate_size(spec: Mapping[str, Any], path: str = "spec") -> list[FieldViolation]:
    """A violation when the whole configuration is larger than MAX_SPEC_BYTES."""
    size = len(json.dumps(spec, ensure_ascii=False, default=str).encode())
    if size > MAX_SPEC_BYTES:
        return [FieldViolation(path, f"is {size} bytes; at most {MAX_SPEC_BYTES} allowed")]
    return []


def validate_agent_id(agent_id: str, path: str = "agent_id") -> list[FieldViolation]:
    """Violations of a client-chosen agent id."""
    if AGENT_ID_PATTERN.match(agent_id):
        return []
    return [
        FieldViolation(
            path, "must be 1-128 of letters, digits, '.', '_', ':' or '-', starting alphanumeric"
        )
    ]
