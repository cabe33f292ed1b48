"""Adapter: the `POST /v1/chat/completions` body, validated as OpenAI's API validates it.

Every parameter of OpenAI's chat completions request is known here. Each is either
honoured or refused with a 400 naming it; a key OpenAI does not define is refused
too (`unknown_parameter`). Honoured: the messages (with `tool` messages and the
assistant's `tool_calls`), `stream`/`stream_options`, the sampling parameters,
`tools`/`tool_choice` (client-side function tools, as the deprecated
`functions`/`function_call` too), `response_format`, `n` = 1, `user`/
`safety_identifier`, `metadata`, `store`, `service_tier` `auto`/`default`,
`parallel_tool_calls` true. Refused when set to what this runtime cannot do:
`logit_bias`, `logprobs`/`top_logprobs`, `seed`, `audio`, non-text `modalities`,
`prediction`, `reasoning_effort`, `verbosity`, `web_search_options`,
`prompt_cache_key`. Ranges are checked first, as OpenAI does, so a bad value names
its range.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from annotated_types import Len
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from agent_gateway.domain.chat import (
    ClientTool,
    Message,
    ResponseFormat,
    RunInput,
    ToolCall,
    ToolChoice,
    new_task_id,
)

Id = Annotated[str, StringConstraints(max_length=128, pattern=r"^[A-Za-z0-9._:@/+=-]*$")]
# Free text OpenAI and old clients put in `user` and the context: no control characters.
Label = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")]
FunctionName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
Text = Annotated[str, StringConstraints(max_length=32_000)]


def _integral(value: Any) -> Any:
    """2.0 is an integer in JSON Schema (and in the document); strict mode alone refuses it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Bodies are checked strictly (no "1" for 1, no 0 for false), as the document types them.
Integral = BeforeValidator(_integral)


