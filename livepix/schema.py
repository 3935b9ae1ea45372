"""The contract as pydantic models: task requests and their parameters, events, answers.

One source for three things: the api validates submits with the request models
(app/validation.py turns their errors into the seed's `details`), app/openapi.py builds
its schemas from every model here, and the SDK (livepix/sdk/) returns them.

Request models are strict: unknown fields are refused and nothing is coerced (`true` is
not an integer, `"512"` is not a number); a field sent as `null` counts as left out.
Answer and event models are tolerant: unknown fields are kept (`model_extra`) and
optional fields may be missing, so that an SDK reads the answers of a newer server.

Enums, error codes and Redis names stay in livepix/wire.py. The workers do not import
this module: they read the validated task as plain JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from .images import ImageError, ImageLimits, decode_bytes, open_image
from .wire import (
    INPAINT_METHODS,
    STYLE_PRESETS,
    TERMINAL_EVENTS,
    ErrorCode,
    EventType,
    Queue,
    Status,
    TaskType,
)

MAX_PROMPT_CHARS = 5000
MAX_BOXES = 64
MAX_OUTPUTS = 4  # images one generation or style transfer makes at most
MIN_DEADLINE_S, MAX_DEADLINE_S = 1.0, 86_400.0
IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_PATTERN = r"^[\x20-\x7e]{1,200}$"  # 1-200 printable ASCII characters
HEX_COLOR_PATTERN = r"^#?([0-9a-fA-F]{6})([0-9a-fA-F]{2})?$"

BOXES_MESSAGE = (
    f"must be a list of at most {MAX_BOXES} boxes [x0, y0, x1, y1] with x0 < x1 and y0 < y1"
)
COLOR_MESSAGE = 'must be "#rrggbb", "#rrggbbaa" or a list of 3 or 4 integers 0-255'


@dataclass(frozen=True, slots=True)
class Says:
    """Field metadata: whatever is wrong with this field, the error says this one message
    (a color, a box list, a choice: one plain sentence beats pydantic's union details)."""

    message: str


def _one_of(options: tuple[str, ...]) -> AfterValidator:
    def check(value: str | None) -> str | None:
        if value is not None and value not in options:
            raise PydanticCustomError("choice", "not a choice")
        return value

    return AfterValidator(check)


def _choices(options: tuple[str, ...]) -> Says:
    return Says(f"must be one of: {', '.join(options)}")


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise PydanticCustomError("nul", "must not contain NUL characters")
    return value


def _rgba(value: str | list[int]) -> list[int]:
    if isinstance(value, str):
        digits = value.removeprefix("#")
        rgba = [int(digits[i : i + 2], 16) for i in range(0, len(digits), 2)]
        return rgba if len(rgba) == 4 else [*rgba, 255]
    return value if len(value) == 4 else [*value, 255]


def _ordered(box: list[int]) -> list[int]:
    if not (box[0] < box[2] and box[1] < box[3]):
        raise PydanticCustomError("box", "x0 < x1 and y0 < y1")
    return box


def _steps() -> Any:
    return Field(25, ge=1, le=150, description="Denoising steps.")


def _guidance() -> Any:
    return Field(7.5, ge=0.0, le=30.0, description="Classifier-free guidance scale.")


def _seed() -> Any:
    return Field(None, ge=0, le=2**32 - 1, description="Random seed; null picks one.")


Text = Annotated[str, AfterValidator(_no_nul)]
Channel = Annotated[int, Field(ge=0, le=255)]
Color = Annotated[
    Annotated[str, Field(pattern=HEX_COLOR_PATTERN)]
    | Annotated[list[Channel], Field(min_length=3, max_length=4)],
    AfterValidator(_rgba),
]
Box = Annotated[
    list[Annotated[int, Field(ge=0)]], Field(min_length=4, max_length=4), AfterValidator(_ordered)
]
_STYLES = tuple(STYLE_PRESETS)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# --- parameters ----------------------------------------------------------------------


def _num_outputs() -> Any:
    return Field(1, ge=1, le=MAX_OUTPUTS, description=(
        "Images to make, in one batch, with the seeds seed, seed+1, ...: the result's `images`."))


class ImageGenerationParameters(_Strict):
    width: int = Field(512, ge=64, le=2048, multiple_of=8, description="Output width in px.")
    height: int = Field(512, ge=64, le=2048, multiple_of=8, description="Output height in px.")
    steps: int = _steps()
    guidance_scale: float = _guidance()
    negative_prompt: Text = Field("", max_length=MAX_PROMPT_CHARS)
    seed: int | None = _seed()
    num_outputs: int = _num_outputs()


class FaceSwapParameters(_Strict):
    source_face_index: int = Field(0, ge=0, le=63, description="Which face of `image` to use.")
    target_face_index: int | None = Field(
        None, ge=0, le=63, description="Which face of `target_image` to replace; null: all."
    )


class StyleTransferParameters(_Strict):
    style: Annotated[str | None, _one_of(_STYLES), _choices(_STYLES)] = Field(
        None, description="A style preset.", json_schema_extra={"enum": [*STYLE_PRESETS, None]}
    )
    strength: float = Field(
        0.55, ge=0.05, le=1.0, description="How far the result may move from `image`."
    )
    steps: int = _steps()
    guidance_scale: float = _guidance()
    seed: int | None = _seed()
    num_outputs: int = _num_outputs()


class BackgroundRemovalParameters(_Strict):
    only_mask: bool = Field(False, description="Return the mask, not the cut-out.")
    alpha_matting: bool = Field(False, description="Refine the edges by alpha matting.")
    bgcolor: Annotated[Color | None, Says(COLOR_MESSAGE)] = Field(
        None, description='null: transparent; "#rrggbb[aa]" or [r, g, b(, a)] (kept as RGBA).'
    )


class ObjectRemovalParameters(_Strict):
    boxes: Annotated[list[Box] | None, Says(BOXES_MESSAGE)] = Field(
        None, min_length=1, max_length=MAX_BOXES,
        description="[x0, y0, x1, y1] each, with x0 < x1 and y0 < y1.",
    )
    dilate_px: int = Field(6, ge=0, le=64, description="Grow the mask by this many px.")
    method: Annotated[str, _one_of(INPAINT_METHODS), _choices(INPAINT_METHODS)] = Field(
        "auto", description="`telea`, `ns`: OpenCV; `lama`: LaMa; `auto`: LaMa when configured.",
        json_schema_extra={"enum": list(INPAINT_METHODS)},
    )


# --- task requests ---------------------------------------------------------------------


def _prompt(value: str) -> str:
    stripped = _no_nul(value).strip()
    if not stripped:
        raise PydanticCustomError("blank", "is required")
    return stripped


def _optional_prompt(value: str | None) -> str | None:
    return None if value is None or not value.strip() else _prompt(value)


def _image(value: str, info: ValidationInfo) -> str:
    """Decode the image fully when the api validates (its limits in the context), and
    keep its size for the checks across fields; pass it on without a `data:` prefix."""
    context = info.context
    if context is not None:
        limits: ImageLimits = context["limits"]
        try:
            with open_image(decode_bytes(value), limits) as image:
                context.setdefault("sizes", {})[info.field_name] = image.size
        except ImageError as exc:
            raise PydanticCustomError("invalid_image", "Invalid image: {reason}",
                                      {"reason": str(exc)}) from None
    return "".join(value.partition(",")[2].split()) if value.startswith("data:") else value


Prompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS), AfterValidator(_prompt)]
OptionalPrompt = Annotated[
    str | None, Field(max_length=MAX_PROMPT_CHARS), AfterValidator(_optional_prompt)
]
ImageData = Annotated[
    str,
    AfterValidator(_image),
    Field(description="Base64 PNG, JPEG or WebP; a `data:` URL prefix is accepted."),
]
BODY_FIELDS = ("prompt", "image", "target_image", "mask")


