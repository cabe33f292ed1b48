"""Application layer: the registry's commands and queries, the listing projection, the relay."""
