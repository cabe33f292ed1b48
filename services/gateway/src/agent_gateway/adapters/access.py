"""Adapter: who may call `/v1` — authentication, roles, rate limits, stream slots.

Every `/v1` request is first counted against its client address (so a flood of bad
tokens is throttled too), then authenticated, then counted against its key. The
principal is kept in `request.state.principal` and becomes the actor the registry
records. A refusal is 401 (no accepted token), 403 (role) or 429 (rate, with
`Retry-After` and `X-RateLimit-*` headers).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from agent_gateway.domain.auth import Authenticator, Principal
from agent_gateway.domain.errors import ApiError, invalid_token
from agent_gateway.domain.limits import Decision, RateLimiter, StreamSlots
from agentrt_kit.context import actor_var


@dataclass
class Gate:
    """The gateway's access policy, kept in `app.state.gate`."""

    authenticator: Authenticator
    per_key: RateLimiter
    per_address: RateLimiter
    streams: StreamSlots


def _rate_limited(decision: Decision, scope: str) -> ApiError:
    return ApiError(
        429,
        "RATE_LIMIT_EXCEEDED",
        f"too many requests for this {scope}; retry after {decision.retry_after} s",
        details={"limit": decision.limit, "scope": scope},
        headers=decision.headers(),
    )


async def current_principal(
    request: Request,
) -> Principal:
    """The authenticated caller (a dependency of every `/v1` route).

    The headers are read here, not through FastAPI's security dependencies (two more
    dependencies per request cost a sixth of the route's time); the OpenAPI document
    declares them (`openapi.SECURITY_SCHEMES`).

    Raises:
        ApiError: 429 over the address's or key's rate, 401 without an accepted token.
    """
    gate: Gate = request.app.state.gate
    if gate.per_address.enabled:
        address = request.client.host if request.client else "unknown"
        decision = gate.per_address.take(address)
        if not decision.allowed:
            raise _rate_limited(decision, "client address")
    headers = request.headers
    found = gate.authenticator.authenticate(
        headers.get("x-runtime-token"), headers.get("authorization")
    )
    if found is None:
        raise invalid_token()
    request.state.principal = found
    actor_var.set(found.id)
    if gate.per_key.enabled:
        decision = gate.per_key.take(found.id)
        if not decision.allowed:
            raise _rate_limited(decision, "key")
        request.state.response_headers = decision.headers()
    return found


def require(role: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency: the caller, who must have at least `role`.

    Raises:
        ApiError: 403 FORBIDDEN when the caller's role is lower.
    """

    async def allowed(caller: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not caller.may(role):
            raise ApiError(
                403,
                "FORBIDDEN",
                f"this needs the {role} role; the caller has {caller.role}",
                details={"required_role": role, "role": caller.role},
            )
        return caller

    return allowed


Caller = Annotated[Principal, Depends(current_principal)]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]


def authenticated(request: Request) -> bool:
    """Whether the request carries an accepted token (no limits counted)."""
    gate: Gate = request.app.state.gate
    headers = request.headers
    found = gate.authenticator.authenticate(
        headers.get("x-runtime-token"), headers.get("authorization")
    )
    return found is not None
