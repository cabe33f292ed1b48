"""Service start-up and shutdown helpers shared by every `main.py`.

The order is the same everywhere: telemetry, then an AsyncExitStack holding
NATS, database and application, then the gRPC server; on SIGTERM or SIGINT
health goes NOT_SERVING, new calls are still taken for a short delay (those
already on their way), the server stops with a grace period so in-flight calls
finish, the exit stack closes (NATS drains) and telemetry flushes last.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import uvloop

from agentrt_kit.grpc.server import GrpcServer
from agentrt_kit.logging import setup_logging
from agentrt_kit.settings import ConfigError, ServiceSettings, load_settings

S = TypeVar("S", bound=ServiceSettings)

log = logging.getLogger(__name__)


async def wait_for_shutdown(stop: asyncio.Event | None = None) -> str:
    """Block until `stop` is set or, when no `stop` is given, until SIGTERM or SIGINT.

    Returns:
        What ended the wait.
    """
    received: list[str] = []
    if stop is not None:
        await stop.wait()
    else:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            received.append(sig.name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    reason = received[0] if received else "stop requested"
    log.info("shutting down", extra={"reason": reason})
    return reason


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a service's async main on uvloop; a configuration error exits 2 with its message.

    uvloop (libuv) runs the event loop's own work about twice as fast as asyncio's
    default loop, which is most of a gRPC call's cost in Python.
    """
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


async def serve_until_stopped(
    stack: AsyncExitStack,
    server: GrpcServer,
    *,
    grace: float,
    on_ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    drain: Callable[[float], Awaitable[None]] | None = None,
    delay: float = 0.0,
) -> None:
    """Start `server`, stop it gracefully when the stack unwinds, and wait for shutdown.

    The server's stop is pushed last onto `stack`, so on the way out it goes first:
    NOT_SERVING, new calls still taken for `delay` seconds, then `drain(grace)` when
    given (a service ends its long-running work while the calls that follow it are
    still open, so they hear how it ended), then no new call and those in flight
    finish within `grace`, then everything it depended on.

    The delay is for the calls already on their way: a caller's request that was in
    flight when the signal came may still need this service (the gateway's write after
    its read, a run's tool call after its model call); refused, it would fail although
    it began before the shutdown. Probes and balancers see NOT_SERVING meanwhile.
    """
    await server.start()

    async def shutdown() -> None:
        await server.begin_shutdown()
        await asyncio.sleep(delay)
        if drain is not None:
            await drain(grace)
        await server.stop(grace)

    stack.push_async_callback(shutdown)
    if on_ready is not None:
        on_ready(server.port)
    await wait_for_shutdown(stop)


def service_main(name: str, settings_cls: type[S], serve: Callable[[S], Awaitable[None]]) -> None:
    """A service's `main()`: settings from the environment, logging, then `serve` on uvloop."""

    async def amain() -> None:
        settings = load_settings(settings_cls)
        setup_logging(name, settings.log_level, settings.log_format)
        await serve(settings)

    run(amain)
