"""Domain: who is calling, from the token they present, and what their role allows.

The gateway keeps only SHA-256 digests of tokens and never logs a token. A
presented token is hashed and looked up by its digest; the match is confirmed with
a constant-time comparison. (A digest lookup leaks nothing usable: learning the
timing of a lookup of SHA-256(guess) tells nothing about any key.) The runtime
token (`X-Runtime-Token`, or as a Bearer key so OpenAI client libraries can use
it) acts with the admin role.

Roles: `admin` may do everything, `operator` may run agents and read, `viewer`
may read. A key bound to an owner sees and touches only agents of that owner.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

BEARER = "bearer "
ROLES = ("viewer", "operator", "admin")
DIGEST_PREFIX = "sha256:"
_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: an id safe to log, a role, and the owner it is bound to."""

    id: str
    role: str
    owner: str | None = None

    def may(self, role: str) -> bool:
        """Whether this caller's role includes `role` (admin ⊇ operator ⊇ viewer)."""
        return ROLES.index(self.role) >= ROLES.index(role)

    def sees(self, owner_id: str) -> bool:
        """Whether an agent of `owner_id` exists for this caller."""
        return self.owner is None or self.owner == owner_id


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A configured key: its id, the digest of the key, its role and optional owner."""

    id: str
    sha256: str
    role: str = "operator"
    owner: str | None = None

    def __post_init__(self) -> None:
        digest = self.sha256.removeprefix(DIGEST_PREFIX)
        if not _HEX.match(digest):
            raise ValueError(f"api key {self.id!r}: sha256 must be 64 lowercase hex digits")
        if self.role not in ROLES:
            raise ValueError(f"api key {self.id!r}: role must be one of {', '.join(ROLES)}")
        if not self.id or not self.id.isprintable() or len(self.id) > 64:
            raise ValueError("api key id must be 1-64 printable characters")
        if self.owner is not None and not self.owner.strip():
            # "" would read as "any owner" in filters: an owner is named, or the key is unbound.
            raise ValueError(f"api key {self.id!r}: owner must not be empty (leave it out)")


RUNTIME_PRINCIPAL = Principal("runtime-token", "admin")


def digest_of(token: str) -> bytes:
    """The SHA-256 digest of a token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def new_key() -> tuple[str, str]:
    """A fresh random API key and its `sha256:<hex>` digest (what the config holds)."""
    key = "art_" + secrets.token_urlsafe(32)
    return key, DIGEST_PREFIX + digest_of(key).hex()


class Authenticator:
    """Maps presented tokens to principals."""

    def __init__(self, runtime_token_sha256: bytes | None, keys: Iterable[ApiKey] = ()) -> None:
        self._by_digest: dict[bytes, tuple[bytes, Principal]] = {}
        for key in keys:
            digest = bytes.fromhex(key.sha256.removeprefix(DIGEST_PREFIX))
            self._by_digest[digest] = (digest, Principal(f"key:{key.id}", key.role, key.owner))
        if runtime_token_sha256 is not None:
            self._by_digest[runtime_token_sha256] = (runtime_token_sha256, RUNTIME_PRINCIPAL)

    def authenticate(
        self, runtime_token: str | None, authorization: str | None
    ) -> Principal | None:
        """The caller, or None when no accepted token was presented."""
        presented = runtime_token or None  # an empty header is no token: Bearer may follow
        if presented is None and authorization and authorization[:7].lower() == BEARER:
            presented = authorization[7:].strip()
        if not presented:
            return None
        digest = digest_of(presented)
        found = self._by_digest.get(digest)
        if found is None:
            return None
        known, principal = found
        return principal if hmac.compare_digest(digest, known) else None