def _task_schema(title: str, either: tuple[str, str] | None = None) -> ConfigDict:
    """A task model's config: `task_type` has a default (Python callers need not repeat it)
    yet the document requires it, as the discriminator; `either`: a field, or a parameter
    standing in for it."""

    def extra(schema: dict[str, Any]) -> None:
        schema["required"] = ["task_type", *(f for f in schema.get("required", []) if f != "task_type")]
        if either is not None:
            field, parameter = either
            in_parameters = {"properties": {"parameters": {"required": [parameter]}}}
            schema["anyOf"] = [{"required": [field]}, {"required": ["parameters"], **in_parameters}]

    return ConfigDict(title=title, json_schema_extra=extra)


def _needs(field: str, message: str) -> PydanticCustomError:
    """An error about the task as a whole, reported under `field`."""
    return PydanticCustomError("needs", message, {"field": field})


class _Task(_Strict):
    deadline_s: float | None = Field(
        None, ge=MIN_DEADLINE_S, le=MAX_DEADLINE_S,
        description="Seconds from submit: a task not finished by then ends `failed` with "
        "code `timeout` (a waiting one at once, a running one at its next progress point).",
    )

    @model_validator(mode="before")
    @classmethod
    def _absent_when_null(cls, data: Any) -> Any:
        """`null` is the same as leaving a field out; so is a blank prompt for a task type
        that takes none (forms send empty fields)."""
        if not isinstance(data, dict):
            return data
        prompt = data.get("prompt")
        blank = isinstance(prompt, str) and "prompt" not in cls.model_fields and not prompt.strip()
        if blank or None in data.values():
            return {k: v for k, v in data.items() if v is not None and not (blank and k == "prompt")}
        return data


