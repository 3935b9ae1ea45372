"""Running one task: claim it, decode its input, run its engine, log exactly one ending."""

from __future__ import annotations

import logging
import time
from typing import Any

from dramatiq.middleware import TimeLimitExceeded
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError

from livepix.images import ImageError, ImageLimits, decode_image, encode_png
from livepix.wire import QUEUE_OF, ErrorCode, EventType, TaskError, TaskResult, TaskType

from .engines import EngineInput, Engines
from .errors import (
    InvalidImageError,
    TaskCancelledError,
    TaskFailedError,
    TaskTimeoutError,
    failure_of,
)
from .recorder import Recorder, Reporter

log = logging.getLogger(__name__)


class Runner:
    """Runs tasks for one worker process; shared by all its worker threads."""

    def __init__(self, recorder: Recorder, engines: Engines) -> None:
        self.recorder = recorder
        self.engines = engines
        settings = recorder.settings
        self._limits = ImageLimits(settings.max_image_pixels, settings.max_image_side)

    def run(self, task_id: str, task_type: TaskType) -> None:
        queue = QUEUE_OF[task_type].value
        try:
            seq = self.recorder.start(task_id, queue)
        except RedisOutOfMemoryError:
            self._fail(task_id, queue, ErrorCode.STORAGE_FULL, "the service's storage is full; retry later")
            return
        if seq <= 0:
            reason = {0: "already finished or cancelled", -1: "expired", -2: "out of attempts"}
            log.info("task %s not run: %s", task_id, reason.get(seq, seq))
            return
        began = time.monotonic()
        try:
            result, images = self._execute(task_id, task_type)
        except TaskTimeoutError:
            self._fail(task_id, queue, ErrorCode.TIMEOUT, "the task ran past its deadline_s")
        except TaskCancelledError:
            self.recorder.finish(task_id, queue, EventType.CANCELLED, "Cancelled")
            log.info("task %s cancelled while running", task_id)
        except TimeLimitExceeded:
            self._fail(task_id, queue, ErrorCode.TIMEOUT, "the task ran past its time limit")
        except Exception as exc:
            code, message = failure_of(exc)
            if code is ErrorCode.OUT_OF_MEMORY:
                log.warning("task %s (%s) ran out of memory: %s", task_id, task_type.value, exc)
            elif not isinstance(exc, TaskFailedError):
                log.exception("task %s (%s) crashed", task_id, task_type.value)
            self._fail(task_id, queue, code, message)
        else:
            elapsed = time.monotonic() - began
            try:
                self.recorder.finish(
                    task_id, queue, EventType.SUCCEEDED, f"Done in {elapsed:.1f} s", result=result, images=images
                )
            except RedisOutOfMemoryError:
                self._fail(task_id, queue, ErrorCode.STORAGE_FULL,
                           "the result did not fit: the service's storage is full; retry later")
                return
            log.info("task %s (%s) done in %.2f s", task_id, task_type.value, elapsed)

    def _fail(self, task_id: str, queue: str, code: str, message: str) -> None:
        log.info("task %s failed: %s: %s", task_id, code, message)
        self.recorder.finish(
            task_id, queue, EventType.FAILED, message, error=TaskError(code=code, message=message)
        )

    def _execute(self, task_id: str, task_type: TaskType) -> tuple[TaskResult, list[bytes]]:
        request = self.recorder.load_input(task_id)
        report = Reporter(self.recorder, task_id)

        def task() -> EngineInput:
            return EngineInput(
                task_id=task_id,
                prompt=request.get("prompt"),
                parameters=request.get("parameters") or {},
                image=self._image(request, "image"),
                target_image=self._image(request, "target_image"),
                mask=self._image(request, "mask"),
            )

        # Decoding is part of each attempt: a retry after freeing memory decodes again.
        output = self.engines.run(task_type, task, report)
        report(95, "Encoding the result")
        metadata: dict[str, Any] = dict(output.metadata)
        result = TaskResult(status="SUCCESS", metadata=metadata)
        if output.prompt_used is not None:
            result["prompt_used"] = output.prompt_used
        return result, [encode_png(image) for image in output.images]

    def _image(self, request: dict[str, Any], name: str) -> Any:
        data = request.get(name)
        if not data:
            return None
        try:
            return decode_image(data, self._limits)
        except ImageError as exc:
            raise InvalidImageError(f"{name}: {exc}") from exc
