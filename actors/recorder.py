"""The worker's side of the task store: start, report progress, finish.

A progress event is one Redis round trip (one store script); starting and finishing
also keep the queue bookkeeping in step (livepix/store.py).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from livepix import store
from livepix.config import Settings
from livepix.storage import run
from livepix.wire import EventType, TaskError, TaskResult, input_key

from .errors import TaskCancelledError, TaskFailedError, TaskTimeoutError

log = logging.getLogger(__name__)

# A worker rides out a Redis failover or restart: its writes are retried this long.
STORE_RETRY_S = 30.0
PREVIEW_INTERVAL_S = 0.5
# After a preview that took t seconds (a TAESD on a CPU: ~0.25 s), the next waits at
# least PREVIEW_COST_FACTOR * t: previews take at most a tenth of a task's time.
PREVIEW_COST_FACTOR = 10
PREVIEW_MAX_SIDE = 256
PREVIEW_JPEG_QUALITY = 70


class Recorder:
    """Writes a worker's events for its tasks through the store."""

    def __init__(self, client: Any, settings: Settings, worker_id: str) -> None:
        self.client = client
        self.settings = settings
        self.worker_id = worker_id
        self.opts = store.Options(settings.result_ttl_s, settings.cluster)
        self._deadlines: dict[str, float] = {}

    def start(self, task_id: str, queue: str) -> int:
        """See `store.start`: a positive seq means the task is ours to run."""
        started = run(self.client, store.start(self.opts, task_id, queue, self.worker_id, self.settings.max_attempts),
                      STORE_RETRY_S)
        if started.seq > 0 and started.deadline is not None:
            self._deadlines[task_id] = started.deadline
        return started.seq

    def load_input(self, task_id: str) -> dict[str, Any]:
        raw = self.client.get(input_key(task_id))
        if raw is None:
            raise TaskFailedError("the task's input expired before it could run")
        request: dict[str, Any] = json.loads(raw)
        return request

    def progress(self, task_id: str, percent: int, message: str, **extra: Any) -> None:
        """Log a progress event; raise `TaskCancelledError` if a cancel was requested, or
        `TaskTimeoutError` if the task's deadline passed."""
        deadline = self._deadlines.get(task_id)
        if deadline is not None and time.time() >= deadline:
            raise TaskTimeoutError(task_id)
        seq, cancel = run(self.client, store.progress(self.opts, task_id, percent, message, **extra), STORE_RETRY_S)
        if cancel == "timeout":
            raise TaskTimeoutError(task_id)
        if cancel or seq <= 0:
            raise TaskCancelledError(task_id)

    def finish(
        self,
        task_id: str,
        queue: str,
        type: EventType,
        message: str,
        *,
        result: TaskResult | None = None,
        images: Sequence[bytes] = (),
        error: TaskError | None = None,
    ) -> int:
        self._deadlines.pop(task_id, None)
        try:
            return run(self.client, store.finish(
                self.opts, task_id, queue, type, message, result=result, images=images, error=error,
            ), STORE_RETRY_S)
        except redis.OutOfMemoryError:
            if type is EventType.SUCCEEDED:
                raise  # the runner fails the task instead: its images do not fit
        # Redis refuses writes (maxmemory): the terminal event goes in all the same
        # (Redis >= 7), and ending the task frees its input.
        log.warning("Redis is full: ending task %s with a script allowed to write anyway", task_id)
        return run(self.client, store.finish(
            self.opts, task_id, queue, type, message, error=error, despite_full=True,
        ), STORE_RETRY_S)

    def heartbeat(self, key: str, member: str, score: float) -> None:
        self.client.zadd(key, {member: score})


PreviewSource = Callable[[], Any]  # returns a PIL image, computed only when sent


class Reporter:
    """What an engine calls to report progress; throttles previews, honours cancel.

    The percent sent never goes down: a task run again after the worker freed memory
    (`Engines.run`) reports its early steps anew, and those hold at the highest percent
    sent so far while their messages (and `step`) say what is happening.
    """

    def __init__(self, recorder: Recorder, task_id: str) -> None:
        self._recorder = recorder
        self._task_id = task_id
        self._last_preview_at = 0.0
        self._preview_gap = PREVIEW_INTERVAL_S
        self._first_step: tuple[float, int] | None = None
        self._last_step = 0
        self._highest = 0

    def __call__(
        self,
        percent: float,
        message: str,
        *,
        step: int | None = None,
        total: int | None = None,
        preview: PreviewSource | None = None,
    ) -> None:
        preview_b64 = None
        now = time.monotonic()
        if preview is not None and now - self._last_preview_at >= self._preview_gap:
            image = preview()
            if image is not None:
                preview_b64 = encode_preview(image)
                self._last_preview_at = now
                self._preview_gap = max(PREVIEW_INTERVAL_S, PREVIEW_COST_FACTOR * (time.monotonic() - now))
        self._highest = max(self._highest, min(99, int(percent)))
        self._recorder.progress(
            self._task_id,
            self._highest,
            message,
            step=step,
            total=total,
            eta_s=self._eta(now, step, total),
            preview=preview_b64,
        )

    def _eta(self, now: float, step: int | None, total: int | None) -> float | None:
        """Seconds left, from the pace of the steps seen so far."""
        if step is None or not total:
            return None
        if step < self._last_step:  # counting again (a retry): a new pace
            self._first_step = None
        self._last_step = step
        if self._first_step is None:
            self._first_step = (now, step)
            return None
        started, first = self._first_step
        if step <= first:
            return None
        return round((now - started) / (step - first) * (total - step), 1)


def encode_preview(image: Any) -> str:
    """A small JPEG of `image` (PIL), base64."""
    preview = image.convert("RGB")
    preview.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=PREVIEW_JPEG_QUALITY)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
