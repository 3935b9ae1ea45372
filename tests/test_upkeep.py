"""The api's upkeep repairs what dying processes leave and enforces deadlines: against
real api and worker processes."""

from __future__ import annotations

import time
from typing import Any

import httpx
import redis

from livepix.broker import queue_list_key, queue_messages_key
from tests.clients import API, SSEStream, metric, png_b64, slow_removal, submit, two_tone
from tests.conftest import Stack

TASK = {"task_type": "background_removal", "image": png_b64(two_tone())}


def lose_its_message(redis_url: str, task_id: str) -> None:
    """Take the task's Dramatiq message out of its queue, as a Redis that lost a write
    (a failover, a restart without AOF) would. On one Redis a submit stores the task
    and its message in one script; on a cluster, where a submit can also die between
    the two, tests/cluster checks the same repair."""
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.hdel(queue_messages_key("cpu", False), task_id) == 1
        assert client.lrem(queue_list_key("cpu", False), 0, task_id) == 1
    finally:
        client.close()


def terminal(stream: SSEStream) -> dict[str, Any]:
    events = stream.rest()
    assert events and events[-1]["type"] in ("succeeded", "failed", "cancelled"), events
    return events[-1]


def test_a_waiting_task_whose_message_was_lost_is_enqueued_by_the_upkeep(new_stack: Stack) -> None:
    base = new_stack.add_api()  # no worker yet: the task waits
    task_id = submit(base, TASK)
    lose_its_message(new_stack.redis_url, task_id)
    new_stack.add_worker("cpu")
    stream = SSEStream(base, task_id)
    started = time.monotonic()
    try:
        assert terminal(stream)["type"] == "succeeded"
    finally:
        stream.close()
    print(f"\nits message lost; done {time.monotonic() - started:.1f} s later")
    assert metric(base, "livepix_tasks_reenqueued_total") == 1


def test_a_waiting_task_past_its_deadline_fails_timeout(new_stack: Stack) -> None:
    base = new_stack.add_api()  # no worker: the task waits
    task_id = submit(base, {**TASK, "deadline_s": 1})
    stream = SSEStream(base, task_id)
    try:
        last = terminal(stream)
    finally:
        stream.close()
    assert last["type"] == "failed" and last["error"]["code"] == "timeout"
    body = httpx.get(f"{base}{API}/tasks/{task_id}/result/").json()
    assert body["status"] == "FAILURE" and body["error"]["code"] == "timeout"


def test_a_running_task_past_its_deadline_is_interrupted_and_fails_timeout(new_stack: Stack) -> None:
    base = new_stack.add_api()
    new_stack.add_worker("cpu")
    task_id = submit(base, {**slow_removal(), "deadline_s": 1})
    stream = SSEStream(base, task_id)
    started = time.monotonic()
    try:
        last = terminal(stream)
    finally:
        stream.close()
    took = time.monotonic() - started
    assert last["type"] == "failed" and last["error"]["code"] == "timeout", last
    assert took < 20, took


def test_a_bad_deadline_is_invalid_input(new_stack: Stack) -> None:
    base = new_stack.add_api()
    for value in (0, -1, "soon", True, 1e9):
        response = httpx.post(f"{base}{API}/tasks/submit/", json={**TASK, "deadline_s": value})
        assert response.status_code == 400, value
        assert "deadline_s" in response.json()["details"]
