"""Adapter: the `agentrt.executor.v1.Executor` gRPC servicer.

Translation only: proto → request → one application call → proto. A run
whose caller goes away (cancel, deadline, disconnect) is cancelled and recorded
as such, unless the call asked to detach it (`detach_on_disconnect`): then only
the call's deadline ends it, and the run goes on without a listener.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from agent_executor.adapters.proto_mapping import (
    compose_pb,
    compose_request,
    failed_run,
    problem_pb,
    queue_figures,
    run_pb,
    run_request,
    stream_event,
    template_pb,
    tool_calls_pb,
    usage_pb,
)
from agent_executor.application.compose import ComposeService
from agent_executor.application.queued_runs import QueuedRuns, QueueOptions
from agent_executor.application.run_driver import RunHandle
from agent_executor.application.run_queries import RunQueries
from agent_executor.application.runs import RunRequest, RunService
from agent_executor.application.templates import TemplateCatalog
from agent_executor.domain.runs import MessageCompleted, RunCompleted, RunFailed
from agentrt.executor.v1 import executor_pb2 as pb
from agentrt.executor.v1 import executor_pb2_grpc as pb_grpc
from agentrt_kit.errors import invalid
from agentrt_kit.grpc.structs import struct_to_dict

# gRPC may end a call at its deadline a moment before the deadline reads as passed here
# (a millisecond was seen): a call ending this close to its deadline ended at it.
DEADLINE_SLACK_SECONDS = 0.1


class ExecutorServicer(pb_grpc.ExecutorServicer):
    """Executor RPCs over the run service and queries, the templates and the compose service."""

    def __init__(
        self,
        runs: RunService,
        queries: RunQueries,
        catalog: TemplateCatalog,
        composer: ComposeService,
        queued: QueuedRuns,
        *,
        bus_backend: str = "nats",
    ) -> None:
        self.runs = runs
        self.bus_backend = bus_backend
        self.queued = queued
        self.queries = queries
        self.catalog = catalog
        self.composer = composer

    async def Execute(self, request: pb.ExecuteRequest, context: Any) -> pb.ExecuteResponse:
        """Run to completion; the final message, or how the run failed."""
        detach = request.detach_on_disconnect
        handle = await self._start(run_request(request.input, stream=False), context, detach)
        final = MessageCompleted("")
        terminal: RunCompleted | RunFailed | None = None
        try:
            async for event in handle:
                body = event.body
                if isinstance(body, MessageCompleted):
                    final = body
                elif isinstance(body, RunCompleted | RunFailed):
                    terminal = body
        finally:
            if not detach:
                await handle.aclose()
        record = handle.record
        response = pb.ExecuteResponse(
            run_id=record.run_id,
            agent_id=record.agent_id,
            agent_version=record.agent_version,
            usage=usage_pb(record.usage),
            task_id=record.task_id,
            context_id=record.context_id,
        )
        if isinstance(terminal, RunCompleted):
            response.message.CopyFrom(
                pb.ChatMessage(
                    role="assistant",
                    content=final.content,
                    tool_calls=tool_calls_pb(final.tool_calls),
                )
            )
            response.finish_reason = terminal.finish_reason
        elif isinstance(terminal, RunFailed):
            response.finish_reason = "cancelled" if terminal.code == "CANCELLED" else "error"
            response.error.CopyFrom(failed_run(terminal))
        return response

    async def ExecuteStream(
        self, request: pb.ExecuteStreamRequest, context: Any
    ) -> AsyncIterator[pb.ExecuteStreamResponse]:
        """Run and stream every event; the last is run_completed or run_failed."""
        detach = request.detach_on_disconnect
        handle = await self._start(run_request(request.input, stream=True), context, detach)
        try:
            async for event in handle:
                yield stream_event(event)
        finally:
            if not detach:
                await handle.aclose()

    async def _start(self, run: RunRequest, context: Any, detach: bool) -> RunHandle:
        """Start the call's run, bound to the call (cancelled when the call ends first).

        A detached run outlives its call: only the call's deadline cancels it. Its
        admission is not cancelled with the call either, so a caller that named the run
        (`run_id`) and left meanwhile still finds it started.

        grpc.aio does not always cancel a handler parked between two messages when the
        client goes away; the call's done callback always fires.
        """
        if not detach:
            handle = await self.runs.start(run)
            context.add_done_callback(
                lambda _: self.runs.cancel_local(handle.run_id, "the caller went away")
            )
            return handle
        starting = asyncio.ensure_future(self.runs.start(run))
        context.add_done_callback(lambda _: self._call_ended(starting, _expired(context)))
        return await asyncio.shield(starting)

    def _call_ended(self, starting: asyncio.Future[RunHandle], expired: bool) -> None:
        """A detached call ended: its run (once admitted) goes on, unless time ran out."""

        def settle(admitted: asyncio.Future[RunHandle]) -> None:
            if admitted.cancelled() or admitted.exception() is not None:
                return  # refused: told to the caller, or nobody is left to tell
            handle = admitted.result()
            if expired:
                self.runs.cancel_local(handle.run_id, "the call's deadline passed")
            else:
                handle.detach()

        starting.add_done_callback(settle)

    async def StartRun(self, request: pb.StartRunRequest, context: Any) -> pb.StartRunResponse:
        """Queue a run; answers its record at once (an idempotent retry: the first run's)."""
        options = QueueOptions(
            webhook_url=request.webhook_url,
            metadata={
                key: value if isinstance(value, str) else json.dumps(value)
                for key, value in struct_to_dict(request.metadata).items()
            },
            multitask_strategy=request.multitask_strategy,
        )
        enqueued = await self.queued.submit(run_request(request.input, stream=False), options)
        return pb.StartRunResponse(run=run_pb(enqueued.record), created=enqueued.created)

    async def ListQueues(
        self, request: pb.ListQueuesRequest, context: Any
    ) -> pb.ListQueuesResponse:
        """Each queue's figures; a queue whose broker cannot be asked says unavailable."""
        return pb.ListQueuesResponse(
            queues=[queue_figures(report) for report in await self.queued.reports()],
            bus_backend=self.bus_backend,
            free_slots=self.runs.free_slots,
        )

    async def StreamRunEvents(
        self, request: pb.StreamRunEventsRequest, context: Any
    ) -> AsyncIterator[pb.ExecuteStreamResponse]:
        """The run's events after `after_sequence`, stored then live, up to its last."""
        if not request.run_id:
            raise invalid("run_id", "is required")
        async for event in self.queries.events(request.run_id, request.after_sequence):
            yield stream_event(event)

    async def CancelRun(self, request: pb.CancelRunRequest, context: Any) -> pb.CancelRunResponse:
        """Cancel a run wherever it runs."""
        if not request.run_id:
            raise invalid("run_id", "is required")
        if request.action not in ("", "interrupt", "rollback"):
            raise invalid("action", "must be interrupt or rollback")
        rollback = request.action == "rollback"
        return pb.CancelRunResponse(
            cancelled=await self.runs.cancel(request.run_id, rollback=rollback)
        )

    async def GetRun(self, request: pb.GetRunRequest, context: Any) -> pb.GetRunResponse:
        """A run's durable record."""
        if not request.run_id:
            raise invalid("run_id", "is required")
        return pb.GetRunResponse(run=run_pb(await self.queries.get(request.run_id)))

    async def ListRuns(self, request: pb.ListRunsRequest, context: Any) -> pb.ListRunsResponse:
        """Runs matching the filters, newest first, one page."""
        records, token = await self.queries.list(
            agent_id=request.agent_id,
            task_id=request.task_id,
            status=request.status,
            owner_id=request.owner_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListRunsResponse(runs=[run_pb(r) for r in records], next_page_token=token)

    async def WaitRun(self, request: pb.WaitRunRequest, context: Any) -> pb.WaitRunResponse:
        """A run's record once it has ended or the timeout passed."""
        if not request.run_id:
            raise invalid("run_id", "is required")
        record, done = await self.queries.wait(request.run_id, request.timeout_seconds)
        return pb.WaitRunResponse(run=run_pb(record), done=done)

    async def ListTemplates(
        self, request: pb.ListTemplatesRequest, context: Any
    ) -> pb.ListTemplatesResponse:
        """The templates served, optionally of one framework, and plugin problems."""
        return pb.ListTemplatesResponse(
            templates=[
                template_pb(t)
                for t in self.catalog.templates()
                if not request.framework or t.template.framework == request.framework
            ],
            problems=[problem_pb(p) for p in self.catalog.problems()],
        )

    async def Compose(self, request: pb.ComposeRequest, context: Any) -> pb.ComposeResponse:
        """Draft an agent with the model; nothing is created."""
        return compose_pb(await self.composer.compose(compose_request(request)))


def _expired(context: Any) -> bool:
    """Whether the call ended at its deadline (not because its caller left before it)."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= DEADLINE_SLACK_SECONDS
