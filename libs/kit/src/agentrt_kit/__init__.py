"""Shared service kit for agentrt services.

What every service stands on: typed settings, JSON logging with trace ids,
OpenTelemetry bootstrap, the error hierarchy, a gRPC server and client with
the standard interceptors, NATS helpers, the audit publisher and resilience
helpers.
"""
