"""Adapter: what the OpenAPI document says each route answers.

The routes build their bodies as plain dicts (`domain`); the models here only describe
those bodies, their headers and the COMPAT error body to `GET /openapi.json`. They are
never used to serialise an answer. `documented(...)` gives a route's `add_api_route`
keywords; `tests/test_gateway_openapi.py` runs schemathesis against the document to keep
the two in step, and checks the document is valid OpenAPI 3.1.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, SkipJsonSchema
from pydantic_core import core_schema

from agent_gateway.adapters.http_errors import dialect_of

Status = Literal["created", "active", "inactive", "error"]


class Strict(BaseModel):
    """A body with exactly these keys (`additionalProperties: false`)."""

    model_config = ConfigDict(extra="forbid")


# ---- errors ---------------------------------------------------------------------------


class ErrorBody(Strict):
    """Every refusal (COMPAT): the documented form plus `detail`, which old clients read."""

    error: str = Field(
        description="The code: INVALID_TOKEN, FORBIDDEN, VALIDATION_ERROR, AGENT_NOT_FOUND, "
        "TEMPLATE_NOT_FOUND, CONFLICT, VERSION_MISMATCH, PRECONDITION_FAILED, "
        "REQUEST_TOO_LARGE, RATE_LIMIT_EXCEEDED, TIMEOUT_ERROR, EXECUTION_ERROR, "
        "SERVICE_UNAVAILABLE, NOT_FOUND, METHOD_NOT_ALLOWED, INTERNAL_ERROR.",
        examples=["AGENT_NOT_FOUND"],
    )
    message: str = Field(description="What went wrong, for people.")
    details: dict[str, Any] = Field(
        description="More about it; `fields: [{field, description}]` names each bad input."
    )
    detail: str = Field(description="`message` again, for old clients.")


class OpenAIError(Strict):
    """A refusal as OpenAI's API words it."""

    message: str = Field(description="What went wrong, for people.")
    type: str = Field(
        description="OpenAI's kind: invalid_request_error, authentication_error, "
        "permission_error, rate_limit_error, timeout_error, server_error.",
        examples=["invalid_request_error"],
    )
    param: str | None = Field(description="The first bad input, e.g. `messages[0].content`.")
    code: str | None = Field(
        description="OpenAI's code, e.g. invalid_api_key, model_not_found, invalid_value.",
        examples=["model_not_found"],
    )


class OpenAIErrorBody(Strict):
    """Every refusal of the OpenAI routes: OpenAI's `error` object, plus COMPAT's keys."""

    error: OpenAIError
    message: str = Field(description="`error.message` again (COMPAT).")
    detail: str = Field(description="`error.message` again, for old clients.")
    details: dict[str, Any] = Field(
        description="More about it, with the COMPAT code as `code`; `fields: [{field, "
        "description}]` names each bad input."
    )


ERRORS: dict[int, str] = {
    400: "Invalid input (`VALIDATION_ERROR`): a body that is not strict JSON, a bad header, "
    "or input a service refused; `details.fields` names each bad field.",
    401: "No accepted token (`INVALID_TOKEN`).",
    403: "The caller's role or owner does not allow this (`FORBIDDEN`).",
    404: "No such agent (`AGENT_NOT_FOUND`) or template (`TEMPLATE_NOT_FOUND`), or one "
    "the caller's owner does not own.",
    408: "A service did not answer in time (`TIMEOUT_ERROR`).",
    409: "A conflict (`CONFLICT`): the name or id is taken, the agent changed meanwhile, "
    "or the change is not allowed in its state.",
    412: "`If-Match` names another version of the agent (`PRECONDITION_FAILED`).",
    413: "The request body is larger than the gateway accepts (`REQUEST_TOO_LARGE`).",
    422: "A parameter or body field is invalid (`VALIDATION_ERROR`); `details.fields` names "
    "each one.",
    429: "Over a rate limit, or out of stream slots (`RATE_LIMIT_EXCEEDED`).",
    500: "The run failed (`EXECUTION_ERROR`), or the gateway did (`INTERNAL_ERROR`).",
    502: "The model provider failed, or the executor ended the stream early (`EXECUTION_ERROR`).",
    503: "A service the request needs is down, or the template catalogue is not read yet "
    "(`SERVICE_UNAVAILABLE`).",
}

