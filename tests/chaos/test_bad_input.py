"""Bad input: every piece gets a 4xx JSON error with a stable code (or the WebSocket
equivalent), and the service keeps serving others meanwhile.

A hand-made corpus (tests/chaos/corpus.py) and a schemathesis run against the
api's own OpenAPI document, both sent to real `livepix api` processes.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
import websockets.sync.client as ws_client
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from livepix.wire import ErrorCode
from tests.chaos.corpus import (
    BAD_TASK_IDS,
    ODD_BUT_VALID_PROMPTS,
    OVER_25_MB,
    OVERSIZE_FRAMES,
    SUBMITS,
    UNKNOWN_ID,
    WRONG_METHODS,
    WS_OPS,
    generation,
    oversize_body,
)
from tests.clients import API, decode_png, png_b64, sse_events, submit, two_tone, ws_url
from tests.conftest import RedisServer, Stack, fresh_stack

CODES = {code.value for code in ErrorCode}
JSON = {"Content-Type": "application/json"}

# Cases the api still answers wrongly, outside the input handling these tests may fix.
# Strict xfails: once the api is fixed they fail, as a reminder to drop the entry.
SERVER_BUGS: dict[str, str] = {}


def assert_json_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """`response` is the JSON error `{"error", "code"[, "details"]}` with this status and code."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error: dict[str, Any] = response.json()
    assert error["code"] == code, error
    assert error["code"] in CODES
    assert isinstance(error["error"], str) and error["error"]
    return error


def post_submit(client: httpx.Client | None, base: str, content: bytes) -> httpx.Response:
    if client is None:
        return httpx.post(base + API + "/tasks/submit/", content=content, headers=JSON, timeout=60)
    return client.post(base + API + "/tasks/submit/", content=content, headers=JSON)


@pytest.fixture(scope="module")
def finished_task(stack: Stack) -> str:
    """A real task that succeeded, for resume points on a task that exists."""
    task_id = submit(stack.url, {"task_type": "background_removal", "image": png_b64(two_tone())})
    assert sse_events(stack.url, task_id)[-1]["type"] == "succeeded"
    return task_id


# --- HTTP ---------------------------------------------------------------------------


def _submit_params() -> list[Any]:
    marks = {name: pytest.mark.xfail(reason=why, strict=True) for name, why in SERVER_BUGS.items()}
    return [pytest.param(name, id=name, marks=marks.get(name, ())) for name in SUBMITS]


@pytest.mark.parametrize("name", _submit_params())
def test_bad_submits_get_a_json_4xx_with_a_stable_code(stack: Stack, name: str) -> None:
    case = SUBMITS[name]
    error = assert_json_error(post_submit(None, stack.url, case.build()), case.status, case.code)
    if case.code == "invalid_input":
        assert error["error"] == "Invalid input"
        assert case.field in error["details"], error
        messages = error["details"][case.field]
        assert messages and all(isinstance(m, str) for m in messages)
        assert case.says in " ".join(messages), error
        assert len(json.dumps(error)) < 4096, "an error echoes what it was sent at length"


@pytest.mark.parametrize("name", ODD_BUT_VALID_PROMPTS)
def test_odd_but_valid_unicode_prompts_are_accepted(stack: Stack, name: str) -> None:
    response = post_submit(None, stack.url, json.dumps(generation(prompt=ODD_BUT_VALID_PROMPTS[name])).encode())
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    # Nothing to generate with: cancel it rather than keep the gpu worker busy.
    cancelled = httpx.post(f"{stack.url}{API}/tasks/{task_id}/cancel/", timeout=30)
    assert cancelled.status_code == 200, cancelled.text


