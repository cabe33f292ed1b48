"""Adapters: confined filesystem, HTTP fetcher, SQL ledger, NATS audit, plugins, gRPC API."""
