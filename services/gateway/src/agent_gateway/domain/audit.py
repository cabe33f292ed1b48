"""Domain: one audit entry per mutating request and per execution, allowed or refused.

The action and target come from the request line; a route adds what it learns
(the agent, the run, the task). The outcome follows from the status: refusals of
identity, role or rate are `denied`, other refusals and failed runs `failed`.
Entries name the principal by its id, never by its token; the kit's
`AuditPublisher` sends them to JetStream and the structured log.
"""

from __future__ import annotations

import re

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_ACTIONS: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), action)
    for method, pattern, action in (
        ("POST", r"^/v1/chat/completions/?$", "chat.completion"),
        ("POST", r"^/v1/agents/compose/?$", "agent.compose"),
        ("POST", r"^/v1/agents/?$", "agent.create"),
        ("PUT", r"^/v1/agents/(?P<id>[^/]+)/?$", "agent.update"),
        ("DELETE", r"^/v1/agents/(?P<id>[^/]+)/?$", "agent.delete"),
        ("PATCH", r"^/v1/agents/(?P<id>[^/]+)/status/?$", "agent.status"),
        ("POST", r"^/v1/runs/?$", "run.start"),
        ("POST", r"^/v1/runs/(?P<id>[^/]+)/cancel/?$", "run.cancel"),
    )
)


def audited(method: str, path: str) -> bool:
    """Whether a request is audited: every mutating request under /v1."""
    return method in MUTATING and path.startswith("/v1/")


def action_of(method: str, path: str) -> tuple[str, str]:
    """The action and target of a request line (target: the agent id in the path)."""
    for verb, pattern, action in _ACTIONS:
        if verb == method:
            found = pattern.match(path)
            if found is not None:
                return action, found.groupdict().get("id") or ""
    return f"http.{method.lower()}", path[:200]


def outcome_of(status: int, run_failed: bool = False) -> str:
    """`succeeded`, `denied` (401/403/429) or `failed`."""
    if status in (401, 403, 429):
        return "denied"
    if status >= 400 or run_failed:
        return "failed"
    return "succeeded"
