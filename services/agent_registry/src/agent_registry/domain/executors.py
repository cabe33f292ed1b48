"""Domain: what the executors can run, as they publish it, and the checks it allows.

Every executor writes an entry into the template catalogue: the model provider ids
an agent's `llm_config_id` may name and the ceilings it holds every run to
(`run_timeout_seconds`, `max_steps`, ...), valid until its `expires_at`. Any
executor may pick up any run, so an agent must suit all of them: the registry
takes the providers every live executor serves (the intersection) and, per limit,
the lowest ceiling. When no entry is live (no executor up now) the newest entry
stands for the deployment as it was last seen; when there is none at all (no
executor ever ran) nothing can be checked, and the caller says so in a warning.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agentrt_kit.errors import FieldViolation


@dataclass(frozen=True)
class ExecutorReport:
    """One executor's entry."""

    executor_id: str
    providers: frozenset[str]
    expires_at: float
    published_at: float = 0.0
    limits: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_document(cls, doc: Mapping[str, object]) -> ExecutorReport:
        """Parse a published entry.

        Raises:
            ValueError: a key is missing or of the wrong type.
        """
        providers, limits = doc.get("providers"), doc.get("limits") or {}
        if not isinstance(providers, list) or not all(isinstance(p, str) for p in providers):
            raise ValueError("executor entry: providers must be a list of ids")
        if not isinstance(limits, Mapping) or not all(_is_bound(v) for v in limits.values()):
            raise ValueError("executor entry: limits must map names to positive numbers")
        try:
            return cls(
                executor_id=str(doc["executor_id"]),
                providers=frozenset(providers),
                expires_at=float(doc["expires_at"]),  # type: ignore[arg-type]
                published_at=float(doc.get("published_at") or 0.0),  # type: ignore[arg-type]
                limits={str(k): float(v) for k, v in limits.items()},
            )
        except KeyError as e:
            raise ValueError(f"executor entry lacks {e}") from None
        except (TypeError, ValueError):
            raise ValueError("executor entry: times must be numbers") from None


def _is_bound(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


@dataclass(frozen=True)
class ExecutorFleet:
    """What every executor can run: provider ids and the ceilings of run limits.

    `providers` is None when no executor has ever published (nothing is known).
    """

    providers: frozenset[str] | None = None
    limits: Mapping[str, float] = field(default_factory=dict)

    @property
    def known(self) -> bool:
        """Whether any executor has published."""
        return self.providers is not None


UNKNOWN = ExecutorFleet()


def fleet_of(reports: Iterable[ExecutorReport], now: float) -> ExecutorFleet:
    """The fleet the registry validates against at `now` (see the module docstring)."""
    every = list(reports)
    chosen = [r for r in every if r.expires_at > now]
    if not chosen and every:
        chosen = [max(every, key=lambda r: (r.published_at, r.expires_at))]
    if not chosen:
        return UNKNOWN
    providers = frozenset.intersection(*(r.providers for r in chosen))
    limits: dict[str, float] = {}
    for report in chosen:
        for name, bound in report.limits.items():
            limits[name] = min(bound, limits.get(name, bound))
    return ExecutorFleet(providers, limits)


def check_llm_config_id(
    llm_config_id: str, fleet: ExecutorFleet, path: str = "spec.llm_config_id"
) -> list[FieldViolation]:
    """A violation when `llm_config_id` names no provider every executor serves.

    An empty id means the executors' default provider and is always accepted; so is
    any id while the fleet is unknown (the caller warns that it was not checked).
    """
    if not llm_config_id or fleet.providers is None or llm_config_id in fleet.providers:
        return []
    known = ", ".join(sorted(fleet.providers)) or "none"
    return [
        FieldViolation(
            path,
            f"names no model provider the executors serve: {llm_config_id!r} "
            f"(known provider ids: {known}; leave it empty for the default)",
        )
    ]
