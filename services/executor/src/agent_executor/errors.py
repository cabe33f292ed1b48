"""The executor's errors: refusals before a run starts, and failures of a running one.

A refusal (unknown agent, inactive agent, too many runs, ...) is raised and
becomes a gRPC status; once a run has started, its failure is data — a
`RunFailed` event and a run record — so the caller still learns the run id.
"""

from __future__ import annotations

from agentrt_kit.errors import Aborted as _Aborted
from agentrt_kit.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    NotFound,
    ResourceExhausted,
    Unavailable,
)


class AgentNotFound(NotFound):
    """The agent does not exist (or was deleted)."""

    default_reason = "AGENT_NOT_FOUND"

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"agent {agent_id!r} not found", metadata={"agent_id": agent_id})


class AgentNotRunnable(FailedPrecondition):
    """The agent's status does not allow runs."""

    default_reason = "AGENT_NOT_RUNNABLE"

    def __init__(self, agent_id: str, status: str) -> None:
        super().__init__(
            f"agent {agent_id!r} is {status}; only created and active agents run",
            reason="AGENT_INACTIVE" if status == "inactive" else "AGENT_NOT_RUNNABLE",
            metadata={"agent_id": agent_id, "status": status},
        )


class AgentMisconfigured(FailedPrecondition):
    """The agent's configuration cannot be run by this executor; violations name the fields."""

    default_reason = "AGENT_CONFIG_INVALID"

    def __init__(self, agent_id: str, violations: list[FieldViolation], reason: str = "") -> None:
        text = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(
            f"agent {agent_id!r} cannot run: {text}",
            reason=reason or None,
            violations=violations,
            metadata={"agent_id": agent_id},
        )


class TemplateUnavailable(FailedPrecondition):
    """No template (or not the pinned version) is served by this executor."""

    default_reason = "TEMPLATE_NOT_AVAILABLE"


class ClientToolsUnsupported(FailedPrecondition):
    """The request brings client tools but the agent's template cannot offer them."""

    default_reason = "CLIENT_TOOLS_UNSUPPORTED"

    def __init__(self, template_id: str) -> None:
        super().__init__(
            f"template {template_id!r} does not support client tools; "
            "send the request without tools, or use a ReAct template (simple-test, conversation)",
            metadata={"template_id": template_id},
        )


class WebhooksDisabled(FailedPrecondition):
    """A run asks for a webhook, but this executor has no secret to sign webhooks with."""

    default_reason = "WEBHOOKS_DISABLED"

    def __init__(self) -> None:
        super().__init__(
            "this executor sends no webhooks: AGENTRT_EXECUTOR_WEBHOOK_SECRET (a Standard "
            "Webhooks whsec_ secret) is not set; start the run without webhook_url"
        )


class RunNotFound(NotFound):
    """No run has this id."""

    default_reason = "RUN_NOT_FOUND"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} not found", metadata={"run_id": run_id})


class RunExists(AlreadyExists):
    """A run with the client's run id exists already."""

    default_reason = "RUN_EXISTS"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} exists already", metadata={"run_id": run_id})


class TooManyRuns(ResourceExhausted):
    """A concurrency limit is reached; retry later."""

    default_reason = "TOO_MANY_RUNS"


class SessionBusy(_Aborted):
    """Another run of the same session (agent and task) is still running."""

    default_reason = "SESSION_BUSY"

    def __init__(self, agent_id: str, task_id: str) -> None:
        super().__init__(
            f"task {task_id!r} of agent {agent_id!r} has a run in progress; "
            "runs of one session with server-side memory take turns",
            metadata={"agent_id": agent_id, "task_id": task_id},
        )


class ExecutorClosing(Unavailable):
    """This replica is shutting down; another one can take the run."""

    default_reason = "EXECUTOR_SHUTTING_DOWN"


class RegistryUnavailable(Unavailable):
    """The agent registry could not be asked."""

    default_reason = "REGISTRY_UNAVAILABLE"


class ToolsUnavailable(Unavailable):
    """The tools service could not be asked."""

    default_reason = "TOOLS_UNAVAILABLE"


class ProviderUnavailable(Unavailable):
    """The model provider (and its fallback) could not answer a call outside a run (Compose)."""

    default_reason = "PROVIDER_UNAVAILABLE"


# ------------------------------------------------------ failures inside a run


class RunFailure(Exception):
    """Ends a running run with a failure code (raised inside graphs, tools or models)."""

    code = "INTERNAL"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class LimitExceeded(RunFailure):
    """A run limit (steps, tool calls) was reached."""

    code = "LIMIT_EXCEEDED"


class ProviderFailed(RunFailure):
    """The model provider (and its fallback) could not answer."""

    code = "PROVIDER_ERROR"


class TemplateFailed(RunFailure):
    """The template ended the run as failed (a workflow step failed, ...)."""

    code = "TEMPLATE_FAILED"


class CodeFailed(RunFailure):
    """The agent's own code (the `custom` template) raised, did not parse, or was not found."""

    code = "CODE_ERROR"


class OutputInvalid(RunFailure):
    """The final answer does not have the format the agent requires."""

    code = "OUTPUT_INVALID"
