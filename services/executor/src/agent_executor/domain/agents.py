"""Domain: the executor's view of an agent, as the registry recorded it at one version."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

RUNNABLE_STATUSES = frozenset({"created", "active"})


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    """An agent at one version: what a run pins (`agent_id@version`)."""

    id: str
    version: int
    status: str  # created | active | inactive | error
    name: str
    template_id: str
    template_version: str = ""
    template_config: Mapping[str, Any] = field(default_factory=dict)
    system_prompt: str = ""
    conversation_config: Mapping[str, Any] = field(default_factory=dict)
    toolsets: tuple[str, ...] = ()
    llm_config_id: str = ""
    owner_id: str = ""

    @property
    def runnable(self) -> bool:
        """Whether runs may start (inactive and error agents are refused)."""
        return self.status in RUNNABLE_STATUSES

    @property
    def memory(self) -> bool:
        """Server-side memory: `conversation_config.memory` is true."""
        return self.conversation_config.get("memory") is True

    @property
    def limit_overrides(self) -> Mapping[str, Any] | None:
        """The agent's `conversation_config.limits`, when it is an object."""
        value = self.conversation_config.get("limits")
        return value if isinstance(value, Mapping) else None
