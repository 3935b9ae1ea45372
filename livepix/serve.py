"""`livepix serve`: the whole service on one machine, supervised.

Starts an embedded Redis (unless REDIS_URL is set), the api, and one worker process
per queue; restarts a child that dies; on Ctrl-C or SIGTERM stops the api and
workers first, then Redis (which flushes its AOF), leaving no process behind.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

from .config import Settings
from .processes import Child, RedisServer, livepix_child

log = logging.getLogger(__name__)

RESTART_DELAY_S = (0.5, 1.0, 2.0, 5.0, 10.0)
HEALTHY_AFTER_S = 30.0  # a child that ran this long has its restart backoff reset
STOP_TIMEOUT_S = 40.0


def serve(settings: Settings, api_workers: bool = True) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    redis_child: RedisServer | None = None
    redis_url = settings.redis_url
    if not redis_url:
        redis_child = RedisServer(Path(settings.data_dir) / "redis", own_session=True).start()
        redis_url = redis_child.url()
        log.info("embedded Redis on %s, data in %s", redis_url, redis_child.data_dir)

    env = {
        "REDIS_URL": redis_url,
        "LIVEPIX_DATA_DIR": settings.data_dir,
        "LIVEPIX_HOST": settings.host,
        "LIVEPIX_PORT": str(settings.port),
    }
    children: list[Child] = [livepix_child("api", ["api"], env, own_session=True)]
    if api_workers:
        children += [
            livepix_child("worker-gpu", ["worker", "--queues", "gpu"], env, own_session=True),
            livepix_child("worker-cpu", ["worker", "--queues", "cpu"], env, own_session=True),
        ]
    for child in children:
        child.start()
    print(
        f"livepix serving on http://{settings.host}:{settings.port}/ "
        f"(Redis {'embedded' if redis_child else 'external'}); Ctrl-C stops it",
        flush=True,
    )

    try:
        while not stop.wait(0.5):
            if redis_child is not None and redis_child.exited() is not None:
                log.error("embedded Redis exited with code %s; stopping", redis_child.exited())
                break
            for child in children:
                code = child.exited()
                if code is None:
                    continue
                if time.monotonic() - child.started_at > HEALTHY_AFTER_S:
                    child.restarts = 0
                delay = RESTART_DELAY_S[min(child.restarts, len(RESTART_DELAY_S) - 1)]
                log.warning("%s exited with code %s; restarting in %.1f s", child.name, code, delay)
                if stop.wait(delay):
                    break
                child.restarts += 1
                child.start()
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(STOP_TIMEOUT_S)
        if redis_child is not None:
            redis_child.terminate()
            redis_child.wait(STOP_TIMEOUT_S)
        print("livepix stopped", flush=True)
    return 0
