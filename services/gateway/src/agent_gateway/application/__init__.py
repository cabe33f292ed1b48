"""Application: the gateway's use cases — agents, chat, models, the catalogue and health."""
