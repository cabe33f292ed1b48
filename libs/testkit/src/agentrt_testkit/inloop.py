"""Run a service's `serve()` inside the test's event loop and talk to it over real gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Generic, Self, TypeVar

import grpc

from agentrt_kit.grpc.client import create_channel
from agentrt_kit.settings import ServiceSettings

SettingsT = TypeVar("SettingsT")
StubT = TypeVar("StubT")

Serve = Callable[..., Coroutine[Any, Any, None]]


def _prompt(settings: SettingsT) -> SettingsT:
    """`settings` without the shutdown delay, unless the test set one.

    The delay serves calls already on their way to a stopping service; nothing is on its
    way to a test's server when the test stops it, and each stop would wait for nothing.
    """
    if isinstance(settings, ServiceSettings) and (
        "shutdown_delay_seconds" not in settings.model_fields_set
    ):
        return settings.model_copy(update={"shutdown_delay_seconds": 0.0})
    return settings


class InLoopService(Generic[SettingsT, StubT]):
    """A service started with ``serve(settings, stop=..., on_ready=...)`` on a free port.

    Subclasses name the service's ``serve`` and its gRPC stub class; ``start()`` returns once
    the server listens (or raises what stopped it), ``stop()`` closes the channels handed out
    by ``stub()`` and waits for a graceful shutdown.
    """

    serve: ClassVar[Serve]
    stub_class: ClassVar[Callable[[grpc.aio.Channel], Any]]

    def __init__(self, settings: SettingsT) -> None:
        self.settings = _prompt(settings)
        self.port = 0
        self.task: asyncio.Task[None] | None = None
        self.stop_event = asyncio.Event()
        self.channels: list[grpc.aio.Channel] = []

    async def start(self) -> Self:
        """Start serving; return once the port is bound, or raise why it stopped."""
        self.stop_event = asyncio.Event()
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        serve = type(self).serve
        self.task = asyncio.create_task(
            serve(self.settings, stop=self.stop_event, on_ready=ready.set_result)
        )
        waiting: set[asyncio.Future[Any]] = {ready, self.task}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            self.task.result()  # raises what stopped it
        self.port = ready.result()
        return self

    async def stop(self) -> None:
        """Close the handed-out channels and stop the server gracefully."""
        for channel in self.channels:
            await channel.close()
        self.channels.clear()
        self.stop_event.set()
        if self.task is not None:
            await self.task

    def stub(self, token: str | None = None) -> StubT:
        """A stub on a new channel to the service, sending `token` if given."""
        channel = create_channel(f"127.0.0.1:{self.port}", service_token=token)
        self.channels.append(channel)
        stub: StubT = type(self).stub_class(channel)
        return stub
