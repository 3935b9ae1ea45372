"""Connections to Redis, one node or a cluster, and the runners of store operations.

`REDIS_URL` names a single Redis, or a Redis Cluster (`redis+cluster://host:port`, or
any URL with `LIVEPIX_REDIS_CLUSTER=1`): then the clients are redis-py's cluster
clients, which route each command by its key's slot. Store operations
(livepix/store.py) yield batches of calls: a batch goes out as one pipeline (on a
cluster, one per node it touches); an `Ordered` batch on a cluster runs call by call.
Scripts run by SHA: on NOSCRIPT (a fresh node after a failover, a flushed cache) they
are loaded and the calls that did not run are run again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from . import store
from .store import Call, Command, Op, Ordered, Script

T = TypeVar("T")

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster(url: str, cluster_setting: bool = False) -> bool:
    return cluster_setting or urlsplit(url).scheme in CLUSTER_SCHEMES


def plain_url(url: str) -> str:
    """`url` with a `+cluster` scheme made plain, for redis-py."""
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, *parts[1:]))


def sync_client(url: str, cluster: bool, **options: Any) -> Any:
    """A blocking client: `redis.Redis`, or `RedisCluster` on a cluster."""
    if cluster:
        return RedisCluster.from_url(plain_url(url), **options)
    return redis.Redis.from_url(plain_url(url), **options)


def async_client(url: str, cluster: bool, **options: Any) -> Any:
    """An asyncio client: `redis.asyncio.Redis` (over a blocking pool of
    `max_connections`), or the asyncio `RedisCluster` on a cluster."""
    if cluster:
        options.pop("timeout", None)
        return AsyncRedisCluster.from_url(plain_url(url), **options)
    pool = aioredis.BlockingConnectionPool.from_url(plain_url(url), **options)
    return aioredis.Redis.from_pool(pool)  # closing the client closes its pool


def _queue(pipe: Any, call: Call) -> None:
    if isinstance(call, Script):
        pipe.execute_command("EVALSHA", store.SHAS[call.name], len(call.keys), *call.keys, *call.args)
    else:
        pipe.execute_command(*call.args)


def _groups(client: Any, batch: list[Call]) -> list[list[int]]:
    """The calls of `batch` (indexes) as round trips: one, unless the batch is `Ordered`
    on a cluster."""
    if isinstance(batch, Ordered) and isinstance(client, (RedisCluster, AsyncRedisCluster)):
        return [[i] for i in range(len(batch))]
    return [list(range(len(batch)))]


def run_batch(client: Any, batch: Sequence[Call]) -> list[Any]:
    """Run one batch on a blocking client; the results in call order."""
    results: list[Any] = [None] * len(batch)
    for group in _groups(client, list(batch)):
        todo = group
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            for i in todo:
                _queue(pipe, batch[i])
            answers = pipe.execute(raise_on_error=False)
            missing = [i for i, answer in zip(todo, answers, strict=True) if isinstance(answer, NoScriptError)]
            for i, answer in zip(todo, answers, strict=True):
                if not isinstance(answer, NoScriptError):
                    results[i] = _checked(answer)
            if not missing:
                break
            if attempt:
                raise missing_error(answers)
            load_scripts(client)
            todo = missing
    return results


async def arun_batch(client: Any, batch: Sequence[Call]) -> list[Any]:
    """Run one batch on an asyncio client; the results in call order."""
    results: list[Any] = [None] * len(batch)
    for group in _groups(client, list(batch)):
        todo = group
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            for i in todo:
                _queue(pipe, batch[i])
            answers = await pipe.execute(raise_on_error=False)
            missing = [i for i, answer in zip(todo, answers, strict=True) if isinstance(answer, NoScriptError)]
            for i, answer in zip(todo, answers, strict=True):
                if not isinstance(answer, NoScriptError):
                    results[i] = _checked(answer)
            if not missing:
                break
            if attempt:
                raise missing_error(answers)
            await aload_scripts(client)
            todo = missing
    return results


def _checked(answer: Any) -> Any:
    if isinstance(answer, Exception):
        raise answer
    return answer


def missing_error(answers: list[Any]) -> Exception:
    return next(a for a in answers if isinstance(a, NoScriptError))


def load_scripts(client: Any) -> None:
    """Load every store script (on a cluster, on every primary)."""
    for source in store.SCRIPTS.values():
        client.script_load(source)


async def aload_scripts(client: Any) -> None:
    for source in store.SCRIPTS.values():
        await client.script_load(source)


def run(client: Any, op: Op[T]) -> T:
    """Run a store operation to its end on a blocking client."""
    try:
        batch = next(op)
        while True:
            batch = op.send(run_batch(client, batch))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def arun(client: Any, op: Op[T]) -> T:
    """Run a store operation to its end on an asyncio client."""
    try:
        batch = next(op)
        while True:
            batch = op.send(await arun_batch(client, batch))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


__all__ = [
    "Command", "Ordered", "Script", "arun", "arun_batch", "async_client", "is_cluster", "load_scripts",
    "plain_url", "run", "run_batch", "sync_client",
]
