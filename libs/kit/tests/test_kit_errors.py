"""The error hierarchy and its mapping to gRPC statuses with rich details, both ways."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from agentrt.registry.v1 import registry_pb2 as pb
from agentrt_kit import errors
from agentrt_kit.errors import (
    ERROR_CLASSES,
    ERROR_DOMAIN,
    AgentrtError,
    AlreadyExists,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
    invalid,
)
from agentrt_kit.grpc import status as st
from agentrt_kit.grpc.status import (
    error_from_rpc,
    error_from_status,
    grpc_code,
    to_grpc_status,
    to_rpc_status,
)

# Written out by hand, not derived from the code under test.
EXPECTED_CODES = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}

EXPECTED_DEFAULT_REASONS = {
    errors.InvalidArgument: "VALIDATION_ERROR",
    errors.NotFound: "NOT_FOUND",
    errors.AlreadyExists: "ALREADY_EXISTS",
    errors.FailedPrecondition: "FAILED_PRECONDITION",
    errors.Aborted: "CONFLICT",
    errors.OutOfRange: "OUT_OF_RANGE",
    errors.PermissionDenied: "PERMISSION_DENIED",
    errors.Unauthenticated: "INVALID_TOKEN",
    errors.ResourceExhausted: "RESOURCE_EXHAUSTED",
    errors.DeadlineExceeded: "TIMEOUT",
    errors.Unavailable: "UNAVAILABLE",
    errors.Cancelled: "CANCELLED",
    errors.Internal: "INTERNAL",
}


def test_every_error_class_is_registered_once() -> None:
    assert set(ERROR_CLASSES.values()) == set(EXPECTED_CODES)


@pytest.mark.parametrize(
    ("cls", "code"), EXPECTED_CODES.items(), ids=lambda x: getattr(x, "__name__", str(x))
)
def test_each_error_class_maps_to_its_grpc_status_code(
    cls: type[AgentrtError], code: grpc.StatusCode
) -> None:
    err = cls("boom")
    assert grpc_code(err.code) is code
    status = to_grpc_status(err)
    assert status.code is code
    assert status.details == "boom"
    assert to_rpc_status(err).code == code.value[0]


@pytest.mark.parametrize("cls", EXPECTED_DEFAULT_REASONS, ids=lambda c: c.__name__)
def test_each_error_class_has_a_stable_default_reason(cls: type[AgentrtError]) -> None:
    assert cls("x").reason == EXPECTED_DEFAULT_REASONS[cls]
    assert cls("x", reason="MINE").reason == "MINE"


@pytest.mark.parametrize(
    ("err", "stdlib"),
    [
        (errors.InvalidArgument("x"), ValueError),
        (errors.NotFound("x"), LookupError),
        (errors.PermissionDenied("x"), PermissionError),
        (errors.DeadlineExceeded("x"), TimeoutError),
        (errors.Unavailable("x"), ConnectionError),
    ],
)
def test_errors_are_also_the_matching_stdlib_error(err: AgentrtError, stdlib: type) -> None:
    with pytest.raises(stdlib):
        raise err


def test_error_keeps_message_violations_and_a_copy_of_metadata() -> None:
    meta = {"agent_id": "a1"}
    err = NotFound(
        "agent a1 not found",
        reason="AGENT_NOT_FOUND",
        violations=iter([FieldViolation("agent_id", "unknown")]),
        metadata=meta,
    )
    meta["agent_id"] = "changed"
    assert str(err) == err.message == "agent a1 not found"
    assert err.violations == (FieldViolation("agent_id", "unknown"),)
    assert err.metadata == {"agent_id": "a1"}
    assert repr(err) == "NotFound('agent a1 not found', reason='AGENT_NOT_FOUND')"


def test_invalid_helper_names_the_field() -> None:
    err = invalid("spec.name", "must not be empty")
    assert isinstance(err, InvalidArgument)
    assert err.message == "spec.name: must not be empty"
    assert err.violations == (FieldViolation("spec.name", "must not be empty"),)
    assert err.reason == "VALIDATION_ERROR"
    assert invalid("a", "b", "custom text").message == "custom text"


def test_rich_status_carries_error_info_and_bad_request() -> None:
    err = InvalidArgument(
        "two bad fields",
        reason="BAD_SPEC",
        violations=[FieldViolation("name", "empty"), FieldViolation("steps[0].id", "dup")],
        metadata={"hint": "see docs"},
    )
    status = to_rpc_status(err)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message == "two bad fields"
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info)
    assert status.details[1].Unpack(bad)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "BAD_SPEC",
        ERROR_DOMAIN,
        {"hint": "see docs"},
    )
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("name", "empty"),
        ("steps[0].id", "dup"),
    ]


def test_no_bad_request_detail_without_violations() -> None:
    status = to_rpc_status(NotFound("gone"))
    assert len(status.details) == 1
    assert status.details[0].Is(error_details_pb2.ErrorInfo.DESCRIPTOR)


@pytest.mark.parametrize("cls", EXPECTED_CODES, ids=lambda c: c.__name__)
def test_status_round_trips_to_the_same_error(cls: type[AgentrtError]) -> None:
    err = cls(
        "msg",
        reason="WHY",
        violations=[FieldViolation("f", "d")],
        metadata={"k": "v"},
    )
    back = error_from_status(err.code.value, "msg", to_rpc_status(err))
    assert type(back) is cls
    assert (back.message, back.reason, back.violations, back.metadata) == (
        "msg",
        "WHY",
        (FieldViolation("f", "d"),),
        {"k": "v"},
    )


@pytest.mark.parametrize(
    ("code_name", "cls"),
    [("UNKNOWN", Unavailable), ("DATA_LOSS", Internal)],
)
def test_codes_outside_the_hierarchy_map_to_unavailable_or_internal(
    code_name: str, cls: type[AgentrtError]
) -> None:
    err = error_from_status(code_name, "odd", None)
    assert type(err) is cls
    assert err.message == "odd"
    assert err.reason == cls.default_reason
    assert err.violations == ()


def test_a_call_dropped_without_a_refusal_is_unavailable() -> None:
    # What a client sees of a call a stopping server reset: CANCELLED, no details.
    dropped = error_from_status("CANCELLED", "Received RST_STREAM with error code 8", None)
    assert type(dropped) is Unavailable
    assert dropped.message == "Received RST_STREAM with error code 8"
    refused = error_from_status("CANCELLED", "x", to_rpc_status(errors.Cancelled("x")))
    assert type(refused) is errors.Cancelled  # a service's own refusal keeps its meaning


def test_details_of_unknown_types_are_ignored() -> None:
    other = status_pb2.Status(code=code_pb2.NOT_FOUND, message="x")
    status = status_pb2.Status(code=code_pb2.NOT_FOUND, message="x")
    status.details.add().Pack(other)
    err = error_from_status("NOT_FOUND", "x", status)
    assert isinstance(err, NotFound)
    assert err.reason == "NOT_FOUND"


def test_oversized_errors_are_clipped_to_fit_a_trailer() -> None:
    err = InvalidArgument(
        "m" * 5000,
        violations=[FieldViolation(f"field{i}" + "x" * 300, "d" * 300) for i in range(500)],
        metadata={f"k{i}": "v" * 1000 for i in range(50)},
    )
    status = to_rpc_status(err)
    assert len(status.message) == st.MAX_MESSAGE_CHARS
    assert status.message.endswith("…")
    # gRPC clients refuse trailers over 8 KiB; the details travel base64-encoded.
    assert len(status.SerializeToString()) * 4 / 3 < 8 * 1024
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert len(info.metadata) == 20
    assert all(len(v) <= st.MAX_TEXT_CHARS for v in info.metadata.values())


def test_many_violations_are_cut_with_a_count_of_the_rest() -> None:
    err = InvalidArgument(
        "bad", violations=[FieldViolation(f"f{i}" + "x" * 300, "d" * 300) for i in range(500)]
    )
    status = to_rpc_status(err)
    bad = error_details_pb2.BadRequest()
    status.details[1].Unpack(bad)
    shown = len(bad.field_violations) - 1
    assert 0 < shown < 500
    assert [v.field[:3] for v in bad.field_violations[:2]] == ["f0x", "f1x"]
    assert bad.field_violations[-1].description == f"{500 - shown} more violations not shown"
    assert all(len(v.field) <= st.MAX_TEXT_CHARS for v in bad.field_violations)
    assert status.ByteSize() <= st.MAX_DETAILS_BYTES + len(status.message) + 200


# ------------------------------------------------------------------ over a real call


async def test_rich_details_round_trip_over_a_real_call(service) -> None:
    stub = service.registry_stub()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.DeleteAgent(pb.DeleteAgentRequest(agent_id="a1"))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    err = error_from_rpc(info.value)
    assert isinstance(err, NotFound)
    assert err.message == "agent a1 does not exist"
    assert err.reason == "AGENT_NOT_FOUND"
    assert err.metadata == {"agent_id": "a1"}
    assert err.violations == (FieldViolation("agent_id", "no such agent"),)
    status = rpc_status.from_call(info.value)
    detail = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(detail)
    assert detail.domain == "agentrt"


async def test_invalid_helper_arrives_as_bad_request(service) -> None:
    stub = service.registry_stub()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListAgentEvents(pb.ListAgentEventsRequest(agent_id="a1"))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    err = error_from_rpc(info.value)
    assert isinstance(err, InvalidArgument)
    assert err.violations == (FieldViolation("page_size", "must be between 1 and 1000"),)
    assert err.reason == "VALIDATION_ERROR"


async def test_error_without_details_trailer_maps_by_code(service) -> None:
    channel = service.raw_channel()
    call = channel.unary_unary("/agentrt.registry.v1.AgentRegistry/NoSuchMethod")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(b"")
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
    err = error_from_rpc(info.value)
    assert type(err) is errors.Unimplemented
    assert err.reason == "UNIMPLEMENTED"
    assert err.violations == ()


async def test_details_trailer_with_a_different_code_is_ignored() -> None:
    """A details trailer that contradicts the status code is not trusted."""
    lying = status_pb2.Status(code=code_pb2.INTERNAL, message="other")
    lying.details.add().Pack(error_details_pb2.ErrorInfo(reason="LIE", domain="x"))

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(
            grpc.StatusCode.NOT_FOUND,
            "not here",
            (("grpc-status-details-bin", lying.SerializeToString()),),
        )
        return b""

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "t.T", {"M": grpc.unary_unary_rpc_method_handler(handler)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary("/t.T/M")(b"")
        err = error_from_rpc(info.value)
        assert isinstance(err, NotFound)
        assert err.message == "not here"
        assert err.reason == "NOT_FOUND"
    finally:
        await server.stop(0)


async def test_abort_with_outside_a_call_context_adds_no_request_id() -> None:
    """Servers without the ContextInterceptor still get the rich status, and no empty id."""

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await st.abort_with(context, AlreadyExists("taken", reason="NAME_TAKEN"))
        return b""

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "t.T", {"M": grpc.unary_unary_rpc_method_handler(handler)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary("/t.T/M")(b"")
        assert info.value.code() is grpc.StatusCode.ALREADY_EXISTS
        assert error_from_rpc(info.value).reason == "NAME_TAKEN"
        assert "x-request-id" not in dict(info.value.trailing_metadata())
    finally:
        await server.stop(0)
