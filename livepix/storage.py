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

import logging
import time
from collections.abc import Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    MasterDownError,
    NoScriptError,
    ReadOnlyError,
    SlotNotCoveredError,
    TryAgainError,
)

from . import store
from .store import Call, Command, Op, Ordered, Script

T = TypeVar("T")

log = logging.getLogger(__name__)

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster(url: str, cluster_setting: bool = False) -> bool:
    return cluster_setting or urlsplit(url).scheme in CLUSTER_SCHEMES


def plain_url(url: str) -> str:
    """`url` with a `+cluster` scheme made plain, for redis-py."""
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, *parts[1:]))


def cluster_nodes(url: str) -> tuple[str, list[tuple[str, int]]]:
    """A cluster URL may name several nodes to start from (`redis+cluster://h1:p1,h2:p2/0`):
    (the URL of the first, every (host, port))."""
    parts = urlsplit(plain_url(url))
    auth, at, hosts = parts.netloc.rpartition("@")
    nodes = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        nodes.append((host or item.strip(), int(port) if port.isdigit() else 6379))
    first = urlunsplit((parts.scheme, auth + at + hosts.split(",")[0].strip(), parts.path, parts.query, ""))
    return first, nodes


def sync_client(url: str, cluster: bool, **options: Any) -> Any:
    """A blocking client: `redis.Redis`, or `RedisCluster` on a cluster (which learns the
    slot map at once)."""
    if cluster:
        from redis.cluster import ClusterNode

        first, nodes = cluster_nodes(url)
        starts = [ClusterNode(h, p) for h, p in nodes[1:]]  # type: ignore[no-untyped-call]
        return RedisCluster.from_url(first, startup_nodes=starts, **options)
    return redis.Redis.from_url(plain_url(url), **options)


def async_client(url: str, cluster: bool, **options: Any) -> Any:
    """An asyncio client: `redis.asyncio.Redis` (over a blocking pool of
    `max_connections`), or the asyncio `RedisCluster` on a cluster (`await
    client.initialize()` before use: it then knows every node, not only the URL's)."""
    if cluster:
        from redis.asyncio.cluster import ClusterNode as AsyncClusterNode

        options.pop("timeout", None)
        first, nodes = cluster_nodes(url)
        return AsyncRedisCluster.from_url(
            first, startup_nodes=[AsyncClusterNode(h, p) for h, p in nodes[1:]], **options,
        )
    pool = aioredis.BlockingConnectionPool.from_url(plain_url(url), **options)
    return aioredis.Redis.from_pool(pool)  # closing the client closes its pool


def _arguments(call: Call) -> tuple[Any, ...]:
    if isinstance(call, Script):
        return ("EVALSHA", store.SHAS[call.name], len(call.keys), *call.keys, *call.args)
    return call.args


def _execute(client: Any, calls: list[Call]) -> list[Any]:
    """One round trip; a call's error is its answer, as a pipeline gives it. A lone call
    goes as a plain command (a pipeline costs ~30 us more of the caller's CPU)."""
    if len(calls) == 1:
        try:
            return [client.execute_command(*_arguments(calls[0]))]
        except redis.ResponseError as exc:
            return [exc]
    pipe = client.pipeline(transaction=False)
    for call in calls:
        pipe.execute_command(*_arguments(call))
    return pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]


async def _aexecute(client: Any, calls: list[Call]) -> list[Any]:
    """`_execute` on an asyncio client."""
    if len(calls) == 1:
        try:
            return [await client.execute_command(*_arguments(calls[0]))]
        except redis.ResponseError as exc:
            return [exc]
    pipe = client.pipeline(transaction=False)
    for call in calls:
        pipe.execute_command(*_arguments(call))
    return await pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]


def _groups(client: Any, batch: list[Call]) -> list[list[int]]:
    """The calls of `batch` (indexes) as round trips: one, unless the batch is `Ordered`
    on a cluster."""
    if isinstance(batch, Ordered) and isinstance(client, (RedisCluster, AsyncRedisCluster)):
        return [[i] for i in range(len(batch))]
    return [list(range(len(batch)))]