class ImageGenerationTask(_Task):
    """Runs on the `gpu` queue. Needs `prompt`."""

    model_config = _task_schema("image_generation")
    task_type: Literal[TaskType.IMAGE_GENERATION] = TaskType.IMAGE_GENERATION
    prompt: Prompt
    parameters: ImageGenerationParameters | None = None


class FaceSwapTask(_Task):
    """Runs on the `gpu` queue. `image`: the face to use; `target_image`: the picture to
    change."""

    model_config = _task_schema("face_swap")
    task_type: Literal[TaskType.FACE_SWAP] = TaskType.FACE_SWAP
    image: ImageData
    target_image: ImageData
    parameters: FaceSwapParameters | None = None


class StyleTransferTask(_Task):
    """Runs on the `gpu` queue. Needs `parameters.style` or `prompt`."""

    model_config = _task_schema("style_transfer", either=("prompt", "style"))
    task_type: Literal[TaskType.STYLE_TRANSFER] = TaskType.STYLE_TRANSFER
    image: ImageData
    prompt: OptionalPrompt = None
    parameters: StyleTransferParameters | None = None

    @model_validator(mode="after")
    def _style_or_prompt(self) -> Self:
        if not self.prompt and (self.parameters is None or not self.parameters.style):
            raise _needs("parameters.style", "A style preset or a prompt is required for style_transfer")
        return self


class BackgroundRemovalTask(_Task):
    """Runs on the `cpu` queue. Needs `image`."""

    model_config = _task_schema("background_removal")
    task_type: Literal[TaskType.BACKGROUND_REMOVAL] = TaskType.BACKGROUND_REMOVAL
    image: ImageData
    parameters: BackgroundRemovalParameters | None = None


class ObjectRemovalTask(_Task):
    """Runs on the `cpu` queue. Needs `mask` (white = remove) or `parameters.boxes`."""

    model_config = _task_schema("object_removal", either=("mask", "boxes"))
    task_type: Literal[TaskType.OBJECT_REMOVAL] = TaskType.OBJECT_REMOVAL
    image: ImageData
    mask: ImageData | None = None
    parameters: ObjectRemovalParameters | None = None

    @model_validator(mode="after")
    def _mask_or_boxes(self, info: ValidationInfo) -> Self:
        if self.mask is None and (self.parameters is None or self.parameters.boxes is None):
            raise _needs("mask", "A mask image or parameters.boxes is required for object_removal")
        sizes = (info.context or {}).get("sizes", {})
        if "image" in sizes and "mask" in sizes and sizes["image"] != sizes["mask"]:
            (mw, mh), (iw, ih) = sizes["mask"], sizes["image"]
            raise _needs("mask", f"The mask is {mw}x{mh} but the image is {iw}x{ih}")
        return self


