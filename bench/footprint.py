"""What a finished task leaves in Redis, per task type, against the raw PNG of its
result (issue 12): realistic sizes (512 px inputs and outputs, a 25-step generation
with TAESD previews) on the tiny random-weight models, real api and worker processes.

For each task type, --runs tasks run one after the other; once each has ended, the
bytes of every key of the task (`MEMORY USAGE`, what Redis allocated for it, the
allocator's rounding included) are summed, and compared with the PNG size of its
result. The Redis `used_memory` delta over the runs is reported as a cross-check (it
also counts what the task left outside its own keys). "GB per hour" is the Redis
memory that one task per second needs with the default one-hour TTL: the bytes of
3,600 finished tasks.

`--src DIR` runs the api and the workers from another source tree (`--base REV`: a git
revision, exported), to measure a design before and after a change.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import ROOT, loadavg, machine, save, table
from .stack import Stack

COLUMNS = ["task", "runs", "png_bytes", "task_bytes", "ratio", "used_memory_delta", "gb_per_hour_at_1_per_s",
           "keys", "events"]
SIDE = 512


def photo(seed: int) -> Any:
    """A 512 px picture whose PNG is as big as a photograph's (smooth shapes plus grain)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.linspace(0, 1, SIDE), np.linspace(0, 1, SIDE))
    base = np.stack([180 * xs + 40, 160 * ys + 50, 120 * (1 - xs) + 60], axis=-1)
    grain = rng.normal(0, 12, (SIDE, SIDE, 3))
    return Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))


def faces(seed: int, spots: list[tuple[int, int, int]]) -> Any:
    """A photograph-like picture with the disks the tiny face detector reads as faces."""
    from PIL import ImageDraw

    from tests.models_face import FACE_COLOUR

    picture = photo(seed)
    draw = ImageDraw.Draw(picture)
    for x, y, r in spots:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=FACE_COLOUR)
    return picture


def bodies() -> dict[str, dict[str, Any]]:
    from PIL import Image

    from tests.clients import png_b64

    mask = Image.new("L", (SIDE, SIDE), 0)
    mask.paste(255, (160, 160, 352, 352))
    return {
        "image_generation": {"task_type": "image_generation", "prompt": "a lighthouse at dawn",
                             "parameters": {"steps": 25, "seed": 7, "width": SIDE, "height": SIDE}},
        "style_transfer": {"task_type": "style_transfer", "image": png_b64(photo(1)),
                           "parameters": {"style": "watercolor", "strength": 0.6, "steps": 25, "seed": 1}},
        "face_swap": {"task_type": "face_swap", "image": png_b64(faces(4, [(256, 230, 60)])),
                      "target_image": png_b64(faces(5, [(150, 200, 60), (360, 300, 64)]))},
        "background_removal": {"task_type": "background_removal", "image": png_b64(photo(2))},
        "object_removal": {"task_type": "object_removal", "image": png_b64(photo(3)), "mask": png_b64(mask),
                           "parameters": {"method": "telea"}},
    }


def task_bytes(client: Any, task_id: str) -> tuple[int, int]:
    """(bytes Redis holds for the task's keys, how many keys)."""
    keys = list(client.scan_iter(match=f"livepix:task:{{{task_id}}}:*", count=100))
    return sum(int(client.memory_usage(k, samples=0) or 0) for k in keys), len(keys)


def png_bytes(url: str, task_id: str) -> int:
    import httpx

    body = httpx.get(f"{url}/api/v1/tasks/{task_id}/result/", timeout=60).json()
    return len(base64.b64decode(body["result"]["image_data"]))


def measure(args: argparse.Namespace, src: str | None) -> list[dict[str, Any]]:
    from .tasks import build_models

    sys.path.insert(0, str(ROOT))
    from tests.clients import sse_events, submit
    from tests.models_diffusion import build_tiny_taesd

    rows = []
    with Stack() as stack:
        env = build_models(stack.workdir / "models")
        env["LIVEPIX_PREVIEW_MODEL"] = str(build_tiny_taesd(stack.workdir / "models" / "tiny-taesd"))
        stack.env.update(env)
        stack.start_redis()
        url, _api = stack.add_api(src=src)
        stack.add_worker("gpu", src=src)
        stack.add_worker("cpu", src=src)
        stack.wait_workers(2)
        client = stack.client()
        wanted = {t for t in args.types.split(",") if t}
        for name, body in bodies().items():
            if wanted and name not in wanted:
                continue
            sse_events(url, submit(url, body))  # warm-up: loads the model
            before = int(client.info("memory")["used_memory"])
            runs = []
            for _ in range(args.runs):
                task_id = submit(url, body)
                events = sse_events(url, task_id)
                if events[-1]["type"] != "succeeded":
                    raise RuntimeError(f"{name} ended {events[-1]['type']}: {events[-1].get('error')}")
                held, keys = task_bytes(client, task_id)
                runs.append({"png": png_bytes(url, task_id), "held": held, "keys": keys, "events": len(events)})
            delta = (int(client.info("memory")["used_memory"]) - before) / args.runs
            png = statistics.median(r["png"] for r in runs)
            held = statistics.median(r["held"] for r in runs)
            row = {"task": name, "runs": len(runs), "png_bytes": int(png), "task_bytes": int(held),
                   "ratio": round(held / png, 3), "used_memory_delta": int(delta),
                   "gb_per_hour_at_1_per_s": round(held * 3600 / 1e9, 2), "keys": runs[-1]["keys"],
                   "events": runs[-1]["events"], "loadavg": loadavg()}
            rows.append(row)
            print(table([row], COLUMNS), flush=True)
        client.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="tasks per type after one warm-up (3)")
    parser.add_argument("--types", default="", help="comma-separated subset of the task types")
    parser.add_argument("--src", default=None, help="run api and workers from this source tree")
    parser.add_argument("--base", default=None, help="a git revision to measure instead (exported)")
    parser.add_argument("--out", default="footprint")
    args = parser.parse_args(argv)
    started = time.time()
    info = machine()
    with tempfile.TemporaryDirectory(prefix="livepix-footprint-") as tmp:
        src = args.src
        if args.base:
            from .ab import export

            src = str(export(args.base, Path(tmp)))
        rows = measure(args, src)
    print()
    print(table(rows, COLUMNS))
    print("results:", save(args.out, {"args": vars(args), "machine": info, "rows": rows,
                                     "wall_s": round(time.time() - started, 1)}))


if __name__ == "__main__":
    from .common import deadline

    with deadline(1800, "bench.footprint"):
        main()
