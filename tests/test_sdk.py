"""The Python SDK (livepix/sdk/) against real api and worker processes: run() per CPU
task type with both clients and both transports, streams that survive an api restart,
typed errors for real error answers, stream tokens, and the Idempotency-Key of a submit
sent again after its answer was lost."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from livepix.errors import (
    ConnectionLostError,
    InvalidInputError,
    NoResultError,
    NotFoundError,
    NotReadyError,
    TaskCancelledError,
    TaskFailedError,
    UnauthorizedError,
)
from livepix.schema import (
    BackgroundRemovalTask,
    Event,
    ObjectRemovalParameters,
    ObjectRemovalTask,
    ProgressEvent,
    QueuedEvent,
    StartedEvent,
    SucceededEvent,
)
from livepix.sdk import AsyncClient, Client, Result, encode_image
from livepix.sdk.common import _Resume
from tests.clients import gradient, png, slow_removal, two_tone
from tests.conftest import RedisServer, Stack, fresh_stack

KEY_A, KEY_B = "key-alice-0123456789", "key-bob-9876543210"


def picture(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    two_tone().save(path)
    return path


def opened(result: Result) -> Image.Image:
    assert result.png[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(result.png))
    image.load()
    return image


def seqs(events: list[Event]) -> list[int]:
    return [event.seq for event in events]


# --- run() for each CPU task type, both clients, both transports --------------------------


def run_sync(base: str, transport: str, task: Any = None, **fields: Any) -> tuple[Result, list[Event]]:
    events: list[Event] = []
    with Client(base) as client:
        result = client.run(task, transport=transport, on_event=events.append, **fields)  # type: ignore[arg-type]
    return result, events


def run_async(base: str, transport: str, task: Any = None, **fields: Any) -> tuple[Result, list[Event]]:
    events: list[Event] = []

    async def seen(event: Event) -> None:  # a coroutine callback works too
        events.append(event)

    async def main() -> Result:
        async with AsyncClient(base) as client:
            return await client.run(task, transport=transport, on_event=seen, **fields)  # type: ignore[arg-type]

    return asyncio.run(main()), events


RUNNERS: dict[str, Callable[..., tuple[Result, list[Event]]]] = {"sync": run_sync, "async": run_async}


@pytest.mark.parametrize(("client", "transport"), [("sync", "sse"), ("sync", "ws"), ("async", "sse"), ("async", "ws")])
def test_run_removes_the_background_and_returns_the_png(
    stack: Stack, tmp_path: Path, client: str, transport: str
) -> None:
    result, events = RUNNERS[client](stack.url, transport, task_type="background_removal",
                                     image=picture(tmp_path))
    image = opened(result)
    assert image.mode == "RGBA" and image.size == (96, 64)
    assert image.getpixel((1, 1))[3] < 10 and image.getpixel((48, 32))[3] > 245
    assert seqs(events) == list(range(1, len(events) + 1))
    assert isinstance(events[0], QueuedEvent) and isinstance(events[-1], SucceededEvent)
    assert any(isinstance(e, StartedEvent) and e.queue == "cpu" for e in events)
    assert all(e.task_id == result.task_id for e in events)
    (saved,) = result.save(tmp_path / "out.png")
    assert saved == tmp_path / "out.png" and saved.read_bytes() == result.png == result.images[0]


@pytest.mark.parametrize(("client", "transport"), [("sync", "ws"), ("async", "sse")])
def test_run_removes_an_object_given_as_a_model(stack: Stack, client: str, transport: str) -> None:
    task = ObjectRemovalTask(image=encode_image(png(two_tone())),
                             parameters=ObjectRemovalParameters(boxes=[[10, 10, 40, 30]], method="ns"))
    result, events = RUNNERS[client](stack.url, transport, task)
    assert opened(result).size == (96, 64)
    assert result.metadata["method"] == "ns"
    assert any(isinstance(e, ProgressEvent) for e in events)
    assert isinstance(events[-1], SucceededEvent) and events[-1].result.metadata == result.metadata


def test_a_task_given_as_raw_bytes_or_a_mapping(stack: Stack) -> None:
    with Client(stack.url) as client:
        submitted = client.submit({"task_type": "background_removal", "image": png(two_tone())})
        assert submitted.status == "PENDING" and submitted.links is not None
        result = client.wait(submitted.task_id)
        assert client.result_png(submitted.task_id) == result.png
        outcome = client.result(submitted.task_id)
        assert outcome.status == "SUCCESS" and outcome.result is not None
        assert client.status(submitted.task_id).result_available is True
        again = client.run(BackgroundRemovalTask(image=encode_image(png(two_tone()))))
        assert opened(again).mode == "RGBA"


# --- streams across an api restart ----------------------------------------------------------


@pytest.mark.parametrize(("client", "transport"), [("sync", "sse"), ("async", "ws")])
def test_stream_survives_an_api_restart_mid_task_with_contiguous_seqs(
    new_stack: Stack, client: str, transport: str
) -> None:
    base = new_stack.add_api()
    new_stack.add_worker("cpu", threads=1)
    events: list[tuple[float, Event]] = []
    first = threading.Event()
    failures: list[BaseException] = []

    def seen(event: Event) -> None:
        events.append((time.monotonic(), event))
        first.set()

    def watch_sync() -> None:
        with Client(base) as sync:
            sync.submit(slow_removal())  # keeps the worker busy while the api restarts
            for event in sync.stream(sync.submit(slow_removal()).task_id, transport=transport):  # type: ignore[arg-type]
                seen(event)

    async def watch_async() -> None:
        async with AsyncClient(base) as aio:
            await aio.submit(slow_removal())
            task_id = (await aio.submit(slow_removal())).task_id
            async with aclosing(aio.stream(task_id, transport=transport)) as stream:  # type: ignore[arg-type]
                async for event in stream:
                    seen(event)

    def watch() -> None:
        try:
            watch_sync() if client == "sync" else asyncio.run(watch_async())
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            failures.append(exc)
            first.set()

    # The watcher runs in a thread: the api must be restarted from this one, whose
    # children live as long as it does (they get SIGTERM when their parent thread ends).
    watcher = threading.Thread(target=watch)
    watcher.start()
    assert first.wait(60)
    new_stack.restart_api(base)
    restarted = time.monotonic()
    watcher.join(120)
    assert not watcher.is_alive() and not failures, failures
    received = [event for _, event in events]
    assert seqs(received) == list(range(1, len(received) + 1))
    assert isinstance(received[-1], SucceededEvent)
    assert events[-1][0] > restarted, "the task ended before the api came back"


def test_stream_resumes_after_a_given_seq(stack: Stack) -> None:
    with Client(stack.url) as client:
        task_id = client.submit(task_type="background_removal", image=png(two_tone())).task_id
        everything = list(client.stream(task_id))
        rest = list(client.stream(task_id, since=2, transport="ws"))
    assert seqs(rest) == seqs(everything)[2:] and rest[-1].terminal


def test_a_coalesced_progress_event_is_no_gap(caplog: pytest.LogCaptureFixture) -> None:
    resume = _Resume("t", 3, give_up_s=10)

    def event(seq: int, **extra: Any) -> ProgressEvent:
        return ProgressEvent(task_id="t", seq=seq, type="progress", status="PROCESSING", **extra)

    with caplog.at_level(logging.WARNING, logger="livepix.sdk"):
        assert resume.fresh(event(6, replaces=[4, 5]))
        assert not caplog.records
        assert not resume.fresh(event(5)) and resume.last == 6  # never twice
        assert resume.fresh(event(9))  # 7 and 8 lost, not coalesced: said, not hidden
    assert "7-8 never arrived" in caplog.text


# --- typed errors for real error answers ------------------------------------------------------


def test_invalid_input_not_found_and_failed_tasks_raise_typed_errors(stack: Stack) -> None:
    with Client(stack.url) as client:
        with pytest.raises(InvalidInputError) as invalid:
            client.submit(task_type="image_generation", parameters={"width": 13})
        assert invalid.value.status == 400 and invalid.value.code == "invalid_input"
        assert invalid.value.details["prompt"] == ["Prompt is required for image_generation"]
        assert invalid.value.details["parameters.width"] == ["width must be between 64 and 2048"]
        unknown = str(uuid.uuid4())
        with pytest.raises(NotFoundError) as missing:
            client.status(unknown)
        assert missing.value.status == 404 and str(missing.value) == "Task not found (not_found)"
        for transport in ("sse", "ws"):
            with pytest.raises(NotFoundError):
                next(client.stream(unknown, transport=transport))  # type: ignore[arg-type]
        with pytest.raises(TaskFailedError) as failed:
            client.run(task_type="image_generation", prompt="a fox")  # no model in the data dir
        assert failed.value.code == "model_unavailable" and failed.value.message


def test_the_async_client_raises_the_same_errors(stack: Stack) -> None:
    async def main() -> None:
        async with AsyncClient(stack.url) as client:
            with pytest.raises(InvalidInputError) as invalid:
                await client.submit(task_type="background_removal", image="not base64!")
            assert "image" in invalid.value.details
            with pytest.raises(NotFoundError):
                await client.cancel(str(uuid.uuid4()))
            for transport in ("sse", "ws"):
                with pytest.raises(NotFoundError):
                    await anext(client.stream(str(uuid.uuid4()), transport=transport))  # type: ignore[arg-type]

    asyncio.run(main())


def test_waiting_cancelled_and_unreachable(new_stack: Stack) -> None:
    base = new_stack.add_api()  # no worker: the task waits
    with Client(base) as client:
        task_id = client.submit(task_type="background_removal", image=png(two_tone())).task_id
        with pytest.raises(NotReadyError):
            client.result(task_id)
        assert client.cancel(task_id).cancelled is True
        with pytest.raises(TaskCancelledError):
            client.wait(task_id, transport="ws")
        with pytest.raises(NoResultError):
            client.result_png(task_id)
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{unused.getsockname()[1]}"
    with Client(nobody, submit_retries=1) as client, pytest.raises(ConnectionLostError):
        client.submit(task_type="background_removal", image=png(two_tone()))
    with Client(nobody, reconnect_timeout_s=0.5) as client, pytest.raises(ConnectionLostError) as lost:
        list(client.stream(str(uuid.uuid4()), since=3))
    assert lost.value.last_seq == 3


# --- API keys and stream tokens -----------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(redis_server: RedisServer, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = fresh_stack(redis_server, data_dir, tmp_path_factory.mktemp("sdk-keys"))
    stack.env.update(LIVEPIX_API_KEYS=f"{KEY_A},{KEY_B}")
    try:
        stack.add_api()
        stack.add_worker("cpu")
        yield stack
    finally:
        stack.stop()


def test_api_keys_and_read_only_stream_tokens(keyed: Stack) -> None:
    base = keyed.url
    with Client(base, api_key=KEY_A) as alice:
        submitted = alice.submit(task_type="background_removal", image=png(two_tone()))
        assert submitted.stream_token
        by_key = alice.wait(submitted.task_id, transport="ws")
    for transport in ("sse", "ws"):
        with Client(base, stream_token=submitted.stream_token) as reader:
            result = reader.wait(submitted.task_id, transport=transport)  # type: ignore[arg-type]
            assert result.png == by_key.png
            assert reader.status(submitted.task_id).status == "SUCCESS"
    with Client(base, stream_token=submitted.stream_token) as reader:
        with pytest.raises(UnauthorizedError):
            reader.cancel(submitted.task_id)  # read-only
        with pytest.raises(UnauthorizedError):
            reader.submit(task_type="background_removal", image=png(two_tone()))
    with Client(base, api_key=KEY_B) as bob, pytest.raises(NotFoundError):
        bob.status(submitted.task_id)
    with Client(base, api_key="not-a-key") as nobody, pytest.raises(UnauthorizedError):
        nobody.submit(task_type="background_removal", image=png(two_tone()))


def test_the_async_client_uses_keys_and_tokens(keyed: Stack) -> None:
    async def main() -> None:
        async with AsyncClient(keyed.url, api_key=KEY_A) as alice:
            submitted = await alice.submit(task_type="background_removal", image=png(two_tone()))
        async with AsyncClient(keyed.url, stream_token=submitted.stream_token) as reader:
            result = await reader.wait(submitted.task_id, transport="ws")
            assert opened(result).mode == "RGBA"

    asyncio.run(main())


# --- the Idempotency-Key of a submit sent again --------------------------------------------------


def _read_message(sock: socket.socket) -> bytes | None:
    """One HTTP/1.1 message with a Content-Length body (all the api sends here), or None
    at the end of the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        body += chunk
    return head + b"\r\n\r\n" + body


