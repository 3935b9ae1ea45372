"""Validation of submitted tasks (SPEC section 3): shape, parameters with defaults, images.

Everything here runs before anything is queued. Errors are collected per field in the
seed's shape: `{"prompt": ["Prompt is required for image_generation"]}`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from livepix.images import ImageError, ImageLimits, decode_bytes, open_image
from livepix.wire import INPAINT_METHODS, STYLE_PRESETS, TaskType

MAX_PROMPT_CHARS = 5000
MIN_DEADLINE_S, MAX_DEADLINE_S = 1.0, 86_400.0
MAX_BOXES = 64
_HEX_COLOR = re.compile(r"^#?([0-9a-fA-F]{6})([0-9a-fA-F]{2})?$")
# JSON may escape a lone UTF-16 surrogate ("\ud800"); such a string cannot become UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")
NOT_UNICODE = "must be valid Unicode text (it holds a lone surrogate, \\ud800-\\udfff)"
MAX_DEPTH = 32  # nested arrays and objects; a task needs 4. Deeper values are refused
TOO_DEEP = f"must not nest arrays and objects more than {MAX_DEPTH} deep"


class ValidationError(Exception):
    """Raised when a submitted task is invalid; `details` maps each field to its problems."""

    def __init__(self, details: dict[str, list[str]]) -> None:
        super().__init__("Invalid input")
        self.details = details


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """A validated task: what the worker receives."""

    task_type: TaskType
    prompt: str | None
    image: str | None
    target_image: str | None
    mask: str | None
    parameters: dict[str, Any]
    deadline_s: float | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "task_type": self.task_type.value,
            "prompt": self.prompt,
            "image": self.image,
            "target_image": self.target_image,
            "mask": self.mask,
            "parameters": self.parameters,
        }


class _Errors:
    def __init__(self) -> None:
        self.details: dict[str, list[str]] = {}

    def add(self, field: str, message: str) -> None:
        self.details.setdefault(field, []).append(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# A parameter spec: default and a checker returning (value, error message or None).
Checker = Callable[[Any], tuple[Any, str | None]]


def _int_range(lo: int, hi: int, multiple_of: int = 1) -> Checker:
    def check(value: Any) -> tuple[Any, str | None]:
        if not _is_int(value):
            return value, "must be an integer"
        if not lo <= value <= hi:
            return value, f"must be between {lo} and {hi}"
        if value % multiple_of:
            return value, f"must be a multiple of {multiple_of}"
        return value, None

    return check


def _float_range(lo: float, hi: float) -> Checker:
    def check(value: Any) -> tuple[Any, str | None]:
        if not _is_number(value):
            return value, "must be a number"
        if not lo <= value <= hi:
            return value, f"must be between {lo} and {hi}"
        return float(value), None

    return check


def _optional(checker: Checker) -> Checker:
    def check(value: Any) -> tuple[Any, str | None]:
        return (None, None) if value is None else checker(value)

    return check


def _bool(value: Any) -> tuple[Any, str | None]:
    return (value, None) if isinstance(value, bool) else (value, "must be true or false")


def _text(max_chars: int) -> Checker:
    def check(value: Any) -> tuple[Any, str | None]:
        if not isinstance(value, str):
            return value, "must be a string"
        if "\x00" in value:
            return value, "must not contain NUL characters"
        if len(value) > max_chars:
            return value, f"must be at most {max_chars} characters"
        return value, None

    return check


def _choice(options: tuple[str, ...]) -> Checker:
    def check(value: Any) -> tuple[Any, str | None]:
        if value not in options:
            return value, f"must be one of: {', '.join(options)}"
        return value, None

    return check


def _color(value: Any) -> tuple[Any, str | None]:
    """A color as [r, g, b], [r, g, b, a] or "#rrggbb[aa]"; normalized to [r, g, b, a]."""
    if isinstance(value, str):
        match = _HEX_COLOR.match(value)
        if not match:
            return value, 'must be "#rrggbb", "#rrggbbaa" or a list of 3 or 4 integers 0-255'
        rgb = [int(match.group(1)[i : i + 2], 16) for i in (0, 2, 4)]
        alpha = int(match.group(2), 16) if match.group(2) else 255
        return [*rgb, alpha], None
    if (
        isinstance(value, list)
        and len(value) in (3, 4)
        and all(_is_int(c) and 0 <= c <= 255 for c in value)
    ):
        return (value if len(value) == 4 else [*value, 255]), None
    return value, 'must be "#rrggbb", "#rrggbbaa" or a list of 3 or 4 integers 0-255'


def _boxes(value: Any) -> tuple[Any, str | None]:
    message = f"must be a list of at most {MAX_BOXES} boxes [x0, y0, x1, y1] with x0 < x1 and y0 < y1"
    if not isinstance(value, list) or not 0 < len(value) <= MAX_BOXES:
        return value, message
    for box in value:
        if not (
            isinstance(box, list) and len(box) == 4 and all(_is_int(c) and c >= 0 for c in box)
        ):
            return value, message
        if not (box[0] < box[2] and box[1] < box[3]):
            return value, message
    return value, None


_SEED = _optional(_int_range(0, 2**32 - 1))
_STEPS = _int_range(1, 150)

PARAMETERS: dict[TaskType, dict[str, tuple[Any, Checker]]] = {
    TaskType.IMAGE_GENERATION: {
        "width": (512, _int_range(64, 2048, 8)),
        "height": (512, _int_range(64, 2048, 8)),
        "steps": (25, _STEPS),
        "guidance_scale": (7.5, _float_range(0.0, 30.0)),
        "negative_prompt": ("", _text(MAX_PROMPT_CHARS)),
        "seed": (None, _SEED),
    },
    TaskType.FACE_SWAP: {
        "source_face_index": (0, _int_range(0, 63)),
        "target_face_index": (None, _optional(_int_range(0, 63))),
    },
    TaskType.STYLE_TRANSFER: {
        "style": (None, _optional(_choice(tuple(STYLE_PRESETS)))),
        "strength": (0.55, _float_range(0.05, 1.0)),
        "steps": (25, _STEPS),
        "guidance_scale": (7.5, _float_range(0.0, 30.0)),
        "seed": (None, _SEED),
    },
    TaskType.BACKGROUND_REMOVAL: {
        "only_mask": (False, _bool),
        "alpha_matting": (False, _bool),
        "bgcolor": (None, _optional(_color)),
    },
    TaskType.OBJECT_REMOVAL: {
        "boxes": (None, _optional(_boxes)),
        "dilate_px": (6, _int_range(0, 64)),
        "method": ("auto", _choice(INPAINT_METHODS)),
    },
}

_IMAGE_FIELDS = {
    TaskType.IMAGE_GENERATION: (),
    TaskType.FACE_SWAP: ("image", "target_image"),
    TaskType.STYLE_TRANSFER: ("image",),
    TaskType.BACKGROUND_REMOVAL: ("image",),
    TaskType.OBJECT_REMOVAL: ("image",),
}


def validate_task(body: Any, limits: ImageLimits) -> TaskRequest:
    """Check a submit body and return the normalized task, or raise `ValidationError`.

    Decodes every image fully (this is CPU work: call it from a thread).
    """
    errors = _Errors()
    if not isinstance(body, dict):
        raise ValidationError({"non_field_errors": ["The request body must be a JSON object"]})
    _check_json(body)

    raw_type = body.get("task_type")
    try:
        task_type = TaskType(str(raw_type))
    except ValueError:
        if raw_type is None:
            errors.add("task_type", "This field is required")
        else:
            choices = ", ".join(t.value for t in TaskType)
            errors.add("task_type", f'"{_shown(raw_type)}" is not a valid choice; choose one of: {choices}')
        raise ValidationError(errors.details) from None

    known = {"task_type", "prompt", "image", "target_image", "mask", "parameters", "deadline_s"}
    for extra in sorted(set(body) - known):
        errors.add(extra, "Unknown field")

    prompt = _validate_prompt(task_type, body.get("prompt"), errors)
    deadline_s, problem = _optional(_float_range(MIN_DEADLINE_S, MAX_DEADLINE_S))(body.get("deadline_s"))
    if problem:
        errors.add("deadline_s", f"deadline_s {problem} (seconds)")
    parameters = _validate_parameters(task_type, body.get("parameters"), errors)

    images: dict[str, str | None] = {"image": None, "target_image": None, "mask": None}
    sizes: dict[str, tuple[int, int]] = {}
    wanted = _IMAGE_FIELDS[task_type] + (("mask",) if task_type is TaskType.OBJECT_REMOVAL else ())
    for name in ("image", "target_image", "mask"):
        value = body.get(name)
        if value is None:
            if name in _IMAGE_FIELDS[task_type]:
                errors.add(name, f"An image is required for {task_type.value}")
            continue
        if name not in wanted:
            errors.add(name, f"{task_type.value} takes no {name}")
            continue
        if not isinstance(value, str):
            errors.add(name, "must be a base64 string")
            continue
        try:
            raw = decode_bytes(value)
            with open_image(raw, limits) as image:
                sizes[name] = image.size
        except ImageError as exc:
            errors.add(name, f"Invalid image: {exc}")
            continue
        images[name] = "".join(value.partition(",")[2].split()) if value.startswith("data:") else value

    if task_type is TaskType.STYLE_TRANSFER and not prompt and not parameters.get("style"):
        errors.add("parameters.style", "A style preset or a prompt is required for style_transfer")
    if task_type is TaskType.OBJECT_REMOVAL:
        if body.get("mask") is None and parameters.get("boxes") is None:
            errors.add("mask", "A mask image or parameters.boxes is required for object_removal")
        elif "image" in sizes and "mask" in sizes and sizes["image"] != sizes["mask"]:
            errors.add("mask", f"The mask is {_wh(sizes['mask'])} but the image is {_wh(sizes['image'])}")

    if errors.details:
        raise ValidationError(errors.details)
    return TaskRequest(
        task_type=task_type,
        prompt=prompt,
        image=images["image"],
        target_image=images["target_image"],
        mask=images["mask"],
        parameters=parameters,
        deadline_s=deadline_s,
    )


def json_problem(value: Any) -> str | None:
    """What makes parsed JSON `value` unsafe to store or echo back, if anything: a string
    (or key) that cannot be UTF-8, or nesting deeper than `MAX_DEPTH`."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:  # no recursion: the value may be nested as deep as the parser allows
        item, depth = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return NOT_UNICODE
        elif isinstance(item, (dict, list)):
            if depth >= MAX_DEPTH:
                return TOO_DEEP
            children = [*item, *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return None


def _check_json(body: dict[str, Any]) -> None:
    """Refuse what could not be echoed in an error or stored, before anything else."""
    details: dict[str, list[str]] = {}
    for name, value in body.items():
        if json_problem(name):
            details["non_field_errors"] = [f"Field names {NOT_UNICODE}"]
        elif problem := json_problem(value):
            details[name] = [problem]
    if details:
        raise ValidationError(details)


def _shown(value: Any, limit: int = 60) -> str:
    """`value` as echoed in an error message: never more than `limit` characters of it."""
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _wh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _validate_prompt(task_type: TaskType, value: Any, errors: _Errors) -> str | None:
    takes_prompt = task_type in (TaskType.IMAGE_GENERATION, TaskType.STYLE_TRANSFER)
    if value is None or (isinstance(value, str) and not value.strip()):
        if task_type is TaskType.IMAGE_GENERATION:
            errors.add("prompt", "Prompt is required for image_generation")
        return None
    if not takes_prompt:
        errors.add("prompt", f"{task_type.value} takes no prompt")
        return None
    if not isinstance(value, str):
        errors.add("prompt", "Prompt must be a string")
        return None
    if "\x00" in value:
        errors.add("prompt", "Prompt must not contain NUL characters")
        return None
    if len(value) > MAX_PROMPT_CHARS:
        errors.add("prompt", f"Prompt must be at most {MAX_PROMPT_CHARS} characters")
        return None
    return value.strip()


def _validate_parameters(task_type: TaskType, value: Any, errors: _Errors) -> dict[str, Any]:
    spec = PARAMETERS[task_type]
    if value is None:
        value = {}
    if not isinstance(value, dict):
        errors.add("parameters", "must be a JSON object")
        value = {}
    result: dict[str, Any] = {}
    for name in sorted(set(value) - set(spec)):
        errors.add(f"parameters.{name}", f"Unknown parameter for {task_type.value}")
    for name, (default, check) in spec.items():
        if name not in value:
            result[name] = default
            continue
        checked, problem = check(value[name])
        if problem:
            errors.add(f"parameters.{name}", f"{name} {problem}")
        else:
            result[name] = checked
    return result
