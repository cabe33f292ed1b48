"""Domain: drafting an agent from instructions — the request's rules and the draft's shape.

Pure functions the compose service uses around its one model call: which request
fields are bad, where the JSON object is in a model's reply (fenced or not), a
draft derived from the request alone, and the merge of the model's answer into a
draft that the registry would accept (name, description and toolsets within its
limits), with a warning for everything the model did not provide.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentrt_kit.errors import FieldViolation

MAX_INSTRUCTIONS = 8_000
MAX_SUGGESTED_NAME = 100
MAX_SUGGESTED_TOOLS = 50
MAX_TOOL_NAME = 128
# The registry's limits, so a draft can be created as it is.
MAX_NAME = 100
MAX_DESCRIPTION = 2_000
MAX_SYSTEM_PROMPT = 100_000
MAX_TOOLSETS = 64
TITLE_WORDS = 6
FALLBACK_NAME = "Draft agent"
DRAFT_KEYS = ("name", "description", "system_prompt", "toolsets", "template_config")
# A reply is searched this far for a JSON object; drafts are far smaller.
MAX_REPLY_SCAN = 200_000
MAX_PROMPT_TOOLS = 100
MAX_TOOL_DESCRIPTION = 200
MAX_OBJECT_STARTS = 100

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\r?\n(.*?)```", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s|\n")
_WHITESPACE = re.compile(r"\s+")
_CLAUSE_END = ".,;:!?"
_NOT_FROM_MODEL = "the model's reply was not a JSON draft; the draft was derived from the request"


@dataclass(frozen=True, slots=True)
class ComposeRequest:
    """What a caller asks to draft."""

    template_id: str
    instructions: str
    suggested_name: str = ""
    suggested_tools: tuple[str, ...] = ()
    llm_config_id: str = ""


@dataclass(frozen=True, slots=True)
class AgentDraft:
    """An agent configuration ready to be created (nothing is stored)."""

    name: str
    description: str
    template_id: str
    system_prompt: str
    toolsets: tuple[str, ...] = ()
    template_config: Mapping[str, Any] = field(default_factory=dict)
    llm_config_id: str = ""


def request_violations(request: ComposeRequest) -> list[FieldViolation]:
    """One violation per bad field of `request` (the provider is checked by the caller)."""
    out: list[FieldViolation] = []
    if not request.template_id:
        out.append(FieldViolation("template_id", "is required"))
    if not request.instructions:
        out.append(FieldViolation("instructions", "is required"))
    elif not request.instructions.strip():
        out.append(FieldViolation("instructions", "must not be blank"))
    elif len(request.instructions) > MAX_INSTRUCTIONS:
        out.append(FieldViolation("instructions", f"must be at most {MAX_INSTRUCTIONS} characters"))
    if len(request.suggested_name) > MAX_SUGGESTED_NAME:
        out.append(
            FieldViolation("suggested_name", f"must be at most {MAX_SUGGESTED_NAME} characters")
        )
    elif _has_control(request.suggested_name):
        out.append(FieldViolation("suggested_name", "must not contain control characters"))
    if len(request.suggested_tools) > MAX_SUGGESTED_TOOLS:
        out.append(
            FieldViolation("suggested_tools", f"must hold at most {MAX_SUGGESTED_TOOLS} names")
        )
    for i, tool in enumerate(request.suggested_tools[:MAX_SUGGESTED_TOOLS]):
        if not tool.strip():
            out.append(FieldViolation(f"suggested_tools[{i}]", "must not be blank"))
        elif len(tool) > MAX_TOOL_NAME:
            out.append(
                FieldViolation(
                    f"suggested_tools[{i}]", f"must be at most {MAX_TOOL_NAME} characters"
                )
            )
    return out


def reply_object(text: str) -> dict[str, Any] | None:
    """The JSON object a model's reply holds, or None.

    Code fences are looked in first (```json ... ```), then the whole reply; in each,
    the first `{` that starts a valid JSON object wins.
    """
    text = text[:MAX_REPLY_SCAN]
    for block in [*_FENCE.findall(text), text]:
        found = _first_object(block)
        if found is not None:
            return found
    return None


def _first_object(text: str) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    start = text.find("{")
    tries = 0
    while start != -1 and tries < MAX_OBJECT_STARTS:
        tries += 1
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def one_line(text: str, limit: int) -> str:
    """`text` on one printable line, whitespace collapsed, cut at a word within `limit`."""
    printable = "".join(ch if ch.isprintable() else " " for ch in text)
    line = _WHITESPACE.sub(" ", printable).strip()
    if len(line) <= limit:
        return line
    head = line[: limit + 1]
    cut = head.rsplit(" ", 1)[0] if " " in head else head[:limit]
    return cut.rstrip()


def title_of(instructions: str) -> str:
    """A name from the instructions' first words: capitalised, printable, at most 100 chars.

    At most six words, up to the first that ends a clause (`.`, `,`, `;`, `:`, `!`, `?`).
    """
    words: list[str] = []
    for word in one_line(instructions, MAX_NAME * 4).split(" ")[:TITLE_WORDS]:
        words.append(word)
        if word.endswith(tuple(_CLAUSE_END)):
            break
    title = one_line(" ".join(words), MAX_NAME).rstrip(_CLAUSE_END + "-")
    return title[:1].upper() + title[1:] if title else FALLBACK_NAME


def first_sentence(instructions: str) -> str:
    """The instructions' first sentence (or line), on one line, at most 2,000 chars."""
    stripped = instructions.strip()
    head = _SENTENCE_END.split(stripped, maxsplit=1)[0]
    return one_line(head, MAX_DESCRIPTION)


