"""Server interceptors: call context and tracing, service-token auth, error mapping.

They wrap the method handler's behaviour, so they see each call's request and
context. Order (outermost first): `ContextInterceptor` sets the request id,
actor and a server span; `ServiceTokenInterceptor` refuses calls without the
service token; `ErrorInterceptor` maps raised errors to rich statuses.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from agentrt_kit.context import (
    ACTOR_HEADER,
    REQUEST_ID_HEADER,
    actor_var,
    clean_header_value,
    new_request_id,
    request_id_var,
)
from agentrt_kit.errors import AgentrtError, Internal, Unauthenticated
from agentrt_kit.grpc.status import abort_with

log = logging.getLogger("agentrt.grpc")
tracer = trace.get_tracer("agentrt.grpc")

Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _wrap_handler(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Behavior], Behavior],
    stream: Callable[[Behavior], Behavior],
) -> grpc.RpcMethodHandler:
    """A copy of `handler` whose behaviour is wrapped (unary or streaming response)."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kwargs)
    return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **kwargs)


async def _iterate(result: Any) -> AsyncIterator[Any]:
    """Iterate a streaming behaviour's result (async generator or writer coroutine)."""
    if inspect.isawaitable(result):
        await result
        return
    async for item in result:
        yield item


def _metadata(details: grpc.HandlerCallDetails) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in details.invocation_metadata or ():
        if isinstance(value, str):
            out[key] = value
    return out


class ContextInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Sets request id and actor for the call, continues the caller's trace, logs the call."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """Wrap the handler so its behaviour runs inside the call's context."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        metadata = _metadata(handler_call_details)

        def enter(context: grpc.aio.ServicerContext) -> tuple[Any, Any, str]:
            rid = clean_header_value(metadata.get(REQUEST_ID_HEADER)) or new_request_id()
            return (
                request_id_var.set(rid),
                actor_var.set(clean_header_value(metadata.get(ACTOR_HEADER))),
                rid,
            )

        def leave(tokens: tuple[Any, Any, str], started: float, context: Any) -> None:
            request_id_var.reset(tokens[0])
            actor_var.reset(tokens[1])
            log.debug(
                "rpc",
                extra={
                    "method": method,
                    "code": str(getattr(context.code(), "name", context.code() or "OK")),
                    "ms": round((time.perf_counter() - started) * 1000, 3),
                },
            )

        def unary(behavior: Behavior) -> Behavior:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, tokens = time.perf_counter(), enter(context)
                try:
                    with tracer.start_as_current_span(
                        method, context=propagate.extract(metadata), kind=SpanKind.SERVER
                    ):
                        await context.send_initial_metadata(((REQUEST_ID_HEADER, tokens[2]),))
                        return await behavior(request, context)
                finally:
                    leave(tokens, started, context)

            return call

        def stream(behavior: Behavior) -> Behavior:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started, tokens = time.perf_counter(), enter(context)
                try:
                    with tracer.start_as_current_span(
                        method, context=propagate.extract(metadata), kind=SpanKind.SERVER
                    ):
                        await context.send_initial_metadata(((REQUEST_ID_HEADER, tokens[2]),))
                        async for item in _iterate(behavior(request, context)):
                            yield item
                finally:
                    leave(tokens, started, context)

            return call

        return _wrap_handler(handler, unary, stream)


def bearer_token(metadata: Mapping[str, str]) -> str | None:
    """The token of an `authorization: Bearer <token>` header, if present."""
    value = metadata.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    return None


class ServiceTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls that lack the service token (health and reflection stay open).

    The server keeps only the token's SHA-256 digest and compares digests in
    constant time; the token itself is never stored or logged.
    """

    def __init__(self, token_sha256: bytes | None) -> None:
        self._digest = token_sha256

    def _allowed(self, details: grpc.HandlerCallDetails) -> bool:
        if self._digest is None or details.method.startswith(EXEMPT_PREFIXES):
            return True
        token = bearer_token(_metadata(details))
        if token is None:
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._digest)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """Pass authorised calls on; answer the others UNAUTHENTICATED."""
        handler = await continuation(handler_call_details)
        if handler is None or self._allowed(handler_call_details):
            return handler
        error = Unauthenticated("missing or invalid service token", reason="INVALID_TOKEN")

        def unary(_: Behavior) -> Behavior:
            async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await abort_with(context, error)

            return refuse

        def stream(_: Behavior) -> Behavior:
            async def refuse(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await abort_with(context, error)
                yield  # pragma: no cover - abort raises

            return refuse

        return _wrap_handler(handler, unary, stream)


def _record(err: BaseException) -> AgentrtError:
    """The error to send for `err`; unexpected ones are logged and hidden."""
    if isinstance(err, AgentrtError):
        span = trace.get_current_span()
        span.set_attribute("agentrt.error.reason", err.reason)
        return err
    log.exception("unhandled error in rpc", exc_info=err)
    trace.get_current_span().set_status(Status(StatusCode.ERROR, type(err).__name__))
    rid = request_id_var.get() or "-"
    return Internal(f"internal error (request id {rid})", reason="INTERNAL_ERROR")


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Maps raised errors to statuses with rich details; never leaks a traceback."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """Wrap the handler so raised errors become rich statuses."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None

        def unary(behavior: Behavior) -> Behavior:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await behavior(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as e:
                    await abort_with(context, _record(e))

            return call

        def stream(behavior: Behavior) -> Behavior:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for item in _iterate(behavior(request, context)):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as e:
                    await abort_with(context, _record(e))

            return call

        return _wrap_handler(handler, unary, stream)
