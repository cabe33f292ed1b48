"""Adapter: the run queue on Redis Streams (the `RunQueue` port).

A queued run is one entry `run=<run id>` on the stream `<prefix>:<name>s:queue`
(`name` is "run", or "webhook" for the webhook queue: each name has its own keys).
Submitting sets `<prefix>:<name>s:seen:<run id>` for the duplicate window (10 min)
in the script that adds the entry, so a run submitted again within it is queued
once. A stream holding `max_len` entries refuses new runs rather than trimming
queued ones; entries older than `max_age` are trimmed, unprocessed, at each submit.

Every executor replica reads through one consumer group, `executors`, as a consumer
of its own (a uuid per `RedisRunQueue`). A pull first takes back deliveries idle
for `ack_wait` seconds (`XAUTOCLAIM`, which counts a delivery), then reads new
entries (`XREADGROUP >`, blocking); a delivery's attempt is its delivery count.
Acknowledging is `XACK` + `XDEL` in one script (work-queue semantics). `extend`
resets the idle time (`XCLAIM ... JUSTID` to itself, which keeps the count).
`retry(delay)` sets the idle time to `ack_wait - delay`, so the delivery is taken
back after `delay`; a longer delay parks it: its due time goes into the hash
`<prefix>:<name>s:parked`, and a pull that takes it back before then gives it up
again, count restored, idle until it is due. A replica's consumer that holds
nothing leaves the group when the queue is closed.

`max_deliver` deliveries at most (`max_attempts + 1` by default, -1 unlimited):
an entry taken back past it is not delivered but acknowledged with a dead letter,
and stays in the stream (in `depth`, as JetStream keeps a message past its
`max_deliver`) until `max_age` trims it. Dead letters are JSON `{"run_id",
"reason", "attempt"}` in the field `record` of the stream `<prefix>:<name>s:dead`,
trimmed to 7 days.

`stats` is one script: `depth` is the stream's length; `pending` the group's lag
(counted past its last-delivered id when Redis cannot tell the lag, after entries
were deleted out of order); the oldest age from the id of the first entry past
that id; `redelivered` the pending entries delivered more than once, parked ones
aside (a scan of the pending entries, which the replicas' free slots bound).

Needs Redis 7.0+ (the group's lag, `XAUTOCLAIM` reporting deleted entries) and one
Redis, not a cluster (each script touches several keys). The deployment's Redis
must keep what it acknowledged: run it with `appendonly yes` (`appendfsync always`
loses nothing on a crash, `everysec` up to a second); `start()` warns once when
`CONFIG GET appendonly` says no. The group is created (MKSTREAM) at `start()` and
again, from the stream's first entry, whenever Redis answers NOGROUP: a Redis that
lost its data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ParamSpec, TypeVar, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from agent_executor.adapters.queue_signals import LostSignals
from agent_executor.application.ports import QueueDelivery, QueueStats, QueueUnavailable

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

GROUP = "executors"
SOCKET_TIMEOUT = 5.0  # longest a connect or a command waits on Redis
# A blocked read is a reply the socket waits for: each slice ends before the socket times out.
MAX_BLOCK = SOCKET_TIMEOUT - 1.0
# A refused connection is tried again 0.1, 0.2 and 0.4 s later; a timeout is not repeated.
POOL_CONNECTIONS = 128  # connections per queue: commands in flight and the blocking read
RETRY = Retry(ExponentialBackoff(cap=1.0, base=0.05), 3, supported_errors=(RedisConnectionError,))
DUPLICATE_WINDOW = 600.0
DEAD_LETTER_MAX_AGE = 7 * 86_400.0
REDIS_ERRORS = (RedisError, OSError)
# How Redis says the group is gone: NOGROUP, or UNBLOCKED to a read blocked on a deleted stream.
MISSING = ("NOGROUP", "UNBLOCKED")

# Every script reads the server's clock, the one stream ids come from (milliseconds).
CLOCK = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# KEYS: queue, seen marker. ARGV: run id, duplicate window ms, max_len (0: none), max_age ms.
# 1: queued, 0: a repeat within the window, -1: refused (the queue is full).
SUBMIT = (
    CLOCK
    + """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('XTRIM', KEYS[1], 'MINID', math.max(0, now - tonumber(ARGV[4])))
