"""Domain: what a client brings to a run besides messages — its own tools and an answer format.

OpenAI-style function calling: the client offers functions it runs itself
(`ClientTool`), says whether the model may or must call them (`ToolChoice`),
and may require the final answer to be JSON (`ResponseFormat`). A model message
calling client tools ends the run; the client sends the results back as tool
messages. This module holds the values, the checks a request must pass before a
run starts (each bad field named), the check of a final answer against its
format, and the minimal instance of a JSON Schema the offline model answers with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jsonschema import exceptions as schema_errors
from jsonschema import validators

from agentrt_kit.errors import FieldViolation

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
TOOL_CALL_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
MAX_CLIENT_TOOLS = 128
TOOL_CHOICES = ("auto", "none", "required", "function")
RESPONSE_TYPES = ("text", "json_object", "json_schema")
DEFAULT_FORMAT_NAME = "response"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A model's call of a tool: its id, the tool's name and the arguments as JSON text."""

    id: str
    name: str
    arguments_json: str = "{}"


@dataclass(frozen=True, slots=True)
class ClientTool:
    """A function the client offers the model and runs itself (OpenAI `tools[].function`)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] | None = None  # JSON Schema of the arguments; None: none
    strict: bool = False

    def function(self) -> dict[str, Any]:
        """The tool in OpenAI's wire form (`{"type": "function", "function": {...}}`)."""
        function: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.parameters or {"type": "object", "properties": {}}),
        }
        if self.strict:
            function["strict"] = True
        return {"type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """Which client tools the model may call: auto, none, required, or one function."""

    mode: str = "auto"
    function_name: str = ""

    @property
    def offers_tools(self) -> bool:
        """False for `none`: the client's tools are not offered at all."""
        return self.mode != "none"

    def model_choice(self) -> str | None:
        """The `tool_choice` the model gets: None (the model decides), required, or a name."""
        if self.mode == "required":
            return "required"
        if self.mode == "function":
            return self.function_name
        return None


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """The format the run's final answer must have."""

    type: str = "text"
    name: str = ""
    schema: Mapping[str, Any] | None = None
    strict: bool = False

    @property
    def constrains(self) -> bool:
        """True unless plain text is allowed."""
        return self.type != "text"

    def wire(self) -> dict[str, Any] | None:
        """The format in OpenAI's wire form (`response_format` of a request); None for text."""
        if self.type == "json_object":
            return {"type": "json_object"}
        if self.type == "json_schema":
            body: dict[str, Any] = {
                "name": self.name or DEFAULT_FORMAT_NAME,
                "schema": dict(self.schema or {}),
            }
            if self.strict:
                body["strict"] = True
            return {"type": "json_schema", "json_schema": body}
        return None

    def problem_with(self, answer: str) -> str | None:
        """Why `answer` does not meet this format (None when it does).

        The answer must be the JSON document itself (surrounding whitespace aside):
        a client parses it as is, so a code fence around it does not pass.
        """
        if not self.constrains:
            return None
        try:
            document = json.loads(answer)
        except json.JSONDecodeError as e:
            return f"the answer is not JSON: {e.msg} at line {e.lineno} column {e.colno}"
        if self.type == "json_object":
            if not isinstance(document, dict):
                return f"the answer is JSON but not an object (it is {_json_type(document)})"
            return None
        schema = dict(self.schema or {})
        validator = validators.validator_for(schema)(schema)
        errors = sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.path)))
        if not errors:
            return None
        first = errors[0]
        name = self.name or DEFAULT_FORMAT_NAME
        return (
            f"the answer does not match the response format {name!r}: "
            f"at {_path(first.absolute_path)}: {first.message}"
        )[:1000]


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _path(parts: Sequence[Any]) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


# -------------------------------------------------------------------- checks


def _schema_problem(schema: Mapping[str, Any]) -> str | None:
    try:
        validators.validator_for(dict(schema)).check_schema(dict(schema))
    except schema_errors.SchemaError as e:
        return f"is not a valid JSON Schema: at {_path(e.path)}: {e.message}"[:500]
    return None


def check_schema(schema: Mapping[str, Any], field: str) -> list[FieldViolation]:
    """Violations of `schema` as a JSON Schema of an object (empty when it is one)."""
    problem = _schema_problem(schema)
    if problem is not None:
        return [FieldViolation(field, problem)]
    kind = schema.get("type")
    if kind is not None and kind != "object":
        return [FieldViolation(f"{field}.type", "must be 'object' (the arguments are an object)")]
    return []


