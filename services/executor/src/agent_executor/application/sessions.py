"""Application: keeping each session's checkpoint history bounded.

A session's thread gains a checkpoint at every graph step (three per plain turn), and each
holds the conversation so far, so an unpruned session grows with the square of its turns
(84 MB after 3,840 turns). After each run of a session ends, `SessionPruner` keeps the
newest `keep` checkpoints up to that run's last one, in the background: off the run's path,
like the deletion of a queued run's own thread.

The newest checkpoint is all that the next turn and a resumed run read. What a prune leaves
alone:

- checkpoints after the ended run's last one: a later run's, which may be in flight,
  resumed after its executor stopped, or rolled back (its successor then forks from the
  checkpoint before it, which must still be there);
- the whole thread after a rolled-back run: the next run forks from the checkpoint before
  it (`RunDriver._before_rolled_back`), which may lie more than `keep` checkpoints back.
  The next run that is not rolled back prunes what it left;
- the thread of a run whose end is not stored: handed over, it goes on elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agent_executor.application.ports import RunStore, SessionHistory
from agent_executor.domain.runs import RunRecord

log = logging.getLogger(__name__)

BlockingCall = Callable[..., Awaitable[Any]]


class SessionPruner:
    """Prunes a session's checkpoints once each of its runs has ended."""

    def __init__(
        self, history: SessionHistory, *, keep: int, store: RunStore, call_store: BlockingCall
    ) -> None:
        self.history = history
        self.keep = keep
        self.store = store
        self.call_store = call_store
        self._tasks: set[asyncio.Task[None]] = set()

    def run_ended(self, record: RunRecord) -> None:
        """Prune the ended run's session in the background (nothing for a run without one)."""
        if not record.session_key:
            return
        task = asyncio.create_task(self._prune(record), name=f"prune-{record.run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _prune(self, record: RunRecord) -> None:
        where = {"thread": record.session_key, "run_id": record.run_id}
        try:
            # The stored record decides: a rollback flags it, not this replica's copy, and a
            # run whose end could not be stored was handed over (it resumes elsewhere).
            stored: RunRecord | None = await self.call_store(self.store.get, record.run_id)
            if stored is None or not stored.status.terminal or stored.rolled_back:
                return
            deleted = await self.history.prune(
                record.session_key, keep=self.keep, through_run=record.run_id
            )
        except Exception as e:  # the next run of the session prunes what this one left
            log.warning("session checkpoints not pruned", extra={**where, "error": str(e)})
            return
        if deleted:
            log.debug("session checkpoints pruned", extra={**where, "deleted": deleted})

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout` s) until the prunes under way are done."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


__all__ = ["SessionPruner"]