Task = ImageGenerationTask | FaceSwapTask | StyleTransferTask | BackgroundRemovalTask | ObjectRemovalTask
TaskRequest = Annotated[Task, Field(discriminator="task_type")]
"""The body of a submit (and the `task` of a `/ws` submit op), by `task_type`."""

TASK_MODELS: dict[TaskType, type[Task]] = {
    TaskType.IMAGE_GENERATION: ImageGenerationTask,
    TaskType.FACE_SWAP: FaceSwapTask,
    TaskType.STYLE_TRANSFER: StyleTransferTask,
    TaskType.BACKGROUND_REMOVAL: BackgroundRemovalTask,
    TaskType.OBJECT_REMOVAL: ObjectRemovalTask,
}
PARAMETER_MODELS: dict[TaskType, type[_Strict]] = {
    TaskType.IMAGE_GENERATION: ImageGenerationParameters,
    TaskType.FACE_SWAP: FaceSwapParameters,
    TaskType.STYLE_TRANSFER: StyleTransferParameters,
    TaskType.BACKGROUND_REMOVAL: BackgroundRemovalParameters,
    TaskType.OBJECT_REMOVAL: ObjectRemovalParameters,
}


# --- answers ------------------------------------------------------------------------


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow")


def _enum_of(values: Any, default: Any = ...) -> Any:
    """A `str` field documented as an enum: a newer server may send a value this SDK
    does not know, and parsing must not fail on it."""
    return Field(default, json_schema_extra={"enum": [str(v) for v in values]})


def _documented(default: Any = ..., description: str | None = None, **schema: Any) -> Any:
    """A field whose bounds (`minimum`, `format`...) are documented, not checked: an
    answer slightly out of them must not break a client."""
    return Field(default, description=description, json_schema_extra=schema or None)


class TaskError(_Tolerant):
    """Why a task failed (`failed` events, GET result)."""

    code: str = _enum_of(ErrorCode)
    message: str = ""


class TaskResult(_Tolerant):
    """The `result` of GET result and of a `succeeded` event."""

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["image_data"]}, {"required": ["image_url"]}]}
    )
    status: str = Status.SUCCESS.value
    image_data: str | None = Field(
        None, description="Base64 PNG", json_schema_extra={"contentEncoding": "base64",
                                                           "contentMediaType": "image/png"})
    image_url: str | None = Field(
        None, description="Path of result.png, on streams opened with inline=0")
    prompt_used: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    images: list[str] | None = Field(
        None, description="Every output as base64 PNG (the first is `image_data`), when a task made several",
        json_schema_extra={"items": {"contentEncoding": "base64", "contentMediaType": "image/png"}})
    image_urls: list[str] | None = Field(
        None, description="Every output's result.png path, instead of `images`, on streams opened with inline=0")


class ErrorBody(_Tolerant):
    """Every error answer: a human message and a stable code; `details` for invalid input."""

    error: str
    code: str = _enum_of(ErrorCode)
    details: dict[str, list[str]] | None = Field(
        None, description="Problems per field (`parameters.<name>` for those).")


class Links(_Tolerant):
    """Paths of the task's endpoints."""

    status: str = ""
    result: str = ""
    result_png: str = ""
    events: str = ""
    ws: str = ""
    cancel: str = ""


class Submitted(_Tolerant):
    """The answer to a submit."""

    task_id: str = _documented(format="uuid")
    status: str = Status.PENDING.value
    message: str = ""
    position: int = _documented(1, minimum=1)
    links: Links | None = None
    stream_token: str | None = Field(
        None, description="With API keys on: a signed, read-only token for this task only, "
        "to pass as `?token=` on its streams and GETs")


