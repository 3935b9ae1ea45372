"""Background upkeep of the api: queue positions and ETAs, and the lost-worker watchdog.

One api process at a time does the passes: it holds a lease in Redis that it renews
each pass, and another process takes over within `LEASE_MS` when it stops. Each change
is still a store script that re-checks the task's state, so two processes that both
believe they lead (a lease expiring mid-pass) change nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import cast

from redis.exceptions import RedisError

from livepix import store
from livepix.wire import (
    WORKER_SEEN_S,
    EventType,
    Queue,
    Status,
    TaskError,
    capacity_key,
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


class Upkeep:
    """The periodic passes; `run` them as one supervised task."""

    def __init__(self, tasks: TaskService) -> None:
        self.tasks = tasks
        self.client = tasks.client
        self.ttl_s = tasks.settings.result_ttl_s
        # Dramatiq re-delivers a running task once its worker's broker heartbeat is 15 s
        # stale; a task not re-started this long after its worker vanished is failed.
        self.lost_after_s = float(tasks.settings.worker_lost_after_s)
        self.lost = 0
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
        pipe = self.client.pipeline(transaction=False)
        for position, ((task_id, state), eta) in enumerate(zip(waiting, etas, strict=True), start=1):
            # A deep queue mostly stands still: only call the script where it would act.
            if store.queued_moved(position, eta, state[2], state[3]):
                await self.tasks.run_script(store.requeued(task_id, position, eta, self.ttl_s), pipe)
        if len(pipe):
            await pipe.execute()
        gone = [i for i, s in zip(ids, states, strict=True) if s[0] != "PENDING"]
        if gone:
            await self.client.zrem(pending_key(queue), *gone)

    async def watchdog(self) -> None:
        """End running tasks whose worker vanished and was not replaced in time, and
        waiting tasks about to expire: every task gets its terminal event."""
        now = time.time()
        live = set(await self.client.zrangebyscore(workers_key(), now - WORKER_SEEN_S, "+inf"))
        running = cast(list[str], await self.client.zrange(running_key(), 0, -1))
        for task_id in running:
            status, worker, queue, lost_at = cast(list[str | None], await self.client.hmget(
                state_key(task_id), "status", "worker", "queue", "lost_at"
            ))
            if status is None:
                await self.client.zrem(running_key(), task_id)
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
            call = store.finish(
                task_id, queue or "", EventType.FAILED, "Worker lost", self.ttl_s,
                error=error, only_status=Status.PROCESSING.value, only_worker=worker,
            )
            if int(await self.tasks.run_script(call)) > 0:
                self.lost += 1
                log.warning("task %s failed: its worker %s vanished", task_id, worker)
        for queue in Queue:
            await self._expire_waiting(queue, now)

    async def _expire_waiting(self, queue: Queue, now: float) -> None:
        oldest = cast(list[str], await self.client.zrange(pending_key(queue), 0, 20))
        for task_id in oldest:
            created, status = await self.client.hmget(state_key(task_id), "created", "status")
            if created is None or status != "PENDING":
                continue
            if now - float(created) < self.ttl_s - PENDING_MARGIN_S:
                break  # in submit order: the rest are younger
            error = TaskError(code="timeout", message="no worker took the task before it expired")
            await self.tasks.run_script(
                store.finish(task_id, queue.value, EventType.FAILED, "Expired", self.ttl_s,
                             error=error, only_status=Status.PENDING.value)
            )
