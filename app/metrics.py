"""`GET /metrics`: Prometheus text exposition of what the api process sees."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .errors import UnavailableError
from .hub import Hub
from .tasks import TaskService


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
