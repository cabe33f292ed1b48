"""Adapter: one gRPC call to a service, its refusal turned into the kit error it carries."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc

from agentrt_kit.grpc.status import error_from_rpc

T = TypeVar("T")


async def answer(call: Awaitable[T]) -> T:
    """Await a unary call; a refusal comes back as the kit error the service sent.

    Raises:
        AgentrtError: the service's refusal (its code, reason and field violations).
    """
    try:
        return await call
    except grpc.aio.AioRpcError as e:
        raise error_from_rpc(e) from None
