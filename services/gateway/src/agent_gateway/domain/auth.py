"""Domain: who is calling, from the token they present.

Tokens are compared by their SHA-256 digests in constant time; the gateway keeps
only digests and never logs a token. The runtime token (`X-Runtime-Token`, or
as a Bearer key so OpenAI client libraries can use it) acts with the admin role.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

BEARER = "bearer "


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: an id safe to log and a role."""

    id: str
    role: str


RUNTIME_PRINCIPAL = Principal("runtime-token", "admin")


class Authenticator:
    """Maps presented tokens to principals."""

    def __init__(self, runtime_token_sha256: bytes | None) -> None:
        self._runtime = runtime_token_sha256

    def authenticate(
        self, runtime_token: str | None, authorization: str | None
    ) -> Principal | None:
        """The caller, or None when no accepted token was presented."""
        presented = runtime_token
        if presented is None and authorization and authorization[:7].lower() == BEARER:
            presented = authorization[7:].strip()
        if not presented or self._runtime is None:
            return None
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        return RUNTIME_PRINCIPAL if hmac.compare_digest(digest, self._runtime) else None
