"""Domain: a template config's JSON Schema as the field list old clients read (COMPAT).

Each field is `{key, type, description?, default?, optional?, validation{minLength,
maxLength, min, max, pattern, enum}?, items?, properties?}`: `items` describes an
array's elements (a field without a key), `properties` an object's fields.
`$ref`s into `$defs` are followed and `anyOf: [X, null]` (an optional value) reads
as X.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_VALIDATION_KEYS = {
    "minLength": "minLength",
    "maxLength": "maxLength",
    "minimum": "min",
    "maximum": "max",
    "exclusiveMinimum": "min",
    "exclusiveMaximum": "max",
    "minItems": "minLength",
    "maxItems": "maxLength",
    "pattern": "pattern",
    "enum": "enum",
}


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any], depth: int = 0) -> dict[str, Any]:
    """`schema` with `$ref` followed and a nullable `anyOf` reduced to its value type."""
    merged = dict(schema)
    ref = merged.pop("$ref", None)
    if isinstance(ref, str) and ref.startswith("#/$defs/") and depth < 32:
        target = root.get("$defs", {}).get(ref.removeprefix("#/$defs/"), {})
        merged = {**_resolve(target, root, depth + 1), **merged}
    options = merged.get("anyOf")
    if isinstance(options, list):
        non_null = [o for o in options if isinstance(o, Mapping) and o.get("type") != "null"]
        if len(non_null) == 1:
            merged.pop("anyOf")
            merged = {**_resolve(non_null[0], root, depth + 1), **merged}
            merged.setdefault("_nullable", True)
    if "const" in merged and "enum" not in merged:
        merged["enum"] = [merged["const"]]
    return merged


def _type(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if isinstance(kind, str):
        return kind
    if "enum" in schema:
        values = schema["enum"]
        if all(isinstance(v, str) for v in values):
            return "string"
    if "properties" in schema:
        return "object"
    return "any"


def _describe(schema: Mapping[str, Any], root: Mapping[str, Any]) -> dict[str, Any]:
    resolved = _resolve(schema, root)
    field: dict[str, Any] = {"type": _type(resolved)}
    if isinstance(resolved.get("description"), str):
        field["description"] = resolved["description"]
    elif isinstance(resolved.get("title"), str) and "properties" not in resolved:
        field["description"] = resolved["title"]
    if "default" in resolved:
        field["default"] = resolved["default"]
    validation = {out: resolved[key] for key, out in _VALIDATION_KEYS.items() if key in resolved}
    if validation:
        field["validation"] = validation
    if field["type"] == "array" and isinstance(resolved.get("items"), Mapping):
        field["items"] = _describe(resolved["items"], root)
    if field["type"] == "object" and isinstance(resolved.get("properties"), Mapping):
        field["properties"] = fields_of(resolved, root)
    return field


def fields_of(
    schema: Mapping[str, Any], root: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The field list of an object schema (its properties, in declaration order)."""
    root = schema if root is None else root
    resolved = _resolve(schema, root)
    required = set(resolved.get("required", ()))
    out: list[dict[str, Any]] = []
    for key, prop in (resolved.get("properties") or {}).items():
        if not isinstance(prop, Mapping):
            continue
        field = {"key": key, **_describe(prop, root)}
        if key not in required:
            field["optional"] = True
        out.append(field)
    return out
