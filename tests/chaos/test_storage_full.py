"""Redis refusing writes (its maxmemory reached, noeviction): a submit gets a clear
507 `storage_full`, never a 500; a task under way still ends with its terminal event;
once memory is freed the service works again. Redis >= 7 (a script may write despite
a full Redis only there)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from livepix.processes import RedisServer, redis_server_at_least
from tests.clients import API, SSEStream, png_b64, slow_removal, submit, two_tone
from tests.conftest import Stack


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[RedisServer]:
    binary = redis_server_at_least((7, 0))
    if binary is None:
        pytest.skip("no redis-server 7 or newer (apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis", binary=binary, log_path=tmp_path / "redis.log").start()
    try:
        yield server
    finally:
        server.stop()


def fill(client: redis.Redis) -> None:
    """Bring Redis past its maxmemory: from now on it refuses every write that needs
    memory (noeviction), as a Redis full of results would."""
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(used // 2))
    try:
        client.set("livepix-test:probe", "x")
    except redis.exceptions.OutOfMemoryError:
        return
    raise AssertionError("Redis still takes writes")


def test_a_full_redis_refuses_submits_with_507_and_ends_running_tasks(
    small_redis: RedisServer, data_dir: Path, tmp_path: Path
) -> None:
    stack = Stack(small_redis.url(0), data_dir, tmp_path)
    client = small_redis.client()
    try:
        base = stack.add_api()
        stack.add_worker("cpu")
        task_id = submit(base, slow_removal())
        stream = SSEStream(base, task_id)
        assert stream.next_event()["type"] == "queued"  # type: ignore[index]
        while (event := stream.next_event()) is not None and event["type"] != "progress":
            pass
        fill(client)
        refused = httpx.post(f"{base}{API}/tasks/submit/",
                             json={"task_type": "background_removal", "image": png_b64(two_tone())}, timeout=30)
        assert refused.status_code == 507, refused.text
        assert refused.json()["code"] == "storage_full" and int(refused.headers["Retry-After"]) > 0
        events = stream.rest()
        stream.close()
        assert events, "the running task's stream ended without its terminal event"
        last = events[-1]
        assert last["type"] == "failed" and last["error"]["code"] == "storage_full", last
        assert httpx.get(f"{base}{API}/tasks/{task_id}/status/").json()["status"] == "FAILURE"

        client.config_set("maxmemory", "0")  # room again: the service works
        deadline = time.monotonic() + 30
        while True:
            again = httpx.post(f"{base}{API}/tasks/submit/",
                               json={"task_type": "background_removal", "image": png_b64(two_tone())}, timeout=30)
            if again.status_code == 202 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert again.status_code == 202, again.text
        after = SSEStream(base, again.json()["task_id"])
        try:
            assert after.rest()[-1]["type"] == "succeeded"
        finally:
            after.close()
        assert "Traceback" not in "".join(p.tail(400) for p in stack.processes if p.name.startswith("api"))
    finally:
        client.close()
        stack.stop()
