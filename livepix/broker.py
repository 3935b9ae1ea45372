"""The Dramatiq broker, configured the same way in the api (which only enqueues) and
the workers."""

from __future__ import annotations

from dramatiq.brokers.redis import RedisBroker

# A killed worker's messages come back only after its heartbeat is this old AND a
# maintenance pass runs; Dramatiq's defaults (60 s, 1 call in 1000) take many minutes.
HEARTBEAT_TIMEOUT_MS = 15_000  # the worker refreshes it every 5 s
MAINTENANCE_CHANCE = 10_000  # out of 100_000 dispatch calls


def make_broker(redis_url: str) -> RedisBroker:
    return RedisBroker(  # type: ignore[no-untyped-call]
        url=redis_url,
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
    )
