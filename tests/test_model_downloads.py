"""Model downloads report their bytes in the task's events: real api and worker processes,
loopback model hosts (a fake Hugging Face hub, a plain file server), no real network."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clients import (
    API,
    SSEStream,
    assert_contiguous,
    decode_png,
    png_b64,
    sse_events,
    submit,
    two_tone,
)
from tests.conftest import Stack
from tests.fake_hub import FakeHub, FileServer, serving
from tests.models import build_tiny_u2net
from tests.models_diffusion import build_tiny_sd

REPO = "livepix-test/tiny-sd"
BYTES = re.compile(r"Fetching (?P<what>.+): (?P<done>[\d.]+) MB of (?P<total>[\d.]+) MB")


@pytest.fixture(scope="module")
def tiny_sd_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("hub-repo") / "tiny-sd")


@pytest.fixture
def hub(tiny_sd_repo: Path) -> Iterator[FakeHub]:
    with serving(FakeHub(REPO, tiny_sd_repo)) as server:
        assert isinstance(server, FakeHub)
        yield server


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A U^2-Net-shaped graph padded to ~400 KB: two seconds at the server's pace."""
    return build_tiny_u2net(tmp_path_factory.mktemp("onnx") / "tiny.onnx", 400_000).read_bytes()


def hub_stack(stack: Stack, hub: FakeHub, data: Path) -> Stack:
    stack.env.update({
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # must not silence the task's byte progress
        "LIVEPIX_TXT2IMG_MODEL": REPO,
        "LIVEPIX_DATA_DIR": str(data),
        "LIVEPIX_DEVICE": "cpu",
    })
    stack.add_api()
    stack.add_worker("gpu")
    return stack


def generation(steps: int = 3) -> dict[str, Any]:
    return {
        "task_type": "image_generation",
        "prompt": "a lighthouse at dawn",
        "parameters": {"steps": steps, "seed": 1, "width": 64, "height": 64},
    }


def byte_events(events: list[dict[str, Any]], what: str) -> list[tuple[float, float]]:
    found = []
    for event in events:
        match = BYTES.fullmatch(event.get("message", ""))
        if event["type"] == "progress" and match and match["what"] == what:
            found.append((float(match["done"]), float(match["total"])))
    return found


def check_bytes(events: list[dict[str, Any]], what: str) -> list[tuple[float, float]]:
    """Several byte counts, growing to one total; percents that never go back."""
    assert_contiguous(events)
    counts = byte_events(events, what)
    assert len(counts) >= 3, [e.get("message") for e in events]
    dones = [done for done, _ in counts]
    assert dones == sorted(dones)
    assert len({total for _, total in counts}) == 1, counts  # the total is known from the start
    assert counts[-1][0] == counts[-1][1]
    percents = [e["progress"] for e in events if e["type"] == "progress"]
    assert percents == sorted(percents)
    return counts


def test_a_hub_model_reports_its_bytes_then_generates_and_is_fetched_once(
    new_stack: Stack, hub: FakeHub, tmp_path: Path
) -> None:
    stack = hub_stack(new_stack, hub, tmp_path / "data")
    events = sse_events(stack.url, submit(stack.url, generation()))
    assert events[-1]["type"] == "succeeded", events[-1]
    check_bytes(events, REPO)
    messages = [e.get("message", "") for e in events]
    last_fetch = max(i for i, m in enumerate(messages) if m.startswith("Fetching"))
    steps = [i for i, e in enumerate(events) if e.get("step")]
    assert [events[i]["step"] for i in steps] == [1, 2, 3]
    assert last_fetch < steps[0]  # downloaded, then denoised
    assert events[last_fetch]["progress"] < events[steps[0]]["progress"]
    assert decode_png(events[-1]["result"]["image_data"]).size == (64, 64)
    assert events[-1]["result"]["metadata"]["model"] == REPO
    assert (tmp_path / "data" / "models" / "huggingface" / f"models--{REPO.replace('/', '--')}").is_dir()

    fetched = len(hub.fetches())
    again = sse_events(stack.url, submit(stack.url, generation()))
    assert again[-1]["type"] == "succeeded", again[-1]
    assert not [e for e in again if e.get("message", "").startswith("Fetching")]
    assert len(hub.fetches()) == fetched


