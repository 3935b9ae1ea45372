"""The api's upkeep repairs what dying processes leave and enforces deadlines: against
real api and worker processes."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import redis

from livepix import store
from livepix.storage import run_batch
from livepix.wire import TaskType, actor_name, dumps
from tests.clients import API, SSEStream, metric, png_b64, slow_removal, submit, two_tone
from tests.conftest import Stack

TASK = {"task_type": "background_removal", "image": png_b64(two_tone())}


def submit_that_dies_before_it_enqueues(redis_url: str) -> str:
    """Run the real submit operation, but lose its enqueue: as if the api process died
    between storing the task and queueing its message."""
    task_id = str(uuid.uuid4())
    op = store.submit(store.Options(ttl_s=600), task_id, "background_removal", "cpu", "", dumps(TASK), 1000,
                      actor_name(TaskType.BACKGROUND_REMOVAL))
    client = redis.Redis.from_url(redis_url)
    try:
        batch = next(op)
        while True:
            kept = [c for c in batch if not (isinstance(c, store.Script) and c.name == "enqueue")]
            answers = iter(run_batch(client, kept))
            batch = op.send([next(answers) if c in kept else 0 for c in batch])
    except StopIteration:
        pass
    finally:
        client.close()
    return task_id


def terminal(stream: SSEStream) -> dict[str, Any]:
    events = stream.rest()
    assert events and events[-1]["type"] in ("succeeded", "failed", "cancelled"), events
    return events[-1]


def test_a_task_whose_submit_died_before_its_enqueue_is_enqueued_by_the_upkeep(new_stack: Stack) -> None:
    base = new_stack.add_api()
    task_id = submit_that_dies_before_it_enqueues(new_stack.redis_url)
    new_stack.add_worker("cpu")
    stream = SSEStream(base, task_id)
    started = time.monotonic()
    try:
        assert terminal(stream)["type"] == "succeeded"
    finally:
        stream.close()
    print(f"\nsubmit died before its enqueue; done {time.monotonic() - started:.1f} s later")
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
