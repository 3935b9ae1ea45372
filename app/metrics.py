"""`GET /metrics`: Prometheus text exposition of what the api process sees."""

from __future__ import annotations

import bisect
import time

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .errors import UnavailableError
from .hub import Hub
from .tasks import TaskService
from .watch import Frame, Pressure


class Histogram:
    """A Prometheus histogram with fixed buckets; observing is a bisect and two adds."""

    def __init__(self, bounds_s: tuple[float, ...]) -> None:
        self.bounds = bounds_s
        self.counts = [0] * (len(bounds_s) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def render(self, name: str, help_text: str) -> str:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            lines.append(f'{name}_bucket{{le="{bound}"}} {running}')
        running += self.counts[-1]
        lines += [f'{name}_bucket{{le="+Inf"}} {running}', f"{name}_sum {self.total:.6f}", f"{name}_count {running}"]
        return "\n".join(lines) + "\n"


DELIVERY_LATENCY = Histogram((0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))


class Deliveries:
    """Process-wide count of deliveries written as prepared bytes (app/prepared.py):
    after a uvicorn upgrade, 0 here means every delivery takes the slower ASGI path."""

    prepared = 0


def sent(frame: Frame) -> None:
    """Record a task event handed to a client: the time since its worker published it."""
    if frame.ts is not None:
        DELIVERY_LATENCY.observe(max(0.0, time.time() - frame.ts))


def _line(name: str, value: float, help_text: str, kind: str = "gauge", labels: str = "") -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n{name}{labels} {value}\n"


async def metrics(request: Request) -> Response:
    hub: Hub = request.app.state.hub
    tasks: TaskService = request.app.state.tasks
    out = [
        _line("livepix_hub_connected", int(hub.connected.is_set()), "1 while the hub's pub/sub connection is up"),
        _line("livepix_hub_reconnects_total", hub.reconnects, "pub/sub reconnects", "counter"),
        _line("livepix_hub_messages_total", hub.messages, "events received from Redis", "counter"),
        _line("livepix_hub_deliveries_total", hub.deliveries, "events offered to watches", "counter"),
        _line("livepix_watched_tasks", hub.watched_tasks, "tasks with at least one local watcher"),
        _line("livepix_watches", hub.watch_count, "local task subscriptions"),
        _line("livepix_tasks_lost_total", request.app.state.upkeep.lost, "tasks failed worker_lost by this api's watchdog", "counter"),
        _line("livepix_progress_coalesced_total", Pressure.coalesced, "progress events replaced by a newer one for a slow client", "counter"),
        _line("livepix_progress_dropped_total", Pressure.dropped, "progress events dropped for a full outbox", "counter"),
        _line("livepix_slow_clients_closed_total", Pressure.overflowed + Pressure.stalled, "connections closed as too slow (outbox full or a send blocked past the timeout)", "counter"),
        _line("livepix_deliveries_prepared_total", Deliveries.prepared, "task events written straight to a client's transport, past the ASGI send", "counter"),
        DELIVERY_LATENCY.render("livepix_delivery_latency_seconds", "publish (event ts) to hand-over to the client socket"),
    ]
    submitted = "".join(
        f'livepix_tasks_submitted_total{{task_type="{t}"}} {n}\n' for t, n in sorted(tasks.submitted.items())
    )
    out.append("# HELP livepix_tasks_submitted_total tasks submitted to this api process\n"
               "# TYPE livepix_tasks_submitted_total counter\n" + submitted)
    try:
        snapshot = await tasks.queues()
    except UnavailableError:  # metrics still render while Redis is down
        snapshot = None
    if snapshot is not None:
        depth = "".join(
            f'livepix_queue_pending{{queue="{q}"}} {v["pending"]}\n' for q, v in snapshot["queues"].items()
        )
        out.append("# HELP livepix_queue_pending tasks waiting per queue\n# TYPE livepix_queue_pending gauge\n" + depth)
        out.append(_line("livepix_workers", snapshot["workers"], "workers seen in the last 15 s"))
        out.append(_line("livepix_running_tasks", snapshot["running"], "tasks running now"))
    return PlainTextResponse("".join(out), media_type="text/plain; version=0.0.4")
