"""A task's events over SSE and WebSocket, end to end through real processes."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.clients import (
    API,
    SSEStream,
    assert_contiguous,
    decode_png,
    png_b64,
    slow_removal,
    sse_events,
    submit,
    two_tone,
    ws_events,
)
from tests.conftest import Stack

TERMINAL = {"succeeded", "failed", "cancelled"}


def background_removal() -> dict[str, object]:
    return {"task_type": "background_removal", "image": png_b64(two_tone())}


def test_sse_streams_full_event_sequence_to_an_rgba_png(stack: Stack) -> None:
    task_id = submit(stack.url, background_removal())
    events = sse_events(stack.url, task_id)

    assert_contiguous(events)
    types = [e["type"] for e in events]
    # `queued` may be re-sent (position, ETA) before the task starts.
    started = types.index("started")
    assert set(types[:started]) == {"queued"} and types[-1] == "succeeded", types
    assert "progress" in types
    assert all(e["task_id"] == task_id for e in events)
    progress = [e["progress"] for e in events if e["type"] == "progress"]
    assert progress == sorted(progress)
    final = events[-1]
    assert final["status"] == "SUCCESS" and final["progress"] == 100
    image = decode_png(final["result"]["image_data"])
    assert image.mode == "RGBA" and image.size == (96, 64)
    assert image.getpixel((1, 1))[3] < 10  # blue background removed
    assert image.getpixel((48, 32))[3] > 245  # red subject kept

    png = httpx.get(f"{stack.url}{API}/tasks/{task_id}/result.png")
    assert png.headers["content-type"] == "image/png"
    assert decode_png(final["result"]["image_data"]).tobytes() == decode_png(
        __import__("base64").b64encode(png.content).decode()
    ).tobytes()


def test_ws_streams_full_event_sequence_and_closes_1000(stack: Stack) -> None:
    task_id = submit(stack.url, background_removal())
    events, code = ws_events(stack.url, task_id)
    assert code == 1000
    assert_contiguous(events)
    assert events[0]["type"] == "queued" and events[-1]["type"] == "succeeded"
    assert decode_png(events[-1]["result"]["image_data"]).mode == "RGBA"


def test_stream_with_inline_0_carries_the_image_url_not_the_image(stack: Stack) -> None:
    task_id = submit(stack.url, background_removal())
    final = sse_events(stack.url, task_id, query="?inline=0")[-1]
    assert "image_data" not in final["result"]
    png = httpx.get(stack.url + final["result"]["image_url"])
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"


def test_sse_resumes_after_last_event_id_without_gap_or_duplicate(stack: Stack) -> None:
    task_id = submit(stack.url, slow_removal(1024))
    first = SSEStream(stack.url, task_id)
    head = [first.next_event(), first.next_event()]
    first.close()
    assert [e["seq"] for e in head if e] == [1, 2]

    tail = sse_events(stack.url, task_id, headers={"Last-Event-ID": "2"})
    assert_contiguous(head + tail)
    assert tail[-1]["type"] in TERMINAL


def test_sse_resumes_from_since_query(stack: Stack) -> None:
    task_id = submit(stack.url, background_removal())
    everything = sse_events(stack.url, task_id)
    resumed = sse_events(stack.url, task_id, query="?since=3")
    assert resumed == everything[3:]
    assert sse_events(stack.url, task_id, query=f"?since={everything[-1]['seq']}") == []


def test_ws_resumes_from_since_query(stack: Stack) -> None:
    task_id = submit(stack.url, background_removal())
    everything, _ = ws_events(stack.url, task_id)
    resumed, code = ws_events(stack.url, task_id, query="?since=2")
    assert resumed == everything[2:] and code == 1000


def test_late_watcher_gets_history_then_live_events(stack: Stack) -> None:
    task_id = submit(stack.url, slow_removal())
    early = SSEStream(stack.url, task_id)
    started: list[dict[str, object]] = []
    while not started or started[-1]["type"] != "started":
        event = early.next_event()
        assert event is not None
        started.append(event)
    late = sse_events(stack.url, task_id)  # connects while the task runs
    rest = early.rest()
    early.close()
    assert_contiguous(late)
    assert late == started + rest
    assert late[-1]["type"] == "succeeded"


def test_two_watchers_on_different_api_processes_see_the_same_events(stack: Stack) -> None:
    first, second = stack.api_urls[:2]
    task_id = submit(first, slow_removal(1024))
    results: dict[str, list[dict[str, object]]] = {}

    def watch(name: str, base: str) -> None:
        results[name] = sse_events(base, task_id)

    threads = [
        threading.Thread(target=watch, args=("sse", first)),
        threading.Thread(target=watch, args=("sse-other-api", second)),
        threading.Thread(target=lambda: results.__setitem__("ws", ws_events(second, task_id)[0])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["sse"] == results["sse-other-api"] == results["ws"]
    assert_contiguous(results["sse"])
    assert results["sse"][-1]["type"] == "succeeded"


def test_sse_stream_sends_retry_hint_and_ends_after_terminal_event(stack: Stack) -> None:
    task_id = submit(stack.url, background_removal())
    stream = SSEStream(stack.url, task_id)
    events = stream.rest()
    stream.close()
    assert stream.retry_ms and stream.retry_ms > 0
    assert events[-1]["type"] == "succeeded"


@pytest.mark.parametrize("query", ["", "?inline=0"])
def test_a_quiet_sse_stream_gets_keepalive_comments(new_stack: Stack, query: str) -> None:
    new_stack.env["LIVEPIX_SSE_KEEPALIVE_S"] = "1"
    url = new_stack.add_api()
    task_id = submit(url, {"task_type": "background_removal", "image": png_b64(two_tone())})
    lines: list[str] = []
    with httpx.stream("GET", f"{url}{API}/tasks/{task_id}/events{query}", timeout=10) as response:
        started = time.monotonic()
        for line in response.iter_lines():  # no worker: the task stays queued, the stream quiet
            lines.append(line)
            if lines.count(": ping") == 3 or time.monotonic() - started > 8:
                break
    assert lines.count(": ping") == 3, lines
    assert "event: queued" in lines  # the history came first, then the keepalives
    assert lines.index("event: queued") < lines.index(": ping")
    assert "Traceback" not in new_stack.logs()
