"""Adapter: service calls — a refusal as the kit error it carries; the times answers carry."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, TypeVar

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


def time_of(message: Any, field: str) -> datetime | None:
    """A message's Timestamp field as an aware UTC datetime; None when it is not set."""
    return getattr(message, field).ToDatetime(tzinfo=UTC) if message.HasField(field) else None
