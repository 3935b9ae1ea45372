"""`WS /ws`: many tasks over one socket; submit, subscribe, cancel, ping."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import websockets.sync.client as ws_client

from tests.clients import assert_contiguous, metric, png_b64, sse_events, submit, two_tone, ws_url
from tests.conftest import Stack


def task() -> dict[str, Any]:
    return {"task_type": "background_removal", "image": png_b64(two_tone())}


def collect(ws: ws_client.ClientConnection, until_done: set[str], timeout_s: float = 60) -> list[dict[str, Any]]:
    """Messages until every task id in `until_done` had its terminal event."""
    messages = []
    waiting = set(until_done)
    while waiting:
        message = json.loads(ws.recv(timeout=timeout_s))
        messages.append(message)
        if message.get("type") in ("succeeded", "failed", "cancelled"):
            waiting.discard(message["task_id"])
    return messages


def test_submit_over_ws_subscribes_the_socket_to_the_new_task(stack: Stack) -> None:
    with ws_client.connect(ws_url(stack.url, "/ws")) as ws:
        ws.send(json.dumps({"op": "submit", "request_id": "r1", "task": task()}))
        submitted = json.loads(ws.recv(timeout=30))
        assert submitted["op"] == "submitted" and submitted["request_id"] == "r1"
        task_id = submitted["task_id"]
        events = collect(ws, {task_id})
    assert_contiguous(events)
    assert events[-1]["type"] == "succeeded"
    assert events == sse_events(stack.url, task_id)


def test_one_socket_follows_many_tasks_each_in_order(stack: Stack) -> None:
    ids = [submit(stack.url, task()) for _ in range(4)]
    with ws_client.connect(ws_url(stack.url, "/ws")) as ws:
        for task_id in ids:
            ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))
            ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))  # twice: harmless
        messages = collect(ws, set(ids))
    for task_id in ids:
        mine = [m for m in messages if m.get("task_id") == task_id]
        assert_contiguous(mine)
        assert mine[-1]["type"] == "succeeded"


def test_subscribe_since_resumes_and_errors_name_what_they_answer(stack: Stack) -> None:
    task_id = submit(stack.url, task())
    everything = sse_events(stack.url, task_id)
    unknown = str(uuid.uuid4())
    with ws_client.connect(ws_url(stack.url, "/ws")) as ws:
        ws.send(json.dumps({"op": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"op": "pong"}
        ws.send(json.dumps({"op": "subscribe", "task_id": unknown}))
        error = json.loads(ws.recv(timeout=10))
        assert error["op"] == "error" and error["code"] == "not_found" and error["task_id"] == unknown
        ws.send("not json")
        assert json.loads(ws.recv(timeout=10))["code"] == "invalid_json"
        ws.send(json.dumps({"op": "dance"}))
        assert json.loads(ws.recv(timeout=10))["code"] == "unknown_op"
        ws.send(json.dumps({"op": "submit", "request_id": 7, "task": {"task_type": "image_generation"}}))
        invalid = json.loads(ws.recv(timeout=10))
        assert invalid["code"] == "invalid_input" and invalid["request_id"] == 7
        assert "prompt" in invalid["details"]
        ws.send(json.dumps({"op": "subscribe", "task_id": task_id, "since": 2}))
        resumed = collect(ws, {task_id})
    assert resumed == everything[2:]


def test_cancel_over_ws(new_stack: Stack) -> None:
    base = new_stack.add_api()  # no worker: the task waits
    task_id = submit(base, task())
    with ws_client.connect(ws_url(base, "/ws")) as ws:
        ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))
        assert json.loads(ws.recv(timeout=10))["type"] == "queued"
        ws.send(json.dumps({"op": "cancel", "task_id": task_id}))
        replies = [json.loads(ws.recv(timeout=10)) for _ in range(2)]
    kinds = {r.get("op") or r.get("type") for r in replies}
    assert kinds == {"cancelled"}
    reply = next(r for r in replies if r.get("op") == "cancelled")
    assert reply["cancelled"] is True
    event = next(r for r in replies if r.get("type") == "cancelled")
    assert event["seq"] == 2 and event["status"] == "REVOKED"


def test_unsubscribe_while_joining_stops_the_task_and_a_resubscribe_works(new_stack: Stack) -> None:
    base = new_stack.add_api()  # no worker: the tasks wait, each with one queued event
    ids = [submit(base, task()) for _ in range(20)]
    with ws_client.connect(ws_url(base, "/ws")) as ws:
        for task_id in ids:  # subscribe then unsubscribe at once, before the join completes
            ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))
            ws.send(json.dumps({"op": "unsubscribe", "task_id": task_id}))
        for task_id in ids[:10]:  # and subscribe again to half of them
            ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))
        ws.send(json.dumps({"op": "ping"}))
        messages = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                messages.append(json.loads(ws.recv(timeout=0.5)))
            except TimeoutError:
                pass
        assert metric(base, "livepix_watches") == 10  # the unsubscribed joins left nothing behind
    deadline = time.monotonic() + 5  # the server sees the close a moment later
    while metric(base, "livepix_watches") != 0:
        assert time.monotonic() < deadline, "watches left behind after the socket closed"
        time.sleep(0.1)
    events = [m for m in messages if "type" in m]
    again = {e["task_id"] for e in events if e["type"] == "queued"}
    assert set(ids[:10]) <= again  # every re-subscribed task got its history
    for task_id in ids[:10]:
        assert [e["seq"] for e in events if e["task_id"] == task_id][-1:] == [1]


def test_a_repeated_subscribe_never_re_sends_but_one_after_unsubscribe_honours_since(stack: Stack) -> None:
    task_id = submit(stack.url, task())
    everything = sse_events(stack.url, task_id)  # the task has ended
    with ws_client.connect(ws_url(stack.url, "/ws")) as ws:
        ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))
        assert collect(ws, {task_id}) == everything
        ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))  # again: nothing new
        ws.send(json.dumps({"op": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"op": "pong"}
        ws.send(json.dumps({"op": "unsubscribe", "task_id": task_id}))
        assert json.loads(ws.recv(timeout=10)) == {"op": "unsubscribed", "task_id": task_id}
        ws.send(json.dumps({"op": "subscribe", "task_id": task_id, "since": 0}))
        assert collect(ws, {task_id}) == everything  # as asked: from the start


def test_replies_reach_a_socket_that_asked_for_results_by_reference(stack: Stack) -> None:
    task_id = submit(stack.url, task())
    with ws_client.connect(ws_url(stack.url, "/ws?inline=0")) as ws:
        ws.send(json.dumps({"op": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"op": "pong"}
        ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))
        events = []
        while not events or events[-1]["type"] not in ("succeeded", "failed", "cancelled"):
            message = json.loads(ws.recv(timeout=60))
            if "seq" in message:
                events.append(message)
        assert events[-1]["type"] == "succeeded"
        assert "image_data" not in events[-1]["result"]
        assert events[-1]["result"]["image_url"].endswith(f"/tasks/{task_id}/result.png")
        ws.send(json.dumps({"op": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"op": "pong"}
