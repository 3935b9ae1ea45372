"""Memory as a resource (issue 15, part 4): a worker that runs out of memory frees the
least recently used engine and runs the task once more.

End to end: a real api and a real cpu worker, whose address space the test caps with
`prlimit` (RLIMIT_AS) once its engines are loaded, so that a task's allocations fail for
real (PIL raises MemoryError, torch "can't allocate memory"). The loaded LaMa holds
2 GiB of address space (tests/models_lama.py `keep_bytes`: a big model's weights, but
never written, so no physical memory), which freeing it gives back.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from actors.engines import EngineInput, Engines
from livepix.config import Settings, load_settings
from livepix.wire import TaskType
from tests.clients import assert_contiguous, png_b64, sse_events, submit, two_tone
from tests.conftest import Child, Stack
from tests.models import build_tiny_u2net
from tests.models_diffusion import build_tiny_sd
from tests.models_lama import build_tiny_lama

KEPT_BYTES = 2 << 30
BIG = 3000  # a 3000x3000 picture decodes into 36 MB: far past what the cap leaves


@pytest.fixture(scope="module")
def heavy_lama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lama(tmp_path_factory.mktemp("heavy-lama") / "heavy-lama.pt", keep_bytes=KEPT_BYTES)


def address_space_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        match = re.search(r"VmSize:\s+(\d+) kB", status.read())
    assert match is not None
    return int(match.group(1)) // 1024


@contextmanager
def capped(worker: Child) -> Iterator[None]:
    """Cap the worker's address space at what it uses now: from then on every allocation
    that needs new memory from the kernel fails, until memory is freed. (A cap below what
    it uses would leave the worker unable to start a thread even after freeing: glibc
    aborts it.)"""
    pid = worker.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_AS)
    limit = address_space_mb(pid) << 20
    resource.prlimit(pid, resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_AS, (soft, hard))


def big_cutout() -> dict[str, Any]:
    picture = Image.new("RGB", (BIG, BIG), (90, 90, 90))
    picture.paste((220, 30, 30), (BIG // 4, BIG // 4, 3 * BIG // 4, 3 * BIG // 4))
    return {"task_type": "background_removal", "image": png_b64(picture)}


def lama_removal() -> dict[str, Any]:
    return {
        "task_type": "object_removal",
        "image": png_b64(two_tone(96, 64)),
        "parameters": {"boxes": [[10, 10, 40, 30]], "method": "lama"},
    }


def run(base: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    events = sse_events(base, submit(base, body))
    assert_contiguous(events)
    progress = [e["progress"] for e in events if e["type"] == "progress"]
    assert progress == sorted(progress), progress  # never backwards, retry or not
    return events


def messages(events: list[dict[str, Any]]) -> list[str]:
    return [e.get("message", "") for e in events]


def test_out_of_memory_frees_the_least_recently_used_engine_and_retries_once(
    new_stack: Stack, heavy_lama: Path
) -> None:
    new_stack.env.update({"LIVEPIX_LAMA_MODEL": str(heavy_lama), "LIVEPIX_DEVICE": "cpu"})
    new_stack.add_api()
    worker = new_stack.add_worker("cpu")
    url = new_stack.url
    # Both engines loaded: rembg, then LaMa (which now holds its 2 GiB).
    assert run(url, {"task_type": "background_removal", "image": png_b64(two_tone())})[-1]["type"] == "succeeded"
    loaded = run(url, lama_removal())[-1]
    assert loaded["type"] == "succeeded" and loaded["result"]["metadata"]["model_loads"] == 1

    # A big cutout with no memory to spare: the first attempt fails, LaMa (the least
    # recently used other engine) is freed, and the second attempt succeeds.
    with capped(worker):
        events = run(url, big_cutout())
    final = events[-1]
    assert final["type"] == "succeeded", final
    assert "Out of memory: freed the object_removal engine, retrying" in messages(events)
    assert final["result"]["metadata"]["out_of_memory_retry"] == {"freed": "object_removal"}

    # The freed engine is loaded again on its next use.
    again = run(url, lama_removal())[-1]
    assert again["type"] == "succeeded" and again["result"]["metadata"]["model_loads"] == 2

    # Only LaMa was freed: rembg, the task's own engine, stayed loaded throughout.
    assert run(url, {"task_type": "background_removal", "image": png_b64(two_tone())})[-1]["type"] == "succeeded"
    assert worker.log_path is not None and worker.log_path.read_text().count("loaded the background_removal engine") == 1


def test_out_of_memory_again_after_the_retry_fails_the_task(
    new_stack: Stack, tmp_path: Path
) -> None:
    """A LaMa that holds next to nothing: freeing it leaves the retry as short of memory
    as the first attempt."""
    light = build_tiny_lama(tmp_path / "light-lama.pt")
    new_stack.env.update({"LIVEPIX_LAMA_MODEL": str(light), "LIVEPIX_DEVICE": "cpu"})
    new_stack.add_api()
    worker = new_stack.add_worker("cpu")
    url = new_stack.url
    assert run(url, {"task_type": "background_removal", "image": png_b64(two_tone())})[-1]["type"] == "succeeded"
    assert run(url, lama_removal())[-1]["type"] == "succeeded"

    with capped(worker):
        events = run(url, big_cutout())
    final = events[-1]
    assert final["type"] == "failed" and final["error"]["code"] == "out_of_memory", final
    assert "again after freeing the object_removal engine" in final["error"]["message"]
    assert "Out of memory: freed the object_removal engine, retrying" in messages(events)

    # Only the task's own engine is loaded now: nothing to free, out_of_memory at once.
    with capped(worker):
        events = run(url, big_cutout())
    final = events[-1]
    assert final["type"] == "failed" and final["error"]["code"] == "out_of_memory", final
    assert "freed" not in " ".join(messages(events)) + final["error"]["message"]

    # The worker is fine afterwards, and LaMa comes back.
    assert run(url, big_cutout())[-1]["type"] == "succeeded"
    assert run(url, lama_removal())[-1]["result"]["metadata"]["model_loads"] == 2


def quiet(percent: float, message: str, **_: object) -> None:
    pass


def test_engines_are_freed_least_recently_used_first_and_never_while_in_use(tmp_path: Path) -> None:
    """Real engines in one `Engines`: generation and style transfer share one slot."""
    settings = Settings(
        data_dir=str(tmp_path / "data"),
        device="cpu",
        txt2img_model=str(build_tiny_sd(tmp_path / "tiny-sd")),
        preview_model="latent",
        rembg_model=str(build_tiny_u2net(tmp_path / "tiny.onnx")),
        lama_model=str(build_tiny_lama(tmp_path / "tiny-lama.pt")),
    )
    engines = Engines(settings)
    picture = two_tone(64, 64)
    tasks = {
        TaskType.IMAGE_GENERATION: EngineInput(
            "g", "a test", {"width": 64, "height": 64, "steps": 2, "guidance_scale": 1.0, "seed": 1}
        ),
        TaskType.BACKGROUND_REMOVAL: EngineInput("b", None, {}, image=picture),
        TaskType.OBJECT_REMOVAL: EngineInput(
            "o", None, {"boxes": [[4, 4, 20, 20]], "method": "lama"}, image=picture
        ),
        TaskType.STYLE_TRANSFER: EngineInput(
            "s", "ink", {"strength": 0.5, "steps": 2, "guidance_scale": 1.0, "seed": 1}, image=picture
        ),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load
        for task_type, task in tasks.items():
            engines.run(task_type, lambda task=task: task, quiet)
    # Style transfer reused the generation's pipeline: one slot, most recently used.
    assert engines.loaded() == ["background_removal", "object_removal", "diffusion"]

    assert engines.free_least_recent(TaskType.STYLE_TRANSFER) == "background_removal"
    # The task's own slot is never the one freed, and neither is a slot in use.
    with engines.use(TaskType.OBJECT_REMOVAL, quiet):
        assert engines.free_least_recent(TaskType.IMAGE_GENERATION) is None
    assert engines.loaded() == ["diffusion", "object_removal"]
    assert engines.free_least_recent(TaskType.OBJECT_REMOVAL) == "diffusion"
    assert engines.loaded() == ["object_removal"]
    assert engines.free_least_recent(TaskType.OBJECT_REMOVAL) is None


def test_a_gpu_memory_fraction_is_ignored_with_a_log_line_on_the_cpu(new_stack: Stack) -> None:
    new_stack.env.update({"LIVEPIX_GPU_MEMORY_FRACTION": "0.5", "LIVEPIX_DEVICE": "cpu"})
    new_stack.add_api()
    worker = new_stack.add_worker("cpu")
    assert run(new_stack.url, lama_removal())[-1]["type"] == "succeeded"
    assert worker.log_path is not None
    assert "LIVEPIX_GPU_MEMORY_FRACTION=0.5 ignored: this worker runs on the cpu" in worker.log_path.read_text()


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2", "half"])
def test_a_gpu_memory_fraction_outside_0_to_1_stops_the_worker_at_start(value: str) -> None:
    env = {**os.environ, "LIVEPIX_GPU_MEMORY_FRACTION": value, "REDIS_URL": "redis://127.0.0.1:1/0"}
    out = subprocess.run(
        [sys.executable, "-m", "livepix", "worker", "--queues", "gpu"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("livepix: LIVEPIX_GPU_MEMORY_FRACTION="), out.stderr
    assert load_settings({"LIVEPIX_GPU_MEMORY_FRACTION": "0.25"}, None).gpu_memory_fraction == 0.25
    assert load_settings({}, None).gpu_memory_fraction is None
