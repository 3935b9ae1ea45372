"""GPU readiness check (issue 15, part 3): every engine on the tiny models in one process.

    python -m bench.gpu_check                          # a CUDA machine with the workers' packages
    python -m bench.gpu_check --wheels .whl            # a bare one: CUDA torch plus carried wheels
    python -m bench.gpu_check --device cpu             # here: the same code on the CPU

Builds the tiny random-weight models the tests use (tests/models*.py), loads every
engine into ONE `actors.engines.Engines` (what one worker process holds) with
LIVEPIX_DEVICE=<device> (fp16 on CUDA, as the engines choose; LaMa stays fp32) and:

  - runs each engine once (its load, reported apart), then --runs times: median and min;
  - times a TAESD preview (madebyollin/taesd's architecture, random weights, 64x64
    latents to 256 px, as the worker decodes them) and the latent projection;
  - reports peak memory with all engines loaded: torch.cuda.max_memory_allocated and
    max_memory_reserved, and this process's line of nvidia-smi if there is one (on the
    CPU: peak RSS);
  - provokes real out-of-memory errors and checks that they map to `out_of_memory`:
    an allocation bigger than the card (or, on the CPU, 16 TB), and a LaMa task on a big
    picture with the device capped just above what is in use
    (torch.cuda.set_per_process_memory_fraction; on the CPU, RLIMIT_AS), through
    `Engines.run`: it frees the least recently used engine, retries once, and fails
    `out_of_memory`; the freed engine is then loaded again and run;
  - prints a table last and writes the whole of it as JSON to --out.

Engines whose libraries are not installed (the ONNX ones: rembg, insightface) are
reported as skipped, with the import that failed. With --wheels, the wheels in that
folder are installed first into .pydeps (`pip install --no-index --no-deps --target`),
which goes first on sys.path: see bench/gpu_wheels.py for which wheels and how to get
them. Exit status: 0 when every engine that could run ran and both out-of-memory checks
read `out_of_memory`, 1 otherwise. Bounded by --deadline-s (280 s).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .common import ROOT, deadline, machine, scrubbed, table

# The case that loads each of Engines' slots again.
CASE_OF_SLOT = {"diffusion": "image_generation", "object_removal": "object_removal (lama)"}
COLUMNS = ["engine", "status", "load_s", "median_ms", "min_ms", "runs", "device"]
MB = 1 << 20


def install_wheels(folder: Path) -> Path:
    """Install every wheel of `folder` into ROOT/.pydeps (once per set of wheels) and put
    it first on sys.path."""
    target = ROOT / ".pydeps"
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"no wheels in {folder}: see python -m bench.gpu_wheels")
    marker = target / ".wheels"
    names = "\n".join(w.name for w in wheels)
    if not (marker.is_file() and marker.read_text() == names):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--upgrade",
             "--quiet", "--disable-pip-version-check", "--target", str(target), *map(str, wheels)],
            check=True,
        )
        marker.write_text(names)
    sys.path.insert(0, str(target))
    return target


class Messages:
    """A `Report` that keeps the messages (previews are not decoded: timed apart)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, percent: float, message: str, **_: object) -> None:
        self.messages.append(message)


