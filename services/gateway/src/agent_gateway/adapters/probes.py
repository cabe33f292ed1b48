"""Adapter: readiness checks of the services behind the gateway (gRPC health)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentrt_kit.grpc.client import create_channel


class GrpcHealthProbe:
    """Asks one service's gRPC health endpoint whether it serves."""

    def __init__(self, target: str, *, timeout: float) -> None:
        self._channel = create_channel(target, default_timeout=timeout)
        self._stub = health_pb2_grpc.HealthStub(self._channel)

    async def serving(self) -> bool:
        """True when the service answers SERVING in time."""
        try:
            reply = await self._stub.Check(health_pb2.HealthCheckRequest())
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()
