"""The server interceptor every service runs: call context and tracing, auth, error mapping.

One interceptor, one wrapper per method (built once, cached), because every
layer of wrapping costs each call measurably in Python. Per call it:
- refuses calls without the service token when one is configured (health and
  reflection stay open), comparing SHA-256 digests in constant time;
- sets the request id (the caller's when safe, else a new one), the actor and
  the deadline for the call, continues the caller's trace in a server span, and sends the
  request id back: in the trailers of a unary call, with the first item of a
  stream (headers sent before the handler ran would commit the call, and gRPC
  then never retries a failure);
- maps raised errors to statuses with google.rpc rich details; an unexpected
  error is logged with its traceback and answered INTERNAL with only the
  request id, a method the service lacks is answered UNIMPLEMENTED.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import inspect
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from agentrt_kit.context import (
    ACTOR_HEADER,
    REQUEST_ID_HEADER,
    actor_var,
    clean_header_value,
    deadline_var,
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


async def _iterate(result: Any) -> AsyncGenerator[Any, None]:
    """Iterate a streaming behaviour's result (async generator or writer coroutine)."""
    if inspect.isawaitable(result):
        await result
        return
    # Close the handler's generator as soon as the call ends (a client that went
    # away included), so its `finally` blocks run now rather than at garbage collection.
    async with contextlib.aclosing(result):
        async for item in result:
            yield item


def _metadata(pairs: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in pairs or ():
        if isinstance(value, str):
            out[key] = value
    return out


def bearer_token(metadata: Mapping[str, str]) -> str | None:
    """The token of an `authorization: Bearer <token>` header, if present."""
    value = metadata.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    return None


def _record(err: BaseException) -> AgentrtError:
    """The error to send for `err`; unexpected ones are logged and hidden."""
    if isinstance(err, AgentrtError):
        trace.get_current_span().set_attribute("agentrt.error.reason", err.reason)
        return err
    if isinstance(err, NotImplementedError):
        # The generated servicer base class raises this for a method a service lacks.
        return Unimplemented("method not implemented by this service", reason="UNIMPLEMENTED")
    log.exception("unhandled error in rpc", exc_info=err)
    trace.get_current_span().set_status(Status(StatusCode.ERROR, type(err).__name__))
    rid = request_id_var.get() or "-"
    return Internal(f"internal error (request id {rid})", reason="INTERNAL_ERROR")


_Tokens = tuple[Any, Any, Any]


def _enter(
    metadata: Mapping[str, str], context: grpc.aio.ServicerContext
) -> tuple[str, _Tokens, float]:
    rid = clean_header_value(metadata.get(REQUEST_ID_HEADER)) or new_request_id()
    left = context.time_remaining()
    tokens = (
        request_id_var.set(rid),
        actor_var.set(clean_header_value(metadata.get(ACTOR_HEADER))),
        deadline_var.set(None if left is None else time.monotonic() + left),
    )
    return rid, tokens, time.perf_counter()


def _leave(method: str, tokens: _Tokens, started: float, context: Any) -> None:
    # A stream the client left is closed by grpc from another task: its context is not
    # the one the values were set in, and is thrown away anyway.
    with contextlib.suppress(ValueError):
        request_id_var.reset(tokens[0])
        actor_var.reset(tokens[1])
        deadline_var.reset(tokens[2])
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


def _tracing() -> bool:
    """Whether a tracer provider is installed (telemetry on)."""
    return not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )


@contextlib.contextmanager
def _call_span(method: str, metadata: Mapping[str, str]) -> Iterator[None]:
    """A server span continuing the caller's trace.

    With telemetry off only the caller's trace context is carried on, and only when
    there is one: a no-op span costs each call about a tenth of its CPU.
    """
    if _tracing():
        with tracer.start_as_current_span(
            method, context=propagate.extract(metadata), kind=SpanKind.SERVER
        ):
            yield
    elif "traceparent" in metadata:
        token = otel_context.attach(propagate.extract(metadata))
        try:
            yield
        finally:
            otel_context.detach(token)
    else:
        yield


def _unary(method: str) -> Callable[[Behavior], Behavior]:
    def wrap(behavior: Behavior) -> Behavior:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            metadata = _metadata(context.invocation_metadata())
            rid, tokens, started = _enter(metadata, context)
            try:
                with _call_span(method, metadata):
                    try:
                        response = await behavior(request, context)
                    except grpc.aio.AbortError:
                        raise
                    except Exception as e:  # every error gets a status
                        await abort_with(context, _record(e))
                    context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
                    return response
            finally:
                _leave(method, tokens, started, context)

        return call

    return wrap


def _stream(method: str) -> Callable[[Behavior], Behavior]:
    def wrap(behavior: Behavior) -> Behavior:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            metadata = _metadata(context.invocation_metadata())
            rid, tokens, started = _enter(metadata, context)
            try:
                with _call_span(method, metadata):
                    headers_sent = False
                    try:
                        async with contextlib.aclosing(
                            _iterate(behavior(request, context))
                        ) as items:
                            async for item in items:
                                if not headers_sent:
                                    await context.send_initial_metadata(((REQUEST_ID_HEADER, rid),))
                                    headers_sent = True
                                yield item
                    except grpc.aio.AbortError:
                        raise
                    except Exception as e:  # every error gets a status
                        await abort_with(context, _record(e))
                    if not headers_sent:  # nothing yielded: the id goes in the trailers
                        context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
            finally:
                _leave(method, tokens, started, context)

        return call

    return wrap


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Context, tracing, service-token auth and error mapping for every call.

    The server keeps only the token's SHA-256 digest; the token is never stored
    or logged.
    """

    def __init__(self, token_sha256: bytes | None = None) -> None:
        self._digest = token_sha256
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

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
        """The handler of the call, wrapped (or a refusal when the token is wrong)."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        if not self._allowed(handler_call_details):
            return _wrap_handler(handler, _refuse(_unary(method)), _refuse(_stream(method)))
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap_handler(handler, _unary(method), _stream(method))
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _refuse(wrap: Callable[[Behavior], Behavior]) -> Callable[[Behavior], Behavior]:
    """The same wrapper around a behaviour that refuses the call as unauthenticated."""

    def refusing(behavior: Behavior) -> Behavior:
        def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            raise Unauthenticated("missing or invalid service token", reason="INVALID_TOKEN")

        return wrap(refuse)

    return refusing
