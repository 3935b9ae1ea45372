"""Client-facing errors and their one mapping to JSON responses."""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from livepix.wire import ErrorCode

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Raised when a request cannot be served; the root of every client-facing error."""

    status_code = 400
    code = ErrorCode.INVALID_INPUT
    message = "Bad request"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.details = details
        self.headers = headers

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "code": self.code.value}
        if self.details is not None:
            body["details"] = self.details
        return body


class InvalidInputError(ApiError):
    """Raised when a submitted task fails validation."""

    message = "Invalid input"


class InvalidJSONError(ApiError):
    """Raised when a request body is not JSON."""

    code = ErrorCode.INVALID_JSON
    message = "The request body is not valid JSON"


class NotFoundError(ApiError):
    """Raised when a task is unknown, expired, or not the caller's."""

    status_code = 404
    code = ErrorCode.NOT_FOUND
    message = "Task not found"


class NotReadyError(ApiError):
    """Raised when a task's result is asked for before it finished."""

    status_code = 409
    code = ErrorCode.NOT_READY
    message = "The task has not finished yet"


class PayloadTooLargeError(ApiError):
    """Raised when a request body is over the configured limit."""

    status_code = 413
    code = ErrorCode.PAYLOAD_TOO_LARGE
    message = "The request body is too large"


class UnsupportedMediaTypeError(ApiError):
    """Raised when a request body is not sent as JSON."""

    status_code = 415
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE
    message = "Send the request body as application/json"


class UnauthorizedError(ApiError):
    """Raised when a request needs an API key it does not carry (or carries a read-only token)."""

    status_code = 401
    code = ErrorCode.UNAUTHORIZED
    message = "A valid API key is required"


class RetryLaterError(ApiError):
    """Raised when a request may succeed later; the answer says when (`Retry-After`)."""

    retry_after_s = 2

    def __init__(self, message: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s or self.retry_after_s)})


class TooManyTasksError(RetryLaterError):
    """Raised when an owner has its cap of waiting tasks."""

    status_code = 429
    code = ErrorCode.TOO_MANY_TASKS
    message = "Too many waiting tasks"
    retry_after_s = 5


class UnavailableError(RetryLaterError):
    """Raised when Redis cannot be reached; the client should retry later."""

    status_code = 503
    code = ErrorCode.UNAVAILABLE
    message = "The service is temporarily unavailable; retry shortly"


class StorageFullError(RetryLaterError):
    """Raised when Redis refuses writes (its maxmemory is reached); retry later."""

    status_code = 507
    code = ErrorCode.STORAGE_FULL
    message = "The service's storage is full; retry later"
    retry_after_s = 30


_HTTP_CODES = {
    404: (ErrorCode.NOT_FOUND, "Not found"),
    405: (ErrorCode.METHOD_NOT_ALLOWED, "Method not allowed"),
}


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code, message = _HTTP_CODES.get(exc.status_code, (ErrorCode.INVALID_INPUT, str(exc.detail)))
    return JSONResponse(
        {"error": message, "code": code.value}, status_code=exc.status_code, headers=exc.headers
    )


async def server_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"error": "Internal server error", "code": ErrorCode.INTERNAL_ERROR.value}, status_code=500
    )


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ApiError: api_error,
    HTTPException: http_error,
    Exception: server_error,
}
