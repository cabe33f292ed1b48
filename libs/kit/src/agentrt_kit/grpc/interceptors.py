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
from agentrt_kit.errors import AgentrtError, Internal, Unauthenticated, Unimplemented
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


def _metadata(pairs: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in pairs or ():
        if isinstance(value, str):
            out[key] = value
    return out


class _PerMethodCache:
    """Remembers the wrapped handler of each method, so calls do not rebuild it.

    A wrapped handler is reused only while the inner handler is the same object
    (a per-call handler, such as a refusal, is wrapped afresh and not kept).
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def wrap(
        self,
        method: str,
        handler: grpc.RpcMethodHandler,
        unary: Callable[[Behavior], Behavior],
        stream: Callable[[Behavior], Behavior],
    ) -> grpc.RpcMethodHandler:
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap_handler(handler, unary, stream)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class ContextInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Sets request id and actor for the call, continues the caller's trace, logs the call.

    The request id goes back to the caller in the trailers of a unary call (and
    of a failed one) and in the headers of a stream, sent with its first item:
    headers sent before the handler ran would commit the call, and gRPC then
    never retries a failure.
    """

    def __init__(self) -> None:
        self._cache = _PerMethodCache()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """Wrap the handler so its behaviour runs inside the call's context."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method

        def unary(behavior: Behavior) -> Behavior:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                metadata = _metadata(context.invocation_metadata())
                rid, tokens, started = _enter(metadata)
                try:
                    with tracer.start_as_current_span(
                        method, context=propagate.extract(metadata), kind=SpanKind.SERVER
                    ):
                        response = await behavior(request, context)
                        context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
                        return response
                finally:
                    _leave(method, tokens, started, context)

            return call

        def stream(behavior: Behavior) -> Behavior:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                metadata = _metadata(context.invocation_metadata())
                rid, tokens, started = _enter(metadata)
                try:
                    with tracer.start_as_current_span(
                        method, context=propagate.extract(metadata), kind=SpanKind.SERVER
                    ):
                        headers_sent = False
                        async for item in _iterate(behavior(request, context)):
                            if not headers_sent:
                                await context.send_initial_metadata(((REQUEST_ID_HEADER, rid),))
                                headers_sent = True
                            yield item
                        if not headers_sent:  # nothing yielded: the id goes in the trailers
                            context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
                finally:
                    _leave(method, tokens, started, context)

            return call

        return self._cache.wrap(method, handler, unary, stream)


def _enter(metadata: Mapping[str, str]) -> tuple[str, tuple[Any, Any], float]:
    rid = clean_header_value(metadata.get(REQUEST_ID_HEADER)) or new_request_id()
    tokens = (
        request_id_var.set(rid),
        actor_var.set(clean_header_value(metadata.get(ACTOR_HEADER))),
    )
    return rid, tokens, time.perf_counter()


def _leave(method: str, tokens: tuple[Any, Any], started: float, context: Any) -> None:
    request_id_var.reset(tokens[0])
    actor_var.reset(tokens[1])
    if log.isEnabledFor(logging.DEBUG):
        code = context.code()
        log.debug(
            "rpc",
            extra={
                "method": method,
                "code": str(getattr(code, "name", code or "OK")),
                "ms": round((time.perf_counter() - started) * 1000, 3),
            },
        )


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
        token = bearer_token(_metadata(details.invocation_metadata))
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
    if isinstance(err, NotImplementedError):
        # The generated servicer base class raises this for a method a service lacks.
        return Unimplemented("method not implemented by this service", reason="UNIMPLEMENTED")
    log.exception("unhandled error in rpc", exc_info=err)
    trace.get_current_span().set_status(Status(StatusCode.ERROR, type(err).__name__))
    rid = request_id_var.get() or "-"
    return Internal(f"internal error (request id {rid})", reason="INTERNAL_ERROR")


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Maps raised errors to statuses with rich details; never leaks a traceback."""

    def __init__(self) -> None:
        self._cache = _PerMethodCache()

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

        return self._cache.wrap(handler_call_details.method, handler, unary, stream)
