"""Application: runs as resources — read, listed, joined and cancelled by their callers.

Every chat completion is a run with a durable record in the executors' store. A key
bound to an owner sees only runs of its owner's agents (another owner's run is "not
found", as a missing one is), and lists only those.
"""

from __future__ import annotations

from agent_gateway.application.ports import RunRecords
from agent_gateway.domain.auth import Principal
from agent_gateway.domain.limits import StreamSlots
from agent_gateway.domain.runs import RunQuery, RunRecord
from agent_gateway.errors import over_limit
from agentrt_kit.errors import NotFound

OPEN = frozenset({"queued", "running"})  # the statuses a run can still leave


def run_not_found(run_id: str) -> NotFound:
    """No such run — or one of another owner's agent (indistinguishable)."""
    return NotFound(f"run {run_id[:200]!r} not found", reason="RUN_NOT_FOUND")


class Runs:
    """Run records on behalf of a caller."""

    def __init__(self, records: RunRecords, *, waits: StreamSlots) -> None:
        self._records = records
        self._waits = waits

    def _visible(self, caller: Principal, run: RunRecord) -> RunRecord:
        if not caller.sees(run.owner_id):
            raise run_not_found(run.run_id)
        return run

    async def get(self, caller: Principal, run_id: str) -> RunRecord:
        """One run."""
        return self._visible(caller, await self._records.get_run(run_id))

    async def page(self, caller: Principal, query: RunQuery) -> tuple[list[RunRecord], str]:
        """A page of the caller's runs, newest first, and the next page's token."""
        if caller.owner is not None:
            query = RunQuery(
                query.agent_id,
                query.task_id,
                query.status,
                caller.owner,
                query.limit,
                query.page_token,
            )
        return await self._records.list_runs(query)

    async def wait(self, caller: Principal, run_id: str, timeout: float) -> RunRecord:
        """The run once it has ended, or as it is when `timeout` seconds have passed.

        Raises:
            ResourceExhausted: the caller has `waits.limit` waits open already.
        """
        run = self._visible(caller, await self._records.get_run(run_id))
        if run.status not in OPEN or timeout == 0:
            return run
        if not self._waits.acquire(caller.id):
            raise over_limit(
                f"at most {self._waits.limit} waits may be open per key",
                {"scope": "waits", "limit": str(self._waits.limit)},
            )
        try:
            return await self._records.wait_run(run_id, timeout)
        finally:
            self._waits.release(caller.id)

    async def cancel(self, caller: Principal, run_id: str) -> tuple[RunRecord, bool]:
        """Ask the run to stop (cooperatively); whether it was still running, and its record."""
        self._visible(caller, await self._records.get_run(run_id))
        cancelled = await self._records.cancel_run(run_id)
        return await self._records.get_run(run_id), cancelled
