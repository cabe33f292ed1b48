"""Adapter: publishes agent events to the registry's JetStream stream.

Stream `<PREFIX>_REGISTRY` holds `<prefix>.registry.>`; each event goes to
`<prefix>.registry.agent.<type>` as an `agentrt.events.v1.AgentChanged`
protobuf, with `Nats-Msg-Id` = event id (JetStream drops a repeat inside the
duplicate window) and `Agentrt-Position` = its position in the notification log
(read back on reconnection so a restarted relay resumes after what the stream
holds, even past the window). The stream keeps events within its `StreamLimits`;
the oldest go first.

Events go one at a time, each after the previous one's acknowledgement. Pipelined,
a crash of NATS could lose events nats-py had written while later ones waited in its
reconnect buffer, which it sends on reconnection: they were stored after a gap, the
relay resumed after them, and the lost ones were never published. One at a time, what
the stream holds is always the log up to some position.
"""

from __future__ import annotations

from collections.abc import Sequence

import nats.errors
import nats.js.errors
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType

from agent_registry.adapters.grpc_api import entry_fields
from agent_registry.application.ports import OutboundEvent
from agentrt.events.v1 import registry_events_pb2
from agentrt_kit.errors import Unavailable
from agentrt_kit.nats import (
    MSG_ID_HEADER,
    Names,
    NatsClient,
    StreamLimits,
    ensure_stream,
    trace_headers,
)

POSITION_HEADER = "Agentrt-Position"
AGENT_ID_HEADER = "Agentrt-Agent-Id"


def encode(event: OutboundEvent) -> bytes:
    """The AgentChanged protobuf of an event."""
    return registry_events_pb2.AgentChanged(
        event_id=event.event_id,
        position=event.position,
        agent_id=event.entry.agent_id,
        **entry_fields(event.entry),
    ).SerializeToString()


class JetStreamPublisher:
    """EventPublisher over JetStream."""

    def __init__(
        self,
        client: NatsClient,
        names: Names,
        *,
        limits: StreamLimits,
        duplicate_window_seconds: float = 600.0,
        ack_timeout: float = 5.0,
    ) -> None:
        self._client = client
        self._names = names
        self.stream = names.stream("registry")
        self._config = limits.stream_config(
            name=self.stream,
            subjects=[names.subject("registry", ">")],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            duplicate_window=duplicate_window_seconds,
        )
        self._ack_timeout = ack_timeout
        self._stream_ready = False

    async def _ready(self) -> None:
        if not self._client.connected:
            self._stream_ready = False
            raise Unavailable("NATS is not connected")
        if not self._stream_ready:
            await ensure_stream(self._client.js, self._config)
            self._stream_ready = True

    async def publish(self, events: Sequence[OutboundEvent]) -> None:
        """Publish in order, each event once the previous one is acknowledged."""
        try:
            await self._ready()
            js = self._client.js
            for event in events:
                headers = trace_headers(
                    {
                        MSG_ID_HEADER: event.event_id,
                        POSITION_HEADER: str(event.position),
                        AGENT_ID_HEADER: event.entry.agent_id,
                    }
                )
                subject = self._names.subject("registry", "agent", event.entry.type)
                await js.publish(subject, encode(event), headers=headers, timeout=self._ack_timeout)
        except (nats.errors.Error, OSError, TimeoutError) as e:
            self._stream_ready = False
            raise Unavailable(f"publishing agent events failed: {e or type(e).__name__}") from e

    async def last_position(self) -> int:
        """The position header of the stream's last message (0 when empty)."""
        try:
            await self._ready()
            info = await self._client.js.stream_info(self.stream)
            if not info.state.last_seq:
                return 0
            msg = await self._client.js.get_msg(self.stream, seq=info.state.last_seq)
        except nats.js.errors.NotFoundError:
            self._stream_ready = False  # the stream may be gone: re-create it before publishing
            return 0
        except (nats.errors.Error, OSError, TimeoutError) as e:
            self._stream_ready = False
            raise Unavailable(f"reading the agent event stream failed: {e}") from e
        value = (msg.headers or {}).get(POSITION_HEADER)
        return int(value) if value and value.isdigit() else 0
