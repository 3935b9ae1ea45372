"""Image generation and style transfer with a tiny Stable Diffusion, through a real worker."""

from __future__ import annotations

import base64
import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from PIL import Image, ImageChops

from actors.recorder import PREVIEW_COST_FACTOR, Recorder, Reporter
from livepix.config import load_settings
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
from tests.conftest import RedisServer, Stack, fresh_stack
from tests.models_diffusion import build_tiny_sd, build_tiny_taesd


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_taesd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_taesd(tmp_path_factory.mktemp("taesd") / "tiny-taesd")


@pytest.fixture(scope="module")
def gpu(
    redis_server: RedisServer,
    data_dir: Path,
    tiny_sd: Path,
    tiny_taesd: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """One api and one gpu worker with the tiny models, shared by this module's tests."""
    stack = fresh_stack(redis_server, data_dir, tmp_path_factory.mktemp("gpu-logs"))
    stack.env["LIVEPIX_TXT2IMG_MODEL"] = str(tiny_sd)
    stack.env["LIVEPIX_PREVIEW_MODEL"] = str(tiny_taesd)
    try:
        stack.add_api()
        stack.add_worker("gpu")
        yield stack
    finally:
        stack.stop()


def generation(steps: int = 6, seed: int | None = 7, size: int = 64, **extra: Any) -> dict[str, Any]:
    return {
        "task_type": "image_generation",
        "prompt": "a lighthouse at dawn",
        "parameters": {"steps": steps, "seed": seed, "width": size, "height": size, **extra},
    }


def test_generation_reports_every_step_with_a_preview_and_returns_the_image(gpu: Stack) -> None:
    events = sse_events(gpu.url, submit(gpu.url, generation(steps=6)))
    assert_contiguous(events)
    steps = [e for e in events if e["type"] == "progress" and "step" in e]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6]
    assert all(e["total"] == 6 for e in steps)
    assert any("preview" in e for e in steps)
    preview = decode_jpeg(next(e["preview"] for e in steps if "preview" in e))
    assert preview == (64, 64)  # decoded by the preview model (TAESD) at the image's size
    assert any("eta_s" in e for e in steps[1:])
    final = events[-1]
    assert final["type"] == "succeeded", final
    assert decode_png(final["result"]["image_data"]).size == (64, 64)
    assert final["result"]["prompt_used"] == "a lighthouse at dawn"
    assert final["result"]["metadata"]["seed"] == 7


def decode_jpeg(b64: str) -> tuple[int, int]:
    import base64
    import io

    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        assert image.format == "JPEG"
        return image.size


def test_previews_of_a_big_image_are_scaled_down(gpu: Stack) -> None:
    events = sse_events(gpu.url, submit(gpu.url, generation(steps=2, size=512)))
    previews = [decode_jpeg(e["preview"]) for e in events if "preview" in e]
    assert previews and all(size == (256, 256) for size in previews)
    assert decode_png(events[-1]["result"]["image_data"]).size == (512, 512)


def test_previews_come_from_the_latents_without_a_preview_model(
    new_stack: Stack, tiny_sd: Path, tmp_path: Path
) -> None:
    new_stack.env["LIVEPIX_TXT2IMG_MODEL"] = str(tiny_sd)
    new_stack.env["LIVEPIX_PREVIEW_MODEL"] = str(tmp_path / "no-such-taesd")
    new_stack.add_api()
    new_stack.add_worker("gpu")
    events = sse_events(new_stack.url, submit(new_stack.url, generation(steps=3)))
    assert events[-1]["type"] == "succeeded", events[-1]
    previews = [decode_jpeg(e["preview"]) for e in events if "preview" in e]
    assert previews and all(size == (128, 128) for size in previews)  # 32x32 latents, scaled up
    assert "no-such-taesd is not a directory; previews from the latents" in new_stack.logs()


def test_slow_previews_are_spaced_out_to_a_tenth_of_the_time(new_stack: Stack) -> None:
    """A previewer that takes 0.1 s (a TAESD on a CPU takes 0.25 s) gets a preview every
    1 s or more, not every 0.5 s, however fast the steps come."""
    url = new_stack.add_api()
    task_id = submit(url, generation())
    recorder = Recorder(redis.Redis.from_url(new_stack.redis_url), load_settings(), "test-worker")
    assert recorder.start(task_id, "gpu") > 0
    report = Reporter(recorder, task_id)

    def slow_preview() -> Image.Image:
        time.sleep(0.1)
        return Image.new("RGB", (64, 64))

    stream = SSEStream(url, task_id)
    try:
        started, step = time.monotonic(), 0
        while time.monotonic() - started < 4.0:
            step += 1
            report(50, "Denoising", step=step, total=1000, preview=slow_preview)
            time.sleep(0.02)
        events: list[dict[str, Any]] = []
        while not events or events[-1].get("step") != step:
            event = stream.next_event()
            assert event is not None
            events.append(event)
    finally:
        stream.close()
    at = [e["ts"] for e in events if "preview" in e]
    assert 2 <= len(at) <= 5, at  # 0.5 s apart would be 7 or more
    assert all(b - a >= PREVIEW_COST_FACTOR * 0.1 - 0.05 for a, b in itertools.pairwise(at)), at


def test_the_same_seed_gives_the_same_image_and_the_model_stays_loaded(gpu: Stack) -> None:
    sse_events(gpu.url, submit(gpu.url, generation()))  # the model is loaded by now
    runs = [sse_events(gpu.url, submit(gpu.url, generation(seed=s))) for s in (42, 42, 43)]
    images = [r[-1]["result"]["image_data"] for r in runs]
    assert images[0] == images[1] != images[2]
    assert all(
        "Preparing the image_generation engine" not in [e["message"] for e in r] for r in runs
    )


