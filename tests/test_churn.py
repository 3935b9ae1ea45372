"""Watchers that come and go fast leave nothing behind, and a burst of /ws subscribe and
unsubscribe ops ends in the state its last op asks for: against a real api, with real
clients that drop their connections at the worst moments."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from websockets.asyncio.client import connect

from actors.recorder import Recorder
from livepix.config import Settings
from tests.clients import API, metric, png_b64, submit, two_tone, ws_url
from tests.conftest import RedisServer, Stack, fresh_stack

TASKS = 40
JOINS = 300
TASK = {"task_type": "background_removal", "image": png_b64(two_tone())}


@pytest.fixture
def api(redis_server: RedisServer, data_dir: Path, tmp_path: Path) -> Iterator[Stack]:
    """A fresh api (no worker) per test: what one check leaked must not hide in the next."""
    stack = fresh_stack(redis_server, data_dir, tmp_path)
    try:
        stack.add_api()
        yield stack
    finally:
        stack.stop()


def running_tasks(stack: Stack, count: int) -> list[str]:
    """Tasks submitted through the api, then started by the real recorder and left running."""
    recorder = Recorder(redis.Redis.from_url(stack.redis_url), Settings(redis_url=stack.redis_url), "churn-test")
    ids = [submit(stack.url, TASK) for _ in range(count)]
    for task_id in ids:
        assert recorder.start(task_id, "cpu") > 0
    recorder.client.close()
    return ids


def publish_progress(stack: Stack, tasks: list[str], percent: int) -> None:
    recorder = Recorder(redis.Redis.from_url(stack.redis_url), Settings(redis_url=stack.redis_url), "churn-test")
    for task_id in tasks:
        recorder.progress(task_id, percent, "churning")
    recorder.client.close()


async def _join_and_leave(base: str, kind: str, task_id: str) -> bool:
    """One join abandoned right after the response head (or the subscribe op)."""
    await asyncio.sleep(random.random() * 0.05)
    try:
        if kind == "sse":
            async with (
                httpx.AsyncClient(timeout=10) as client,
                client.stream("GET", f"{base}{API}/tasks/{task_id}/events") as response,
            ):
                return response.status_code == 200
        path = f"/tasks/{task_id}/ws" if kind == "ws" else "/ws"
        ws = await connect(ws_url(base, path), open_timeout=10)
        if kind == "mux":
            await ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))
        await asyncio.sleep(random.random() * 0.01)
        ws.transport.abort()  # gone without a close handshake
        return True
    except (OSError, TimeoutError, httpx.HTTPError):
        return False


@pytest.mark.parametrize("kind", ["sse", "ws", "mux"])
def test_joins_abandoned_at_once_leave_no_watch_behind(api: Stack, kind: str) -> None:
    tasks = running_tasks(api, TASKS)

    async def main() -> int:
        limit = asyncio.Semaphore(20)

        async def one(task_id: str) -> bool:
            async with limit:
                return await _join_and_leave(api.url, kind, task_id)

        return sum(await asyncio.gather(*(one(random.choice(tasks)) for _ in range(JOINS))))

    made = asyncio.run(main())
    assert made >= JOINS * 0.9
    for _ in range(50):  # the api sees the last disconnects a moment later
        if metric(api.url, "livepix_watches") == 0 and metric(api.url, "livepix_watched_tasks") == 0:
            break
        time.sleep(0.1)
    assert metric(api.url, "livepix_watches") == 0
    assert metric(api.url, "livepix_watched_tasks") == 0


OP_BURSTS = [
    ["subscribe", "unsubscribe"],
    ["subscribe", "unsubscribe", "subscribe"],
    ["subscribe", "unsubscribe", "subscribe", "unsubscribe"],
    ["subscribe", "unsubscribe", "subscribe", "unsubscribe", "subscribe"],
]


@pytest.mark.parametrize("ops", OP_BURSTS, ids=lambda ops: ",".join(op[:-6] or "sub" for op in ops))
def test_a_burst_of_subscribe_and_unsubscribe_ends_as_its_last_op_says(api: Stack, ops: list[str]) -> None:
    tasks = running_tasks(api, TASKS)
    expected = set(tasks) if ops[-1] == "subscribe" else set()

    async def main() -> set[str]:
        delivering: set[str] = set()
        async with connect(ws_url(api.url, "/ws"), open_timeout=10) as ws:
            for task_id in tasks:
                for op in ops:
                    await ws.send(json.dumps({"op": op, "task_id": task_id}))
            await asyncio.sleep(1.0)  # every op answered, every join done
            await asyncio.to_thread(publish_progress, api, tasks, 50)
            loop = asyncio.get_running_loop()
            until = loop.time() + 2.0
            while (left := until - loop.time()) > 0:
                try:
                    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), left))
                except TimeoutError:
                    break
                if message.get("type") == "progress":
                    delivering.add(message["task_id"])
        return delivering

    assert asyncio.run(main()) == expected