# WAIT for the replica of a node before publishing, at most this long; a node whose
# replica did not answer is published to without waiting for a while.
WAIT_MS = 500
UNREPLICATED_FOR_S = 10.0
_unreplicated: dict[str, float] = {}  # node -> until when it is published to at once


def _answer(call: Call, answer: Any, published: list[tuple[str, str]]) -> Any:
    """A call's result as its operation sees it: for a script that appended an event,
    the event is taken off (and kept in `published` if the script did not publish it)."""
    if isinstance(call, Script) and call.name in store.APPENDING:
        *rest, event = answer
        if event and not call.args[2]:  # args[2]: what the script publishes with; '' = the runner
            published.append((str(call.args[0]), event.decode() if isinstance(event, bytes) else str(event)))
        return rest[0] if len(rest) == 1 else rest
    return answer


def _publish(client: Any, published: list[tuple[str, str]]) -> None:
    """On a cluster: wait until a replica has each write, then publish its event."""
    for node in _nodes_of(client, published):
        if _unreplicated.get(node.name, 0.0) < time.monotonic() and not client.execute_command(
            "WAIT", 1, WAIT_MS, target_nodes=node
        ):
            _no_replica(node.name)
    for name, event in published:
        client.spublish(name, event)


async def _apublish(client: Any, published: list[tuple[str, str]]) -> None:
    for node in _nodes_of(client, published):
        if _unreplicated.get(node.name, 0.0) < time.monotonic() and not await client.execute_command(
            "WAIT", 1, WAIT_MS, target_nodes=node
        ):
            _no_replica(node.name)
    for name, event in published:
        await client.spublish(name, event)


def _nodes_of(client: Any, published: list[tuple[str, str]]) -> list[Any]:
    nodes = {}
    for name, _ in published:
        node = client.get_node_from_key(name)
        nodes[node.name] = node
    return list(nodes.values())


def _no_replica(node: str) -> None:
    log.warning("no replica of %s acknowledged a write in %d ms; publishing without waiting for %.0f s",
                node, WAIT_MS, UNREPLICATED_FOR_S)
    _unreplicated[node] = time.monotonic() + UNREPLICATED_FOR_S


def run_batch(client: Any, batch: Sequence[Call]) -> list[Any]:
    """Run one batch on a blocking client; the results in call order."""
    results: list[Any] = [None] * len(batch)
    published: list[tuple[str, str]] = []
    for group in _groups(client, list(batch)):
        todo = group
        for attempt in range(2):
            answers = _execute(client, [batch[i] for i in todo])
            missing = [i for i, answer in zip(todo, answers, strict=True) if isinstance(answer, NoScriptError)]
            for i, answer in zip(todo, answers, strict=True):
                if not isinstance(answer, NoScriptError):
                    results[i] = _answer(batch[i], _checked(answer), published)
            if not missing:
                break
            if attempt:
                raise missing_error(answers)
            load_scripts(client)
            todo = missing
    if published:
        _publish(client, published)
    return results


async def arun_batch(client: Any, batch: Sequence[Call]) -> list[Any]:
    """Run one batch on an asyncio client; the results in call order."""
    results: list[Any] = [None] * len(batch)
    published: list[tuple[str, str]] = []
    for group in _groups(client, list(batch)):
        todo = group
        for attempt in range(2):
            answers = await _aexecute(client, [batch[i] for i in todo])
            missing = [i for i, answer in zip(todo, answers, strict=True) if isinstance(answer, NoScriptError)]
            for i, answer in zip(todo, answers, strict=True):
                if not isinstance(answer, NoScriptError):
                    results[i] = _answer(batch[i], _checked(answer), published)
            if not missing:
                break
            if attempt:
                raise missing_error(answers)
            await aload_scripts(client)
            todo = missing
    if published:
        await _apublish(client, published)
    return results


