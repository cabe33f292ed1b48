"""Application: a stopping gateway's last moment to answer what still waits on a run.

On SIGTERM the gateway lets requests in flight finish for the shutdown grace. Shortly
before the grace ends (`Settings.drain_delay`) `draining` is set: a request still
waiting is answered at once instead of being cut off — a completion names its run
(`GatewayStopping`), a join answers the run as it is. The runs themselves go on: the
executor runs a foreground run to its end even when its caller leaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")
_RECANCEL_SECONDS = 0.1


class Drained(Exception):
    """The gateway's time to answer ran out before the work ended (it was cancelled)."""


async def unless_drained(draining: asyncio.Event, work: Awaitable[T]) -> T:
    """What `work` gives; if `draining` is set first, `work` is cancelled and Drained raised.

    Raises:
        Drained: `draining` was set before `work` ended.
        Exception: what `work` raised.
    """
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(draining.wait())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the request itself was cancelled
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task.done():
        return task.result()
    while not task.done():  # cancelled again until it ends (see kit's `cancel_and_wait`)
        task.cancel()
        await asyncio.wait({task}, timeout=_RECANCEL_SECONDS)
    if task.cancelled() or task.exception() is not None:
        raise Drained
    return task.result()  # it ended as it was cancelled: its answer stands
