"""LaMa object removal end to end: real api and worker processes, a tiny TorchScript LaMa."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from actors.engines.inpaint import dilate
from livepix.processes import free_port
from tests.clients import assert_contiguous, decode_png, png_b64, sse_events, submit
from tests.conftest import RedisServer, Stack, _db_numbers
from tests.models_lama import build_tiny_lama

WIDTH, HEIGHT = 101, 77  # not multiples of 8: the engine must pad
HOLE = (30, 20, 70, 50)  # x0, y0, x1, y1 of the "object"


@pytest.fixture(scope="module")
def tiny_lama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lama(tmp_path_factory.mktemp("lama") / "tiny-lama.pt")


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer,
    data_dir: Path,
    tiny_lama: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """This module's stack (api + one-thread cpu worker) with LIVEPIX_LAMA_MODEL set.

    Named like conftest's shared stack so that a failing test prints its logs.
    """
    s = Stack(
        redis_server.url(next(_db_numbers)), data_dir, tmp_path_factory.mktemp("lama-logs"),
        LIVEPIX_LAMA_MODEL=str(tiny_lama), LIVEPIX_DEVICE="cpu",
    )
    try:
        s.add_api()
        s.add_worker("cpu")
        yield s
    finally:
        s.stop()


def scene() -> Image.Image:
    """A smooth background with a red object in HOLE."""
    xs, ys = np.meshgrid(np.linspace(0, 255, WIDTH), np.linspace(0, 255, HEIGHT))
    rgb = np.stack([xs, ys, np.full_like(xs, 128)], axis=-1).astype(np.uint8)
    x0, y0, x1, y1 = HOLE
    rgb[y0:y1, x0:x1] = (230, 20, 20)
    return Image.fromarray(rgb)


def mask_image() -> Image.Image:
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    mask.paste(255, HOLE)
    return mask


def removal(method: str, dilate_px: int = 3, use_boxes: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task_type": "object_removal",
        "image": png_b64(scene()),
        "parameters": {"method": method, "dilate_px": dilate_px},
    }
    if use_boxes:
        body["parameters"]["boxes"] = [list(HOLE)]
    else:
        body["mask"] = png_b64(mask_image())
    return body


def run(base: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    events = sse_events(base, submit(base, body))
    assert_contiguous(events)
    types = [e["type"] for e in events]
    # `queued` may be re-sent (position, ETA) before the task starts.
    assert set(types[: types.index("started")]) == {"queued"}, types
    progress = [e["progress"] for e in events if e["type"] == "progress"]
    assert progress == sorted(progress)
    return events


def check_removed(final: dict[str, Any], dilate_px: int) -> dict[str, Any]:
    """The result keeps every pixel outside the dilated mask and repaints the object."""
    assert final["type"] == "succeeded", final
    out = np.asarray(decode_png(final["result"]["image_data"]).convert("RGB"))
    assert out.shape == (HEIGHT, WIDTH, 3)
    before = np.asarray(scene())
    hole = dilate(np.asarray(mask_image()), dilate_px) > 0
    assert np.array_equal(out[~hole], before[~hole])
    changed = np.any(out[hole] != before[hole], axis=-1)
    assert changed.mean() > 0.9
    x0, y0, x1, y1 = HOLE
    assert out[y0:y1, x0:x1, 0].mean() < 200  # the red object is gone
    metadata: dict[str, Any] = final["result"]["metadata"]
    return metadata


def test_lama_removes_the_object_on_an_odd_sized_image(stack: Stack) -> None:
    events = run(stack.url, removal("lama"))
    metadata = check_removed(events[-1], 3)
    assert metadata["method"] == "lama" and metadata["device"] == "cpu"
    assert metadata["model"] == "tiny-lama.pt" and metadata["model_loads"] == 1
    assert (metadata["width"], metadata["height"]) == (WIDTH, HEIGHT)
    assert 0 < metadata["masked_fraction"] < 1
    messages = " ".join(e.get("message", "") for e in events)
    assert "(lama)" in messages


def test_auto_uses_lama_and_the_model_is_loaded_once_per_worker(stack: Stack) -> None:
    for _ in range(2):
        final = run(stack.url, removal("auto", dilate_px=0, use_boxes=True))[-1]
        metadata = check_removed(final, 0)
        assert metadata["method"] == "lama" and metadata["model_loads"] == 1


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_opencv_methods_stay_selectable_with_a_model_configured(stack: Stack, method: str) -> None:
    metadata = check_removed(run(stack.url, removal(method))[-1], 3)
    assert metadata["method"] == method and "model_loads" not in metadata


def test_the_default_model_is_lama_under_auto(new_stack: Stack) -> None:
    """The shared data dir holds a tiny LaMa where the default model's fetched copy goes."""
    new_stack.add_api()
    new_stack.add_worker("cpu")
    events = run(new_stack.url, removal("auto"))
    metadata = check_removed(events[-1], 3)
    assert metadata["method"] == "lama" and "fallback" not in metadata
    assert metadata["model"] == "big-lama.pt"
    assert not any("Fetching" in e.get("message", "") for e in events)


def test_lama_turned_off_fails_fast_and_auto_uses_telea(new_stack: Stack) -> None:
    new_stack.env.update({"LIVEPIX_LAMA_MODEL": "none"})
    new_stack.add_api()
    new_stack.add_worker("cpu")
    began = time.monotonic()
    final = run(new_stack.url, removal("lama"))[-1]
    assert time.monotonic() - began < 10
    assert final["type"] == "failed" and final["error"]["code"] == "model_unavailable"
    assert "LIVEPIX_LAMA_MODEL=none" in final["error"]["message"]
    assert "telea" in final["error"]["message"]

    metadata = check_removed(run(new_stack.url, removal("auto"))[-1], 3)
    assert metadata["method"] == "telea" and "fallback" not in metadata  # asked for, not a fallback


