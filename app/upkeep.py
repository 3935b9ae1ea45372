"""Background upkeep of the api: queue positions and ETAs, deadlines, and the watchdog.

One api process at a time does the passes: it holds a lease in Redis that it renews
each pass, and another process takes over within `LEASE_MS` when it stops. Each change
to a task is still a store script that re-checks the task's state, so two processes
that both believe they lead (a lease expiring mid-pass) change nothing twice.

The watchdog also repairs what a process dying between two steps of a store operation
leaves behind (livepix/store.py): a waiting task whose Dramatiq message never reached
the broker is enqueued; entries of ended tasks leave the running set.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, cast

from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import RedisError

from livepix import store
from livepix.broker import queue_messages_key
from livepix.storage import arun, arun_batch
from livepix.wire import (
    TERMINAL_STATUSES,
    WORKER_SEEN_S,
    EventType,
    Queue,
    Status,
    TaskError,
    TaskType,
    actor_name,
    capacity_key,
    deadlines_key,
    pending_key,
    running_key,
    runtime_key,
    state_key,
    upkeep_lease_key,
    workers_key,
)

from .eta import capacity, estimate
from .tasks import TaskService

log = logging.getLogger(__name__)

POSITIONS_INTERVAL_S = 1.0
MAX_TRACKED = 1000  # waiting tasks per queue that get position and ETA updates
WATCHDOG_INTERVAL_S = 5.0
LEASE_MS = 3000
PENDING_MARGIN_S = 60.0  # fail a task still waiting this close to its expiry
REENQUEUE_AFTER_S = 10.0  # a task waiting this long without its message gets one
DEADLINE_GRACE_S = 10.0  # a running task past its deadline has this long to stop itself


async def finish_anyway(client: Any, opts: store.Options, task_id: str, queue: str, message: str,
                        error: TaskError, only_status: str = "", only_worker: str = "") -> int:
    """`store.finish` of a failure, also when Redis refuses writes (maxmemory): a task
    must end, and ending it frees its input."""
    def ending(despite_full: bool) -> store.Op[int]:
        return store.finish(opts, task_id, queue, EventType.FAILED, message, error=error,
                            only_status=only_status, only_worker=only_worker, despite_full=despite_full)

    try:
        return await arun(client, ending(False))
    except RedisOutOfMemoryError:
        return await arun(client, ending(True))


class Upkeep:
    """The periodic passes; `run` them as one supervised task."""

    def __init__(self, tasks: TaskService) -> None:
        self.tasks = tasks
        self.client = tasks.client
        self.opts = tasks.opts
        self.ttl_s = tasks.settings.result_ttl_s
        # Dramatiq re-delivers a running task once its worker's broker heartbeat is 15 s
        # stale; a task not re-started this long after its worker vanished is failed.
        self.lost_after_s = float(tasks.settings.worker_lost_after_s)
        self.lost = 0
        self.reenqueued = 0
        # Waiting tasks whose queue message this process has seen: a message only goes
        # missing at the submit, so each task is checked once, not every pass.
        self.has_message: dict[Queue, set[str]] = {queue: set() for queue in Queue}
        self.id = uuid.uuid4().hex

    async def lead(self) -> bool:
        """Take or renew the upkeep lease; False while another api process holds it."""
        key = upkeep_lease_key()
        if await self.client.get(key) == self.id:
            await self.client.pexpire(key, LEASE_MS)
            return True
        return bool(await self.client.set(key, self.id, nx=True, px=LEASE_MS))

    async def run(self) -> None:
        last_watchdog = 0.0
        while True:
            await asyncio.sleep(POSITIONS_INTERVAL_S)
            try:
                if not await self.lead():
                    continue
                for queue in Queue:
                    await self.requeue(queue)
                await self.deadlines()
                if time.monotonic() - last_watchdog >= WATCHDOG_INTERVAL_S:
                    last_watchdog = time.monotonic()
                    await self.watchdog()
            except (RedisError, OSError) as exc:
                log.debug("upkeep pass skipped: %s", exc)
            except Exception:
                log.exception("upkeep pass failed")

    async def requeue(self, queue: Queue) -> None:
        """Re-send `queued` where a waiting task's position or ETA moved."""
        ids = cast(list[str], await self.client.zrange(pending_key(queue), 0, MAX_TRACKED - 1))
        if not ids:
            return
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        for task_id in ids:
            pipe.hmget(state_key(task_id), "status", "task_type", "position", "eta_s")
        pipe.hgetall(runtime_key())
        pipe.zrangebyscore(capacity_key(queue), now - WORKER_SEEN_S, "+inf")
        pipe.zrange(running_key(), 0, -1, withscores=True)
        *states, runtimes_raw, workers, running_raw = await pipe.execute()
        pipe = self.client.pipeline(transaction=False)
        for task_id, _started in running_raw:
            pipe.hmget(state_key(task_id), "queue", "task_type")
        running = [
            (info[1], now - started)
            for (_, started), info in zip(running_raw, await pipe.execute(), strict=True)
            if info[0] == queue.value and info[1] is not None
        ]
        waiting = [(i, s) for i, s in zip(ids, states, strict=True) if s[0] == "PENDING" and s[1]]
        runtimes = {k: float(v) for k, v in runtimes_raw.items()}
        etas = estimate([s[1] for _, s in waiting], running, runtimes, capacity(workers))
        # A deep queue mostly stands still: only call the script where it would act.
        calls: list[store.Call] = [
            store.requeued(self.opts, task_id, position, eta)
            for position, ((task_id, state), eta) in enumerate(zip(waiting, etas, strict=True), start=1)
            if store.queued_moved(position, eta, state[2], state[3])
        ]
        if calls:
            await arun_batch(self.client, calls)
        gone = [i for i, s in zip(ids, states, strict=True) if s[0] != "PENDING"]
        if gone:
            await self.client.zrem(pending_key(queue), *gone)

    async def deadlines(self) -> None:
        """End the tasks whose `deadline_s` ran out: a waiting one fails `timeout` at once;
        a running one is told to stop at its next progress point, and failed if it has
        not ended `DEADLINE_GRACE_S` later."""
        now = time.time()
        due = cast(list[tuple[str, float]], await self.client.zrangebyscore(
            deadlines_key(), "-inf", now, start=0, num=100, withscores=True,
        ))
        for task_id, deadline in due:
            status, queue = await self.client.hmget(state_key(task_id), "status", "queue")
            if status is None or status in TERMINAL_STATUSES:
                await self.client.zrem(deadlines_key(), task_id)
                continue
            error = TaskError(code="timeout", message="the task did not finish within its deadline_s")
            if status == Status.PENDING:
                await finish_anyway(self.client, self.opts, task_id, queue or "", "Deadline passed", error,
                                    only_status=Status.PENDING.value)
            elif now - deadline < DEADLINE_GRACE_S:
                await arun_batch(self.client, [store.interrupt(task_id, "timeout")])
            else:
                await finish_anyway(self.client, self.opts, task_id, queue or "", "Deadline passed", error,
                                    only_status=Status.PROCESSING.value)

    async def watchdog(self) -> None:
        """End running tasks whose worker vanished and was not replaced in time, and
        waiting tasks about to expire: every task gets its terminal event. Repair what a
        process that died mid-operation left."""
        now = time.time()
        live = set(await self.client.zrangebyscore(workers_key(), now - WORKER_SEEN_S, "+inf"))
        running = cast(list[str], await self.client.zrange(running_key(), 0, -1))
        for task_id in running:
            status, worker, queue, lost_at = cast(list[str | None], await self.client.hmget(
                state_key(task_id), "status", "worker", "queue", "lost_at"
            ))
            if status is None or status in TERMINAL_STATUSES:
                await self.client.zrem(running_key(), task_id)  # gone, or its finish died half-way
                continue
            if status != "PROCESSING" or worker is None or worker in live:
                continue
            if lost_at is None:
                await self.client.hsetnx(state_key(task_id), "lost_at", now)
                continue
            if now - float(lost_at) < self.lost_after_s:
                continue
            error = TaskError(
                code="worker_lost",
                message=f"the worker running this task stopped and no other took it over within {self.lost_after_s:.0f} s",
            )
            ended = await finish_anyway(self.client, self.opts, task_id, queue or "", "Worker lost", error,
                                        only_status=Status.PROCESSING.value, only_worker=worker)
            if ended > 0:
                self.lost += 1
                log.warning("task %s failed: its worker %s vanished", task_id, worker)
        for queue in Queue:
            await self._expire_waiting(queue, now)
            await self._reenqueue(queue, now)

    async def _expire_waiting(self, queue: Queue, now: float) -> None:
        oldest = cast(list[str], await self.client.zrange(pending_key(queue), 0, 20))
        for task_id in oldest:
            created, status = await self.client.hmget(state_key(task_id), "created", "status")
            if created is None or status != "PENDING":
                continue
            if now - float(created) < self.ttl_s - PENDING_MARGIN_S:
                break  # in submit order: the rest are younger
            error = TaskError(code="timeout", message="no worker took the task before it expired")
            await finish_anyway(self.client, self.opts, task_id, queue.value, "Expired", error,
                                only_status=Status.PENDING.value)

    async def _reenqueue(self, queue: Queue, now: float) -> None:
        """Enqueue the waiting tasks whose Dramatiq message is missing: their submit died
        after it stored the task. A message stays in the queue's `.msgs` hash from its
        enqueue until its worker acknowledges it, by which time the task is no longer
        waiting; the enqueue is once per task id, so a message on its way is never
        doubled."""
        oldest = cast(list[str], await self.client.zrange(pending_key(queue), 0, MAX_TRACKED - 1))
        seen = self.has_message[queue]
        seen.intersection_update(oldest)  # the rest started or ended
        unchecked = [task_id for task_id in oldest if task_id not in seen]
        if not unchecked:
            return
        pipe = self.client.pipeline(transaction=False)
        for task_id in unchecked:
            pipe.hmget(state_key(task_id), "created", "status", "task_type")
        states = await pipe.execute()
        old = [(task_id, task_type) for task_id, (created, status, task_type) in zip(unchecked, states, strict=True)
               if status == "PENDING" and created and task_type and now - float(created) >= REENQUEUE_AFTER_S]
        if not old:
            return
        pipe = self.client.pipeline(transaction=False)
        for task_id, _ in old:
            pipe.hexists(queue_messages_key(queue.value, self.opts.cluster), task_id)
        absent = []
        for (task_id, task_type), present in zip(old, await pipe.execute(), strict=True):
            if present:
                seen.add(task_id)
            else:
                absent.append((task_id, task_type))
        if not absent:
            return
        # Read again, after: a task whose message was handled between the two reads has
        # left PENDING before its message left the hash.
        pipe = self.client.pipeline(transaction=False)
        for task_id, _ in absent:
            pipe.hget(state_key(task_id), "status")
        missing = [(t, k) for (t, k), status in zip(absent, await pipe.execute(), strict=True) if status == "PENDING"]
        for task_id, task_type in missing:
            queued = await arun_batch(self.client, [
                store.enqueue(self.opts, task_id, queue.value, actor_name(TaskType(task_type))),
            ])
            if queued[0]:
                self.reenqueued += 1
                log.warning("task %s waited without its queue message (its submit died half-way); enqueued it", task_id)