def build_models(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The tiny models: settings for them, and {engine: why skipped} for the rest."""
    from tests.models_diffusion import build_tiny_sd, build_tiny_taesd
    from tests.models_lama import build_tiny_lama

    settings = {
        "txt2img_model": str(build_tiny_sd(root / "tiny-sd")),
        "preview_model": str(build_tiny_taesd(root / "tiny-taesd")),
        "lama_model": str(build_tiny_lama(root / "tiny-lama.pt")),
    }
    skipped: dict[str, str] = {}
    try:
        import rembg  # noqa: F401

        from tests.models import build_tiny_u2net

        settings["rembg_model"] = str(build_tiny_u2net(root / "tiny-u2net.onnx"))
    except ImportError as exc:
        skipped["background_removal"] = f"not installed: {exc}"
    try:
        import insightface  # noqa: F401

        from tests.models_face import build_face_models

        pack, swapper = build_face_models(root)
        settings.update(face_model_dir=str(pack), swapper_model=str(swapper))
    except ImportError as exc:
        skipped["face_swap"] = f"not installed: {exc}"
    return settings, skipped


def cases(size: int) -> dict[str, tuple[str, Callable[[], Any]]]:
    """{engine name: (task type, input builder)} on pictures of about `size` px."""
    import numpy as np
    from PIL import Image

    from actors.engines import EngineInput
    from tests.models_face import face_picture

    def two_tone(width: int, height: int) -> Image.Image:  # tests.clients' (it needs httpx)
        image = Image.new("RGB", (width, height), (20, 40, 220))
        image.paste((230, 20, 20), (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
        return image

    xs, ys = np.meshgrid(np.linspace(0, 255, size), np.linspace(0, 255, size))
    scene = Image.fromarray(np.stack([xs, ys, np.full_like(xs, 128)], axis=-1).astype(np.uint8))
    box = [size // 4, size // 4, size // 2, size // 2]
    diffusion = {"width": size, "height": size, "steps": 4, "guidance_scale": 7.5, "seed": 1}
    return {
        "image_generation": ("image_generation", lambda: EngineInput("g", "a lighthouse at dawn", diffusion)),
        "style_transfer": ("style_transfer", lambda: EngineInput(
            "s", "watercolor", {"strength": 0.5, "steps": 8, "guidance_scale": 7.5, "seed": 1},
            image=two_tone(size, size))),
        "background_removal": ("background_removal", lambda: EngineInput("b", None, {}, image=two_tone(320, 320))),
        "face_swap": ("face_swap", lambda: EngineInput(
            "f", None, {}, image=face_picture(320, 240, [(150, 110, 32)]),
            target_image=face_picture(320, 240, [(70, 80, 36), (240, 150, 40)]))),
        # dilate_px 0: OpenCV (not carried to a bare GPU machine) is not needed
        "object_removal (lama)": ("object_removal", lambda: EngineInput(
            "o", None, {"boxes": [box], "dilate_px": 0, "method": "lama"}, image=scene)),
    }


def onnx_device(cuda: bool) -> str:
    """Where onnxruntime runs the ONNX engines: CUDA only with onnxruntime-gpu."""
    import onnxruntime

    gpu = cuda and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    return "onnxruntime cuda" if gpu else "onnxruntime cpu"


def sync(torch: Any, cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def time_engines(engines: Any, torch: Any, cuda: bool, size: int, runs: int,
                 skipped: dict[str, str]) -> list[dict[str, Any]]:
    from livepix.wire import TaskType

    rows = []
    for name, (task_type, task) in cases(size).items():
        if name in skipped:
            rows.append({"engine": name, "status": "skipped: " + skipped[name]})
            continue
        report = Messages()
        started = time.perf_counter()
        output = engines.run(TaskType(task_type), task, report)  # first run: loads the model
        sync(torch, cuda)
        load_s = time.perf_counter() - started
        times = []
        for _ in range(runs):
            sync(torch, cuda)
            began = time.perf_counter()
            engines.run(TaskType(task_type), task, report)
            sync(torch, cuda)
            times.append(time.perf_counter() - began)
        rows.append({
            "engine": name, "status": "ok", "load_s": round(load_s, 2),
            "median_ms": round(statistics.median(times) * 1000, 1), "min_ms": round(min(times) * 1000, 1),
            "runs": runs, "device": output.metadata.get("device") or onnx_device(cuda),
        })
        print(table([rows[-1]], COLUMNS), flush=True)
    return rows


def preview_cost(torch: Any, device: Any, runs: int) -> dict[str, float]:
    """ms per preview: a TAESD-architecture decoder (random weights) on 64x64 latents
    (a 512 px generation's), pooled to a 256 px decode; and the latent projection."""
    from diffusers import AutoencoderTiny

    from actors.engines.preview import TinyDecoder, latents_preview

    decoder = TinyDecoder(AutoencoderTiny().to(device.name, device.dtype).eval(), "taesd-architecture")
    latents = torch.randn(1, 4, 64, 64, device=device.name, dtype=device.dtype)
    out: dict[str, float] = {}
    for name, preview in (("taesd_ms", decoder), ("latent_projection_ms", latents_preview)):
        with torch.inference_mode():
            preview(latents)  # warm-up
            times = []
            for _ in range(max(runs, 5)):
                sync(torch, device.is_cuda)
                began = time.perf_counter()
                image = preview(latents)
                sync(torch, device.is_cuda)
                times.append(time.perf_counter() - began)
        out[name] = round(statistics.median(times) * 1000, 2)
        out[name.replace("_ms", "_px")] = max(image.size) if image is not None else 0
    return out


def address_space() -> int:
    with open("/proc/self/status") as status:
        match = re.search(r"VmSize:\s+(\d+) kB", status.read())
    return int(match.group(1)) * 1024 if match else 0


def nvidia_smi_mb() -> float | None:
    """This process's GPU memory as nvidia-smi sees it (context included), or None."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return float(used)
    return None


def memory(torch: Any, cuda: bool, loaded: list[str]) -> dict[str, Any]:
    if cuda:
        return {
            "engines_loaded": loaded,
            "peak_allocated_mb": round(torch.cuda.max_memory_allocated() / MB, 1),
            "peak_reserved_mb": round(torch.cuda.max_memory_reserved() / MB, 1),
            "allocated_now_mb": round(torch.cuda.memory_allocated() / MB, 1),
            "nvidia_smi_mb": nvidia_smi_mb(),
            "total_mb": round(torch.cuda.get_device_properties(0).total_memory / MB),
        }
    return {"engines_loaded": loaded,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


@contextmanager
def capped(torch: Any, cuda: bool) -> Iterator[None]:
    """Little memory left to this process: CUDA capped 64 MB above what it holds now,
    the CPU at the address space it uses now."""
    if cuda:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + 64 * MB) / total)
        try:
            yield
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (address_space(), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def out_of_memory_checks(engines: Any, torch: Any, cuda: bool) -> dict[str, Any]:
    from PIL import Image

    from actors.engines import EngineInput
    from actors.errors import failure_of
    from livepix.wire import TaskType

    result: dict[str, Any] = {}
    # 1. An allocation bigger than the device.
    try:
        if cuda:
            torch.empty(2 * torch.cuda.get_device_properties(0).total_memory, dtype=torch.uint8, device="cuda")
        else:
            torch.empty(1 << 42)
        result["allocation"] = {"code": "none: the allocation succeeded"}
    except Exception as exc:  # noqa: BLE001 - whatever it is, it is what is checked
        code, message = failure_of(exc)
        result["allocation"] = {"code": str(code), "error": type(exc).__name__, "message": message[:160]}

    # 2. A LaMa task on a big picture through Engines.run, with the device capped.
    side = 4096 if cuda else 3000
    big = EngineInput("oom", None, {"boxes": [[8, 8, side // 2, side // 2]], "dilate_px": 0, "method": "lama"},
                      image=Image.new("RGB", (side, side), (90, 90, 90)))
    before = engines.loaded()
    report = Messages()
    with capped(torch, cuda):
        try:
            engines.run(TaskType.OBJECT_REMOVAL, lambda: big, report)
            check: dict[str, Any] = {"code": "none: the task succeeded"}
        except Exception as exc:  # noqa: BLE001
            code, message = failure_of(exc)
            check = {"code": str(code), "message": message[:200]}
    freed = sorted(set(before) - set(engines.loaded()))
    check.update(loaded_before=before, freed=freed,
                 retried=any(m.startswith("Out of memory: freed") for m in report.messages))
    # The freed engine comes back on its next use.
    if freed:
        name = freed[0]
        task_type, task = cases(64)[CASE_OF_SLOT.get(name, name)]
        began = time.perf_counter()
        try:
            engines.run(TaskType(task_type), task, Messages())
            check["reloaded"] = {"engine": name, "seconds": round(time.perf_counter() - began, 2)}
        except Exception as exc:  # noqa: BLE001
            check["reloaded"] = {"engine": name, "error": f"{type(exc).__name__}: {exc}"[:200]}
    result["engine_task"] = check
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (cuda)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per engine after the first (5)")
    parser.add_argument("--size", type=int, default=0, help="generation and LaMa picture side (512 on CUDA, 64 on the CPU)")
    parser.add_argument("--wheels", default="", help="install the wheels of this folder first (e.g. .whl)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for gpu_check-<device>.json")
    parser.add_argument("--deadline-s", type=float, default=280)
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.wheels:
        install_wheels(Path(args.wheels))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tiny local models only: never the network
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    sys.path.insert(0, str(ROOT))
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.jit.load
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from actors.engines import Engines
    from actors.engines.device import pick_device
    from livepix.config import Settings

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    device = pick_device(args.device)  # EngineUnavailableError without CUDA
    cuda = device.is_cuda
    size = args.size or (512 if cuda else 64)
    info: dict[str, Any] = {**machine(), "torch": torch.__version__, "device": device.name,
                            "dtype": str(device.dtype), "size": size}
    if cuda:
        info["gpu"] = torch.cuda.get_device_name(device.name)
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        info["onnxruntime_providers"] = None
    failures = []
    with deadline(args.deadline_s, "bench.gpu_check"), tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        began = time.monotonic()
        model_settings, skipped = build_models(root)
        info["build_models_s"] = round(time.monotonic() - began, 1)
        engines = Engines(Settings(data_dir=str(root / "data"), device=args.device, **model_settings))
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        rows = time_engines(engines, torch, cuda, size, args.runs, skipped)
        peak = memory(torch, cuda, engines.loaded())
        previews = preview_cost(torch, device, args.runs)
        oom = out_of_memory_checks(engines, torch, cuda)
    for check in ("allocation", "engine_task"):
        if oom[check]["code"] != "out_of_memory":
            failures.append(f"out-of-memory check {check}: {oom[check]['code']}")
    reloaded = oom["engine_task"].get("reloaded", {})
    if "error" in reloaded:
        failures.append(f"the freed engine did not load again: {reloaded['error']}")
    wall_s = round(time.monotonic() - started, 1)
    data = {"args": vars(args), "machine": info, "engines": rows, "memory": peak, "previews": previews,
            "out_of_memory": oom, "failures": failures, "wall_s": wall_s}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu_check-{device.name.replace(':', '')}.json"
    path.write_text(scrubbed(json.dumps(data, indent=1, default=str)))

    print()
    print(f"{info.get('gpu', 'CPU')}, torch {torch.__version__}, {device.name} ({device.dtype}); "
          f"tiny models, {size} px, median of {args.runs} runs after a first (load) run")
    print(table(rows, COLUMNS))
    print(f"preview: TAESD {previews['taesd_ms']} ms ({previews['taesd_px']} px), "
          f"latent projection {previews['latent_projection_ms']} ms")
    print("memory with all engines loaded: " + ", ".join(f"{k} {v}" for k, v in peak.items()))
    task = oom["engine_task"]
    print(f"out of memory: allocation -> {oom['allocation']['code']}; capped LaMa task -> {task['code']}"
          f" (freed {task['freed'] or 'nothing'}, retried {task['retried']}, reloaded {reloaded or '-'})")
    print(f"{'FAILED: ' + '; '.join(failures) if failures else 'ok'} in {wall_s} s; results: {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