def _checked(answer: Any) -> Any:
    if isinstance(answer, Exception):
        raise answer
    return answer


def missing_error(answers: list[Any]) -> Exception:
    return next(a for a in answers if isinstance(a, NoScriptError))


def load_scripts(client: Any) -> None:
    """Load every store script (on a cluster, on every primary). A script this Redis
    cannot compile (flags, before Redis 7) is left out: calling it fails NOSCRIPT."""
    for name, source in store.SCRIPTS.items():
        try:
            client.script_load(source)
        except redis.ResponseError as exc:
            log.debug("store script %s not loaded: %s", name, exc)


async def aload_scripts(client: Any) -> None:
    for name, source in store.SCRIPTS.items():
        try:
            await client.script_load(source)
        except redis.ResponseError as exc:
            log.debug("store script %s not loaded: %s", name, exc)


# What a failover, a restart or a network blip raise for a while: worth a retry.
TRANSIENT = (
    redis.ConnectionError, redis.TimeoutError, ClusterDownError, TryAgainError, MasterDownError,
    ReadOnlyError, SlotNotCoveredError, ClusterError,
)


def run(client: Any, op: Op[T], retry_s: float = 0.0) -> T:
    """Run a store operation to its end on a blocking client. With `retry_s`, a batch
    that fails with a transient error (a failover under way) is tried again for up to
    that long: a batch that did run before its answer was lost then runs twice, which
    adds an event or changes nothing, and never leaves a gap."""
    try:
        batch = next(op)
        while True:
            deadline = time.monotonic() + retry_s
            delay = 0.1
            while True:
                try:
                    answers = run_batch(client, batch)
                    break
                except TRANSIENT as exc:
                    if time.monotonic() + delay > deadline:
                        batch = op.throw(exc)  # the operation may handle it, or it raises
                        answers = None
                        break
                    log.warning("Redis unavailable (%s); retrying in %.1f s", exc, delay)
                    time.sleep(delay)
                    delay = min(2.0, 2 * delay)
                except redis.RedisError as exc:
                    batch = op.throw(exc)
                    answers = None
                    break
            if answers is not None:
                batch = op.send(answers)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def arun(client: Any, op: Op[T]) -> T:
    """Run a store operation to its end on an asyncio client."""
    try:
        batch = next(op)
        while True:
            try:
                answers = await arun_batch(client, batch)
            except redis.RedisError as exc:
                batch = op.throw(exc)  # the operation may handle it, or it raises
                continue
            batch = op.send(answers)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


class OneNode:
    """The topology of a single Redis: every channel on it (app/live/hub.py)."""

    sharded = False

    def __init__(self, url: str) -> None:
        self.url = plain_url(url)

    def node_of(self, name: str) -> tuple[str, str]:
        return "redis", self.url

    async def refresh(self) -> None:
        return None


class ClusterNodes:
    """The topology of a Redis Cluster, from an asyncio cluster client's slot map: a
    channel lives on the master of its slot."""

    sharded = True

    def __init__(self, client: AsyncRedisCluster, url: str) -> None:
        self.client = client
        self._base = urlsplit(cluster_nodes(url)[0])

    def node_of(self, name: str) -> tuple[str, str]:
        node = self.client.get_node_from_key(name)
        if node is None:
            raise SlotNotCoveredError(f"no node serves the slot of {name}")
        auth, _, _ = self._base.netloc.rpartition("@")
        netloc = f"{auth}@{node.host}:{node.port}" if auth else f"{node.host}:{node.port}"
        return node.name, urlunsplit((self._base.scheme, netloc, "/0", "", ""))

    async def refresh(self) -> None:
        await self.client.nodes_manager.initialize()


__all__ = [
    "ClusterNodes", "Command", "OneNode", "Ordered", "Script", "arun", "arun_batch", "async_client", "is_cluster", "load_scripts",
    "plain_url", "run", "run_batch", "sync_client",
]