local max_len = tonumber(ARGV[3])
if max_len > 0 and redis.call('XLEN', KEYS[1]) >= max_len then return -1 end
redis.call('XADD', KEYS[1], '*', 'run', ARGV[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return 1
"""
)

# KEYS: queue, dead letters, parked. ARGV: group, consumer, ack_wait ms, count, max_deliver,
# dead-letter max age ms. Up to `count` deliveries taken back: {entry id, run id, attempt}.
RECLAIM = (
    CLOCK
    + """
local group, consumer = ARGV[1], ARGV[2]
local ack_wait, want, max_deliver = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local got, cursor = {}, '0-0'
repeat
  local reply = redis.call('XAUTOCLAIM', KEYS[1], group, consumer, ack_wait, cursor,
                           'COUNT', want - #got)
  cursor = reply[1]
  for _, id in ipairs(reply[3]) do redis.call('HDEL', KEYS[3], id) end
  for _, entry in ipairs(reply[2]) do
    local id, run_id = entry[1], entry[2][2]
    local count = redis.call('XPENDING', KEYS[1], group, id, id, 1)[1][4]
    local due = tonumber(redis.call('HGET', KEYS[3], id))
    if due and due > now then
      redis.call('XCLAIM', KEYS[1], group, consumer, 0, id,
                 'IDLE', math.max(0, ack_wait - (due - now)), 'RETRYCOUNT', count - 1, 'JUSTID')
    else
      redis.call('HDEL', KEYS[3], id)
      if max_deliver >= 0 and count > max_deliver then
        redis.call('XACK', KEYS[1], group, id)
        local record = cjson.encode({run_id = run_id, attempt = count - 1,
          reason = string.format('delivered %d times, never acknowledged', count - 1)})
        redis.call('XADD', KEYS[2], 'MINID', now - tonumber(ARGV[6]), '*', 'record', record)
      else
        got[#got + 1] = {id, run_id, count}
      end
    end
  end
until #got >= want or cursor == '0-0'
return got
"""
)

# KEYS: queue, parked. ARGV: group, consumer, entry id, idle ms, parked for ms (0: not parked).
# Only while the delivery is still this consumer's (not taken back by another).
HOLD = (
    CLOCK
    + """
local group, consumer, id = ARGV[1], ARGV[2], ARGV[3]
if #redis.call('XPENDING', KEYS[1], group, id, id, 1, consumer) == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], group, consumer, 0, id, 'IDLE', ARGV[4], 'JUSTID')
if tonumber(ARGV[5]) == 0 then
  redis.call('HDEL', KEYS[2], id)
else
  redis.call('HSET', KEYS[2], id, now + tonumber(ARGV[5]))
end
return 1
"""
)

# KEYS: queue, dead letters, parked. ARGV: group, entry id, dead letter ('' to acknowledge),
# dead-letter max age ms. The dead letter is recorded once, by whoever acknowledges the entry.
SETTLE = (
    CLOCK
    + """
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
if acked == 1 and ARGV[3] ~= '' then
  redis.call('XADD', KEYS[2], 'MINID', now - tonumber(ARGV[4]), '*', 'record', ARGV[3])
end
return acked
"""
)

# KEYS: queue, dead letters, parked. ARGV: group.
# {depth, pending, oldest pending age ms, redelivered, dead letters}.
STATS = (
    CLOCK
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('NOGROUP no stream') end
local group
for _, fields in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #fields, 2 do info[fields[i]] = fields[i + 1] end
  if info['name'] == ARGV[1] then group = info end
end
if not group then return redis.error_reply('NOGROUP no group') end
local after = '(' .. group['last-delivered-id']
local pending = group['lag']
if not pending then
  -- Redis cannot tell the lag across entries deleted out of order: count them.
  pending = #redis.call('XRANGE', KEYS[1], after, '+')
end
local oldest = 0
local first = redis.call('XRANGE', KEYS[1], after, '+', 'COUNT', 1)[1]
if first then oldest = math.max(0, now - tonumber(string.match(first[1], '^%d+'))) end
local redelivered, start = 0, '-'
repeat
  local page = redis.call('XPENDING', KEYS[1], ARGV[1], start, '+', 1000)
  for _, p in ipairs(page) do
    if p[4] > 1 and redis.call('HEXISTS', KEYS[3], p[1]) == 0 then
      redelivered = redelivered + 1
    end
  end
  if #page > 0 then start = '(' .. page[#page][1] end
until #page < 1000
return {redis.call('XLEN', KEYS[1]), pending, oldest, redelivered, redis.call('XLEN', KEYS[2])}
"""
)

# KEYS: queue. ARGV: group, consumer. A consumer holding nothing leaves the group.
LEAVE = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
"""


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class RedisRunQueue:
    """The `RunQueue` port on a Redis stream and one consumer group.

    Connections are pooled; a connection refused is tried again with exponential
    backoff, and nothing waits on Redis longer than `SOCKET_TIMEOUT` except a pull,
    which blocks in slices of at most `ack_wait / 2` (and `MAX_BLOCK`) to take back
    redeliveries that came due meanwhile.
    """

    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        ack_wait: float = 30.0,
        max_attempts: int = 5,
        max_deliver: int | None = None,
        max_age: float = 7 * 86_400.0,
        max_len: int | None = None,
        name: str = "run",
    ) -> None:
        self.ack_wait = ack_wait
        self.max_attempts = max_attempts
        self._max_deliver = max_attempts + 1 if max_deliver is None else max_deliver
        self._max_age = max_age
        self._max_len = max_len
        self.key = f"{prefix}:{name}s:queue"
        self.dead_letter_key = f"{prefix}:{name}s:dead"
        self._parked_key = f"{prefix}:{name}s:parked"
        self._seen_prefix = f"{prefix}:{name}s:seen:"
        self.consumer = uuid.uuid4().hex
        # A bounded pool that makes a burst wait for a connection (up to SOCKET_TIMEOUT)
        # instead of failing at redis-py's default cap.
        self._redis = Redis.from_pool(
            BlockingConnectionPool.from_url(
                url,
                max_connections=POOL_CONNECTIONS,
                timeout=SOCKET_TIMEOUT,
                decode_responses=True,
                protocol=2,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=SOCKET_TIMEOUT,
                retry=RETRY,
            )
        )
        self._submit = self._redis.register_script(SUBMIT)
        self._reclaim = self._redis.register_script(RECLAIM)
        self._hold = self._redis.register_script(HOLD)
        self._settle = self._redis.register_script(SETTLE)
        self._stats = self._redis.register_script(STATS)
        self._leave = self._redis.register_script(LEAVE)
        self._closed = False
        self._lost = LostSignals(log)  # a lost signal warns once until Redis answers again

    async def start(self) -> None:
        """Create the group now if Redis is up; check that Redis keeps what it acknowledged."""
        with contextlib.suppress(QueueUnavailable):
            await self._call("run queue not declared", self._declare)
            await self._call("run queue not declared", self._check_durability)

    async def close(self) -> None:
        """Stop pulling; runs delivered and not acknowledged are delivered again later."""
        if self._closed:
            return
        with contextlib.suppress(QueueUnavailable):
            await self._call(
                "consumer not removed", self._leave, keys=[self.key], args=[GROUP, self.consumer]
            )
        self._closed = True
        with contextlib.suppress(*REDIS_ERRORS):
            await self._redis.aclose()

    async def _declare(self) -> None:
        try:
            # From the first entry: runs submitted to a Redis that lost the group are kept.
            await self._redis.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if not str(e).startswith("BUSYGROUP"):
                raise

    async def _check_durability(self) -> None:
        try:
            config = await self._redis.config_get("appendonly")
        except ResponseError:  # CONFIG renamed or refused (a managed Redis): nothing to check
            return
        if config.get("appendonly") == "no":
            log.warning(
                "redis keeps the run queue in memory only (appendonly no): "
                "a restart loses queued runs and acknowledgements",
                extra={"queue": self.key},
            )

    async def _call(
        self, what: str, operation: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `operation`; when Redis lost the group, create it again and run it once more."""
        for again in (False, True):
            if self._closed:
                raise QueueUnavailable(f"{what}: the run queue is closed")
            try:
                if again:
                    await self._declare()
                result = await operation(*args, **kwargs)
            except ResponseError as e:
                if again or not str(e).startswith(MISSING):
                    raise QueueUnavailable(f"{what}: {e}") from e
            except REDIS_ERRORS as e:
                raise QueueUnavailable(f"{what}: {e!r}") from e
            else:
                self._lost.reset()
                return result
        raise AssertionError("unreachable")

    async def submit(self, run_id: str) -> None:
        """Queue a run (stored once per run id within the duplicate window).

        Raises:
            QueueUnavailable: Redis did not confirm it, or the queue holds `max_len` runs.
        """
        queued = await self._call(
            "run not queued",
            self._submit,
            keys=[self.key, self._seen_prefix + run_id],
            args=[
                run_id,
                _ms(min(DUPLICATE_WINDOW, self._max_age)),
                self._max_len or 0,
                _ms(self._max_age),
            ],
        )
        if queued < 0:
            raise QueueUnavailable(f"run not queued: the queue holds {self._max_len} runs")

    async def pull(self, max_count: int, timeout: float) -> Sequence[QueueDelivery]:
        """Up to `max_count` runs, returned as soon as one is there ([] after `timeout`).

        Raises:
            QueueUnavailable: Redis cannot be asked now.
        """
        deadline = time.monotonic() + timeout
        while True:
            got = await self._call("cannot pull", self._take_back, max_count)
            if len(got) < max_count:
                # Blocks only when nothing was due, and in slices: redeliveries come due meanwhile.
                left = max(0.0, deadline - time.monotonic())
                block = 0.0 if got else min(left, self.ack_wait / 2, MAX_BLOCK)
                got += await self._call("cannot pull", self._read, max_count - len(got), block)
            if got or time.monotonic() >= deadline:
                return got

    async def _take_back(self, count: int) -> list[RedisDelivery]:
        """Deliveries idle `ack_wait` (or parked and due), taken over by this consumer."""
        taken = await self._reclaim(
            keys=[self.key, self.dead_letter_key, self._parked_key],
            args=[
                GROUP,
                self.consumer,
                _ms(self.ack_wait),
                count,
                self._max_deliver,
                _ms(DEAD_LETTER_MAX_AGE),
            ],
        )
        return [
            RedisDelivery(self, entry_id, run_id, attempt) for entry_id, run_id, attempt in taken
        ]

    async def _read(self, count: int, block: float) -> list[RedisDelivery]:
        """First deliveries, waiting up to `block` s for one (BLOCK 0 would wait forever)."""
        block_ms = _ms(block)
        reply = await self._redis.xreadgroup(
            GROUP, self.consumer, {self.key: ">"}, count=count, block=block_ms or None
        )
        # RESP2: [[stream, [(entry id, {field: value}), ...]]], or None when BLOCK ran out.
        streams = cast("list[list[Any]] | None", reply) or []
        return [
            RedisDelivery(self, entry_id, fields.get("run", ""), 1)
            for _, entries in streams
            for entry_id, fields in entries
        ]

    async def dead_letter(self, delivery: QueueDelivery, reason: str) -> None:
        """Record the dead letter and delete the entry, in one script.

        Raises:
            QueueUnavailable: Redis did not confirm it; the run stays queued.
        """
        if not isinstance(delivery, RedisDelivery):
            raise TypeError(f"not a delivery of this queue: {delivery!r}")
        record = {"run_id": delivery.run_id, "reason": reason, "attempt": delivery.attempt}
        await delivery.settle(json.dumps(record))

    async def stats(self) -> QueueStats:
        """Counts from the stream, its group and its pending entries (one script).

        Raises:
            QueueUnavailable: Redis cannot be asked now.
        """
        depth, pending, oldest_ms, redelivered, dead = await self._call(
            "no queue stats",
            self._stats,
            keys=[self.key, self.dead_letter_key, self._parked_key],
            args=[GROUP],
        )
        return QueueStats(
            depth=depth,
            pending=pending,
            oldest_age_seconds=oldest_ms / 1000,
            redelivered=redelivered,
            dead_letters=dead,
        )

    async def acknowledge(self, delivery: RedisDelivery, dead_letter: str) -> None:
        """XACK and XDEL the delivery's entry, recording `dead_letter` unless it is ''.

        Raises:
            QueueUnavailable: Redis did not confirm it.
        """
        await self._call(
            f"run {delivery.run_id} not acknowledged",
            self._settle,
            keys=[self.key, self.dead_letter_key, self._parked_key],
            args=[GROUP, delivery.entry_id, dead_letter, _ms(DEAD_LETTER_MAX_AGE)],
        )

    async def hold(self, delivery: RedisDelivery, delay: float | None) -> bool:
        """Restart the delivery's `ack_wait` (`delay` None) or deliver it again after `delay`.

        False when Redis was not told (logged); never raises.
        """
        idle, parked = 0.0, 0.0
        if delay is not None and delay <= self.ack_wait:
            idle = self.ack_wait - delay
        elif delay is not None:
            parked = delay
        try:
            await self._call(
                f"run {delivery.run_id} not held",
                self._hold,
                keys=[self.key, self._parked_key],
                args=[GROUP, self.consumer, delivery.entry_id, _ms(idle), _ms(parked)],
            )
        except QueueUnavailable as e:
            self._lost("extension" if delay is None else "retry", delivery.run_id, e)
            return False
        return True


class RedisDelivery:
    """One delivery of a queued run (`QueueDelivery`): an entry pending for this consumer.

    `ack` waits for Redis to confirm it. `retry` and `extend` never raise: when
    they are lost, the run is delivered again after `ack_wait`, which an
    at-least-once queue does anyway.
    """

    def __init__(self, queue: RedisRunQueue, entry_id: str, run_id: str, attempt: int) -> None:
        self._queue = queue
        self.entry_id = entry_id
        self.run_id = run_id
        self.attempt = attempt
        self._settled = False

    def __repr__(self) -> str:
        return f"RedisDelivery(run_id={self.run_id!r}, attempt={self.attempt})"

    async def ack(self) -> None:
        """Acknowledge and delete the entry, confirmed by Redis (a repeat does nothing).

        Raises:
            QueueUnavailable: not confirmed; the run is delivered again after `ack_wait`.
        """
        await self.settle("")

    async def retry(self, delay: float) -> None:
        """Deliver again after `delay` seconds, counted as an attempt."""
        if not self._settled:
            self._settled = await self._queue.hold(self, max(0.0, delay))

    async def extend(self) -> None:
        """Restart the `ack_wait` timer."""
        if not self._settled:
            await self._queue.hold(self, None)

    async def settle(self, dead_letter: str) -> None:
        """Acknowledge, recording `dead_letter` first unless it is ''."""
        if self._settled:
            return
        await self._queue.acknowledge(self, dead_letter)
        self._settled = True
