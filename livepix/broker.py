"""The Dramatiq side of Redis: the workers' broker, and how the api enqueues without one.

The api enqueues with its own small script (`store.ENQUEUE`), after it stored the task:
it writes exactly what `RedisBroker.enqueue` writes (dramatiq/brokers/redis/dispatch.lua,
command "enqueue"): the encoded message in the queue's `.msgs` hash under its
`redis_message_id`, and that id at the tail of the queue's list. The id is the task id,
so that enqueueing a task twice (the upkeep re-enqueues a task whose message never
reached the broker) queues it once.

On a Redis Cluster every key of the broker must live in one slot, since dispatch.lua
builds its key names from the namespace it gets as its one key: the namespace carries
a hash tag there, `{dramatiq}`.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

NAMESPACE = "dramatiq"  # RedisBroker's default, on a single Redis
CLUSTER_NAMESPACE = "{dramatiq}"  # one hash slot for all of the broker's keys

# A killed worker's messages come back only after its heartbeat is this old AND a
# maintenance pass runs; Dramatiq's defaults (60 s, 1 call in 1000) take many minutes.
HEARTBEAT_TIMEOUT_MS = 15_000  # the worker refreshes it every 5 s
MAINTENANCE_CHANCE = 10_000  # out of 100_000 dispatch calls


def namespace(cluster: bool) -> str:
    return CLUSTER_NAMESPACE if cluster else NAMESPACE


def make_broker(client: Any, cluster: bool) -> RedisBroker:
    """The workers' broker on `client` (a `redis.Redis` or a `redis.cluster.RedisCluster`)."""
    return RedisBroker(  # type: ignore[no-untyped-call]
        client=client,
        namespace=namespace(cluster),
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
    )


def queue_list_key(queue: str, cluster: bool) -> str:
    """List of the queue's message ids, in delivery order."""
    return f"{namespace(cluster)}:{queue}"


def queue_messages_key(queue: str, cluster: bool) -> str:
    """Hash: message id -> encoded message."""
    return f"{namespace(cluster)}:{queue}.msgs"


def heartbeats_key(cluster: bool) -> str:
    """Sorted set: broker id -> its last fetch (ms): maintenance re-queues the messages of
    a broker whose heartbeat is older than `HEARTBEAT_TIMEOUT_MS`."""
    return f"{namespace(cluster)}:__heartbeats__"


def encode_message(queue: str, actor_name: str, task_id: str) -> str:
    """The encoded message that runs `actor_name(task_id)` on `queue`, with the task id
    as its `redis_message_id`."""
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=queue,
        actor_name=actor_name,
        args=(task_id,),
        kwargs={},
        options={"redis_message_id": task_id},
    )
    return message.encode().decode()
