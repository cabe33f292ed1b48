"""Adapters: the HTTP API and the gRPC clients."""
