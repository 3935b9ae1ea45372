"""Cancel: before a task starts, while it runs, after it ended."""

from __future__ import annotations

import httpx

from tests.clients import (
    API,
    SSEStream,
    assert_contiguous,
    png_b64,
    slow_removal,
    sse_events,
    submit,
    two_tone,
)
from tests.conftest import Stack


def test_cancel_before_start_ends_the_task_at_once_and_it_never_runs(new_stack: Stack) -> None:
    base = new_stack.add_api()  # no worker yet: the task waits in the queue
    task_id = submit(base, {"task_type": "background_removal", "image": png_b64(two_tone())})
    answer = httpx.post(f"{base}{API}/tasks/{task_id}/cancel/").json()
    assert answer == {"task_id": task_id, "status": "REVOKED", "cancelled": True}

    events = sse_events(base, task_id)
    assert [e["type"] for e in events] == ["queued", "cancelled"]
    assert events[-1]["status"] == "REVOKED"

    # A worker that arrives later takes the message and skips it; the next task runs.
    new_stack.add_worker("cpu")
    after = submit(base, {"task_type": "background_removal", "image": png_b64(two_tone())})
    assert sse_events(base, after)[-1]["type"] == "succeeded"
    assert [e["type"] for e in sse_events(base, task_id)] == ["queued", "cancelled"]
    status = httpx.get(f"{base}{API}/tasks/{task_id}/status/").json()
    assert status["status"] == "REVOKED" and status["result_available"] is False


def test_cancel_while_running_stops_at_the_next_progress_point(stack: Stack) -> None:
    task_id = submit(stack.url, slow_removal())
    stream = SSEStream(stack.url, task_id)
    seen = []
    while (event := stream.next_event()) is not None:
        seen.append(event)
        if event["type"] == "progress" and event["progress"] >= 30:
            break  # inpainting under way
    answer = httpx.post(f"{stack.url}{API}/tasks/{task_id}/cancel/").json()
    assert answer["cancelled"] is True and answer["status"] == "PROCESSING"
    seen += stream.rest()
    stream.close()

    assert_contiguous(seen)
    assert seen[-1]["type"] == "cancelled" and seen[-1]["status"] == "REVOKED"
    assert "succeeded" not in [e["type"] for e in seen]
    result = httpx.get(f"{stack.url}{API}/tasks/{task_id}/result/").json()
    assert result["status"] == "REVOKED" and result["error"]["code"] == "cancelled"


def test_cancel_after_the_end_says_false(stack: Stack) -> None:
    task_id = submit(stack.url, {"task_type": "background_removal", "image": png_b64(two_tone())})
    sse_events(stack.url, task_id)
    answer = httpx.post(f"{stack.url}{API}/tasks/{task_id}/cancel").json()
    assert answer == {"task_id": task_id, "status": "SUCCESS", "cancelled": False}
