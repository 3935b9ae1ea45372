"""The store's operations against a real Redis: one terminal event, attempts, positions,
the owner's cap, and what a finished task leaves behind."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from livepix import store
from livepix.broker import queue_list_key, queue_messages_key
from livepix.storage import run, run_batch
from livepix.wire import (
    EventType,
    TaskError,
    TaskResult,
    channel,
    deadlines_key,
    input_key,
    log_key,
    owner_queue_key,
    pending_key,
    result_key,
    running_key,
    runtime_key,
    state_key,
)
from tests.conftest import DATABASES, RedisServer

OPTS = store.Options(ttl_s=60)
ACTOR = "process_background_removal"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_server.url(DATABASES - 1))
    c.flushdb()
    yield c
    c.close()


def new_task(client: redis.Redis, queue: str = "cpu", owner: str = "", cap: int = 100,
             deadline: float | None = None) -> str:
    task_id = str(uuid.uuid4())
    position = run(client, store.submit(OPTS, task_id, "background_removal", queue, owner, '{"x": 1}', cap, ACTOR,
                                        deadline))
    assert position >= 1
    return task_id


def events(client: redis.Redis, task_id: str) -> list[dict[str, Any]]:
    return [json.loads(e) for e in client.lrange(log_key(task_id), 0, -1)]


def start(client: redis.Redis, task_id: str, worker: str = "w", attempts: int = 3, queue: str = "cpu") -> int:
    return run(client, store.start(OPTS, task_id, queue, worker, attempts)).seq


def succeed(client: redis.Redis, task_id: str, images: list[bytes] | None = None) -> int:
    return run(client, store.finish(OPTS, task_id, "cpu", EventType.SUCCEEDED, "done",
                                    result=TaskResult(status="SUCCESS", metadata={"m": 1}),
                                    images=images or [b"\x89PNG-one"]))


def test_a_task_ends_with_exactly_one_terminal_event(client: redis.Redis) -> None:
    task_id = new_task(client)
    assert start(client, task_id) == 2
    assert succeed(client, task_id) == 3
    assert succeed(client, task_id) == 0
    failed = store.finish(OPTS, task_id, "cpu", EventType.FAILED, "x", error=TaskError(code="engine_error", message="x"))
    assert run(client, failed) == 0
    assert run(client, store.progress(OPTS, task_id, 50, "late")) == (0, "")
    assert [e["type"] for e in events(client, task_id)] == ["queued", "started", "succeeded"]
    assert client.ttl(state_key(task_id)) > 0 and client.ttl(log_key(task_id)) > 0


def test_submit_stores_the_task_then_queues_its_message_once(client: redis.Redis) -> None:
    task_id = new_task(client, owner="alice")
    assert client.lrange(queue_list_key("cpu", False), 0, -1) == [task_id.encode()]
    message = json.loads(client.hget(queue_messages_key("cpu", False), task_id) or b"{}")
    assert message["actor_name"] == ACTOR and message["args"] == [task_id]
    assert client.zscore(pending_key("cpu"), task_id) is not None
    assert client.zscore(owner_queue_key("alice"), task_id) is not None
    # the upkeep's enqueue of a task whose message is there changes nothing
    assert run_batch(client, [store.enqueue(OPTS, task_id, "cpu", ACTOR)]) == [0]
    assert client.llen(queue_list_key("cpu", False)) == 1


def test_a_finished_task_keeps_one_copy_of_its_result_and_nothing_else(client: redis.Redis) -> None:
    task_id = new_task(client, deadline=9e9)
    start(client, task_id)
    for step in range(3):
        run(client, store.progress(OPTS, task_id, 10 * step, "step", preview="QUJD" * 100))
    pngs = [b"\x89PNG first", b"\x89PNG second"]
    succeed(client, task_id, pngs)
    assert client.lrange(result_key(task_id), 0, -1) == pngs  # raw bytes, once
    assert not client.exists(input_key(task_id))
    assert client.hget(state_key(task_id), "preview") is None
    log = client.lrange(log_key(task_id), 0, -1)
    assert not any(b"preview" in e or b"image_data" in e for e in log)
    assert json.loads(log[-1])["result"] == {"status": "SUCCESS", "metadata": {"m": 1}}
    for key in (pending_key("cpu"), running_key(), deadlines_key()):
        assert client.zscore(key, task_id) is None, key
    assert client.ttl(result_key(task_id)) > 0


def test_previews_are_published_but_the_log_keeps_only_the_latest(client: redis.Redis) -> None:
    task_id = new_task(client)
    start(client, task_id)
    pubsub = client.pubsub()
    pubsub.subscribe(channel(task_id))
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    seqs = [run(client, store.progress(OPTS, task_id, 10, "s", preview=f"P{i}"))[0] for i in range(3)]
    run(client, store.progress(OPTS, task_id, 40, "no preview"))
    published = [json.loads(pubsub.get_message(timeout=5)["data"]) for _ in range(4)]  # type: ignore[index]
    pubsub.close()
    assert [e.get("preview") for e in published] == ["P0", "P1", "P2", None]
    assert not any("preview" in e for e in events(client, task_id))
    assert client.hmget(state_key(task_id), "preview", "preview_seq") == [b"P2", str(seqs[-1]).encode()]


def test_a_task_restarted_past_its_attempts_fails_worker_lost_and_drops_its_input(client: redis.Redis) -> None:
    task_id = new_task(client)
    for _ in range(2):
        assert start(client, task_id, attempts=2) > 0
    assert start(client, task_id, attempts=2) == -2
    last = events(client, task_id)[-1]
    assert last["type"] == "failed" and last["error"]["code"] == "worker_lost"
    assert not client.exists(input_key(task_id))
    assert client.zscore(running_key(), task_id) is None


def test_cancel_of_a_running_task_is_seen_at_its_next_progress(client: redis.Redis) -> None:
    task_id = new_task(client)
    start(client, task_id)
    assert run(client, store.progress(OPTS, task_id, 10, "a")) == (3, "")
    assert run(client, store.cancel(OPTS, task_id, "cpu")) == (2, "PROCESSING")
    assert run(client, store.progress(OPTS, task_id, 20, "b")) == (4, "cancel")


def test_a_waiting_task_cancelled_leaves_its_queue_and_its_owner_s_cap(client: redis.Redis) -> None:
    task_id = new_task(client, owner="bob")
    assert run(client, store.cancel(OPTS, task_id, "cpu")) == (1, "REVOKED")
    assert client.zscore(pending_key("cpu"), task_id) is None
    assert client.zscore(owner_queue_key("bob"), task_id) is None
    assert not client.exists(input_key(task_id))
    assert [e["type"] for e in events(client, task_id)] == ["queued", "cancelled"]


def test_queued_is_resent_with_the_new_position_only_while_the_task_waits(client: redis.Redis) -> None:
    task_id = new_task(client, "gpu")
    assert events(client, task_id)[0]["position"] == 1
    assert run_batch(client, [store.requeued(OPTS, task_id, 1, 30.0)]) == [2]
    last = events(client, task_id)[-1]
    assert last["type"] == "queued" and last["position"] == 1 and last["eta_s"] == 30.0
    assert last["message"] == "Queued at position 1"
    start(client, task_id, queue="gpu")
    assert run_batch(client, [store.requeued(OPTS, task_id, 1, 10.0)]) == [0]  # running: not queued


def test_positions_follow_submit_order(client: redis.Redis) -> None:
    ids = [new_task(client, "gpu") for _ in range(3)]
    assert [events(client, t)[0]["position"] for t in ids] == [1, 2, 3]
    # the one-script submit put the number where wire.py left its mark
    assert [events(client, t)[0]["message"] for t in ids] == [f"Queued at position {n}" for n in (1, 2, 3)]
    assert client.hget(state_key(ids[2]), "message") == b"Queued at position 3"
    start(client, ids[0], queue="gpu")
    assert new_task(client, "gpu") and client.zrank(pending_key("gpu"), ids[2]) == 1


def test_a_success_teaches_the_run_time_of_its_type(client: redis.Redis) -> None:
    task_id = new_task(client)
    start(client, task_id)
    succeed(client, task_id)
    assert float(client.hget(runtime_key(), "background_removal") or -1) >= 0


def test_an_owner_may_have_only_its_cap_of_waiting_tasks(client: redis.Redis) -> None:
    first = [new_task(client, owner="alice", cap=2) for _ in range(2)]
    refused = store.submit(OPTS, str(uuid.uuid4()), "background_removal", "cpu", "alice", "{}", 2, ACTOR)
    with pytest.raises(store.OwnerCapError):
        run(client, refused)
    assert client.zcard(pending_key("cpu")) == 2  # the refused one left no trace in the queue
    assert new_task(client, owner="bob", cap=2)  # other owners are not affected
    start(client, first[0])  # one leaves the queue
    assert new_task(client, owner="alice", cap=2)
    run(client, store.cancel(OPTS, first[1], "cpu"))
    assert new_task(client, owner="alice", cap=2)


@pytest.mark.parametrize(
    ("position", "eta", "old_position", "old_eta", "moved"),
    [
        (1, None, None, None, True), (1, None, "1", None, False), (1, 30.0, "1", None, True),
        (1, 30.4, "1", "30.0", False), (1, 31.0, "1", "30.0", False), (1, 27.0, "1", "30.0", True), (2, 27.0, "1", "27.0", True),
        (2, 4.5, "2", "5.0", False), (2, 4.0, "2", "5.0", True), (1, 91.0, "1", "100.0", False),
        (1, 89.0, "1", "100.0", True),
    ],
)
def test_queued_moves_on_a_new_position_or_an_eta_off_by_a_second_and_10_percent(
    position: int, eta: float | None, old_position: str | None, old_eta: str | None, moved: bool
) -> None:
    assert store.queued_moved(position, eta, old_position, old_eta) is moved