def test_bodies_over_25_mb_get_413_with_and_without_a_length(stack: Stack) -> None:
    big = oversize_body()
    assert_json_error(post_submit(None, stack.url, big), 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the api counts as it reads
        for at in range(0, len(big), 1 << 20):
            yield big[at : at + (1 << 20)]

    try:
        response = httpx.post(stack.url + API + "/tasks/submit/", content=chunks(), headers=JSON, timeout=60)
    except httpx.WriteError:
        pytest.fail("the api hung up before answering 413")
    assert_json_error(response, 413, "payload_too_large")
    assert len(big) > OVER_25_MB


TASK_ENDPOINTS = [
    ("GET", "/status/"),
    ("GET", "/status"),
    ("GET", "/result/"),
    ("GET", "/result"),
    ("POST", "/cancel/"),
    ("POST", "/cancel"),
    ("GET", "/result.png"),
    ("GET", "/events"),
]


@pytest.mark.parametrize("name", BAD_TASK_IDS)
def test_path_like_and_odd_task_ids_are_404_on_every_task_endpoint(stack: Stack, name: str) -> None:
    task_id = BAD_TASK_IDS[name]
    with httpx.Client(timeout=30) as client:
        for method, suffix in TASK_ENDPOINTS:
            response = client.request(method, f"{stack.url}{API}/tasks/{task_id}{suffix}")
            assert_json_error(response, 404, "not_found")




def _ws_id_params() -> list[Any]:
    return [
        pytest.param(name, id=name) for name in BAD_TASK_IDS
    ]


@pytest.mark.parametrize("name", _ws_id_params())
def test_path_like_and_odd_task_ids_are_404_json_on_the_task_websocket(stack: Stack, name: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        ws_client.connect(ws_url(stack.url, f"/tasks/{BAD_TASK_IDS[name]}/ws"), open_timeout=10)
    assert refused.value.response.status_code == 404
    assert json.loads(refused.value.response.body or b"")["code"] == "not_found"


@pytest.mark.parametrize(("method", "path"), WRONG_METHODS, ids=[f"{m} {p}" for m, p in WRONG_METHODS])
def test_wrong_methods_get_405_json(stack: Stack, method: str, path: str) -> None:
    response = httpx.request(method, stack.url + API + path.replace("{id}", UNKNOWN_ID), timeout=30)
    assert_json_error(response, 405, "method_not_allowed")


@pytest.mark.parametrize("query", ["?since=-1", "?since=abc", "?since=1.5", "?since=" + "9" * 5000])
def test_a_bad_resume_point_is_400_on_sse_and_the_task_websocket(stack: Stack, finished_task: str, query: str) -> None:
    response = httpx.get(f"{stack.url}{API}/tasks/{finished_task}/events{query}", timeout=30)
    error = assert_json_error(response, 400, "invalid_input")
    assert "since" in error["details"]
    with pytest.raises(InvalidStatus) as refused:
        ws_client.connect(ws_url(stack.url, f"/tasks/{finished_task}/ws{query}"), open_timeout=10)
    assert refused.value.response.status_code == 400
    assert json.loads(refused.value.response.body or b"")["code"] == "invalid_input"


def test_a_bad_last_event_id_is_400(stack: Stack, finished_task: str) -> None:
    for value in ("-1", "abc", "1e3"):
        response = httpx.get(f"{stack.url}{API}/tasks/{finished_task}/events",
                             headers={"Last-Event-ID": value}, timeout=30)
        assert_json_error(response, 400, "invalid_input")


def test_a_websocket_from_a_foreign_origin_is_refused_with_json(stack: Stack) -> None:
    with pytest.raises(InvalidStatus) as refused:
        ws_client.connect(ws_url(stack.url, "/ws"), origin=Origin("http://evil.example"), open_timeout=10)
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body or b"")["code"] == "forbidden_origin"


# --- WebSocket /ws ------------------------------------------------------------------


def next_reply(ws: ws_client.ClientConnection) -> dict[str, Any]:
    """The next op reply, skipping task events."""
    while True:
        message: dict[str, Any] = json.loads(ws.recv(timeout=30))
        if "op" in message:
            return message


def assert_ws_error(reply: dict[str, Any], code: str, echoes: dict[str, Any]) -> None:
    assert reply["op"] == "error" and reply["code"] == code, reply
    assert reply["code"] in CODES
    assert isinstance(reply["error"], str) and reply["error"]
    for key, value in echoes.items():
        assert key in reply and reply[key] == value, reply


@pytest.mark.parametrize("name", WS_OPS)
def test_bad_ws_messages_get_an_error_op_and_the_socket_serves_on(stack: Stack, name: str) -> None:
    case = WS_OPS[name]
    with ws_client.connect(ws_url(stack.url, "/ws"), open_timeout=10) as ws:
        ws.send(case.frame())
        assert_ws_error(next_reply(ws), case.code, case.echoes)
        ws.send(json.dumps({"op": "ping"}))
        assert next_reply(ws) == {"op": "pong"}


def test_one_socket_survives_every_bad_message_then_follows_a_task(stack: Stack, finished_task: str) -> None:
    with ws_client.connect(ws_url(stack.url, "/ws"), open_timeout=10) as ws:
        for name, case in WS_OPS.items():
            ws.send(case.frame())
            reply = next_reply(ws)
            assert reply["op"] == "error" and reply["code"] == case.code, (name, reply)
        ws.send(json.dumps({"op": "subscribe", "task_id": finished_task}))
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] != "succeeded":
            events.append(json.loads(ws.recv(timeout=30)))
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


