"""Shared service kit for agentrt services.

What every service stands on: typed settings, JSON logging with trace ids,
OpenTelemetry bootstrap, the error hierarchy, a gRPC server and client with
the standard interceptors, NATS helpers, the audit publisher, resilience
helpers, and the outbound URL policy with HTTP clients that enforce it (the fetch
tool and run webhooks).
"""
