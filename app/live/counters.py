"""Process-wide counts of the delivery path, for /metrics (app/metrics.py).

Plain integers and a fixed-bucket histogram, bumped on the hot path: a delivery costs
a bisect and a few adds here, nothing more (a client library's locked counters cost
several times that per watcher per event).
"""

from __future__ import annotations

import bisect
import time

from .frame import Frame

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """Observing is a bisect and two adds; `counts[i]` is the bucket up to `bounds[i]`
    (the last one is +Inf), not cumulative."""

    def __init__(self, bounds_s: tuple[float, ...]) -> None:
        self.bounds = bounds_s
        self.counts = [0] * (len(bounds_s) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


class Counts:
    """What the delivery path did, since the process started."""

    delivered = 0  # task events handed to a client connection
    prepared = 0  # of which written straight to the transport (app/server.py)
    coalesced = 0  # progress events replaced by a newer one for a slow client
    dropped = 0  # progress events not queued for a full outbox (named by the next one's `replaces`)
    overflowed = 0  # connections closed as too slow: outbox full
    stalled = 0  # connections closed as too slow: a send blocked past the timeout


LATENCY = Histogram(LATENCY_BUCKETS_S)  # publish (event ts) to hand-over to the client socket


def delivered(frame: Frame, prepared: bool = False) -> None:
    """Record one frame handed to a client: the one place a delivery is counted."""
    if not frame.seq:
        return  # a reply or a keepalive, not a task event
    Counts.delivered += 1
    if prepared:
        Counts.prepared += 1
    if frame.ts is not None:
        LATENCY.observe(max(0.0, time.time() - frame.ts))
