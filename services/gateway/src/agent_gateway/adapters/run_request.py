"""Adapter: what a client sends to start a run — the `POST /v1/runs` body and the headers.

`POST /v1/runs` takes the agent, its input (`messages` as chat completions take them,
or `input`: a string or such a list), the conversation (`task_id`, `context_id`), the
caller's `metadata` (OpenAI's form: at most 16 string values), a `webhook` URL the
executor calls when the run has ended, the `multitask_strategy` for a conversation that
has a run in progress, and the sampling parameters of chat completions. Unknown keys
are refused (422, each named), as on agent create.

Headers: `Idempotency-Key` (both run-starting routes) makes a request safe to retry;
`Prefer: respond-async` (RFC 7240) runs a chat completion in the background.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from annotated_types import Len
from pydantic import ConfigDict, Field, StringConstraints, ValidationInfo, field_validator
from pydantic.config import JsonDict
from starlette.requests import Request

from agent_gateway.adapters.chat_request import (
    ChatMessageIn,
    Label,
    Messages,
    Sampling,
    Text,
    has_user_message,
    message_of,
)
from agent_gateway.adapters.edge import respond_with
from agent_gateway.adapters.http_errors import RUN_ID_HEADER, ApiError
from agent_gateway.domain.auth import Principal
from agent_gateway.domain.chat import Message, RunInput
from agent_gateway.domain.runs import RunStart, idempotent_run_id, valid_idempotency_key

IDEMPOTENCY_HEADER = "Idempotency-Key"
# An id as the executor makes and takes them (tasks, runs).
TaskId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
# An absolute http(s) URL without credentials; the executor applies its SSRF policy.
WebhookUrl = Annotated[
    str,
    StringConstraints(max_length=2048, pattern=r"^https?://[^\s/?#@]+([/?#]\S*)?$"),
]
TagKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
TagValue = Annotated[str, StringConstraints(max_length=512)]
# Exactly one of `messages` and `input`, not null (JSON Schema's form of the rule).
_ONE_INPUT: JsonDict = {
    "oneOf": [
        {"required": [name], "properties": {name: {"not": {"type": "null"}}}}
        for name in ("messages", "input")
    ]
}


class RunRequest(Sampling):
    """`POST /v1/runs`: a run to start in the background."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_ONE_INPUT)

    agent_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    messages: Messages | None = Field(
        None, description="The conversation, as chat completions take it (or give `input`)."
    )
    input: Text | Messages | None = Field(
        None,
        description="One user message's text, or the conversation (or give `messages`).",
        validate_default=True,  # to refuse a body with neither
    )
    task_id: TaskId | None = Field(
        None, description="The conversation (server-side memory); new when absent."
    )
    context_id: Label | None = None
    metadata: Annotated[dict[TagKey, TagValue], Len(0, 16)] | None = Field(
        None, description="Your own data, kept on the run: at most 16 string values."
    )
    webhook: WebhookUrl | None = Field(
        None, description="Called (POST, Standard Webhooks signature) once the run has ended."
    )
    multitask_strategy: Literal["reject", "enqueue", "interrupt", "rollback"] = Field(
        "reject",
        description="When the conversation has a run in progress: refuse this one, "
        "queue it after, stop that one and keep its progress, or stop it and roll it back.",
    )

    @field_validator("messages")
    @classmethod
    def _asks(cls, value: list[ChatMessageIn] | None) -> list[ChatMessageIn] | None:
        if value is not None and not has_user_message(value):
            raise ValueError("messages must include a user message")
        return value

    @field_validator("input")
    @classmethod
    def _one_input(
        cls, value: str | list[ChatMessageIn] | None, info: ValidationInfo
    ) -> str | list[ChatMessageIn] | None:
        if "messages" not in info.data:  # `messages` was refused: said already
            return value
        if (info.data["messages"] is None) == (value is None):
            raise ValueError("give exactly one of messages and input")
        if isinstance(value, list) and not has_user_message(value):
            raise ValueError("input must include a user message")
        return value

    def conversation(self) -> tuple[Message, ...]:
        """The messages the run starts from."""
        given: str | list[ChatMessageIn] = self.messages or self.input or ""
        if isinstance(given, str):
            return (Message("user", given),)
        return tuple(message_of(m) for m in given)

    def to_start(self, run_id: str = "") -> RunStart:
        """The run this request asks for (a chosen run id also names a new conversation)."""
        return RunStart(
            RunInput(
                agent_id=self.agent_id,
                messages=self.conversation(),
                sampling=self.sampling(),
                task_id=self.task_id or run_id,
                context_id=self.context_id or "",
                run_id=run_id,
            ),
            webhook_url=self.webhook or "",
            metadata=dict(self.metadata or {}),
            multitask_strategy=self.multitask_strategy,
        )


def keyed_run_id(request: Request, caller: Principal) -> str:
    """The run id the request's `Idempotency-Key` names ("" without one).

    The answer carries it in `X-Run-Id`, whatever the answer is.

    Raises:
        ApiError: 400 naming the header, when it is not 1-255 printable ASCII characters.
    """
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return ""
    if not valid_idempotency_key(key):
        raise ApiError(
            400,
            "VALIDATION_ERROR",
            f"{IDEMPOTENCY_HEADER} must be 1-255 printable ASCII characters",
            details={
                "fields": [
                    {
                        "field": "header.idempotency-key",
                        "description": "must be 1-255 printable ASCII characters",
                    }
                ]
            },
        )
    run_id = idempotent_run_id(caller.id, key)
    respond_with(request.state, **{RUN_ID_HEADER: run_id})
    return run_id


def prefers_async(request: Request) -> bool:
    """Whether `Prefer` (RFC 7240) asks for `respond-async`."""
    for value in request.headers.getlist("prefer"):
        for preference in value.split(","):
            token = preference.split(";", 1)[0].split("=", 1)[0].strip()
            if token.lower() == "respond-async":
                return True
    return False


def _header(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": schema,
    }


IDEMPOTENCY_PARAMETER = _header(
    IDEMPOTENCY_HEADER,
    "Makes the request safe to retry: a retry with the same key answers the first "
    "request's run; a key sent with another request is 422. 1-255 printable ASCII "
    "characters (400 otherwise).",
    {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
)
PREFER_PARAMETER = _header(
    "Prefer",
    "`respond-async` (RFC 7240): run the completion in the background and answer 202 "
    "with the run at once.",
    {"type": "string"},
)
