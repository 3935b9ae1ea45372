"""`GET /metrics`: what the api process sees, in the Prometheus text format.

Rendered by prometheus-client from a collector that reads livepix's own counts at
scrape time: the delivery path keeps plain integers (app/live/counters.py), cheaper on
the hot path than the client library's locked metric objects. The queue snapshot is
read from Redis per scrape; the metrics still render while Redis is down.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from starlette.requests import Request
from starlette.responses import Response

from .errors import UnavailableError
from .live import Live
from .live.counters import LATENCY, Counts
from .tasks import TaskService
from .upkeep import Upkeep


class _Snapshot:
    """A prometheus-client collector over one scrape's values."""

    def __init__(self, live: Live, tasks: TaskService, upkeep: Upkeep, queues: dict[str, Any] | None) -> None:
        self.live = live
        self.tasks = tasks
        self.upkeep = upkeep
        self.queues = queues

    def collect(self) -> Iterator[Metric]:
        hub = self.live.hub
        yield GaugeMetricFamily("livepix_hub_connected", "1 while every pub/sub connection the hub needs is up",
                                value=int(hub.connected))
        yield CounterMetricFamily("livepix_hub_reconnects", "pub/sub reconnects", value=hub.reconnects)
        yield CounterMetricFamily("livepix_hub_messages", "events received from Redis", value=hub.messages)
        yield CounterMetricFamily("livepix_hub_deliveries", "events offered to outboxes", value=hub.offered)
        yield CounterMetricFamily("livepix_hub_gaps_filled",
                                  "runs of events pub/sub lost, read from the log instead", value=hub.gaps)
        yield GaugeMetricFamily("livepix_watched_tasks", "tasks with at least one local watcher",
                                value=hub.watched_tasks)
        yield GaugeMetricFamily("livepix_watches", "local task subscriptions", value=hub.follow_count)
        yield CounterMetricFamily("livepix_tasks_lost", "tasks failed worker_lost by this api's watchdog",
                                  value=self.upkeep.lost)
        yield CounterMetricFamily("livepix_tasks_reenqueued",
                                  "waiting tasks whose queue message was missing, enqueued by this api's watchdog",
                                  value=self.upkeep.reenqueued)
        yield CounterMetricFamily("livepix_progress_coalesced",
                                  "progress events replaced by a newer one for a slow client", value=Counts.coalesced)
        yield CounterMetricFamily("livepix_progress_dropped",
                                  "progress events not queued for a full outbox (named by the next event's replaces)",
                                  value=Counts.dropped)
        yield CounterMetricFamily("livepix_slow_clients_closed",
                                  "connections closed as too slow (outbox full or a send blocked past the timeout)",
                                  value=Counts.overflowed + Counts.stalled)
        yield CounterMetricFamily("livepix_deliveries", "task events handed to client connections",
                                  value=Counts.delivered)
        yield CounterMetricFamily("livepix_deliveries_prepared",
                                  "task events written straight to a client's transport, past the ASGI send",
                                  value=Counts.prepared)
        buckets, running = [], 0
        for bound, count in zip((*LATENCY.bounds, float("inf")), LATENCY.counts, strict=True):
            running += count
            buckets.append((_le(bound), running))
        yield HistogramMetricFamily("livepix_delivery_latency_seconds",
                                    "publish (event ts) to hand-over to the client socket",
                                    buckets=buckets, sum_value=LATENCY.total)
        submitted = CounterMetricFamily("livepix_tasks_submitted", "tasks submitted to this api process",
                                        labels=["task_type"])
        for task_type, count in sorted(self.tasks.submitted.items()):
            submitted.add_metric([task_type], count)
        yield submitted
        if self.queues is not None:
            pending = GaugeMetricFamily("livepix_queue_pending", "tasks waiting per queue", labels=["queue"])
            for queue, numbers in self.queues["queues"].items():
                pending.add_metric([queue], numbers["pending"])
            yield pending
            yield GaugeMetricFamily("livepix_workers", "workers seen in the last 15 s", value=self.queues["workers"])
            yield GaugeMetricFamily("livepix_running_tasks", "tasks running now", value=self.queues["running"])


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


async def metrics(request: Request) -> Response:
    tasks: TaskService = request.app.state.tasks
    try:
        queues = await tasks.queues()
    except UnavailableError:
        queues = None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(request.app.state.live, tasks, request.app.state.upkeep, queues))
    ProcessCollector(registry=registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
