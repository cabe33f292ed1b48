"""Adapter layer of the executor: gRPC, NATS, SQL, checkpointers, providers and plugins."""
