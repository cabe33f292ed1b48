"""The agentrt agent registry: the lifecycle of agents as an event log, served over gRPC."""
