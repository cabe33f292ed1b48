"""The gRPC server every service runs: health, reflection, interceptors, graceful stop.

`GrpcServer` builds a grpc.aio server with the standard interceptors, the
`grpc.health.v1` service (SERVING for "" and each registered service) and
server reflection. `stop()` first turns health to NOT_SERVING so load balancers
and probes stop sending work, then lets in-flight calls finish within the grace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agentrt_kit.grpc.interceptors import ServiceInterceptor

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer to register: its full service name and its `add_*_to_server` call."""

    name: str
    register: Callable[[grpc.aio.Server], None]


class GrpcServer:
    """A grpc.aio server with health, reflection and the standard interceptors."""

    def __init__(
        self,
        bindings: Sequence[ServiceBinding],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        service_token_sha256: bytes | None = None,
    ) -> None:
        self._bindings = list(bindings)
        self._address = f"{host}:{port}"
        self.health = health.aio.HealthServicer()
        self._server = grpc.aio.server(
            interceptors=[ServiceInterceptor(service_token_sha256)],
            options=[
                # Without this a second process could bind the same port silently.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
        )
        self.port = 0

    @property
    def names(self) -> list[str]:
        """The registered service names."""
        return [b.name for b in self._bindings]

    async def start(self) -> int:
        """Bind, start serving and report SERVING; returns the bound port."""
        for binding in self._bindings:
            binding.register(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            [*self.names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        try:
            self.port = self._server.add_insecure_port(self._address)
        except RuntimeError:  # grpcio raises on a failed bind (older versions returned 0)
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot bind gRPC server to {self._address}")
        await self._server.start()
        for name in ("", *self.names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("grpc server listening", extra={"port": self.port, "services": self.names})
        return self.port

    async def set_serving(self, serving: bool) -> None:
        """Report (NOT_)SERVING for every service, e.g. while a dependency is down."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.names):
            await self.health.set(name, status)

    async def begin_shutdown(self) -> None:
        """Report NOT_SERVING (load balancers stop sending calls) while still serving."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        """NOT_SERVING first, then stop accepting calls and let in-flight ones finish."""
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
        log.info("grpc server stopped")

    async def wait_for_termination(self) -> None:
        """Block until the server stops."""
        await self._server.wait_for_termination()
