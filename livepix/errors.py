"""The SDK's errors (livepix/sdk/): one root, an `ApiError` leaf per error code of the
api, and the ways a task or a stream can end without a result.

    LivepixError
    ├── ApiError                  .code .status .details .retry_after_s
    │   ├── InvalidInputError     (InvalidJSONError)
    │   ├── UnauthorizedError, ForbiddenOriginError, NotFoundError, MethodNotAllowedError
    │   ├── NotReadyError, NoResultError, IdempotencyConflictError
    │   ├── PayloadTooLargeError, UnsupportedMediaTypeError, TooManyTasksError
    │   └── UnavailableError, InternalServerError
    ├── TaskFailedError           .code .message .task_id (a `failed` event)
    ├── TaskCancelledError        .task_id
    └── ConnectionLostError       .task_id .last_seq
"""

from __future__ import annotations

from typing import Any

from .wire import ErrorCode


class LivepixError(Exception):
    """Raised for every failure the SDK reports; the root of its errors."""


class ApiError(LivepixError):
    """Raised when the api answers with an error: `code` is its stable code, `status` the
    HTTP status, `details` the problems per field of an invalid input."""

    code: str = ""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int = 0,
        details: dict[str, list[str]] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or type(self).code
        self.status = status
        self.details = details or {}
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        text = f"{self.message} ({self.code or self.status})"
        for field, problems in self.details.items():
            text += f"\n  {field}: {'; '.join(problems)}"
        return text


class InvalidInputError(ApiError):
    """Raised when a submitted task or a resume point is invalid (400); see `details`."""

    code = ErrorCode.INVALID_INPUT.value


class InvalidJSONError(InvalidInputError):
    """Raised when the api could not read the request body as JSON (400)."""

    code = ErrorCode.INVALID_JSON.value


class UnauthorizedError(ApiError):
    """Raised when the api needs an API key the request lacks, or got a read-only stream
    token for a change (401; WebSocket close 1008)."""

    code = ErrorCode.UNAUTHORIZED.value


class ForbiddenOriginError(ApiError):
    """Raised when a WebSocket's Origin is not allowed (403)."""

    code = ErrorCode.FORBIDDEN_ORIGIN.value


class NotFoundError(ApiError):
    """Raised when a task is unknown, expired, or another key's (404)."""

    code = ErrorCode.NOT_FOUND.value


class MethodNotAllowedError(ApiError):
    """Raised when a path does not take the method (405)."""

    code = ErrorCode.METHOD_NOT_ALLOWED.value


class NotReadyError(ApiError):
    """Raised when a task's result is asked for before it finished (409)."""

    code = ErrorCode.NOT_READY.value


class NoResultError(ApiError):
    """Raised when the image of a failed or cancelled task is asked for (409)."""

    code = ErrorCode.NO_RESULT.value


class IdempotencyConflictError(ApiError):
    """Raised when an Idempotency-Key is sent again with another body (409)."""

    code = ErrorCode.IDEMPOTENCY_CONFLICT.value


class PayloadTooLargeError(ApiError):
    """Raised when a request body is over the api's limit (413)."""

    code = ErrorCode.PAYLOAD_TOO_LARGE.value


class UnsupportedMediaTypeError(ApiError):
    """Raised when a request body is not sent as JSON (415)."""

    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE.value


class TooManyTasksError(ApiError):
    """Raised when the key already has its cap of waiting tasks (429); retry after
    `retry_after_s`."""

    code = ErrorCode.TOO_MANY_TASKS.value


class UnavailableError(ApiError):
    """Raised when the api cannot reach its Redis (503) and retries did not help."""

    code = ErrorCode.UNAVAILABLE.value


class InternalServerError(ApiError):
    """Raised when the api failed on a request (500)."""

    code = ErrorCode.INTERNAL_ERROR.value


class TaskFailedError(LivepixError):
    """Raised by `run()` when the task ends `failed`: `code` says why (`model_unavailable`,
    `timeout`, ...), `message` in words."""

    def __init__(self, task_id: str, code: str, message: str) -> None:
        super().__init__(f"task {task_id} failed: {message} ({code})")
        self.task_id = task_id
        self.code = code
        self.message = message


class TaskCancelledError(LivepixError):
    """Raised by `run()` when the task ends `cancelled`."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} was cancelled")
        self.task_id = task_id


class ConnectionLostError(LivepixError):
    """Raised when the api cannot be reached, or a stream could not be resumed within the
    client's `reconnect_timeout_s`; `last_seq` is where a later `stream()` can resume."""

    def __init__(self, message: str, task_id: str | None = None, last_seq: int = 0) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.last_seq = last_seq


API_ERRORS: dict[str, type[ApiError]] = {
    cls.code: cls
    for cls in (
        InvalidInputError, InvalidJSONError, UnauthorizedError, ForbiddenOriginError,
        NotFoundError, MethodNotAllowedError, NotReadyError, NoResultError,
        IdempotencyConflictError, PayloadTooLargeError, UnsupportedMediaTypeError,
        TooManyTasksError, UnavailableError, InternalServerError,
    )
}
_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidInputError, 401: UnauthorizedError, 403: ForbiddenOriginError, 404: NotFoundError,
    405: MethodNotAllowedError, 413: PayloadTooLargeError, 415: UnsupportedMediaTypeError,
    429: TooManyTasksError, 500: InternalServerError, 503: UnavailableError,
}


def api_error(status: int, body: Any, retry_after: str | None = None) -> ApiError:
    """The error for an error answer: by its `code`, else by its HTTP status (a proxy's
    answer, or a code this SDK does not know yet: then a plain `ApiError`)."""
    if not isinstance(body, dict):
        body = {}
    code = body.get("code") if isinstance(body.get("code"), str) else None
    cls = API_ERRORS.get(code) if code else _BY_STATUS.get(status)
    details = body.get("details")
    try:
        retry_after_s = float(retry_after) if retry_after else None
    except ValueError:
        retry_after_s = None
    return (cls or ApiError)(
        str(body.get("error") or f"HTTP {status}"),
        code=code,
        status=status,
        details=details if isinstance(details, dict) else None,
        retry_after_s=retry_after_s,
    )