def _header(message: bytes, name: str) -> str | None:
    for line in message.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower().encode():
            return value.strip().decode()
    return None


def _body(message: bytes) -> Any:
    return json.loads(message.partition(b"\r\n\r\n")[2])


class LosingProxy:
    """A loopback TCP proxy in front of the api that loses the answer to the first
    request: it forwards the request, reads the api's answer, and hangs up on the client
    without it, as a network failure after the server did the work would."""

    def __init__(self, upstream: str) -> None:
        self.upstream = int(upstream.rsplit(":", 1)[1])
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.requests: list[bytes] = []
        self.answers: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", self.upstream)) as upstream:
            while (request := _read_message(client)) is not None:
                self.requests.append(request)
                upstream.sendall(request)
                answer = _read_message(upstream)
                assert answer is not None
                self.answers.append(answer)
                if len(self.requests) == 1:
                    return  # lost: the client never sees this answer
                client.sendall(answer)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def losing(new_stack: Stack) -> Iterator[LosingProxy]:
    proxy = LosingProxy(new_stack.add_api())  # no worker: submitted tasks wait
    yield proxy
    proxy.close()


def test_a_submit_whose_answer_is_lost_is_sent_again_with_the_same_key(losing: LosingProxy) -> None:
    with Client(losing.url) as client:
        submitted = client.submit(task_type="background_removal", image=png(two_tone()))
    assert len(losing.requests) == 2
    keys = [_header(request, "Idempotency-Key") for request in losing.requests]
    assert keys[0] and keys[0] == keys[1]
    uuid.UUID(keys[0])  # a new UUID per submit by default
    assert [_body(r) for r in losing.requests[:1]] == [_body(r) for r in losing.requests[1:]]
    assert submitted.task_id == _body(losing.answers[1])["task_id"]


def test_the_async_client_resends_with_the_key_it_was_given(losing: LosingProxy) -> None:
    async def main() -> str:
        async with AsyncClient(losing.url) as client:
            submitted = await client.submit(task_type="background_removal", image=png(gradient(16)),
                                            idempotency_key="order-42")
            return submitted.task_id

    task_id = asyncio.run(main())
    assert [_header(r, "Idempotency-Key") for r in losing.requests] == ["order-42", "order-42"]
    assert task_id == _body(losing.answers[1])["task_id"]


def test_a_submit_sent_again_with_its_key_answers_the_same_task(losing: LosingProxy) -> None:
    with Client(losing.url) as client:
        submitted = client.submit(task_type="background_removal", image=png(two_tone()))
    lost = _body(losing.answers[0])
    assert lost["task_id"] == submitted.task_id
