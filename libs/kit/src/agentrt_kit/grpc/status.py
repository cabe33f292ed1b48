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


def to_rpc_status(err: AgentrtError) -> status_pb2.Status:
    """The google.rpc.Status describing `err`."""
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(reason=err.reason, domain=ERROR_DOMAIN, metadata=err.metadata)
    )
    details = [info]
    if err.violations:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in err.violations
                ]
            )
        )
        details.append(bad)
    return status_pb2.Status(
        code=code_pb2.Code.Value(err.code.value), message=err.message, details=details
    )


def to_grpc_status(err: AgentrtError) -> grpc.Status:
    """A grpc.Status (code, message, details trailer) for aborting a call with `err`."""
    return rpc_status.to_status(to_rpc_status(err))


async def abort_with(context: grpc.aio.ServicerContext, err: AgentrtError) -> None:
    """Abort the call with `err` mapped to a rich status (raises grpc.aio.AbortError)."""
    status = to_grpc_status(err)
    await context.abort(status.code, status.details, status.trailing_metadata)


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
    try:
        cls = ERROR_CLASSES[ErrorCode(code_name)]
    except ValueError:
        # UNKNOWN, UNIMPLEMENTED, DATA_LOSS: nothing the caller can fix by changing input.
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