def check_client_tools(tools: Sequence[ClientTool], choice: ToolChoice) -> list[FieldViolation]:
    """What is wrong with a request's client tools and tool choice, field by field.

    Names must match `^[a-zA-Z0-9_-]{1,64}$` and be unique; parameters must be a
    JSON Schema of an object; the mode must be known and `function` must name a
    supplied tool; `required` and `function` need client tools.
    """
    problems: list[FieldViolation] = []
    if len(tools) > MAX_CLIENT_TOOLS:
        problems.append(
            FieldViolation("input.client_tools", f"must hold at most {MAX_CLIENT_TOOLS} tools")
        )
    seen: set[str] = set()
    for i, tool in enumerate(tools[:MAX_CLIENT_TOOLS]):
        where = f"input.client_tools[{i}]"
        if not TOOL_NAME.fullmatch(tool.name):
            problems.append(FieldViolation(f"{where}.name", "must be 1-64 of [a-zA-Z0-9_-]"))
        elif tool.name in seen:
            problems.append(
                FieldViolation(f"{where}.name", f"{tool.name!r} is given by an earlier tool")
            )
        seen.add(tool.name)
        if tool.parameters is not None:
            problems.extend(check_schema(tool.parameters, f"{where}.parameters"))
    if choice.mode not in TOOL_CHOICES:
        problems.append(
            FieldViolation("input.tool_choice.mode", f"must be one of {', '.join(TOOL_CHOICES)}")
        )
    elif choice.mode in ("required", "function") and not tools:
        problems.append(
            FieldViolation("input.tool_choice.mode", f"{choice.mode} needs client tools")
        )
    elif choice.mode == "function" and choice.function_name not in seen:
        problems.append(
            FieldViolation(
                "input.tool_choice.function_name",
                f"{choice.function_name!r} is not one of the client tools",
            )
        )
    return problems


def check_collisions(tools: Sequence[ClientTool], own_tools: Sequence[str]) -> list[FieldViolation]:
    """Client tools named like one of the agent's own tools (the model cannot tell them apart)."""
    own = set(own_tools)
    return [
        FieldViolation(
            f"input.client_tools[{i}].name", f"{t.name!r} is one of the agent's own tools"
        )
        for i, t in enumerate(tools)
        if t.name in own
    ]


def check_tool_call(
    call: ToolCall, field: str, *, earlier_ids: Collection[str] = ()
) -> list[FieldViolation]:
    """What is wrong with a tool call a client sends back in an assistant message.

    The id must be 1-128 printable characters and not the id of an earlier call,
    the name is required, and the arguments must be a JSON object.

    Args:
        call: The call as the client sent it.
        field: The call's field path (`input.messages[i].tool_calls[j]`).
        earlier_ids: The ids of the request's calls before this one.

    Returns:
        The violations, each naming its field under `field`; empty when the call is fine.
    """
    problems: list[FieldViolation] = []
    if not TOOL_CALL_ID.fullmatch(call.id):
        problems.append(FieldViolation(f"{field}.id", "must be 1-128 printable characters"))
    elif call.id in earlier_ids:
        problems.append(FieldViolation(f"{field}.id", "is the id of an earlier call"))
    if not call.name:
        problems.append(FieldViolation(f"{field}.name", "is required"))
    try:
        arguments = json.loads(call.arguments_json or "{}")
    except json.JSONDecodeError as e:
        arguments = None
        reason = f"is not JSON: {e.msg}"
    else:
        reason = "must be a JSON object"
    if not isinstance(arguments, dict):
        problems.append(FieldViolation(f"{field}.arguments_json", reason))
    return problems


def check_response_format(fmt: ResponseFormat) -> list[FieldViolation]:
    """What is wrong with a response format, field by field."""
    if fmt.type not in RESPONSE_TYPES:
        return [
            FieldViolation(
                "input.response_format.type", f"must be one of {', '.join(RESPONSE_TYPES)}"
            )
        ]
    problems: list[FieldViolation] = []
    if fmt.type == "json_schema":
        if fmt.name and not TOOL_NAME.fullmatch(fmt.name):
            problems.append(
                FieldViolation("input.response_format.name", "must be 1-64 of [a-zA-Z0-9_-]")
            )
        if fmt.schema is None:
            problems.append(
                FieldViolation("input.response_format.schema", "is required for json_schema")
            )
        elif (problem := _schema_problem(fmt.schema)) is not None:
            problems.append(FieldViolation("input.response_format.schema", problem))
    return problems


# ----------------------------------------------------------- minimal instances


def minimal_instance(schema: Mapping[str, Any], text: str) -> Any:
    """A small, deterministic value of `schema`.

    Strings are `text`, numbers 1, booleans true, arrays empty, null null; an
    object has its required properties (all of them when none is required),
    each made the same way. `const` and `enum` give their (first) value,
    `anyOf`/`oneOf`/`allOf` their first branch, and local `$ref`s are followed.
    """
    return _instance(schema, schema, text, depth=0)


def _instance(schema: Any, root: Mapping[str, Any], text: str, depth: int) -> Any:
    if not isinstance(schema, Mapping) or depth > 32:
        return text
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        return _instance(target, root, text, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            return _instance(branches[0], root, text, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind is None and "properties" in schema:
        kind = "object"
    if kind == "object":
        properties = schema.get("properties") or {}
        required = [k for k in schema.get("required") or [] if k in properties]
        return {
            key: _instance(properties[key], root, text, depth + 1)
            for key in (required or list(properties))
        }
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return text