@pytest.mark.parametrize("name", OVERSIZE_FRAMES)
def test_frames_over_64_kib_close_the_socket_with_1009(stack: Stack, name: str) -> None:
    with ws_client.connect(ws_url(stack.url, "/ws"), open_timeout=10) as ws:
        ws.send(OVERSIZE_FRAMES[name]())
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    with ws_client.connect(ws_url(stack.url, "/ws"), open_timeout=10) as ws:  # others still served
        ws.send(json.dumps({"op": "ping"}))
        assert json.loads(ws.recv(timeout=30)) == {"op": "pong"}


# --- meanwhile ----------------------------------------------------------------------


class Burst:
    """Threads pouring the whole corpus into every api, round after round, and a readiness
    watcher. Leaving the `with` block stops them once each has sent at least one round."""

    def __init__(self, bases: list[str]) -> None:
        self.stop = threading.Event()
        self.problems: list[str] = []
        self.readyz: list[int] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._rounds_left = threading.Semaphore(0)
        self.senders = [threading.Thread(target=self._run, args=(self._http, b)) for b in bases]
        self.senders += [threading.Thread(target=self._run, args=(self._ws, b)) for b in bases]
        self.watcher = threading.Thread(target=self._run, args=(self._ready, bases[0]))

    def __enter__(self) -> Self:
        for thread in [*self.senders, self.watcher]:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for _ in self.senders:
            self._rounds_left.acquire(timeout=120)
        self.stop.set()
        for thread in [*self.senders, self.watcher]:
            thread.join(120)

    def _run(self, loop: Any, base: str) -> None:
        first = True
        try:
            while first or not self.stop.is_set():
                loop(base)
                if first and loop != self._ready:
                    self._rounds_left.release()
                first = False
        except Exception as exc:  # noqa: BLE001 - a dead sender must fail the test
            self.problems.append(f"{loop.__name__} on {base}: {exc!r}")
            self._rounds_left.release()

    def _count(self, problem: str | None) -> None:
        with self._lock:
            self.sent += 1
            if problem:
                self.problems.append(problem)

    def _http(self, base: str) -> None:
        builds: list[Callable[[], bytes]] = [c.build for n, c in SUBMITS.items() if n not in SERVER_BUGS]
        builds.append(oversize_body)
        with httpx.Client(timeout=60) as client:
            for build in builds:
                response = post_submit(client, base, build())
                ok = 400 <= response.status_code < 500 and "code" in response.json()
                self._count(None if ok else f"{response.status_code} {response.text[:200]}")

    def _ws(self, base: str) -> None:
        with ws_client.connect(ws_url(base, "/ws"), open_timeout=10) as ws:
            for case in WS_OPS.values():
                ws.send(case.frame())
                reply = next_reply(ws)
                self._count(None if reply.get("op") == "error" else f"ws: {reply}")
        with ws_client.connect(ws_url(base, "/ws"), open_timeout=10) as ws:
            ws.send(OVERSIZE_FRAMES["text"]())
            try:
                self._count(f"ws: a frame over 64 KiB was answered: {ws.recv(timeout=30)[:200]!r}")
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else None
                self._count(None if code == 1009 else f"ws: a frame over 64 KiB closed with {code}")

    def _ready(self, base: str) -> None:
        status = httpx.get(base + API + "/readyz", timeout=30).status_code
        with self._lock:
            self.readyz.append(status)
        time.sleep(0.1)