# Errors every /v1 route can give, and those of the routes that call a service.
V1 = (401, 429)
SERVICE = (408, 503)
BODY = (400, 413, 422)


# ---- headers --------------------------------------------------------------------------


def _header(description: str, *, required: bool = False, kind: str = "string") -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": kind}}


REQUEST_ID = {
    "X-Request-ID": _header("The request's id (the caller's, or a new one).", required=True)
}
RATE = {
    "X-RateLimit-Limit": _header("Requests this key may make in a burst.", kind="integer"),
    "X-RateLimit-Remaining": _header("Requests this key has left now.", kind="integer"),
}
ETAG = {"ETag": _header('The agent\'s version, e.g. `"3"`; send it in `If-Match`.', required=True)}
LOCATION = {"Location": _header("The new agent's URL.", required=True)}
RUN_STARTED = {
    "Location": _header("The run's URL, `/v1/runs/{run_id}`.", required=True),
    "Idempotent-Replayed": _header(
        "`true` when an earlier request with this `Idempotency-Key` started the run."
    ),
    "X-Run-Id": _header("The run's id, when an `Idempotency-Key` named it."),
}
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": _header("`Bearer`.", required=True)},
    429: {"Retry-After": _header("Seconds to wait.", required=True, kind="integer")},
    503: {"Retry-After": _header("Seconds to wait, when a service is down.", kind="integer")},
}


