"""Input an attacker would send, found by trying the service that way (issue 16): each
once answered 500, hung a stream or closed a socket it should not have."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import websockets.sync.client as ws_client
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from actors.recorder import Recorder
from livepix.config import Settings
from livepix.wire import EventType, TaskResult
from tests.chaos.test_bad_input import assert_json_error
from tests.clients import API, png, png_b64, submit, two_tone, ws_url
from tests.conftest import RedisServer, Stack, fresh_stack

TASK = {"task_type": "background_removal", "image": png_b64(two_tone())}


@pytest.fixture(scope="module")
def idle(redis_server: RedisServer, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An api with no worker: tasks wait, and the test writes their events itself."""
    stack = fresh_stack(redis_server, data_dir, tmp_path_factory.mktemp("hostile-logs"))
    try:
        stack.add_api()
        yield stack
    finally:
        stack.stop()


def run_to_the_end(stack: Stack, task_id: str, steps: int) -> int:
    """Play a worker through the real recorder: started, `steps` progress events,
    succeeded. Returns the task's last seq."""
    recorder = Recorder(redis.Redis.from_url(stack.redis_url), Settings(redis_url=stack.redis_url), "hostile-test")
    try:
        assert recorder.start(task_id, "cpu") > 0
        for step in range(1, steps + 1):
            recorder.progress(task_id, step * 10, f"step {step}", step=step, total=steps)
        return recorder.finish(task_id, "cpu", EventType.SUCCEEDED, "Done",
                               result=TaskResult(status="SUCCESS", metadata={}), images=[png(two_tone(8, 8))])
    finally:
        recorder.client.close()


@pytest.mark.parametrize("origin", ["http://[", "http://[::1", "http://[::1:80/"])
@pytest.mark.parametrize("path", ["/ws", "/tasks/{id}/ws", "/no-such-socket"])
def test_a_malformed_origin_is_403_forbidden_origin_not_500(idle: Stack, origin: str, path: str) -> None:
    task_id = submit(idle.url, TASK)
    with pytest.raises(InvalidStatus) as refused:
        ws_client.connect(ws_url(idle.url, path.format(id=task_id)), origin=Origin(origin), open_timeout=10)
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body or b"")["code"] == "forbidden_origin"


def test_a_websocket_to_a_static_path_is_the_json_404_of_any_unknown_socket(idle: Stack) -> None:
    for path in ("/static/app.js", "/static/", "/static/nothing-here"):
        url = "ws" + idle.url[len("http"):] + path
        with pytest.raises(InvalidStatus) as refused:
            ws_client.connect(url, open_timeout=10)
        assert refused.value.response.status_code == 404, path
        assert json.loads(refused.value.response.body or b"")["code"] == "not_found"


def test_a_resume_point_past_the_log_is_refused_on_every_stream(idle: Stack) -> None:
    """A running task's stream once stayed open forever for `since` past its last seq:
    no event could ever pass the resume point, not even the terminal one."""
    task_id = submit(idle.url, TASK)  # waiting, 1 event
    events = f"{idle.url}{API}/tasks/{task_id}/events"
    error = assert_json_error(httpx.get(events, headers={"Last-Event-ID": "100000"}, timeout=10), 400, "invalid_input")
    assert "since" in error["details"]
    assert_json_error(httpx.get(events + "?since=2", timeout=10), 400, "invalid_input")
    with pytest.raises(InvalidStatus) as refused:
        ws_client.connect(ws_url(idle.url, f"/tasks/{task_id}/ws?since=100000"), open_timeout=10)
    assert refused.value.response.status_code == 400
    assert json.loads(refused.value.response.body or b"")["code"] == "invalid_input"
    with ws_client.connect(ws_url(idle.url, "/ws"), open_timeout=10) as ws:
        ws.send(json.dumps({"op": "subscribe", "task_id": task_id, "since": 100000}))
        reply = json.loads(ws.recv(timeout=10))
        assert reply["op"] == "error" and reply["code"] == "invalid_input" and reply["task_id"] == task_id
    # The last seq itself is a fine resume point: the stream ends with the task.
    with httpx.stream("GET", events + "?since=1", timeout=30) as response:
        assert response.status_code == 200
        run_to_the_end(idle, task_id, steps=2)
        body = response.read().decode()
    assert [json.loads(line[6:])["seq"] for line in body.splitlines() if line.startswith("data: ")] == [2, 3, 4, 5]


def test_history_of_many_tasks_never_closes_a_socket_as_too_slow(idle: Stack) -> None:
    """A reloading page re-subscribes to all its tasks: their history (560 events here,
    over twice the 256-frame outbox) must arrive whole, with replies to ops sent while
    it is queued, and the socket must not be closed 4008."""
    ids = [submit(idle.url, TASK) for _ in range(80)]
    # 7 events each, or one more where the upkeep re-sent `queued` as the queue moved
    last = {task_id: run_to_the_end(idle, task_id, steps=4) for task_id in ids}
    assert sum(last.values()) >= 80 * 7
    with ws_client.connect(ws_url(idle.url, "/ws"), open_timeout=10, max_size=None) as ws:
        for task_id in ids:
            ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))
        ws.send(json.dumps({"op": "ping"}))
        ws.send(json.dumps({"op": "subscribe", "task_id": "not-a-task"}))
        ws.send(json.dumps({"op": "ping"}))
        seen: dict[str, list[int]] = {task_id: [] for task_id in ids}
        replies = []
        deadline = time.monotonic() + 60
        while sum(map(len, seen.values())) < sum(last.values()) or len(replies) < 3:
            assert time.monotonic() < deadline, (sum(map(len, seen.values())), replies)
            message = json.loads(ws.recv(timeout=30))  # a close (4008) raises here
            if "op" in message:
                replies.append(message["op"])
            else:
                seen[message["task_id"]].append(message["seq"])
        assert sorted(replies) == ["error", "pong", "pong"]
        assert all(seqs == list(range(1, last[task_id] + 1)) for task_id, seqs in seen.items())
        ws.send(json.dumps({"op": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"op": "pong"}


def test_an_unknown_uuid_is_404_not_a_stream(idle: Stack) -> None:
    unknown = str(uuid.uuid4())
    assert_json_error(httpx.get(f"{idle.url}{API}/tasks/{unknown}/events?since=5", timeout=10), 404, "not_found")