def test_a_cancel_during_a_hub_download_stops_the_task_and_a_later_task_completes_it(
    new_stack: Stack, hub: FakeHub, tmp_path: Path
) -> None:
    stack = hub_stack(new_stack, hub, tmp_path / "data")
    task_id = submit(stack.url, generation())
    stream = SSEStream(stack.url, task_id)
    events = []
    while (event := stream.next_event()) is not None:
        events.append(event)
        if byte_events([event], REPO):
            break
    assert events and byte_events(events[-1:], REPO), events
    assert httpx.post(f"{stack.url}{API}/tasks/{task_id}/cancel/").json()["cancelled"] is True
    events += stream.rest()
    stream.close()
    assert_contiguous(events)
    assert events[-1]["type"] == "cancelled", events[-1]
    assert not [e for e in events if e.get("step")]

    # The cancel left the engine unloaded and the worker healthy: the next task fetches
    # what is missing and runs.
    again = sse_events(stack.url, submit(stack.url, generation()))
    assert again[-1]["type"] == "succeeded", again[-1]


def removal() -> dict[str, Any]:
    return {"task_type": "background_removal", "image": png_b64(two_tone(96, 64))}


def test_a_rembg_model_url_reports_its_bytes_and_is_fetched_once(
    new_stack: Stack, tiny_onnx: bytes, tmp_path: Path
) -> None:
    with serving(FileServer({"/models/tiny.onnx": tiny_onnx})) as server:
        data = tmp_path / "data"
        new_stack.env.update({
            "LIVEPIX_REMBG_MODEL": f"{server.url}/models/tiny.onnx",
            "LIVEPIX_DATA_DIR": str(data),
        })
        new_stack.add_api()
        new_stack.add_worker("cpu")
        events = sse_events(new_stack.url, submit(new_stack.url, removal()))
        assert events[-1]["type"] == "succeeded", events[-1]
        counts = check_bytes(events, "the rembg model tiny.onnx")
        assert counts[-1][1] == round(len(tiny_onnx) / 1e6, 1)
        fetched = data / "models" / "rembg" / "custom" / "tiny.onnx"
        assert fetched.read_bytes() == tiny_onnx
        assert not list(fetched.parent.glob("*.part"))
        assert server.fetches() == ["/models/tiny.onnx"]

        again = sse_events(new_stack.url, submit(new_stack.url, removal()))
        assert again[-1]["type"] == "succeeded", again[-1]
        assert not [e for e in again if e.get("message", "").startswith("Fetching")]
        assert server.fetches() == ["/models/tiny.onnx"]
    assert decode_png(again[-1]["result"]["image_data"]).mode == "RGBA"


def test_a_rembg_mirror_file_with_a_wrong_checksum_fails_model_unavailable(
    new_stack: Stack, tiny_onnx: bytes, tmp_path: Path
) -> None:
    with serving(FileServer({"/mirror/u2net.onnx": tiny_onnx}, bytes_per_s=10_000_000)) as server:
        data = tmp_path / "data"
        new_stack.env.update({
            "LIVEPIX_REMBG_MIRROR": f"{server.url}/mirror/",
            "LIVEPIX_DATA_DIR": str(data),
        })
        new_stack.add_api()
        new_stack.add_worker("cpu")
        events = sse_events(new_stack.url, submit(new_stack.url, removal()))
        assert server.fetches() == ["/mirror/u2net.onnx"]
    final = events[-1]
    assert final["type"] == "failed" and final["error"]["code"] == "model_unavailable", final
    assert "checksum" in final["error"]["message"]
    assert "LIVEPIX_REMBG_MIRROR" in final["error"]["message"]
    folder = data / "models" / "rembg" / "models" / "u2net"
    assert not folder.exists() or not list(folder.iterdir())  # neither the file nor a .part
