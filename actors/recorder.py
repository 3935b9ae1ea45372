"""The worker's side of the task store: start, report progress, finish.

Each call is one Redis round trip (one store script).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from livepix import store
from livepix.config import Settings
from livepix.wire import EventType, TaskError, TaskResult, input_key

from .errors import TaskCancelledError, TaskFailedError

log = logging.getLogger(__name__)

PREVIEW_INTERVAL_S = 0.5
# After a preview that took t seconds (a TAESD on a CPU: ~0.25 s), the next waits at
# least PREVIEW_COST_FACTOR * t: previews take at most a tenth of a task's time.
PREVIEW_COST_FACTOR = 10
PREVIEW_MAX_SIDE = 256
PREVIEW_JPEG_QUALITY = 70


class Recorder:
    """Writes a worker's events for its tasks through the store scripts."""

    def __init__(self, client: redis.Redis, settings: Settings, worker_id: str) -> None:
        self.client = client
        self.settings = settings
        self.worker_id = worker_id
        self._scripts = {name: client.register_script(src) for name, src in store.SCRIPTS.items()}

    def _run(self, call: store.ScriptCall) -> Any:
        return self._scripts[call.script](keys=call.keys, args=call.args)

    def start(self, task_id: str, queue: str) -> int:
        """See `store.start`: a positive seq means the task is ours to run."""
        call = store.start(
            task_id, queue, self.worker_id, self.settings.max_attempts, self.settings.result_ttl_s
        )
        return int(self._run(call))

    def load_input(self, task_id: str) -> dict[str, Any]:
        raw = self.client.get(input_key(task_id))
        if raw is None:
            raise TaskFailedError("the task's input expired before it could run")
        request: dict[str, Any] = json.loads(raw)
        return request

    def progress(self, task_id: str, percent: int, message: str, **extra: Any) -> None:
        """Log a progress event; raise `TaskCancelledError` if a cancel was requested."""
        call = store.progress(task_id, percent, message, self.settings.result_ttl_s, **extra)
        seq, cancel = self._run(call)
        if cancel or int(seq) == 0:
            raise TaskCancelledError(task_id)

    def finish(
        self,
        task_id: str,
        queue: str,
        type: EventType,
        message: str,
        *,
        result: TaskResult | None = None,
        error: TaskError | None = None,
    ) -> int:
        call = store.finish(
            task_id, queue, type, message, self.settings.result_ttl_s, result=result, error=error
        )
        return int(self._run(call))

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
