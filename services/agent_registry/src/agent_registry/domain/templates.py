"""Domain: template descriptors and validation of an agent's template config.

Executors publish a descriptor (id, version, JSON Schema, field list) per
template; an agent's `template_config` must satisfy its template's schema.
Violations name the path inside the config, e.g.
`spec.template_config.steps[0].name`.

Two custom keywords carry what the executors would otherwise only find at run time:

- `x-agentrt-acyclic` on a steps array: `{key: [fields], depends_on: field,
  default_key?: "step_{n}", aliases?: [fields], reserved?: [keys]}`. A step's key is
  the first `key` field holding a non-empty string, else `default_key` with its
  1-based position (also for a step given as a bare string). A reference in
  `depends_on` names a key, or through an `aliases` field exactly one step. Keys
  must be distinct and not reserved; references must name another step; the
  dependencies must not form a cycle.
- `x-agentrt-ceiling` on a number or array: a limit name (or `{limit, reserve}`);
  the value (an array's length) plus `reserve` must not exceed the lowest ceiling
  the executors publish under that name. Without a published ceiling it is not checked.

A third, `x-agentrt-code` on the root object of a template whose agents bring their
own code, is described in `domain/code.py`: the code must parse and define its entry
point, and its runtime and dependencies must be what the executors' sandboxes offer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator

from agent_registry.domain.code import code_problems
from agent_registry.domain.executors import SandboxRuntime
from agentrt_kit.errors import FieldViolation

MAX_VIOLATIONS = 50
MAX_GRAPH_ITEMS = 200  # the cycle search is quadratic per cycle: bound what one request costs
ACYCLIC = "x-agentrt-acyclic"
CEILING = "x-agentrt-ceiling"
CODE = "x-agentrt-code"


@dataclass(frozen=True)
class TemplateDescriptor:
    """What the registry knows of a template: enough to validate configs."""

    id: str
    version: str
    config_schema: Mapping[str, Any]
    name: str = ""
    description: str = ""
    framework: str = ""
    config_fields: list[Any] = field(default_factory=list)

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> TemplateDescriptor:
        """Parse a published descriptor document.

        Raises:
            ValueError: when required keys are missing or the schema is not a valid JSON Schema.
        """
        try:
            descriptor = cls(
                id=str(doc["id"]),
                version=str(doc["version"]),
                config_schema=dict(doc.get("config_schema") or {"type": "object"}),
                name=str(doc.get("name", "")),
                description=str(doc.get("description", "")),
                framework=str(doc.get("framework", "")),
                config_fields=list(doc.get("config_fields") or []),
            )
            Draft202012Validator.check_schema(descriptor.config_schema)
        except (KeyError, TypeError) as e:
            raise ValueError(f"template descriptor lacks {e}") from None
        except SchemaError as e:
            raise ValueError(f"template schema is invalid: {e.message}") from None
        return descriptor

    def to_document(self) -> dict[str, Any]:
        """The published form of this descriptor."""
        return {
            "id": self.id,
            "version": self.version,
            "name": self.name,
            "description": self.description,
            "framework": self.framework,
            "config_schema": dict(self.config_schema),
            "config_fields": list(self.config_fields),
        }

    @property
    def uses_ceilings(self) -> bool:
        """Whether the schema bounds any value by an executor limit."""
        return _mentions(self.config_schema, CEILING)

    def validate_config(
        self,
        config: Mapping[str, Any],
        path: str = "spec.template_config",
        limits: Mapping[str, float] | None = None,
        runtimes: Sequence[SandboxRuntime] = (),
    ) -> list[FieldViolation]:
        """One violation per schema error, at the path of the offending value.

        `limits` are the executors' ceilings by name (`x-agentrt-ceiling`); a limit
        missing from it bounds nothing. `runtimes` are the sandbox runtimes the
        executors offer (`x-agentrt-code`).
        """
        validator = _validator_class(tuple(sorted((limits or {}).items())), tuple(runtimes))(
            self.config_schema
        )
        out: list[FieldViolation] = []
        errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
        for error in errors[:MAX_VIOLATIONS]:
            out.append(FieldViolation(json_path(path, error.absolute_path), error.message))
        return out


def json_path(prefix: str, parts: Any) -> str:
    """`prefix.key[0].other` for a jsonschema error path."""
    out = prefix
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _mentions(schema: Any, keyword: str) -> bool:
    if isinstance(schema, Mapping):
        return keyword in schema or any(_mentions(v, keyword) for v in schema.values())
    if isinstance(schema, list):
        return any(_mentions(v, keyword) for v in schema)
    return False


@lru_cache(maxsize=16)
def _validator_class(
    limits: tuple[tuple[str, float], ...], runtimes: tuple[SandboxRuntime, ...]
) -> type[Validator]:
    """Draft 2020-12 plus our keywords, the ceilings and runtimes bound in (they change rarely)."""
    extended: type[Validator] = validators.extend(
        Draft202012Validator,
        {
            ACYCLIC: _acyclic_keyword,
            CEILING: partial(_ceiling_keyword, dict(limits)),
            CODE: partial(_code_keyword, runtimes),
        },
    )
    return extended


def _acyclic_keyword(
    validator: Validator, rule: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not isinstance(instance, list) or not isinstance(rule, Mapping):
        return
    bound = schema.get("maxItems")
    if isinstance(bound, int) and len(instance) > bound:
        return  # `maxItems` refuses it; the graph of an oversized array is not worth walking
    if len(instance) > MAX_GRAPH_ITEMS:
        yield ValidationError(
            f"has {len(instance)} items; step graphs of at most {MAX_GRAPH_ITEMS} are checked"
        )
        return
    for where, message in step_graph_problems(instance, rule):
        yield ValidationError(message, path=where)


def _ceiling_keyword(
    limits: Mapping[str, float],
    validator: Validator,
    rule: Any,
    instance: Any,
    schema: Mapping[str, Any],
) -> Iterator[ValidationError]:
    if isinstance(rule, str):
        name, reserve = rule, 0
    elif isinstance(rule, Mapping) and isinstance(rule.get("limit"), str):
        name, reserve = rule["limit"], rule.get("reserve", 0)
    else:
        return
    bound = limits.get(name)
    if bound is None or not _is_number(reserve):
        return
    allowed = bound - reserve
    if isinstance(instance, list):
        if len(instance) > allowed:
            yield ValidationError(
                f"has {len(instance)} items; at most {max(allowed, 0):g} fit the executors' "
                f"{name} ceiling of {bound:g} (the template's graph takes {reserve:g} more)"
            )
    elif _is_number(instance) and instance > allowed:
        own = f" less {reserve:g} the template keeps" if reserve else ""
        yield ValidationError(
            f"is {instance:g}, above the executors' {name} ceiling of {bound:g}{own}"
        )


def _code_keyword(
    runtimes: Sequence[SandboxRuntime],
    validator: Validator,
    rule: Any,
    instance: Any,
    schema: Mapping[str, Any],
) -> Iterator[ValidationError]:
    if not isinstance(instance, Mapping) or not isinstance(rule, Mapping):
        return
    for where, message in code_problems(instance, rule, runtimes, schema):
        yield ValidationError(message, path=where)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def step_graph_problems(
    items: Sequence[Any], rule: Mapping[str, Any]
) -> list[tuple[tuple[int | str, ...], str]]:
    """What `x-agentrt-acyclic` refuses in `items`: (path inside the array, why) pairs.

    Items the schema itself refuses (no key, wrong type) leave the graph unknown,
    so nothing is reported for the array then: the schema errors say what is wrong.
    """
    key_fields = [f for f in rule.get("key") or () if isinstance(f, str)]
    dep_field = rule.get("depends_on", "depends_on")
    default_key = rule.get("default_key")
    alias_fields = [f for f in rule.get("aliases") or () if isinstance(f, str)]
    reserved = {k for k in rule.get("reserved") or () if isinstance(k, str)}
    if not isinstance(dep_field, str):
        return []

    keys: list[str] = []
    key_paths: list[tuple[int | str, ...]] = []
    deps: list[list[tuple[int, str]]] = []
    for i, item in enumerate(items):
        own = next(
            (f for f in key_fields if isinstance(item, Mapping) and _text(item.get(f))), None
        )
        if isinstance(item, Mapping) and own is not None:
            keys.append(item[own])
            key_paths.append((i, own))
        elif isinstance(item, str | Mapping) and isinstance(default_key, str):
            keys.append(default_key.replace("{n}", str(i + 1)))
            key_paths.append((i,))
        else:
            return []
        refs = item.get(dep_field, []) if isinstance(item, Mapping) else []
        deps.append(
            [(j, r) for j, r in enumerate(refs) if isinstance(r, str)]
            if isinstance(refs, list)
            else []
        )

    problems: list[tuple[tuple[int | str, ...], str]] = []
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in first:
            problems.append(
                (key_paths[i], f"id {key!r} is the id of step {first[key]} too; ids must differ")
            )
        else:
            first[key] = i
        if key in reserved:
            problems.append((key_paths[i], f"id {key!r} is reserved"))
    if len(first) < len(keys):
        return problems  # references to a repeated id are ambiguous: stop here

    by_alias: dict[str, list[str]] = {}
    for item, key in zip(items, keys, strict=True):
        for f in alias_fields:
            if isinstance(item, Mapping) and _text(item.get(f)):
                by_alias.setdefault(item[f], []).append(key)
    edges: dict[str, list[tuple[str, int]]] = {k: [] for k in keys}  # key -> (target, ref index)
    for i, key in enumerate(keys):
        for j, ref in deps[i]:
            where = (i, dep_field, j)
            targets = [ref] if ref in first else list(dict.fromkeys(by_alias.get(ref, ())))
            if len(targets) > 1:
                problems.append((where, f"name {ref!r} is shared by several steps; use an id"))
            elif not targets:
                problems.append((where, f"{ref!r} names no step (step ids: {', '.join(keys)})"))
            elif targets[0] == key:
                problems.append((where, "a step cannot depend on itself"))
            else:
                edges[key].append((targets[0], j))
    for cycle in dependency_cycles(keys, edges):
        closing, back_to = cycle[-2], cycle[-1]
        j = next(j for target, j in edges[closing] if target == back_to)
        problems.append(
            (
                (first[closing], dep_field, j),
                "steps depend on each other in a cycle: " + " -> ".join(cycle),
            )
        )
    return problems


def dependency_cycles(
    keys: Sequence[str], edges: Mapping[str, Sequence[tuple[str, int]]]
) -> list[list[str]]:
    """Cycles among the steps, each as keys with the first repeated last.

    One cycle is found the way the executors find it (from the first step still
    waiting, following its first dependency in step order); its closing edge is
    then set aside and the search repeats, so every independent cycle is named.
    """
    remaining = {k: [t for t, _ in edges.get(k, ())] for k in keys}
    found: list[list[str]] = []
    while True:
        waiting = {k: set(ts) for k, ts in remaining.items()}
        progress = True
        while progress:
            progress = False
            for k in keys:
                if k in waiting and not waiting[k] & waiting.keys():
                    del waiting[k]
                    progress = True
        if not waiting or len(found) >= MAX_VIOLATIONS:
            return found
        path = [next(k for k in keys if k in waiting)]
        while True:
            nxt = next(k for k in keys if k in waiting and k in waiting[path[-1]])
            if nxt in path:
                cycle = [*path[path.index(nxt) :], nxt]
                break
            path.append(nxt)
        found.append(cycle)
        remaining[cycle[-2]].remove(cycle[-1])


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)