def documented(
    model: Any,
    *errors: int,
    status: int = 200,
    description: str = "Done.",
    headers: Mapping[str, Any] | None = None,
    content: Mapping[str, Any] | None = None,
    open_route: bool = False,
    unavailable: str | None = None,
    op: str | None = None,
    tag: str | None = None,
    also: Mapping[int, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The `add_api_route` keywords that document a route's answers.

    Args:
        model: the success body's model (or `None` for content given in `content`).
        errors: the error statuses the route can answer (with `ErrorBody`, which `install`
            makes `OpenAIErrorBody` on the OpenAI routes).
        status: the success status.
        description: what the success answer is.
        headers: headers of the success answer, besides `X-Request-ID` (and rate limits).
        content: more media types of the success answer.
        open_route: an open route (no rate-limit headers, no 401 or 429).
        unavailable: the route answers 503 with the success body; what that means.
        op: the stable `operationId`.
        tag: the group the operation is listed under.
        also: other success answers by status (`model`, `description`, `headers`).
    """
    common = dict(REQUEST_ID) if open_route else {**REQUEST_ID, **RATE}
    ok: dict[str, Any] = {"description": description, "headers": {**common, **(headers or {})}}
    if model is not None:
        ok["model"] = model
    if content:
        ok["content"] = dict(content)
    responses: dict[int | str, dict[str, Any]] = {status: ok}
    for other, answer in (also or {}).items():
        responses[other] = {**answer, "headers": {**common, **answer.get("headers", {})}}
    for code in sorted(set(errors) | (set() if open_route else set(V1))):
        responses[code] = {
            "model": ErrorBody,
            "description": ERRORS[code],
            "headers": {**common, **_ERROR_HEADERS.get(code, {})},
        }
    if unavailable is not None:
        responses[503] = {"model": model, "description": unavailable, "headers": common}
    found: dict[str, Any] = {"response_model": None, "responses": responses}
    if op is not None:
        found["operation_id"] = op
    if tag is not None:
        found["tags"] = [tag]
    return found


# ---- open routes ----------------------------------------------------------------------


class RootInfo(Strict):
    """`GET /`."""

    name: str
    version: str
    docs: str


class Pong(Strict):
    """`GET /ping` (COMPAT)."""

    status: Literal["ok"]
    message: Literal["pong"]


class Alive(Strict):
    """`GET /healthz`."""

    status: Literal["ok"]


class Readiness(Strict):
    """`GET /readyz`: each dependency's status."""

    status: Literal["ready", "not ready"]
    checks: dict[str, Literal["ok", "down"]]


# ---- /v1 info -------------------------------------------------------------------------


class Check(Strict):
    """One dependency's check."""

    status: Literal["ok", "down"]
    response_time_ms: float


class ExecutionMetrics(Strict):
    """This replica's execution numbers."""

    active_agents: int
    total_executions: int
    average_response_time_ms: float
    error_rate: float


class RunQueueHealth(Strict):
    """The run queue, as an executor replica answers for it (never judged)."""

    status: Literal["ok", "unavailable"] = Field(
        description="`unavailable` when the executor could not be asked within "
        "`PROBE_TIMEOUT_SECONDS` (the other keys are then absent) or could not ask the run "
        "queue's broker (its figures are then null); it never makes the health `unhealthy`."
    )
    backend: str | SkipJsonSchema[None] = Field(
        None, description="The run queue's broker: `nats`, `redis` or `rabbitmq`."
    )
    bus_backend: str | SkipJsonSchema[None] = Field(
        None,
        description="Where run events, cancel requests and run endings travel: `nats` or `redis`.",
    )
    depth: int | None = Field(
        None,
        description="Runs waiting or in progress, not yet acknowledged (null: not known).",
    )
    pending: int | None = Field(
        None, description="Runs waiting for a first delivery (null: not known)."
    )
    oldest_age_seconds: float | None = Field(
        None,
        description="Age of the oldest run waiting for its first delivery (0: none; "
        "null: not known).",
    )
    redelivered: int | None = Field(
        None, description="Deliveries in progress that are redeliveries (null: not known)."
    )
    dead_letters: int | None = Field(
        None, description="Runs given up (dead-lettered) and still kept (null: not known)."
    )
    free_slots: int | SkipJsonSchema[None] = Field(
        None, description="Free run slots on the executor replica that answered."
    )


class SandboxHealth(Strict):
    """Whether agents' code can run: reported, never judged (no sandbox is not a fault)."""

    available: bool = Field(description="A live executor's tools service can run code now.")
    isolation: str = Field(
        description="The isolation in force, e.g. `bubblewrap` (`unsandboxed`: a development "
        "setting with none); empty when not available."
    )
    reason: str | SkipJsonSchema[None] = Field(
        None, description="Why code cannot run (only when not available)."
    )


class Health(Strict):
    """`GET /v1/health` (COMPAT); the same body with 503 when a dependency is down."""

    status: Literal["healthy", "unhealthy"]
    timestamp: datetime
    version: str
    uptime_seconds: float
    checks: dict[str, Check]
    metrics: ExecutionMetrics
    queue: RunQueueHealth
    sandbox: SandboxHealth


class QueueState(Strict):
    """One queue's figures; null where the broker does not tell one or could not be asked."""

    name: str = Field(description="`run` (background runs) or `webhook` (run webhooks due).")
    backend: str = Field(description="The broker: `nats`, `redis` or `rabbitmq`.")
    status: Literal["ok", "unavailable"] = Field(
        description="`unavailable` when the executor could not ask the broker now."
    )
    error: str | SkipJsonSchema[None] = Field(
        None, description="Why the broker could not be asked (only when `unavailable`)."
    )
    depth: int | None = Field(description="Messages waiting or in progress, not acknowledged.")
    pending: int | None = Field(description="Messages waiting for a first delivery.")
    oldest_age_seconds: float | None = Field(
        description="Age of the oldest message waiting for its first delivery (0: none)."
    )
    redelivered: int | None = Field(
        description="Deliveries in progress that are redeliveries (a replica stopped or stalled)."
    )
    dead_letters: int | None = Field(description="Messages given up and still kept.")


class QueueList(Strict):
    """`GET /v1/queues`: every queue, the run queue first."""

    bus_backend: str = Field(
        description="Where run events, cancel requests and run endings travel: `nats` or `redis`."
    )
    free_slots: int = Field(description="Free run slots on the executor replica that answered.")
    queues: list[QueueState]


class Constraints(Strict):
    """A config field's constraints (only those it has)."""

    minLength: int | SkipJsonSchema[None] = None
    maxLength: int | SkipJsonSchema[None] = None
    min: float | SkipJsonSchema[None] = None
    max: float | SkipJsonSchema[None] = None
    pattern: str | SkipJsonSchema[None] = None
    enum: list[Any] | SkipJsonSchema[None] = None


class ConfigField(BaseModel):
    """One field of a template's config, as executors publish it (keys may be added).

    `items` describes an array's elements (a field without a key), `properties` an
    object's fields.
    """

    key: str | SkipJsonSchema[None] = None
    type: str
    description: str | SkipJsonSchema[None] = None
    default: Any = None
    optional: bool | SkipJsonSchema[None] = None
    validation: Constraints | SkipJsonSchema[None] = None
    items: ConfigField | SkipJsonSchema[None] = None
    properties: list[ConfigField] | SkipJsonSchema[None] = None


class Template(Strict):
    """A template (COMPAT): exactly these six keys."""

    id: str
    framework: str
    name: str
    description: str
    version: str
    config: list[ConfigField]


class TemplateList(Strict):
    """`GET /v1/templates`."""

    templates: list[Template]


class Capabilities(Strict):
    """What this runtime can do."""

    streaming: bool
    toolCalling: bool
    multimodal: bool
    codeExecution: bool = Field(
        description="Agents' code can run (the `custom` template, `run_code`): a live "
        "executor's tools service has a sandbox."
    )
    codeExecutionIsolation: str = Field(
        description="The sandbox's isolation, e.g. `bubblewrap`; empty when code cannot run."
    )
    codeExecutionReason: str | SkipJsonSchema[None] = Field(
        None, description="Why code cannot run (only when `codeExecution` is false)."
    )


class Limits(Strict):
    """This runtime's limits."""

    maxConcurrentAgents: int
    maxMessageLength: int
    maxConversationHistory: int


class RuntimeSchema(Strict):
    """`GET /v1/schema` (COMPAT)."""

    version: str
    lastUpdated: datetime
    supportedAgentTemplates: list[Template]
    capabilities: Capabilities
    limits: Limits


class WhoAmI(Strict):
    """`GET /v1/whoami`: the caller (never the token)."""

    id: str
    role: Literal["viewer", "operator", "admin"]
    owner: str | None


# ---- agents ---------------------------------------------------------------------------


class AgentConfiguration(Strict):
    """An agent's configuration."""

    system_prompt: str | None
    llm_config_id: str | None
    conversation_config: dict[str, Any]
    toolsets: list[str]
    template_config: dict[str, Any]


class Agent(Strict):
    """An agent (COMPAT): exactly these keys, as the old SDK rejects others."""

    id: str
    name: str
    template_id: str
    template_version: str | None
    status: Status
    configuration: AgentConfiguration
    created_at: datetime | None
    updated_at: datetime | None
    metadata: dict[str, Any]


class ValidationResults(Strict):
    """How the agent's configuration validated."""

    valid: bool
    warnings: list[str]


class Created(Strict):
    """`POST /v1/agents` (COMPAT)."""

    success: bool
    agent_id: str
    message: str
    validation_results: ValidationResults


class Deleted(Strict):
    """`DELETE /v1/agents/{agent_id}` (COMPAT)."""

    success: bool
    agent_id: str
    message: str


class AgentEvent(Strict):
    """One recorded change of an agent."""

    version: int
    type: str
    occurred_at: datetime | None
    actor: str | None
    request_id: str | None
    changed_fields: list[str]
    changes: dict[str, Any]
    from_status: Status | None
    to_status: Status | None
    reason: str | None


class History(Strict):
    """`GET /v1/agents/{agent_id}/history`: a page of events, oldest first."""

    events: list[AgentEvent]
    next_page_token: str | None


class Draft(Strict):
    """An agent drafted by the model (create-shaped)."""

    name: str
    description: str | None
    template_id: str
    system_prompt: str | None
    toolsets: list[str]
    template_config: dict[str, Any]
    llm_config_id: str | None


class Usage(Strict):
    """Token counts."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Composed(Strict):
    """`POST /v1/agents/compose`: the draft, its validation, the model's usage."""

    success: bool
    draft: Draft
    validation_results: ValidationResults
    usage: Usage


# ---- chat completions -----------------------------------------------------------------


class RunMetadata(Strict):
    """The conversation a completion belongs to."""

    task_id: str
    context_id: str | None
    run_id: str


class CalledFunction(Strict):
    """The client function a tool call names, with its arguments as JSON text."""

    name: str
    arguments: str


class ToolCall(Strict):
    """A call of a client tool: the client runs it and sends back a `tool` message."""

    id: str
    type: Literal["function"]
    function: CalledFunction


class ChunkFunction(Strict):
    """A streamed call's function: its name in the first chunk, its arguments after."""

    name: str | SkipJsonSchema[None] = None
    arguments: str


class ChunkToolCall(Strict):
    """A tool call in a chunk: the first names it (id, type, name), the next add arguments."""

    index: int
    id: str | SkipJsonSchema[None] = None
    type: Literal["function"] | SkipJsonSchema[None] = None
    function: ChunkFunction


class AssistantMessage(Strict):
    """The agent's reply: text, or (with `finish_reason: tool_calls`) client tool calls."""

    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCall] | SkipJsonSchema[None] = None


class Choice(Strict):
    """The one choice of a completion."""

    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"]


class ChatCompletion(Strict):
    """A `chat.completion` (OpenAI's form, with `metadata`)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    metadata: RunMetadata


class ChunkDelta(Strict):
    """What a chunk adds to the reply (the first chunk: the role)."""

    role: Literal["assistant"] | SkipJsonSchema[None] = None
    content: str | SkipJsonSchema[None] = None
    tool_calls: list[ChunkToolCall] | SkipJsonSchema[None] = None


class ChunkChoice(Strict):
    """The one choice of a chunk; the last has `finish_reason` (`error` with its text)."""

    index: int
    delta: ChunkDelta
    finish_reason: Literal["stop", "length", "tool_calls", "error"] | None


class ChatCompletionChunk(Strict):
    """A `chat.completion.chunk`; `usage` only when `stream_options.include_usage`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    metadata: RunMetadata


class RunError(Strict):
    """How a run failed: its error code (TIMEOUT, PROVIDER_ERROR, ...) and text."""

    code: str
    message: str


class Run(Strict):
    """A run: every chat completion is one; background runs are queued first."""

    run_id: str
    agent_id: str
    agent_version: int
    status: Literal["queued", "running", "succeeded", "failed", "cancelled", "timed_out"]
    task_id: str
    context_id: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    usage: Usage
    tool_calls: int = Field(description="Tool calls the run made.")
    error: RunError | None
    executor_id: str | None = Field(description="The executor replica that ran it.")
    attempts: int = Field(description="How many times the run was started.")
    queued: bool = Field(description="Started in the background (through the run queue).")
    metadata: dict[str, Any] = Field(description="The caller's own data, given at the start.")
    multitask_strategy: Literal["reject", "enqueue", "interrupt", "rollback"] | None = Field(
        description="How a background run treats a run in progress in its conversation."
    )
    output: AssistantMessage | None = Field(
        description="The final assistant message, once the run has succeeded."
    )
    finish_reason: Literal["stop", "length", "tool_calls"] | None = Field(
        description="Why the model stopped, once the run has succeeded."
    )
    rolled_back: bool = Field(
        description="Cancelled and undone in its conversation (`multitask_strategy: "
        "rollback` of a later run): the conversation goes on as if it had not run."
    )


RUN_ACCEPTED = {
    202: {
        "model": Run,
        "description": "Run in the background (`Prefer: respond-async` or `metadata.background`): "
        "the run, queued.",
        "headers": {
            **RUN_STARTED,
            "Preference-Applied": _header("`respond-async`, when `Prefer` asked for it."),
        },
    }
}


class RunList(Strict):
    """A page of runs, newest first."""

    runs: list[Run]
    next_page_token: str | None = Field(description="Pass as `page_token`; null on the last.")


class RunCancel(Strict):
    """A cancel request: whether the run was still running, and its record."""

    cancelled: bool
    run: Run


class Model(Strict):
    """An agent the caller may run, as OpenAI's `model` object (`id`: the agent id)."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(Strict):
    """The agents the caller may run."""

    object: Literal["list"]
    data: list[Model]


# OpenAPI 3.1 cannot describe the events of a stream (3.2's `itemSchema` can): the media
# type's schema is the body as text, and `x-itemSchema` keeps 3.2's description of each
# event for people and for tools that read it.
STREAM = {
    "text/event-stream": {
        "schema": {
            "type": "string",
            "description": "Server-sent events: `data: <ChatCompletionChunk as JSON>` for each "
            "chunk, then `data: [DONE]`.",
        },
        "x-itemSchema": {
            "type": "object",
            "description": "`data: <chat.completion.chunk>` events, then `data: [DONE]`.",
            "required": ["data"],
            "properties": {
                "data": {
                    "oneOf": [
                        {"const": "[DONE]"},
                        {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "contentSchema": {"$ref": "#/components/schemas/ChatCompletionChunk"},
                        },
                    ]
                }
            },
        },
    }
}


RUN_EVENT_TYPES = [
    "run_started",
    "message_delta",
    "tool_call_started",
    "tool_call_finished",
    "step_progress",
    "message_completed",
    "run_completed",
    "run_failed",
]
# OpenAPI 3.1 has a stream's `schema` describe each event (3.2 calls that `itemSchema`).
RUN_EVENTS = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "description": "One server-sent event: `id: <sequence>`, `event: <type>`, `data: "
            "<JSON>`, for each event of the run up to its last (`run_completed` or "
            "`run_failed`); `event: error` (no `id`) when the stream cannot go on. "
            "`: keepalive` comments come while the run is quiet.",
            "required": ["event", "data"],
            "properties": {
                "id": {"type": "string", "description": "The event's sequence number."},
                "event": {"enum": [*RUN_EVENT_TYPES, "error"]},
                "retry": {"type": "integer"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {
                        "type": "object",
                        "required": ["type", "run_id"],
                        "properties": {
                            "type": {"enum": [*RUN_EVENT_TYPES, "error"]},
                            "run_id": {"type": "string"},
                            "sequence": {"type": "integer"},
                            "occurred_at": {"type": ["string", "null"]},
                        },
                    },
                },
            },
        },
    }
}


# The two ways to present a token, as the OpenAPI document declares them (either will do).
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "RuntimeToken": {
        "type": "apiKey",
        "description": "The runtime token or an API key (COMPAT).",
        "in": "header",
        "name": "X-Runtime-Token",
    },
    "BearerToken": {
        "type": "http",
        "description": "The same token as `Authorization: Bearer` (OpenAI clients' API key).",
        "scheme": "bearer",
    },
}


def install(app: FastAPI) -> None:
    """Serve the document built from the routes' declarations, with these corrections.

    FastAPI documents its own 422 body for routes that take input; this app always
    answers with `ErrorBody` (and chat input errors are 400), so that is dropped. The
    OpenAI routes refuse with `OpenAIErrorBody` (`http_errors.dialect_of` says which
    they are). The stream chunk's schema, which no route returns as JSON, is added to
    the components, and every `/v1` operation declares the two ways to present a token.
    """
    generate = app.openapi

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            for operation in _operations(document):
                responses = operation.get("responses", {})
                if _ref(responses.get("422", {})).endswith("/HTTPValidationError"):
                    del responses["422"]
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            for model in (ChatCompletionChunk, OpenAIErrorBody):
                for name, schema in _components(model).items():
                    schemas.setdefault(name, schema)
            for path, item in document.get("paths", {}).items():
                if dialect_of(path) == "openai":
                    for operation in item.values():
                        _speak_openai(operation.get("responses", {}))
            document["components"]["securitySchemes"] = dict(SECURITY_SCHEMES)
            for path, item in document.get("paths", {}).items():
                if path.startswith("/v1/"):
                    for operation in item.values():
                        operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]


def _operations(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [op for item in document.get("paths", {}).values() for op in item.values()]


def _speak_openai(responses: Mapping[str, Any]) -> None:
    """Make the refusals among `responses` `OpenAIErrorBody`."""
    for response in responses.values():
        if _ref(response).endswith("/ErrorBody"):
            schema = response["content"]["application/json"]["schema"]
            schema["$ref"] = "#/components/schemas/OpenAIErrorBody"


def _ref(response: Mapping[str, Any]) -> str:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return str(schema.get("$ref", ""))


def _components(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema and those it refers to, as component schemas."""
    schema = model.model_json_schema(
        ref_template="#/components/schemas/{model}",
        schema_generator=_OmittedNotNull,
        mode="serialization",
    )
    found: dict[str, Any] = dict(schema.pop("$defs", {}))
    found[model.__name__] = schema
    return found


class _OmittedNotNull(GenerateJsonSchema):
    """Leaves out `default: null` where null is not allowed (`SkipJsonSchema[None]`).

    Such a key is left out of the body rather than sent as null, so it has no default
    to state, and a default the schema forbids makes the document invalid. FastAPI's
    own schemas leave it out too.
    """

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        found = super().default_schema(schema)
        if found.get("default", ...) is None and found.get("type", "null") != "null":
            del found["default"]
        return found
