"""Application: the read shapes of an agent.

`AgentState` is what queries return. `AgentRecord` is the listing projection's
mutable row: domain events evolve it with the same `apply` methods that evolve
the aggregate, so the listing can never disagree with the event log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class AgentState:
    """An agent as clients see it, at one version."""

    agent_id: str
    version: int
    spec: dict[str, Any]
    status: str
    created_at: datetime
    updated_at: datetime
    created_by: str
    updated_by: str


@dataclass
class AgentRecord:
    """One row of the listing projection."""

    agent_id: str = ""
    version: int = 0
    seq: int = 0
    spec: dict[str, Any] = field(default_factory=dict)
    status: str = ""
    deleted: bool = False
    registered_at: datetime | None = None
    updated_at: datetime | None = None
    created_by: str = ""
    updated_by: str = ""

    def state(self) -> AgentState:
        """The client view of this record."""
        assert self.registered_at is not None
        assert self.updated_at is not None
        return AgentState(
            agent_id=self.agent_id,
            version=self.version,
            spec=self.spec,
            status=self.status,
            created_at=self.registered_at,
            updated_at=self.updated_at,
            created_by=self.created_by,
            updated_by=self.updated_by,
        )

    def to_document(self) -> dict[str, Any]:
        """JSON-ready form, for storage."""
        return {
            "agent_id": self.agent_id,
            "version": self.version,
            "seq": self.seq,
            "spec": self.spec,
            "status": self.status,
            "deleted": self.deleted,
            "registered_at": self.registered_at.isoformat() if self.registered_at else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "created_by": self.created_by,
            "updated_by": self.updated_by,
        }

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> AgentRecord:
        """Inverse of `to_document`."""
        return cls(
            agent_id=doc["agent_id"],
            version=doc["version"],
            seq=doc["seq"],
            spec=doc["spec"],
            status=doc["status"],
            deleted=doc["deleted"],
            registered_at=_dt(doc["registered_at"]),
            updated_at=_dt(doc["updated_at"]),
            created_by=doc["created_by"],
            updated_by=doc["updated_by"],
        )


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
