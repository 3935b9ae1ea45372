"""A worker process: a Dramatiq worker on chosen queues, run in-process so that its
poll interval, prefetch and shutdown are ours to set (the `dramatiq` CLI sets none).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterable

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from livepix.broker import heartbeats_key, make_broker
from livepix.config import Settings
from livepix.storage import sync_client
from livepix.wire import (
    QUEUE_OF,
    WORKER_HEARTBEAT_S,
    Queue,
    TaskType,
    actor_name,
    capacity_key,
    workers_key,
)

from .engines import Engines
from .engines.device import limit_gpu_memory
from .recorder import Recorder
from .runner import Runner

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_MS = 30_000


def declare_actors(broker: RedisBroker, runner: Runner, settings: Settings) -> None:
    """Declare one actor per task type, each on its queue, running through `runner`."""
    for task_type in TaskType:

        def process(task_id: str, _task_type: TaskType = task_type) -> None:
            runner.run(task_id, _task_type)

        dramatiq.Actor(
            process,
            broker=broker,
            actor_name=actor_name(task_type),
            queue_name=QUEUE_OF[task_type].value,
            priority=0,
            # livepix counts attempts itself (a killed message keeps its retry count).
            options={"max_retries": 0, "time_limit": settings.task_time_limit_s * 1000},
        )


class WorkerProcess:
    """Runs a Dramatiq worker and a heartbeat until told to stop."""

    def __init__(self, settings: Settings, queues: Iterable[Queue], threads: int | None) -> None:
        if not settings.redis_url:
            raise ValueError("a worker needs REDIS_URL")
        self.settings = settings
        self.queues = sorted({q.value for q in queues})
        default_threads = settings.gpu_threads if "gpu" in self.queues else settings.cpu_threads
        self.threads = max(1, threads or default_threads)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        cluster = settings.cluster
        client = sync_client(settings.redis_url, cluster, socket_keepalive=True)
        self.broker = make_broker(sync_client(settings.redis_url, cluster, socket_keepalive=True), cluster)
        self.recorder = Recorder(client, settings, self.worker_id)
        self.engines = Engines(settings)
        declare_actors(self.broker, Runner(self.recorder, self.engines), settings)
        self._stop = threading.Event()

    def _beat_once(self) -> None:
        now = time.time()
        self.recorder.heartbeat(workers_key(), self.worker_id, now)
        for queue in self.queues:
            self.recorder.heartbeat(capacity_key(queue), f"{self.worker_id}|{self.threads}", now)
        # Dramatiq refreshes its own heartbeat only when it fetches, which a worker
        # whose prefetch is all taken does not do during a long task: keep it fresh
        # so that maintenance never re-queues a running task.
        self.recorder.heartbeat(heartbeats_key(self.settings.cluster), self.broker.broker_id, now * 1000)

    def _beat(self) -> None:
        while not self._stop.wait(WORKER_HEARTBEAT_S):
            try:
                self._beat_once()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

    def run(self) -> None:
        worker = dramatiq.Worker(
            self.broker,
            queues=set(self.queues),
            worker_threads=self.threads,
            worker_timeout=self.settings.worker_poll_ms,
        )
        # Prefetch beyond the thread count would hold queued tasks hostage.
        worker.queue_prefetch = self.threads
        limit_gpu_memory(self.settings)  # before any engine takes memory
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stop.set())
        try:
            self._beat_once()
        except redis.RedisError as exc:
            log.warning("first heartbeat failed: %s", exc)
        beat = threading.Thread(target=self._beat, name="livepix-heartbeat", daemon=True)
        beat.start()
        worker.start()
        log.info(
            "worker %s consuming %s with %d thread(s)",
            self.worker_id,
            ",".join(self.queues),
            self.threads,
        )
        while not self._stop.wait(1.0):
            pass
        log.info("worker %s stopping", self.worker_id)
        worker.stop(timeout=SHUTDOWN_TIMEOUT_MS)
        try:
            self.recorder.client.zrem(workers_key(), self.worker_id)
            for queue in self.queues:
                self.recorder.client.zrem(capacity_key(queue), f"{self.worker_id}|{self.threads}")
        except redis.RedisError:
            log.warning("could not deregister worker %s", self.worker_id)
        self.broker.close()