class TaskStatus(_Tolerant):
    """A task's latest state."""

    task_id: str = _documented(format="uuid")
    task_type: str = _enum_of(TaskType)
    status: str = _enum_of(Status)
    progress: int = _documented(0, minimum=0, maximum=100)
    message: str = ""
    result_available: bool = False
    seq: int = _documented(0, "The last event's seq", minimum=0)
    position: int | None = _documented(None, "While PENDING", minimum=1)
    eta_s: float | None = Field(None, description="While PENDING, once run times are known")


class TaskOutcome(_Tolerant):
    """A finished task: its result, or why it has none."""

    task_id: str = _documented(format="uuid")
    status: str = _enum_of(Status)
    result: TaskResult | None = Field(None, description="When SUCCESS")
    error: TaskError | None = Field(None, description="When FAILURE, or REVOKED (code `cancelled`)")


class CancelResult(_Tolerant):
    task_id: str = _documented(format="uuid")
    status: str = _enum_of(Status)
    cancelled: bool


class QueueDepth(_Tolerant):
    pending: int
    running: int


class Queues(_Tolerant):
    """Queue depths, workers seen in the last 15 s, running tasks."""

    model_config = ConfigDict(json_schema_extra={
        "properties": {"queues": {"required": [q.value for q in Queue]}}})
    queues: dict[str, QueueDepth]
    workers: int
    running: int


# --- events ------------------------------------------------------------------------


class Event(_Tolerant):
    """One entry of a task's event log, the same over SSE and WebSocket. Parsed events are
    of the subclass of their `type`; a type this SDK does not know stays an `Event`."""

    task_id: str = _documented(format="uuid")
    seq: int = _documented(..., "1, 2, 3... per task", minimum=1)
    type: str
    status: str = _enum_of(Status)
    progress: int = _documented(0, minimum=0, maximum=100)
    message: str = ""
    ts: float = Field(0.0, description="Unix time, s")
    replaces: list[int] = Field(
        default_factory=list,
        description="Seqs this client will not get: progress coalesced (or not queued) for a "
        "slow client; never a gap otherwise")

    @property
    def terminal(self) -> bool:
        """Whether this is the task's last event."""
        return self.type in TERMINAL_EVENTS


class QueuedEvent(Event):
    """PENDING: re-sent when the position or the estimate moves, at most once a second."""

    type: Literal["queued"]
    position: int | None = _documented(None, "Place in the queue", minimum=1)
    eta_s: float | None = Field(None, description="Estimated seconds until the result")


class StartedEvent(Event):
    """PROCESSING: a worker took the task (a second one: re-run after its worker died)."""

    type: Literal["started"]
    worker: str | None = None
    queue: str | None = Field(None, description="`gpu` or `cpu`")


class ProgressEvent(Event):
    """PROCESSING, 0-99 %."""

    type: Literal["progress"]
    step: int | None = None
    total: int | None = None
    eta_s: float | None = Field(None, description="Estimated seconds left")
    preview: str | None = Field(
        None, description="Base64 JPEG, optional; live only: a replayed event may come "
        "without it", json_schema_extra={"contentEncoding": "base64", "contentMediaType": "image/jpeg"})


class SucceededEvent(Event):
    type: Literal["succeeded"]
    result: TaskResult


class FailedEvent(Event):
    type: Literal["failed"]
    error: TaskError


class CancelledEvent(Event):
    type: Literal["cancelled"]


AnyEvent = Annotated[
    QueuedEvent | StartedEvent | ProgressEvent | SucceededEvent | FailedEvent | CancelledEvent,
    Field(discriminator="type"),
]
"""Every event type, told apart by `type` (for the OpenAPI document)."""

EVENT_MODELS: dict[str, type[Event]] = {
    EventType.QUEUED.value: QueuedEvent,
    EventType.STARTED.value: StartedEvent,
    EventType.PROGRESS.value: ProgressEvent,
    EventType.SUCCEEDED.value: SucceededEvent,
    EventType.FAILED.value: FailedEvent,
    EventType.CANCELLED.value: CancelledEvent,
}


def parse_event(data: dict[str, Any]) -> Event:
    """An event object from a stream, as the model of its type (`Event` for a new type)."""
    return EVENT_MODELS.get(str(data.get("type")), Event).model_validate(data)
