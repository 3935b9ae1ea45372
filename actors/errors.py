"""Why a task failed: each error carries the stable code its `failed` event shows."""

from __future__ import annotations

from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError

from livepix.wire import ErrorCode


class TaskFailedError(Exception):
    """Raised when a task cannot complete; the root of every task failure."""

    code: ErrorCode = ErrorCode.ENGINE_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelUnavailableError(TaskFailedError):
    """Raised when a model is not configured, not present, or cannot be fetched."""

    code = ErrorCode.MODEL_UNAVAILABLE


class EngineUnavailableError(TaskFailedError):
    """Raised when this worker has no engine for the task type."""

    code = ErrorCode.ENGINE_UNAVAILABLE


class InvalidImageError(TaskFailedError):
    """Raised when an input image cannot be decoded by the worker."""

    code = ErrorCode.INVALID_IMAGE


class NoFaceDetectedError(TaskFailedError):
    """Raised when a face swap finds no face in one of its images."""

    code = ErrorCode.NO_FACE_DETECTED


class OutOfMemoryError(TaskFailedError):
    """Raised when the device ran out of memory; its memory was freed before raising."""

    code = ErrorCode.OUT_OF_MEMORY


# What onnxruntime (face swap, background removal), CUDA, torch's CPU allocator ("can't
# allocate memory") and the C++ allocators say when memory runs out; none of them raises
# a type of its own that Python code could name.
OUT_OF_MEMORY_MESSAGES = (
    "out of memory",
    "failed to allocate memory",
    "can't allocate memory",
    "cannot allocate memory",
    "bad_alloc",
    "bad allocation",
)


def says_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(message in text for message in OUT_OF_MEMORY_MESSAGES)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` means that memory ran out (host or device), whoever raised it."""
    if isinstance(exc, (OutOfMemoryError, MemoryError)):
        return True
    return not isinstance(exc, TaskFailedError) and says_out_of_memory(exc)


def failure_of(exc: Exception) -> tuple[ErrorCode, str]:
    """The code and message of the `failed` event that `exc` ends its task with."""
    if isinstance(exc, TaskFailedError):
        return exc.code, exc.message
    if isinstance(exc, RedisOutOfMemoryError):
        return ErrorCode.STORAGE_FULL, "the service's storage is full (Redis refuses writes); retry later"
    if isinstance(exc, MemoryError):
        return ErrorCode.OUT_OF_MEMORY, "the worker ran out of memory"
    if says_out_of_memory(exc):  # onnxruntime, torch and native allocators
        return (
            ErrorCode.OUT_OF_MEMORY,
            f"the worker ran out of memory ({type(exc).__name__}: {str(exc)[:200]})",
        )
    return ErrorCode.ENGINE_ERROR, f"{type(exc).__name__}: {exc}"


class TaskCancelledError(Exception):
    """Raised at a progress point when the task's cancel was requested; not a failure."""


class TaskTimeoutError(Exception):
    """Raised at a progress point once the task's `deadline_s` has passed."""
