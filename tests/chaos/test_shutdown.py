"""Graceful shutdown of the api and of a worker; Redis down at submit time."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import httpx
import websockets.sync.client as ws_client
from websockets.exceptions import ConnectionClosed

from tests.clients import (
    API,
    SSEStream,
    assert_contiguous,
    png_b64,
    slow_removal,
    sse_events,
    submit,
    two_tone,
    ws_url,
)
from tests.conftest import Child, RedisServer, Stack


def api_process(stack: Stack, url: str) -> Child:
    port = url.rsplit(":", 1)[1]
    return next(p for p in stack.processes if p.name.startswith("api") and f"--port {port}" in " ".join(p.argv))


def test_api_sigterm_closes_websockets_1012_and_ends_sse_and_clients_resume_elsewhere(new_stack: Stack) -> None:
    first = new_stack.add_api()
    second = new_stack.add_api()
    task_id = submit(first, {"task_type": "background_removal", "image": png_b64(two_tone())})  # no worker yet
    codes: dict[str, int | None] = {}

    def hold(path: str, name: str) -> None:
        with ws_client.connect(ws_url(first, path)) as ws:
            if path == "/ws":
                ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))
            try:
                while True:
                    ws.recv(timeout=30)
            except ConnectionClosed as exc:
                codes[name] = exc.rcvd.code if exc.rcvd else None

    holders = [
        threading.Thread(target=hold, args=(f"/tasks/{task_id}/ws", "task")),
        threading.Thread(target=hold, args=("/ws", "mux")),
    ]
    for t in holders:
        t.start()
    sse = SSEStream(first, task_id)
    seen = [sse.next_event()]
    time.sleep(0.5)

    stopping = time.monotonic()
    api_process(new_stack, first).proc.send_signal(signal.SIGTERM)
    seen += sse.rest()  # the stream ends with the api
    sse.close()
    for t in holders:
        t.join(15)
    assert time.monotonic() - stopping < 10
    assert codes == {"task": 1012, "mux": 1012}

    new_stack.add_worker("cpu")
    rest = sse_events(second, task_id, headers={"Last-Event-ID": str(seen[-1]["seq"])})
    assert_contiguous(seen + rest)
    assert rest[-1]["type"] == "succeeded"


def test_worker_sigterm_lets_the_running_task_finish(new_stack: Stack) -> None:
    base = new_stack.add_api()
    worker = new_stack.add_worker("cpu")
    task_id = submit(base, slow_removal(1024))
    stream = SSEStream(base, task_id)
    events: list[dict[str, Any]] = []
    while (event := stream.next_event()) is not None:
        events.append(event)
        if event["type"] == "started":
            break
    worker.proc.send_signal(signal.SIGTERM)
    events += stream.rest()
    stream.close()
    assert worker.proc.wait(60) == 0
    assert_contiguous(events)
    assert events[-1]["type"] == "succeeded"
    assert [e["type"] for e in events].count("started") == 1


def test_submits_while_redis_is_down_get_503_with_retry_after(tmp_path: Any, data_dir: Any) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    stack = Stack(server.url(0), data_dir, tmp_path)
    try:
        base = stack.add_api()
        server.stop()
        started = time.monotonic()
        response = httpx.post(
            base + API + "/tasks/submit/",
            json={"task_type": "background_removal", "image": png_b64(two_tone())},
            timeout=30,
        )
        assert time.monotonic() - started < 10  # no hang
        assert response.status_code == 503
        assert response.json()["code"] == "unavailable"
        assert int(response.headers["Retry-After"]) > 0
        server.start()
        deadline = time.monotonic() + 10
        while httpx.get(base + API + "/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the api did not become ready again"
            time.sleep(0.1)
        reconnected_s = time.monotonic() - deadline + 10
        print(f"\nRedis back to api ready: {reconnected_s:.1f} s")
    finally:
        stack.stop()
        server.stop()


def test_positions_keep_moving_when_an_api_process_stops(new_stack: Stack) -> None:
    first = new_stack.add_api()
    second = new_stack.add_api()
    body = {"task_type": "background_removal", "image": png_b64(two_tone())}
    ids = [submit(second, body) for _ in range(3)]
    api_process(new_stack, first).stop()  # it may have held the upkeep lease
    httpx.post(f"{second}{API}/tasks/{ids[0]}/cancel/")
    stream = SSEStream(second, ids[2])
    deadline = time.monotonic() + 15
    positions = []
    while (event := stream.next_event()) is not None:
        positions.append(event.get("position"))
        if event.get("position") == 2:
            break
        assert time.monotonic() < deadline, positions
    stream.close()
    assert positions[0] == 3 and positions[-1] == 2
