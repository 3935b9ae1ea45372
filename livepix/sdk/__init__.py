"""The livepix Python SDK: `Client` (blocking, httpx) and `AsyncClient` (asyncio), with
the same methods.

    from pathlib import Path
    from livepix.sdk import Client

    with Client("http://127.0.0.1:8000") as client:
        result = client.run(task_type="background_removal", image=Path("photo.png"))
        result.save("cutout.png")

- `submit(task)` queues a task and answers at once (`Submitted`). Every submit carries an
  `Idempotency-Key` (a new UUID unless given); a submit whose answer was lost (a network
  error, a 503) is sent again with the same key, so the api never queues it twice.
- `stream(task_id, since=0)` yields the task's events (`livepix.schema` models: one class
  per type) over SSE or a WebSocket. It resumes by `seq` across network errors and api
  restarts, each event exactly once and in order, until the terminal event; past
  `reconnect_timeout_s` without a connection it raises `ConnectionLostError`.
- `run(task)` submits, streams, and returns the `Result` (PNG bytes); a task that fails
  raises `TaskFailedError`, a cancelled one `TaskCancelledError`. `wait(task_id)` does
  the same for a task already submitted.
- `status()`, `result()`, `result_png()`, `cancel()`: the REST endpoints.

Errors: livepix/errors.py (`ApiError` and one subclass per error code). With an
`api_key` (or `LIVEPIX_API_KEY`), requests carry `Authorization: Bearer`; a client made
with a `stream_token` (read-only, one task: what submit answers when keys are on)
passes it as `?token=` and can read that task only.
"""

from .aio import AsyncClient
from .blocking import Client
from .common import Result, encode_image, output_paths, task_body

__all__ = ["AsyncClient", "Client", "Result", "encode_image", "output_paths", "task_body"]
