"""Workers killed with SIGKILL mid-task: re-run elsewhere, bounded attempts, the watchdog.

The recovery times measured here are the README's reliability figures.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from tests.clients import SSEStream, assert_contiguous, gradient, png_b64, submit
from tests.conftest import Stack

RECOVERY_TARGET_S = 90


def slow_task() -> dict[str, Any]:
    return {
        "task_type": "object_removal",
        "image": png_b64(gradient(2048)),
        "parameters": {"boxes": [[64, 64, 1984, 1984]], "method": "ns"},
    }


def kill_worker_of(event: dict[str, Any]) -> float:
    """SIGKILL the worker process named in a `started` event; returns when."""
    pid = int(event["worker"].split(":")[-2])
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


def next_of(stream: SSEStream, kind: str, seen: list[dict[str, Any]]) -> dict[str, Any]:
    while (event := stream.next_event()) is not None:
        seen.append(event)
        if event["type"] == kind:
            return event
        assert event["type"] not in ("succeeded", "failed", "cancelled"), seen
    raise AssertionError(f"stream ended before {kind}: {seen}")


def test_a_task_whose_worker_is_killed_reruns_on_another_worker(new_stack: Stack) -> None:
    base = new_stack.add_api()
    new_stack.add_worker("cpu")
    new_stack.add_worker("cpu")
    task_id = submit(base, slow_task())
    stream = SSEStream(base, task_id)
    events: list[dict[str, Any]] = []
    first = next_of(stream, "started", events)
    killed_at = kill_worker_of(first)
    second = next_of(stream, "started", events)
    recovered_s = time.monotonic() - killed_at
    events += stream.rest()
    stream.close()
    print(f"\nkill -9 to re-run on another worker: {recovered_s:.1f} s")
    assert second["worker"] != first["worker"]
    assert recovered_s < RECOVERY_TARGET_S
    assert_contiguous(events)
    assert events[-1]["type"] == "succeeded"


def test_a_task_that_keeps_losing_its_worker_fails_worker_lost(new_stack: Stack) -> None:
    new_stack.env["LIVEPIX_MAX_ATTEMPTS"] = "2"
    base = new_stack.add_api()
    new_stack.add_worker("cpu")
    task_id = submit(base, slow_task())
    stream = SSEStream(base, task_id)
    events: list[dict[str, Any]] = []
    for _ in range(2):
        started = next_of(stream, "started", events)
        new_stack.add_worker("cpu")  # a replacement that will take the re-delivery
        kill_worker_of(started)
    events += stream.rest()
    stream.close()
    assert_contiguous(events)
    assert events[-1]["type"] == "failed"
    assert events[-1]["error"]["code"] == "worker_lost"
    assert [e["type"] for e in events].count("started") == 2


def test_the_watchdog_fails_a_task_whose_worker_vanished_for_good(new_stack: Stack) -> None:
    new_stack.env["LIVEPIX_WORKER_LOST_AFTER_S"] = "5"
    base = new_stack.add_api()
    new_stack.add_worker("cpu")  # the only one: nobody can take the task over
    task_id = submit(base, slow_task())
    stream = SSEStream(base, task_id)
    events: list[dict[str, Any]] = []
    killed_at = kill_worker_of(next_of(stream, "started", events))
    events += stream.rest()
    stream.close()
    ended_s = time.monotonic() - killed_at
    print(f"\nkill -9 of the only worker to worker_lost: {ended_s:.1f} s")
    assert events[-1]["type"] == "failed" and events[-1]["error"]["code"] == "worker_lost"
    assert ended_s < RECOVERY_TARGET_S
