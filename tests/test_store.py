"""The store scripts against a real Redis: one terminal event, attempts, positions."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import redis

from livepix import store
from livepix.wire import EventType, TaskError, log_key, runtime_key, state_key
from tests.conftest import RedisServer

TTL = 60


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_server.url(63))
    c.flushdb()
    yield c
    c.close()


def run(client: redis.Redis, call: store.ScriptCall) -> object:
    return client.register_script(store.SCRIPTS[call.script])(keys=call.keys, args=call.args)


def new_task(client: redis.Redis, queue: str = "cpu", owner: str = "", cap: int = 100) -> str:
    task_id = str(uuid.uuid4())
    call = store.submit(task_id, "background_removal", queue, owner, "{}", TTL, cap, "process_background_removal")
    assert run(client, call) >= 1
    return task_id


def events(client: redis.Redis, task_id: str) -> list[dict[str, object]]:
    return [json.loads(e) for e in client.lrange(log_key(task_id), 0, -1)]


def test_a_task_ends_with_exactly_one_terminal_event(client: redis.Redis) -> None:
    task_id = new_task(client)
    assert run(client, store.start(task_id, "cpu", "w1", 3, TTL)) == 2
    done = store.finish(task_id, "cpu", EventType.SUCCEEDED, "done", TTL)
    assert run(client, done) == 3
    assert run(client, done) == 0
    failed = store.finish(
        task_id, "cpu", EventType.FAILED, "x", TTL, error=TaskError(code="engine_error", message="x")
    )
    assert run(client, failed) == 0
    assert run(client, store.progress(task_id, 50, "late", TTL)) == [0, 0]
    assert [e["type"] for e in events(client, task_id)] == ["queued", "started", "succeeded"]
    assert client.ttl(state_key(task_id)) > 0 and client.ttl(log_key(task_id)) > 0


def test_a_task_restarted_past_its_attempts_fails_worker_lost(client: redis.Redis) -> None:
    task_id = new_task(client)
    for _ in range(2):
        assert run(client, store.start(task_id, "cpu", "w", 2, TTL)) > 0
    assert run(client, store.start(task_id, "cpu", "w", 2, TTL)) == -2
    last = events(client, task_id)[-1]
    assert last["type"] == "failed" and last["error"]["code"] == "worker_lost"


def test_cancel_of_a_running_task_is_seen_at_its_next_progress(client: redis.Redis) -> None:
    task_id = new_task(client)
    run(client, store.start(task_id, "cpu", "w", 3, TTL))
    assert run(client, store.progress(task_id, 10, "a", TTL)) == [3, 0]
    assert run(client, store.cancel(task_id, "cpu", TTL)) == [2, b"PROCESSING"]
    assert run(client, store.progress(task_id, 20, "b", TTL)) == [4, 1]


def test_queued_is_resent_only_when_position_or_eta_moves(client: redis.Redis) -> None:
    task_id = new_task(client, "gpu")
    assert events(client, task_id)[0]["position"] == 1
    assert run(client, store.requeued(task_id, 1, None, TTL)) == 0  # nothing moved
    assert run(client, store.requeued(task_id, 1, 30.0, TTL)) == 2  # an ETA is known now
    assert run(client, store.requeued(task_id, 1, 30.5, TTL)) == 0  # under a second: quiet
    assert run(client, store.requeued(task_id, 1, 20.0, TTL)) == 3
    last = events(client, task_id)[-1]
    assert last["type"] == "queued" and last["position"] == 1 and last["eta_s"] == 20.0
    run(client, store.start(task_id, "gpu", "w", 3, TTL))
    assert run(client, store.requeued(task_id, 1, 10.0, TTL)) == 0  # running: not queued


def test_a_success_teaches_the_run_time_of_its_type(client: redis.Redis) -> None:
    task_id = new_task(client)
    run(client, store.start(task_id, "cpu", "w", 3, TTL))
    run(client, store.finish(task_id, "cpu", EventType.SUCCEEDED, "done", TTL))
    assert float(client.hget(runtime_key(), "background_removal")) >= 0


def test_an_owner_may_have_only_its_cap_of_waiting_tasks(client: redis.Redis) -> None:
    first = [new_task(client, owner="alice", cap=2) for _ in range(2)]
    refused = store.submit(str(uuid.uuid4()), "background_removal", "cpu", "alice", "{}", TTL, 2, "process_background_removal")
    assert run(client, refused) == -2
    assert new_task(client, owner="bob", cap=2)  # other owners are not affected
    run(client, store.start(first[0], "cpu", "w", 3, TTL))  # one leaves the queue
    assert new_task(client, owner="alice", cap=2)
    run(client, store.cancel(first[1], "cpu", TTL))
    assert new_task(client, owner="alice", cap=2)


def test_the_upkeep_s_skip_test_agrees_with_the_requeued_script(client: redis.Redis) -> None:
    task_id = new_task(client)
    cases = [
        (1, None), (1, None), (1, 30.0), (1, 30.4), (1, 31.0), (1, 27.0), (2, 27.0), (2, 26.0),
        (2, 23.0), (2, 5.0), (2, 4.5), (2, 4.0), (3, None), (3, 0.04), (1, 100.0), (1, 91.0),
    ]
    outcomes = set()
    for position, eta in cases:
        stored = client.hmget(state_key(task_id), "position", "eta_s")
        old_position, old_eta = (x.decode() if isinstance(x, bytes) else x for x in stored)
        predicted = store.queued_moved(position, eta, old_position, old_eta)
        acted = run(client, store.requeued(task_id, position, eta, TTL))
        assert predicted == (acted != 0), (position, eta, old_position, old_eta)
        outcomes.add(predicted)
    assert outcomes == {True, False}