def fetch_attempts(stack: Stack) -> int:
    """How many times the worker tried to fetch a model and failed (its log says each)."""
    return sum(p.log_path.read_text().count("fetching http") for p in stack.processes)


def test_offline_auto_falls_back_to_telea_and_says_why(new_stack: Stack, tmp_path: Path) -> None:
    """The model host is unreachable (a closed loopback port): auto still removes the
    object, with OpenCV, and the result says which method ran and why."""
    url = f"http://127.0.0.1:{free_port()}/big-lama.pt"  # nothing listens there
    new_stack.env.update({"LIVEPIX_LAMA_MODEL": url, "LIVEPIX_DATA_DIR": str(tmp_path / "data")})
    new_stack.add_api()
    new_stack.add_worker("cpu")
    began = time.monotonic()
    events = run(new_stack.url, removal("auto"))
    assert time.monotonic() - began < 15  # torch import included; the fetch fails at once
    metadata = check_removed(events[-1], 3)
    assert metadata["method"] == "telea"
    assert "LIVEPIX_LAMA_MODEL" in metadata["fallback"] and "could not be fetched" in metadata["fallback"]
    messages = [e.get("message", "") for e in events]
    assert "LaMa is not available: inpainting with OpenCV telea instead" in messages
    assert fetch_attempts(new_stack) == 1

    # The next auto task does not wait on the unreachable host again (for LAMA_RETRY_S).
    again = check_removed(run(new_stack.url, removal("auto", use_boxes=True))[-1], 3)
    assert again["method"] == "telea" and again["fallback"] == metadata["fallback"]
    assert fetch_attempts(new_stack) == 1

    # An explicit lama still tries, and fails: the client asked for that model.
    final = run(new_stack.url, removal("lama"))[-1]
    assert final["type"] == "failed" and final["error"]["code"] == "model_unavailable", final
    assert "LIVEPIX_LAMA_MODEL" in final["error"]["message"]
    assert fetch_attempts(new_stack) == 2
    assert not (tmp_path / "data" / "models" / "lama" / "big-lama.pt").exists()


def test_an_unreachable_model_url_fails_fast_with_model_unavailable(
    new_stack: Stack, tmp_path: Path
) -> None:
    new_stack.env.update({
        "LIVEPIX_LAMA_MODEL": "http://127.0.0.1:9/big-lama.pt",
        "LIVEPIX_DATA_DIR": str(tmp_path / "data"),
    })
    new_stack.add_api()
    new_stack.add_worker("cpu")
    began = time.monotonic()
    final = run(new_stack.url, removal("lama"))[-1]
    elapsed = time.monotonic() - began
    assert final["type"] == "failed" and final["error"]["code"] == "model_unavailable", final
    assert "LIVEPIX_LAMA_MODEL" in final["error"]["message"]
    assert elapsed < 10, elapsed  # torch import included; the fetch itself fails at once


def test_a_model_url_is_fetched_once_into_the_data_dir(
    new_stack: Stack, tiny_lama: Path, tmp_path: Path
) -> None:
    """The default configuration's path (auto, a URL, nothing in the data dir yet); a
    loopback HTTP server stands in for the model host, no real network is used."""
    served = tmp_path / "host" / "big-lama.pt"
    served.parent.mkdir()
    served.write_bytes(tiny_lama.read_bytes())
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        data = tmp_path / "data"
        new_stack.env.update({
            "LIVEPIX_LAMA_MODEL": f"http://127.0.0.1:{server.server_port}/{served.name}",
            "LIVEPIX_DATA_DIR": str(data),
        })
        new_stack.add_api()
        new_stack.add_worker("cpu")
        events = run(new_stack.url, removal("auto"))
    finally:
        server.shutdown()
        server.server_close()
    metadata = check_removed(events[-1], 3)
    assert metadata["method"] == "lama" and metadata["model_loads"] == 1
    assert "fallback" not in metadata
    assert any("Fetching the LaMa model" in e.get("message", "") for e in events)
    size_mb = f"{served.stat().st_size / 1_000_000:.1f} MB"
    # The download's bytes are reported, as they arrive, in the task's own events.
    assert any(e.get("message", "").endswith(f"{size_mb} of {size_mb}") for e in events), [
        e.get("message") for e in events
    ]
    fetched = data / "models" / "lama" / served.name
    assert fetched.read_bytes() == served.read_bytes()
    assert not list(fetched.parent.glob("*.part"))

    # The server is gone: the fetched copy is used.
    again = check_removed(run(new_stack.url, removal("lama"))[-1], 3)
    assert again["model_loads"] == 1


def test_two_first_tasks_at_once_on_a_two_thread_worker_load_the_model_once(
    new_stack: Stack, tiny_lama: Path
) -> None:
    new_stack.env.update({"LIVEPIX_LAMA_MODEL": str(tiny_lama)})
    new_stack.add_api()
    new_stack.add_worker("cpu", threads=2)
    task_ids = [submit(new_stack.url, removal("lama")) for _ in range(2)]
    for task_id in task_ids:
        events = sse_events(new_stack.url, task_id)
        assert_contiguous(events)
        assert check_removed(events[-1], 3)["model_loads"] == 1
