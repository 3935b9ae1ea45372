"""Per-task-type latency and worker overhead on the tiny models (issue 3).

Builds the tiny random-weight models the tests use (tests/models*.py: a Stable
Diffusion pipeline in diffusers format, ONNX graphs shaped like U^2-Net, SCRFD, ArcFace
and inswapper, a TorchScript module with LaMa's signature), starts a redis-server,
one `livepix api`, one `livepix worker --queues gpu` and one `livepix worker --queues
cpu` pointed at them (LIVEPIX_DEVICE=cpu), and runs every task type end to end over
HTTP + SSE: one warm-up task per type (it loads the model: reported apart), then
--runs timed tasks, one at a time.

Per task, from the events' `ts` (stamped in Redis-side scripts by the api and the
worker, millisecond resolution) and the client's clock just before the POST:
  total     submit -> `succeeded`
  queue     submit -> `started` (Dramatiq pick-up with an idle worker)
  overhead  `started` -> first `progress` (decode the input, fetch the warm engine)
  first_step  `started` -> first progress with a `step` (diffusion only)
  run       `started` -> `succeeded` (engine work + encoding + the final write)
The medians are printed as a table; a slower engine or a heavier pipeline shows here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .common import ROOT, loadavg, machine, save, table
from .stack import Stack

COLUMNS = ["task", "runs", "total_ms", "queue_ms", "overhead_ms", "first_step_ms", "run_ms", "events",
           "warmup_total_ms", "warmup_overhead_ms"]


def build_models(root: Path) -> dict[str, str]:
    """The tiny models, where the workers will look for them; returns the env to set."""
    sys.path.insert(0, str(ROOT))
    from tests.models import build_tiny_u2net
    from tests.models_diffusion import build_tiny_sd
    from tests.models_face import build_face_models
    from tests.models_lama import build_tiny_lama

    data = root / "data"
    build_tiny_u2net(data / "models" / "rembg" / "models" / "u2net" / "u2net.onnx")
    sd = build_tiny_sd(root / "tiny-sd")
    pack, swapper = build_face_models(root / "faces")
    lama = build_tiny_lama(root / "tiny-lama.pt")
    return {
        "LIVEPIX_DATA_DIR": str(data), "LIVEPIX_TXT2IMG_MODEL": str(sd), "LIVEPIX_FACE_MODEL_DIR": str(pack),
        "LIVEPIX_SWAPPER_MODEL": str(swapper), "LIVEPIX_LAMA_MODEL": str(lama), "LIVEPIX_DEVICE": "cpu",
    }


def bodies(steps: int) -> dict[str, dict[str, Any]]:
    import numpy as np
    from PIL import Image

    from tests.clients import png_b64, two_tone
    from tests.models_face import face_picture

    w, h = 101, 77  # not multiples of 8: LaMa pads
    xs, ys = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    scene = np.stack([xs, ys, np.full_like(xs, 128)], axis=-1).astype(np.uint8)
    scene[20:50, 30:70] = (230, 20, 20)
    mask = Image.new("L", (w, h), 0)
    mask.paste(255, (30, 20, 70, 50))
    return {
        "image_generation": {"task_type": "image_generation", "prompt": "a lighthouse at dawn",
                             "parameters": {"steps": steps, "seed": 7, "width": 64, "height": 64}},
        "style_transfer": {"task_type": "style_transfer", "image": png_b64(two_tone(100, 70)),
                           "parameters": {"style": "watercolor", "strength": 0.5, "steps": 2 * steps, "seed": 1}},
        "face_swap": {"task_type": "face_swap", "image": png_b64(face_picture(320, 240, [(150, 110, 32)])),
                      "target_image": png_b64(face_picture(320, 240, [(70, 80, 36), (240, 150, 40)]))},
        "background_removal": {"task_type": "background_removal", "image": png_b64(two_tone())},
        "object_removal (lama)": {"task_type": "object_removal", "image": png_b64(Image.fromarray(scene)),
                                  "mask": png_b64(mask), "parameters": {"method": "lama", "dilate_px": 3}},
        "object_removal (telea)": {"task_type": "object_removal", "image": png_b64(Image.fromarray(scene)),
                                   "mask": png_b64(mask), "parameters": {"method": "telea", "dilate_px": 3}},
    }


def run_one(url: str, body: dict[str, Any]) -> dict[str, Any]:
    from tests.clients import sse_events, submit

    t0 = time.time()
    task_id = submit(url, body)
    events = sse_events(url, task_id)
    seen = time.time()
    by_type: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_type.setdefault(e["type"], []).append(e)
    if events[-1]["type"] != "succeeded":
        raise RuntimeError(f"{body['task_type']} ended {events[-1]['type']}: {events[-1].get('error')}")
    started = by_type["started"][0]["ts"]
    progress = by_type.get("progress", [])
    stepped = [e for e in progress if "step" in e]
    end = events[-1]["ts"]
    return {
        "total_ms": (end - t0) * 1000, "seen_ms": (seen - t0) * 1000, "queue_ms": (started - t0) * 1000,
        "overhead_ms": (progress[0]["ts"] - started) * 1000 if progress else float("nan"),
        "first_step_ms": (stepped[0]["ts"] - started) * 1000 if stepped else float("nan"),
        "run_ms": (end - started) * 1000, "events": len(events),
        "first_progress": progress[0]["message"] if progress else "",
    }


def median(rows: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in rows if r[key] == r[key]]  # NaN-free
    return round(statistics.median(values), 1) if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tasks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed tasks per type after the warm-up (5)")
    parser.add_argument("--steps", type=int, default=6, help="diffusion steps (style transfer: twice, strength 0.5)")
    parser.add_argument("--types", default="", help="comma-separated subset of the task names")
    parser.add_argument("--out", default="tasks")
    args = parser.parse_args(argv)
    started = time.time()
    info = machine()
    stack = Stack()
    try:
        t = time.time()
        env = build_models(stack.workdir / "models")
        info["build_models_s"] = round(time.time() - t, 1)
        stack.env.update(env)
        stack.start_redis()
        url, _api = stack.add_api()
        t = time.time()
        stack.add_worker("gpu", threads=1)
        stack.add_worker("cpu", threads=1)
        stack.wait_workers(2)
        info["workers_ready_s"] = round(time.time() - t, 1)
        rows = []
        wanted = {x.strip() for x in args.types.split(",") if x.strip()}
        for name, body in bodies(args.steps).items():
            if wanted and name not in wanted and body["task_type"] not in wanted:
                continue
            warm = run_one(url, body)
            runs = [run_one(url, body) for _ in range(args.runs)]
            row = {"task": name, "runs": len(runs), **{k: median(runs, k) for k in
                   ("total_ms", "seen_ms", "queue_ms", "overhead_ms", "first_step_ms", "run_ms")},
                   "events": runs[-1]["events"], "first_progress": runs[-1]["first_progress"],
                   "warmup_total_ms": round(warm["total_ms"], 1), "warmup_overhead_ms": round(warm["overhead_ms"], 1),
                   "loadavg": loadavg(), "_runs": runs}
            rows.append(row)
            print(table([row], COLUMNS), flush=True)
    except BaseException:
        print(stack.logs(), file=sys.stderr)
        raise
    finally:
        stack.stop()
    info["loadavg_at_end"] = loadavg()
    print()
    print(f"medians of {args.runs} runs per type after one warm-up (ms; warm-up = first task, model load included)")
    print(table(rows, COLUMNS))
    print("results:", save(args.out, {"args": vars(args), "machine": info, "rows": rows,
                                     "wall_s": round(time.time() - started, 1)}))


if __name__ == "__main__":
    from .common import deadline

    with deadline(1200, "bench.tasks"):
        main()
