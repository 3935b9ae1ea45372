"""The Dramatiq side of Redis: the workers' broker, and how the api enqueues without one.

The api enqueues inside its own `submit` store script, so that a task is stored and
queued in one atomic step (one round trip, no "stored but not queued" window). It
writes exactly what `RedisBroker.enqueue` writes (dramatiq/brokers/redis/dispatch.lua,
command "enqueue"): the encoded message in the queue's `.msgs` hash under a fresh
`redis_message_id`, and that id at the tail of the queue's list.
"""

from __future__ import annotations

import uuid
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

NAMESPACE = "dramatiq"  # RedisBroker's default

# A killed worker's messages come back only after its heartbeat is this old AND a
# maintenance pass runs; Dramatiq's defaults (60 s, 1 call in 1000) take many minutes.
HEARTBEAT_TIMEOUT_MS = 15_000  # the worker refreshes it every 5 s
MAINTENANCE_CHANCE = 10_000  # out of 100_000 dispatch calls


def make_broker(redis_url: str) -> RedisBroker:
    return RedisBroker(  # type: ignore[no-untyped-call]
        url=redis_url,
        namespace=NAMESPACE,
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
    )


def queue_list_key(queue: str) -> str:
    """List of the queue's message ids, in delivery order."""
    return f"{NAMESPACE}:{queue}"


def queue_messages_key(queue: str) -> str:
    """Hash: message id -> encoded message."""
    return f"{NAMESPACE}:{queue}.msgs"


def encode_message(queue: str, actor_name: str, task_id: str) -> tuple[str, str]:
    """(redis message id, encoded message) for running `actor_name(task_id)` on `queue`."""
    redis_message_id = str(uuid.uuid4())
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=queue,
        actor_name=actor_name,
        args=(task_id,),
        kwargs={},
        options={"redis_message_id": redis_message_id},
    )
    return redis_message_id, message.encode().decode()
