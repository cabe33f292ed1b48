"""Domain layer: the Agent and AgentName aggregates, their rules and validation (no I/O)."""
