"""API keys, task ownership, stream tokens, the per-owner cap, the Origin check."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets.sync.client as ws_client
from websockets.exceptions import InvalidStatus

from tests.clients import API, SSEStream, png_b64, two_tone, ws_url
from tests.conftest import RedisServer, Stack, fresh_stack

KEY_A, KEY_B = "key-alice-0123456789", "key-bob-9876543210"
TASK = {"task_type": "background_removal", "image": png_b64(two_tone())}


@pytest.fixture(scope="module")
def secured(redis_server: RedisServer, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An api with two keys and a cap of 3 waiting tasks, and no worker: tasks wait."""
    stack = fresh_stack(redis_server, data_dir, tmp_path_factory.mktemp("auth-logs"))
    stack.env.update(LIVEPIX_API_KEYS=f"{KEY_A},{KEY_B}", LIVEPIX_MAX_QUEUED_PER_OWNER="3")
    try:
        stack.add_api()
        yield stack
    finally:
        stack.stop()


def as_(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit_as(base: str, key: str) -> dict[str, object]:
    response = httpx.post(base + API + "/tasks/submit/", json=TASK, headers=as_(key))
    assert response.status_code == 202, response.text
    body: dict[str, object] = response.json()
    return body


def test_endpoints_need_a_key_but_the_ui_and_the_probes(secured: Stack) -> None:
    base = secured.url
    for method, path in [("POST", "/tasks/submit/"), ("GET", "/queues"), ("GET", "/metrics")]:
        response = httpx.request(method, base + API + path, json=TASK)
        assert response.status_code == 401 and response.json()["code"] == "unauthorized", path
    wrong = httpx.get(base + API + "/queues", headers=as_("not-a-key"))
    assert wrong.status_code == 401
    assert httpx.get(base + "/").status_code == 200
    assert httpx.get(base + API + "/healthz").status_code == 200
    ready = httpx.get(base + API + "/readyz")  # a load balancer's probe carries no key
    assert ready.status_code == 200 and set(ready.json()) == {"status", "redis", "hub"}
    assert httpx.get(base + "/readyz").status_code == 200
    assert httpx.get(base + API + "/queues", headers=as_(KEY_A)).status_code == 200


def test_a_task_belongs_to_the_key_that_submitted_it(secured: Stack) -> None:
    base = secured.url
    task_id = submit_as(base, KEY_A)["task_id"]
    for method, suffix in [("GET", "/status/"), ("GET", "/result/"), ("POST", "/cancel/"), ("GET", "/events")]:
        other = httpx.request(method, f"{base}{API}/tasks/{task_id}{suffix}", headers=as_(KEY_B))
        assert other.status_code == 404 and other.json()["code"] == "not_found", suffix
    with pytest.raises(InvalidStatus) as refused:
        ws_client.connect(ws_url(base, f"/tasks/{task_id}/ws"), additional_headers=as_(KEY_B))
    assert refused.value.response.status_code == 404
    mine = httpx.get(f"{base}{API}/tasks/{task_id}/status/", headers=as_(KEY_A))
    assert mine.status_code == 200 and mine.json()["status"] == "PENDING"
    httpx.post(f"{base}{API}/tasks/{task_id}/cancel/", headers=as_(KEY_A))


def test_a_stream_token_reads_its_task_only(secured: Stack) -> None:
    base = secured.url
    mine = submit_as(base, KEY_A)
    other = submit_as(base, KEY_A)
    token = str(mine["stream_token"])
    stream = SSEStream(base, str(mine["task_id"]), query=f"?token={token}")
    assert stream.response.status_code == 200
    first = stream.next_event()
    stream.close()
    assert first is not None and first["type"] == "queued"
    with ws_client.connect(ws_url(base, f"/tasks/{mine['task_id']}/ws?token={token}")) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "queued"

    elsewhere = httpx.get(f"{base}{API}/tasks/{other['task_id']}/status/?token={token}")
    assert elsewhere.status_code == 404
    cancel = httpx.post(f"{base}{API}/tasks/{mine['task_id']}/cancel/?token={token}")
    assert cancel.status_code == 401
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    assert httpx.get(f"{base}{API}/tasks/{mine['task_id']}/status/?token={forged}").status_code == 401
    for task in (mine, other):
        httpx.post(f"{base}{API}/tasks/{task['task_id']}/cancel/", headers=as_(KEY_A))


def test_an_owner_past_its_cap_of_waiting_tasks_gets_429(secured: Stack) -> None:
    base = secured.url
    ids = [submit_as(base, KEY_B)["task_id"] for _ in range(3)]
    refused = httpx.post(base + API + "/tasks/submit/", json=TASK, headers=as_(KEY_B))
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_tasks"
    assert int(refused.headers["Retry-After"]) > 0
    other = submit_as(base, KEY_A)  # another owner is not affected
    httpx.post(f"{base}{API}/tasks/{ids[0]}/cancel/", headers=as_(KEY_B))
    submit_as(base, KEY_B)  # room again
    httpx.post(f"{base}{API}/tasks/{other['task_id']}/cancel/", headers=as_(KEY_A))


def test_websockets_from_a_foreign_origin_are_refused(secured: Stack) -> None:
    base = secured.url
    with pytest.raises(InvalidStatus) as refused:
        ws_client.connect(ws_url(base, "/ws"), origin="http://evil.example", additional_headers=as_(KEY_A))
    assert refused.value.response.status_code == 403
    host = base.removeprefix("http://")
    with ws_client.connect(ws_url(base, "/ws"), origin=f"http://{host}", additional_headers=as_(KEY_A)) as ws:
        ws.send(json.dumps({"op": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"op": "pong"}


def test_tokens_never_reach_the_logs(secured: Stack) -> None:
    task = submit_as(secured.url, KEY_A)
    token = str(task["stream_token"])
    with ws_client.connect(ws_url(secured.url, f"/tasks/{task['task_id']}/ws?token={token}")) as ws:
        ws.recv(timeout=10)
    httpx.post(f"{secured.url}{API}/tasks/{task['task_id']}/cancel/", headers=as_(KEY_A))
    logs = secured.logs()
    assert token not in logs and KEY_A not in logs


@pytest.mark.parametrize("token", ["x.%C3%A9", "%C3%A9.%C3%A9", "%C3%A9", "x.\u00e9"])
def test_a_non_ascii_token_is_401_everywhere_not_500(secured: Stack, token: str) -> None:
    """hmac.compare_digest raises on a str that is not ASCII: it once answered 500."""
    base = secured.url
    task_id = submit_as(base, KEY_A)["task_id"]
    for suffix in ("/status/", "/result/", "/events", "/result.png"):
        response = httpx.get(f"{base}{API}/tasks/{task_id}{suffix}?token={token}")
        assert response.status_code == 401, (suffix, response.text)
        assert response.json()["code"] == "unauthorized"
    for path in (f"/tasks/{task_id}/ws", "/ws"):
        with pytest.raises(InvalidStatus) as refused:
            ws_client.connect(ws_url(base, f"{path}?token={token}"), open_timeout=10)
        assert refused.value.response.status_code == 401
        assert json.loads(refused.value.response.body or b"")["code"] == "unauthorized"
    httpx.post(f"{base}{API}/tasks/{task_id}/cancel/", headers=as_(KEY_A))