def test_cancel_mid_generation_stops_within_one_step(gpu: Stack) -> None:
    task_id = submit(gpu.url, generation(steps=150, size=256))
    stream = SSEStream(gpu.url, task_id)
    events = []
    while (event := stream.next_event()) is not None:
        events.append(event)
        if event.get("step") == 3:
            break
    assert httpx.post(f"{gpu.url}{API}/tasks/{task_id}/cancel/").json()["cancelled"] is True
    seq_at_cancel = httpx.get(f"{gpu.url}{API}/tasks/{task_id}/status/").json()["seq"]
    events += stream.rest()
    stream.close()
    assert_contiguous(events)
    assert events[-1]["type"] == "cancelled"
    later = [e for e in events if e["seq"] > seq_at_cancel and e["type"] == "progress"]
    assert len(later) <= 1, later
    assert max(e.get("step", 0) for e in events) < 150


def test_style_transfer_restyles_the_image_with_a_preset(gpu: Stack) -> None:
    body = {
        "task_type": "style_transfer",
        "image": png_b64(two_tone(100, 70)),
        "parameters": {"style": "watercolor", "strength": 0.5, "steps": 8, "seed": 1},
    }
    events = sse_events(gpu.url, submit(gpu.url, body))
    assert_contiguous(events)
    steps = [e for e in events if e.get("step")]
    assert steps and steps[-1]["step"] == steps[-1]["total"] == 4  # strength 0.5 of 8 steps
    assert any("preview" in e for e in steps)
    final = events[-1]
    assert final["type"] == "succeeded", final
    assert decode_png(final["result"]["image_data"]).size == (96, 64)  # multiples of 8
    assert "watercolor" in final["result"]["prompt_used"]
    assert final["result"]["metadata"]["style"] == "watercolor"


def test_a_missing_model_fails_model_unavailable_quickly(new_stack: Stack, tmp_path: Path) -> None:
    new_stack.env["LIVEPIX_TXT2IMG_MODEL"] = str(tmp_path / "no-such-model")
    new_stack.add_api()
    new_stack.add_worker("gpu")
    started = time.monotonic()
    events = sse_events(new_stack.url, submit(new_stack.url, generation()))
    assert events[-1]["type"] == "failed"
    assert events[-1]["error"]["code"] == "model_unavailable"
    assert "LIVEPIX_TXT2IMG_MODEL" in events[-1]["error"]["message"]
    assert time.monotonic() - started < 15


def test_several_outputs_come_from_one_batch_with_consecutive_seeds(gpu: Stack, tmp_path: Path) -> None:
    """num_outputs: one batch of images with seeds seed, seed+1; `images` has them all,
    `result.png?index=N` serves each, the previews show the batch as one grid, and each
    output is the image its seed alone makes (same noise) up to the batch's arithmetic."""
    events = sse_events(gpu.url, submit(gpu.url, generation(steps=3, seed=41, num_outputs=3)))
    assert_contiguous(events)
    final = events[-1]
    assert final["type"] == "succeeded", final
    result = final["result"]
    assert result["metadata"]["seeds"] == [41, 42, 43]
    pngs = [decode_png(b64) for b64 in result["images"]]
    assert len(pngs) == 3 and all(p.size == (64, 64) for p in pngs)
    assert result["images"][0] == result["image_data"]
    assert len({p.tobytes() for p in pngs}) == 3  # three seeds, three pictures
    for index, b64 in enumerate(result["images"]):
        served = httpx.get(f"{gpu.url}{API}/tasks/{final['task_id']}/result.png", params={"index": index})
        assert served.status_code == 200 and base64.b64encode(served.content).decode() == b64
    beyond = httpx.get(f"{gpu.url}{API}/tasks/{final['task_id']}/result.png", params={"index": 3})
    assert beyond.status_code == 400 and beyond.json()["code"] == "invalid_input"
    grids = [decode_jpeg(e["preview"]) for e in events if "preview" in e]
    assert grids and all(size == (128, 128) for size in grids)  # 2 x 2 cells of 64 px
    alone = sse_events(gpu.url, submit(gpu.url, generation(steps=3, seed=42)))[-1]["result"]
    difference = ImageChops.difference(decode_png(alone["image_data"]).convert("RGB"), pngs[1].convert("RGB"))
    assert max(difference.getextrema(), key=lambda band: band[1])[1] <= 8  # batch arithmetic only
    by_ref = sse_events(gpu.url, final["task_id"], query="?since=0&inline=0")[-1]["result"]
    assert "images" not in by_ref and len(by_ref["image_urls"]) == 3 and by_ref["image_urls"][2].endswith("?index=2")

    # the CLI saves -o out.png as out-0.png, out-1.png, ...
    out = tmp_path / "out.png"
    done = subprocess.run(
        [sys.executable, "-m", "livepix", "result", final["task_id"], "--url", gpu.url, "-o", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    saved = [tmp_path / f"out-{i}.png" for i in range(3)]
    assert [decode_png(base64.b64encode(p.read_bytes()).decode()).size for p in saved] == [(64, 64)] * 3
    assert not out.exists()


def test_too_many_outputs_is_invalid_input(gpu: Stack) -> None:
    response = httpx.post(f"{gpu.url}{API}/tasks/submit/", json=generation(num_outputs=5))
    assert response.status_code == 400
    assert response.json()["details"] == {"parameters.num_outputs": ["num_outputs must be between 1 and 4"]}
