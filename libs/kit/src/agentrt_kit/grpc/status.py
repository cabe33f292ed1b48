"""Map the error hierarchy to gRPC status with google.rpc rich details, and back.

Every refusal carries a `google.rpc.ErrorInfo` (domain `agentrt`, a stable
`reason`, string metadata); bad input also carries a `google.rpc.BadRequest`
with one field violation per bad field. Clients in any language read these
from the `grpc-status-details-bin` trailer.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from agentrt_kit.context import REQUEST_ID_HEADER, request_id_var
from agentrt_kit.errors import (
    ERROR_CLASSES,
    ERROR_DOMAIN,
    AgentrtError,
    ErrorCode,
    FieldViolation,
    Internal,
    Unavailable,
)


def grpc_code(code: ErrorCode) -> grpc.StatusCode:
    """The grpc.StatusCode of an ErrorCode (same names)."""
    return grpc.StatusCode[code.value]


# gRPC clients refuse trailers above 8 KiB by default, and details travel base64-encoded
# in one: keep the serialized details well below that, whatever the caller sent.
MAX_DETAILS_BYTES = 4096
MAX_MESSAGE_CHARS = 1024
MAX_TEXT_CHARS = 200


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bad_request(
    violations: tuple[FieldViolation, ...], budget: int
) -> error_details_pb2.BadRequest:
    bad = error_details_pb2.BadRequest()
    for i, v in enumerate(violations):
        bad.field_violations.add(
            field=_clip(v.field, MAX_TEXT_CHARS), description=_clip(v.description, MAX_TEXT_CHARS)
        )
        if bad.ByteSize() > budget:
            del bad.field_violations[-1]
            bad.field_violations.add(
                field="", description=f"{len(violations) - i} more violations not shown"
            )
            break
    return bad


def to_rpc_status(err: AgentrtError) -> status_pb2.Status:
    """The google.rpc.Status describing `err` (bounded in size)."""
    info = error_details_pb2.ErrorInfo(
        reason=err.reason,
        domain=ERROR_DOMAIN,
        metadata={k: _clip(v, MAX_TEXT_CHARS) for k, v in list(err.metadata.items())[:20]},
    )
    packed = any_pb2.Any()
    packed.Pack(info)
    details = [packed]
    if err.violations:
        bad = any_pb2.Any()
        bad.Pack(_bad_request(err.violations, MAX_DETAILS_BYTES - info.ByteSize()))
        details.append(bad)
    return status_pb2.Status(
        code=code_pb2.Code.Value(err.code.value),
        message=_clip(err.message, MAX_MESSAGE_CHARS),
        details=details,
    )


def to_grpc_status(err: AgentrtError) -> grpc.Status:
    """A grpc.Status (code, message, details trailer) for aborting a call with `err`."""
    return rpc_status.to_status(to_rpc_status(err))


async def abort_with(context: grpc.aio.ServicerContext, err: AgentrtError) -> None:
    """Abort the call with `err` mapped to a rich status (raises grpc.aio.AbortError).

    The trailers carry the call's request id too: a refused call has sent no
    response headers, so this is where its caller finds the id.
    """
    status = to_grpc_status(err)
    trailing = tuple(status.trailing_metadata)
    if (rid := request_id_var.get()) is not None:
        trailing += ((REQUEST_ID_HEADER, rid),)
    await context.abort(status.code, status.details, trailing)


def error_from_status(
    code_name: str, message: str, status: status_pb2.Status | None
) -> AgentrtError:
    """Rebuild the error a server raised from its code, message and rich details."""
    reason: str | None = None
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
    if code_name == "CANCELLED" and status is None:
        # Not a service's refusal (those carry details) but a call dropped on its way: a
        # server stopping at that moment resets the calls it has not taken. Another
        # attempt can succeed. (A call its caller cancelled raises CancelledError instead.)
        return Unavailable(message or "the call was dropped by the server")
    try:
        cls = ERROR_CLASSES[ErrorCode(code_name)]
    except ValueError:
        # UNKNOWN, DATA_LOSS: nothing the caller can fix by changing input.
        cls = Unavailable if code_name == "UNKNOWN" else Internal
    return cls(message, reason=reason, violations=violations, metadata=metadata)


def error_from_rpc(err: grpc.aio.AioRpcError) -> AgentrtError:
    """Translate a failed client call into the error hierarchy, details included."""
    status: status_pb2.Status | None
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        status = None
    return error_from_status(err.code().name, err.details() or "", status)
