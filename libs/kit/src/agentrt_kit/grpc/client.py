"""gRPC client channels with deadlines, retries, auth and context propagation.

`create_channel` returns a grpc.aio channel whose every call:
- has a deadline (the caller's, or the default when none is given);
- carries the service token, the current request id and actor, and the W3C
  trace context;
- is retried with exponential backoff and jitter by gRPC itself when the method
  is listed as idempotent and the status is UNAVAILABLE (gRPC service config).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import grpc
from opentelemetry import propagate

from agentrt_kit.context import (
    ACTOR_HEADER,
    REQUEST_ID_HEADER,
    actor_var,
    new_request_id,
    request_id_var,
)
from agentrt_kit.grpc.server import MAX_MESSAGE_BYTES


def retry_service_config(
    service: str,
    idempotent_methods: Iterable[str],
    *,
    max_attempts: int = 4,
    initial_backoff: float = 0.05,
    max_backoff: float = 1.0,
) -> str:
    """A gRPC service config that retries the idempotent methods on UNAVAILABLE."""
    methods = [{"service": service, "method": m} for m in idempotent_methods]
    config: dict[str, Any] = {
        "methodConfig": [
            {
                "name": methods,
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": f"{initial_backoff}s",
                    "maxBackoff": f"{max_backoff}s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
    return json.dumps(config)


class _CallDefaults:
    """Adds deadline and metadata to the call details of every call."""

    def __init__(self, token: str | None, default_timeout: float) -> None:
        self._auth = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = default_timeout

    def details(self, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(d.metadata or ()))
        for key, value in self._auth:
            metadata[key] = value
        if REQUEST_ID_HEADER not in metadata:
            metadata[REQUEST_ID_HEADER] = request_id_var.get() or new_request_id()
        actor = actor_var.get()
        if actor and ACTOR_HEADER not in metadata:
            metadata[ACTOR_HEADER] = actor
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        for key, value in carrier.items():
            metadata[key] = value
        return grpc.aio.ClientCallDetails(
            method=d.method,
            timeout=d.timeout if d.timeout is not None else self._timeout,
            metadata=metadata,
            credentials=d.credentials,
            wait_for_ready=d.wait_for_ready,
        )


class _UnaryUnary(_CallDefaults, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.details(details), request)


class _UnaryStream(_CallDefaults, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.details(details), request)


class _StreamStream(_CallDefaults, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self.details(details), request_iterator)


RECONNECT_MIN_MS = 100
RECONNECT_MAX_MS = 800  # gRPC adds up to 20 % jitter: under a second in all


def create_channel(
    target: str,
    *,
    service_token: str | None = None,
    default_timeout: float = 5.0,
    service_config: str | None = None,
) -> grpc.aio.Channel:
    """An insecure grpc.aio channel to `target` with the standard client behaviour.

    Calls are spread round-robin over every address the target resolves to, so a target
    naming several replicas (`ipv4:10.0.0.1:50052,10.0.0.2:50052`, or
    `dns:///executor-headless:50052` in Kubernetes) balances per call, not per connection.
    """
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        # Reconnect at most RECONNECT_MAX_MS after a server went away (gRPC's default
        # backoff grows to 120 s), so callers recover within about a second of it being
        # back instead of answering UNAVAILABLE for seconds more.
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_MIN_MS),
        ("grpc.min_reconnect_backoff_ms", RECONNECT_MIN_MS),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS),
        ("grpc.lb_policy_name", "round_robin"),
        # As large as the servers send (gRPC's client default is 4 MiB): a page of big
        # agents must not fail on the caller's side.
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    if service_config:
        options.append(("grpc.service_config", service_config))
    interceptors = [
        _UnaryUnary(service_token, default_timeout),
        _UnaryStream(service_token, default_timeout),
        _StreamStream(service_token, default_timeout),
    ]
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
