"""Adapters: confined filesystem, HTTP fetcher, SQL ledger, audit records, plugins, gRPC API."""
