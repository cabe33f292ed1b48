"""Application layer of the executor: templates, models, tools and runs (no gRPC, NATS or SQL)."""