def test_normal_tasks_complete_while_bad_input_pours_in(stack: Stack) -> None:
    took_s = []
    with Burst(stack.api_urls) as burst:
        time.sleep(0.5)  # the burst in full swing
        for base in stack.api_urls:  # a normal client on each api
            started = time.monotonic()
            task_id = submit(base, {"task_type": "background_removal", "image": png_b64(two_tone())})
            events = sse_events(base, task_id)
            took_s.append(time.monotonic() - started)
            assert events[-1]["type"] == "succeeded", events[-1]
            assert decode_png(events[-1]["result"]["image_data"]).mode == "RGBA"
    print(f"\nbackground_removal during the burst: {', '.join(f'{t:.1f}' for t in took_s)} s; "
          f"{burst.sent} bad requests and messages sent")
    assert burst.problems == []
    assert burst.readyz and set(burst.readyz) == {200}, burst.readyz
    assert burst.sent >= len(stack.api_urls) * (len(SUBMITS) + len(WS_OPS))


# --- schemathesis -------------------------------------------------------------------

HAS_SCHEMATHESIS = importlib.util.find_spec("schemathesis") is not None  # the `test` extra has it


@pytest.fixture(scope="module")
def fuzz_stack(
    redis_server: RedisServer, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """An api of its own, with no worker: fuzzed submits that pass stay queued, harmless."""
    s = fresh_stack(redis_server, data_dir, tmp_path_factory.mktemp("fuzz-logs"))
    try:
        s.add_api()
        yield s
    finally:
        s.stop()


if HAS_SCHEMATHESIS:
    import schemathesis
    from hypothesis import HealthCheck, settings
    from schemathesis.specs.openapi import checks as openapi_checks

    @pytest.fixture
    def api_schema(fuzz_stack: Stack) -> Any:
        return schemathesis.openapi.from_url(fuzz_stack.url + API + "/openapi.json")

    def errors_are_json_with_a_stable_code(ctx: Any, response: Any, case: Any) -> None:
        if response.status_code >= 400:
            content_type = response.headers.get("content-type", [""])[0]
            assert content_type.startswith("application/json"), (response.status_code, content_type)
            body = response.json()
            assert isinstance(body, dict) and body.get("code") in CODES, body
            assert isinstance(body.get("error"), str), body

    FUZZ_CHECKS = [
        schemathesis.checks.not_a_server_error,
        errors_are_json_with_a_stable_code,
        openapi_checks.status_code_conformance,
        openapi_checks.content_type_conformance,
        openapi_checks.response_schema_conformance,
        openapi_checks.response_headers_conformance,
    ]

    @schemathesis.pytest.from_fixture("api_schema").parametrize()
    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def test_the_openapi_document_fuzzed_gets_no_5xx_and_only_json_errors(case: Any, fuzz_stack: Stack) -> None:
        case.call_and_validate(base_url=fuzz_stack.url, checks=FUZZ_CHECKS, timeout=30)

    def test_the_fuzzed_api_stays_ready(fuzz_stack: Stack) -> None:
        assert httpx.get(fuzz_stack.url + API + "/readyz", timeout=10).status_code == 200

else:  # pragma: no cover

    def test_the_openapi_document_fuzzed_gets_no_5xx_and_only_json_errors() -> None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
