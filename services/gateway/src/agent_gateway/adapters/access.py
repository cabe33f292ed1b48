"""Adapter: who may call `/v1` — authentication, roles, rate limits.

Every request to a `/v1` route is first counted against its client address (so a
flood of bad tokens is throttled too), then authenticated, then counted against its
key. (A `/v1` path that is no route only learns it is unauthorised: 401, not counted.) The
principal is kept in `request.state.principal` and becomes the actor the registry
records. A refusal is 401 (no accepted token), 403 (role) or 429 (rate, with
`Retry-After` and `X-RateLimit-*` headers). Routes take the caller through
`Access.caller`, `Access.operator` or `Access.admin`.
"""

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from agent_gateway.adapters.http_errors import ApiError, invalid_token
from agent_gateway.domain.auth import Authenticator, Principal
from agent_gateway.domain.limits import Decision, RateLimiter
from agentrt_kit.context import actor_var


@dataclass
class Gate:
    """The gateway's access policy."""

    authenticator: Authenticator
    per_key: RateLimiter
    per_address: RateLimiter


def _rate_limited(decision: Decision, scope: str) -> ApiError:
    return ApiError(
        429,
        "RATE_LIMIT_EXCEEDED",
        f"too many requests for this {scope}; retry after {decision.retry_after} s",
        details={"limit": decision.limit, "scope": scope},
        headers=decision.headers(),
    )


class Access:
    """FastAPI dependencies that authenticate and authorise a request against a `Gate`."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.caller = self._caller  # one bound method: FastAPI caches it once per request
        self.operator = self.require("operator")
        self.admin = self.require("admin")

    async def _caller(self, request: Request) -> Principal:
        """The authenticated caller (a dependency of every `/v1` route).

        The headers are read here, not through FastAPI's security dependencies (two more
        dependencies per request cost a sixth of the route's time); the OpenAPI document
        declares them (`openapi.SECURITY_SCHEMES`).

        Raises:
            ApiError: 429 over the address's or key's rate, 401 without an accepted token.
        """
        gate = self.gate
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

    def require(self, role: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
        """A dependency: the caller, who must have at least `role`.

        Raises:
            ApiError: 403 FORBIDDEN when the caller's role is lower.
        """

        async def allowed(caller: Annotated[Principal, Depends(self.caller)]) -> Principal:
            if not caller.may(role):
                raise ApiError(
                    403,
                    "FORBIDDEN",
                    f"this needs the {role} role; the caller has {caller.role}",
                    details={"required_role": role, "role": caller.role},
                )
            return caller

        return allowed

    def authenticated(self, request: Request) -> bool:
        """Whether the request carries an accepted token (no limits counted)."""
        headers = request.headers
        found = self.gate.authenticator.authenticate(
            headers.get("x-runtime-token"), headers.get("authorization")
        )
        return found is not None
