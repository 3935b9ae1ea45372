"""Model engines: one per task type, loaded once per worker process and kept warm.

An engine turns an `EngineInput` into an `EngineOutput`, calling `report` at each
progress point (which is also where a cancel takes effect). Engines import their
model libraries lazily, so that importing this package stays cheap.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from livepix.config import Settings
from livepix.wire import TaskType

from ..errors import EngineUnavailableError

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


class Engine(Protocol):
    """A loaded model that runs one task type."""

    def run(self, task: EngineInput, report: Report) -> EngineOutput: ...


class Engines:
    """The engines of one worker process: each built on first use, then reused.

    Image generation and style transfer share one diffusion pipeline.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._engines: dict[TaskType, Engine] = {}
        self._diffusion: Any = None
        self._lock = threading.Lock()

    def get(self, task_type: TaskType, report: Report) -> Engine:
        engine = self._engines.get(task_type)
        if engine is not None:
            return engine
        with self._lock:
            engine = self._engines.get(task_type)
            if engine is None:
                report(1, f"Preparing the {task_type.value} engine")
                engine = self._build(task_type, report)
                self._engines[task_type] = engine
                log.info("loaded the %s engine", task_type.value)
        return engine

    def _build(self, task_type: TaskType, report: Report) -> Engine:
        settings = self._settings
        if task_type is TaskType.BACKGROUND_REMOVAL:
            from .background import BackgroundRemover

            return BackgroundRemover.load(settings, report)
        if task_type is TaskType.OBJECT_REMOVAL:
            from .inpaint import ObjectRemover

            return ObjectRemover(settings)
        if task_type is TaskType.FACE_SWAP:
            from .faceswap import FaceSwapper

            return FaceSwapper.load(settings)
        if task_type in (TaskType.IMAGE_GENERATION, TaskType.STYLE_TRANSFER):
            from .diffusion import Diffusion, ImageGenerator, StyleTransfer

            if self._diffusion is None:
                self._diffusion = Diffusion.load(settings, report)
            if task_type is TaskType.IMAGE_GENERATION:
                return ImageGenerator(self._diffusion)
            return StyleTransfer(self._diffusion)
        raise EngineUnavailableError(
            f"{task_type.value} has no engine in this livepix release yet; the task was "
            "routed to the gpu queue and failed instead of waiting forever"
        )
