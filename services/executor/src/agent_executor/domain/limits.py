"""Domain: the limits a run works within, and how an agent may tighten them.

The executor's settings give the ceiling; an agent's
`conversation_config.limits` may lower any of them, never raise them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any


class LimitProblem(ValueError):
    """An agent's limit override is unusable; `field` names it."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


@dataclass(frozen=True, slots=True)
class RunLimits:
    """Bounds on one run. For counts, 0 means unlimited."""

    timeout_seconds: float = 300.0
    max_steps: int = 50
    max_tool_calls: int = 50
    max_concurrent_runs: int = 0  # per agent, across replicas
    max_message_chars: int = 100_000

    def tightened_by(self, overrides: Mapping[str, Any] | None) -> RunLimits:
        """These limits, lowered where `overrides` (an agent's limits) asks.

        Raises:
            LimitProblem: naming the first unknown key or unusable value.
        """
        if not overrides:
            return self
        known = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            path = f"conversation_config.limits.{key}"
            if key not in known:
                raise LimitProblem(path, f"unknown limit (known: {', '.join(sorted(known))})")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise LimitProblem(path, "must be a number")
            if not math.isfinite(value) or value <= 0:
                raise LimitProblem(path, "must be a positive number")
            current = getattr(self, key)
            wanted = float(value) if key == "timeout_seconds" else int(value)
            if wanted != value:
                raise LimitProblem(path, "must be a whole number")
            changes[key] = wanted if current == 0 else min(current, wanted)
        return replace(self, **changes)
