"""Domain: whether agents' code can run, as `/v1/schema` and `/v1/health` tell it.

Code runs only in the tools service's sandbox, and each executor publishes the
sandbox of the tools service it uses in its catalogue entry (`sandbox`: available,
isolation, reason; null when it could not ask). Any live executor may take a run,
so code execution is offered when a live executor's sandbox is available; its
isolation is that of the available sandboxes (several, comma-separated, in a fleet
that mixes them). When none is, the reason is what the live executors report, else
`NO_SANDBOX`. An expired entry (an executor that is gone) counts for nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

NO_SANDBOX = "no executor reports a code sandbox"


@dataclass(frozen=True)
class CodeSandbox:
    """Whether agents' code can run now, how it is isolated, and why not."""

    available: bool
    isolation: str = ""
    reason: str = ""

    def health(self) -> dict[str, Any]:
        """The `sandbox` object of `/v1/health` (`reason` only when not available)."""
        if self.available:
            return {"available": True, "isolation": self.isolation}
        return {"available": False, "isolation": "", "reason": self.reason}


def code_sandbox(entries: Iterable[Mapping[str, Any]], now: float) -> CodeSandbox:
    """The code sandbox the live executors' entries report at `now` (Unix seconds)."""
    isolations: list[str] = []
    reasons: list[str] = []
    for entry in entries:
        sandbox, expires = entry.get("sandbox"), entry.get("expires_at")
        if not isinstance(sandbox, Mapping) or not _live(expires, now):
            continue  # its sandbox unknown, or the executor gone
        isolation, reason = sandbox.get("isolation"), sandbox.get("reason")
        if sandbox.get("available") is True:
            isolations.append(isolation if isinstance(isolation, str) and isolation else "unknown")
        elif isinstance(reason, str) and reason:
            reasons.append(reason)
    if isolations:
        return CodeSandbox(True, ", ".join(sorted(set(isolations))))
    return CodeSandbox(False, reason="; ".join(sorted(set(reasons))) or NO_SANDBOX)


def _live(expires_at: Any, now: float) -> bool:
    return (
        isinstance(expires_at, int | float)
        and not isinstance(expires_at, bool)
        and (expires_at > now)
    )
