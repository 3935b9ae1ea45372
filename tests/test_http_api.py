"""The seed-compatible REST endpoints, validation, and 404s, against real processes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
import websockets.sync.client as ws_client
from websockets.exceptions import InvalidStatus

from tests.clients import (
    API,
    SSEStream,
    metric,
    png_b64,
    slow_removal,
    sse_events,
    submit,
    two_tone,
    wait_status,
    ws_url,
)
from tests.conftest import Stack

IMAGE = png_b64(two_tone())


@pytest.mark.parametrize("path", ["/tasks/submit/", "/tasks/submit"])
def test_submit_answers_202_with_the_seed_shape(stack: Stack, path: str) -> None:
    response = httpx.post(
        stack.url + API + path, json={"task_type": "background_removal", "image": IMAGE}
    )
    assert response.status_code == 202
    body = response.json()
    uuid.UUID(body["task_id"], version=4)
    assert body["status"] == "PENDING"
    assert body["message"] == "background_removal task submitted successfully"
    assert body["links"]["events"].endswith(f"/tasks/{body['task_id']}/events")


def test_status_result_and_cancel_keep_the_seed_shapes(stack: Stack) -> None:
    task_id = submit(stack.url, {"task_type": "background_removal", "image": IMAGE})
    sse_events(stack.url, task_id)  # wait for the end

    for path in (f"/tasks/{task_id}/status/", f"/tasks/{task_id}/status"):
        status = httpx.get(stack.url + API + path).json()
        assert status["task_id"] == task_id
        assert status["status"] == "SUCCESS" and status["progress"] == 100
        assert status["result_available"] is True and isinstance(status["message"], str)

    result = httpx.get(f"{stack.url}{API}/tasks/{task_id}/result/").json()
    assert result["task_id"] == task_id and result["status"] == "SUCCESS"
    assert result["result"]["status"] == "SUCCESS"
    assert result["result"]["image_data"] and isinstance(result["result"]["metadata"], dict)

    cancel = httpx.post(f"{stack.url}{API}/tasks/{task_id}/cancel/").json()
    assert cancel == {"task_id": task_id, "status": "SUCCESS", "cancelled": False}


def test_result_of_an_unfinished_task_is_409_not_ready(new_stack: Stack) -> None:
    base = new_stack.add_api()  # no worker: the task stays queued
    task_id = submit(base, {"task_type": "background_removal", "image": IMAGE})
    response = httpx.get(f"{base}{API}/tasks/{task_id}/result/")
    assert response.status_code == 409 and response.json()["code"] == "not_ready"
    status = httpx.get(f"{base}{API}/tasks/{task_id}/status/").json()
    assert status["status"] == "PENDING" and status["position"] == 1


def test_failed_task_result_carries_the_error(stack: Stack) -> None:
    task_id = submit(stack.url, {"task_type": "image_generation", "prompt": "a red fox"})
    events = sse_events(stack.url, task_id)
    assert events[-1]["type"] == "failed"
    assert events[-1]["error"]["code"] == "model_unavailable"  # no model in the data dir
    result = httpx.get(f"{stack.url}{API}/tasks/{task_id}/result/").json()
    assert result["status"] == "FAILURE" and result["error"] == events[-1]["error"]
    png = httpx.get(f"{stack.url}{API}/tasks/{task_id}/result.png")
    assert png.status_code == 409 and png.json()["code"] == "no_result"


@pytest.mark.parametrize(
    ("task_type", "code"),
    [
        ("image_generation", "model_unavailable"),
        ("style_transfer", "model_unavailable"),
        ("face_swap", "model_unavailable"),
    ],
)
def test_gpu_tasks_without_models_are_routed_to_the_gpu_queue_and_fail_clearly(
    stack: Stack, task_type: str, code: str
) -> None:
    body: dict[str, object] = {"task_type": task_type, "prompt": "oil painting", "image": IMAGE}
    if task_type == "image_generation":
        body.pop("image")
    if task_type == "face_swap":
        body = {"task_type": task_type, "image": IMAGE, "target_image": IMAGE}
    events = sse_events(stack.url, submit(stack.url, body))
    assert next(e for e in events if e["type"] == "started")["queue"] == "gpu"
    assert events[-1]["type"] == "failed" and events[-1]["error"]["code"] == code


BAD_INPUTS = [
    ({"task_type": "image_generation"}, "prompt", "Prompt is required for image_generation"),
    ({"task_type": "image_generation", "prompt": "x" * 5001}, "prompt", None),
    ({"task_type": "image_generation", "prompt": "a", "parameters": {"width": 100}}, "parameters.width", None),
    ({"task_type": "image_generation", "prompt": "a", "parameters": {"steps": "many"}}, "parameters.steps", None),
    ({"task_type": "image_generation", "prompt": "a", "parameters": {"colour": 1}}, "parameters.colour", None),
    ({"task_type": "face_swap", "image": IMAGE}, "target_image", None),
    ({"task_type": "face_swap", "target_image": IMAGE}, "image", None),
    ({"task_type": "style_transfer", "image": IMAGE}, "parameters.style", None),
    ({"task_type": "style_transfer", "image": IMAGE, "parameters": {"style": "cubist-ish"}}, "parameters.style", None),
    ({"task_type": "style_transfer", "image": IMAGE, "prompt": "x", "parameters": {"strength": 2}}, "parameters.strength", None),
    ({"task_type": "background_removal"}, "image", None),
    ({"task_type": "background_removal", "image": "not base64!"}, "image", None),
    ({"task_type": "background_removal", "image": "aGVsbG8gd29ybGQ="}, "image", None),
    ({"task_type": "background_removal", "image": IMAGE, "parameters": {"bgcolor": "red"}}, "parameters.bgcolor", None),
    ({"task_type": "object_removal", "image": IMAGE}, "mask", None),
    ({"task_type": "object_removal", "image": IMAGE, "parameters": {"boxes": [[5, 5, 1, 1]]}}, "parameters.boxes", None),
    ({"task_type": "object_removal", "image": IMAGE, "mask": png_b64(two_tone(8, 8))}, "mask", None),
    ({"task_type": "sharpen"}, "task_type", None),
    ({}, "task_type", "This field is required"),
]


@pytest.mark.parametrize(("body", "field", "message"), BAD_INPUTS)
def test_invalid_submits_get_400_in_the_seed_shape(
    stack: Stack, body: dict[str, object], field: str, message: str | None
) -> None:
    response = httpx.post(stack.url + API + "/tasks/submit/", json=body)
    assert response.status_code == 400
    error = response.json()
    assert error["error"] == "Invalid input" and error["code"] == "invalid_input"
    assert field in error["details"], error
    assert all(isinstance(m, str) for m in error["details"][field])
    if message:
        assert error["details"][field] == [message]


def test_non_json_and_oversized_bodies_get_json_errors(stack: Stack) -> None:
    response = httpx.post(stack.url + API + "/tasks/submit/", content=b"{not json")
    assert response.status_code == 400 and response.json()["code"] == "invalid_json"
    response = httpx.post(stack.url + API + "/tasks/submit/", content=b"[1, 2]")
    assert response.status_code == 400 and response.json()["code"] == "invalid_input"
    big = b'{"task_type":"background_removal","image":"' + b"A" * (26 * 1024 * 1024) + b'"}'
    response = httpx.post(stack.url + API + "/tasks/submit/", content=big)
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", "/status/"),
        ("GET", "/result/"),
        ("POST", "/cancel/"),
        ("GET", "/result.png"),
        ("GET", "/events"),
    ],
)
@pytest.mark.parametrize("task_id", [str(uuid.uuid4()), "not-a-uuid", "..%2F..%2Fetc"])
def test_unknown_task_is_404_on_every_endpoint(stack: Stack, method: str, suffix: str, task_id: str) -> None:
    response = httpx.request(method, f"{stack.url}{API}/tasks/{task_id}{suffix}")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    if "%2F" not in task_id:  # a path-like id matches no route at all
        assert response.json() == {"error": "Task not found", "code": "not_found"}


def test_unknown_task_websocket_gets_404_before_the_stream(stack: Stack) -> None:
    with pytest.raises(InvalidStatus) as refused:
        ws_client.connect(ws_url(stack.url, f"/tasks/{uuid.uuid4()}/ws"), open_timeout=10)
    assert refused.value.response.status_code == 404


def test_health_readiness_queues_and_metrics(stack: Stack) -> None:
    assert httpx.get(stack.url + API + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(stack.url + API + "/readyz")
    assert ready.status_code == 200 and ready.json()["redis"] is True
    queues = httpx.get(stack.url + API + "/queues").json()
    assert set(queues["queues"]) == {"gpu", "cpu"} and queues["workers"] >= 2
    assert metric(stack.url, "livepix_hub_connected") == 1
    assert metric(stack.url, "livepix_workers") >= 2
    assert metric(stack.url, "livepix_delivery_latency_seconds_bucket", le="+Inf") >= 0
    assert metric(stack.url, "livepix_progress_coalesced_total") >= 0
    assert metric(stack.url, "process_resident_memory_bytes") > 0


def test_queued_tasks_report_their_position(new_stack: Stack) -> None:
    base = new_stack.add_api()
    ids = [submit(base, {"task_type": "background_removal", "image": IMAGE}) for _ in range(3)]
    assert [httpx.get(f"{base}{API}/tasks/{i}/status/").json()["position"] for i in ids] == [1, 2, 3]
    httpx.post(f"{base}{API}/tasks/{ids[0]}/cancel/")
    body = wait_status(base, ids[2], {"PENDING"})
    assert body["position"] == 2
    # The positions ticker re-sends `queued` with the new place.
    events = []
    stream = SSEStream(base, ids[2])
    while (event := stream.next_event()) is not None:
        events.append(event)
        if event.get("position") == 2:
            break
    stream.close()
    assert [e["position"] for e in events] == [3, 2]


def test_waiting_tasks_get_an_eta_once_run_times_are_known(new_stack: Stack) -> None:
    base = new_stack.add_api()
    new_stack.add_worker("cpu", threads=1)
    quick = {"task_type": "background_removal", "image": IMAGE}
    for body in (quick, slow_removal(1024)):  # learn both run times
        assert sse_events(base, submit(base, body))[-1]["type"] == "succeeded"
    submit(base, slow_removal(2048))
    waiting = [submit(base, quick) for _ in range(2)]
    body = wait_status(base, waiting[1], {"PENDING"})
    deadline = time.monotonic() + 10
    while "eta_s" not in body:
        assert time.monotonic() < deadline, body
        body = wait_status(base, waiting[1], {"PENDING", "PROCESSING", "SUCCESS"})
        if body["status"] != "PENDING":
            raise AssertionError(f"the task started before an ETA was sent: {body}")
    assert body["eta_s"] > 0 and body["position"] == 2
    events = sse_events(base, waiting[1])
    assert any(e["type"] == "queued" and "eta_s" in e for e in events)
    assert events[-1]["type"] == "succeeded"


def test_a_retried_submit_with_its_idempotency_key_answers_the_same_task(new_stack: Stack) -> None:
    base = new_stack.add_api()  # no worker: the tasks wait
    body = {"task_type": "background_removal", "image": png_b64(two_tone())}
    url = f"{base}{API}/tasks/submit/"
    first = httpx.post(url, json=body, headers={"Idempotency-Key": "order-17"})
    again = httpx.post(url, json=body, headers={"Idempotency-Key": "order-17"})
    assert first.status_code == again.status_code == 202
    assert again.json()["task_id"] == first.json()["task_id"]
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert httpx.get(f"{base}{API}/queues").json()["queues"]["cpu"]["pending"] == 1
    other = httpx.post(url, json={**body, "parameters": {"only_mask": True}}, headers={"Idempotency-Key": "order-17"})
    assert other.status_code == 409 and other.json()["code"] == "idempotency_conflict"
    fresh = httpx.post(url, json=body, headers={"Idempotency-Key": "order-18"})
    assert fresh.json()["task_id"] != first.json()["task_id"]
    bad = httpx.post(url, json=body, headers={"Idempotency-Key": "x" * 201})
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["details"]
    # the same key over /ws answers the same task, subscribed
    with ws_client.connect(ws_url(base, "/ws"), open_timeout=10) as ws:
        ws.send(json.dumps({"op": "submit", "request_id": "r1", "task": body, "idempotency_key": "order-17"}))
        reply = json.loads(ws.recv(timeout=10))
        assert reply["op"] == "submitted" and reply["task_id"] == first.json()["task_id"] and reply["replayed"]


def test_concurrent_submits_with_one_key_make_one_task(new_stack: Stack) -> None:
    base = new_stack.add_api()
    body = {"task_type": "background_removal", "image": png_b64(two_tone())}

    async def main() -> set[str]:
        async with httpx.AsyncClient(timeout=30) as client:
            answers = await asyncio.gather(*(
                client.post(f"{base}{API}/tasks/submit/", json=body, headers={"Idempotency-Key": "burst"})
                for _ in range(8)
            ))
        assert all(a.status_code == 202 for a in answers), [a.text for a in answers]
        return {a.json()["task_id"] for a in answers}

    assert len(asyncio.run(main())) == 1
