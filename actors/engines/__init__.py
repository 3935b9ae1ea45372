"""Model engines: one per task type, loaded once per worker process and kept warm.

An engine turns an `EngineInput` into an `EngineOutput`, calling `report` at each
progress point (which is also where a cancel takes effect). Engines import their
model libraries lazily, so that importing this package stays cheap.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from livepix.config import Settings
from livepix.wire import TaskType

from ..errors import EngineUnavailableError, OutOfMemoryError, TaskFailedError, is_out_of_memory

log = logging.getLogger(__name__)


class Report(Protocol):
    def __call__(
        self,
        percent: float,
        message: str,
        *,
        step: int | None = None,
        total: int | None = None,
        preview: Callable[[], Image.Image | None] | None = None,
    ) -> None: ...


@dataclass(slots=True)
class EngineInput:
    """A task as an engine sees it: decoded images and validated parameters."""

    task_id: str
    prompt: str | None
    parameters: dict[str, Any]
    image: Image.Image | None = None
    target_image: Image.Image | None = None
    mask: Image.Image | None = None


@dataclass(slots=True)
class EngineOutput:
    """What an engine produced: the image and what the client should know about it."""

    image: Image.Image
    metadata: dict[str, Any] = field(default_factory=dict)
    prompt_used: str | None = None
    more: list[Image.Image] = field(default_factory=list)  # outputs after the first, if several

    @property
    def images(self) -> list[Image.Image]:
        return [self.image, *self.more]


class Engine(Protocol):
    """A loaded model that runs one task type."""

    def run(self, task: EngineInput, report: Report) -> EngineOutput: ...


SHARED_DIFFUSION = "diffusion"  # the slot of image generation and style transfer


def slot_of(task_type: TaskType) -> str:
    """The loaded model a task type uses: generation and style transfer share one."""
    if task_type in (TaskType.IMAGE_GENERATION, TaskType.STYLE_TRANSFER):
        return SHARED_DIFFUSION
    return task_type.value


@dataclass(slots=True)
class _Slot:
    """One loaded model and the engines built on it, with how many tasks use it now."""

    name: str
    engines: dict[TaskType, Engine] = field(default_factory=dict)
    model: Any = None  # the shared `Diffusion` of the diffusion slot
    users: int = 0


class Engines:
    """The engines of one worker process: each built on first use, then kept warm.

    Image generation and style transfer share one diffusion pipeline (one slot). The
    slots are kept in least-recently-used order: when a task runs out of memory (host or
    device) while other slots are loaded, `run` frees the least recently used one that no
    task is using and runs the task once more; it is loaded again on its next use.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._slots: OrderedDict[str, _Slot] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()  # guards _slots
        self._build_lock = threading.Lock()  # one model load at a time

    def loaded(self) -> list[str]:
        """The loaded slots, least recently used first."""
        with self._lock:
            return list(self._slots)

    def run(
        self, task_type: TaskType, task: Callable[[], EngineInput], report: Report
    ) -> EngineOutput:
        """Run a task (`task` builds its input: decoding is part of each attempt).

        On running out of memory with another idle slot loaded, the least recently used
        idle slot is freed and the task runs once more; out of memory again raises
        `OutOfMemoryError`. Progress may start over in the second attempt (the reporter
        keeps it from going backwards).
        """
        try:
            return self._attempt(task_type, task, report)
        except Exception as exc:
            with self._lock:
                can_free = self._idle_other(task_type) is not None
            if not can_free or not is_out_of_memory(exc):
                raise
            reason = describe(exc)
        # Out of the handler: the traceback, and the tensors its frames hold, are gone.
        freed = self.free_least_recent(task_type)
        if freed is None:  # another task took it meanwhile
            raise OutOfMemoryError(f"the worker ran out of memory ({reason})")
        log.warning(
            "%s ran out of memory (%s); freed the %s engine, retrying once",
            task_type.value, reason, freed,
        )
        report(1, f"Out of memory: freed the {freed} engine, retrying")
        try:
            output = self._attempt(task_type, task, report)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            message = describe(exc)
        else:
            output.metadata["out_of_memory_retry"] = {"freed": freed}
            return output
        free_memory()
        raise OutOfMemoryError(
            f"the worker ran out of memory again after freeing the {freed} engine (the least "
            f"recently used one) and retrying: {message}"
        )

    def _attempt(
        self, task_type: TaskType, task: Callable[[], EngineInput], report: Report
    ) -> EngineOutput:
        engine_input = task()
        with self.use(task_type, report) as engine:
            return engine.run(engine_input, report)

    @contextmanager
    def use(self, task_type: TaskType, report: Report) -> Iterator[Engine]:
        """The task type's engine, built first if needed; its slot is not freed meanwhile."""
        name = slot_of(task_type)
        engine = self._acquire(task_type)
        if engine is None:
            with self._build_lock:
                engine = self._acquire(task_type)
                if engine is None:
                    report(1, f"Preparing the {task_type.value} engine")
                    with self._lock:
                        existing = self._slots.get(name)
                        model = existing.model if existing is not None else None
                    engine, model = self._build(task_type, model, report)
                    with self._lock:
                        slot = self._slots.setdefault(name, _Slot(name))
                        slot.engines[task_type] = engine
                        slot.model = model
                        slot.users += 1
                        self._slots.move_to_end(name)
                    log.info("loaded the %s engine", task_type.value)
        try:
            yield engine
        finally:
            with self._lock:
                used = self._slots.get(name)
                if used is not None:
                    used.users -= 1
                    self._slots.move_to_end(name)  # last used now

    def _acquire(self, task_type: TaskType) -> Engine | None:
        with self._lock:
            slot = self._slots.get(slot_of(task_type))
            engine = slot.engines.get(task_type) if slot is not None else None
            if slot is not None and engine is not None:
                slot.users += 1
                self._slots.move_to_end(slot.name)
            return engine

    def _idle_other(self, task_type: TaskType) -> _Slot | None:
        """The least recently used loaded slot, other than the task's, that no task uses
        (call with the lock held)."""
        keep = slot_of(task_type)
        return next((s for s in self._slots.values() if s.name != keep and s.users == 0), None)

    def free_least_recent(self, task_type: TaskType) -> str | None:
        """Free the least recently used idle slot other than the task's; its name, or None."""
        with self._lock:
            victim = self._idle_other(task_type)
            if victim is None:
                return None
            del self._slots[victim.name]
        name = victim.name
        victim.engines.clear()
        victim.model = None
        del victim
        free_memory()
        log.info("freed the %s engine", name)
        return name

    def _build(self, task_type: TaskType, model: Any, report: Report) -> tuple[Engine, Any]:
        """A new engine for `task_type` (on the slot's shared `model`, if it has one)."""
        settings = self._settings
        if task_type is TaskType.BACKGROUND_REMOVAL:
            from .background import BackgroundRemover

            return BackgroundRemover.load(settings, report), None
        if task_type is TaskType.OBJECT_REMOVAL:
            from .inpaint import ObjectRemover

            return ObjectRemover(settings), None
        if task_type is TaskType.FACE_SWAP:
            from .faceswap import FaceSwapper

            return FaceSwapper.load(settings), None
        if task_type in (TaskType.IMAGE_GENERATION, TaskType.STYLE_TRANSFER):
            from .diffusion import Diffusion, ImageGenerator, StyleTransfer

            diffusion = model if model is not None else Diffusion.load(settings, report)
            if task_type is TaskType.IMAGE_GENERATION:
                return ImageGenerator(diffusion), diffusion
            return StyleTransfer(diffusion), diffusion
        raise EngineUnavailableError(
            f"{task_type.value} has no engine in this livepix release yet; the task was "
            "routed to the gpu queue and failed instead of waiting forever"
        )


def describe(exc: Exception) -> str:
    """A one-line account of an error for a task's message."""
    if isinstance(exc, TaskFailedError):
        return exc.message
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def free_memory() -> None:
    """Collect what dropped references left (tracebacks make cycles) and hand CUDA's cached
    blocks back to the driver; torch is not imported for it when no engine did."""
    gc.collect()
    if "torch" in sys.modules:
        from .device import free_cuda_memory

        free_cuda_memory()
