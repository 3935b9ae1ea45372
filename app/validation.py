"""Validation of submitted tasks (SPEC section 3): the models of livepix/schema.py, and
their errors told in the seed's shape.

Everything here runs before anything is queued. Errors are collected per field:
`{"prompt": ["Prompt is required for image_generation"]}`, `parameters.<name>` for a
parameter, `non_field_errors` for the body as a whole. Clients show these messages
next to their form fields, so they are part of the contract: pydantic's own wording
(`Input should be a valid integer`) is translated here, once, for every model field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import annotated_types
import pydantic
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from livepix.images import ImageLimits
from livepix.schema import BODY_FIELDS, MAX_PROMPT_CHARS, PARAMETER_MODELS, TASK_MODELS, Says
from livepix.wire import TaskType

# JSON may escape a lone UTF-16 surrogate ("\ud800"); such a string cannot become UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")
NOT_UNICODE = "must be valid Unicode text (it holds a lone surrogate, \\ud800-\\udfff)"
MAX_DEPTH = 32  # nested arrays and objects; a task needs 4. Deeper values are refused
TOO_DEEP = f"must not nest arrays and objects more than {MAX_DEPTH} deep"

# A task's parameters with every default, per task type: copied for a task sent without.
_DEFAULTS = {task_type: model().model_dump() for task_type, model in PARAMETER_MODELS.items()}


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


def validate_task(body: Any, limits: ImageLimits) -> TaskRequest:
    """Check a submit body and return the normalized task, or raise `ValidationError`.

    Decodes every image fully (this is CPU work: call it from a thread when it is big).
    """
    if not isinstance(body, dict):
        raise ValidationError({"non_field_errors": ["The request body must be a JSON object"]})
    _check_json(body)
    raw_type = body.get("task_type")
    try:
        task_type = TaskType(str(raw_type))
    except ValueError:
        if raw_type is None:
            raise ValidationError({"task_type": ["This field is required"]}) from None
        choices = ", ".join(t.value for t in TaskType)
        message = f'"{_shown(raw_type)}" is not a valid choice; choose one of: {choices}'
        raise ValidationError({"task_type": [message]}) from None
    try:
        task = TASK_MODELS[task_type].model_validate(body, strict=True, context={"limits": limits})
    except pydantic.ValidationError as exc:
        raise ValidationError(_details(task_type, exc)) from None
    fields = vars(task)  # not getattr: a field this task type lacks costs an exception
    parameters = task.parameters
    return TaskRequest(
        task_type=task_type,
        prompt=fields.get("prompt"),
        image=fields.get("image"),
        target_image=fields.get("target_image"),
        mask=fields.get("mask"),
        parameters=dict(_DEFAULTS[task_type]) if parameters is None else parameters.model_dump(),
        deadline_s=task.deadline_s,
    )


def _details(task_type: TaskType, exc: pydantic.ValidationError) -> dict[str, list[str]]:
    details: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False):
        field, message = _told(task_type, error)
        messages = details.setdefault(field, [])
        if message not in messages:  # a union (a color) fails once per member
            messages.append(message)
    return details


def _told(task_type: TaskType, error: ErrorDetails) -> tuple[str, str]:
    """(the `details` key, the message) of one pydantic error."""
    loc, kind, name = error["loc"], error["type"], task_type.value
    if not loc:  # a check across fields names the field it reports under
        return str((error.get("ctx") or {})["field"]), error["msg"]
    field = str(loc[0])
    if field == "parameters":
        if len(loc) == 1:
            return field, "must be a JSON object"
        parameter = str(loc[1])
        known = PARAMETER_MODELS[task_type].model_fields
        if kind == "extra_forbidden" or parameter not in known:
            return f"parameters.{parameter}", f"Unknown parameter for {name}"
        return f"parameters.{parameter}", f"{parameter} {_problem(known[parameter], error)}"
    if kind == "extra_forbidden":
        return field, f"{name} takes no {field}" if field in BODY_FIELDS else "Unknown field"
    if field == "prompt":
        return field, _prompt_problem(name, error)
    if field in BODY_FIELDS:  # an image
        if kind == "missing":
            return field, f"An image is required for {name}"
        return field, "must be a base64 string" if kind == "string_type" else error["msg"]
    problem = _problem(TASK_MODELS[task_type].model_fields[field], error)
    return field, f"{field} {problem}" + (" (seconds)" if field.endswith("_s") else "")


def _prompt_problem(task_type: str, error: ErrorDetails) -> str:
    kind = error["type"]
    if kind in ("missing", "blank", "string_too_short"):
        return f"Prompt is required for {task_type}"
    if kind == "string_type":
        return "Prompt must be a string"
    if kind == "string_too_long":
        return f"Prompt must be at most {MAX_PROMPT_CHARS} characters"
    return f"Prompt {error['msg']}"


_RANGE_ERRORS = frozenset({"greater_than_equal", "less_than_equal", "greater_than", "less_than"})
_TYPE_ERRORS = {
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "float_type": "must be a number",
}


def _problem(field: FieldInfo, error: ErrorDetails) -> str:
    """What is wrong with a value of `field`, in the words of the seed's validators."""
    for item in field.metadata:
        if isinstance(item, Says):
            return item.message
    kind, value = error["type"], error.get("input")
    lo, hi = _bound(field, annotated_types.Ge), _bound(field, annotated_types.Le)
    # A float field refuses an int past its range as not a float; pydantic checks
    # `multiple_of` before the range: the range is what the user needs to hear.
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    out_of_range = number and lo is not None and hi is not None and not lo <= value <= hi
    if kind in _RANGE_ERRORS or (out_of_range and kind in ("float_type", "multiple_of")):
        return f"must be between {lo} and {hi}"
    if kind in _TYPE_ERRORS:
        return _TYPE_ERRORS[kind]
    ctx = error.get("ctx") or {}
    if kind == "multiple_of":
        return f"must be a multiple of {ctx['multiple_of']}"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    return error["msg"]  # the checks of livepix/schema.py say their own words


def _bound(field: FieldInfo, kind: type[annotated_types.Ge | annotated_types.Le]) -> Any:
    for item in field.metadata:
        if isinstance(item, kind):
            return item.ge if isinstance(item, annotated_types.Ge) else item.le
    return None


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