class Strict(BaseModel):
    """A part of the body: strict types, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(Strict):
    """A content part: only text is accepted (this runtime's models read text)."""

    type: Literal["text"]
    text: Text


class FunctionCall(Strict):
    """The function an assistant's tool call named, with its arguments as JSON text."""

    name: FunctionName
    arguments: Annotated[str, StringConstraints(max_length=32_000)]


class ToolCallIn(Strict):
    """A tool call of an earlier assistant message."""

    id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    type: Literal["function"]
    function: FunctionCall


# `_fits_role` in JSON Schema: a tool message names its call; only an assistant calls tools.
_ROLE_RULES: JsonDict = {
    "allOf": [
        {
            "if": {"properties": {"role": {"const": "tool"}}},
            "then": {
                "required": ["tool_call_id"],
                "properties": {"tool_call_id": {"type": "string", "minLength": 1}},
            },
        },
        {
            "if": {
                "required": ["tool_calls"],
                "properties": {"tool_calls": {"type": "array", "minItems": 1}},
            },
            "then": {"properties": {"role": {"const": "assistant"}}},
        },
    ]
}


class ChatMessageIn(Strict):
    """One message (`developer` is taken as `system`, as OpenAI's newer clients send it)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_ROLE_RULES)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: Annotated[str, StringConstraints(max_length=64)] | None = None
    tool_call_id: Annotated[str, StringConstraints(max_length=128)] | None = None
    tool_calls: Annotated[list[ToolCallIn], Len(0, 128)] | None = None
    refusal: Text | None = None  # an assistant message as OpenAI returned it

    @model_validator(mode="after")
    def _fits_role(self) -> ChatMessageIn:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message has tool_calls")
        return self

    def text(self) -> str:
        """The message's text."""
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(Strict):
    """`stream_options`: `include_usage` (and `include_obfuscation`, which is a no-op here)."""

    include_usage: bool = False
    include_obfuscation: bool = False


class ChatMetadata(BaseModel):
    """`metadata`: the conversation (`task_id`), the caller's context and user.

    `background` (true or "true") runs the completion in the background. Other keys are
    OpenAI's free-form tags (strings, at most 16 keys): accepted, and kept on a
    background run's record.
    """

    model_config = ConfigDict(extra="allow", strict=True)

    task_id: Id | None = None
    context_id: Label | None = None
    user_id: Label | None = None
    background: bool | Literal["true", "false"] | None = None

    @model_validator(mode="after")
    def _tags(self) -> ChatMetadata:
        extra = self.model_extra or {}
        if len(extra) > 16:
            raise ValueError("at most 16 metadata keys")
        for key, value in extra.items():
            if not isinstance(value, str) or len(key) > 64 or len(value) > 512:
                raise ValueError(f"metadata.{key[:64]}: a string of at most 512 characters")
        return self


class FunctionDef(Strict):
    """A client function tool's declaration."""

    name: FunctionName
    description: Annotated[str, StringConstraints(max_length=8_000)] | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(Strict):
    """`tools[]`: a function the client runs itself."""

    type: Literal["function"]
    function: FunctionDef


class NamedFunction(Strict):
    """The function `tool_choice` names."""

    name: FunctionName


class NamedToolChoice(Strict):
    """`tool_choice: {"type": "function", "function": {"name": ...}}`."""

    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(Strict):
    """`response_format.json_schema`: the schema the answer must validate against."""

    name: FunctionName
    description: Annotated[str, StringConstraints(max_length=8_000)] | None = None
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None


class ResponseFormatIn(Strict):
    """`response_format`: `text`, `json_object`, or `json_schema` with its schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormatIn:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema is required when type is json_schema")
        return self


Unsupported = SkipJsonSchema[Any]  # known to OpenAI; refused when set (see `_refusals`)


# A conversation: at least one user message (the JSON Schema says so with `contains`).
Messages = Annotated[
    list[ChatMessageIn],
    Len(1, 1000),
    Field(json_schema_extra={"contains": {"properties": {"role": {"const": "user"}}}}),
]


def has_user_message(messages: list[ChatMessageIn]) -> bool:
    """Whether a conversation has a user message (a run needs one)."""
    return any(m.role == "user" for m in messages)


class Sampling(Strict):
    """The sampling parameters of a run (chat completions and `POST /v1/runs`)."""

    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000), Integral] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    stop: (
        Annotated[str, StringConstraints(max_length=256)]
        | Annotated[list[Annotated[str, StringConstraints(max_length=256)]], Len(0, 4)]
        | None
    ) = None

    def token_limit(self) -> int | None:
        """The most tokens the answer may have."""
        return self.max_tokens

    def sampling(self) -> dict[str, Any]:
        """The sampling parameters given."""
        values: dict[str, Any] = {
            "temperature": self.temperature,
            "max_tokens": self.token_limit(),
            "top_p": self.top_p,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
        }
        if self.stop is not None:
            values["stop"] = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return {k: v for k, v in values.items() if v is not None}


class ChatRequest(Sampling):
    """The request body (OpenAI's chat completions request)."""

    model: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    messages: Annotated[
        Messages,
        Field(
            description="At least one `user` message; at most the gateway's `max_messages` "
            "(100 by default, 400 beyond) of at most `max_message_chars` characters each.",
        ),
    ]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=1_000_000), Integral] | None = None
    n: Annotated[int, Field(ge=1, le=1), Integral] | None = None
    user: Label | None = None
    safety_identifier: Label | None = None
    metadata: ChatMetadata | None = None
    store: bool | None = None
    service_tier: Literal["auto", "default"] | None = None
    tools: Annotated[list[ToolDef], Len(0, 128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: Annotated[list[FunctionDef], Len(0, 128)] | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    response_format: ResponseFormatIn | None = None
    # OpenAI's, validated as OpenAI does, then refused when set: this runtime cannot do them.
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20), Integral] | None = None
    seed: Annotated[int, Integral] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: Unsupported = None
    prediction: Unsupported = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    web_search_options: Unsupported = None
    prompt_cache_key: Annotated[str, StringConstraints(max_length=256)] | None = None
    # An addition: stream tool calls and workflow steps as `agentrt.*` events (opt-in).
    progress_events: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ChatRequest:
        if not has_user_message(self.messages):
            raise ValueError("messages must include a user message")
        for key in self.logit_bias or {}:
            if not re.fullmatch(r"\d{1,9}", key):
                raise PydanticCustomError(
                    "logit_bias", "logit_bias keys must be token ids (got {key})", {"key": key}
                )
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.tools is not None and self.functions is not None:
            raise ValueError("give tools or functions, not both")
        names = [t.name for t in self.client_tools()]
        if len(set(names)) != len(names):
            raise ValueError("tool names must be unique")
        choice = self.choice()
        if choice is not None and choice.mode == "function" and choice.function_name not in names:
            raise ValueError(f"tool_choice names {choice.function_name!r}, which is not in tools")
        if choice is not None and choice.mode == "required" and not names:
            raise ValueError("tool_choice 'required' needs tools")
        return self

    def refusals(self) -> list[tuple[str, str]]:
        """The parameters set to what this runtime cannot do: (field, why)."""
        found: list[tuple[str, str]] = []
        if self.logit_bias:
            found.append(("logit_bias", "token biases are not supported"))
        if self.logprobs:
            found.append(("logprobs", "log probabilities are not returned"))
        if self.top_logprobs:
            found.append(("top_logprobs", "log probabilities are not returned"))
        if self.seed is not None:
            found.append(("seed", "seeded sampling is not supported"))
        if self.modalities and set(self.modalities) != {"text"}:
            found.append(("modalities", "only text is produced"))
        for name in ("audio", "prediction", "web_search_options"):
            if getattr(self, name) is not None:
                found.append((name, "not supported"))
        if self.reasoning_effort is not None:
            found.append(("reasoning_effort", "not supported"))
        if self.verbosity is not None:
            found.append(("verbosity", "not supported"))
        if self.prompt_cache_key is not None:
            found.append(("prompt_cache_key", "not supported"))
        if self.parallel_tool_calls is False:
            found.append(("parallel_tool_calls", "the model may call several tools at once"))
        return found

    def client_tools(self) -> list[ClientTool]:
        """The client's function tools (`tools`, or the deprecated `functions`)."""
        functions = [t.function for t in self.tools or ()] or list(self.functions or ())
        return [
            ClientTool(f.name, f.description or "", f.parameters, bool(f.strict)) for f in functions
        ]

    def choice(self) -> ToolChoice | None:
        """`tool_choice` (or the deprecated `function_call`)."""
        given = self.tool_choice if self.tool_choice is not None else self.function_call
        if given is None:
            return None
        if isinstance(given, NamedToolChoice):
            return ToolChoice("function", given.function.name)
        if isinstance(given, NamedFunction):
            return ToolChoice("function", given.name)
        return ToolChoice(given)

    def format(self) -> ResponseFormat | None:
        """`response_format`, when it asks for more than text."""
        wanted = self.response_format
        if wanted is None or wanted.type == "text":
            return None
        if wanted.json_schema is None:
            return ResponseFormat(wanted.type)
        spec = wanted.json_schema
        return ResponseFormat(wanted.type, spec.name, spec.schema_ or {}, bool(spec.strict))

    def token_limit(self) -> int | None:
        """`max_tokens`, or else `max_completion_tokens`."""
        return self.max_tokens or self.max_completion_tokens

    @property
    def background(self) -> bool:
        """Whether `metadata.background` asks for a background run."""
        return self.metadata is not None and self.metadata.background in (True, "true")

    def tags(self) -> dict[str, str]:
        """`metadata`'s free-form tags (kept on a background run's record)."""
        return dict(self.metadata.model_extra or {}) if self.metadata is not None else {}

    def to_run(self, run_id: str = "") -> RunInput:
        """The run this request asks for.

        A run id chosen for an idempotent request also names the conversation when the
        request names none, so a retry asks for the very same run.
        """
        meta = self.metadata or ChatMetadata()
        return RunInput(
            agent_id=self.model,
            messages=tuple(message_of(m) for m in self.messages),
            sampling=self.sampling(),
            task_id=meta.task_id or run_id or new_task_id(),
            context_id=meta.context_id or "",
            user_id=meta.user_id or self.user or self.safety_identifier or "",
            client_tools=tuple(self.client_tools()),
            tool_choice=self.choice(),
            response_format=self.format(),
            run_id=run_id,
        )


def message_of(message: ChatMessageIn) -> Message:
    """A request's message as the run carries it."""
    return Message(
        role="system" if message.role == "developer" else message.role,
        content=message.text(),
        name=message.name or "",
        tool_call_id=message.tool_call_id or "",
        tool_calls=tuple(
            ToolCall(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or ()
        ),
    )