def derived_draft(request: ComposeRequest, default_config: Mapping[str, Any]) -> AgentDraft:
    """A draft made from the request alone (when the model gave no usable answer)."""
    return AgentDraft(
        name=_suggested_name(request) or title_of(request.instructions),
        description=first_sentence(request.instructions),
        template_id=request.template_id,
        system_prompt=_multiline(request.instructions, MAX_SYSTEM_PROMPT),
        toolsets=_toolsets(request.suggested_tools),
        template_config=dict(default_config),
        llm_config_id=request.llm_config_id,
    )


def merge_draft(
    reply: Mapping[str, Any] | None,
    request: ComposeRequest,
    default_config: Mapping[str, Any],
) -> tuple[AgentDraft, list[str]]:
    """The draft from the model's JSON answer, and warnings for what the model did not give.

    A reply with none of the draft's keys is no answer: the whole draft is derived
    from the request. Otherwise each missing or mistyped key is derived on its own.
    The request's template, provider and suggested name always win.
    """
    derived = derived_draft(request, default_config)
    if reply is None or not any(key in reply for key in DRAFT_KEYS):
        return derived, [_NOT_FROM_MODEL]
    warnings: list[str] = []

    def missing(key: str, how: str) -> None:
        problem = "missing from" if key not in reply else "not usable in"
        warnings.append(f"{key}: {problem} the model's reply; {how}")

    name = _suggested_name(request)
    if not name:
        raw = reply.get("name")
        name = one_line(raw, MAX_NAME) if isinstance(raw, str) else ""
        if not name:
            name = derived.name
            missing("name", "made from the instructions")
    raw = reply.get("description")
    if isinstance(raw, str):
        description = _multiline(raw, MAX_DESCRIPTION)
    else:
        description = derived.description
        missing("description", "the instructions' first sentence is used")
    raw = reply.get("system_prompt")
    if isinstance(raw, str) and raw.strip():
        system_prompt = _multiline(raw, MAX_SYSTEM_PROMPT)
    else:
        system_prompt = derived.system_prompt
        missing("system_prompt", "the instructions are used")
    raw = reply.get("toolsets")
    if isinstance(raw, list) and all(isinstance(t, str) for t in raw):
        toolsets = _toolsets(raw)
    else:
        toolsets = derived.toolsets
        missing("toolsets", "the suggested tools are used")
    raw = reply.get("template_config")
    if isinstance(raw, Mapping):
        template_config: Mapping[str, Any] = dict(raw)
    else:
        template_config = derived.template_config
        missing("template_config", "the template's defaults are used")
    draft = AgentDraft(
        name=name,
        description=description,
        template_id=request.template_id,
        system_prompt=system_prompt,
        toolsets=toolsets,
        template_config=template_config,
        llm_config_id=request.llm_config_id,
    )
    return draft, warnings


def prompts(
    template: Mapping[str, Any],
    tools: Sequence[tuple[str, str]] | None,
    request: ComposeRequest,
) -> tuple[str, str]:
    """The system and user messages asking a model for a draft.

    Args:
        template: the template's descriptor (id, name, description, config_schema).
        tools: (name, description) of the tools an agent may use; None when unknown.
        request: what the caller asked for.
    """
    schema = json.dumps(template.get("config_schema", {}), ensure_ascii=False, sort_keys=True)
    if tools is None:
        tool_text = "The list of tools is not available now; use the suggested tools, if any."
    elif not tools:
        tool_text = "No tools are available: toolsets must be an empty list."
    else:
        listed = "\n".join(
            f"- {name}: {one_line(description, MAX_TOOL_DESCRIPTION) or name}"
            for name, description in tools[:MAX_PROMPT_TOOLS]
        )
        tool_text = (
            'Tools the agent may use ("custom" selects all of them; otherwise list the '
            f"names it needs):\n{listed}"
        )
    system = (
        "You draft the configuration of an AI agent for the Agent Runtime.\n\n"
        f"The agent uses the template {template.get('id', '')!r} "
        f"({template.get('name', '')}): {template.get('description', '')}\n"
        f"Its template_config must be valid against this JSON Schema:\n{schema}\n\n"
        f"{tool_text}\n\n"
        "Answer with ONLY a JSON object, no other text, with exactly these keys:\n"
        f'- "name": a short name for the agent (at most {MAX_NAME} characters);\n'
        '- "description": one or two sentences saying what the agent does;\n'
        '- "system_prompt": the system prompt the agent runs with;\n'
        '- "toolsets": a list of tool names;\n'
        '- "template_config": an object valid against the schema above.'
    )
    lines = [f"Instructions for the agent:\n{request.instructions.strip()}"]
    if request.suggested_name.strip():
        lines.append(f"Suggested name: {one_line(request.suggested_name, MAX_NAME)}")
    if request.suggested_tools:
        lines.append(f"Suggested tools: {', '.join(request.suggested_tools)}")
    return system, "\n\n".join(lines)


def unknown_keys(config: Mapping[str, Any], known: Sequence[str]) -> list[str]:
    """The top-level keys of `config` that are not in `known`, in order."""
    names = set(known)
    return [key for key in config if key not in names]


def _suggested_name(request: ComposeRequest) -> str:
    return one_line(request.suggested_name, MAX_NAME)


def _toolsets(names: Sequence[str]) -> tuple[str, ...]:
    """Distinct, non-blank names within the registry's limits, in the model's order."""
    out: list[str] = []
    for name in names:
        clean = one_line(name, MAX_TOOL_NAME)
        if clean and clean not in out:
            out.append(clean)
    return tuple(out[:MAX_TOOLSETS])


def _multiline(text: str, limit: int) -> str:
    """`text` without control characters other than newlines and tabs, cut to `limit`."""
    kept = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")
    return kept.strip()[:limit]


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)
