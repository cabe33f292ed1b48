"""Agent Runtime gateway: the HTTP API in front of the registry and the executor."""
